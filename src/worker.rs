//! The background worker (DESIGN.md §3): a launcher, started by the postmaster when eventic is
//! in shared_preload_libraries, runs one worker per database; a worker drains the queues of
//! its database while the extension exists there, and sleeps on its latch in between.
//!
//! Like pg_cron's: the launcher lists databases through SPI in `eventic.launcher_database`;
//! workers connect as the bootstrap superuser and run every job as the role that enqueued it
//! (see `queues::jobs`). A worker whose database has no eventic exits at once; the launcher
//! looks again every 10 seconds, so `CREATE EXTENSION eventic` is picked up without a restart.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
    DynamicBackgroundWorker, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, pg_sys, register_xact_callback, PgAtomic, PgXactCallbackEvent};

use crate::settings;

const WORKER_TYPE: &str = "eventic worker";
const LAUNCHER_TYPE: &str = "eventic launcher";
/// Jobs per transaction of a worker: their effects and completions commit together.
const JOBS_PER_TRANSACTION: i64 = 1024;
/// A worker's transaction claims no new batch after this long, so that slow jobs (and
/// workflow runs) become visible, and release their row locks, every ~100 ms rather than
/// after 1024 of them.
const TRANSACTION_TIME: Duration = Duration::from_millis(100);
const LAUNCHER_INTERVAL: Duration = Duration::from_secs(10);

/// Set in the postmaster when eventic is preloaded; backends inherit it with fork().
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Requests to start database workers now (CREATE EXTENSION, an enqueue that found no
/// worker): counted in shared memory, so the launcher sees one whenever its latch is set.
// SAFETY: the only shared memory of that name.
static START_REQUESTS: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"eventic_start_requests") };
/// The launcher's pid, for setting its latch.
// SAFETY: the only shared memory of that name.
static LAUNCHER_PID: PgAtomic<AtomicI32> = unsafe { PgAtomic::new(c"eventic_launcher_pid") };

