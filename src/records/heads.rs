//! Where the latest version of each record lies (issue 13), so that the next write of the
//! record, by any connection, reads that row by its address instead of searching the
//! primary key.
//!
//! Shared memory holds `eventic.record_address_slots` slots (262,144 = 8 MB by default; a
//! record's slot is a hash of its id; 0: none, every read searches). Every append
//! (any backend, with the record's write lock held) writes the address of the row it inserted
//! into the record's slot; a purge clears it. A slot holds the last record written there, so
//! an address found for a record is that record's latest row: the reader (with the record's
//! write lock held) still checks that the row is the record's and that no transaction is
//! inserting or removing it. An address is never left pointing at a row that may vanish
//! without a purge: a transaction clears what it wrote when it (or a subtransaction) aborts
//! or is prepared, and an address names the database and file of eventic.records (a rewrite
//! gives it another). A slot is a seqlock: a sequence number odd while it is written.
//!
//! Each backend also remembers the latest version it saw of its records, so that a search
//! that is needed starts at that version instead of reading every version on the leaf page.
//! Without the preload there is no shared memory: every read searches.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;

/// One record's latest address (32 bytes: a slot never straddles a cache line).
#[repr(C, align(32))]
struct Slot {
    /// Even when stable, odd while a writer fills the slot; changes with every write.
    seq: AtomicU64,
    /// the first 8 bytes of the record's id
    key: AtomicU64,
    /// eventic.records's database and file (see [`place_of`])
    place: AtomicU64,
    /// `block << 16 | offset` of the row; 0 when there is none
    tid: AtomicU64,
}

static SHARED: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());
/// How many slots SHARED has: set in the postmaster, which every backend is forked from.
static SLOTS: AtomicUsize = AtomicUsize::new(0);
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

/// Called from `_PG_init` in the postmaster (preloaded only): ask for the slots.
pub fn init() {
    // SAFETY: the postmaster is single-threaded while it loads libraries; hooks are chained.
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shmem);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(start_shmem);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shmem() {
    // SAFETY: called by the postmaster as its shmem request hook.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
        let slots = crate::settings::record_address_slots();
        SLOTS.store(slots, Ordering::Relaxed);
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Slot>() * slots);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn start_shmem() {
    // SAFETY: called as the shmem startup hook, under AddinShmemInitLock as Postgres wants;
    // zeroed slots are valid (empty) ones. ShmemAlloc aligns to the cache line.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| prev());
        }
        let size = std::mem::size_of::<Slot>() * SLOTS.load(Ordering::Relaxed);
        if size == 0 {
            return;
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let slots = pg_sys::ShmemInitStruct(c"eventic_record_heads".as_ptr(), size, &mut found).cast::<Slot>();
        if !found {
            std::ptr::write_bytes(slots.cast::<u8>(), 0, size);
        }
        SHARED.store(slots, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
    }
}

/// The record's slot and the key that tells its record from others hashed there.
///
/// The ids' bits are not spread evenly enough to take a part of them as the slot: UUIDv7s made
/// in one millisecond share their timestamp and the top of a counter, so 1,000 records created
/// in one statement fell in 34 slots. The slot is taken from the high half of a
/// multiplicative hash of all 128 bits, mapped onto the slot count by a multiply and shift.
fn key_of(id: &Uuid) -> (usize, u64) {
    let b = id.as_bytes();
    let half = |i: usize| u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
    let (low, high) = (half(0), half(8));
    let mixed = (low ^ high).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    // SLOTS <= 1 << 24 (the setting's maximum): the product fits
    let slots = SLOTS.load(Ordering::Relaxed) as u64;
    (((mixed * slots) >> 32) as usize, high ^ low.rotate_left(32))
}

fn slot(index: usize) -> Option<&'static Slot> {
    let slots = SHARED.load(Ordering::Acquire);
    // SAFETY: SLOTS slots in shared memory, mapped for the life of the process.
    (!slots.is_null()).then(|| unsafe { &*slots.add(index) })
}

/// Where eventic.records's rows are: its database and file (a rewrite changes the file).
///
/// # Safety
/// `rel` is an open relation.
pub unsafe fn place_of(rel: pg_sys::Relation) -> u64 {
    // SAFETY: the caller's open relation.
    let node = unsafe { (*rel).rd_node };
    (u64::from(node.dbNode.to_u32()) << 32) | u64::from(node.relNode.to_u32())
}

fn tid_word(tid: pg_sys::ItemPointerData) -> u64 {
    let block = (u64::from(tid.ip_blkid.bi_hi) << 16) | u64::from(tid.ip_blkid.bi_lo);
    (block << 16) | u64::from(tid.ip_posid)
}

fn tid_of(word: u64) -> pg_sys::ItemPointerData {
    let block = word >> 16;
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData { bi_hi: (block >> 16) as u16, bi_lo: block as u16 },
        ip_posid: word as u16,
    }
}

