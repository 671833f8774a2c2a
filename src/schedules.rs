//! Cron schedules: `eventic.schedule`, `eventic.unschedule`, the view `eventic.schedules`
//! (sql/schedules.sql), and their ticks, fired by the workers.
//!
//! Patterns are parsed by the `croner` crate (5 fields, or 6 with seconds first), in a time
//! zone of `chrono-tz`. A worker's pass locks the schedules that are due (`FOR UPDATE SKIP
//! LOCKED`), enqueues each one's tick as its owner and moves its `next_run` past now, in
//! one transaction: a tick is enqueued once, whichever worker gets it, and a crash before
//! the commit leaves it due. Due ticks are collapsed into one run for the latest of them; a
//! run whose tick came before the server started (missed while it was down) is skipped for
//! a schedule with `skip_missed`.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::errors::{required, EventicError, OrReport, Result};
use crate::queues::jobs::Signature;
use crate::roles::{as_extension_owner, current_role, may_manage};
use crate::spi_plans::optional_value;

/// The queue of scheduled jobs given no queue (created on first use, like `workflows`).
const DEFAULT_QUEUE: &str = "schedules";

fn parse_cron(cron: &str) -> Result<Cron> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(cron)
        .map_err(|err| {
            EventicError::invalid(
                format!("invalid cron expression {cron:?}: {err}"),
                "Pass 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g. '*/5 * * * *' or '*/2 * * * * *'.",
            )
        })
}

fn parse_zone(timezone: &str) -> Result<Tz> {
    Tz::from_str(timezone).map_err(|_| {
        EventicError::invalid(
            format!("unknown time zone {timezone:?}"),
            "Pass an IANA time zone name such as 'UTC' or 'Europe/Berlin' (see pg_timezone_names).",
        )
    })
}

fn never_matches(cron: &str) -> EventicError {
    EventicError::invalid(
        format!("cron expression {cron:?} matches no time in the coming years"),
        "Check its day-of-month and month fields (e.g. '0 0 31 2 *' never comes).",
    )
}

fn zoned(tz: Tz, seconds: i64) -> Result<DateTime<Tz>> {
    DateTime::<Utc>::from_timestamp(seconds, 0)
        .map(|at| at.with_timezone(&tz))
        .ok_or_else(|| EventicError::Internal(format!("time out of range: {seconds}")))
}

/// The first tick after `seconds` (Unix time, whole seconds).
fn next_after(cron: &Cron, text: &str, tz: Tz, seconds: i64) -> Result<i64> {
    cron.find_next_occurrence(&zoned(tz, seconds)?, false)
        .map(|at| at.timestamp())
        .map_err(|_| never_matches(text))
}

/// The last tick at or before `seconds`.
fn latest_at(cron: &Cron, text: &str, tz: Tz, seconds: i64) -> Result<i64> {
    cron.find_previous_occurrence(&zoned(tz, seconds)?, true)
        .map(|at| at.timestamp())
        .map_err(|_| never_matches(text))
}

/// Now and the server's start, in Unix microseconds (no statement: an idle worker's look at
/// the schedules must not assign a transaction id, which pgrx's Spi::get_* do).
fn clock() -> (i64, i64) {
    /// 2000-01-01 (PostgreSQL's epoch) in Unix microseconds.
    const PG_EPOCH: i64 = 946_684_800_000_000;
    // SAFETY: reads the clock and the postmaster's start time (set before any backend starts).
    let (now, started) = unsafe { (pg_sys::GetCurrentTimestamp(), pg_sys::PgStartTime) };
    (now + PG_EPOCH, started + PG_EPOCH)
}

const TO_TIMESTAMP: &str = "pg_catalog.to_timestamp";

