//! What the background worker and the features share, below both (DESIGN.md §3): whether
//! eventic is preloaded, the workers' shared memory ([`board`]), the wake-ups a session asks
//! for at commit, the alarm a pass sets for the worker's next wait, and the latch sleep. The
//! worker loop (src/worker.rs) calls the features; the features call these; this module
//! calls neither.

mod alarm;
pub mod board;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{pg_sys, register_xact_callback, PgXactCallbackEvent};

pub use alarm::{bounded, wake_by};

/// Set in the postmaster when eventic is preloaded; backends inherit it with fork().
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Whether eventic was loaded through shared_preload_libraries (so the worker runs).
pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

/// Called from the worker's init in the postmaster, while shared_preload_libraries loads.
pub fn mark_preloaded() {
    PRELOADED.store(true, Ordering::Relaxed);
}

/// Sleep on this process's latch for up to `timeout` (until it is set), then handle
/// interrupts: the postmaster's death ends the process at once, a pending die (SIGTERM) or
/// query cancel at the interrupt check. For workers and for backends waiting for a workflow.
pub fn sleep_on_latch(timeout: Duration) {
    // rounded up: an alarm set for a schedule's tick wakes at the tick, not in the ms before it
    let millis = timeout.as_micros().div_ceil(1000).clamp(1, i32::MAX as u128) as std::ffi::c_long;
    // SAFETY: a timed wait on this process's latch, as pg_sleep and background workers do.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            millis,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pgrx::check_for_interrupts!();
}

// ---------------------------------------------------------------------------------------------
// The session side: wake-ups and the NOTICE at enqueue.

thread_local! {
    static WAKE_PENDING: Cell<bool> = const { Cell::new(false) };
    /// The last `starved`/`paused` state of this database this session gave a NOTICE for.
    static NOTICED: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

pub fn my_database() -> pg_sys::Oid {
    // SAFETY: MyDatabaseId is set for the whole life of a backend connected to a database.
    unsafe { pg_sys::MyDatabaseId }
}

/// Wake this database's workers when the current transaction commits (once per transaction):
/// a job enqueued now is run within milliseconds, not at the next poll. With no worker
/// running here, the launcher is asked for them; when the launcher could give this database
/// none (eventic.max_workers, max_worker_processes) or its workers are paused, a NOTICE says
/// so, once per session and state.
pub fn wake_worker_at_commit() {
    if !preloaded() || WAKE_PENDING.with(|pending| pending.replace(true)) {
        return;
    }
    notice_if_no_worker_runs_jobs();
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        WAKE_PENDING.with(|pending| pending.set(false));
        let database = my_database();
        let pids = board::worker_pids(database);
        if pids.is_empty() {
            board::request_workers(database);
        }
        for pid in pids {
            // SIGUSR1 sets a backend's latch (procsignal_sigusr1_handler); the pids are
            // those of running workers (each clears its own when it exits).
            // SAFETY: kill(2) with a valid signal number.
            unsafe { libc::kill(pid, libc::SIGUSR1) };
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        WAKE_PENDING.with(|pending| pending.set(false))
    });
}

fn notice_if_no_worker_runs_jobs() {
    let Some(entry) = board::database(my_database()) else {
        return;
    };
    let state = (
        entry.starved.load(Ordering::Acquire),
        entry.paused.load(Ordering::Acquire),
    );
    if state == (0, 0) || NOTICED.with(|noticed| noticed.replace(state)) == state {
        return;
    }
    if let Some(starved) = board::Starved::from_u32(state.0) {
        let (message, hint) = starved_text(starved, "this database");
        ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message, "eventic")
            .set_hint(format!(
                "{hint} Until then the jobs wait; eventic.run_pending() runs them in this session."
            ))
            .report(PgLogLevel::NOTICE);
    } else if let Some(paused) = board::Paused::from_u32(state.1) {
        let (message, hint) = match paused {
            board::Paused::Restore => (
                "eventic's workers run no jobs in this database while pg_restore is connected to it",
                "They start within a second of the restore's end.",
            ),
            board::Paused::Setting => (
                "eventic's workers run no jobs in this database: eventic.pause_workers is on for it",
                "ALTER DATABASE ... RESET eventic.pause_workers lets them run again (within a second).",
            ),
        };
        ErrorReport::new(PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION, message, "eventic")
            .set_hint(hint)
            .report(PgLogLevel::NOTICE);
    }
}

/// The message and hint when a database gets no worker (the launcher's WARNING and the
/// NOTICE at enqueue).
pub fn starved_text(starved: board::Starved, subject: &str) -> (String, String) {
    match starved {
        board::Starved::MaxWorkers => (
            format!(
                "no eventic worker runs jobs in {subject}: eventic.max_workers ({}) are all given to other databases",
                crate::settings::max_workers()
            ),
            "Raise eventic.max_workers (ALTER SYSTEM SET eventic.max_workers = ...; SELECT pg_reload_conf()), \
             or lower eventic.workers_per_database: every database gets its first worker before any gets a second."
                .to_string(),
        ),
        board::Starved::NoSlot => (
            format!(
                "no eventic worker runs jobs in {subject}: the server has no free background worker slot (max_worker_processes = {})",
                max_worker_processes()
            ),
            "Raise max_worker_processes (it takes a restart): eventic needs one for its launcher and one per worker, \
             besides parallel queries and other extensions."
                .to_string(),
        ),
    }
}

pub fn max_worker_processes() -> i32 {
    // SAFETY: a plain read of a server setting.
    unsafe { pg_sys::max_worker_processes }
}
