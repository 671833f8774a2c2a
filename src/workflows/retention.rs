//! Bounded growth of workflows: the workers remove finished workflows (SUCCESS, ERROR,
//! CANCELLED) whose end is older than `eventic.workflow_retention`, with their step records,
//! messages and events (foreign keys ON DELETE CASCADE). Never a workflow that is still
//! running, sleeping or waiting, nor a finished child whose parent has not ended (the parent
//! may still await it). Like the finished-jobs archive, at most every few seconds per worker.

use std::cell::Cell;
use std::time::{Duration, Instant};

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::prelude::*;

use crate::errors::Result;
use crate::roles::as_extension_owner;

/// How often a worker prunes (sooner while it finds full batches).
const INTERVAL: Duration = Duration::from_secs(5);
/// Workflows removed per transaction at most, so a first prune of a large backlog stays short.
const BATCH: i64 = 5_000;

// Through the partial index on updated_at of finished runs; SKIP LOCKED: a row another
// session holds (a send, a resume) is left for the next time.
const PRUNE: &str = "
DELETE FROM eventic.workflow_runs
 WHERE workflow_id IN (
       SELECT w.workflow_id FROM eventic.workflow_runs w
        WHERE w.status IN ('SUCCESS', 'ERROR', 'CANCELLED')
          AND w.updated_at < $1 - $2 * interval '1 second'
          AND NOT EXISTS (SELECT FROM eventic.workflow_runs p
                           WHERE p.workflow_id = w.parent_id
                             AND p.status NOT IN ('SUCCESS', 'ERROR', 'CANCELLED'))
        ORDER BY w.updated_at
        LIMIT $3
          FOR UPDATE OF w SKIP LOCKED)";

thread_local! {
    static NEXT_PRUNE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Remove the finished workflows older than the retention, if it is time to look (called by
/// a worker in its transaction; a failure is logged and rolled back alone).
pub fn prune_if_due() {
    let retention = crate::settings::workflow_retention_seconds();
    if retention < 0 || NEXT_PRUNE.with(|next| next.get().is_some_and(|at| Instant::now() < at)) {
        return;
    }
    let outcome = crate::subxact::in_subtransaction(|| prune(retention));
    let full = match outcome {
        Ok(Ok(removed)) => removed >= BATCH,
        Ok(Err(err)) => {
            pgrx::warning!("eventic: could not remove finished workflows: {err}");
            false
        }
        Err(failure) => {
            pgrx::warning!(
                "eventic: could not remove finished workflows: {} (SQLSTATE {})",
                failure.message,
                failure.sqlstate
            );
            false
        }
    };
    let next = if full {
        Instant::now()
    } else {
        Instant::now() + INTERVAL
    };
    NEXT_PRUNE.with(|at| at.set(Some(next)));
}

/// Remove up to [`BATCH`] finished workflows that ended more than `retention` seconds ago.
/// Run by `select` on a kept plan (as the archive's prune): an idle worker's look that finds
/// nothing assigns no transaction id and writes no WAL (`client.update` would).
fn prune(retention: i32) -> Result<i64> {
    as_extension_owner(|| {
        Spi::connect(|client| {
            let types = [
                PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID),
                PgOid::BuiltIn(PgBuiltInOids::INT4OID),
                PgOid::BuiltIn(PgBuiltInOids::INT8OID),
            ];
            let stmt = crate::spi_plans::plan(client, PRUNE, &types, true)?;
            let removed = client.select(
                &*stmt,
                None,
                &[clock_timestamp().into(), retention.into(), BATCH.into()],
            )?;
            Ok(removed.len() as i64)
        })
    })
}