/// Create or replace schedule `name`: call `fn(args)` as a job on `queue` (or start it as a
/// workflow) at every tick of `cron` in `timezone`, as the calling role. Returns the first
/// tick. Called by `eventic.schedule` (sql/schedules.sql).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn schedule(
    name: Option<&str>,
    cron: Option<&str>,
    fn_oid: Option<pg_sys::Oid>,
    args: Option<JsonB>,
    queue: Option<&str>,
    workflow: Option<bool>,
    timezone: Option<&str>,
    skip_missed: Option<bool>,
) -> TimestampWithTimeZone {
    (|| {
        let name = required(name, "name")?;
        let text = required(cron, "cron")?;
        let fn_oid = required(fn_oid, "fn")?;
        let args = required(args, "args")?.0;
        let workflow = required(workflow, "workflow")?;
        let zone_name = required(timezone, "timezone")?;
        let skip_missed = required(skip_missed, "skip_missed")?;
        if name.is_empty() || name.len() > 200 {
            return Err(EventicError::invalid(
                format!("invalid schedule name {name:?}"),
                "A schedule name is 1 to 200 bytes.",
            ));
        }
        let parsed = parse_cron(text)?;
        let tz = parse_zone(zone_name)?;
        check_call(fn_oid, &args, workflow)?;
        let queue = match (queue, workflow) {
            (Some(queue), _) => {
                crate::queues::queue_table(queue)?;
                Some(queue)
            }
            (None, true) => None, // the workflows' default queue, at each start
            (None, false) => {
                if crate::queues::lookup(DEFAULT_QUEUE).is_err() {
                    as_extension_owner(|| {
                        Spi::run_with_args(
                            "SELECT eventic._create_queue($1, NULL, NULL)",
                            &[DEFAULT_QUEUE.into()],
                        )?;
                        Ok(())
                    })?;
                }
                Some(DEFAULT_QUEUE)
            }
        };
        let me = current_role();
        let (now, _) = clock();
        let next = as_extension_owner(|| {
            let existing = Spi::get_two_with_args::<pg_sys::Oid, i64>(
                "SELECT owner::oid, EXTRACT(epoch FROM last_run)::int8
                   FROM eventic.schedule_entries WHERE name = $1 FOR UPDATE",
                &[name.into()],
            );
            let last_run = match existing {
                Ok((Some(owner), _)) if owner != me => {
                    return Err(EventicError::not_allowed(
                        format!("schedule {name:?} belongs to another role"),
                        "Schedule names are shared by all roles of the database: choose another \
                         (its owner, or a superuser, may eventic.unschedule it).",
                    ))
                }
                Ok((_, last_run)) => last_run,
                Err(pgrx::spi::SpiError::InvalidPosition) => None,
                Err(err) => return Err(err.into()),
            };
            // a replaced schedule does not run a tick it already ran
            let next = next_after(&parsed, text, tz, (now / 1_000_000).max(last_run.unwrap_or(0)))?;
            Spi::run_with_args(
                &format!(
                    "INSERT INTO eventic.schedule_entries
                            (name, cron, fn, args, queue_name, workflow, timezone, skip_missed, owner, next_run)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {TO_TIMESTAMP}($10))
                     ON CONFLICT (name) DO UPDATE
                        SET cron = excluded.cron, fn = excluded.fn, args = excluded.args,
                            queue_name = excluded.queue_name, workflow = excluded.workflow,
                            timezone = excluded.timezone, skip_missed = excluded.skip_missed,
                            next_run = excluded.next_run"
                ),
                &[
                    name.into(),
                    text.into(),
                    fn_oid.into(),
                    JsonB(args).into(),
                    queue.into(),
                    workflow.into(),
                    zone_name.into(),
                    skip_missed.into(),
                    me.into(),
                    (next as f64).into(),
                ],
            )?;
            Spi::run_with_args(
                "SELECT eventic._note_owner('eventic.schedule_entries', $1::oid::regrole)",
                &[me.into()],
            )?;
            Spi::get_one_with_args::<TimestampWithTimeZone>(
                &format!("SELECT {TO_TIMESTAMP}($1)"),
                &[(next as f64).into()],
            )?
            .ok_or_else(|| EventicError::Internal("no next run".into()))
        })?;
        // a worker asleep until its poll must see the new tick
        crate::runtime::wake_worker_at_commit();
        Ok(next)
    })()
    .or_report()
}

/// The caller may call `fn_oid` this way: it exists, the caller may EXECUTE it, and `args`
/// fit it (a workflow body: `fn(input jsonb) RETURNS jsonb`).
fn check_call(fn_oid: pg_sys::Oid, args: &serde_json::Value, workflow: bool) -> Result<()> {
    let signature = Signature::of(fn_oid)?;
    if !crate::roles::may_execute(fn_oid, current_role()) {
        let name =
            Spi::get_one_with_args::<String>("SELECT $1::regprocedure::text", &[fn_oid.into()])?
                .unwrap_or_else(|| fn_oid.to_u32().to_string());
        return Err(EventicError::not_allowed(
            format!("permission denied to schedule a call of function {name}"),
            "A schedule's ticks run as the role that created it: it needs EXECUTE on the function.",
        ));
    }
    if workflow {
        if !signature.is_workflow_body() {
            return Err(EventicError::invalid(
                "a scheduled workflow must be a function fn(input jsonb) RETURNS jsonb",
                "Schedule it with workflow => false to run it as a job.",
            ));
        }
        return Ok(());
    }
    signature.check_args(args)
}

