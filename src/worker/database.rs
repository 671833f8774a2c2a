//! A database worker: drains the queues of its database, each queue's share of a transaction
//! in a subtransaction of its own, and sleeps on its latch in between.
//!
//! - An ERROR while draining one queue (outside its jobs, which have their own
//!   subtransactions: the queue dropped meanwhile, a broken table) rolls back that queue's
//!   work of the transaction only, with a WARNING; the other queues' finished jobs commit,
//!   and the queue is tried again after 1 s, doubling up to a minute while it keeps failing.
//! - An ERROR anywhere else is logged, the transaction rolled back, and the worker goes on
//!   after a second: only a FATAL (SIGTERM, the postmaster's death) ends it.
//! - While a pg_restore session is connected to the database, or eventic.pause_workers is set
//!   for it (`ALTER DATABASE ... SET`), it runs no jobs (looked at at most once a second).
//! - Idle, it assigns no transaction id and writes no WAL: an empty claim locks no row, and
//!   eventic's statements run through SpiClient::select (see spi_plans::plan), which assigns
//!   an xid only when a statement writes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use pgrx::pg_sys;

use crate::runtime::board::{self, Paused, StopReason, WorkerArg};
use super::{guarded_transaction, set_activity, wait};
use crate::settings;

/// Jobs per transaction of a worker: their effects and completions commit together.
const JOBS_PER_TRANSACTION: i64 = 1024;
/// A worker's transaction claims no new batch after this long, so that slow jobs (and
/// workflow runs) become visible, and release their row locks, every ~100 ms rather than
/// after 1024 of them.
const TRANSACTION_TIME: Duration = Duration::from_millis(100);
/// How often the worker looks for a pg_restore session or eventic.pause_workers.
const PAUSE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const QUEUE_RETRY_FIRST: Duration = Duration::from_secs(1);
const QUEUE_RETRY_MAX: Duration = Duration::from_secs(60);

/// What one pass of the worker (one transaction) came to.
enum Pass {
    Ran(i64),
    Paused(Paused),
    NoExtension,
}

struct Worker {
    me: WorkerArg,
    name: String,
    paused: Option<Paused>,
    pause_checked: Option<Instant>,
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn eventic_worker_main(arg: pg_sys::Datum) {
    let me = WorkerArg::decode(arg);
    super::attach_signal_handlers();
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(me.database), None);
    // the database owner's ALTER DATABASE ... SET search_path must not decide what the
    // worker's own statements call (it runs as the bootstrap superuser)
    crate::roles::pin_worker_search_path();
    register_in_slot(&me);
    let name = guarded_transaction("eventic worker: could not read its database's name", || {
        // SAFETY: a catalog lookup inside a transaction; NULL for a database dropped meanwhile.
        let name = unsafe { pg_sys::get_database_name(me.database) };
        if name.is_null() {
            None
        } else {
            // SAFETY: a palloc'd C string, copied before the transaction ends.
            Some(unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy().into_owned())
        }
    })
    .flatten()
    .unwrap_or_else(|| format!("with oid {}", me.database.to_u32()));
    let mut worker = Worker {
        me,
        name,
        paused: None,
        pause_checked: None,
    };
    worker.run();
}

