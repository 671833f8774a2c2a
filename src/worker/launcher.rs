//! The launcher: one per cluster, connected to eventic.launcher_database. Every 10 s, and
//! whenever woken (a worker started or stopped, a start request, a SIGHUP), it lists the
//! databases and decides which workers should run:
//!
//! - not in a database where a worker found no extension, until that database asks for
//!   workers (CREATE EXTENSION, an enqueue that found none): [`crate::runtime::board`] keeps the mark;
//! - every database's first worker before any database's second (the order is worker number,
//!   then database oid), at most eventic.max_workers in all; a database whose first worker
//!   finds no free background worker slot takes one from a database with two or more;
//! - the workers the settings no longer allow (eventic.workers_per_database or
//!   eventic.max_workers lowered) are asked to stop, and do at the end of their transaction;
//! - a worker that stopped without being asked (pg_terminate_backend, a FATAL error) is
//!   started again after 250 ms, doubling up to 60 s while it keeps dying within 30 s.
//!
//! A database with the extension that gets no worker has a WARNING in the log (once, until
//! that changes) naming the setting to raise, and a flag on the board for the NOTICE at
//! enqueue.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::pg_sys;

use crate::runtime::board::{self, Starved, StopReason, WorkerArg, MAX_SLOTS};
use crate::settings;

/// How often the launcher looks at the databases when nothing wakes it.
const LOOK_INTERVAL: Duration = Duration::from_secs(10);
/// How often it tries again to start workers that found no free background worker slot.
const SLOT_RETRY: Duration = Duration::from_secs(2);
/// The first restart of a worker that died; doubled for each death within `HEALTHY_AFTER`.
const FIRST_RESTART: Duration = Duration::from_millis(250);
const MAX_RESTART: Duration = Duration::from_secs(60);
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// A worker: (database oid, its number in the database).
type Key = (u32, u32);

/// A database worker this launcher started.
struct Running {
    handle: DynamicBackgroundWorker,
    slot: usize,
    started_at: Instant,
    /// asked to stop
    stopping: bool,
}

impl Running {
    /// Whether it has exited (one not started yet has not: it must not be started twice).
    fn stopped(&self) -> bool {
        matches!(
            self.handle.pid(),
            Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
        )
    }

    fn ask_to_stop(&mut self, reason: StopReason) {
        self.stopping = true;
        board::board().slots[self.slot]
            .stop
            .store(reason as u32, Ordering::Release);
        if let Ok(pid) = self.handle.pid() {
            // SAFETY: kill(2) with a valid signal number; SIGUSR1 sets the worker's latch.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
    }
}

/// When a worker that died may start again.
struct Restart {
    streak: u32,
    not_before: Instant,
}

struct Launcher {
    generation: u8,
    workers: HashMap<Key, Running>,
    restarts: HashMap<Key, Restart>,
    /// each database's start requests when last looked at
    requests_seen: HashMap<u32, u64>,
    /// databases given a WARNING for getting no worker, and why
    warned: HashMap<u32, Starved>,
    episode: u32,
    /// the LOG about databases with fewer workers than eventic.workers_per_database is out
    short_logged: bool,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventic_launcher_main(_arg: pg_sys::Datum) {
    super::attach_signal_handlers();
    BackgroundWorker::connect_worker_to_spi(Some(&settings::launcher_database()), None);
    crate::roles::pin_worker_search_path();
    let board = board::board();
    // workers of an earlier launcher (one terminated or failed) stop at their next look
    let generation = board.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
    // SAFETY: a plain read of this process's pid.
    board
        .launcher_pid
        .store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
    log!("eventic launcher started");
    let mut launcher = Launcher {
        generation: generation as u8,
        workers: HashMap::new(),
        restarts: HashMap::new(),
        requests_seen: HashMap::new(),
        warned: HashMap::new(),
        episode: 0,
        short_logged: false,
    };
    loop {
        let databases =
            super::guarded_transaction("eventic launcher: could not list the databases", list_databases);
        let timeout = match databases {
            Some(databases) => launcher.assign(&databases),
            None => super::ERROR_PAUSE,
        };
        super::wait(timeout);
    }
}

/// The databases workers may connect to: (oid, name), by oid.
fn list_databases() -> Vec<(u32, String)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT oid, datname::text FROM pg_catalog.pg_database
                  WHERE datallowconn AND NOT datistemplate ORDER BY oid",
                None,
                &[],
            )?
            .map(|row| Ok((row.get::<pg_sys::Oid>(1)?, row.get::<String>(2)?)))
            .filter_map(|row: Result<_, pgrx::spi::Error>| match row {
                Ok((Some(oid), Some(name))) => Some(Ok((oid.to_u32(), name))),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|err| {
        pgrx::error!("eventic launcher: could not read pg_database: {err}")
    })
}

impl Launcher {
    /// Start and stop workers for `databases`; returns how long to sleep.
    fn assign(&mut self, databases: &[(u32, String)]) -> Duration {
        let now = Instant::now();
        self.reap(now);
        sync_board(databases);
        self.note_requests(databases);
        let candidates: Vec<&(u32, String)> = databases
            .iter()
            .filter(|(oid, _)| {
                !board::database(pg_sys::Oid::from(*oid)).is_some_and(|entry| entry.no_extension())
            })
            .collect();
        let per_database = settings::workers_per_database().max(1) as u32;
        let max_workers = (settings::max_workers().max(0) as usize).min(MAX_SLOTS);
        // every database's first worker before any database's second
        let wanted: Vec<(Key, &str)> = (0..per_database)
            .flat_map(|n| candidates.iter().map(move |(oid, name)| ((*oid, n), name.as_str())))
            .take(max_workers)
            .collect();
        let desired: HashSet<Key> = wanted.iter().map(|(key, _)| *key).collect();
        let candidate_set: HashSet<u32> = candidates.iter().map(|(oid, _)| *oid).collect();
        for (key, worker) in self.workers.iter_mut() {
            if worker.stopping || desired.contains(key) {
                continue;
            }
            if key.1 >= per_database {
                worker.ask_to_stop(StopReason::WorkersPerDatabase);
            } else if candidate_set.contains(&key.0) {
                worker.ask_to_stop(StopReason::MaxWorkers);
            }
            // otherwise its database has no extension (it stops by itself) or is gone
        }
        let mut wake = LOOK_INTERVAL;
        let mut out_of_slots = false;
        let mut first_without_slot: HashSet<u32> = HashSet::new();
        for (key, name) in &wanted {
            if self.workers.contains_key(key) {
                continue;
            }
            if let Some(restart) = self.restarts.get(key) {
                if restart.not_before > now {
                    wake = wake.min(restart.not_before - now);
                    continue;
                }
            }
            if !out_of_slots && self.start(*key, name).is_ok() {
                continue;
            }
            if !out_of_slots {
                // fair: a database's worker n takes the slot of a worker numbered above n
                self.make_room_for(*key);
            }
            out_of_slots = true;
            if key.1 == 0 {
                first_without_slot.insert(key.0);
            }
        }
        if out_of_slots {
            wake = wake.min(SLOT_RETRY);
        }
        self.report_starvation(&candidates, &desired, &first_without_slot);
        if out_of_slots && !self.short_logged {
            log!(
                "eventic: some databases run fewer workers than eventic.workers_per_database ({per_database}): \
                 no free background worker slot (max_worker_processes = {}); raise max_worker_processes to give them more",
                crate::runtime::max_worker_processes()
            );
        }
        self.short_logged = out_of_slots;
        wake
    }

