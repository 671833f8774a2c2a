//! Versioned records (DESIGN.md §1): the SQL functions of `eventic.records`.
//!
//! Every write goes through [`store::append`]; reads are single index probes on the
//! `(id, version)` primary key.

pub mod direct;
pub mod fields;
pub mod heads;
pub mod jsonb_fn;
pub mod shipped;
pub mod store;
pub mod triggers;

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

use crate::errors::{required, EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;
use crate::settings::strict_field_names;
use fields::{
    check_class_name, check_document, check_field, check_field_name, check_property_key, Patch,
    PROPERTIES,
};
use store::{Change, FieldValues, VersionRow};

/// The model dump `hydrate` returns: the document plus id, version and class_type.
fn model_dump(id: Uuid, row: VersionRow) -> JsonB {
    let mut doc = row.data;
    doc.insert("id".into(), Value::String(id.to_string()));
    doc.insert("version".into(), Value::from(row.version));
    doc.insert("class_type".into(), Value::String(row.class_type));
    JsonB(Value::Object(doc))
}

pub fn create_record(class_name: &str, data: Value, id: Option<Uuid>) -> Result<Uuid> {
    check_class_name(class_name)?;
    let mut doc = check_document(&data, "data", strict_field_names())?.clone();
    doc.entry(PROPERTIES)
        .or_insert_with(|| Value::Object(Map::new()));
    crate::classes::ensure_registered(class_name)?;
    crate::classes::access::require(class_name, crate::classes::access::Access::Write)?;
    let id = id.unwrap_or_else(store::new_uuid_v7);
    store::insert_first(id, class_name, doc)?;
    Ok(id)
}

/// Create a record of class `class_name` (version 0) and return its id.
#[pg_extern(volatile, parallel_unsafe)]
fn create(
    class_name: Option<&str>,
    data: default!(Option<RawJsonb>, "'{}'"),
    id: default!(Option<Uuid>, "NULL"),
) -> Uuid {
    (|| {
        create_record(
            required(class_name, "class_name")?,
            required(data, "data")?.to_value()?,
            id,
        )
    })()
    .or_report()
}

/// Append a version with one field changed; returns the new version (or the current one
/// when the field already has that value).
#[pg_extern(volatile, parallel_unsafe)]
fn set_field(
    id: Option<Uuid>,
    field: Option<&str>,
    value: Option<RawJsonb>,
    expected_version: default!(Option<i32>, "NULL"),
) -> i32 {
    (|| {
        let (id, field) = (required(id, "id")?, required(field, "field")?);
        let value = required(value, "value")?;
        check_field_name(field, strict_field_names())?;
        value.check_holdable_at(1)?; // a field of the document
        if field == PROPERTIES {
            check_field(field, &value.to_value()?, strict_field_names())?;
        }
        let change = Change {
            set: FieldValues::One(field.to_string(), value),
            ..Change::default()
        };
        store::append(id, change, expected_version)
    })()
    .or_report()
}

/// Append one version with every field of `patch` set.
#[pg_extern(volatile, parallel_unsafe)]
fn set_fields(
    id: Option<Uuid>,
    patch: Option<RawJsonb>,
    expected_version: default!(Option<i32>, "NULL"),
) -> i32 {
    (|| {
        let (id, patch) = (required(id, "id")?, required(patch, "patch")?);
        check_document(&patch.to_value()?, "patch", strict_field_names())?;
        let change = Change {
            set: FieldValues::Raw(patch),
            ..Change::default()
        };
        store::append(id, change, expected_version)
    })()
    .or_report()
}

/// Apply the difference between two documents (what an `UPDATE ... SET data = ...` of the
/// latest row meant) to the latest version: fields set, added or removed.
pub fn apply_document_change(id: Uuid, old: &Value, new: &Value) -> Result<i32> {
    let old = old.as_object().cloned().unwrap_or_default();
    let new_map = check_document(new, "data", strict_field_names())?;
    let mut patch = Patch::between(&old, new_map);
    // a document written without its property bag (an ORM that maps only fields) keeps the bag
    patch.removed.retain(|name| name != PROPERTIES);
    store::append(
        id,
        Change {
            set: FieldValues::Built(patch.set),
            removed: patch.removed,
            ..Change::default()
        },
        None,
    )
}

/// Append one version with the fields that differ between `old_data` and `new_data` (set,
/// added, removed), built on the latest version (so concurrent writers of other fields are
/// not overwritten): what `UPDATE eventic.latest` and UPDATE of a class view mean.
#[pg_extern(volatile, parallel_unsafe)]
fn apply_change(id: Option<Uuid>, old_data: Option<RawJsonb>, new_data: Option<RawJsonb>) -> i32 {
    (|| {
        let id = required(id, "id")?;
        let old = old_data.map(RawJsonb::to_value).transpose()?.unwrap_or(Value::Null);
        apply_document_change(id, &old, &required(new_data, "data")?.to_value()?)
    })()
    .or_report()
}

/// The latest version (or `version`) as a model dump.
#[pg_extern(stable, parallel_safe)]
fn hydrate(id: Option<Uuid>, version: default!(Option<i32>, "NULL")) -> RawJsonb {
    (|| {
        let id = required(id, "id")?;
        match store::model_dump(id, version)? {
            Some((dump, false)) => Ok(dump),
            Some((_, true)) => Err(EventicError::RecordDeleted {
                id: id.to_string(),
                version: match version {
                    Some(v) => v,
                    None => store::latest(id)?
                        .map(|row| row.version)
                        .unwrap_or_default(),
                },
            }),
            // no row: say whether the record or only that version is missing
            None => Err(match version {
                None => EventicError::RecordNotFound { id: id.to_string() },
                Some(v) => store::existing_version(id, v).err().unwrap_or_else(|| {
                    EventicError::Internal(format!("version {v} of record {id} appeared meanwhile"))
                }),
            }),
        }
    })()
    .or_report()
}

/// The version that was current at `at`.
#[pg_extern(stable, parallel_safe)]
fn hydrate_as_of(id: Option<Uuid>, at: Option<TimestampWithTimeZone>) -> JsonB {
    (|| {
        let (id, at) = (required(id, "id")?, required(at, "at")?);
        match store::as_of(id, at)? {
            Some(row) if row.deleted => Err(EventicError::RecordDeleted {
                id: id.to_string(),
                version: row.version,
            }),
            Some(row) => Ok(model_dump(id, row)),
            None => match store::first(id)? {
                None => Err(EventicError::RecordNotFound { id: id.to_string() }),
                Some(first) => Err(EventicError::NotYetCreated {
                    id: id.to_string(),
                    at: format!("{at}"),
                    created_at: first.created_at.map(|t| format!("{t}")).unwrap_or_default(),
                }),
            },
        }
    })()
    .or_report()
}

/// Every version of the record, oldest first, with the fields each one changed.
#[allow(clippy::type_complexity)] // pgrx's named output columns
#[pg_extern(stable, parallel_safe)]
fn history(
    id: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(version, i32),
        name!(version_id, Uuid),
        name!(data, JsonB),
        name!(changed_fields, Vec<String>),
        name!(created_at, TimestampWithTimeZone),
        name!(created_by, String),
        name!(deleted, bool),
    ),
> {
    let rows = (|| -> Result<_> {
        let id = required(id, "id")?;
        let rows = Spi::connect(|client| -> Result<Vec<_>> {
            let table = client.select(
                "SELECT version, version_id, data, created_at, created_by::text, deleted \
                   FROM eventic.records WHERE id = $1 ORDER BY version",
                None,
                &[id.into()],
            )?;
            let mut out = Vec::new();
            let mut previous: Option<Map<String, Value>> = None;
            for row in table {
                let data = match crate::raw_jsonb::column(&row, 3)? {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                let deleted = row.get::<bool>(6)?.unwrap_or_default();
                let changed = if deleted {
                    Vec::new()
                } else {
                    fields::changed_fields(previous.as_ref(), &data)
                };
                out.push((
                    row.get::<i32>(1)?.unwrap_or_default(),
                    row.get::<Uuid>(2)?
                        .unwrap_or_else(|| Uuid::from_bytes([0; 16])),
                    JsonB(Value::Object(data.clone())),
                    changed,
                    row.get::<TimestampWithTimeZone>(4)?.ok_or_else(|| {
                        EventicError::Internal("version without created_at".into())
                    })?,
                    row.get::<String>(5)?.unwrap_or_default(),
                    deleted,
                ));
                previous = Some(data);
            }
            Ok(out)
        })?;
        if rows.is_empty() {
            return Err(EventicError::RecordNotFound { id: id.to_string() });
        }
        Ok(rows)
    })()
    .or_report();
    TableIterator::new(rows)
}

/// `{"field": {"old": …, "new": …}}` for each field that differs between two versions.
#[pg_extern(stable, parallel_safe)]
fn diff(id: Option<Uuid>, from_version: Option<i32>, to_version: Option<i32>) -> JsonB {
    (|| {
        let id = required(id, "id")?;
        let from_version = required(from_version, "from_version")?;
        let to_version = required(to_version, "to_version")?;
        let from = store::existing_version(id, from_version)?;
        let to = store::existing_version(id, to_version)?;
        Ok(JsonB(fields::diff(&from.data, &to.data)))
    })()
    .or_report()
}

/// Set `key` in the record's property bag (a new version).
#[pg_extern(volatile, parallel_unsafe)]
fn add_property(
    id: Option<Uuid>,
    key: Option<&str>,
    value: default!(Option<RawJsonb>, "'true'"),
) -> i32 {
    (|| {
        let (id, key) = (required(id, "id")?, required(key, "key")?);
        let value = required(value, "value")?;
        check_property_key(key)?;
        let mut set = Map::new();
        value.check_holdable_at(2)?; // document → properties → key
        set.insert(key.to_string(), value.to_value()?);
        let change = Change {
            properties: Patch {
                set,
                removed: Vec::new(),
            },
            ..Change::default()
        };
        store::append(id, change, None)
    })()
    .or_report()
}

/// Remove `key` from the record's property bag (a new version; none if it was absent).
#[pg_extern(volatile, parallel_unsafe)]
fn remove_property(id: Option<Uuid>, key: Option<&str>) -> i32 {
    (|| {
        let (id, key) = (required(id, "id")?, required(key, "key")?);
        check_property_key(key)?;
        let patch = Patch {
            set: Map::new(),
            removed: vec![key.to_string()],
        };
        store::append(
            id,
            Change {
                properties: patch,
                ..Change::default()
            },
            None,
        )
    })()
    .or_report()
}

/// The property bag of the latest version.
#[pg_extern(stable, parallel_safe)]
fn list_properties(id: Option<Uuid>) -> JsonB {
    (|| {
        let row = store::latest_live(required(id, "id")?)?;
        Ok(JsonB(
            row.data
                .get(PROPERTIES)
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new())),
        ))
    })()
    .or_report()
}