/// Publish this worker's pid on the board (for wake-ups), and clear it when the process
/// exits, however it exits.
fn register_in_slot(me: &WorkerArg) {
    unsafe extern "C-unwind" fn clear_slot(_code: std::ffi::c_int, slot: pg_sys::Datum) {
        let slot = &board::board().slots[slot.value()];
        // SAFETY: a plain read of this process's pid.
        let _ = slot.pid.compare_exchange(
            unsafe { pg_sys::MyProcPid },
            0,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
    // SAFETY: a plain read of this process's pid; the callback only touches atomics.
    unsafe {
        board::board().slots[me.slot]
            .pid
            .store(pg_sys::MyProcPid, Ordering::Release);
        pg_sys::before_shmem_exit(Some(clear_slot), pg_sys::Datum::from(me.slot));
    }
}

impl Worker {
    fn run(&mut self) {
        loop {
            if let Some(why) = self.why_stop() {
                log!("eventic worker {} for database \"{}\" stops: {why}", self.me.number, self.name);
                return;
            }
            let entry = board::database(self.me.database);
            // read before looking for the extension: a request after this clears the mark
            let requests = entry.map(|entry| entry.requests.load(Ordering::Acquire));
            set_activity(pg_sys::BackendState::STATE_RUNNING, "eventic: draining queues");
            let pass = guarded_transaction(
                &format!("eventic worker for database \"{}\"", self.name),
                || self.pass(),
            );
            // a background worker reports its table statistics only when asked: without this
            // autovacuum never sees the jobs it deleted
            // SAFETY: outside a transaction, as postgres.c does before going idle.
            unsafe { pg_sys::pgstat_report_stat(false) };
            pgrx::check_for_interrupts!(); // a SIGTERM ends the worker here
            if let Some(Pass::Ran(_)) = pass {
                self.set_paused(None);
            }
            match pass {
                Some(Pass::Ran(n)) if n > 0 => {}
                Some(Pass::Ran(_)) => {
                    compact_empty_queues();
                    set_activity(pg_sys::BackendState::STATE_IDLE, "eventic: waiting for jobs");
                    wait(crate::runtime::bounded(poll_interval()));
                }
                Some(Pass::Paused(why)) => {
                    set_activity(
                        pg_sys::BackendState::STATE_IDLE,
                        match why {
                            Paused::Restore => "eventic: no jobs while pg_restore is connected",
                            Paused::Setting => "eventic: no jobs while eventic.pause_workers is on",
                        },
                    );
                    self.set_paused(Some(why));
                    wait(crate::runtime::bounded(poll_interval().min(PAUSE_CHECK_INTERVAL)));
                }
                Some(Pass::NoExtension) => {
                    if let (Some(entry), Some(requests)) = (entry, requests) {
                        entry.no_extension_at.store(requests + 1, Ordering::Release);
                    }
                    pgrx::debug1!(
                        "eventic worker for database \"{}\" stops: eventic is not installed there; \
                         the launcher starts none there until CREATE EXTENSION eventic",
                        self.name
                    );
                    return;
                }
                None => wait(super::ERROR_PAUSE),
            }
        }
    }

    /// Why the worker should stop now, if it should.
    fn why_stop(&self) -> Option<String> {
        let board = board::board();
        if board.generation.load(Ordering::Acquire) as u8 != self.me.generation {
            return Some("the eventic launcher restarted and starts its workers anew".into());
        }
        let reason = board.slots[self.me.slot].stop_reason()?;
        Some(match reason {
            StopReason::WorkersPerDatabase => format!(
                "eventic.workers_per_database is now {}",
                settings::workers_per_database()
            ),
            StopReason::MaxWorkers => format!(
                "eventic.max_workers ({}) leaves no room for it: every database's first worker comes before any second",
                settings::max_workers()
            ),
            StopReason::FirstWorkers => format!(
                "its background worker slot goes to another database's first worker (max_worker_processes = {})",
                crate::runtime::max_worker_processes()
            ),
        })
    }

    /// One transaction: is eventic here, are the workers paused, else run a batch of jobs.
    fn pass(&mut self) -> Pass {
        // SAFETY: a catalog lookup inside a transaction (no SPI, no xid).
        if unsafe { pg_sys::get_extension_oid(c"eventic".as_ptr(), true) } == pg_sys::InvalidOid {
            return Pass::NoExtension;
        }
        if self
            .pause_checked
            .is_none_or(|at| at.elapsed() >= PAUSE_CHECK_INTERVAL)
        {
            self.pause_checked = Some(Instant::now());
            self.paused = pause_cause(self.me.database);
        }
        match self.paused {
            Some(why) => Pass::Paused(why),
            None => {
                let ran = drain_database(JOBS_PER_TRANSACTION);
                crate::workflows::retention::prune_if_due();
                // after the drain: before it, a slow first look at the schedules let the
                // queue list (a fresh snapshot) name a queue that queues::lookup (the pass's
                // snapshot) then cached as missing. A tick enqueued here wakes the workers at
                // commit.
                crate::schedules::fire_due();
                Pass::Ran(ran)
            }
        }
    }

    /// Note on the board (for the NOTICE at enqueue) and in the log when the workers of the
    /// database start or stop holding off.
    fn set_paused(&mut self, why: Option<Paused>) {
        let Some(entry) = board::database(self.me.database) else {
            return;
        };
        let now = why.map_or(0, |why| why as u32);
        // the worker that flips the flag says so (once per change and database)
        if entry.paused.swap(now, Ordering::AcqRel) == now {
            return;
        }
        match why {
            Some(Paused::Restore) => log!(
                "eventic: the workers of database \"{}\" run no jobs while pg_restore is connected to it",
                self.name
            ),
            Some(Paused::Setting) => log!(
                "eventic: the workers of database \"{}\" run no jobs: eventic.pause_workers is on for it",
                self.name
            ),
            None => log!("eventic: the workers of database \"{}\" run jobs again", self.name),
        }
    }
}

fn poll_interval() -> Duration {
    Duration::from_millis(settings::poll_interval_ms().max(10) as u64)
}

/// Why the workers of `database` should run no jobs now: a pg_restore session connected to
/// it, or `ALTER DATABASE ... SET eventic.pause_workers = on` (read from the catalog: a
/// worker's own setting is the one of when it connected). Read-only.
fn pause_cause(database: pg_sys::Oid) -> Option<Paused> {
    let (restore, setting) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
                                 WHERE datid = $1 AND application_name = 'pg_restore'
                                   AND pid <> pg_catalog.pg_backend_pid()),
                        EXISTS (SELECT FROM pg_catalog.pg_db_role_setting s,
                                            pg_catalog.unnest(s.setconfig) AS c(setting)
                                 WHERE s.setdatabase = $1 AND s.setrole = 0
                                   AND pg_catalog.lower(c.setting)
                                       OPERATOR(pg_catalog.~) '^eventic\\.pause_workers=(on|t|tr|tru|true|y|ye|yes|1)$')",
                None,
                &[database.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((
            row.get::<bool>(1)?.unwrap_or(false),
            row.get::<bool>(2)?.unwrap_or(false),
        ))
    })
    .unwrap_or_else(|err| pgrx::error!("eventic worker: could not look for a running pg_restore: {err}"));
    if restore {
        Some(Paused::Restore)
    } else if setting {
        Some(Paused::Setting)
    } else {
        None
    }
}

