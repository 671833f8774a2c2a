//! Tracked tables: `eventic.track(table)` makes an ordinary table versioned. Each row is a
//! record of class `schema.table`; an AFTER trigger appends a version for every INSERT,
//! UPDATE and DELETE, so `history`, `hydrate(id, version)`, `hydrate_as_of` and `diff` work.

use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::{pg_sys, AllocatedByPostgres, PgRelation, Uuid};
use serde_json::Value;
use crate::raw_jsonb::column;

use crate::classes;
use crate::errors::{required, EventicError, OrReport};
use crate::records::fields::{check_field_name, PROPERTIES};
use crate::records::store::{self, Change, FieldValues};
use crate::settings::strict_field_names;

/// (`Result` is taken by the expansion of `#[pg_trigger]` below.)
type Res<T> = crate::errors::Result<T>;

/// Namespace of the UUIDv5 ids of rows whose key is not a uuid.
const TRACKED_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6576_656e_7469_4300_8000_7472_6163_6b00);

/// The record id of a tracked row: its key when that is a uuid, else a UUIDv5 of
/// `class/key` (so `eventic.tracked_id(table, key)` finds it).
pub fn record_id(class_name: &str, key: &Value) -> Res<Uuid> {
    let text = match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Null => {
            return Err(EventicError::invalid(
                format!("the id column of tracked table {class_name} is null"),
                "Give every row of a tracked table a non-null id.",
            ))
        }
        other => other.to_string(),
    };
    let id = uuid::Uuid::parse_str(&text).unwrap_or_else(|_| {
        uuid::Uuid::new_v5(
            &TRACKED_NAMESPACE,
            format!("{class_name}/{text}").as_bytes(),
        )
    });
    Ok(Uuid::from_bytes(*id.as_bytes()))
}

fn class_of(table: &PgRelation) -> String {
    format!("{}.{}", table.namespace(), table.name())
}

/// Make `table` versioned. Returns its class name (`schema.table`).
#[pg_extern(volatile, parallel_unsafe)]
fn track(table: Option<PgRelation>, id_column: default!(Option<&str>, "'id'")) -> String {
    (|| {
        let table = required(table, "table")?;
        let id_column = required(id_column, "id_column")?;
        let class_name = class_of(&table);
        let is_table = Spi::get_one_with_args::<bool>(
            "SELECT relkind IN ('r', 'p') FROM pg_class WHERE oid = $1",
            &[table.oid().into()],
        )?
        .unwrap_or(false);
        if !is_table {
            return Err(EventicError::invalid(
                format!("{class_name} is not a table"),
                "eventic.track works on ordinary (and partitioned) tables.",
            ));
        }
        check_columns(&table, &class_name, id_column)?;
        // the table's owner tracks it (as only it may create triggers on it), and never
        // adopts a class that another role registered under the table's name
        let owner = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
            &[table.oid().into()],
        )?
        .unwrap_or(pg_sys::InvalidOid);
        if !crate::roles::may_manage(owner) {
            return Err(EventicError::not_allowed(
                format!("permission denied to track table {class_name}"),
                "Only the table's owner (or a member of that role) or a superuser may track it.",
            ));
        }
        match classes::cache::lookup(&class_name)? {
            Some(class) if !crate::roles::may_manage(class.owner) => {
                return Err(EventicError::not_allowed(
                    format!("class {class_name} is registered by another role"),
                    "eventic.track never adopts a class another role owns; that role (or a \
                     superuser) must eventic.drop_class it first.",
                ))
            }
            Some(_) => classes::mark_tracked(&class_name, table.oid())?,
            None => classes::register(&class_name, None, None, Some(table.oid()))?,
        }
        let quoted_table = format!(
            "{}.{}",
            pgrx::spi::quote_identifier(table.namespace()),
            pgrx::spi::quote_identifier(table.name())
        );
        let already = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = 'eventic_track')",
            &[table.oid().into()],
        )?
        .unwrap_or(false);
        if !already {
            Spi::run(&format!(
                "CREATE TRIGGER eventic_track AFTER INSERT OR UPDATE OR DELETE ON {quoted_table} \
                   FOR EACH ROW EXECUTE FUNCTION eventic.tracked_write({}, {})",
                classes::schema::quote_literal(id_column),
                classes::schema::quote_literal(&class_name)
            ))?;
        }
        // rows that exist already get their version 0 now (or a version if they changed while
        // the table was not tracked)
        let rows: Vec<(Option<Value>, Option<Value>)> = Spi::connect(|client| -> Res<_> {
            let rows = client.select(
                &format!(
                    "SELECT pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.->) $1, \
                            pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) $1 FROM {quoted_table} t"
                ),
                None,
                &[id_column.into()],
            )?;
            let mut out = Vec::new();
            for row in rows {
                out.push((column(&row, 1)?, column(&row, 2)?));
            }
            Ok(out)
        })?;
        for (key, doc) in rows {
            track_change(&class_name, None, key, doc)?;
        }
        Ok(class_name)
    })()
    .or_report()
}