/// Append a tombstone; returns its version. History stays readable.
#[pg_extern(volatile, parallel_unsafe)]
fn delete(id: Option<Uuid>) -> i32 {
    (|| store::append_tombstone(required(id, "id")?))().or_report()
}

fn require_history_owner(what: &str) -> Result<()> {
    if store::may_remove_history()? {
        Ok(())
    } else {
        Err(EventicError::not_allowed(
            format!("permission denied to {what}: history is append-only"),
            "Only the owner of eventic.records or a superuser may remove history; \
             eventic.delete(id) appends a tombstone instead.",
        ))
    }
}

/// Remove every version of a record. Owner or superuser only.
#[pg_extern(volatile, parallel_unsafe)]
fn purge(id: Option<Uuid>) -> i64 {
    (|| {
        let id = required(id, "id")?;
        require_history_owner("purge")?;
        crate::classes::tracked_append::fence_writers(id)?;
        match store::delete_all(id)? {
            0 => Err(EventicError::RecordNotFound { id: id.to_string() }),
            n => Ok(n),
        }
    })()
    .or_report()
}

/// Remove old versions of a class's records, keeping version 0, the latest version, the newest
/// `keep_last` versions and those younger than `older_than`. Owner or superuser only.
#[pg_extern(volatile, parallel_unsafe)]
fn prune(
    class_name: Option<&str>,
    keep_last: default!(Option<i32>, "NULL"),
    older_than: default!(Option<Interval>, "NULL"),
) -> i64 {
    (|| {
        let class_name = required(class_name, "class_name")?;
        check_class_name(class_name)?;
        if keep_last.is_none() && older_than.is_none() {
            return Err(EventicError::invalid(
                "prune needs keep_last or older_than",
                "Example: eventic.prune('Story', keep_last => 10) or older_than => '30 days'.",
            ));
        }
        if keep_last.is_some_and(|k| k < 1) {
            return Err(EventicError::invalid(
                format!(
                    "keep_last must be at least 1, not {}",
                    keep_last.unwrap_or_default()
                ),
                "The latest version is always kept.",
            ));
        }
        // months counted as 30 days, as Postgres compares intervals
        let total_micros =
            |i: Interval| (i.months() as i64 * 30 + i.days() as i64) * 86_400_000_000 + i.micros();
        if older_than.is_some_and(|i| total_micros(i) < 0) {
            return Err(EventicError::invalid(
                "older_than must not be negative",
                "Pass a positive interval such as '30 days'.",
            ));
        }
        if crate::classes::cache::lookup(class_name)?.is_none() {
            return Err(crate::classes::unknown_class(class_name));
        }
        require_history_owner("prune")?;
        store::delete_where(
            "DELETE FROM eventic.records r
              USING (SELECT id, version,
                            row_number() OVER (PARTITION BY id ORDER BY version DESC) AS newest
                       FROM eventic.records WHERE class_type = $1) k
              WHERE r.id = k.id AND r.version = k.version
                AND r.version > 0 AND k.newest > 1
                AND ($2::int4 IS NULL OR k.newest > $2)
                AND ($3::interval IS NULL OR r.created_at < now() - $3)",
            &[class_name.into(), keep_last.into(), older_than.into()],
        )
    })()
    .or_report()
}
