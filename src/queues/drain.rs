//! Running jobs in this session: claiming them (`lock_jobs`, sized by the queue's job
//! duration; `lease_jobs` for external consumers), running them (`drain`,
//! `run_pending`), and writing their ends (`finish`, `fail`, `prune_archive`).

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;
use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::prelude::*;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::progress;
use crate::roles::{as_extension_owner, current_role, is_superuser};
use crate::spi_plans::optional_value;

use super::jobs::{self, Job};
use super::{claims, queue_table, CLAIM_BATCH};

/// How long one claimed batch should take to run. The batch size follows the queue's job
/// duration: no-op jobs are taken 512 at a time, jobs of 50 ms or more one at a time, so a
/// worker never sits on many slow jobs that other workers (concurrency > 1) could run, and
/// their effects commit soon.
const BATCH_TARGET: std::time::Duration = std::time::Duration::from_millis(50);

thread_local! {
    /// Per queue: this backend's running average of the time one job takes, in µs.
    static JOB_MICROS: RefCell<std::collections::HashMap<String, f64>> =
        RefCell::new(std::collections::HashMap::new());
}

/// How many jobs of `queue_name` to claim next: a power of two (so that the claim's kept
/// plans are few), 4 while the queue's job duration is unknown.
fn claim_size(queue_name: &str) -> i64 {
    let micros = JOB_MICROS.with(|m| m.borrow().get(queue_name).copied());
    let Some(micros) = micros else {
        return 4;
    };
    let fits = (BATCH_TARGET.as_micros() as f64 / micros.max(1.0)) as i64;
    let size = if fits < 2 {
        1
    } else {
        1 << (63 - fits.leading_zeros())
    };
    size.min(CLAIM_BATCH)
}

/// Note that `jobs` jobs of `queue_name` took `elapsed`.
fn note_job_time(queue_name: &str, jobs: usize, elapsed: std::time::Duration) {
    if jobs == 0 {
        return;
    }
    let sample = elapsed.as_micros() as f64 / jobs as f64;
    JOB_MICROS.with(|m| {
        let mut m = m.borrow_mut();
        let average = m.entry(queue_name.to_string()).or_insert(sample);
        *average = (*average + sample) / 2.0;
    });
}

/// How a job was taken, which decides how its end is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// By `dequeue`: leased (visible to all as taken), its attempt counted at once.
    Leased,
    /// By a drain in this transaction: only row-locked (FOR UPDATE SKIP LOCKED). The drain
    /// ends the job before it commits, so a lease would never be seen by anyone; a crash
    /// rolls the lock back and the job is taken again. Its attempt is counted at its end.
    Locked,
}

impl Taken {
    /// The row's attempts counting this one.
    fn attempts_sql(self) -> &'static str {
        match self {
            Taken::Leased => "attempts",
            Taken::Locked => "attempts + 1",
        }
    }

    /// Only jobs taken this way may be ended this way (ack/nack need a dequeued job).
    fn condition_sql(self) -> &'static str {
        match self {
            Taken::Leased => "AND lease_until IS NOT NULL",
            Taken::Locked => "",
        }
    }
}

/// Which runnable jobs come first, for the ready index (priority DESC, run_at, job_id).
const RUNNABLE: &str = "dead_at IS NULL AND run_at <= $1
           AND (lease_until IS NULL OR lease_until < $1)";
const RUNNABLE_ORDER: &str = "ORDER BY priority DESC, run_at, job_id";

