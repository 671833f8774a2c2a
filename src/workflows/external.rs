//! Workflows whose body runs outside Postgres (the Python package's `@workflow`, say).
//!
//! `start_external_workflow(name, input)` makes the row (no `fn`, `external_body` = name,
//! `next_run_at` = now); eventic's worker never runs it. A runner, connected as the role
//! that started it, takes it with `claim_workflows` (a lease: `leased_until`, and `lease`,
//! a count of the claims that each call below names) along with its recorded steps, replays
//! the body from them and records each new step through `record_step`, `workflow_sleep`,
//! `workflow_recv` and `workflow_set_event`, then `finish_workflow`. Each of those locks the
//! workflow's row and refuses a lease that is no longer the latest claim (55000), so a step
//! recorded in the caller's transaction together with its effects (a Python `@transaction`)
//! commits once, whichever runner got there first. A runner that dies leaves its lease to
//! run out; the next claim replays the body from what was recorded. Sleeping or waiting
//! releases the lease and sets `next_run_at` (a `send`, a resume or a fork sets it to now).

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;
use crate::roles::{as_extension_owner, current_role};

use super::body::now_epoch;
use super::store::{
    insert_workflow, load, notify_runners, refuse_taken_id, set_status, take_message, write_step,
    WorkflowRow,
};
use super::{interval_seconds, negative, StepRecord};

/// The queue name shown for external workflows: no queue holds them.
const EXTERNAL_QUEUE: &str = "external";
/// The longest lease a runner may take: a day (it extends it while a body runs).
const MAX_LEASE_SECONDS: f64 = 86_400.0;

/// Start a workflow whose body `name` runs in an external runner; the same `workflow_id`
/// twice starts it once. Returns its id.
#[pg_extern(volatile, parallel_unsafe)]
fn start_external_workflow(
    name: Option<&str>,
    input: default!(Option<RawJsonb>, "'{}'"),
    workflow_id: default!(Option<&str>, "NULL"),
    timeout: default!(Option<Interval>, "NULL"),
) -> String {
    (|| {
        let name = required(name, "name")?;
        let input = required(input, "input")?.to_value()?;
        if name.is_empty() {
            return Err(EventicError::invalid(
                "the name of an external body must not be empty",
                "Pass the name its runners know it by, such as 'app.flows.checkout'.",
            ));
        }
        if workflow_id == Some("") {
            return Err(EventicError::invalid(
                "workflow_id must not be empty",
                "Pass a name, or NULL for a UUIDv7.",
            ));
        }
        if timeout.is_some_and(|t| interval_seconds(t) < 0.0) {
            return Err(negative("timeout"));
        }
        let id = match workflow_id {
            Some(id) => id.to_string(),
            None => crate::records::store::new_uuid_v7().to_string(),
        };
        let role = current_role();
        let inserted = insert_workflow(
            &id,
            None,
            Some(name),
            input,
            EXTERNAL_QUEUE,
            role,
            timeout,
            None,
        )?;
        if !inserted {
            refuse_taken_id(&id)?;
        }
        Ok(id)
    })()
    .or_report()
}

fn lease_seconds(lease: Interval) -> Result<f64> {
    let seconds = interval_seconds(lease);
    if seconds <= 0.0 || seconds > MAX_LEASE_SECONDS {
        return Err(EventicError::invalid(
            "lease must be a positive interval of at most a day",
            "Pass a lease such as '30 seconds' and extend it with eventic.extend_workflow_lease.",
        ));
    }
    Ok(seconds)
}

const CLAIM: &str = "
WITH ready AS (
    SELECT workflow_id FROM eventic.workflow_runs
     -- statement_timestamp() (stable, unlike clock_timestamp()) bounds the index scan: the
     -- workflows that are not due yet (sleeping, waiting) are never read
     WHERE started_by::oid = $1 AND next_run_at <= statement_timestamp()
       AND (leased_until IS NULL OR leased_until < clock_timestamp())
       AND status IN ('ENQUEUED', 'RUNNING', 'SLEEPING', 'WAITING')
       AND ($2::text[] IS NULL OR external_body = ANY ($2::text[]))
       AND ($5::text IS NULL OR workflow_id = $5)
     ORDER BY next_run_at LIMIT $3 FOR UPDATE SKIP LOCKED),