/// The address of the record's latest row in `place`, if its slot holds one (call with the
/// record's write lock held).
pub fn latest_address(id: &Uuid, place: u64) -> Option<pg_sys::ItemPointerData> {
    let (index, key) = key_of(id);
    let slot = slot(index)?;
    let before = slot.seq.load(Ordering::Acquire);
    if before & 1 == 1 {
        return None;
    }
    let (found_key, found_place, tid) = (
        slot.key.load(Ordering::Relaxed),
        slot.place.load(Ordering::Relaxed),
        slot.tid.load(Ordering::Relaxed),
    );
    fence(Ordering::Acquire);
    let unchanged = slot.seq.load(Ordering::Relaxed) == before;
    (unchanged && found_key == key && found_place == place && tid != 0).then(|| tid_of(tid))
}

/// Write into a slot whose sequence number is `seq` (even): `write` runs between the number
/// made odd and made even again. The sequence number after it, or `None` when the slot
/// changed since `seq` was read.
fn write_at(slot: &Slot, seq: u64, write: impl FnOnce(&Slot)) -> Option<u64> {
    slot.seq.compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed).ok()?;
    fence(Ordering::Release);
    write(slot);
    Some(slot.seq.fetch_add(1, Ordering::Release) + 1)
}

/// Fill a slot; the sequence number after it, or `None` when another writer was filling it
/// (its record then holds the slot: the sequence number is moved on so that the slot's
/// readers see a change).
fn fill(slot: &Slot, key: u64, place: u64, tid: u64) -> Option<u64> {
    loop {
        let seq = slot.seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            slot.seq.fetch_add(2, Ordering::AcqRel);
            return None;
        }
        let filled = write_at(slot, seq, |slot| {
            slot.key.store(key, Ordering::Relaxed);
            slot.place.store(place, Ordering::Relaxed);
            slot.tid.store(tid, Ordering::Relaxed);
        });
        if filled.is_some() {
            return filled;
        }
    }
}

/// Addresses one transaction writes at most (16 MB of notes); past it, it clears them instead.
const MAX_FILLED: usize = 1 << 20;

thread_local! {
    /// Slots this transaction filled (index, sequence number after), cleared if it aborts.
    static FILLED: RefCell<Vec<(u32, u64)>> = const { RefCell::new(Vec::new()) };
}

/// The record's latest row is now at `tid` in `place` (call with its write lock held, after
/// the insert).
pub fn publish(id: &Uuid, place: u64, tid: pg_sys::ItemPointerData) {
    let (index, key) = key_of(id);
    let Some(slot) = slot(index) else {
        return;
    };
    register_callbacks();
    // past the bound, the address is cleared instead: nothing to undo at abort
    let full = FILLED.with(|f| f.borrow().len() >= MAX_FILLED);
    let word = if full { 0 } else { tid_word(tid) };
    if let Some(seq) = fill(slot, key, place, word) {
        if !full {
            FILLED.with(|f| f.borrow_mut().push((index as u32, seq)));
        }
    }
}

/// The record's rows are being removed (eventic.purge): forget its address.
pub fn forget_address(id: &Uuid) {
    let (index, key) = key_of(id);
    if let Some(slot) = slot(index) {
        fill(slot, key, 0, 0);
    }
}

/// Clear the addresses this transaction wrote that no one has overwritten since (their rows
/// are about to be dead: vacuum may remove them and truncate the table before them).
fn clear_filled() {
    let filled = FILLED.with(|f| std::mem::take(&mut *f.borrow_mut()));
    for (index, seq) in filled {
        let Some(slot) = slot(index as usize) else {
            return;
        };
        write_at(slot, seq, |slot| slot.tid.store(0, Ordering::Relaxed));
    }
}

/// Records remembered before the map starts again (about 24 bytes each).
const MAX_VERSIONS: usize = 1 << 16;

/// Each 8 bytes of the id folded in and multiplied: ids are not random enough to be their own
/// hash (UUIDv7s of one millisecond share most bits; see [`key_of`]).
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

type Versions = HashMap<[u8; 16], i32, std::hash::BuildHasherDefault<IdHasher>>;

thread_local! {
    static VERSIONS: RefCell<Versions> = RefCell::new(Versions::default());
    /// eventic.records's cache generation the versions belong to.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

/// Forget the versions seen when eventic.records has changed since (call with the table
/// open, so that its invalidations have been seen).
pub fn check_generation() {
    let now = crate::catalog_cache::distribution_generation();
    if GENERATION.with(|g| g.replace(now)) != now {
        forget_versions();
    }
}

fn forget_versions() {
    VERSIONS.with(|versions| versions.borrow_mut().clear());
}

/// The latest version of the record this backend last saw.
pub fn version_seen(id: &Uuid) -> Option<i32> {
    VERSIONS.with(|versions| versions.borrow().get(id.as_bytes()).copied())
}

pub fn remember_version(id: &Uuid, version: i32) {
    register_callbacks();
    VERSIONS.with(|versions| {
        let mut versions = versions.borrow_mut();
        if versions.len() >= MAX_VERSIONS {
            versions.clear();
        }
        versions.insert(*id.as_bytes(), version);
    });
}

fn register_callbacks() {
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registering backend-lifetime callbacks with no argument.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
}

unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            clear_filled();
            forget_versions();
        }
        // a prepared transaction may still be rolled back, by another backend
        XACT_EVENT_PREPARE => clear_filled(),
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => FILLED.with(|f| f.borrow_mut().clear()),
        _ => {}
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // the outer transaction's addresses are cleared too: only a search is lost
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        clear_filled();
        forget_versions();
    }
}
