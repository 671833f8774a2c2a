//! Queues (DESIGN.md §3): create/alter/drop, enqueue, drain in the calling session
//! (`run_pending`), and external consumers (`dequeue`/`ack`/`nack`/`extend_lease`).
//!
//! Queue tables belong to the extension owner; every write to them goes through these
//! functions, which check the caller first and then write as the owner.

pub mod claims;
pub mod compaction;
pub mod jobs;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::catalog_cache::{catalog_generation, watch, Generational};
use crate::errors::{required, EventicError, OrReport, Result};
use crate::roles::{as_extension_owner, current_role, is_superuser};
use crate::spi_plans::optional_value;
use jobs::{Job, Signature};

/// A queue as enqueue and the drains need it.
pub struct QueueInfo {
    /// `eventic.queue_<name>`, quoted.
    pub table: String,
    /// Whether the background worker runs its jobs.
    pub worker: bool,
}

thread_local! {
    /// Queues looked up by this backend (`None`: no such queue), until eventic.queues changes.
    static QUEUES: RefCell<Generational<String, Option<Rc<QueueInfo>>>> =
        RefCell::new(Generational::new());
}

/// The table's oid comes back even for an unknown queue: the cache must watch it to see the
/// queue's creation.
const SELECT_QUEUE: &str = "SELECT q.queue_name IS NOT NULL, coalesce(q.worker, false), \
            'eventic.queues'::regclass::oid \
       FROM (SELECT 1) one LEFT JOIN eventic.queues q ON q.queue_name = $1";

/// The queue `queue_name` (42704 when there is none).
pub fn lookup(queue_name: &str) -> Result<Rc<QueueInfo>> {
    let generation = catalog_generation();
    let cached = QUEUES.with(|queues| queues.borrow_mut().get(generation, queue_name));
    let found = match cached {
        Some(found) => found,
        None => {
            let (exists, worker, queues_oid) = Spi::connect(|client| -> Result<_> {
                let stmt = crate::spi_plans::plan(
                    client,
                    SELECT_QUEUE,
                    &[crate::records::store::TEXT],
                    false,
                )?;
                let rows = client.select(&*stmt, Some(1), &[queue_name.into()])?;
                let row = rows.first();
                Ok((
                    row.get::<bool>(1)?.unwrap_or(false),
                    row.get::<bool>(2)?.unwrap_or(false),
                    row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                ))
            })?;
            watch(queues_oid);
            let info = exists.then(|| {
                Rc::new(QueueInfo {
                    table: format!(
                        "eventic.{}",
                        pgrx::spi::quote_identifier(format!("queue_{queue_name}"))
                    ),
                    worker,
                })
            });
            QUEUES.with(|queues| {
                queues
                    .borrow_mut()
                    .insert(generation, queue_name.to_string(), info.clone())
            });
            info
        }
    };
    found.ok_or_else(|| EventicError::UnknownObject {
        what: "queue",
        name: queue_name.to_string(),
        hint: "See SELECT queue_name FROM eventic.queues; create one with \
               eventic.create_queue(name) or eventic.register_class(class)."
            .into(),
    })
}

/// `eventic.queue_<name>`, quoted, for a queue that exists (42704 otherwise).
pub fn queue_table(queue_name: &str) -> Result<String> {
    Ok(lookup(queue_name)?.table.clone())
}

/// queue_<name>_dedup must fit Postgres's 63-byte identifiers.
pub const MAX_QUEUE_NAME: usize = 51;

fn check_queue_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_QUEUE_NAME;
    if ok {
        Ok(())
    } else {
        Err(EventicError::invalid(
            format!("invalid queue name {name:?}"),
            "A queue name is lower-case letters, digits and underscores, starting with a letter \
             or underscore, at most 51 characters.",
        ))
    }
}

