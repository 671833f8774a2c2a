//! The job that runs a workflow (`eventic._run_workflow`): replays the body and runs the
//! step it stopped at (`run_workflow_steps`), speculatively or step by step.

use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::queues::jobs;
use crate::roles::as_extension_owner;
use crate::subxact::in_subtransaction;

use super::body::{may_speculate, never_speculate, now_epoch, suspended};
use super::store::{
    enqueue_run, insert_workflow, load, load_state, load_steps, result_of, set_status,
    take_message, write_step,
};
use super::{Context, Pending, StepRecord, CONTEXT, STEPS_PER_JOB, STEP_ATTEMPTS, SUSPEND};

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
        // an external body is its runner's (claim_workflows), never the worker's
        if workflow.external || matches!(workflow.status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED") {
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
        for replay in 0..STEPS_PER_JOB {
            // every step that wrote keeps a subtransaction xid until the transaction ends:
            // go on in a fresh job (and transaction) before the subxid cache overflows (but
            // only after a first replay: each job makes progress)
            if replay > 0 && crate::subxact::subxid_cache_nearly_full() {
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
                    inline_running: false,
                    inline_failed: false,
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
                let inline_ok = !ctx.inline_running && !ctx.inline_failed;
                if let (Ok(Ok(output)), None, true) = (&outcome, &ctx.pending, inline_ok) {
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
                            false,
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
                            false,
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
                        Some(fn_oid),
                        None,
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
                                    false,
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
                    let result = crate::progress::in_step(workflow_id, position, &name, || {
                        jobs::run_returning(&job, &mut calls)
                    });
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
                            false,
                        );
                    }
                }
                // only a speculative run abandons (handled above); replay again
                (_, Some((_, Pending::Abandon))) => {}
            }
        }
        // a long workflow continues in a fresh job (and a fresh transaction)
        enqueue_run(&workflow.queue_name, workflow_id, workflow.started_by, 0.0, false)
    }
}
