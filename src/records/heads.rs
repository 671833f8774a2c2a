//! What a backend remembers of the records it writes (issue 13): the latest version it saw of
//! each and where that row lies, so that its next write of the same record reads the row by
//! its address instead of searching the primary key, and a search that is needed starts at
//! that version instead of reading every version on the leaf page.
//!
//! An address is used only while no one has written the record since: every append and purge
//! (any backend, with the record's write lock held) counts a write in a shared slot of the
//! record (a hash of its id into 262,144 slots: records sharing a slot only cost each other a
//! search). What was remembered is forgotten when a (sub)transaction aborts (the row it
//! wrote is gone) and when eventic.records changes (a rewrite moves every row). Without the
//! preload there is no shared memory: versions are remembered, addresses are not used.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{PgAtomic, Uuid};

/// 2 MB of shared memory: of 30,000 records written by one statement ~11% share a slot with
/// another (with 1 MB ~20% did: each is searched for again on its next write). Built on the
/// postmaster's stack before it is copied into shared memory (pg_shmem_init): not much more.
const SLOTS: usize = 1 << 18;

pub struct WriteCounts {
    slots: [AtomicU64; SLOTS],
}

// SAFETY: only atomics, valid in any process that maps the segment.
unsafe impl PGRXSharedMemory for WriteCounts {}

impl Default for WriteCounts {
    fn default() -> Self {
        Self {
            slots: [const { AtomicU64::new(0) }; SLOTS],
        }
    }
}

// SAFETY: the only shared memory of that name.
static WRITES: PgAtomic<WriteCounts> = unsafe { PgAtomic::new(c"eventic_record_writes") };

/// Called from `_PG_init` in the postmaster (preloaded only).
pub fn init() {
    pgrx::pg_shmem_init!(WRITES = WriteCounts::default());
}

fn slot(id: &Uuid) -> Option<&'static AtomicU64> {
    if !crate::runtime::preloaded() {
        return None;
    }
    let b = id.as_bytes();
    let half = |i: usize| u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
    Some(&WRITES.get().slots[((half(0) ^ half(8)) % SLOTS as u64) as usize])
}

/// The write count of the record's slot (read with the record's write lock held).
pub fn writes(id: &Uuid) -> Option<u64> {
    slot(id).map(|s| s.load(Ordering::Acquire))
}

/// Count a write of the record (with its write lock held); the count after it.
pub fn count_write(id: &Uuid) -> Option<u64> {
    slot(id).map(|s| s.fetch_add(1, Ordering::AcqRel) + 1)
}

/// The latest version of a record as this backend last saw it.
#[derive(Clone, Copy)]
pub struct Hint {
    pub version: i32,
    /// where that version's row is
    pub tid: pg_sys::ItemPointerData,
    /// the record's write count then (`None` without shared memory: the address is not used)
    pub writes: Option<u64>,
}

/// Records remembered before the map starts again (about 40 bytes each).
const MAX_HINTS: usize = 1 << 16;

/// Record ids are random (UUIDv7's low half, UUIDv5): their own bits are the hash.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).rotate_left(23).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

type Hints = HashMap<[u8; 16], Hint, std::hash::BuildHasherDefault<IdHasher>>;

thread_local! {
    static HINTS: RefCell<Hints> = RefCell::new(Hints::default());
    /// eventic.records's cache generation the hints belong to.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

/// Forget everything when eventic.records has changed since the hints were taken (call with
/// the table open, so that its invalidations have been seen).
pub fn check_generation() {
    let now = crate::catalog_cache::distribution_generation();
    if GENERATION.with(|g| g.replace(now)) != now {
        forget_all();
    }
}

pub fn forget_all() {
    HINTS.with(|hints| hints.borrow_mut().clear());
}

pub fn hint(id: &Uuid) -> Option<Hint> {
    HINTS.with(|hints| hints.borrow().get(id.as_bytes()).copied())
}

pub fn remember(id: &Uuid, hint: Hint) {
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registering backend-lifetime callbacks with no argument.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
    HINTS.with(|hints| {
        let mut hints = hints.borrow_mut();
        if hints.len() >= MAX_HINTS {
            hints.clear();
        }
        hints.insert(*id.as_bytes(), hint);
    });
}

unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT {
        forget_all();
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget_all();
    }
}