/// Create queue `queue_name` (table `eventic.queue_<name>`). With `worker => false` only
/// external consumers (`eventic.dequeue`) take its jobs. Idempotent.
#[pg_extern(volatile, parallel_unsafe)]
fn create_queue(queue_name: Option<&str>, worker: default!(Option<bool>, "true")) {
    (|| {
        let name = required(queue_name, "queue_name")?;
        check_queue_name(name)?;
        let worker = required(worker, "worker")?;
        if lookup(name).is_ok() {
            return Ok(()); // idempotent (whoever created it)
        }
        let caller = current_role();
        as_extension_owner(|| {
            Spi::run_with_args(
                "SELECT eventic._create_queue($1, NULL, $2::oid::regrole)",
                &[name.into(), caller.into()],
            )?;
            Spi::run_with_args(
                "UPDATE eventic.queues SET worker = $2 WHERE queue_name = $1 AND worker <> $2",
                &[name.into(), worker.into()],
            )?;
            Ok(())
        })
    })()
    .or_report()
}

fn require_queue_owner(queue_name: &str, what: &str) -> Result<()> {
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT owner::oid FROM eventic.queues WHERE queue_name = $1",
        &[queue_name.into()],
    )?;
    // a queue without an owner is the extension owner's
    let owner = match owner {
        Some(owner) => owner,
        None => crate::roles::extension_owner()?,
    };
    if crate::roles::may_manage(owner) {
        Ok(())
    } else {
        Err(EventicError::not_allowed(
            format!("permission denied to {what} queue {queue_name}"),
            "Only the role that created the queue (or its class) or a superuser may.",
        ))
    }
}

/// Change a queue's concurrency, pause it, or turn its in-database worker on/off.
#[pg_extern(volatile, parallel_unsafe)]
fn alter_queue(
    queue_name: Option<&str>,
    concurrency: default!(Option<i32>, "NULL"),
    paused: default!(Option<bool>, "NULL"),
    worker: default!(Option<bool>, "NULL"),
) {
    (|| {
        let name = required(queue_name, "queue_name")?;
        queue_table(name)?;
        if concurrency.is_some_and(|c| c < 1) {
            return Err(EventicError::invalid(
                "concurrency must be at least 1",
                "Pause a queue with paused => true instead.",
            ));
        }
        require_queue_owner(name, "alter")?;
        as_extension_owner(|| {
            Spi::run_with_args(
                "UPDATE eventic.queues SET concurrency = coalesce($2, concurrency),
                        paused = coalesce($3, paused), worker = coalesce($4, worker)
                  WHERE queue_name = $1",
                &[
                    name.into(),
                    concurrency.into(),
                    paused.into(),
                    worker.into(),
                ],
            )?;
            Ok(())
        })?;
        // an unpaused queue (more concurrency, the worker turned on) runs its jobs at commit,
        // not at the next poll
        if paused == Some(false) || worker == Some(true) || concurrency.is_some() {
            crate::worker::wake_worker_at_commit();
        }
        Ok(())
    })()
    .or_report()
}

/// Drop a queue and its jobs. A class's queue goes with eventic.drop_class.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_queue(queue_name: Option<&str>) {
    (|| {
        let name = required(queue_name, "queue_name")?;
        let table = queue_table(name)?;
        let class = Spi::get_one_with_args::<String>(
            "SELECT class_name FROM eventic.queues WHERE queue_name = $1",
            &[name.into()],
        )?;
        if let Some(class) = class {
            return Err(EventicError::invalid(
                format!("queue {name} belongs to class {class}"),
                format!("Drop the class with eventic.drop_class('{class}')."),
            ));
        }
        require_queue_owner(name, "drop")?;
        as_extension_owner(|| {
            Spi::run(&format!("DROP TABLE {table}"))?;
            Spi::run_with_args(
                "DELETE FROM eventic.queues WHERE queue_name = $1",
                &[name.into()],
            )?;
            Spi::run_with_args(
                "DELETE FROM eventic.finished_batches WHERE queue_name = $1",
                &[name.into()],
            )?;
            Ok(())
        })
    })()
    .or_report()
}

thread_local! {
    static PRELOAD_NOTICE_GIVEN: Cell<bool> = const { Cell::new(false) };
}