/// Lease up to `limit` runnable jobs for `lease` (external consumers).
pub(super) fn lease_jobs(table: &str, limit: i64, lease: &str) -> Result<Vec<(Job, i32)>> {
    as_extension_owner(|| {
        crate::spi_plans::in_index_order(|| {
            Spi::connect_mut(|client| {
                let sql = format!(
                "WITH taken AS (
                   UPDATE {table} q SET lease_until = clock_timestamp() + {lease}, attempts = q.attempts + 1
                    -- = ANY (ARRAY(...)): the ids are taken first, whatever plan the outer
                    -- UPDATE gets (IN (...) can become a semi-join that scans the queue, or
                    -- re-runs the locking subquery per row)
                    WHERE q.job_id = ANY (ARRAY(
                          SELECT job_id FROM {table} WHERE {RUNNABLE}
                           {RUNNABLE_ORDER} LIMIT $2 FOR UPDATE SKIP LOCKED))
                   RETURNING q.job_id, q.fn::oid AS fn, q.args, q.enqueued_by, q.attempts,
                             q.priority, q.run_at)
                 SELECT job_id, fn, args, enqueued_by, attempts FROM taken {RUNNABLE_ORDER}"
            );
                let types = [
                    PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID),
                    PgOid::BuiltIn(PgBuiltInOids::INT8OID),
                ];
                let stmt = crate::spi_plans::dynamic_plan(client, &sql, &types)?;
                let rows =
                    client.update(&*stmt, None, &[clock_timestamp().into(), limit.into()])?;
                let mut jobs = Vec::new();
                for row in rows {
                    let job = jobs::job_from(&row)?;
                    jobs.push((job, row.get::<i32>(5)?.unwrap_or(1)));
                }
                Ok(jobs)
            })
        })
    })
}

/// Lock up to `limit` runnable jobs for this transaction ([`Taken::Locked`]), in order.
/// `only_role`: jobs enqueued by it only. The limit is written into the statement (a generic
/// plan of `LIMIT $n` may sort the whole queue instead of reading the ready index in order);
/// the plans of power-of-two limits are kept, others are planned for each claim.
fn lock_jobs(
    table: &str,
    limit: i64,
    only_role: Option<pg_sys::Oid>,
) -> Result<Vec<(Job, pg_sys::ItemPointerData)>> {
    let role_filter = match only_role {
        Some(role) => format!("AND enqueued_by = {}", role.to_u32()),
        None => String::new(),
    };
    let sql = format!(
        "SELECT job_id, fn::oid, args, enqueued_by, ctid, attempts FROM {table}
          WHERE {RUNNABLE} {role_filter}
          {RUNNABLE_ORDER} LIMIT {limit} FOR UPDATE SKIP LOCKED"
    );
    let now = clock_timestamp();
    as_extension_owner(|| {
        crate::spi_plans::in_index_order(|| {
            // select on mutating plans, not update: an empty claim (an idle worker's) must not
            // assign an xid (see spi_plans::plan)
            Spi::connect(|client| {
                let types = [PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID)];
                let stmt = if limit > 0 && (limit as u64).is_power_of_two() {
                    crate::spi_plans::dynamic_plan(client, &sql, &types)?
                } else {
                    std::rc::Rc::new(client.prepare_mut(&sql, &types)?.keep()) // freed on drop
                };
                let rows = client.select(&*stmt, None, &[now.into()])?;
                rows.map(|row| {
                    let tid = row.get::<pg_sys::ItemPointerData>(5)?.ok_or_else(|| {
                        EventicError::Internal("a claimed job without ctid".into())
                    })?;
                    let mut job = jobs::job_from(&row)?;
                    job.retried = row.get::<i32>(6)?.unwrap_or(0) > 0;
                    Ok((job, tid))
                })
                .collect()
            })
        })
    })
}