    /// Forget the workers that exited; those that were not asked to may start again after
    /// a delay that doubles while they keep dying young.
    fn reap(&mut self, now: Instant) {
        let stopped: Vec<Key> = self
            .workers
            .iter()
            .filter(|(_, worker)| worker.stopped())
            .map(|(key, _)| *key)
            .collect();
        for key in stopped {
            let Some(worker) = self.workers.remove(&key) else {
                continue;
            };
            let slot = &board::board().slots[worker.slot];
            slot.database.store(0, Ordering::Release);
            slot.stop.store(0, Ordering::Release);
            if worker.stopping {
                self.restarts.remove(&key);
                continue;
            }
            let lived = now.duration_since(worker.started_at);
            let streak = if lived >= HEALTHY_AFTER {
                0
            } else {
                self.restarts.get(&key).map_or(0, |restart| restart.streak + 1)
            };
            let delay = FIRST_RESTART
                .saturating_mul(1 << streak.min(16))
                .min(MAX_RESTART);
            self.restarts.insert(
                key,
                Restart {
                    streak,
                    not_before: now + delay,
                },
            );
        }
    }

    /// A database that asked for workers (CREATE EXTENSION, an enqueue that found none)
    /// gets them now, whatever backoff its workers had.
    fn note_requests(&mut self, databases: &[(u32, String)]) {
        let listed: HashSet<u32> = databases.iter().map(|(oid, _)| *oid).collect();
        self.requests_seen.retain(|oid, _| listed.contains(oid));
        self.restarts.retain(|(oid, _), _| listed.contains(oid));
        for (oid, _) in databases {
            let Some(entry) = board::database(pg_sys::Oid::from(*oid)) else {
                continue;
            };
            let requests = entry.requests.load(Ordering::Acquire);
            if self
                .requests_seen
                .insert(*oid, requests)
                .is_some_and(|seen| seen != requests)
            {
                self.restarts.retain(|(db, _), _| db != oid);
            }
        }
    }