/// The id column must exist and be unique on its own; the other columns must be field names.
fn check_columns(table: &PgRelation, class_name: &str, id_column: &str) -> Res<()> {
    let attnum = Spi::get_one_with_args::<i16>(
        "SELECT (SELECT attnum FROM pg_attribute \
                  WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
        &[table.oid().into(), id_column.into()],
    )?;
    let Some(attnum) = attnum else {
        return Err(EventicError::invalid(
            format!("table {class_name} has no column {id_column:?}"),
            "Pass the table's key column: eventic.track('orders', id_column => 'order_id').",
        ));
    };
    let unique = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1 AND indisunique \
           AND indnkeyatts = 1 AND indkey[0] = $2 AND indpred IS NULL)",
        &[table.oid().into(), attnum.into()],
    )?
    .unwrap_or(false);
    if !unique {
        return Err(EventicError::invalid(
            format!("column {id_column:?} of table {class_name} is not unique"),
            "A tracked table needs a primary key or unique index on its id column alone.",
        ));
    }
    let columns: Vec<String> = Spi::connect(|client| -> Res<Vec<String>> {
        let rows = client.select(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 \
               AND NOT attisdropped AND attname <> $2 ORDER BY attnum",
            None,
            &[table.oid().into(), id_column.into()],
        )?;
        let mut names = Vec::new();
        for row in rows {
            names.extend(row.get::<String>(1)?);
        }
        Ok(names)
    })?;
    let bad: Vec<&String> = columns
        .iter()
        .filter(|c| c.as_str() == PROPERTIES || check_field_name(c, strict_field_names()).is_err())
        .collect();
    if !bad.is_empty() {
        return Err(EventicError::invalid(
            format!("columns of table {class_name} cannot be record fields: {bad:?}"),
            "Column names must be identifiers and not id, version, class_type or properties; \
             rename them or track a view of the table.",
        ));
    }
    Ok(())
}

/// Stop versioning `table`; its history stays.
#[pg_extern(volatile, parallel_unsafe)]
fn untrack(table: Option<PgRelation>) {
    (|| {
        let table = required(table, "table")?;
        Spi::run(&format!(
            "DROP TRIGGER IF EXISTS eventic_track ON {}.{}",
            pgrx::spi::quote_identifier(table.namespace()),
            pgrx::spi::quote_identifier(table.name())
        ))?;
        Ok(())
    })()
    .or_report()
}

/// The record id of the row of tracked `table` whose key is `key`.
#[pg_extern(stable, parallel_safe)]
fn tracked_id(table: Option<PgRelation>, key: Option<&str>) -> Uuid {
    (|| {
        let table = required(table, "table")?;
        record_id(
            &class_of(&table),
            &Value::String(required(key, "key")?.to_string()),
        )
    })()
    .or_report()
}