/// Whether eventic was loaded through shared_preload_libraries (so the worker runs).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Called from `_PG_init`: register the launcher when preloaded.
pub fn init() {
    // SAFETY: a plain read of a postmaster flag.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    PRELOADED.store(true, Ordering::Relaxed);
    pg_shmem_init!(START_REQUESTS);
    pg_shmem_init!(LAUNCHER_PID);
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("eventic")
        .set_function("eventic_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: the standard reaction to SIGHUP in a background worker.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// A database worker the launcher started.
struct StartedWorker {
    handle: DynamicBackgroundWorker,
    started_at: Instant,
}

impl StartedWorker {
    /// Whether it has exited (one not started yet has not: it must not be started twice).
    fn stopped(&self) -> bool {
        matches!(
            self.handle.pid(),
            Err(BackgroundWorkerStatus::Stopped | BackgroundWorkerStatus::PostmasterDied)
        )
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventic_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&settings::launcher_database()), None);
    crate::roles::pin_worker_search_path();
    log!("eventic launcher started");
    // SAFETY: a plain read of this process's pid.
    LAUNCHER_PID
        .get()
        .store(unsafe { pg_sys::MyProcPid }, Ordering::Relaxed);
    let mut workers: HashMap<(u32, i32), StartedWorker> = HashMap::new();
    let mut requests_seen = START_REQUESTS.get().load(Ordering::Relaxed);
    loop {
        reload_config_if_asked();
        let requests = START_REQUESTS.get().load(Ordering::Relaxed);
        if requests != requests_seen {
            // asked to start workers now: forget when stopped ones were last started
            requests_seen = requests;
            workers.retain(|_, worker| !worker.stopped());
        }
        let databases = BackgroundWorker::transaction(|| {
            Spi::connect(|client| -> Vec<(u32, String)> {
                let Ok(rows) = client.select(
                    "SELECT oid, datname::text FROM pg_database
                      WHERE datallowconn AND NOT datistemplate ORDER BY oid",
                    None,
                    &[],
                ) else {
                    return Vec::new();
                };
                rows.filter_map(|row| {
                    let oid = row.get::<pg_sys::Oid>(1).ok().flatten()?;
                    let name = row.get::<String>(2).ok().flatten()?;
                    Some((oid.to_u32(), name))
                })
                .collect()
            })
        });
        // A worker is started again once it has stopped, but at most every LAUNCHER_INTERVAL:
        // in a database without the extension it stops at once, and each stop wakes this
        // loop (notify_pid), which must not turn into a fork storm.
        workers.retain(|_, worker| {
            worker.started_at.elapsed() < LAUNCHER_INTERVAL || !worker.stopped()
        });
        let mut running = workers.values().filter(|worker| !worker.stopped()).count();
        let wanted = databases.iter().flat_map(|(oid, name)| {
            (0..settings::workers_per_database()).map(move |n| (*oid, n, name))
        });
        for (oid, n, name) in wanted {
            if workers.contains_key(&(oid, n)) || running >= settings::max_workers() as usize {
                continue;
            }
            let started = BackgroundWorkerBuilder::new(&format!("eventic worker {n} for {name}"))
                .set_type(WORKER_TYPE)
                .set_library("eventic")
                .set_function("eventic_worker_main")
                .enable_spi_access()
                .set_argument(Some(pg_sys::Datum::from(oid)))
                // SAFETY: a plain read of this process's pid.
                .set_notify_pid(unsafe { pg_sys::MyProcPid })
                .load_dynamic();
            if let Ok(handle) = started {
                workers.insert(
                    (oid, n),
                    StartedWorker {
                        handle,
                        started_at: Instant::now(),
                    },
                );
                running += 1;
            }
        }
        if !BackgroundWorker::wait_latch(Some(LAUNCHER_INTERVAL)) {
            break;
        }
    }
    log!("eventic launcher stopped");
}

/// What pg_stat_activity shows for this worker.
fn set_activity(state: pg_sys::BackendState::Type, text: &str) {
    if let Ok(c_text) = std::ffi::CString::new(text) {
        // SAFETY: reports this backend's activity for pg_stat_activity.
        unsafe { pg_sys::pgstat_report_activity(state, c_text.as_ptr()) };
    }
}

unsafe extern "C-unwind" {
    /// Postgres's SIGTERM handler of backends (postgres.c), itself: pgrx's `pg_sys::die` is a
    /// Rust wrapper, which a signal handler must not be.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventic_worker_main(arg: pg_sys::Datum) {
    let database = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (a fast or smart shutdown, pg_terminate_backend): Postgres's own handler of
    // backends, so that the next interrupt check ends the worker, in a running job too (its
    // transaction rolls back and its jobs run again later). pgrx's handler only set a flag,
    // which the drain loop consumed: a fast shutdown then waited for the worker forever.
    // SAFETY: installs a signal handler of the server, as postgres.c does for backends.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), None);
    // the database owner's ALTER DATABASE ... SET search_path must not decide what the
    // worker's own statements call (it runs as the bootstrap superuser)
    crate::roles::pin_worker_search_path();
    loop {
        reload_config_if_asked();
        let installed = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'eventic')",
            )
            .ok()
            .flatten()
            .unwrap_or(false)
        });
        if !installed {
            return; // the launcher looks again later
        }
        // drain: each transaction runs a batch of jobs and commits them with their effects
        loop {
            set_activity(
                pg_sys::BackendState::STATE_RUNNING,
                "eventic: draining queues",
            );
            let ran = BackgroundWorker::transaction(|| drain_database(JOBS_PER_TRANSACTION));
            // a background worker reports its table statistics only when asked: without this
            // autovacuum never sees the jobs it deleted
            // SAFETY: outside a transaction, as postgres.c does before going idle.
            unsafe { pg_sys::pgstat_report_stat(false) };
            pgrx::check_for_interrupts!(); // a SIGTERM ends the worker here
            if ran == 0 {
                break;
            }
        }
        compact_empty_queues();
        set_activity(
            pg_sys::BackendState::STATE_IDLE,
            "eventic: waiting for jobs",
        );
        let timeout = Duration::from_millis(settings::poll_interval_ms().max(10) as u64);
        if !BackgroundWorker::wait_latch(Some(timeout)) {
            break;
        }
        pgrx::check_for_interrupts!();
    }
}

/// With nothing left to run: truncate the large queue tables that are empty (see
/// [`crate::queues::compaction`]), each in a transaction of its own.
fn compact_empty_queues() {
    let candidates = BackgroundWorker::transaction(|| {
        crate::queues::compaction::candidates().unwrap_or_else(|err| {
            pgrx::warning!("eventic: could not list the queue tables to truncate: {err}");
            Vec::new()
        })
    });
    for queue in candidates {
        pgrx::check_for_interrupts!();
        set_activity(
            pg_sys::BackendState::STATE_RUNNING,
            &format!("eventic: truncating the emptied queue {queue}"),
        );
        BackgroundWorker::transaction(|| {
            if let Err(err) = crate::queues::compaction::truncate_if_empty(&queue) {
                pgrx::warning!("eventic: could not truncate the table of queue {queue}: {err}");
            }
        });
    }
}

