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

mod body;
mod control;
mod external;
mod patches;
pub mod retention;
mod runner;
mod store;

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::Value;

use crate::errors::EventicError;

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
    /// An inline step is running; still set when it raised an error (which the body may have
    /// caught): then the speculation cannot count.
    inline_running: bool,
    /// An earlier inline step raised an error.
    inline_failed: bool,
}

thread_local! {
    static CONTEXT: RefCell<Option<Context>> = const { RefCell::new(None) };
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

/// The workflow whose body is running in this backend, if one is.
pub fn current_workflow_id() -> Option<String> {
    CONTEXT.with(|ctx| ctx.borrow().as_ref().map(|c| c.workflow_id.clone()))
}
