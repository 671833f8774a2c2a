//! Workflows from the outside: `start_workflow`, `send`, `get_event`, `wait_workflow`,
//! `workflow_status`, `cancel_workflow`, `resume_workflow`, `fork_workflow`, and who may
//! act on a workflow (its starter).

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::errors::{required, EventicError, OrReport, Result};
use crate::queues::{self, jobs};
use crate::raw_jsonb::RawJsonb;
use crate::roles::{as_extension_owner, current_role};

use super::store::{
    enqueue_run, external_schema, insert_workflow, load, load_state, refuse_taken_id, result_of,
    set_status, State,
};
use super::{interval_seconds, negative, DEFAULT_QUEUE};

/// Send `message` on `topic` to a workflow (it takes it with eventic.recv).
#[pg_extern(volatile, parallel_unsafe)]
fn send(
    workflow_id: Option<&str>,
    topic: Option<&str>,
    message: default!(Option<RawJsonb>, "NULL"),
) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let topic = required(topic, "topic")?;
        if let Some(message) = message {
            message.check_holdable_at(0)?;
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
            enqueue_run(&workflow.queue_name, id, workflow.started_by, 0.0, workflow.external)?;
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
        crate::runtime::sleep_on_latch(std::time::Duration::from_millis(pause_ms));
        // 1 ms steps for the first ~20 ms (short workflows are seen as soon as they end),
        // then growing to 50 ms
        waited_ms += pause_ms;
        if waited_ms >= 20 {
            pause_ms = (pause_ms * 2).min(50);
        }
    }
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
        enqueue_run(&workflow.queue_name, id, workflow.started_by, 0.0, workflow.external)
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
            let copy = if external_schema()? {
                "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by, external_body)
                 SELECT $2, fn, input, queue_name, started_by, external_body FROM eventic.workflow_runs WHERE workflow_id = $1"
            } else {
                "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by)
                 SELECT $2, fn, input, queue_name, started_by FROM eventic.workflow_runs WHERE workflow_id = $1"
            };
            crate::spi_plans::kept_run(copy, &[id.into(), fork.as_str().into()])?;
            crate::spi_plans::kept_run(
                "INSERT INTO eventic.workflow_records (workflow_id, position, name, kind, output, error, attempts)
                 SELECT $2, position, name, kind, output, error, attempts FROM eventic.workflow_records
                  WHERE workflow_id = $1 AND position < $3 AND attempts > 0",
                &[id.into(), fork.as_str().into(), from_step.into()],
            )?;
            Ok(())
        })?;
        enqueue_run(&workflow.queue_name, &fork, workflow.started_by, 0.0, workflow.external)?;
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
        if !insert_workflow(&id, Some(fn_oid), None, input, queue_name, current_role(), timeout, None)? {
            refuse_taken_id(&id)?;
        }
        Ok(id)
    })()
    .or_report()
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