/// Jobs that ran successfully.
pub(super) enum Finished<'a> {
    /// Dequeued jobs that an external consumer acked: they must still hold a lease.
    Acked(&'a [i64]),
    /// Jobs this transaction drained ([`Taken::Locked`]), by row: their row locks are held,
    /// so the rows cannot have moved, and a TID scan deletes them without an index lookup
    /// per job.
    Drained(&'a [pg_sys::ItemPointerData]),
}

/// Jobs that ran: out of their queue, into the archive (eventic.finished_jobs). Returns how
/// many moved.
pub(super) fn finish(queue_name: &str, table: &str, finished: Finished<'_>) -> Result<i64> {
    let (rows_sql, taken, rows_type, rows): (_, _, _, pgrx::datum::DatumWithOid) = match finished {
        Finished::Acked([]) | Finished::Drained([]) => return Ok(0),
        Finished::Acked(ids) => (
            "job_id = ANY ($2) AND dead_at IS NULL AND lease_until IS NOT NULL",
            Taken::Leased,
            PgBuiltInOids::INT8ARRAYOID,
            ids.to_vec().into(),
        ),
        Finished::Drained(tids) => (
            "ctid = ANY ($2)",
            Taken::Locked,
            PgBuiltInOids::TIDARRAYOID,
            tids.to_vec().into(),
        ),
    };
    let attempts = taken.attempts_sql();
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            // eventic.archive_retention = 0 keeps no archive: the jobs are only deleted
            let sql = if crate::settings::archive_retention_seconds() == 0 {
                format!(
                    "DELETE FROM {table} WHERE {rows_sql} AND $1 IS NOT NULL RETURNING NULL::bigint[]"
                )
            } else {
                // one archive row for the whole batch (sql/queues.sql: finished_batches)
                format!(
                    "WITH done AS (DELETE FROM {table} WHERE {rows_sql}
                                   RETURNING job_id, fn, args, enqueued_by, enqueued_at, {attempts} AS attempts)
                     INSERT INTO eventic.finished_batches
                            (queue_name, job_ids, fns, args, enqueued_by, enqueued_at, attempts)
                     SELECT $1, array_agg(job_id), array_agg(fn), array_agg(args), array_agg(enqueued_by),
                            array_agg(enqueued_at), array_agg(attempts)
                       FROM (SELECT * FROM done ORDER BY job_id) d
                     HAVING count(*) > 0
                     RETURNING job_ids"
                )
            };
            let types = [
                PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
                PgOid::BuiltIn(rows_type),
            ];
            let stmt = crate::spi_plans::dynamic_plan(client, &sql, &types)?;
            let rows = client.update(&*stmt, None, &[queue_name.into(), rows])?;
            // the deleted jobs (retention 0), or the ids in the one archive row
            let mut moved = 0;
            for row in rows {
                moved += match row.get::<Vec<i64>>(1)? {
                    Some(ids) => ids.len() as i64,
                    None => 1,
                };
            }
            Ok(moved)
        })
    })
}

/// When a failed job is dead.
#[derive(Clone, Copy)]
pub(super) enum Death {
    /// After max_attempts (a job's own failure).
    AtMaxAttempts,
    /// Now: it can never succeed (args eventic cannot read).
    Now,
    /// Not for this failure, which may not be its own (its group's process died): the
    /// attempt counts, and it runs alone next time.
    Never,
}

/// Jobs that failed: an attempt counted, retried after a backoff, or dead (see [`Death`]).
/// Returns how many there were. A workflow whose run job goes dead ends in ERROR (it would
/// otherwise wait forever for a run that never comes).
pub(super) fn fail(table: &str, job_ids: &[i64], error: &str, taken: Taken, death: Death) -> Result<i64> {
    let (attempts, condition) = (taken.attempts_sql(), taken.condition_sql());
    let (now, at_max) = match death {
        Death::AtMaxAttempts => (false, true),
        Death::Now => (true, false),
        Death::Never => (false, false),
    };
    as_extension_owner(|| {
        let failed = optional_value::<i64>(
            &format!(
                "WITH failed AS (
                   UPDATE {table} SET lease_until = NULL, last_error = $2, attempts = {attempts},
                          run_at = clock_timestamp() + least(3600, power(2, {attempts})) * (0.5 + random() / 2) * interval '1 second',
                          dead_at = CASE WHEN $3 OR ($4 AND {attempts} >= max_attempts) THEN clock_timestamp() END
                    WHERE job_id = ANY ($1) AND dead_at IS NULL {condition}
                RETURNING job_id, fn, args, dead_at IS NOT NULL AS dead, attempts),
                 stuck AS (
                   UPDATE eventic.workflow_runs w
                      SET status = 'ERROR', updated_at = pg_catalog.clock_timestamp(),
                          error = 'the job running this workflow failed ' || f.attempts || ' times: ' || $2
                     FROM failed f
                    WHERE f.dead AND f.fn = pg_catalog.to_regprocedure('eventic._run_workflow(text)')
                      AND w.workflow_id = f.args ->> 0
                      AND w.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED'))
                 SELECT count(*) FROM failed"
            ),
            &[job_ids.to_vec().into(), error.into(), now.into(), at_max.into()],
        );
        Ok(failed?.unwrap_or(0))
    })
}