/// Run up to `budget` jobs from the worker-enabled, unpaused queues of this database.
fn drain_database(budget: i64) -> i64 {
    let queues: Vec<(String, i32)> = Spi::connect(|client| {
        client
            .select(
                "SELECT queue_name, concurrency FROM eventic.queues
                  WHERE worker AND NOT paused ORDER BY queue_name",
                None,
                &[],
            )
            .map(|rows| {
                rows.filter_map(|row| Some((row.get::<String>(1).ok()??, row.get::<i32>(2).ok()??)))
                    .collect()
            })
            .unwrap_or_default()
    });
    // start each transaction at the next queue: a busy queue early in the list must not
    // take every transaction's budget from the queues after it
    let mut queues = queues;
    if !queues.is_empty() {
        let first = NEXT_QUEUE.with(|next| next.replace(next.get().wrapping_add(1)));
        let len = queues.len();
        queues.rotate_left(first % len);
    }
    let deadline = Instant::now() + TRANSACTION_TIME;
    let mut ran = 0;
    for (queue, concurrency) in queues {
        if ran >= budget || Instant::now() >= deadline {
            break;
        }
        // a queue is drained by at most `concurrency` workers at once: each holds one of its
        // slot locks until its transaction ends
        let has_slot = (0..concurrency.max(1) as u32)
            .any(|slot| crate::records::store::try_lock_queue_slot(&queue, slot));
        if !has_slot {
            continue;
        }
        match crate::queues::drain(&queue, budget - ran, None, Some(deadline)) {
            Ok(n) => ran += n,
            Err(err) => err.report(),
        }
    }
    ran
}

thread_local! {
    /// Where the worker's next transaction starts in its list of queues.
    static NEXT_QUEUE: Cell<usize> = const { Cell::new(0) };
    static WAKE_PENDING: Cell<bool> = const { Cell::new(false) };
    /// The pids of this database's workers, looked up at most every few seconds.
    static WORKER_PIDS: std::cell::RefCell<Option<(Vec<i32>, Instant)>> = const { std::cell::RefCell::new(None) };
}

fn worker_pids() -> Vec<i32> {
    let fresh = WORKER_PIDS.with(|cached| {
        cached
            .borrow()
            .as_ref()
            .filter(|(_, at)| at.elapsed() < Duration::from_secs(5))
            .map(|(pids, _)| pids.clone())
    });
    if let Some(pids) = fresh {
        return pids;
    }
    let pids: Vec<i32> = Spi::get_one::<Vec<i32>>(
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity WHERE backend_type = 'eventic worker'
            AND datid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    WORKER_PIDS.with(|cached| *cached.borrow_mut() = Some((pids.clone(), Instant::now())));
    pids
}

/// Ask the launcher to start this database's workers when the current transaction commits
/// (not before: a worker started earlier would not see the extension yet, and stop). Without
/// the preload there is no launcher, and nothing to do.
pub fn request_workers_at_commit() {
    if !preloaded() {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        START_REQUESTS.get().fetch_add(1, Ordering::Relaxed);
        let launcher = LAUNCHER_PID.get().load(Ordering::Relaxed);
        if launcher > 0 {
            // SAFETY: kill(2) with a valid signal number; SIGUSR1 sets the launcher's latch.
            unsafe { libc::kill(launcher, libc::SIGUSR1) };
        }
    });
}

/// Internal: called at the end of CREATE EXTENSION, so the new database gets its workers
/// within milliseconds of the commit, not at the launcher's next look (every 10 s).
#[pg_extern(volatile, parallel_unsafe)]
fn _request_workers() {
    request_workers_at_commit();
}

/// Wake this database's workers when the current transaction commits (once per transaction):
/// a job enqueued now is run within milliseconds, not at the next poll.
pub fn wake_worker_at_commit() {
    if WAKE_PENDING.with(|pending| pending.replace(true)) {
        return;
    }
    let pids = worker_pids();
    if pids.is_empty() {
        request_workers_at_commit();
    }
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        WAKE_PENDING.with(|pending| pending.set(false));
        for pid in pids {
            // SIGUSR1 sets a backend's latch (procsignal_sigusr1_handler); a stale pid only
            // costs a failed kill, and the next lookup refreshes the list.
            // SAFETY: kill(2) with a valid signal number.
            if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
                WORKER_PIDS.with(|cached| *cached.borrow_mut() = None);
            }
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_PENDING.with(|pending| pending.set(false))
    });
}
