//! Durable workflows (DESIGN.md §4).
//!
//! A workflow runs as a job (`eventic._run_workflow(id)`) of its queue, as the role that
//! started it. The job runs the body `fn(input)` in a subtransaction with the workflow's
//! recorded steps in a per-backend context. `eventic.step(...)` at position p returns the
//! record when there is one; the first step without one is not run inside the body: it is
//! captured, the body is aborted (undoing whatever the body did outside steps), the step runs
//! in its own subtransaction, its record is written, and the body is replayed from the start.
//! Steps, records and the job's completion commit in the job's transaction: a step that only
//! touches the database runs exactly once, across crashes. A sleep records its wake-up time
//! and re-enqueues the job for then, holding no backend while waiting.

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;
use crate::queues::{self, jobs, NewJob};
use crate::roles::{as_extension_owner, current_role};
use crate::subxact::in_subtransaction;

/// Queue of workflows started without one.
const DEFAULT_QUEUE: &str = "workflows";
/// Attempts of a failing step before its error is handed to the body.
const STEP_ATTEMPTS: i32 = 3;
/// Steps one job runs before it hands the workflow to a fresh job (bounds a transaction).
const STEPS_PER_JOB: usize = 100;
/// The message of the internal error that stops a body at a step without a record.
const SUSPEND: &str = "eventic: workflow suspended at a new step";

#[derive(Clone, Debug)]
struct StepRecord {
    name: String,
    kind: String,
    output: Option<Value>,
    error: Option<String>,
    attempts: i32,
}

enum Pending {
    Call {
        name: String,
        /// "step" (may act outside the database) or "transaction" (database only).
        kind: &'static str,
        fn_oid: pg_sys::Oid,
        args: Value,
    },
    Sleep {
        seconds: f64,
    },
    Recv {
        topic: String,
        seconds: f64,
    },
    SetEvent {
        key: String,
        value: Value,
    },
    StartChild {
        fn_oid: pg_sys::Oid,
        input: Value,
    },
    Await {
        child: String,
    },
    /// A speculative run ([`Context::speculative`]) met something it cannot do in one go.
    Abandon,
}

struct Context {
    workflow_id: String,
    records: Vec<StepRecord>,
    position: usize,
    /// Value records (now, random) made during this replay, written after it.
    new_values: Vec<(usize, StepRecord)>,
    /// The first new step the body reached (its position), which stops the body.
    pending: Option<(usize, Pending)>,
    /// A speculative run: new steps run where the body reaches them, inside the body's
    /// subtransaction, and the run counts only if the body returns (see run_workflow_steps).
    speculative: bool,
    /// Steps run inline by this speculative run.
    inline_steps: usize,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
}

fn outside_workflow(what: &str) -> EventicError {
    EventicError::invalid(
        format!("{what} can only be called inside a workflow body"),
        "Start the function with eventic.start_workflow(fn, input).",
    )
}

/// The record at the current position (advancing it), or None for a new step. A record of
/// another name or kind at that position means the body is not deterministic.
fn next_record(name: &str, kind: &str) -> Result<(usize, Option<StepRecord>)> {
    CONTEXT.with(|ctx| {
        let mut ctx = ctx.borrow_mut();
        let ctx = ctx.as_mut().ok_or_else(|| outside_workflow(kind))?;
        let position = ctx.position;
        ctx.position += 1;
        match ctx.records.get(position) {
            Some(record) if record.name != name || record.kind != kind => Err(EventicError::invalid(
                format!(
                    "workflow {} is not deterministic: step {position} was {} {:?} when it ran, now it is {kind} {name:?}",
                    ctx.workflow_id, record.kind, record.name
                ),
                "A workflow body must ask for the same steps in the same order on every replay; \
                 use eventic.now() / eventic.random() instead of now() / random().",
            )),
            Some(record) => Ok((position, Some(record.clone()))),
            None => Ok((position, None)),
        }
    })
}

fn suspend(pending: Pending) -> EventicError {
    CONTEXT.with(|ctx| {
        if let Some(ctx) = ctx.borrow_mut().as_mut() {
            // the first one counts: a body that caught the suspension and went on does not
            // get to queue a second step
            if ctx.pending.is_none() {
                ctx.pending = Some((ctx.position - 1, pending));
            }
        }
    });
    EventicError::Internal(SUSPEND.into())
}

fn suspended() -> bool {
    CONTEXT.with(|ctx| ctx.borrow().as_ref().is_some_and(|c| c.pending.is_some()))
}

/// Inside a body: run `fn(args)` once; on replay return its recorded result. A step may act
/// outside the database (HTTP, files, sequences): it runs only once its record is sure to be
/// kept, so a completed step never runs again unless the server crashed while it ran.
#[pg_extern(volatile, parallel_unsafe, name = "_step")]
fn step(name: Option<&str>, fn_oid: Option<pg_sys::Oid>, args: Option<RawJsonb>) -> JsonB {
    run_step(name, fn_oid, args, "step").or_report()
}

/// Inside a body: like [`step`], for a function that only reads and writes the database.
/// Its effects commit with its record, so it may also run inline, where the body reaches
/// it (the speculative fast path): if that run is rolled back, so are its effects.
#[pg_extern(volatile, parallel_unsafe, name = "_transaction")]
fn transaction_step(
    name: Option<&str>,
    fn_oid: Option<pg_sys::Oid>,
    args: Option<RawJsonb>,
) -> JsonB {
    run_step(name, fn_oid, args, "transaction").or_report()
}

fn run_step(
    name: Option<&str>,
    fn_oid: Option<pg_sys::Oid>,
    args: Option<RawJsonb>,
    kind: &'static str,
) -> Result<JsonB> {
    {
        let name = required(name, "name")?;
        let fn_oid = required(fn_oid, "fn")?;
        let args = required(args, "args")?.to_value()?;
        match next_record(name, kind)? {
            (_, Some(record)) if record.error.is_none() => {
                Ok(JsonB(record.output.unwrap_or(Value::Null)))
            }
            (_, Some(record)) if record.attempts >= STEP_ATTEMPTS => Err(EventicError::invalid(
                format!(
                    "step {name:?} failed {} times: {}",
                    record.attempts,
                    record.error.unwrap_or_default()
                ),
                "The workflow's body may catch this error; otherwise the workflow ends in ERROR.",
            )),
            // only a database-only step runs inline: a speculative run may still be rolled
            // back (the body sleeps or waits later), and its effects with it
            (position, None) if kind == "transaction" && speculating() => {
                run_inline(position, name, fn_oid, args)
            }
            _ => Err(suspend(Pending::Call {
                name: name.to_string(),
                kind,
                fn_oid,
                args,
            })),
        }
    }
}

