//! Queues (DESIGN.md §3): create/alter/drop, enqueue, drain in the calling session
//! (`run_pending`), and external consumers (`dequeue`/`ack`/`nack`/`extend_lease`).
//!
//! Queue tables belong to the extension owner; every write to them goes through these
//! functions, which check the caller first and then write as the owner.

pub mod claims;
pub mod compaction;
mod consumers;
mod drain;
pub mod jobs;
pub mod rate;

pub use drain::drain;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::catalog_cache::{catalog_generation, watch, Generational};
use crate::errors::{required, EventicError, OrReport, Result};
use crate::roles::{as_extension_owner, current_role, is_superuser};
use crate::spi_plans::optional_value;
use jobs::Signature;

/// A queue as enqueue and the drains need it.
pub struct QueueInfo {
    /// `eventic.queue_<name>`, quoted.
    pub table: String,
    /// Whether the background worker runs its jobs.
    pub worker: bool,
    /// Its rate limit (`alter_queue(rate_limit =>, rate_period =>)`), if any.
    pub rate: Option<rate::Rate>,
}

thread_local! {
    /// Queues looked up by this backend (`None`: no such queue), until eventic.queues changes.
    static QUEUES: RefCell<Generational<String, Option<Rc<QueueInfo>>>> =
        RefCell::new(Generational::new());
}

/// The table's oid comes back even for an unknown queue: the cache must watch it to see the
/// queue's creation.
/// (The rate columns through to_jsonb: a database still at 0.2.0, loading this library, has
/// none.)
const SELECT_QUEUE: &str = "SELECT q.queue_name IS NOT NULL, coalesce(q.worker, false), \
            'eventic.queues'::regclass::oid, (to_jsonb(q) ->> 'rate_limit')::int8, \
            (extract(epoch FROM (to_jsonb(q) ->> 'rate_period')::interval) * 1e9)::int8 \
       FROM (SELECT 1) one LEFT JOIN eventic.queues q ON q.queue_name = $1";

/// The queue `queue_name` (42704 when there is none).
pub fn lookup(queue_name: &str) -> Result<Rc<QueueInfo>> {
    let generation = catalog_generation();
    let cached = QUEUES.with(|queues| queues.borrow_mut().get(generation, queue_name));
    let found = match cached {
        Some(found) => found,
        None => {
            let (exists, worker, queues_oid, rate) = Spi::connect(|client| -> Result<_> {
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
                    match (row.get::<i64>(4)?, row.get::<i64>(5)?) {
                        (Some(limit), Some(period_nanos)) if limit > 0 && period_nanos > 0 => {
                            Some(rate::Rate {
                                limit,
                                period_nanos,
                            })
                        }
                        _ => None,
                    },
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
                    rate,
                })
            });
            // a miss is not remembered: it may come from a snapshot older than the
            // invalidation that brought this generation (a worker's pass that began before
            // the queue's CREATE committed), and would then last until the next change
            if info.is_some() {
                QUEUES.with(|queues| {
                    queues
                        .borrow_mut()
                        .insert(generation, queue_name.to_string(), info.clone())
                });
            }
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

/// Change a queue's concurrency, pause it, or turn its in-database worker on/off: the
/// 0.1.0/0.2.0 `eventic.alter_queue` (a database not yet updated calls this symbol).
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn alter_queue(
    queue_name: Option<&str>,
    concurrency: Option<i32>,
    paused: Option<bool>,
    worker: Option<bool>,
) {
    alter(queue_name, concurrency, paused, worker, None, None).or_report()
}

/// `eventic.alter_queue` (sql/queues.sql): also its rate limit (`rate_limit => 0` removes it).
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn alter_queue_with_rate(
    queue_name: Option<&str>,
    concurrency: Option<i32>,
    paused: Option<bool>,
    worker: Option<bool>,
    rate_limit: Option<i32>,
    rate_period: Option<Interval>,
) {
    alter(
        queue_name,
        concurrency,
        paused,
        worker,
        rate_limit,
        rate_period,
    )
    .or_report()
}

fn alter(
    queue_name: Option<&str>,
    concurrency: Option<i32>,
    paused: Option<bool>,
    worker: Option<bool>,
    rate_limit: Option<i32>,
    rate_period: Option<Interval>,
) -> Result<()> {
    let name = required(queue_name, "queue_name")?;
    queue_table(name)?;
    if concurrency.is_some_and(|c| c < 1) {
        return Err(EventicError::invalid(
            "concurrency must be at least 1",
            "Pause a queue with paused => true instead.",
        ));
    }
    check_rate(rate_limit, rate_period)?;
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
        if rate_limit.is_some() || rate_period.is_some() {
            // a limit set without a period: per second; 0 removes the limit (and its period)
            Spi::run_with_args(
                "UPDATE eventic.queues
                    SET rate_limit = CASE WHEN $2 = 0 THEN NULL ELSE coalesce($2, rate_limit) END,
                        rate_period = CASE WHEN $2 = 0 THEN NULL
                                           ELSE coalesce($3, rate_period, interval '1 second') END
                  WHERE queue_name = $1",
                &[name.into(), rate_limit.into(), rate_period.into()],
            )?;
        }
        Ok(())
    })?;
    // an unpaused queue (more concurrency, the worker turned on, another rate) runs its jobs
    // at commit, not at the next poll
    if paused == Some(false)
        || worker == Some(true)
        || concurrency.is_some()
        || rate_limit.is_some()
    {
        crate::runtime::wake_worker_at_commit();
    }
    Ok(())
}

/// The longest rate period: 31 days.
const MAX_RATE_PERIOD_MICROS: i128 = 31 * 86_400_000_000;

fn check_rate(rate_limit: Option<i32>, rate_period: Option<Interval>) -> Result<()> {
    if let Some(limit) = rate_limit.filter(|limit| *limit < 0) {
        return Err(EventicError::invalid(
            format!("rate_limit must not be negative, not {limit}"),
            "Pass the most jobs that may start per rate_period (0 removes the limit).",
        ));
    }
    if let Some(period) = rate_period {
        let micros = i128::from(period.months()) * 30 * 86_400_000_000
            + i128::from(period.days()) * 86_400_000_000
            + i128::from(period.micros());
        if !(1_000..=MAX_RATE_PERIOD_MICROS).contains(&micros) {
            return Err(EventicError::invalid(
                format!("rate_period must be between 1 millisecond and 31 days, not {micros} microseconds"),
                "Pass an interval such as '1 second' or '1 minute'.",
            ));
        }
    }
    Ok(())
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
    if !crate::runtime::preloaded() {
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
        crate::runtime::wake_worker_at_commit();
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
            args.check_holdable_at(0)?;
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
