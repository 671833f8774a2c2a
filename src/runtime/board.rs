//! The shared memory of the launcher, the database workers and the sessions that enqueue:
//! which databases have no extension (so the launcher starts no worker there until asked),
//! which get no worker (for the NOTICE at enqueue), which are paused, and which worker runs
//! where (so that an enqueue wakes its database's workers without a query, and the launcher
//! can ask a worker to stop). Only atomics: no lock is ever held across a wait.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use pgrx::prelude::*;
use pgrx::pg_sys;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::PgAtomic;

/// Databases the board keeps a line for. A cluster with more gets the launcher's restart
/// backoff instead of the "no extension here" mark for the rest.
pub const MAX_DATABASES: usize = 1024;
/// Worker slots: eventic.max_workers is at most this.
pub const MAX_SLOTS: usize = 1024;

/// Why the launcher asks a worker to stop (`WorkerSlot::stop`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum StopReason {
    WorkersPerDatabase = 1,
    MaxWorkers = 2,
    /// its background worker slot goes to another database's first worker
    FirstWorkers = 3,
}

impl StopReason {
    fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::WorkersPerDatabase),
            2 => Some(Self::MaxWorkers),
            3 => Some(Self::FirstWorkers),
            _ => None,
        }
    }
}

/// Why a database that has eventic gets no worker (`DatabaseEntry::starved`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Starved {
    /// eventic.max_workers are all given to other databases
    MaxWorkers = 1,
    /// RegisterDynamicBackgroundWorker found no free slot (max_worker_processes)
    NoSlot = 2,
}

impl Starved {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value & 0xff {
            1 => Some(Self::MaxWorkers),
            2 => Some(Self::NoSlot),
            _ => None,
        }
    }
}

/// Why a database's workers run no jobs for now (`DatabaseEntry::paused`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u32)]
pub enum Paused {
    /// a pg_restore session is connected to the database
    Restore = 1,
    /// ALTER DATABASE ... SET eventic.pause_workers = on
    Setting = 2,
}

impl Paused {
    pub fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::Restore),
            2 => Some(Self::Setting),
            _ => None,
        }
    }
}

pub struct DatabaseEntry {
    /// 0: a free line. Written by the launcher only.
    pub oid: AtomicU32,
    /// Start requests for this database (CREATE EXTENSION, an enqueue that found no worker).
    pub requests: AtomicU64,
    /// `requests + 1` as read by a worker before it found no extension here; 0: not marked.
    /// The mark holds while `requests` has not moved since.
    pub no_extension_at: AtomicU64,
    /// `(episode << 8) | Starved`, 0 while the database has a worker (or wants none).
    pub starved: AtomicU32,
    /// A `Paused` while the database's workers hold off, else 0.
    pub paused: AtomicU32,
}

impl DatabaseEntry {
    const fn new() -> Self {
        Self {
            oid: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            no_extension_at: AtomicU64::new(0),
            starved: AtomicU32::new(0),
            paused: AtomicU32::new(0),
        }
    }

    /// A worker found no extension here (its `requests` read before it looked).
    pub fn no_extension(&self) -> bool {
        let at = self.no_extension_at.load(Ordering::Acquire);
        at != 0 && at == self.requests.load(Ordering::Acquire) + 1
    }
}

pub struct WorkerSlot {
    pub database: AtomicU32,
    /// The worker's pid once it runs, 0 before and after.
    pub pid: AtomicI32,
    /// A `StopReason` when the launcher wants the worker to stop, else 0.
    pub stop: AtomicU32,
}

impl WorkerSlot {
    const fn new() -> Self {
        Self {
            database: AtomicU32::new(0),
            pid: AtomicI32::new(0),
            stop: AtomicU32::new(0),
        }
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        StopReason::from_u32(self.stop.load(Ordering::Acquire))
    }
}

pub struct Board {
    /// Bumped by each start of the launcher: workers of an earlier launcher stop.
    pub generation: AtomicU32,
    pub launcher_pid: AtomicI32,
    pub databases: [DatabaseEntry; MAX_DATABASES],
    pub slots: [WorkerSlot; MAX_SLOTS],
}

// SAFETY: only atomics, valid in any process that maps the segment.
unsafe impl PGRXSharedMemory for Board {}

impl Board {
    pub const fn new() -> Self {
        Self {
            generation: AtomicU32::new(0),
            launcher_pid: AtomicI32::new(0),
            databases: [const { DatabaseEntry::new() }; MAX_DATABASES],
            slots: [const { WorkerSlot::new() }; MAX_SLOTS],
        }
    }
}

impl Default for Board {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the only shared memory of that name.
static BOARD: PgAtomic<Board> = unsafe { PgAtomic::new(c"eventic_board") };

/// Called from `_PG_init` in the postmaster (preloaded only).
pub fn init() {
    pgrx::pg_shmem_init!(BOARD = Board::new());
}

pub fn board() -> &'static Board {
    BOARD.get()
}

/// This database's line, if the launcher gave it one.
pub fn database(oid: pg_sys::Oid) -> Option<&'static DatabaseEntry> {
    let oid = oid.to_u32();
    board()
        .databases
        .iter()
        .find(|entry| entry.oid.load(Ordering::Acquire) == oid)
}

/// The pids of the workers running in a database.
pub fn worker_pids(oid: pg_sys::Oid) -> Vec<i32> {
    let oid = oid.to_u32();
    board()
        .slots
        .iter()
        .filter(|slot| slot.database.load(Ordering::Acquire) == oid)
        .map(|slot| slot.pid.load(Ordering::Acquire))
        .filter(|pid| *pid > 0)
        .collect()
}

/// Ask the launcher to start a database's workers now: counted on its line (which clears a
/// "no extension" mark; a database without a line has none), and the launcher's latch set.
pub fn request_workers(oid: pg_sys::Oid) {
    if let Some(entry) = database(oid) {
        entry.requests.fetch_add(1, Ordering::AcqRel);
    }
    wake_launcher();
}

pub fn wake_launcher() {
    let launcher = board().launcher_pid.load(Ordering::Acquire);
    if launcher > 0 {
        // SAFETY: kill(2) with a valid signal number; SIGUSR1 sets the launcher's latch.
        unsafe { libc::kill(launcher, libc::SIGUSR1) };
    }
}

/// What the launcher passes a worker in its Datum argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerArg {
    pub database: pg_sys::Oid,
    pub slot: usize,
    /// Its number in its database (0 is the first).
    pub number: u32,
    /// The low bits of the launcher's generation.
    pub generation: u8,
}

impl WorkerArg {
    pub fn encode(&self) -> pg_sys::Datum {
        let value = u64::from(self.database.to_u32())
            | ((self.slot as u64 & 0xffff) << 32)
            | ((u64::from(self.number) & 0xff) << 48)
            | (u64::from(self.generation) << 56);
        pg_sys::Datum::from(value as usize)
    }

    pub fn decode(datum: pg_sys::Datum) -> Self {
        let value = datum.value() as u64;
        Self {
            database: pg_sys::Oid::from(value as u32),
            slot: ((value >> 32) & 0xffff) as usize,
            number: ((value >> 48) & 0xff) as u32,
            generation: (value >> 56) as u8,
        }
    }
}