claimed AS (
    UPDATE eventic.workflow_runs w
       SET lease = w.lease + 1, updated_at = clock_timestamp(),
           -- a workflow past its timeout is not handed out: it ends here
           status = CASE WHEN w.deadline < clock_timestamp() THEN 'ERROR' ELSE 'RUNNING' END,
           error = CASE WHEN w.deadline < clock_timestamp() THEN 'timed out' ELSE w.error END,
           leased_until = CASE WHEN w.deadline < clock_timestamp() THEN NULL
                               ELSE clock_timestamp() + $4 * interval '1 second' END,
           next_run_at = CASE WHEN w.deadline < clock_timestamp() THEN NULL ELSE w.next_run_at END
      FROM ready WHERE w.workflow_id = ready.workflow_id
    RETURNING w.workflow_id, w.external_body, w.input, w.lease, w.status, w.next_run_at)
SELECT c.workflow_id, c.external_body, c.input, c.lease,
       coalesce((SELECT jsonb_agg(jsonb_build_object('position', r.position, 'name', r.name,
                                                     'kind', r.kind, 'output', r.output,
                                                     'error', r.error, 'attempts', r.attempts)
                                  ORDER BY r.position)
                   FROM eventic.workflow_records r WHERE r.workflow_id = c.workflow_id), '[]')
  FROM claimed c WHERE c.status = 'RUNNING' ORDER BY c.next_run_at";

/// Take up to `batch` runnable workflows of the current role with an external body (of one
/// of `names`, or any), each leased for `duration`; with each, its recorded steps (a JSON array
/// of {position, name, kind, output, error, attempts}) to replay the body from. With `only`,
/// just that workflow if it is runnable (a caller that runs the workflow it started).
#[pg_extern(volatile, parallel_unsafe)]
fn claim_workflows(
    names: default!(Option<Vec<Option<String>>>, "NULL"),
    batch: default!(Option<i32>, 1),
    duration: default!(Option<Interval>, "'30 seconds'"),
    only: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(workflow_id, String),
        name!(name, String),
        name!(input, JsonB),
        name!(lease, i64),
        name!(steps, JsonB),
    ),
> {
    let rows = (|| {
        let batch = required(batch, "batch")?;
        let lease = lease_seconds(required(duration, "duration")?)?;
        if batch < 1 {
            return Err(EventicError::invalid(
                "batch must be at least 1",
                "Take at least one workflow.",
            ));
        }
        let names: Option<Vec<String>> = names.map(|n| n.into_iter().flatten().collect());
        // only the caller's own workflows: a runner runs bodies with its connection's rights,
        // which must be those of the role that started the workflow
        let role = current_role();
        as_extension_owner(|| {
            Spi::connect_mut(|client| {
                let args = [
                    role.into(),
                    names.clone().into(),
                    i64::from(batch).into(),
                    lease.into(),
                    only.into(),
                ];
                let stmt = crate::spi_plans::kept(client, CLAIM, &args)?;
                let rows = client.update(&*stmt, None, &args)?;
                let mut claimed = Vec::new();
                for row in rows {
                    claimed.push((
                        row.get::<String>(1)?.unwrap_or_default(),
                        row.get::<String>(2)?.unwrap_or_default(),
                        JsonB(crate::raw_jsonb::column(&row, 3)?.unwrap_or(Value::Null)),
                        row.get::<i64>(4)?.unwrap_or(0),
                        JsonB(crate::raw_jsonb::column(&row, 5)?.unwrap_or(Value::Null)),
                    ));
                }
                Ok(claimed)
            })
        })
    })()
    .or_report();
    TableIterator::new(rows)
}

