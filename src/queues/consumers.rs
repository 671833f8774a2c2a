//! External consumers: `dequeue` (leases jobs), `ack`, `nack`, `extend_lease`, and
//! `retry_job` (revives a dead job).

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::errors::{required, EventicError, OrReport, Result};
use crate::roles::{as_extension_owner, is_superuser};
use crate::spi_plans::optional_value;

use super::drain::{fail, finish, lease_jobs, Death, Finished, Taken};
use super::{lookup, queue_table, require_queue_owner};

/// External consumers: take up to `batch` ready jobs, invisible to others for `lease`.
#[pg_extern(volatile, parallel_unsafe, name = "_dequeue")]
fn dequeue(
    queue_name: Option<&str>,
    batch: Option<i32>,
    lease: Option<Interval>,
) -> TableIterator<
    'static,
    (
        name!(job_id, i64),
        name!(fn_oid, pg_sys::Oid),
        name!(args, JsonB),
        name!(attempt, i32),
    ),
> {
    let rows = (|| {
        let name = required(queue_name, "queue")?;
        let batch = required(batch, "batch")?;
        let lease = required(lease, "lease")?;
        let table = queue_table(name)?;
        require_consumer(name)?;
        if batch < 1 {
            return Err(EventicError::invalid(
                "batch must be at least 1",
                "Take at least one job.",
            ));
        }
        let lease_sql = interval_literal(lease)?;
        let paused = Spi::get_one_with_args::<bool>(
            "SELECT paused FROM eventic.queues WHERE queue_name = $1",
            &[name.into()],
        )?
        .unwrap_or(false);
        let mut limit = if paused { 0 } else { i64::from(batch) };
        // a rate-limited queue's starts count for consumers too
        let rate = lookup(name)?.rate;
        let grant = rate.map(|rate| super::rate::take(name, rate, limit));
        if let Some(grant) = &grant {
            limit = grant.granted;
        }
        let leased = lease_jobs(&table, limit, &lease_sql)?;
        if let (Some(rate), Some(grant)) = (rate, &grant) {
            super::rate::give_back(name, rate, grant, limit - leased.len() as i64);
        }
        Ok(leased
            .into_iter()
            .map(|(job, attempt)| (job.job_id, job.fn_oid, JsonB(job.args), attempt))
            .collect::<Vec<_>>())
    })()
    .or_report();
    TableIterator::new(rows)
}

/// The longest lease: a year.
const MAX_LEASE_MICROS: i128 = 366 * 86_400_000_000;

/// A positive interval as a SQL literal (for the lease).
fn interval_literal(lease: Interval) -> Result<String> {
    // in i128: months of 30 days in microseconds overflow i64 for large intervals, which
    // wrapped around to a lease of days
    let micros = (i128::from(lease.months()) * 30 + i128::from(lease.days())) * 86_400_000_000
        + i128::from(lease.micros());
    if micros <= 0 {
        return Err(EventicError::invalid(
            "lease must be a positive interval",
            "Pass a lease such as '30 seconds'.",
        ));
    }
    if micros > MAX_LEASE_MICROS {
        return Err(EventicError::invalid(
            "lease must be at most 1 year",
            "Pass a shorter lease and extend it with eventic.extend_lease while the job runs.",
        ));
    }
    Ok(format!("interval '{micros} microseconds'"))
}

/// External consumers act for the queue's owner: they see every job's arguments and decide
/// whether it ran. Its owner (or members of that role) and superusers may.
fn require_consumer(queue_name: &str) -> Result<()> {
    if is_superuser() {
        return Ok(());
    }
    require_queue_owner(queue_name, "consume jobs of")
}

fn unknown_job(queue_name: &str, job_id: i64) -> EventicError {
    EventicError::JobNotFound {
        queue: queue_name.to_string(),
        job_id,
    }
}

