//! What a workflow body calls, inside its replay: steps (`eventic.step`,
//! `eventic.transaction`, run inline when speculating), `sleep`, `recv`, `set_event`,
//! `start_child`, `await_workflow`, and the recorded values `now`, `random`,
//! `workflow_id`. Each returns its record on a replay, or suspends the body at a new step
//! (the runner, [`super::runner`], then runs it).

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::queues::jobs;
use crate::raw_jsonb::RawJsonb;
use crate::roles::current_role;

use super::{
    interval_seconds, negative, Pending, StepRecord, CONTEXT, STEPS_PER_JOB, STEP_ATTEMPTS, SUSPEND,
};

pub(super) fn outside_workflow(what: &str) -> EventicError {
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
        // a patch marker where the body asks for something else: a retired patch (its
        // patched() call removed from the body), skipped (see super::patches)
        while kind != super::patches::KIND
            && ctx.records.get(ctx.position).is_some_and(|r| r.kind == super::patches::KIND)
        {
            ctx.position += 1;
        }
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

pub(super) fn suspended() -> bool {
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

pub(super) fn may_speculate(body: pg_sys::Oid) -> bool {
    crate::settings::speculative_workflows()
        && !STEP_BY_STEP.with(|bodies| bodies.borrow().contains(&body.to_u32()))
}

pub(super) fn never_speculate(body: pg_sys::Oid) {
    STEP_BY_STEP.with(|bodies| bodies.borrow_mut().insert(body.to_u32()));
}

fn speculating() -> bool {
    CONTEXT.with(|ctx| ctx.borrow().as_ref().is_some_and(|c| c.speculative))
}

/// A speculative run: run the new step at `position` here, inside the body's subtransaction,
/// as the body's role; its record is written only if the whole body returns. A failing step
/// (it needs retries with backoff) or too many steps end the speculation.
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
    // no subtransaction of its own (each that writes would keep an xid to the end of the
    // worker's transaction, 10 per workflow of 10 steps): an error rolls back the body's
    // subtransaction, and with it the whole speculation, which the flags record even if the
    // body catches the error
    CONTEXT.with(|ctx| {
        if let Some(ctx) = ctx.borrow_mut().as_mut() {
            ctx.inline_failed |= ctx.inline_running;
            ctx.inline_running = true;
        }
    });
    let job = jobs::Job::new(fn_oid, args, current_role());
    let workflow_id = CONTEXT.with(|ctx| ctx.borrow().as_ref().map(|c| c.workflow_id.clone()));
    let output = crate::progress::in_step(&workflow_id.unwrap_or_default(), position, name, || {
        jobs::call_returning(&job, &mut jobs::Calls::default())
    })?;
    CONTEXT.with(|ctx| {
        if let Some(ctx) = ctx.borrow_mut().as_mut() {
            ctx.inline_running = false;
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

pub(super) fn now_epoch() -> Result<f64> {
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