thread_local! {
    /// Bodies that did not finish in one speculative run in this backend: replayed step by
    /// step from then on.
    static STEP_BY_STEP: RefCell<std::collections::HashSet<u32>> =
        RefCell::new(std::collections::HashSet::new());
}

fn may_speculate(body: pg_sys::Oid) -> bool {
    crate::settings::speculative_workflows()
        && !STEP_BY_STEP.with(|bodies| bodies.borrow().contains(&body.to_u32()))
}

fn never_speculate(body: pg_sys::Oid) {
    STEP_BY_STEP.with(|bodies| bodies.borrow_mut().insert(body.to_u32()));
}

fn speculating() -> bool {
    CONTEXT.with(|ctx| ctx.borrow().as_ref().is_some_and(|c| c.speculative))
}

/// A speculative run: run the new step at `position` here, in its own subtransaction inside
/// the body's, as the body's role; its record is written only if the whole body returns. A
/// failing step (it needs retries with backoff) or too many steps end the speculation.
fn run_inline(position: usize, name: &str, fn_oid: pg_sys::Oid, args: Value) -> Result<JsonB> {
    let too_many = CONTEXT.with(|ctx| {
        ctx.borrow_mut().as_mut().is_none_or(|c| {
            c.inline_steps += 1;
            c.inline_steps > STEPS_PER_JOB
        })
    });
    if too_many {
        return Err(suspend(Pending::Abandon));
    }
    let job = jobs::Job::new(fn_oid, args, current_role());
    let Ok(output) = jobs::run_returning(&job, &mut jobs::Calls::default()) else {
        return Err(suspend(Pending::Abandon));
    };
    CONTEXT.with(|ctx| {
        if let Some(ctx) = ctx.borrow_mut().as_mut() {
            let record = StepRecord {
                name: name.to_string(),
                kind: "transaction".into(),
                output: Some(output.clone()),
                error: None,
                attempts: 1,
            };
            ctx.records.push(record.clone());
            ctx.new_values.push((position, record));
        }
    });
    Ok(JsonB(output))
}

/// Inside a body: a durable sleep (survives restarts; no backend is held while waiting).
#[pg_extern(volatile, parallel_unsafe)]
fn sleep(duration: Option<Interval>) {
    (|| {
        let duration = required(duration, "duration")?;
        let seconds = interval_seconds(duration);
        if seconds < 0.0 {
            return Err(EventicError::invalid(
                "sleep interval must not be negative",
                "Pass e.g. '5 seconds'.",
            ));
        }
        match next_record("sleep", "sleep")? {
            (_, Some(record)) => {
                let wake_at = record
                    .output
                    .as_ref()
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0);
                if now_epoch()? >= wake_at {
                    Ok(())
                } else {
                    Err(suspend(Pending::Sleep { seconds: 0.0 }))
                }
            }
            (_, None) => Err(suspend(Pending::Sleep { seconds })),
        }
    })()
    .or_report()
}

fn negative(what: &str) -> EventicError {
    EventicError::invalid(
        format!("{what} must not be negative"),
        "Pass an interval such as '30 seconds'.",
    )
}

fn interval_seconds(interval: Interval) -> f64 {
    (i64::from(interval.months()) * 30 * 86_400 + i64::from(interval.days()) * 86_400) as f64
        + interval.micros() as f64 / 1e6
}

/// A record that is complete (attempts > 0); a waiting placeholder (a recv's deadline) is not.
fn finished(record: &StepRecord) -> bool {
    record.attempts > 0
}

/// Inside a body: the next message sent to this workflow on `topic`, or NULL after `timeout`.
#[pg_extern(volatile, parallel_unsafe)]
fn recv(topic: Option<&str>, timeout: default!(Option<Interval>, "'1 minute'")) -> Option<JsonB> {
    (|| {
        let topic = required(topic, "topic")?;
        let timeout = required(timeout, "timeout")?;
        if interval_seconds(timeout) < 0.0 {
            return Err(negative("timeout"));
        }
        match next_record(topic, "recv")? {
            (_, Some(record)) if finished(&record) => Ok(record.output.map(JsonB)),
            _ => Err(suspend(Pending::Recv {
                topic: topic.to_string(),
                seconds: interval_seconds(timeout).max(0.0),
            })),
        }
    })()
    .or_report()
}

/// Inside a body: publish `value` under `key` (read with eventic.get_event).
#[pg_extern(volatile, parallel_unsafe)]
fn set_event(key: Option<&str>, value: Option<RawJsonb>) {
    (|| {
        let key = required(key, "key")?;
        let value = required(value, "value")?.to_value()?;
        match next_record(key, "set_event")? {
            (_, Some(_)) => Ok(()),
            (_, None) => Err(suspend(Pending::SetEvent {
                key: key.to_string(),
                value,
            })),
        }
    })()
    .or_report()
}

/// Inside a body: start a child workflow once (the SQL face eventic.start_child takes the
/// function as regprocedure); returns its id.
#[pg_extern(volatile, parallel_unsafe, name = "_start_child")]
fn start_child(fn_oid: Option<pg_sys::Oid>, input: Option<RawJsonb>) -> String {
    (|| {
        let fn_oid = required(fn_oid, "fn")?;
        let input = required(input, "input")?.to_value()?;
        match next_record("start_child", "start_child")? {
            (_, Some(record)) => Ok(record
                .output
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()),
            (_, None) => Err(suspend(Pending::StartChild { fn_oid, input })),
        }
    })()
    .or_report()
}

/// Inside a body: wait for a workflow (a child) to end; its output, or its error raised.
#[pg_extern(volatile, parallel_unsafe)]
fn await_workflow(workflow_id: Option<&str>) -> Option<JsonB> {
    (|| {
        let child = required(workflow_id, "workflow_id")?;
        match next_record(child, "await")? {
            (_, Some(record)) if record.error.is_some() => Err(EventicError::invalid(
                format!(
                    "workflow {child} failed: {}",
                    record.error.unwrap_or_default()
                ),
                "The parent may catch this error; otherwise it ends in ERROR too.",
            )),
            (_, Some(record)) => Ok(record.output.map(JsonB)),
            (_, None) => Err(suspend(Pending::Await {
                child: child.to_string(),
            })),
        }
    })()
    .or_report()
}