/// External consumers: the job is done; it leaves the queue for eventic.finished_jobs.
#[pg_extern(volatile, parallel_unsafe)]
fn ack(queue_name: Option<&str>, job_id: Option<i64>) {
    (|| {
        let (name, job_id) = (required(queue_name, "queue")?, required(job_id, "job_id")?);
        let table = queue_table(name)?;
        require_consumer(name)?;
        if finish(name, &table, Finished::Acked(&[job_id]))? == 1 {
            Ok(())
        } else {
            Err(unknown_job(name, job_id))
        }
    })()
    .or_report()
}

/// External consumers: the job failed; it is retried after a backoff (dead after max_attempts).
#[pg_extern(volatile, parallel_unsafe)]
fn nack(queue_name: Option<&str>, job_id: Option<i64>, error: default!(Option<&str>, "NULL")) {
    (|| {
        let (name, job_id) = (required(queue_name, "queue")?, required(job_id, "job_id")?);
        let table = queue_table(name)?;
        require_consumer(name)?;
        let failed = fail(&table, &[job_id], error.unwrap_or("nack"), Taken::Leased, Death::AtMaxAttempts)?;
        if failed == 1 {
            Ok(())
        } else {
            Err(unknown_job(name, job_id))
        }
    })()
    .or_report()
}

/// External consumers: keep a leased job for `lease` more; returns the new end of the lease.
#[pg_extern(volatile, parallel_unsafe)]
fn extend_lease(
    queue_name: Option<&str>,
    job_id: Option<i64>,
    lease: Option<Interval>,
) -> TimestampWithTimeZone {
    (|| {
        let (name, job_id) = (required(queue_name, "queue")?, required(job_id, "job_id")?);
        let lease_sql = interval_literal(required(lease, "lease")?)?;
        let table = queue_table(name)?;
        require_consumer(name)?;
        let until = as_extension_owner(|| {
            optional_value::<TimestampWithTimeZone>(
                &format!(
                    "UPDATE {table} SET lease_until = clock_timestamp() + {lease_sql}
                      WHERE job_id = $1 AND dead_at IS NULL AND lease_until IS NOT NULL
                      RETURNING lease_until"
                ),
                &[job_id.into()],
            )
        })?;
        until.ok_or_else(|| unknown_job(name, job_id))
    })()
    .or_report()
}

/// Revive a dead job: it runs again from its first attempt.
#[pg_extern(volatile, parallel_unsafe)]
fn retry_job(queue_name: Option<&str>, job_id: Option<i64>) {
    (|| {
        let (name, job_id) = (required(queue_name, "queue")?, required(job_id, "job_id")?);
        let table = queue_table(name)?;
        if !is_superuser() {
            require_queue_owner(name, "retry jobs of")?;
        }
        let waiting_twin = Spi::get_one_with_args::<i64>(
            &format!(
                "SELECT (SELECT w.job_id FROM {table} d JOIN {table} w
                            ON w.dedup_key = d.dedup_key AND w.enqueued_by = d.enqueued_by
                          WHERE d.job_id = $1 AND d.dead_at IS NOT NULL AND w.dead_at IS NULL)"
            ),
            &[job_id.into()],
        )?;
        if let Some(twin) = waiting_twin {
            return Err(EventicError::invalid(
                format!("job {job_id} of queue {name} has the dedup_key of job {twin}, which is waiting"),
                "Let the waiting job run (or fail) first; a dedup_key is waiting at most once.",
            ));
        }
        let revived = as_extension_owner(|| {
            optional_value::<i64>(
                &format!(
                    "UPDATE {table} SET dead_at = NULL, attempts = 0, run_at = clock_timestamp(), lease_until = NULL
                      WHERE job_id = $1 AND dead_at IS NOT NULL RETURNING job_id"
                ),
                &[job_id.into()],
            )
        })?;
        revived.ok_or_else(|| unknown_job(name, job_id))?;
        if lookup(name)?.worker {
            crate::runtime::wake_worker_at_commit(); // it runs at commit, not at the next poll
        }
        Ok(())
    })()
    .or_report()
}
