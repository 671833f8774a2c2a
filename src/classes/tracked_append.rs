//! The fast path of tracked tables: an UPDATE of a tracked row that keeps its key appends its
//! record's next version from the row itself. On the direct path (records::direct) the row's
//! columns are merged over the latest version in one pass, under the record's write lock like
//! every other writer, at the end of the statement (see tracked_batch).
//!
//! Where the direct path does not apply (Citus, an eventic.records eventic does not know), one
//! statement appends without the row lock the generic SQL path takes on the latest version:
//! writers of one tracked row are already serialised by the row lock of their own UPDATE, and
//! the statement runs with a fresh snapshot (READ COMMITTED), so it sees the version the
//! previous writer committed. Any other writer of the same record (set_field, eventic.latest)
//! is caught by the primary key: the version number it would take is taken, `ON CONFLICT DO
//! NOTHING` appends nothing, and the caller falls back to the generic locked path, which
//! retries until it builds on the true latest version. Under REPEATABLE READ that conflict is
//! the standard 40001. eventic.purge of a tracked record fences the table's writers with a
//! table lock ([`fence_writers`]).

use pgrx::pg_sys::{self, PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::{AllocatedByPostgres, IntoDatum, Uuid};
use serde_json::Value;

use crate::classes::tracked::record_id;
use crate::records::jsonb_fn;
use crate::records::store::{new_uuid_v7, OwnWrite, UUID};

type Res<T> = crate::errors::Result<T>;

/// The next version of the record of a tracked row: the latest version with the row's columns
/// (all but the key) set over it, or, on a tombstone, the row's columns alone (a key deleted
/// and inserted again); nothing when the row's columns change nothing in the document.
/// $1 the new row, $2 the record id, $3 the new version_id, $4 the key column.
/// Everything schema-qualified: it runs as the role that changed the row.
const APPEND_ROW: &str = "INSERT INTO eventic.records
       (version_id, id, version, class_type, data, created_at, created_by, deleted)
SELECT $3, $2, cur.version OPERATOR(pg_catalog.+) 1, cur.class_type,
       CASE WHEN cur.deleted
            THEN d.doc OPERATOR(pg_catalog.||) '{\"properties\": {}}'::pg_catalog.jsonb
            ELSE cur.data OPERATOR(pg_catalog.||) d.doc END,
       pg_catalog.clock_timestamp(), CURRENT_USER, false
  FROM (SELECT r.version, r.class_type, r.data, r.deleted FROM eventic.records r
         WHERE r.id OPERATOR(pg_catalog.=) $2 ORDER BY r.version DESC LIMIT 1) cur
 CROSS JOIN LATERAL (
        SELECT pg_catalog.to_jsonb($1) OPERATOR(pg_catalog.-) $4 AS doc) d
 WHERE cur.deleted OR (cur.data OPERATOR(pg_catalog.||) d.doc) OPERATOR(pg_catalog.<>) cur.data
    ON CONFLICT (id, version) DO NOTHING
RETURNING version";

/// The key of a tracked row, for the key types that map one to one to the generic path's
/// `to_jsonb(row) -> key`: a uuid is the record id itself.
#[derive(PartialEq)]
enum Key {
    Id(Uuid),
    Json(Value),
}

/// The row's key, read straight from the tuple (attribute `index` of type `type_oid`: the
/// key column, looked up once for the new and the old row); `None` for a null key or another
/// key type (the generic path then handles the row).
fn key_at(
    row: &PgHeapTuple<'_, AllocatedByPostgres>,
    index: std::num::NonZeroUsize,
    type_oid: pg_sys::Oid,
) -> Res<Option<Key>> {
    let json = |v: Option<Value>| Ok(v.map(Key::Json));
    match type_oid {
        pg_sys::UUIDOID => Ok(row.get_by_index::<Uuid>(index)?.map(Key::Id)),
        pg_sys::INT2OID => json(row.get_by_index::<i16>(index)?.map(Value::from)),
        pg_sys::INT4OID => json(row.get_by_index::<i32>(index)?.map(Value::from)),
        pg_sys::INT8OID => json(row.get_by_index::<i64>(index)?.map(Value::from)),
        pg_sys::TEXTOID | pg_sys::VARCHAROID => {
            json(row.get_by_index::<String>(index)?.map(Value::String))
        }
        _ => Ok(None),
    }
}

/// Append the version for an UPDATE of a tracked row whose key did not change. False when
/// this path does not apply or appended nothing (a key of another type, a changed key, no
/// record yet, a no-op change, a concurrent writer of another kind): the caller then takes
/// the generic path, which tells those apart.
pub fn try_update(
    class_name: &str,
    id_column: &str,
    new: PgHeapTuple<'_, AllocatedByPostgres>,
    old: &PgHeapTuple<'_, AllocatedByPostgres>,
    rowtype: pg_sys::Oid,
    raw: (pg_sys::HeapTuple, pg_sys::TupleDesc),
) -> Res<bool> {
    let Some((index, type_oid)) = new.get_attribute_by_name(id_column).map(|(i, att)| (i, att.atttypid)) else {
        return Ok(false);
    };
    let (Some(new_key), Some(old_key)) = (key_at(&new, index, type_oid)?, key_at(old, index, type_oid)?) else {
        return Ok(false);
    };
    if new_key != old_key {
        return Ok(false);
    }
    let id = match new_key {
        Key::Id(id) => id,
        Key::Json(key) => record_id(class_name, &key)?,
    };
    if let Some(layout) = crate::records::direct::layout()? {
        // SAFETY: `raw` is `new` as the trigger has it; `row` a composite of type `rowtype`.
        let doc = match unsafe { jsonb_fn::plain_row_to_jsonb(raw.0, raw.1, id_column) } {
            Some(doc) => doc,
            None => unsafe { jsonb_fn::row_to_jsonb(new.into_datum().unwrap_or(pg_sys::Datum::from(0usize)), rowtype) },
        };
        return super::tracked_batch::append(layout, id, class_name, id_column, doc);
    }
    // the statement text names the row type, so each table gets its own kept plan
    let sql = format!("{APPEND_ROW} /* {} */", rowtype.to_u32());
    let _own = OwnWrite::begin();
    crate::outbox::discard();
    let appended = Spi::connect_mut(|client| -> Res<bool> {
        let stmt = crate::spi_plans::dynamic_plan(
            client,
            &sql,
            &[
                PgOid::from(rowtype),
                UUID,
                UUID,
                PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            ],
        )?;
        // SAFETY: `new` is a row of the table whose row type is `rowtype`.
        let row = unsafe { pgrx::datum::DatumWithOid::new(new, rowtype) };
        let args = [row, id.into(), new_uuid_v7().into(), id_column.into()];
        Ok(!client.update(&*stmt, None, &args)?.is_empty())
    })?;
    if appended {
        crate::outbox::publish()?;
    }
    Ok(appended)
}

/// eventic.purge of a record of a tracked table: wait for the table's writing transactions
/// and keep new ones out until the purge commits (they append without a row lock, so the
/// purge's lock on the latest version would not hold them off).
pub fn fence_writers(id: Uuid) -> Res<()> {
    let table = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT c.tracked_table::pg_catalog.oid FROM eventic.records r \
           JOIN eventic.classes c ON c.class_name OPERATOR(pg_catalog.=) r.class_type \
          WHERE r.id OPERATOR(pg_catalog.=) $1 AND r.version OPERATOR(pg_catalog.=) 0",
        &[id.into()],
    );
    let table = match table {
        Ok(table) => table,
        Err(pgrx::spi::SpiError::InvalidPosition) => None,
        Err(other) => return Err(other.into()),
    };
    if let Some(table) = table {
        // SAFETY: a lock on a relation oid; a table dropped meanwhile is simply locked by oid.
        unsafe {
            pg_sys::LockRelationOid(table, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE)
        };
    }
    Ok(())
}