fn now_epoch() -> Result<f64> {
    Ok(crate::spi_plans::kept_value::<f64>(
        "SELECT extract(epoch FROM clock_timestamp())::float8",
        &[],
    )?
    .unwrap_or(0.0))
}

/// A value recorded on first use and returned on every replay.
fn recorded_value(kind: &str, make: impl FnOnce() -> Result<Value>) -> Result<Value> {
    match next_record(kind, kind)? {
        (_, Some(record)) => Ok(record.output.unwrap_or(Value::Null)),
        (position, None) => {
            let value = make()?;
            CONTEXT.with(|ctx| {
                if let Some(ctx) = ctx.borrow_mut().as_mut() {
                    let record = StepRecord {
                        name: kind.to_string(),
                        kind: kind.to_string(),
                        output: Some(value.clone()),
                        error: None,
                        attempts: 1,
                    };
                    ctx.records.push(record.clone());
                    ctx.new_values.push((position, record));
                }
            });
            Ok(value)
        }
    }
}

/// Inside a body: the current time, recorded, so a replay sees the same value.
#[pg_extern(volatile, parallel_unsafe)]
fn now() -> TimestampWithTimeZone {
    (|| {
        let value = recorded_value("now", || {
            Ok(Value::String(
                Spi::get_one::<String>("SELECT clock_timestamp()::text")?.unwrap_or_default(),
            ))
        })?;
        let text = value.as_str().unwrap_or_default().to_string();
        Spi::get_one_with_args::<TimestampWithTimeZone>(
            "SELECT $1::timestamptz",
            &[text.as_str().into()],
        )?
        .ok_or_else(|| EventicError::Internal("recorded time missing".into()))
    })()
    .or_report()
}

/// Inside a body: a random number in [0, 1), recorded.
#[pg_extern(volatile, parallel_unsafe)]
fn random() -> f64 {
    (|| {
        let value = recorded_value("random", || {
            Ok(Value::from(
                Spi::get_one::<f64>("SELECT random()")?.unwrap_or(0.0),
            ))
        })?;
        Ok(value.as_f64().unwrap_or(0.0))
    })()
    .or_report()
}

/// Inside a body: the id of the running workflow.
#[pg_extern(volatile, parallel_unsafe)]
fn workflow_id() -> String {
    CONTEXT
        .with(|ctx| ctx.borrow().as_ref().map(|c| c.workflow_id.clone()))
        .ok_or_else(|| outside_workflow("eventic.workflow_id()"))
        .or_report()
}

// a function call, not a regprocedure literal: a kept plan must not keep a stale oid
const RUN_WORKFLOW_OID: &str = "SELECT to_regprocedure('eventic._run_workflow(text)')::oid";

fn enqueue_run(
    queue_name: &str,
    workflow_id: &str,
    started_by: pg_sys::Oid,
    delay_seconds: f64,
) -> Result<()> {
    let table = queues::queue_table(queue_name)?;
    let run_at = if delay_seconds > 0.0 {
        Spi::get_one_with_args::<TimestampWithTimeZone>(
            "SELECT clock_timestamp() + $1 * interval '1 second'",
            &[delay_seconds.into()],
        )?
    } else {
        None // now
    };
    let fn_oid = Spi::connect(|client| -> Result<Option<pg_sys::Oid>> {
        let stmt = crate::spi_plans::plan(client, RUN_WORKFLOW_OID, &[], false)?;
        Ok(client
            .select(&*stmt, Some(1), &[])?
            .first()
            .get_one::<pg_sys::Oid>()?)
    })?
    .ok_or_else(|| EventicError::Internal("eventic._run_workflow is missing".into()))?;
    queues::insert_job(
        &table,
        NewJob {
            fn_oid,
            args: queues::JobArgs::Json(Value::Array(vec![Value::String(workflow_id.to_string())])),
            run_at,
            priority: 0,
            dedup_key: None,
            max_attempts: 5,
            enqueued_by: started_by,
        },
    )?;
    queues::announce(queue_name)
}

fn set_status(
    workflow_id: &str,
    status: &str,
    output: Option<Value>,
    error: Option<&str>,
) -> Result<()> {
    let parent = as_extension_owner(|| {
        crate::spi_plans::kept_value::<String>(
            "UPDATE eventic.workflow_runs SET status = $2, output = coalesce($3, output), error = $4,
                    updated_at = clock_timestamp() WHERE workflow_id = $1
             RETURNING parent_id",
            &[workflow_id.into(), status.into(), output.map(JsonB).into(), error.into()],
        )
    })?;
    // a parent waiting for this child goes on now that it ended
    if let (Some(parent), "SUCCESS" | "ERROR" | "CANCELLED") = (parent, status) {
        if let Some(state) = load_state(&parent)? {
            if state.status == "WAITING" {
                enqueue_run(&state.queue_name, &parent, state.started_by, 0.0)?;
            }
        }
    }
    Ok(())
}

/// Insert a workflow and enqueue its first run; nothing (false) when the id exists already.
fn insert_workflow(
    id: &str,
    fn_oid: pg_sys::Oid,
    input: Value,
    queue_name: &str,
    started_by: pg_sys::Oid,
    timeout: Option<Interval>,
    parent: Option<&str>,
) -> Result<bool> {
    let inserted = as_extension_owner(|| {
        crate::spi_plans::kept_value::<String>(
            "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by, deadline, parent_id)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp() + $6, $7)
             ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id",
            &[
                id.into(),
                fn_oid.into(),
                JsonB(input).into(),
                queue_name.into(),
                started_by.into(),
                timeout.into(),
                parent.into(),
            ],
        )
    })?;
    if inserted.is_none() {
        return Ok(false);
    }
    note_starter(started_by)?;
    enqueue_run(queue_name, id, started_by, 0.0)?;
    Ok(true)
}