/// Once per session: without the preloaded worker, queued jobs wait for run_pending.
fn notice_if_no_worker() {
    if PRELOAD_NOTICE_GIVEN.with(|given| given.replace(true)) {
        return;
    }
    if !crate::worker::preloaded() {
        pgrx::notice!(
            "eventic's background worker is not running: jobs wait until eventic.run_pending() drains them. \
             Add eventic to shared_preload_libraries and restart PostgreSQL to run them in the background."
        );
    }
}

/// A job's arguments: built in Rust, or passed on as the caller's jsonb datum (no text round
/// trip through serde on the way into the INSERT).
pub enum JobArgs {
    Json(serde_json::Value),
    Datum(crate::raw_jsonb::RawJsonb),
}

/// A job to insert into a queue table.
pub struct NewJob<'a> {
    pub fn_oid: pg_sys::Oid,
    pub args: JobArgs,
    pub run_at: Option<TimestampWithTimeZone>,
    pub priority: i32,
    pub dedup_key: Option<&'a str>,
    pub max_attempts: i32,
    pub enqueued_by: pg_sys::Oid,
}

/// Insert `job` (as the extension owner); with a `dedup_key` already waiting, that job's id.
pub fn insert_job(table: &str, job: NewJob<'_>) -> Result<i64> {
    as_extension_owner(|| {
        // ON CONFLICT only with a dedup_key: it makes every insert speculative (an index
        // pre-check, a speculative token, a second pass over the heap tuple)
        let on_conflict = if job.dedup_key.is_some() {
            "ON CONFLICT (enqueued_by, dedup_key) WHERE dedup_key IS NOT NULL AND dead_at IS NULL DO NOTHING"
        } else {
            ""
        };
        let sql = format!(
            "INSERT INTO {table} (fn, args, run_at, priority, dedup_key, max_attempts, enqueued_by)
             VALUES ($1, $2, coalesce($3, now()), $4, $5, $6, $7) {on_conflict}
             RETURNING job_id"
        );
        let oid = PgOid::BuiltIn(PgBuiltInOids::OIDOID);
        let int4 = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
        let types = [
            oid,
            PgOid::BuiltIn(PgBuiltInOids::JSONBOID),
            PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID),
            int4,
            PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            int4,
            oid,
        ];
        let inserted = crate::spi_plans::optional_value_planned::<i64>(
            &sql,
            &types,
            &[
                job.fn_oid.into(),
                match job.args {
                    JobArgs::Json(value) => JsonB(value).into(),
                    JobArgs::Datum(raw) => raw.into(),
                },
                job.run_at.into(),
                job.priority.into(),
                job.dedup_key.into(),
                job.max_attempts.into(),
                job.enqueued_by.into(),
            ],
        );
        match inserted? {
            Some(id) => Ok(id),
            // the dedup_key is already waiting (the same role's: keys are per role): that job
            None => optional_value::<i64>(
                &format!(
                    "SELECT job_id FROM {table}
                      WHERE enqueued_by = $2 AND dedup_key = $1 AND dead_at IS NULL"
                ),
                &[job.dedup_key.into(), job.enqueued_by.into()],
            )?
            .ok_or_else(|| EventicError::Internal("dedup job vanished".into())),
        }
    })
}

