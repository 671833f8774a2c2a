//! Rate limits of queues (`alter_queue(name, rate_limit => n, rate_period => p)`): at most n
//! jobs of the queue start in any window of length p, counted over every worker and session
//! of the cluster that claims its jobs (the drain, `run_pending`, `dequeue`).
//!
//! A sliding window of sub-windows: the period is cut into [`SLICES`] slices; a claim may take
//! as many starts as leave the count of the current slice and the [`SLICES`] before it at or
//! under the limit. Those SLICES + 1 slices cover any window of length p, so the limit is never
//! exceeded (steady state reaches SLICES/(SLICES + 1) of it), and a burst of n may start at
//! once after a quiet period. Not a token bucket: a full bucket plus its refill lets 2n start
//! within one period.
//!
//! The counts live in shared memory (atomics and a per-queue spin flag held for a few
//! instructions), not in a table: a row lock would be held until the claiming transaction
//! ends, and a worker running a slow job would keep the other workers from starting any.
//! Shared memory is reset when the server restarts (or crashes): the first period after a
//! restart may see one more burst. Without eventic in shared_preload_libraries (no worker;
//! `run_pending` only) each session counts its own starts.

use std::cell::OnceCell;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::PgAtomic;

/// Slices of a period in the sliding window.
pub const SLICES: i64 = 20;
/// Ring of slice counts (more than SLICES + 1).
const RING: usize = 32;
/// Rate-limited queues the cluster keeps counts for.
const ENTRIES: usize = 1024;

/// A queue's limit: `limit` starts per `period_nanos`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rate {
    pub limit: i64,
    pub period_nanos: i64,
}

impl Rate {
    fn slice_nanos(self) -> i64 {
        (self.period_nanos / SLICES).max(1)
    }
}

pub struct Entry {
    /// hash of (database, queue); 0: a free entry
    key: AtomicU64,
    busy: AtomicBool,
    slice_nanos: AtomicI64,
    /// the newest slice counted (monotonic nanoseconds / slice_nanos)
    current: AtomicI64,
    counts: [AtomicU32; RING],
}

impl Entry {
    const fn new() -> Self {
        Self {
            key: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            slice_nanos: AtomicI64::new(0),
            current: AtomicI64::new(0),
            counts: [const { AtomicU32::new(0) }; RING],
        }
    }

    /// Run `f` holding the entry's spin flag (held for a few instructions, never across a
    /// wait or an ERROR).
    fn locked<T>(&self, f: impl FnOnce() -> T) -> T {
        while self
            .busy
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let result = f();
        self.busy.store(false, Ordering::Release);
        result
    }

    /// Move the window to slice `now`, forgetting slices that left it; a new period length
    /// starts the counts afresh.
    fn advance(&self, rate: Rate, now: i64) {
        if self.slice_nanos.load(Ordering::Relaxed) != rate.slice_nanos() {
            self.slice_nanos
                .store(rate.slice_nanos(), Ordering::Relaxed);
            self.counts
                .iter()
                .for_each(|c| c.store(0, Ordering::Relaxed));
            self.current.store(now, Ordering::Relaxed);
            return;
        }
        let current = self.current.load(Ordering::Relaxed);
        if now <= current {
            return;
        }
        for slice in (current + 1)..=now.min(current + RING as i64) {
            self.counts[slice.rem_euclid(RING as i64) as usize].store(0, Ordering::Relaxed);
        }
        self.current.store(now, Ordering::Relaxed);
    }

    fn count(&self, slice: i64) -> &AtomicU32 {
        &self.counts[slice.rem_euclid(RING as i64) as usize]
    }
}

pub struct Table {
    entries: [Entry; ENTRIES],
}

// SAFETY: only atomics, valid in any process that maps the segment.
unsafe impl PGRXSharedMemory for Table {}

impl Default for Table {
    fn default() -> Self {
        Self {
            entries: [const { Entry::new() }; ENTRIES],
        }
    }
}

// SAFETY: the only shared memory of that name.
static TABLE: PgAtomic<Table> = unsafe { PgAtomic::new(c"eventic_rates") };

/// Called from `_PG_init` in the postmaster (preloaded only).
pub fn init() {
    pgrx::pg_shmem_init!(TABLE = Table::default());
}