thread_local! {
    /// Roles this backend has recorded as starters of workflows (see [`note_starter`]).
    static NOTED_STARTERS: std::cell::RefCell<std::collections::HashSet<u32>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// A role that starts workflows depends on eventic.workflow_runs as an owner does on its
/// objects: DROP ROLE is refused while it may own workflows (eventic._note_owner).
fn note_starter(role: pg_sys::Oid) -> Result<()> {
    // (superusers are not held back by it: nothing of theirs is at stake)
    // SAFETY: a catalog lookup of a role.
    if NOTED_STARTERS.with(|noted| noted.borrow().contains(&role.to_u32()))
        || unsafe { pg_sys::superuser_arg(role) }
    {
        return Ok(());
    }
    as_extension_owner(|| {
        let noted = crate::spi_plans::kept_value::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                             WHERE c.oid = 'eventic.workflow_runs'::pg_catalog.regclass
                               AND a.grantee = $1)",
            &[role.into()],
        )?;
        if noted != Some(true) {
            Spi::run_with_args(
                "SELECT eventic._note_owner('eventic.workflow_runs'::regclass, $1::oid::regrole)",
                &[role.into()],
            )?;
        }
        Ok(())
    })?;
    NOTED_STARTERS.with(|noted| noted.borrow_mut().insert(role.to_u32()));
    Ok(())
}

/// The next message on `topic` for the workflow, taken (Some(None) for a JSON-null message).
fn take_message(workflow_id: &str, topic: &str) -> Result<Option<Option<Value>>> {
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let mut rows = client.update(
                &*crate::spi_plans::kept(
                    client,
                    "DELETE FROM eventic.workflow_messages m
                  WHERE (m.workflow_id, m.message_id) = (
                        SELECT workflow_id, message_id FROM eventic.workflow_messages
                         WHERE workflow_id = $1 AND topic = $2
                         ORDER BY message_id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING m.message",
                    &[workflow_id.into(), topic.into()],
                )?,
                Some(1),
                &[workflow_id.into(), topic.into()],
            )?;
            match rows.next() {
                Some(row) => Ok(Some(crate::raw_jsonb::column(&row, 1)?)),
                None => Ok(None),
            }
        })
    })
}

/// Send `message` on `topic` to a workflow (it takes it with eventic.recv).
#[pg_extern(volatile, parallel_unsafe)]
fn send(workflow_id: Option<&str>, topic: Option<&str>, message: default!(Option<RawJsonb>, "NULL")) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let topic = required(topic, "topic")?;
        if let Some(message) = message {
            message.check_holdable()?;
        }
        let workflow = workflow_for(id, "send a message to")?;
        // the message first, then the workflow's row lock: a run in progress holds it until
        // its transaction ends, and its end (WAITING for this topic, say) is what decides
        // whether the workflow needs a run to receive the message. Read before that lock, a
        // RUNNING status that turned WAITING meanwhile left the message to the recv timeout.
        let status = as_extension_owner(|| {
            crate::spi_plans::kept_run(
                "INSERT INTO eventic.workflow_messages (workflow_id, topic, message) VALUES ($1, $2, $3)",
                &[id.into(), topic.into(), message.into()],
            )?;
            crate::spi_plans::kept_value::<String>(
                "SELECT status FROM eventic.workflow_runs WHERE workflow_id = $1 FOR NO KEY UPDATE",
                &[id.into()],
            )
        })?;
        if status.as_deref() == Some("WAITING") {
            enqueue_run(&workflow.queue_name, id, workflow.started_by, 0.0)?;
        }
        Ok(())
    })()
    .or_report()
}

/// The value a workflow published under `key` (eventic.set_event), waiting up to `timeout`
/// for it; NULL when it does not come.
#[pg_extern(volatile, parallel_unsafe)]
fn get_event(
    workflow_id: Option<&str>,
    key: Option<&str>,
    timeout: default!(Option<Interval>, "'0 seconds'"),
) -> Option<JsonB> {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let key = required(key, "key")?;
        let timeout = required(timeout, "timeout")?;
        if interval_seconds(timeout) < 0.0 {
            return Err(negative("timeout"));
        }
        workflow_for(id, "read the events of")?;
        if interval_seconds(timeout) > 0.0 {
            refuse_wait_in_starting_transaction(id)?;
        }
        let found = wait_for(interval_seconds(timeout), || {
            Spi::connect(|client| {
                let mut rows = client.select(
                    &*crate::spi_plans::kept(client, "SELECT value FROM eventic.workflow_events WHERE workflow_id = $1 AND key = $2", &[id.into(), key.into()])?,
                    Some(1),
                    &[id.into(), key.into()],
                )?;
                match rows.next() {
                    Some(row) => Ok(Some(crate::raw_jsonb::column(&row, 1)?.map(JsonB))),
                    None => Ok(None),
                }
            })
        })?;
        Ok(found.flatten())
    })()
    .or_report()
}

/// 55000 for a wait on a workflow that this transaction started and that has not ended: it
/// cannot run before this transaction commits, so the wait would only run out its timeout.
fn refuse_wait_in_starting_transaction(id: &str) -> Result<()> {
    let started_here = as_extension_owner(|| {
        crate::spi_plans::kept_value::<pg_sys::TransactionId>(
            "SELECT xmin FROM eventic.workflow_runs
              WHERE workflow_id = $1 AND status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED')",
            &[id.into()],
        )
    })?
    // SAFETY: asks whether an xid is one of this transaction's (no catalog access).
    .is_some_and(|xmin| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xmin) });
    if started_here {
        return Err(EventicError::NotReady {
            message: format!("workflow {id} was started in this transaction, which must commit before it can run"),
            hint: "Commit first, then wait for it (eventic.wait_workflow / eventic.get_event) in a new transaction.".into(),
        });
    }
    Ok(())
}

/// Poll `check` (sleeping on the latch between tries, 1 ms, after 20 ms growing to 50 ms) until it gives a
/// value or `seconds` pass.
fn wait_for<T>(seconds: f64, mut check: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
    let mut pause_ms = 1;
    let mut waited_ms = 0;
    loop {
        if let Some(found) = check()? {
            return Ok(Some(found));
        }
        if std::time::Instant::now() >= deadline {
            return Ok(None);
        }
        // SAFETY: a timed wait on this backend's latch, as pg_sleep does.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                pause_ms,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
        // 1 ms steps for the first ~20 ms (short workflows are seen as soon as they end),
        // then growing to 50 ms
        waited_ms += pause_ms;
        if waited_ms >= 20 {
            pause_ms = (pause_ms * 2).min(50);
        }
    }
}