/// Count an attempt for the jobs that dead workers of this database were running (their
/// notes, see [`claims`]): a job that ran alone is dead after max_attempts, like any failing
/// job; each job of a group gets an attempt and runs alone from then on.
fn recover_dead_workers() -> Result<()> {
    for note in claims::take_dead_workers_notes()? {
        let Ok(table) = queue_table(&note.queue_name) else {
            continue; // the queue is gone, and its jobs with it
        };
        let (pid, count) = (note.pid, note.job_ids.len());
        let (error, death) = if count == 1 {
            (format!("the worker process running this job died (pid {pid}: a crash, a kill or out of memory; see the server log)"), Death::AtMaxAttempts)
        } else {
            (format!("the worker process died (pid {pid}) while running this job in a group of {count}; it runs alone from now on"), Death::Never)
        };
        pgrx::warning!(
            "eventic: a worker (pid {pid}) died while running {count} job(s) of queue {}: an attempt is counted for each",
            note.queue_name
        );
        fail(&table, &note.job_ids, &error, Taken::Locked, death)?;
    }
    Ok(())
}

const PRUNE_ARCHIVE: &str =
    "DELETE FROM eventic.finished_batches WHERE finished_at < $1 - $2 * interval '1 second'";

thread_local! {
    static LAST_PRUNE: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Remove finished jobs older than eventic.archive_retention (through the finished_at
/// index: the cutoff is a parameter, not a volatile expression evaluated per row), at most
/// every few seconds per backend.
fn prune_archive() -> Result<()> {
    let due = LAST_PRUNE.with(|last| match last.get() {
        Some(at) if at.elapsed() < std::time::Duration::from_secs(5) => false,
        _ => {
            last.set(Some(std::time::Instant::now()));
            true
        }
    });
    if !due {
        return Ok(());
    }
    // in index order: a kept plan made while the archive was small would otherwise scan the
    // whole archive (a day of batches by default) every 5 s to find the few that expired
    as_extension_owner(|| {
        crate::spi_plans::in_index_order(|| {
            Spi::connect(|client| {
                let types = [
                    PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID),
                    PgOid::BuiltIn(PgBuiltInOids::INT4OID),
                ];
                let stmt = crate::spi_plans::plan(client, PRUNE_ARCHIVE, &types, true)?;
                let retention = crate::settings::archive_retention_seconds();
                client.select(&*stmt, None, &[clock_timestamp().into(), retention.into()])?;
                Ok(())
            })
        })
    })
}

/// Run up to `max_jobs` ready jobs of one queue in this session: each as its enqueuer, in a
/// subtransaction; its effects commit with its completion. With a `deadline` (a worker), no new
/// batch is claimed after it, and no job runs once the transaction nears the subxid cache's
/// size. Returns how many ran.
pub fn drain(
    queue_name: &str,
    max_jobs: i64,
    only_role: Option<pg_sys::Oid>,
    deadline: Option<std::time::Instant>,
) -> Result<i64> {
    let info = super::lookup(queue_name)?;
    let (table, rate) = (info.table.clone(), info.rate);
    recover_dead_workers()?;
    let mut calls = jobs::Calls::default();
    let mut grouping = true;
    let mut ran = 0;
    // each group or job that writes keeps a subtransaction xid until the transaction ends: a
    // worker's drain (the one with a deadline, whose caller commits and goes on in a new
    // transaction) stops before they overflow the subxid cache; run_pending runs what it
    // was asked to in its caller's one transaction
    let room = || deadline.is_none() || !crate::subxact::subxid_cache_nearly_full();
    while ran < max_jobs && deadline.is_none_or(|at| std::time::Instant::now() < at) && room() {
        let mut wanted = (max_jobs - ran).min(claim_size(queue_name));
        let grant = rate.map(|rate| super::rate::take(queue_name, rate, wanted));
        if let Some(grant) = &grant {
            if grant.granted == 0 {
                // a worker sleeps no longer than until the next start is allowed
                if let Some(at) = grant.retry_at {
                    crate::runtime::wake_by(at);
                }
                break;
            }
            wanted = grant.granted;
        }
        let batch = lock_jobs(&table, wanted, only_role)?;
        if let (Some(rate), Some(grant)) = (rate, &grant) {
            super::rate::give_back(queue_name, rate, grant, wanted - batch.len() as i64);
        }
        if batch.is_empty() {
            break;
        }
        // the jobs' time only: a slow claim must not shrink the next claims (more claims)
        let started = std::time::Instant::now();
        let (batch, tids): (Vec<Job>, Vec<pg_sys::ItemPointerData>) = batch.into_iter().unzip();
        let mut succeeded = Vec::with_capacity(batch.len());
        // jobs claimed but not run (no room left) are released at commit, untouched
        let mut ran_in_batch = 0;
        let mut start = 0;
        'groups: for group in batch.chunk_by(jobs::same_call) {
            let rows = start..start + group.len();
            start = rows.end;
            // consecutive jobs of one call run as one statement; if that fails, one by one
            if grouping && group.len() > 1 {
                let ids: Vec<i64> = group.iter().map(|job| job.job_id).collect();
                claims::running(queue_name, &ids);
                progress::job_running(queue_name, &ids, group[0].fn_oid, group[0].enqueued_by);
                let outcome = jobs::run_group(group, &mut calls);
                progress::job_done();
                claims::done();
                if outcome.is_ok() {
                    succeeded.extend_from_slice(&tids[rows]);
                    ran_in_batch += group.len();
                    if !room() {
                        break 'groups;
                    }
                    continue;
                }
                // failures are likely to come again in this drain: no more groups
                grouping = false;
            }
            for (job, tid) in group.iter().zip(&tids[rows]) {
                if !room() {
                    break 'groups;
                }
                ran_in_batch += 1;
                claims::running(queue_name, &[job.job_id]);
                progress::job_running(queue_name, &[job.job_id], job.fn_oid, job.enqueued_by);
                let outcome = jobs::run(job, &mut calls);
                progress::job_done();
                claims::done();
                match outcome {
                    Ok(()) => succeeded.push(*tid),
                    Err(failure) => {
                        let death = if job.unreadable.is_some() {
                            Death::Now
                        } else {
                            Death::AtMaxAttempts
                        };
                        fail(
                            &table,
                            &[job.job_id],
                            &format!("{}: {}", failure.sqlstate, failure.message),
                            Taken::Locked,
                            death,
                        )?;
                    }
                }
            }
        }
        finish(queue_name, &table, Finished::Drained(&succeeded))?;
        note_job_time(queue_name, ran_in_batch, started.elapsed());
        ran += ran_in_batch as i64;
    }
    prune_archive()?;
    Ok(ran)
}