thread_local! {
    /// Where the worker's next transaction starts in its list of queues.
    static NEXT_QUEUE: Cell<usize> = const { Cell::new(0) };
    /// Queues whose drain failed: (failures in a row, not before).
    static QUEUE_RETRY: RefCell<HashMap<String, (u32, Instant)>> = RefCell::new(HashMap::new());
}

/// Run up to `budget` jobs from the worker-enabled, unpaused queues of this database, each
/// queue in a subtransaction of its own.
fn drain_database(budget: i64) -> i64 {
    let mut queues: Vec<(String, i32)> = Spi::connect(|client| {
        client
            .select(
                "SELECT queue_name, concurrency FROM eventic.queues
                  WHERE worker AND NOT paused ORDER BY queue_name",
                None,
                &[],
            )?
            .map(|row| Ok((row.get::<String>(1)?, row.get::<i32>(2)?)))
            .filter_map(|row: Result<_, pgrx::spi::Error>| match row {
                Ok((Some(name), Some(concurrency))) => Some(Ok((name, concurrency))),
                Ok(_) => None,
                Err(err) => Some(Err(err)),
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_else(|err| pgrx::error!("eventic worker: could not list the queues: {err}"));
    // start each transaction at the next queue: a busy queue early in the list must not
    // take every transaction's budget from the queues after it
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
        if QUEUE_RETRY.with(|retry| retry.borrow().get(&queue).is_some_and(|(_, at)| *at > Instant::now())) {
            continue;
        }
        // an idle drain (an empty claim, nothing of the archive to prune) assigns no xid and
        // writes nothing: queues::drain reads through mutating plans run by SpiClient::select
        let outcome = crate::subxact::in_subtransaction(|| {
            // a queue is drained by at most `concurrency` workers at once: each holds one of
            // its slot locks until its transaction ends (so that with concurrency 1 a job
            // sees the effects of the one before it), or gives it back at once when it ran
            // nothing: a long job of a queue visited later must not keep this one closed
            let slot = (0..concurrency.max(1) as u32)
                .find(|slot| crate::locks::try_lock_queue_slot(&queue, *slot))?;
            match crate::queues::drain(&queue, budget - ran, None, Some(deadline)) {
                Ok(0) => {
                    crate::locks::unlock_queue_slot(&queue, slot);
                    Some(0)
                }
                Ok(n) => Some(n),
                // raised here, so that the subtransaction rolls back what the drain did
                Err(err) => err.report(),
            }
        });
        match outcome {
            Ok(Some(n)) => {
                ran += n;
                QUEUE_RETRY.with(|retry| retry.borrow_mut().remove(&queue));
                // the transaction ends with the first queue that ran jobs: its slot is held
                // until then, and must not wait for the jobs of the queues after it (the next
                // transaction starts at the next queue)
                if n > 0 {
                    break;
                }
            }
            Ok(None) => {}
            Err(failure) => {
                let (failures, delay) = QUEUE_RETRY.with(|retry| {
                    let mut retry = retry.borrow_mut();
                    let failures = retry.get(&queue).map_or(1, |(n, _)| n + 1);
                    let delay = QUEUE_RETRY_FIRST
                        .saturating_mul(1 << (failures - 1).min(16))
                        .min(QUEUE_RETRY_MAX);
                    retry.insert(queue.clone(), (failures, Instant::now() + delay));
                    (failures, delay)
                });
                let report = pgrx::pg_sys::panic::ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_WARNING,
                    format!(
                        "eventic worker: draining queue \"{queue}\" failed: {} (SQLSTATE {})",
                        failure.message, failure.sqlstate
                    ),
                    "eventic",
                )
                .set_detail(
                    "That queue's work of this transaction was rolled back (its jobs run again later); \
                     the other queues' jobs were not affected.",
                )
                .set_hint(format!(
                    "The queue is tried again in {} s (failure {failures} in a row, the wait doubles up to a minute). \
                     If it keeps failing, look at its table and jobs (eventic.queue_stats), or drop it with eventic.drop_queue.",
                    delay.as_secs()
                ));
                report.report(PgLogLevel::WARNING);
            }
        }
    }
    ran
}

/// With nothing left to run: truncate the large queue tables that are empty (see
/// [`crate::queues::compaction`]), each in a transaction of its own.
fn compact_empty_queues() {
    let candidates = guarded_transaction("eventic worker: could not list the queue tables to truncate", || {
        crate::queues::compaction::candidates().unwrap_or_else(|err| {
            pgrx::warning!("eventic: could not list the queue tables to truncate: {err}");
            Vec::new()
        })
    })
    .unwrap_or_default();
    for queue in candidates {
        pgrx::check_for_interrupts!();
        set_activity(
            pg_sys::BackendState::STATE_RUNNING,
            &format!("eventic: truncating the emptied queue {queue}"),
        );
        guarded_transaction(
            &format!("eventic worker: could not truncate the table of queue \"{queue}\""),
            || {
                if let Err(err) = crate::queues::compaction::truncate_if_empty(&queue) {
                    pgrx::warning!("eventic: could not truncate the table of queue {queue}: {err}");
                }
            },
        );
    }
}