struct State {
    status: String,
    queue_name: String,
    started_by: pg_sys::Oid,
}

/// A workflow's status, queue and starter, whoever asks (callers check who may act on it).
fn load_state(id: &str) -> Result<Option<State>> {
    as_extension_owner(|| Spi::connect(|client| {
        let mut rows = client.select(
            &*crate::spi_plans::kept(client, "SELECT status, queue_name, started_by FROM eventic.workflow_runs WHERE workflow_id = $1", &[id.into()])?,
            Some(1),
            &[id.into()],
        )?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some(State {
            status: row.get::<String>(1)?.unwrap_or_default(),
            queue_name: row.get::<String>(2)?.unwrap_or_default(),
            started_by: row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
        }))
    }))
}

/// The workflow `id` when the current role may `what` it (P0002 if there is none, 42501 if
/// another role's).
fn workflow_for(id: &str, what: &str) -> Result<State> {
    let workflow = load_state(id)?.ok_or_else(|| unknown_workflow(id))?;
    require_starter(id, workflow.started_by, what)?;
    Ok(workflow)
}

/// A workflow is its starter's: that role (and roles that have its privileges) and
/// superusers may see it, send to it, wait for it, cancel, resume or fork it.
fn require_starter(id: &str, started_by: pg_sys::Oid, what: &str) -> Result<()> {
    if crate::roles::may_manage(started_by) {
        Ok(())
    } else {
        Err(EventicError::not_allowed(
            format!("permission denied to {what} workflow {id}"),
            "Only the role that started it or a superuser may.",
        ))
    }
}

/// Run a cancelled or failed workflow again from its last recorded step (a step that failed
/// for good gets new attempts).
#[pg_extern(volatile, parallel_unsafe)]
fn resume_workflow(workflow_id: Option<&str>) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let workflow = workflow_for(id, "resume")?;
        if !matches!(workflow.status.as_str(), "CANCELLED" | "ERROR") {
            return Ok(());
        }
        as_extension_owner(|| {
            crate::spi_plans::kept_run(
                "DELETE FROM eventic.workflow_records WHERE workflow_id = $1 AND error IS NOT NULL",
                &[id.into()],
            )?;
            crate::spi_plans::kept_run(
                "UPDATE eventic.workflow_runs SET status = 'ENQUEUED', error = NULL, deadline = NULL,
                        updated_at = clock_timestamp() WHERE workflow_id = $1",
                &[id.into()],
            )?;
            Ok(())
        })?;
        enqueue_run(&workflow.queue_name, id, workflow.started_by, 0.0)
    })()
    .or_report()
}

/// A new workflow with the same function and input that reuses the records of the steps
/// before position `from_step` and runs the rest again. Returns its id.
#[pg_extern(volatile, parallel_unsafe, name = "_fork_workflow")]
fn fork_workflow(workflow_id: Option<&str>, from_step: Option<i32>) -> String {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let from_step = required(from_step, "from_step")?;
        if from_step < 0 {
            return Err(EventicError::invalid(
                "from_step must not be negative",
                "Steps are numbered from 0, as in eventic.workflow_records.position.",
            ));
        }
        let workflow = workflow_for(id, "fork")?;
        let fork = crate::records::store::new_uuid_v7().to_string();
        as_extension_owner(|| {
            crate::spi_plans::kept_run(
                "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by)
                 SELECT $2, fn, input, queue_name, started_by FROM eventic.workflow_runs WHERE workflow_id = $1",
                &[id.into(), fork.as_str().into()],
            )?;
            crate::spi_plans::kept_run(
                "INSERT INTO eventic.workflow_records (workflow_id, position, name, kind, output, error, attempts)
                 SELECT $2, position, name, kind, output, error, attempts FROM eventic.workflow_records
                  WHERE workflow_id = $1 AND position < $3 AND attempts > 0",
                &[id.into(), fork.as_str().into(), from_step.into()],
            )?;
            Ok(())
        })?;
        enqueue_run(&workflow.queue_name, &fork, workflow.started_by, 0.0)?;
        Ok(fork)
    })()
    .or_report()
}

/// Wait (sleeping on the latch, not spinning) until the workflow ends or `timeout` passes;
/// returns its output (NULL on timeout). A workflow that ended in ERROR raises its error.
#[pg_extern(volatile, parallel_unsafe)]
fn wait_workflow(
    workflow_id: Option<&str>,
    timeout: default!(Option<Interval>, "'1 minute'"),
) -> Option<JsonB> {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let timeout = required(timeout, "timeout")?;
        if interval_seconds(timeout) < 0.0 {
            return Err(negative("timeout"));
        }
        workflow_for(id, "wait for")?;
        if interval_seconds(timeout) > 0.0 {
            refuse_wait_in_starting_transaction(id)?;
        }
        let ended = wait_for(interval_seconds(timeout), || {
            let row = result_of(id)?;
            let Some((status, output, error)) = row else {
                return Err(unknown_workflow(id));
            };
            Ok(match status.as_str() {
                "SUCCESS" | "ERROR" | "CANCELLED" => Some((status, output, error)),
                _ => None,
            })
        })?;
        match ended {
            Some((status, _, error)) if status == "ERROR" => Err(EventicError::invalid(
                format!("workflow {id} failed: {}", error.unwrap_or_default()),
                "See its steps in eventic.workflow_steps.",
            )),
            Some((_, output, _)) => Ok(output),
            None => Ok(None),
        }
    })()
    .or_report()
}

