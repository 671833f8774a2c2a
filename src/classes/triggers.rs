//! The trigger on `eventic.classes` that keeps every backend's class cache current.

use pgrx::prelude::*;
use pgrx::AllocatedByPostgres;

use crate::classes::cache;
use crate::errors::EventicError;

/// AFTER statement trigger on eventic.classes: every backend drops its cached validators.
#[pg_trigger]
fn classes_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    let relid = trigger
        .relid()
        .map_err(|e| EventicError::Internal(e.to_string()))?;
    cache::invalidate(relid);
    Ok(None)
}