/// Run ready jobs in this session (without the background worker, or to drain now). A
/// non-superuser runs only the jobs it enqueued. Returns how many jobs ran.
#[pg_extern(volatile, parallel_unsafe)]
fn run_pending(
    queue_name: default!(Option<&str>, "NULL"),
    max_jobs: default!(Option<i32>, "100"),
) -> i64 {
    (|| {
        let max_jobs = i64::from(required(max_jobs, "max_jobs")?);
        if max_jobs < 0 {
            return Err(EventicError::invalid(
                "max_jobs must not be negative",
                "Pass a count such as 100.",
            ));
        }
        let only_role = (!is_superuser()).then(current_role);
        let queues: Vec<String> = match queue_name {
            Some(name) => vec![name.to_string()],
            None => Spi::connect(|client| -> Result<Vec<String>> {
                let mut names = Vec::new();
                for row in client.select(
                    "SELECT queue_name FROM eventic.queues WHERE NOT paused ORDER BY queue_name",
                    None,
                    &[],
                )? {
                    names.extend(row.get::<String>(1)?);
                }
                Ok(names)
            })?,
        };
        let mut ran = 0;
        for name in queues {
            ran += drain(&name, max_jobs - ran, only_role, None)?;
        }
        Ok(ran)
    })()
    .or_report()
}