/// Start `fn(input)` as a durable workflow; the same `workflow_id` twice starts it once.
#[pg_extern(volatile, parallel_unsafe, name = "_start_workflow")]
fn start_workflow(
    fn_oid: Option<pg_sys::Oid>,
    input: Option<RawJsonb>,
    workflow_id: Option<&str>,
    queue_name: Option<&str>,
    timeout: Option<Interval>,
) -> String {
    (|| {
        let fn_oid = required(fn_oid, "fn")?;
        let input = required(input, "input")?.to_value()?;
        let queue_name = queue_name.unwrap_or(DEFAULT_QUEUE);
        // Signature::of fails (42704) for a missing function; a procedure is not a body
        // (EXECUTE is looked up only for a function that exists: Signature::of found it)
        let is_body = jobs::Signature::of(fn_oid).is_ok_and(|sig| sig.is_workflow_body())
            && crate::roles::may_execute(fn_oid, current_role());
        if !is_body {
            let name = Spi::get_one_with_args::<String>("SELECT $1::regprocedure::text", &[fn_oid.into()])?
                .unwrap_or_else(|| fn_oid.to_u32().to_string());
            return Err(EventicError::invalid(
                format!("function {name} cannot be a workflow"),
                "A workflow is a plain function fn(input jsonb) RETURNS jsonb that you may EXECUTE.",
            ));
        }
        if workflow_id == Some("") {
            return Err(EventicError::invalid("workflow_id must not be empty", "Pass a name, or NULL for a UUIDv7."));
        }
        if timeout.is_some_and(|t| interval_seconds(t) < 0.0) {
            return Err(negative("timeout"));
        }
        if queue_name == DEFAULT_QUEUE {
            // created on first use, owned by the extension owner, drained by two workers
            // (workflow jobs are long: parallel beats batching); alter_queue changes that
            // (only when it is missing: an UPDATE of eventic.queues, even of no row, empties
            // every backend's queue cache)
            if queues::lookup(DEFAULT_QUEUE).is_err() {
                as_extension_owner(|| {
                    Spi::run_with_args("SELECT eventic._create_queue($1, NULL, NULL)", &[DEFAULT_QUEUE.into()])?;
                    crate::spi_plans::kept_run(
                        "UPDATE eventic.queues SET concurrency = 2 WHERE queue_name = $1",
                        &[DEFAULT_QUEUE.into()],
                    )?;
                    Ok(())
                })?;
            }
        }
        queues::queue_table(queue_name)?;
        let id = match workflow_id {
            Some(id) => id.to_string(),
            None => crate::records::store::new_uuid_v7().to_string(),
        };
        if !insert_workflow(&id, fn_oid, input, queue_name, current_role(), timeout, None)? {
            // the id is taken: the same starter gets its workflow back (idempotency), another
            // role is refused rather than handed someone else's workflow
            if let Some(existing) = load_state(&id)? {
                if !crate::roles::may_manage(existing.started_by) {
                    return Err(EventicError::not_allowed(
                        format!("workflow id {id} is taken by a workflow another role started"),
                        "Workflow ids are shared by all roles of the database: choose another \
                         (or pass NULL for a UUIDv7).",
                    ));
                }
            }
        }
        Ok(id)
    })()
    .or_report()
}

struct WorkflowRow {
    fn_oid: pg_sys::Oid,
    input: Value,
    status: String,
    queue_name: String,
    started_by: pg_sys::Oid,
    expired: bool,
    /// Seconds until the timeout, if there is one.
    time_left: Option<f64>,
}

impl WorkflowRow {
    /// How long a sleeping/waiting workflow may be left alone: `wanted`, but never past its
    /// timeout (it is woken then, and ends in ERROR "timed out").
    fn wait(&self, wanted: f64) -> f64 {
        match self.time_left {
            Some(left) => wanted.min(left.max(0.0) + 0.01),
            None => wanted,
        }
    }
}

fn load(workflow_id: &str) -> Result<Option<WorkflowRow>> {
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let mut rows = client.update(
                &*crate::spi_plans::kept(
                    client,
                    "SELECT fn::oid, input, status, queue_name, started_by,
                        coalesce(deadline < clock_timestamp(), false),
                        extract(epoch FROM deadline - clock_timestamp())::float8
                   FROM eventic.workflow_runs WHERE workflow_id = $1 FOR UPDATE",
                    &[workflow_id.into()],
                )?,
                Some(1),
                &[workflow_id.into()],
            )?;
            let Some(row) = rows.next() else {
                return Ok(None);
            };
            Ok(Some(WorkflowRow {
                fn_oid: row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                input: crate::raw_jsonb::column(&row, 2)?.unwrap_or(Value::Null),
                status: row.get::<String>(3)?.unwrap_or_default(),
                queue_name: row.get::<String>(4)?.unwrap_or_default(),
                started_by: row.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                expired: row.get::<bool>(6)?.unwrap_or(false),
                time_left: row.get::<f64>(7)?,
            }))
        })
    })
}

fn load_steps(workflow_id: &str) -> Result<Vec<StepRecord>> {
    // planned in index order: the worker keeps this plan for its life, and a plan made while
    // workflow_records was small scanned the whole table for every run once it had grown
    // (3.9 ms and 332 blocks per run at 22,000 records)
    crate::spi_plans::in_index_order(|| load_steps_planned(workflow_id))
}

fn load_steps_planned(workflow_id: &str) -> Result<Vec<StepRecord>> {
    Spi::connect(|client| {
        let rows = client.select(
            &*crate::spi_plans::kept(
                client,
                "SELECT name, kind, output, error, attempts FROM eventic.workflow_records
              WHERE workflow_id = $1 ORDER BY position",
                &[workflow_id.into()],
            )?,
            None,
            &[workflow_id.into()],
        )?;
        let mut records = Vec::new();
        for row in rows {
            records.push(StepRecord {
                name: row.get::<String>(1)?.unwrap_or_default(),
                kind: row.get::<String>(2)?.unwrap_or_default(),
                output: crate::raw_jsonb::column(&row, 3)?,
                error: row.get::<String>(4)?,
                attempts: row.get::<i32>(5)?.unwrap_or(1),
            });
        }
        Ok(records)
    })
}

const WRITE_STEP: &str = "INSERT INTO eventic.workflow_records
        (workflow_id, position, name, kind, output, error, attempts)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (workflow_id, position) DO UPDATE
        SET output = EXCLUDED.output, error = EXCLUDED.error, attempts = EXCLUDED.attempts";

fn write_step(workflow_id: &str, position: usize, record: &StepRecord) -> Result<()> {
    use pgrx::pg_sys::{PgBuiltInOids as T, PgOid};
    let types = [
        PgOid::BuiltIn(T::TEXTOID),
        PgOid::BuiltIn(T::INT4OID),
        PgOid::BuiltIn(T::TEXTOID),
        PgOid::BuiltIn(T::TEXTOID),
        PgOid::BuiltIn(T::JSONBOID),
        PgOid::BuiltIn(T::TEXTOID),
        PgOid::BuiltIn(T::INT4OID),
    ];
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let stmt = crate::spi_plans::plan(client, WRITE_STEP, &types, true)?;
            client.update(
                &*stmt,
                None,
                &[
                    workflow_id.into(),
                    (position as i32).into(),
                    record.name.as_str().into(),
                    record.kind.as_str().into(),
                    record.output.clone().map(JsonB).into(),
                    record.error.clone().into(),
                    record.attempts.into(),
                ],
            )?;
            Ok(())
        })
    })
}