thread_local! {
    /// When this session last sent the NOTIFY of each queue.
    static LAST_NOTIFY: std::cell::RefCell<std::collections::HashMap<String, std::time::Instant>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// After an enqueue: NOTIFY `eventic_<queue>` for external consumers (at most every 100 ms
/// per session and queue: consumers drain until empty, so one wake-up covers a burst), and
/// wake the worker when the transaction commits (if it runs this queue's jobs).
pub fn announce(queue_name: &str) -> Result<()> {
    let due = LAST_NOTIFY.with(|last| {
        let mut last = last.borrow_mut();
        let now = std::time::Instant::now();
        match last.get(queue_name) {
            Some(at) if now.duration_since(*at) < std::time::Duration::from_millis(100) => false,
            _ => {
                last.insert(queue_name.to_string(), now);
                true
            }
        }
    });
    if due {
        Spi::run_with_args(
            "SELECT pg_notify('eventic_' || $1, '')",
            &[queue_name.into()],
        )?;
    }
    if lookup(queue_name)?.worker {
        notice_if_no_worker();
        crate::worker::wake_worker_at_commit();
    }
    Ok(())
}

/// Enqueue `fn(args)` on `queue`; returns the job id (the waiting job's id when `dedup_key`
/// is already waiting). Called by the SQL wrapper `eventic.enqueue` (fn as regprocedure).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, name = "_enqueue")]
fn enqueue_job(
    queue_name: Option<&str>,
    fn_oid: Option<pg_sys::Oid>,
    args: Option<crate::raw_jsonb::RawJsonb>,
    run_at: Option<TimestampWithTimeZone>,
    priority: Option<i32>,
    dedup_key: Option<&str>,
    max_attempts: Option<i32>,
    run_as: Option<pg_sys::Oid>,
) -> i64 {
    (|| {
        let name = required(queue_name, "queue")?;
        let fn_oid = required(fn_oid, "fn")?;
        let args = required(args, "args")?;
        let priority = required(priority, "priority")?;
        let max_attempts = required(max_attempts, "max_attempts")?;
        let table = queue_table(name)?;
        if max_attempts < 1 {
            return Err(EventicError::invalid(
                format!("max_attempts must be at least 1, not {max_attempts}"),
                "A job runs at least once.",
            ));
        }
        let signature = Signature::of(fn_oid)?;
        let runner = run_as.unwrap_or_else(current_role);
        // the function exists (Signature::of found it)
        if !crate::roles::may_execute(fn_oid, runner) {
            let name = Spi::get_one_with_args::<String>("SELECT $1::regprocedure::text", &[fn_oid.into()])?
                .unwrap_or_else(|| fn_oid.to_u32().to_string());
            return Err(EventicError::not_allowed(
                format!("permission denied to enqueue a call of function {name}"),
                "Jobs run as the role that enqueued them (or run_as): it needs EXECUTE on the function.",
            ));
        }
        if signature.takes_whole_jsonb() {
            args.check_holdable()?;
        } else {
            signature.check_args(&args.to_value()?)?;
        }
        check_run_at(run_at)?;
        let enqueuer = match run_as {
            Some(role) if role != current_role() && !is_superuser() => {
                return Err(EventicError::not_allowed(
                    "permission denied to enqueue a job that runs as another role",
                    "Only a superuser may pass run_as; a job runs as the role that enqueued it.",
                ))
            }
            Some(role) => role,
            None => current_role(),
        };
        let job = NewJob {
            fn_oid,
            args: JobArgs::Datum(args),
            run_at,
            priority,
            dedup_key,
            max_attempts,
            enqueued_by: enqueuer,
        };
        let job_id = insert_job(&table, job)?;
        announce(name)?;
        Ok(job_id)
    })()
    .or_report()
}

/// A job's run_at must be a time: `infinity` would never run, `-infinity` breaks every
/// reader that computes its age (eventic.queue_stats).
pub fn check_run_at(run_at: Option<TimestampWithTimeZone>) -> Result<()> {
    match run_at {
        Some(at) if at.is_infinity() || at.is_neg_infinity() => Err(EventicError::invalid(
            "run_at must be a finite time",
            "Pass NULL (or now()) to run the job as soon as possible.",
        )),
        _ => Ok(()),
    }
}

/// The most jobs one statement takes while draining (they run in groups of one function, or
/// one by one, each group or job in its own subtransaction; their ends are written together).
pub const CLAIM_BATCH: i64 = 512;

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
enum Taken {
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
fn lease_jobs(table: &str, limit: i64, lease: &str) -> Result<Vec<(Job, i32)>> {
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
enum Finished<'a> {
    /// Dequeued jobs that an external consumer acked: they must still hold a lease.
    Acked(&'a [i64]),
    /// Jobs this transaction drained ([`Taken::Locked`]), by row: their row locks are held,
    /// so the rows cannot have moved, and a TID scan deletes them without an index lookup
    /// per job.
    Drained(&'a [pg_sys::ItemPointerData]),
}

/// Jobs that ran: out of their queue, into the archive (eventic.finished_jobs). Returns how
/// many moved.
fn finish(queue_name: &str, table: &str, finished: Finished<'_>) -> Result<i64> {
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

/// A job that failed: retried after a backoff, or dead after max_attempts (at once with
/// `give_up`: it can never succeed). False if absent. A workflow whose run job goes dead
/// ends in ERROR (it would otherwise wait forever for a run that never comes).
fn fail(table: &str, job_id: i64, error: &str, taken: Taken, give_up: bool) -> Result<bool> {
    let (attempts, condition) = (taken.attempts_sql(), taken.condition_sql());
    as_extension_owner(|| {
        let updated = optional_value::<i64>(
            &format!(
                "WITH failed AS (
                   UPDATE {table} SET lease_until = NULL, last_error = $2, attempts = {attempts},
                          run_at = clock_timestamp() + least(3600, power(2, {attempts})) * (0.5 + random() / 2) * interval '1 second',
                          dead_at = CASE WHEN $3 OR {attempts} >= max_attempts THEN clock_timestamp() END
                    WHERE job_id = $1 AND dead_at IS NULL {condition}
                RETURNING job_id, fn, args, dead_at IS NOT NULL AS dead, attempts)
                 {END_STUCK_WORKFLOWS}
                 SELECT job_id FROM failed"
            ),
            &[job_id.into(), error.into(), give_up.into()],
        );
        Ok(updated?.is_some())
    })
}

/// Part of a statement that has `failed(job_id, fn, args, dead, attempts)`: the workflows
/// whose run job is among the dead ones end in ERROR.
pub const END_STUCK_WORKFLOWS: &str = ", stuck AS (
       UPDATE eventic.workflow_runs w
          SET status = 'ERROR', updated_at = pg_catalog.clock_timestamp(),
              error = 'the job running this workflow failed ' || f.attempts || ' times: ' || $2
         FROM failed f
        WHERE f.dead AND f.fn = pg_catalog.to_regprocedure('eventic._run_workflow(text)')
          AND w.workflow_id = f.args ->> 0
          AND w.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED'))";

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
/// subtransaction; its effects commit with its completion. With a `deadline`, no new batch is
/// claimed after it. Returns how many ran.
pub fn drain(
    queue_name: &str,
    max_jobs: i64,
    only_role: Option<pg_sys::Oid>,
    deadline: Option<std::time::Instant>,
) -> Result<i64> {
    let table = queue_table(queue_name)?;
    claims::recover_dead_workers()?;
    let mut calls = jobs::Calls::default();
    let mut grouping = true;
    let mut ran = 0;
    // each group or job that writes keeps a subtransaction xid until the transaction ends:
    // stop (the caller commits) before they overflow the subxid cache
    let room = || !crate::subxact::subxid_cache_nearly_full();
    while ran < max_jobs && deadline.is_none_or(|at| std::time::Instant::now() < at) && room() {
        let batch = lock_jobs(
            &table,
            (max_jobs - ran).min(claim_size(queue_name)),
            only_role,
        )?;
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
                let outcome = jobs::run_group(group, &mut calls);
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
                let outcome = jobs::run(job, &mut calls);
                claims::done();
                match outcome {
                    Ok(()) => succeeded.push(*tid),
                    Err(failure) => {
                        fail(
                            &table,
                            job.job_id,
                            &format!("{}: {}", failure.sqlstate, failure.message),
                            Taken::Locked,
                            job.unreadable.is_some(),
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
        let limit = if paused { 0 } else { i64::from(batch) };
        Ok(lease_jobs(&table, limit, &lease_sql)?
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
        if fail(&table, job_id, error.unwrap_or("nack"), Taken::Leased, false)? {
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
            crate::worker::wake_worker_at_commit(); // it runs at commit, not at the next poll
        }
        Ok(())
    })()
    .or_report()
}