/// The workflow `id`, its row locked, when the caller runs it under `lease`: the role that
/// started it (42501 otherwise), an external body, the latest claim, not ended (55000).
fn hold(id: &str, lease: i64) -> Result<WorkflowRow> {
    let workflow =
        load(id)?.ok_or_else(|| EventicError::WorkflowNotFound { id: id.to_string() })?;
    if workflow.started_by != current_role() {
        return Err(EventicError::not_allowed(
            format!("permission denied to run workflow {id}"),
            "Only the role that started a workflow runs its body: connect the runner as that role.",
        ));
    }
    if !workflow.external {
        return Err(EventicError::invalid(
            format!("workflow {id} has a SQL body, which eventic's worker runs"),
            "Only workflows started with eventic.start_external_workflow are run by runners.",
        ));
    }
    if workflow.lease != lease {
        return Err(EventicError::NotReady {
            message: format!("workflow {id} is no longer held by lease {lease}: it was claimed again (lease {})", workflow.lease),
            hint: "Stop running this body: the runner holding the newer lease goes on from the recorded steps.".into(),
        });
    }
    if matches!(workflow.status.as_str(), "SUCCESS" | "ERROR" | "CANCELLED") {
        return Err(EventicError::NotReady {
            message: format!("workflow {id} has ended ({}): its steps no longer run", workflow.status),
            hint: "Stop running this body (eventic.resume_workflow runs a cancelled or failed one again).".into(),
        });
    }
    Ok(workflow)
}

/// Record step `position` of a workflow the caller holds (kind step, transaction, now or
/// random): its output, or its error after `attempts` attempts. In the transaction of the
/// step's own statements, both commit or neither does.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn record_step(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    position: Option<i32>,
    name: Option<&str>,
    kind: default!(Option<&str>, "'step'"),
    output: default!(Option<RawJsonb>, "NULL"),
    error: default!(Option<&str>, "NULL"),
    attempts: default!(Option<i32>, 1),
) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let position = checked_position(position)?;
        let name = required(name, "name")?;
        let kind = required(kind, "kind")?;
        let attempts = required(attempts, "attempts")?;
        if !matches!(kind, "step" | "transaction" | "now" | "random") {
            return Err(EventicError::invalid(
                format!("a step's kind must be step, transaction, now or random, not {kind:?}"),
                "Sleeps, messages and events have their own calls: eventic.workflow_sleep, workflow_recv, workflow_set_event.",
            ));
        }
        if attempts < 1 {
            return Err(EventicError::invalid("attempts must be at least 1", "Count the attempts the step took."));
        }
        let output = output.map(|o| o.to_value()).transpose()?;
        hold(id, required(lease, "lease")?)?;
        let record = StepRecord {
            name: name.to_string(),
            kind: kind.to_string(),
            output: if error.is_some() { None } else { Some(output.unwrap_or(Value::Null)) },
            error: error.map(str::to_string),
            attempts,
        };
        write_step(id, position, &record)
    })()
    .or_report()
}

fn checked_position(position: Option<i32>) -> Result<usize> {
    let position = required(position, "position")?;
    usize::try_from(position).map_err(|_| {
        EventicError::invalid(
            "position must not be negative",
            "Steps are numbered from 0.",
        )
    })
}

/// The recorded output of step `position` (any kind), if it has a complete record.
fn recorded(id: &str, position: usize) -> Result<Option<(String, Option<Value>, i32)>> {
    as_extension_owner(|| {
        Spi::connect(|client| {
            let args = [id.into(), (position as i32).into()];
            let mut rows = client.select(
                &*crate::spi_plans::kept(
                    client,
                    "SELECT kind, output, attempts FROM eventic.workflow_records
                      WHERE workflow_id = $1 AND position = $2",
                    &args,
                )?,
                Some(1),
                &args,
            )?;
            match rows.next() {
                Some(row) => Ok(Some((
                    row.get::<String>(1)?.unwrap_or_default(),
                    crate::raw_jsonb::column(&row, 2)?,
                    row.get::<i32>(3)?.unwrap_or(1),
                ))),
                None => Ok(None),
            }
        })
    })
}

