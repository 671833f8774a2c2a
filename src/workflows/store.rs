//! The workflow tables: reading a workflow's row and records (`load`, `load_state`,
//! `load_steps`, `result_of`), writing them (`write_step`, `set_status`,
//! `insert_workflow`), taking its messages (`take_message`) and enqueueing its run job
//! (`enqueue_run`). Imports no other workflow module.

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{EventicError, Result};
use crate::queues::{self, NewJob};
use crate::roles::as_extension_owner;

use super::StepRecord;

// a function call, not a regprocedure literal: a kept plan must not keep a stale oid
const RUN_WORKFLOW_OID: &str = "SELECT to_regprocedure('eventic._run_workflow(text)')::oid";

/// Make the workflow run again after `delay_seconds`: a run job in its queue, or for a
/// workflow with an external body (`external`) its `next_run_at`, where runners claim it.
pub(super) fn enqueue_run(
    queue_name: &str,
    workflow_id: &str,
    started_by: pg_sys::Oid,
    delay_seconds: f64,
    external: bool,
) -> Result<()> {
    if external {
        return wake_external(workflow_id, delay_seconds);
    }
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

thread_local! {
    /// The catalog generation under which eventic.workflow_runs was seen with its 0.3.0 columns.
    static EXTERNAL_SCHEMA: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Whether eventic.workflow_runs has the columns of external bodies (0.3.0): a database whose
/// extension is not updated yet (ALTER EXTENSION eventic UPDATE) runs this library on its
/// older tables, with the statements of before.
pub(super) fn external_schema() -> Result<bool> {
    let generation = crate::catalog_cache::catalog_generation();
    if EXTERNAL_SCHEMA.with(std::cell::Cell::get) == Some(generation) {
        return Ok(true);
    }
    let present = as_extension_owner(|| {
        crate::spi_plans::kept_value::<bool>(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute
                             WHERE attrelid = pg_catalog.to_regclass('eventic.workflow_runs')
                               AND attname = 'external_body' AND NOT attisdropped)",
            &[],
        )
    })?
    .unwrap_or(false);
    if present {
        EXTERNAL_SCHEMA.with(|seen| seen.set(Some(generation)));
    }
    Ok(present)
}

/// The channel runners of external bodies LISTEN on: a workflow became runnable.
pub const EXTERNAL_CHANNEL: &str = "eventic_external_workflows";

fn wake_external(workflow_id: &str, delay_seconds: f64) -> Result<()> {
    as_extension_owner(|| {
        crate::spi_plans::kept_run(
            "UPDATE eventic.workflow_runs
                SET next_run_at = clock_timestamp() + $2 * interval '1 second'
              WHERE workflow_id = $1",
            &[workflow_id.into(), delay_seconds.max(0.0).into()],
        )?;
        if delay_seconds <= 0.0 {
            notify_runners()?;
        }
        Ok(())
    })
}

/// Wake idle runners (a NOTIFY, sent at commit; one per transaction however many).
pub(super) fn notify_runners() -> Result<()> {
    crate::spi_plans::kept_run(
        "SELECT pg_catalog.pg_notify($1, '')",
        &[EXTERNAL_CHANNEL.into()],
    )
}

pub(super) fn set_status(
    workflow_id: &str,
    status: &str,
    output: Option<Value>,
    error: Option<&str>,
) -> Result<()> {
    let args = [
        workflow_id.into(),
        status.into(),
        output.map(JsonB).into(),
        error.into(),
    ];
    let parent = as_extension_owner(|| {
        if !external_schema()? {
            return crate::spi_plans::kept_value::<String>(
                "UPDATE eventic.workflow_runs SET status = $2, output = coalesce($3, output), error = $4,
                        updated_at = clock_timestamp() WHERE workflow_id = $1
                 RETURNING parent_id",
                &args,
            );
        }
        crate::spi_plans::kept_value::<String>(
            "UPDATE eventic.workflow_runs SET status = $2, output = coalesce($3, output), error = $4,
                    updated_at = clock_timestamp(),
                    -- an ended workflow is nobody's to run (external bodies)
                    next_run_at = CASE WHEN $2 IN ('SUCCESS', 'ERROR', 'CANCELLED') THEN NULL ELSE next_run_at END,
                    leased_until = CASE WHEN $2 IN ('SUCCESS', 'ERROR', 'CANCELLED') THEN NULL ELSE leased_until END
              WHERE workflow_id = $1
             RETURNING parent_id",
            &args,
        )
    })?;
    // a parent waiting for this child goes on now that it ended
    if let (Some(parent), "SUCCESS" | "ERROR" | "CANCELLED") = (parent, status) {
        if let Some(state) = load_state(&parent)? {
            if state.status == "WAITING" {
                enqueue_run(
                    &state.queue_name,
                    &parent,
                    state.started_by,
                    0.0,
                    state.external,
                )?;
            }
        }
    }
    Ok(())
}

/// Insert a workflow and enqueue its first run; nothing (false) when the id exists already.
/// A workflow has a SQL body (`fn_oid`) or an external one (`external_body`, its name).
#[allow(clippy::too_many_arguments)]
pub(super) fn insert_workflow(
    id: &str,
    fn_oid: Option<pg_sys::Oid>,
    external_body: Option<&str>,
    input: Value,
    queue_name: &str,
    started_by: pg_sys::Oid,
    timeout: Option<Interval>,
    parent: Option<&str>,
) -> Result<bool> {
    let inserted = as_extension_owner(|| {
        if !external_schema()? {
            if external_body.is_some() {
                return Err(EventicError::NotReady {
                    message: "workflows with external bodies need eventic 0.3.0".into(),
                    hint: "Run ALTER EXTENSION eventic UPDATE.".into(),
                });
            }
            return crate::spi_plans::kept_value::<String>(
                "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by, deadline, parent_id)
                 VALUES ($1, $2, $3, $4, $5, clock_timestamp() + $6, $7)
                 ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id",
                &[
                    id.into(),
                    fn_oid.into(),
                    JsonB(input.clone()).into(),
                    queue_name.into(),
                    started_by.into(),
                    timeout.into(),
                    parent.into(),
                ],
            );
        }
        crate::spi_plans::kept_value::<String>(
            "INSERT INTO eventic.workflow_runs (workflow_id, fn, input, queue_name, started_by, deadline, parent_id, external_body)
             VALUES ($1, $2, $3, $4, $5, clock_timestamp() + $6, $7, $8)
             ON CONFLICT (workflow_id) DO NOTHING RETURNING workflow_id",
            &[
                id.into(),
                fn_oid.into(),
                JsonB(input).into(),
                queue_name.into(),
                started_by.into(),
                timeout.into(),
                parent.into(),
                external_body.into(),
            ],
        )
    })?;
    if inserted.is_none() {
        return Ok(false);
    }
    note_starter(started_by)?;
    enqueue_run(queue_name, id, started_by, 0.0, external_body.is_some())?;
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
pub(super) fn take_message(workflow_id: &str, topic: &str) -> Result<Option<Option<Value>>> {
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

pub(super) struct State {
    pub(super) status: String,
    pub(super) queue_name: String,
    pub(super) started_by: pg_sys::Oid,
    /// Its body runs outside Postgres (runners claim it; eventic's worker never runs it).
    pub(super) external: bool,
}

/// After an INSERT that found `id` taken: the same starter gets its workflow back
/// (idempotency), another role is refused rather than handed someone else's workflow.
pub(super) fn refuse_taken_id(id: &str) -> Result<()> {
    if let Some(existing) = load_state(id)? {
        if !crate::roles::may_manage(existing.started_by) {
            return Err(EventicError::not_allowed(
                format!("workflow id {id} is taken by a workflow another role started"),
                "Workflow ids are shared by all roles of the database: choose another \
                 (or pass NULL for a UUIDv7).",
            ));
        }
    }
    Ok(())
}

/// A workflow's status, queue and starter, whoever asks (callers check who may act on it).
pub(super) fn load_state(id: &str) -> Result<Option<State>> {
    let sql = if external_schema()? {
        "SELECT status, queue_name, started_by, external_body IS NOT NULL FROM eventic.workflow_runs WHERE workflow_id = $1"
    } else {
        "SELECT status, queue_name, started_by, false FROM eventic.workflow_runs WHERE workflow_id = $1"
    };
    as_extension_owner(|| {
        Spi::connect(|client| {
            let mut rows = client.select(
                &*crate::spi_plans::kept(client, sql, &[id.into()])?,
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
                external: row.get::<bool>(4)?.unwrap_or(false),
            }))
        })
    })
}

pub(super) struct WorkflowRow {
    pub(super) fn_oid: pg_sys::Oid,
    pub(super) input: Value,
    pub(super) status: String,
    pub(super) queue_name: String,
    pub(super) started_by: pg_sys::Oid,
    pub(super) expired: bool,
    /// Seconds until the timeout, if there is one.
    time_left: Option<f64>,
    /// Its body runs outside Postgres; `lease` counts the claims of it by runners.
    pub(super) external: bool,
    pub(super) lease: i64,
}

impl WorkflowRow {
    /// How long a sleeping/waiting workflow may be left alone: `wanted`, but never past its
    /// timeout (it is woken then, and ends in ERROR "timed out").
    pub(super) fn wait(&self, wanted: f64) -> f64 {
        match self.time_left {
            Some(left) => wanted.min(left.max(0.0) + 0.01),
            None => wanted,
        }
    }
}

const LOAD: &str = "SELECT fn::oid, input, status, queue_name, started_by,
            coalesce(deadline < clock_timestamp(), false),
            extract(epoch FROM deadline - clock_timestamp())::float8,
            external_body IS NOT NULL, lease
       FROM eventic.workflow_runs WHERE workflow_id = $1 FOR UPDATE";
/// [`LOAD`] on the tables of before 0.3.0 ([`external_schema`]).
const LOAD_BEFORE_0_3: &str = "SELECT fn::oid, input, status, queue_name, started_by,
            coalesce(deadline < clock_timestamp(), false),
            extract(epoch FROM deadline - clock_timestamp())::float8,
            false, 0::bigint
       FROM eventic.workflow_runs WHERE workflow_id = $1 FOR UPDATE";

pub(super) fn load(workflow_id: &str) -> Result<Option<WorkflowRow>> {
    let sql = if external_schema()? {
        LOAD
    } else {
        LOAD_BEFORE_0_3
    };
    as_extension_owner(|| {
        Spi::connect_mut(|client| {
            let mut rows = client.update(
                &*crate::spi_plans::kept(client, sql, &[workflow_id.into()])?,
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
                external: row.get::<bool>(8)?.unwrap_or(false),
                lease: row.get::<i64>(9)?.unwrap_or(0),
            }))
        })
    })
}

pub(super) fn load_steps(workflow_id: &str) -> Result<Vec<StepRecord>> {
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

pub(super) fn write_step(workflow_id: &str, position: usize, record: &StepRecord) -> Result<()> {
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

/// A workflow's status, output and error.
pub(super) type RunResult = (String, Option<JsonB>, Option<String>);

/// A workflow's status, output and error as committed now, or None when it does not exist.
pub(super) fn result_of(id: &str) -> Result<Option<RunResult>> {
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