/// The job that runs a workflow (see the module comment). Runs as the extension owner (the
/// drain runs eventic's own functions so, and no other role may EXECUTE it); the body and
/// its steps run as the role that started the workflow.
#[pg_extern(volatile, parallel_unsafe, name = "_run_workflow")]
fn run_workflow(workflow_id: Option<&str>) {
    (|| {
        let workflow_id = required(workflow_id, "workflow_id")?;
        if !crate::roles::is_superuser() {
            return Err(EventicError::not_allowed(
                "eventic._run_workflow is run by eventic's workers only",
                "Start workflows with eventic.start_workflow; eventic.run_pending() runs them in a session.",
            ));
        }
        // a workflow that cannot run at all (its function dropped, say) ends in ERROR instead
        // of staying ENQUEUED behind a dead job
        match run_workflow_steps(workflow_id) {
            Err(err) if !matches!(err, EventicError::Internal(_)) => {
                set_status(workflow_id, "ERROR", None, Some(&err.to_string()))
            }
            other => other,
        }
    })()
    .or_report()
}

fn run_workflow_steps(workflow_id: &str) -> Result<()> {
    {
        let Some(workflow) = load(workflow_id)? else {
            return Ok(());
        };
        if matches!(workflow.status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED") {
            return Ok(());
        }
        if workflow.expired {
            return set_status(workflow_id, "ERROR", None, Some("timed out"));
        }
        set_status(workflow_id, "RUNNING", None, None)?;
        let mut records = load_steps(workflow_id)?;
        let mut calls = jobs::Calls::default();
        let body = jobs::Signature::of(workflow.fn_oid)?;
        let (body_sql, body_args) = body.call_returning_json(&workflow.input)?;
        let mut speculate = may_speculate(workflow.fn_oid);
        for _ in 0..STEPS_PER_JOB {
            // every step that wrote keeps a subtransaction xid until the transaction ends:
            // go on in a fresh job (and transaction) before the subxid cache overflows
            if crate::subxact::subxid_cache_nearly_full() {
                break;
            }
            CONTEXT.with(|ctx| {
                *ctx.borrow_mut() = Some(Context {
                    workflow_id: workflow_id.to_string(),
                    records: records.clone(),
                    position: 0,
                    new_values: Vec::new(),
                    pending: None,
                    speculative: speculate,
                    inline_steps: 0,
                })
            });
            // a body that caught the suspension (EXCEPTION WHEN OTHERS around a step) still
            // stops there: its subtransaction is rolled back all the same
            let outcome = in_subtransaction(|| {
                let result = crate::roles::run_job_as(workflow.started_by, || {
                    calls.query_json(&body_sql, &body_args)
                });
                if suspended() {
                    EventicError::Internal(SUSPEND.into()).report();
                }
                result
            });
            let ctx = CONTEXT.with(|ctx| ctx.borrow_mut().take());
            let Some(ctx) = ctx else { break };
            if ctx.speculative {
                if let (Ok(Ok(output)), None) = (&outcome, &ctx.pending) {
                    // the body returned: its inline steps and their records commit together
                    for (position, record) in &ctx.new_values {
                        write_step(workflow_id, *position, record)?;
                    }
                    return set_status(workflow_id, "SUCCESS", Some(output.clone()), None);
                }
                // it did not finish in one go (it sleeps, waits, or a step failed): all it did,
                // inline steps included, went with its subtransaction; replay it step by step,
                // as this backend will do for this function from now on
                never_speculate(workflow.fn_oid);
                speculate = false;
                continue;
            }
            for (position, record) in &ctx.new_values {
                write_step(workflow_id, *position, record)?;
            }
            records = ctx.records;
            match (outcome, ctx.pending) {
                (Ok(Ok(output)), _) => {
                    return set_status(workflow_id, "SUCCESS", Some(output), None)
                }
                (Ok(Err(err)), None) => {
                    return set_status(workflow_id, "ERROR", None, Some(&err.to_string()))
                }
                (Err(failure), None) => {
                    return set_status(workflow_id, "ERROR", None, Some(&failure.message))
                }
                (_, Some((position, Pending::Sleep { seconds }))) => {
                    if position >= records.len() {
                        let record = StepRecord {
                            name: "sleep".into(),
                            kind: "sleep".into(),
                            output: Some(Value::from(now_epoch()? + seconds)),
                            error: None,
                            attempts: 1,
                        };
                        write_step(workflow_id, position, &record)?;
                        records.push(record);
                    }
                    let wake_at = records[position]
                        .output
                        .as_ref()
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0);
                    let delay = wake_at - now_epoch()?;
                    if delay > 0.0 {
                        set_status(workflow_id, "SLEEPING", None, None)?;
                        return enqueue_run(
                            &workflow.queue_name,
                            workflow_id,
                            workflow.started_by,
                            workflow.wait(delay),
                        );
                    }
                }
                (_, Some((position, Pending::Recv { topic, seconds }))) => {
                    let deadline = match records.get(position) {
                        Some(placeholder) => placeholder
                            .output
                            .as_ref()
                            .and_then(|o| o["deadline"].as_f64())
                            .unwrap_or(0.0),
                        None => {
                            let deadline = now_epoch()? + seconds;
                            let placeholder = StepRecord {
                                name: topic.clone(),
                                kind: "recv".into(),
                                output: Some(serde_json::json!({ "deadline": deadline })),
                                error: None,
                                attempts: 0,
                            };
                            write_step(workflow_id, position, &placeholder)?;
                            records.push(placeholder);
                            deadline
                        }
                    };
                    let message = take_message(workflow_id, &topic)?;
                    let now = now_epoch()?;
                    if message.is_none() && now < deadline {
                        set_status(workflow_id, "WAITING", None, None)?;
                        return enqueue_run(
                            &workflow.queue_name,
                            workflow_id,
                            workflow.started_by,
                            workflow.wait(deadline - now),
                        );
                    }
                    let record = StepRecord {
                        name: topic,
                        kind: "recv".into(),
                        output: message.flatten(),
                        error: None,
                        attempts: 1,
                    };
                    write_step(workflow_id, position, &record)?;
                    records[position] = record;
                }
                (_, Some((position, Pending::SetEvent { key, value }))) => {
                    as_extension_owner(|| {
                        crate::spi_plans::kept_run(
                            "INSERT INTO eventic.workflow_events (workflow_id, key, value) VALUES ($1, $2, $3)
                             ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value, set_at = clock_timestamp()",
                            &[workflow_id.into(), key.as_str().into(), JsonB(value.clone()).into()],
                        )?;
                        Ok(())
                    })?;
                    let record = StepRecord {
                        name: key,
                        kind: "set_event".into(),
                        output: Some(value),
                        error: None,
                        attempts: 1,
                    };
                    write_step(workflow_id, position, &record)?;
                    records.push(record);
                }
                (_, Some((position, Pending::StartChild { fn_oid, input }))) => {
                    let child = format!("{workflow_id}/{position}");
                    let started = insert_workflow(
                        &child,
                        fn_oid,
                        input,
                        &workflow.queue_name,
                        workflow.started_by,
                        None,
                        Some(workflow_id),
                    )?;
                    // a child that exists already is this step's (a replay), unless another
                    // role took its id first
                    if !started {
                        let taken = load_state(&child)?
                            .is_some_and(|existing| existing.started_by != workflow.started_by);
                        if taken {
                            return set_status(
                                workflow_id,
                                "ERROR",
                                None,
                                Some(&format!("the id {child} of its child is taken by another role's workflow")),
                            );
                        }
                    }
                    let record = StepRecord {
                        name: "start_child".into(),
                        kind: "start_child".into(),
                        output: Some(Value::String(child)),
                        error: None,
                        attempts: 1,
                    };
                    write_step(workflow_id, position, &record)?;
                    records.push(record);
                }
                (_, Some((position, Pending::Await { child }))) => {
                    let state = result_of(&child)?;
                    let record = match state {
                        None => StepRecord {
                            name: child.clone(),
                            kind: "await".into(),
                            output: None,
                            error: Some(format!("workflow {child} does not exist")),
                            attempts: 1,
                        },
                        Some((status, output, error)) => match status.as_str() {
                            "SUCCESS" => StepRecord {
                                name: child.clone(),
                                kind: "await".into(),
                                output: output.map(|j| j.0),
                                error: None,
                                attempts: 1,
                            },
                            "ERROR" | "CANCELLED" => StepRecord {
                                name: child.clone(),
                                kind: "await".into(),
                                output: None,
                                error: Some(error.unwrap_or_else(|| status.to_lowercase())),
                                attempts: 1,
                            },
                            _ => {
                                // the child's end enqueues this workflow again; a late check too
                                set_status(workflow_id, "WAITING", None, None)?;
                                return enqueue_run(
                                    &workflow.queue_name,
                                    workflow_id,
                                    workflow.started_by,
                                    workflow.wait(60.0),
                                );
                            }
                        },
                    };
                    write_step(workflow_id, position, &record)?;
                    records.push(record);
                }
                (_, Some((position, Pending::Call { name, kind, fn_oid, args }))) => {
                    let previous_attempts = records.get(position).map(|r| r.attempts).unwrap_or(0);
                    let job = jobs::Job::new(fn_oid, args, workflow.started_by);
                    let result = jobs::run_returning(&job, &mut calls);
                    let record = match result {
                        Ok(output) => StepRecord {
                            name,
                            kind: kind.into(),
                            output: Some(output),
                            error: None,
                            attempts: previous_attempts + 1,
                        },
                        Err(failure) => StepRecord {
                            name,
                            kind: kind.into(),
                            output: None,
                            error: Some(format!("{}: {}", failure.sqlstate, failure.message)),
                            attempts: previous_attempts + 1,
                        },
                    };
                    write_step(workflow_id, position, &record)?;
                    let failed_again = record.error.is_some() && record.attempts < STEP_ATTEMPTS;
                    let attempts = record.attempts;
                    if position < records.len() {
                        records[position] = record;
                    } else {
                        records.push(record);
                    }
                    if failed_again {
                        // retry the step later, with backoff; nothing runs meanwhile
                        set_status(workflow_id, "ENQUEUED", None, None)?;
                        return enqueue_run(
                            &workflow.queue_name,
                            workflow_id,
                            workflow.started_by,
                            f64::from(1 << attempts.min(10)),
                        );
                    }
                }
                // only a speculative run abandons (handled above); replay again
                (_, Some((_, Pending::Abandon))) => {}
            }
        }
        // a long workflow continues in a fresh job (and a fresh transaction)
        enqueue_run(&workflow.queue_name, workflow_id, workflow.started_by, 0.0)
    }
}