/// Release the lease and let the workflow sleep (`status`) until `seconds` from now.
fn park(id: &str, status: &str, seconds: f64) -> Result<()> {
    as_extension_owner(|| {
        crate::spi_plans::kept_run(
            "UPDATE eventic.workflow_runs
                SET status = $2, leased_until = NULL, updated_at = clock_timestamp(),
                    next_run_at = clock_timestamp() + $3 * interval '1 second'
              WHERE workflow_id = $1",
            &[id.into(), status.into(), seconds.max(0.0).into()],
        )
    })
}

/// A durable sleep at step `position`: the wake-up time is recorded on the first call. Returns
/// the seconds still to sleep: 0 means go on; more means the workflow now sleeps (SLEEPING,
/// its lease released) and a runner claims it again when it is due.
#[pg_extern(volatile, parallel_unsafe)]
fn workflow_sleep(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    position: Option<i32>,
    duration: Option<Interval>,
) -> f64 {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let position = checked_position(position)?;
        let seconds = interval_seconds(required(duration, "duration")?);
        if seconds < 0.0 {
            return Err(negative("duration"));
        }
        let workflow = hold(id, required(lease, "lease")?)?;
        let now = as_extension_owner(now_epoch)?;
        let wake_at = match recorded(id, position)? {
            Some((kind, output, _)) if kind == "sleep" => {
                output.as_ref().and_then(Value::as_f64).unwrap_or(0.0)
            }
            _ => {
                let record = StepRecord {
                    name: "sleep".into(),
                    kind: "sleep".into(),
                    output: Some(Value::from(now + seconds)),
                    error: None,
                    attempts: 1,
                };
                write_step(id, position, &record)?;
                now + seconds
            }
        };
        let left = wake_at - now;
        if left > 0.0 {
            park(id, "SLEEPING", workflow.wait(left))?;
            return Ok(left);
        }
        Ok(0.0)
    })()
    .or_report()
}

/// Receive the next message on `topic` at step `position`: (true, message) when one came
/// (or (true, NULL) when `timeout`, counted from the first call, ran out); (false, NULL) when
/// the workflow now waits for it (WAITING, its lease released; a `send` wakes it).
#[pg_extern(volatile, parallel_unsafe)]
fn workflow_recv(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    position: Option<i32>,
    topic: Option<&str>,
    timeout: default!(Option<Interval>, "'1 minute'"),
) -> TableIterator<'static, (name!(received, bool), name!(message, Option<JsonB>))> {
    let row = (|| {
        let id = required(workflow_id, "workflow_id")?;
        let position = checked_position(position)?;
        let topic = required(topic, "topic")?;
        let timeout = interval_seconds(required(timeout, "timeout")?);
        if timeout < 0.0 {
            return Err(negative("timeout"));
        }
        let workflow = hold(id, required(lease, "lease")?)?;
        let now = as_extension_owner(now_epoch)?;
        let deadline = match recorded(id, position)? {
            Some((kind, output, attempts)) if kind == "recv" && attempts > 0 => {
                return Ok((true, output.map(JsonB)));
            }
            Some((kind, output, _)) if kind == "recv" => output
                .as_ref()
                .and_then(|o| o["deadline"].as_f64())
                .unwrap_or(0.0),
            _ => {
                let placeholder = StepRecord {
                    name: topic.to_string(),
                    kind: "recv".into(),
                    output: Some(serde_json::json!({ "deadline": now + timeout })),
                    error: None,
                    attempts: 0,
                };
                write_step(id, position, &placeholder)?;
                now + timeout
            }
        };
        let message = take_message(id, topic)?;
        if message.is_none() && now < deadline {
            park(id, "WAITING", workflow.wait(deadline - now))?;
            return Ok((false, None));
        }
        let output = message.flatten();
        let record = StepRecord {
            name: topic.to_string(),
            kind: "recv".into(),
            output: output.clone(),
            error: None,
            attempts: 1,
        };
        write_step(id, position, &record)?;
        Ok((true, output.map(JsonB)))
    })()
    .or_report();
    TableIterator::once(row)
}

