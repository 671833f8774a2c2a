//! The background worker (DESIGN.md §3): a launcher, started by the postmaster when eventic is
//! in shared_preload_libraries, runs workers in the databases that have the extension; a
//! worker drains the queues of its database and sleeps on its latch in between.
//!
//! - [`launcher`]: lists the databases every 10 s (and when woken), gives every database its
//!   first worker before any database its second (within eventic.max_workers and the free
//!   background worker slots), warns once when a database gets none, restarts a worker that
//!   died within a second (with a backoff if it keeps dying), and asks the workers that the
//!   settings no longer allow to stop.
//! - [`database`]: a database worker. It runs each queue's jobs in a subtransaction of their
//!   own, survives any error outside a job (logged, its transaction rolled back, on after a
//!   second), holds off while a pg_restore session is connected to its database or
//!   eventic.pause_workers is set for it, and assigns no transaction id while idle.
//! - `runtime::board`: their shared memory (which databases have no extension, get no worker,
//!   are paused; which worker runs where), with the wake-ups and waits the features use too.
//!
//! Signals, in both: SIGTERM is Postgres's own die() (a fast shutdown or pg_terminate_backend
//! ends the process at the next interrupt check, in a running job too, whose transaction
//! rolls back); SIGHUP rereads the configuration at the next wait; every wait ends the process
//! when the postmaster dies.
//!
//! Workers connect as the bootstrap superuser and run every job as the role that enqueued it
//! (see `queues::jobs`).

mod database;
mod launcher;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::{pg_sys, register_xact_callback, PgTryBuilder, PgXactCallbackEvent};

use crate::runtime::{self, board, my_database, preloaded, sleep_on_latch};

pub use database::eventic_worker_main;
pub use launcher::eventic_launcher_main;

const WORKER_TYPE: &str = "eventic worker";
const LAUNCHER_TYPE: &str = "eventic launcher";

/// Called from `_PG_init`: register the launcher when preloaded.
pub fn init() {
    // SAFETY: a plain read of a postmaster flag.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    runtime::mark_preloaded();
    crate::settings::init_preloaded();
    board::init();
    crate::progress::init();
    crate::queues::rate::init();
    crate::records::heads::init();
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_library("eventic")
        .set_function("eventic_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

// ---------------------------------------------------------------------------------------------
// What the launcher and the workers share: signals, waits, transactions that survive errors.

unsafe extern "C-unwind" {
    /// Postgres's SIGTERM handler of backends (postgres.c), itself: pgrx's `pg_sys::die` is a
    /// Rust wrapper, which a signal handler must not be.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

/// SIGHUP: pgrx's handler (a flag, the latch); SIGTERM: Postgres's die(), so that the next
/// interrupt check ends the process wherever it is, in a running job too (its transaction
/// rolls back and its jobs run again later). pgrx's own SIGTERM handler only set a flag, which
/// the drain loop consumed: a fast shutdown then waited for the worker forever.
fn attach_signal_handlers() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SAFETY: installs a signal handler of the server, as postgres.c does for backends.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
}

/// Reread the configuration files if a SIGHUP came.
fn reload_config_if_asked() {
    if BackgroundWorker::sighup_received() {
        // SAFETY: the standard reaction to SIGHUP in a background worker.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// A worker's or the launcher's wait: [`sleep_on_latch`], then a SIGHUP rereads the
/// configuration.
fn wait(timeout: Duration) {
    sleep_on_latch(timeout);
    reload_config_if_asked();
}

/// How long a process waits after an error outside a job before it goes on.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Run `body` in a transaction of its own and commit it. An ERROR (or a Rust panic) in it or
/// in the commit does not end the process, as in pg_cron: it is logged as a WARNING (`what`
/// says what was being done), the transaction is rolled back, and `None` comes back.
fn guarded_transaction<R>(what: &str, body: impl FnOnce() -> R) -> Option<R> {
    // SAFETY: the sequence of pgrx's BackgroundWorker::transaction, with an abort on error.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    PgTryBuilder::new(AssertUnwindSafe(|| {
        let result = body();
        // SAFETY: pops the snapshot pushed above and commits the transaction started above.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Some(result)
    }))
    .catch_others(|caught| {
        report_as_warning(what, &caught);
        // SAFETY: what postgres.c does after an error: abort the transaction (and every
        // subtransaction, snapshot, lock and SPI connection of it). pgrx has already copied
        // and flushed the error state when it turned the ERROR into this panic.
        unsafe { pg_sys::AbortCurrentTransaction() };
        None
    })
    .execute()
}

/// The parts of a caught ERROR or panic.
struct Caught {
    sqlstate: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

fn caught_parts(caught: &CaughtError) -> Caught {
    let report = match caught {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    Caught {
        sqlstate: report.sql_error_code(),
        message: report.message().to_string(),
        detail: report.detail().map(str::to_string),
        hint: report.hint().map(str::to_string),
    }
}

fn report_as_warning(what: &str, caught: &CaughtError) {
    let parts = caught_parts(caught);
    let mut report = ErrorReport::new(parts.sqlstate, format!("{what}: {}", parts.message), "eventic");
    if let Some(detail) = parts.detail {
        report = report.set_detail(detail);
    }
    report = report.set_hint(match parts.hint {
        Some(hint) => format!("{hint} The work of that transaction was rolled back and is tried again in a second."),
        None => "The work of that transaction was rolled back and is tried again in a second.".to_string(),
    });
    report.report(PgLogLevel::WARNING);
}

/// What pg_stat_activity shows for this process.
fn set_activity(state: pg_sys::BackendState::Type, text: &str) {
    if let Ok(c_text) = std::ffi::CString::new(text) {
        // SAFETY: reports this backend's activity for pg_stat_activity.
        unsafe { pg_sys::pgstat_report_activity(state, c_text.as_ptr()) };
    }
}

// ---------------------------------------------------------------------------------------------
// The session side: start requests (wake-ups and the NOTICE at enqueue: `crate::runtime`).

/// Ask the launcher to start this database's workers when the current transaction commits
/// (not before: a worker started earlier would not see the extension yet, and stop). Without
/// the preload there is no launcher, and nothing to do.
pub fn request_workers_at_commit() {
    if !preloaded() {
        return;
    }
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        board::request_workers(my_database())
    });
}

/// Internal: called at the end of CREATE EXTENSION, so the new database gets its workers
/// within milliseconds of the commit, not at the launcher's next look (every 10 s).
#[pg_extern(volatile, parallel_unsafe)]
fn _request_workers() {
    request_workers_at_commit();
}