/// Make the record of a tracked row hold `doc`: create it, or append a version (reviving a
/// tombstoned key that was inserted again).
pub(super) fn upsert(class_name: &str, id: Uuid, doc: Value) -> Res<()> {
    let change = Change {
        set: FieldValues::Built(doc.as_object().cloned().unwrap_or_default()),
        revive: true,
        ..Change::default()
    };
    match store::append(id, change, None) {
        Err(EventicError::RecordNotFound { .. }) => {
            crate::records::create_record(class_name, doc, Some(id)).map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

fn delete_if_live(id: Uuid) -> Res<()> {
    match store::append_tombstone(id) {
        Err(EventicError::RecordNotFound { .. } | EventicError::RecordDeleted { .. }) | Ok(_) => {
            Ok(())
        }
        Err(other) => Err(other),
    }
}

/// One row change of a tracked table, as versions of its record(s).
fn track_change(
    class_name: &str,
    old_key: Option<Value>,
    new_key: Option<Value>,
    new_doc: Option<Value>,
) -> Res<()> {
    let old_id = old_key.map(|k| record_id(class_name, &k)).transpose()?;
    let new_id = new_key.map(|k| record_id(class_name, &k)).transpose()?;
    match (old_id, new_id, new_doc) {
        (Some(old), None, _) => delete_if_live(old),
        (old, Some(new), Some(doc)) => {
            if let Some(old) = old.filter(|old| *old != new) {
                delete_if_live(old)?; // the key changed: the old record ends
            }
            upsert(class_name, new, doc)
        }
        _ => Ok(()),
    }
}

/// A row change of a tracked table as JSON, in one statement planned per table (`rowtype`
/// is its row type): the new row's key and other columns (an object), and the old row's key.
fn row_change_as_json(
    new: Option<PgHeapTuple<'_, AllocatedByPostgres>>,
    old: Option<PgHeapTuple<'_, AllocatedByPostgres>>,
    rowtype: pg_sys::Oid,
    id_column: &str,
) -> Res<(Option<Value>, Option<Value>, Option<Value>)> {
    let sql = format!(
        "SELECT pg_catalog.to_jsonb($1) OPERATOR(pg_catalog.->) $3, \
                pg_catalog.to_jsonb($1) OPERATOR(pg_catalog.-) $3, \
                pg_catalog.to_jsonb($2) OPERATOR(pg_catalog.->) $3 /* {} */",
        rowtype.to_u32()
    );
    // SAFETY: the tuples are rows of the table whose row type is `rowtype`.
    let row_arg = |row: Option<PgHeapTuple<'_, AllocatedByPostgres>>| match row {
        Some(row) => unsafe { pgrx::datum::DatumWithOid::new(row, rowtype) },
        None => pgrx::datum::DatumWithOid::null_oid(rowtype),
    };
    Spi::connect_mut(|client| {
        let stmt = crate::spi_plans::dynamic_plan(
            client,
            &sql,
            &[
                PgOid::from(rowtype),
                PgOid::from(rowtype),
                PgOid::BuiltIn(PgBuiltInOids::TEXTOID),
            ],
        )?;
        let args = [row_arg(new), row_arg(old), id_column.into()];
        let mut rows = client.update(&*stmt, Some(1), &args)?;
        match rows.next() {
            Some(found) => Ok((
                column(&found, 1)?,
                column(&found, 2)?,
                column(&found, 3)?,
            )),
            None => Ok((None, None, None)),
        }
    })
}

/// The trigger's two arguments (the id column, the class), borrowed from the trigger: read
/// for every row, copied for none.
fn trigger_args<'t>(trigger: &'t PgTrigger<'_>) -> Res<[&'t str; 2]> {
    let malformed = || EventicError::Internal("eventic.tracked_write needs 2 arguments".into());
    // SAFETY: the trigger Postgres fired; its arguments are NUL-terminated strings that live
    // as long as its trigger data.
    unsafe {
        let tg = trigger.trigger_data().tg_trigger;
        if tg.is_null() || (*tg).tgnargs != 2 {
            return Err(malformed());
        }
        let arg = |i: usize| std::ffi::CStr::from_ptr(*(*tg).tgargs.add(i)).to_str().map_err(|_| malformed());
        Ok([arg(0)?, arg(1)?])
    }
}

/// AFTER trigger of tracked tables (TG_ARGV: the id column, the class): each row change
/// appends versions, as the role that changed the row (the table's privileges have let it).
/// A trigger function, so no role can call it to write a tracked table's history otherwise.
#[pg_trigger]
fn tracked_write<'a>(
    trigger: &'a PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    (|| -> Res<()> {
        let [id_column, class_name] = trigger_args(trigger)?;
        let relation = trigger
            .relation()
            .map_err(|e| EventicError::Internal(e.to_string()))?;
        // SAFETY: the relation the trigger fired on is open, its pg_class row loaded.
        let rowtype = unsafe { (*relation.rd_rel).reltype };
        let event = trigger.event();
        // an UPDATE that keeps the row's key: one statement, no lock (see tracked_append)
        if event.fired_by_update() {
            if let (Some(new), Some(old)) = (trigger.new(), trigger.old()) {
                let data = trigger.trigger_data();
                // SAFETY: the UPDATE's new row and the relation it is a row of.
                let raw = (data.tg_newtuple, unsafe { (*data.tg_relation).rd_att });
                if super::tracked_append::try_update(class_name, id_column, new, &old, rowtype, raw)? {
                    return Ok(());
                }
            }
        }
        let old = trigger
            .old()
            .filter(|_| event.fired_by_update() || event.fired_by_delete());
        let new = trigger.new().filter(|_| !event.fired_by_delete());
        let (new_key, new_doc, old_key) = row_change_as_json(new, old, rowtype, id_column)?;
        track_change(class_name, old_key, new_key, new_doc)
    })()
    .or_report();
    Ok(None)
}