    fn start(&mut self, key: Key, name: &str) -> Result<(), ()> {
        let board = board::board();
        let used: HashSet<usize> = self.workers.values().map(|worker| worker.slot).collect();
        let slot = (0..MAX_SLOTS)
            .find(|i| !used.contains(i) && board.slots[*i].pid.load(Ordering::Acquire) == 0)
            .ok_or(())?;
        board.slots[slot].stop.store(0, Ordering::Release);
        board.slots[slot].database.store(key.0, Ordering::Release);
        let arg = WorkerArg {
            database: pg_sys::Oid::from(key.0),
            slot,
            number: key.1,
            generation: self.generation,
        };
        let started = BackgroundWorkerBuilder::new(&format!("eventic worker {} for {name}", key.1))
            .set_type(super::WORKER_TYPE)
            .set_library("eventic")
            .set_function("eventic_worker_main")
            .enable_spi_access()
            .set_argument(Some(arg.encode()))
            // SAFETY: a plain read of this process's pid.
            .set_notify_pid(unsafe { pg_sys::MyProcPid })
            .load_dynamic();
        match started {
            Ok(handle) => {
                self.workers.insert(
                    key,
                    Running {
                        handle,
                        slot,
                        started_at: Instant::now(),
                        stopping: false,
                    },
                );
                Ok(())
            }
            Err(_) => {
                board.slots[slot].database.store(0, Ordering::Release);
                Err(())
            }
        }
    }

    /// `key` found no free background worker slot: ask the highest-numbered worker above
    /// it to give its slot up (one at a time).
    fn make_room_for(&mut self, key: Key) {
        let giving = self
            .workers
            .values()
            .any(|worker| worker.stopping);
        if giving {
            return;
        }
        let victim = self
            .workers
            .iter()
            .filter(|((_, n), worker)| *n > key.1 && !worker.stopping)
            .max_by_key(|((oid, n), _)| (*n, *oid))
            .map(|(victim, _)| *victim);
        if let Some(victim) = victim.and_then(|victim| self.workers.get_mut(&victim)) {
            victim.ask_to_stop(StopReason::FirstWorkers);
        }
    }

    /// The WARNING (once per database and cause) and the board's flag for the NOTICE.
    fn report_starvation(
        &mut self,
        candidates: &[&(u32, String)],
        desired: &HashSet<Key>,
        first_without_slot: &HashSet<u32>,
    ) {
        let candidate_set: HashSet<u32> = candidates.iter().map(|(oid, _)| *oid).collect();
        let board = board::board();
        // databases that no longer want workers (no extension, dropped)
        for entry in board.databases.iter() {
            let oid = entry.oid.load(Ordering::Acquire);
            if oid != 0 && !candidate_set.contains(&oid) {
                entry.starved.store(0, Ordering::Release);
            }
        }
        self.warned.retain(|oid, _| candidate_set.contains(oid));
        for (oid, name) in candidates {
            let has_worker = self
                .workers
                .iter()
                .any(|((db, _), worker)| db == oid && !worker.stopping);
            let starved = if has_worker {
                None
            } else if !desired.contains(&(*oid, 0)) {
                Some(Starved::MaxWorkers)
            } else if first_without_slot.contains(oid) {
                Some(Starved::NoSlot)
            } else {
                // its first worker waits for a restart, or stops to make room: no change
                continue;
            };
            let entry = board::database(pg_sys::Oid::from(*oid));
            match starved {
                Some(cause) if self.warned.get(oid) != Some(&cause) => {
                    self.warned.insert(*oid, cause);
                    self.episode = self.episode.wrapping_add(1) & 0x00ff_ffff;
                    if let Some(entry) = entry {
                        entry
                            .starved
                            .store((self.episode << 8) | cause as u32, Ordering::Release);
                    }
                    let (message, hint) =
                        crate::runtime::starved_text(cause, &format!("database \"{name}\""));
                    ErrorReport::new(
                        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                        message,
                        "eventic",
                    )
                    .set_hint(format!(
                        "{hint} Until then its jobs wait; eventic.run_pending() runs them in a session."
                    ))
                    .report(PgLogLevel::WARNING);
                }
                Some(_) => {}
                None => {
                    if self.warned.remove(oid).is_some() {
                        if let Some(entry) = entry {
                            entry.starved.store(0, Ordering::Release);
                        }
                        log!("eventic: database \"{name}\" has a worker again");
                    }
                }
            }
        }
    }
}

/// Give every listed database a line on the board, and free the lines of dropped ones.
fn sync_board(databases: &[(u32, String)]) {
    let board = board::board();
    let listed: HashSet<u32> = databases.iter().map(|(oid, _)| *oid).collect();
    let mut known: HashSet<u32> = HashSet::new();
    for entry in board.databases.iter() {
        let oid = entry.oid.load(Ordering::Acquire);
        if oid == 0 {
            continue;
        }
        if listed.contains(&oid) {
            known.insert(oid);
        } else {
            entry.oid.store(0, Ordering::Release);
        }
    }
    let mut free = board
        .databases
        .iter()
        .filter(|entry| entry.oid.load(Ordering::Acquire) == 0);
    for oid in listed.iter().filter(|oid| !known.contains(oid)) {
        let Some(entry) = free.next() else {
            break; // more databases than lines: those get the restart backoff instead
        };
        entry.requests.store(0, Ordering::Release);
        entry.no_extension_at.store(0, Ordering::Release);
        entry.starved.store(0, Ordering::Release);
        entry.paused.store(0, Ordering::Release);
        entry.oid.store(*oid, Ordering::Release);
    }
}