/// Remove schedule `name` of the calling role (any role's for a superuser or a member with
/// its privileges). 42704 when there is none the caller may remove.
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn unschedule(name: Option<&str>) -> bool {
    (|| {
        let name = required(name, "name")?;
        let owner = as_extension_owner(|| {
            optional_value::<pg_sys::Oid>(
                "SELECT owner::oid FROM eventic.schedule_entries WHERE name = $1",
                &[name.into()],
            )
        })?;
        // another role's schedule is not there for the caller (as in eventic.schedules)
        if !owner.is_some_and(may_manage) {
            return Err(EventicError::UnknownObject {
                what: "schedule",
                name: name.to_string(),
                hint: "See SELECT name FROM eventic.schedules (your own schedules).".into(),
            });
        }
        as_extension_owner(|| {
            Spi::run_with_args(
                "DELETE FROM eventic.schedule_entries WHERE name = $1",
                &[name.into()],
            )?;
            Ok(true)
        })
    })()
    .or_report()
}

/// A due schedule, as a worker locked it.
struct Due {
    name: String,
    cron: String,
    timezone: String,
    fn_oid: pg_sys::Oid,
    args: serde_json::Value,
    queue: Option<String>,
    workflow: bool,
    skip_missed: bool,
    owner: pg_sys::Oid,
    /// The tick it was due at (Unix seconds).
    next_run: i64,
}

/// In a worker's pass: fire the due ticks of this database's schedules, and set the worker's
/// alarm for the next one. Errors are WARNINGs (the pass goes on).
pub fn fire_due() {
    if !installed() {
        return;
    }
    let outcome = crate::subxact::in_subtransaction(|| match fire() {
        Ok(next) => next,
        Err(err) => err.report(),
    });
    match outcome {
        Ok(Some(next)) => crate::runtime::wake_by(next),
        Ok(None) => {}
        Err(failure) => pgrx::warning!(
            "eventic worker: could not fire the due schedules: {} (SQLSTATE {})",
            failure.message,
            failure.sqlstate
        ),
    }
}

/// Whether this database's eventic has schedules (0.3.0 or later: an older one loads this
/// library too).
fn installed() -> bool {
    // SAFETY: catalog lookups inside a transaction.
    unsafe {
        let schema = pg_sys::get_namespace_oid(c"eventic".as_ptr(), true);
        schema != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"schedule_entries".as_ptr(), schema) != pg_sys::InvalidOid
    }
}

/// The due schedules (at most 100 per pass), locked (a mutating plan, so a fresh snapshot, run by `select`: no
/// transaction id while none is due).
const DUE: &str =
    "SELECT name, cron, timezone, fn::oid, args, queue_name, workflow, skip_missed, owner::oid,
                          EXTRACT(epoch FROM next_run)::pg_catalog.int8
                     FROM eventic.schedule_entries
                    WHERE next_run <= pg_catalog.clock_timestamp()
                    ORDER BY next_run LIMIT 100 FOR UPDATE SKIP LOCKED";
/// The nearest next tick, in Unix microseconds.
const NEXT: &str = "SELECT (EXTRACT(epoch FROM min(next_run)) * 1000000)::pg_catalog.int8
                      FROM eventic.schedule_entries";

fn fire() -> Result<Option<std::time::Instant>> {
    fire_with(clock)
}

/// [`fire`] with the clock given (tests stand a clock read a moment early in for it).
pub(crate) fn fire_with(clock: impl Fn() -> (i64, i64)) -> Result<Option<std::time::Instant>> {
    let due: Vec<Due> = Spi::connect(|client| -> Result<Vec<Due>> {
        let stmt = crate::spi_plans::plan(client, DUE, &[], true)?;
        let mut due = Vec::new();
        for row in client.select(&*stmt, None, &[])? {
            due.push(Due {
                name: row.get::<String>(1)?.unwrap_or_default(),
                cron: row.get::<String>(2)?.unwrap_or_default(),
                timezone: row.get::<String>(3)?.unwrap_or_default(),
                fn_oid: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                args: row
                    .get::<JsonB>(5)?
                    .map_or(serde_json::Value::Null, |j| j.0),
                queue: row.get::<String>(6)?,
                workflow: row.get::<bool>(7)?.unwrap_or(false),
                skip_missed: row.get::<bool>(8)?.unwrap_or(false),
                owner: row.get::<pg_sys::Oid>(9)?.unwrap_or(pg_sys::InvalidOid),
                next_run: row.get::<i64>(10)?.unwrap_or(i64::MIN),
            });
        }
        Ok(due)
    })?;
    // read after the rows were found due (by the statement's own, later clock)
    let (now_micros, started_micros) = clock();
    let now = now_micros.div_euclid(1_000_000);
    for schedule in &due {
        fire_one(schedule, now, started_micros)?;
    }
    let next = Spi::connect(|client| -> Result<Option<i64>> {
        let stmt = crate::spi_plans::plan(client, NEXT, &[], true)?;
        Ok(client.select(&*stmt, Some(1), &[])?.first().get::<i64>(1)?)
    })?;
    Ok(next.map(|at| {
        let micros = (at - clock().0).clamp(0, 86_400_000_000) as u64;
        std::time::Instant::now() + std::time::Duration::from_micros(micros)
    }))
}