/// The status of a workflow: ENQUEUED, RUNNING, SLEEPING, WAITING, SUCCESS, ERROR, CANCELLED.
#[pg_extern(stable, parallel_restricted)]
fn workflow_status(workflow_id: Option<&str>) -> String {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        Ok(workflow_for(id, "see")?.status)
    })()
    .or_report()
}

/// A workflow's status, output and error.
type RunResult = (String, Option<JsonB>, Option<String>);

/// A workflow's status, output and error as committed now, or None when it does not exist.
fn result_of(id: &str) -> Result<Option<RunResult>> {
    Spi::connect(|client| {
        let mut rows = client.select(
            &*crate::spi_plans::kept(
                client,
                "SELECT status, output, error FROM eventic.workflow_runs WHERE workflow_id = $1",
                &[id.into()],
            )?,
            Some(1),
            &[id.into()],
        )?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some((
            row.get::<String>(1)?.unwrap_or_default(),
            crate::raw_jsonb::column(&row, 2)?.map(JsonB),
            row.get::<String>(3)?,
        )))
    })
}

fn unknown_workflow(id: &str) -> EventicError {
    EventicError::WorkflowNotFound { id: id.to_string() }
}

/// Cancel a workflow: its later steps never run.
#[pg_extern(volatile, parallel_unsafe)]
fn cancel_workflow(workflow_id: Option<&str>) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let Some(workflow) = load(id)? else {
            return Err(unknown_workflow(id));
        };
        require_starter(id, workflow.started_by, "cancel")?;
        if !matches!(workflow.status.as_str(), "SUCCESS" | "ERROR") {
            set_status(id, "CANCELLED", None, None)?;
        }
        Ok(())
    })()
    .or_report()
}