thread_local! {
    /// Without the preload: this session's own counts.
    static LOCAL: OnceCell<&'static Table> = const { OnceCell::new() };
    static FULL_WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn table() -> &'static Table {
    if crate::runtime::preloaded() {
        TABLE.get()
    } else {
        LOCAL.with(|local| *local.get_or_init(|| Box::leak(Box::default())))
    }
}

fn key(queue_name: &str) -> u64 {
    // DefaultHasher::new() has fixed keys: the same hash in every process
    let mut hasher = std::hash::DefaultHasher::new();
    // SAFETY: MyDatabaseId is set for the whole life of a backend connected to a database.
    unsafe { pg_sys::MyDatabaseId }.to_u32().hash(&mut hasher);
    queue_name.hash(&mut hasher);
    hasher.finish() | 1
}

/// The queue's entry (open addressing; entries are never freed). When every entry is taken,
/// a session-local one, with a WARNING once per session.
fn entry(queue_name: &str) -> &'static Entry {
    let key = key(queue_name);
    let entries = &table().entries;
    let start = (key % ENTRIES as u64) as usize;
    for probe in 0..ENTRIES {
        let entry = &entries[(start + probe) % ENTRIES];
        match entry
            .key
            .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return entry,
            Err(found) if found == key => return entry,
            Err(_) => {}
        }
    }
    if !FULL_WARNED.with(|warned| warned.replace(true)) {
        pgrx::warning!(
            "eventic: the shared table of rate-limited queues is full ({ENTRIES} queues); queue {queue_name} is rate limited per session only"
        );
    }
    thread_local! {
        static OVERFLOW: std::cell::RefCell<std::collections::HashMap<u64, &'static Entry>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    OVERFLOW.with(|o| {
        *o.borrow_mut()
            .entry(key)
            .or_insert_with(|| Box::leak(Box::new(Entry::new())))
    })
}

fn monotonic_nanos() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid clock id and a valid pointer; CLOCK_MONOTONIC is one
    // clock for every process of the machine.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Starts granted by [`take`]: how many, and in which slice they were counted.
pub struct Grant {
    pub granted: i64,
    slice: i64,
    /// With none granted: when the next start may be.
    pub retry_at: Option<Instant>,
}

/// Take up to `wanted` starts of `queue_name` now.
pub fn take(queue_name: &str, rate: Rate, wanted: i64) -> Grant {
    if wanted <= 0 {
        return Grant {
            granted: 0,
            slice: 0,
            retry_at: None,
        };
    }
    let entry = entry(queue_name);
    let nanos = monotonic_nanos();
    let slice_nanos = rate.slice_nanos();
    let now = nanos / slice_nanos;
    entry.locked(|| {
        entry.advance(rate, now);
        let window = (now - SLICES)..=now;
        let used: i64 = window
            .clone()
            .map(|s| i64::from(entry.count(s).load(Ordering::Relaxed)))
            .sum();
        let granted = wanted.min(rate.limit - used).max(0);
        if granted > 0 {
            let count = entry.count(now);
            count.store(
                count.load(Ordering::Relaxed).saturating_add(granted as u32),
                Ordering::Relaxed,
            );
            return Grant {
                granted,
                slice: now,
                retry_at: None,
            };
        }
        // the oldest slice that counts leaves the window at its start + SLICES + 1 slices
        let oldest = window
            .clone()
            .find(|s| entry.count(*s).load(Ordering::Relaxed) > 0)
            .unwrap_or(now);
        let free_at = (oldest + SLICES + 1) * slice_nanos;
        let wait = Duration::from_nanos((free_at - nanos).max(0) as u64);
        Grant {
            granted: 0,
            slice: now,
            retry_at: Some(Instant::now() + wait),
        }
    })
}

/// Give back starts of `grant` that claimed no job (the queue had fewer ready), to the slice
/// they were counted in (unless it has left the window).
pub fn give_back(queue_name: &str, rate: Rate, grant: &Grant, unused: i64) {
    let unused = unused.min(grant.granted);
    if unused <= 0 {
        return;
    }
    let entry = entry(queue_name);
    let now = monotonic_nanos() / rate.slice_nanos();
    entry.locked(|| {
        entry.advance(rate, now);
        if grant.slice >= now - SLICES && grant.slice <= now {
            let count = entry.count(grant.slice);
            let left = i64::from(count.load(Ordering::Relaxed));
            count.store((left - unused).max(0) as u32, Ordering::Relaxed);
        }
    });
}