/// Publish `value` under `key` (read with eventic.get_event) as step `position`.
#[pg_extern(volatile, parallel_unsafe)]
fn workflow_set_event(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    position: Option<i32>,
    key: Option<&str>,
    value: Option<RawJsonb>,
) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let position = checked_position(position)?;
        let key = required(key, "key")?;
        let value = required(value, "value")?.to_value()?;
        hold(id, required(lease, "lease")?)?;
        as_extension_owner(|| {
            crate::spi_plans::kept_run(
                "INSERT INTO eventic.workflow_events (workflow_id, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (workflow_id, key) DO UPDATE SET value = EXCLUDED.value, set_at = clock_timestamp()",
                &[id.into(), key.into(), JsonB(value.clone()).into()],
            )
        })?;
        let record = StepRecord {
            name: key.to_string(),
            kind: "set_event".into(),
            output: Some(value),
            error: None,
            attempts: 1,
        };
        write_step(id, position, &record)
    })()
    .or_report()
}

/// End a workflow the caller holds: SUCCESS with `output`, or ERROR with `error`.
#[pg_extern(volatile, parallel_unsafe)]
fn finish_workflow(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    output: default!(Option<RawJsonb>, "NULL"),
    error: default!(Option<&str>, "NULL"),
) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let output = output.map(|o| o.to_value()).transpose()?;
        hold(id, required(lease, "lease")?)?;
        match error {
            Some(error) => set_status(id, "ERROR", None, Some(error)),
            None => set_status(id, "SUCCESS", Some(output.unwrap_or(Value::Null)), None),
        }
    })()
    .or_report()
}

/// Keep holding a workflow for `lease` from now (a long step); returns the new end.
#[pg_extern(volatile, parallel_unsafe)]
fn extend_workflow_lease(
    workflow_id: Option<&str>,
    lease: Option<i64>,
    duration: default!(Option<Interval>, "'30 seconds'"),
) -> TimestampWithTimeZone {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let seconds = lease_seconds(required(duration, "duration")?)?;
        hold(id, required(lease, "lease")?)?;
        as_extension_owner(|| {
            crate::spi_plans::kept_value::<TimestampWithTimeZone>(
                "UPDATE eventic.workflow_runs SET leased_until = clock_timestamp() + $2 * interval '1 second'
                  WHERE workflow_id = $1 RETURNING leased_until",
                &[id.into(), seconds.into()],
            )
        })?
        .ok_or_else(|| EventicError::WorkflowNotFound { id: id.to_string() })
    })()
    .or_report()
}

/// Give a workflow back before its lease ends (a runner shutting down): runnable again at
/// once unless it ended. Nothing when `lease` is not its latest claim.
#[pg_extern(volatile, parallel_unsafe)]
fn release_workflow(workflow_id: Option<&str>, lease: Option<i64>) {
    (|| {
        let id = required(workflow_id, "workflow_id")?;
        let lease = required(lease, "lease")?;
        let role: pg_sys::Oid = current_role();
        as_extension_owner(|| {
            let released = crate::spi_plans::kept_value::<String>(
                "UPDATE eventic.workflow_runs
                    SET leased_until = NULL, updated_at = clock_timestamp(),
                        status = CASE WHEN status = 'RUNNING' THEN 'ENQUEUED' ELSE status END,
                        next_run_at = CASE WHEN status IN ('SUCCESS', 'ERROR', 'CANCELLED') THEN NULL
                                           ELSE clock_timestamp() END
                  WHERE workflow_id = $1 AND lease = $2 AND started_by::oid = $3
                    AND external_body IS NOT NULL
                  RETURNING status",
                &[id.into(), lease.into(), role.into()],
            )?;
            if released.is_some_and(|s| !matches!(s.as_str(), "SUCCESS" | "ERROR" | "CANCELLED")) {
                notify_runners()?;
            }
            Ok(())
        })
    })()
    .or_report()
}
