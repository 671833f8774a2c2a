//! Triggers on `eventic.records` that keep history append-only for every client:
//! `UPDATE` becomes one appended version, direct `INSERT`/`DELETE`/`TRUNCATE` are refused.

use pgrx::prelude::*;
use pgrx::{pg_sys, AllocatedByPostgres, Uuid};

use crate::errors::{EventicError, OrReport};
use crate::raw_jsonb::RawJsonb;
use crate::records::store;

/// BEFORE INSERT, per row: only eventic's own functions append versions (and superusers, so
/// that `pg_restore` can load a dump). Eventic's own versions are checked against their
/// class's JSON Schema and enqueue their outbox events here, so every write path (functions,
/// views, UPDATE, tracked tables) is covered in one place.
#[pg_trigger]
fn records_guard_insert<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    if store::is_own_write() {
        let Some(new) = trigger.new() else {
            return Ok(None);
        };
        let class_type: String = new.get_by_name("class_type")?.unwrap_or_default();
        let id = new
            .get_by_name::<Uuid>("id")?
            .map(|id| id.to_string())
            .unwrap_or_default();
        let version = crate::classes::NewVersion {
            class_type: &class_type,
            id: &id,
            version: new.get_by_name::<i32>("version")?.unwrap_or_default(),
            deleted: new.get_by_name::<bool>("deleted")?.unwrap_or(false),
        };
        crate::classes::on_new_version(version, || {
            Ok(new
                .get_by_name::<RawJsonb>("data")?
                .map(RawJsonb::to_value)
                .transpose()?
                .unwrap_or_default())
        })
        .or_report();
        return Ok(Some(new));
    }
    // SAFETY: superuser() only reads the current user's cached catalog entry.
    if unsafe { pg_sys::superuser() } {
        // a version inserted by hand: the address writers keep of the record's latest row
        // (records::heads) no longer names it
        if let Some(id) = trigger.new().map(|new| new.get_by_name::<Uuid>("id")).transpose()?.flatten() {
            crate::records::heads::forget_address(&id);
        }
        return Ok(trigger.new());
    }
    EventicError::not_allowed(
        "direct INSERT into eventic.records is not allowed",
        "Create records with eventic.create(class_name, data) or INSERT INTO eventic.latest \
         (class_type, data); change them with eventic.set_fields or UPDATE.",
    )
    .report()
}

/// BEFORE DELETE / TRUNCATE, per statement: history is removed only by eventic.purge/prune.
#[pg_trigger]
fn records_guard_delete<'a>(
    _trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    if store::is_own_write() {
        return Ok(None);
    }
    EventicError::not_allowed(
        "version rows of eventic.records cannot be deleted",
        "Use eventic.delete(id) to append a tombstone; the owner can remove history with \
         eventic.purge(id) or eventic.prune(class_name, ...).",
    )
    .report()
}

/// The latest version of `id` in the snapshot of the statement being run (SPI read-only mode
/// uses the active snapshot instead of taking a new one).
fn latest_version_seen_by_statement(id: Uuid) -> crate::errors::Result<Option<i32>> {
    Spi::connect(|_client| {
        let sql = c"SELECT max(version) FROM eventic.records WHERE id = $1";
        let mut argtypes = [pg_sys::UUIDOID];
        let mut values = [id.into_datum().unwrap_or(pg_sys::Datum::from(0usize))];
        let nulls = [b' ' as std::os::raw::c_char];
        // SAFETY: one parameter, its type, value and null flag given; connected to SPI.
        let rc = unsafe {
            pg_sys::SPI_execute_with_args(
                sql.as_ptr(),
                1,
                argtypes.as_mut_ptr(),
                values.as_mut_ptr(),
                nulls.as_ptr(),
                true,
                1,
            )
        };
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            return Err(EventicError::Internal(format!(
                "SPI_execute_with_args returned {rc}"
            )));
        }
        // SAFETY: SPI_OK_SELECT leaves a tuple table with one row (an aggregate) and one column.
        unsafe {
            let table = pg_sys::SPI_tuptable;
            if table.is_null() || (*table).numvals == 0 {
                return Ok(None);
            }
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(*(*table).vals, (*table).tupdesc, 1, &mut isnull);
            Ok(i32::from_datum(datum, isnull))
        }
    })
}

/// BEFORE UPDATE, per row: `UPDATE eventic.records SET data = ... WHERE id = ...` appends one
/// version and changes no row. Only the row that is the latest version in the statement's
/// snapshot acts; its change (old data → new data) is applied to the true latest version, so
/// a version committed concurrently is built on, not overwritten.
#[pg_trigger]
fn records_redirect_update<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    (|| -> crate::errors::Result<()> {
        let (Some(old), Some(new)) = (trigger.old(), trigger.new()) else {
            return Ok(());
        };
        let id: Option<Uuid> = old.get_by_name("id")?;
        let Some(id) = id else { return Ok(()) };
        let immutable_changed = old.get_by_name::<Uuid>("id")? != new.get_by_name::<Uuid>("id")?
            || old.get_by_name::<i32>("version")? != new.get_by_name::<i32>("version")?
            || old.get_by_name::<Uuid>("version_id")? != new.get_by_name::<Uuid>("version_id")?
            || old.get_by_name::<String>("class_type")?
                != new.get_by_name::<String>("class_type")?
            || old.get_by_name::<TimestampWithTimeZone>("created_at")?
                != new.get_by_name::<TimestampWithTimeZone>("created_at")?;
        if immutable_changed {
            return Err(EventicError::not_allowed(
                format!("version rows of record {id} are immutable"),
                "UPDATE may change only data (or set deleted = true); that appends a new version.",
            ));
        }
        let old_version: Option<i32> = old.get_by_name("version")?;
        if old_version != latest_version_seen_by_statement(id)? {
            return Ok(()); // an older version: the statement's latest row carries the change
        }
        let was_deleted = old.get_by_name::<bool>("deleted")?.unwrap_or(false);
        let now_deleted = new.get_by_name::<bool>("deleted")?.unwrap_or(false);
        if now_deleted && !was_deleted {
            store::append_tombstone(id)?;
            return Ok(());
        }
        if was_deleted && !now_deleted {
            return Err(EventicError::not_allowed(
                format!("record {id} was deleted; a tombstone cannot be undone"),
                "Create a new record with eventic.create(...).",
            ));
        }
        let old_data: Option<RawJsonb> = old.get_by_name("data")?;
        let new_data: Option<RawJsonb> = new.get_by_name("data")?;
        let new_data = new_data.ok_or_else(|| EventicError::null_argument("data"))?.to_value()?;
        let old_data = old_data.map(RawJsonb::to_value).transpose()?.unwrap_or_default();
        if old_data != new_data {
            crate::records::apply_document_change(id, &old_data, &new_data)?;
        }
        Ok(())
    })()
    .or_report();
    Ok(None)
}