/// Enqueue the latest due tick of `schedule` (unless it was missed while the server was down
/// and the schedule skips those) and move its next_run past now.
fn fire_one(schedule: &Due, now: i64, started_micros: i64) -> Result<()> {
    // never before the tick found due: a clock read in the second before it (a worker woken
    // a little early) would run the tick before it and leave this one due, to run again
    let now = now.max(schedule.next_run);
    let times = parse_cron(&schedule.cron).and_then(|cron| {
        let tz = parse_zone(&schedule.timezone)?;
        Ok((
            latest_at(&cron, &schedule.cron, tz, now)?,
            next_after(&cron, &schedule.cron, tz, now)?,
        ))
    });
    let (tick, next) = match times {
        Ok(times) => times,
        Err(err) => {
            // (only a pattern that stopped matching, or another crate version's parse)
            pgrx::warning!(
                "eventic: schedule {:?} is tried again in an hour: {err}",
                schedule.name
            );
            (i64::MIN, now + 3600)
        }
    };
    let missed = tick.saturating_mul(1_000_000) < started_micros;
    let run = tick != i64::MIN && !(missed && schedule.skip_missed);
    let mut ran = false;
    if run {
        match crate::subxact::in_subtransaction(|| match enqueue_tick(schedule, tick) {
            Ok(()) => (),
            Err(err) => err.report(),
        }) {
            Ok(()) => ran = true,
            Err(failure) => pgrx::warning!(
                "eventic: schedule {:?}: its tick at {} was not run: {} (SQLSTATE {})",
                schedule.name,
                tick_text(tick),
                failure.message,
                failure.sqlstate
            ),
        }
    }
    Spi::run_with_args(
        &format!(
            "UPDATE eventic.schedule_entries
                SET next_run = {TO_TIMESTAMP}($2),
                    last_run = CASE WHEN $3 THEN {TO_TIMESTAMP}($4) ELSE last_run END
              WHERE name = $1"
        ),
        &[
            schedule.name.as_str().into(),
            (next as f64).into(),
            ran.into(),
            (if ran { tick } else { now } as f64).into(),
        ],
    )?;
    Ok(())
}

fn tick_text(tick: i64) -> String {
    DateTime::<Utc>::from_timestamp(tick, 0).map_or_else(
        || tick.to_string(),
        |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

/// Enqueue one tick as the schedule's owner, through the same SQL functions the owner would
/// call (their checks too: EXECUTE revoked since, a dropped queue).
fn enqueue_tick(schedule: &Due, tick: i64) -> Result<()> {
    let key = format!("schedule:{}@{}", schedule.name, tick_text(tick));
    if schedule.workflow {
        // the id is the tick's, unless another role took it (then a fresh one)
        let taken_by = optional_value::<pg_sys::Oid>(
            "SELECT started_by::oid FROM eventic.workflow_runs WHERE workflow_id = $1",
            &[key.as_str().into()],
        )?;
        let id = match taken_by {
            Some(role) if role != schedule.owner => {
                pgrx::warning!(
                    "eventic: schedule {:?}: workflow id {key} is taken by another role's workflow; this tick's workflow gets a fresh id",
                    schedule.name
                );
                None
            }
            _ => Some(key.as_str()),
        };
        crate::roles::run_as(schedule.owner, || {
            Spi::run_with_args(
                "SELECT eventic.start_workflow($1::pg_catalog.oid::pg_catalog.regprocedure, $2, $3, $4)",
                &[
                    schedule.fn_oid.into(),
                    JsonB(schedule.args.clone()).into(),
                    id.into(),
                    schedule.queue.as_deref().into(),
                ],
            )
        })?;
    } else {
        let queue = schedule.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
        crate::roles::run_as(schedule.owner, || {
            Spi::run_with_args(
                "SELECT eventic.enqueue($1, $2::pg_catalog.oid::pg_catalog.regprocedure, $3, NULL, 0, $4)",
                &[
                    queue.into(),
                    schedule.fn_oid.into(),
                    JsonB(schedule.args.clone()).into(),
                    key.as_str().into(),
                ],
            )
        })?;
    }
    Ok(())
}
