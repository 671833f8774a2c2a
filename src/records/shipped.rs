//! Writes shipped to the Citus node holding the record (README "Scale-out"; the state that
//! decides it is in `crate::citus`). One router query per write, routed by the record's id,
//! calls [`write_on_shard`] on that node inside the caller's (distributed) transaction; only
//! the outbox event travels back, and the caller publishes it here (queues live on the
//! coordinator).

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

use crate::citus::{distributed, OnShard};
use crate::errors::{EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;
use crate::records::fields::Patch;
use crate::records::store::{self, Change, FieldValues, BOOL, JSONB, TEXT, UUID};
use crate::spi_plans::plan;

/// The router query: the subquery pins it to the shard of `$1` (an aggregate, so it yields
/// one row whether the record exists or not), and Citus sends it whole to that node. The
/// UPDATE that matches nothing tells Citus the statement writes: a plain SELECT would run
/// outside the caller's transaction on the worker (committed there at once, kept when the
/// caller rolls back) and never take part in two-phase commit.
const FORWARD: &str = "WITH writes AS (UPDATE eventic.records SET version = version \
                                     WHERE id = $1 AND false RETURNING 1) \
     SELECT eventic._write_on_shard($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
       FROM (SELECT count(*) FROM eventic.records WHERE id = $1) shard";

/// One write as [`write_on_shard`] takes it.
struct Shipped<'a> {
    op: &'static str,
    class_type: Option<&'a str>,
    fields: DatumWithOid<'static>,
    change: Option<(Vec<String>, Patch, bool, bool)>,
    expected: Option<i32>,
}

fn ship(id: Uuid, write: Shipped<'_>) -> Result<Value> {
    let (removed, props, tombstone, revive) = write.change.unwrap_or_default();
    let args = [
        id.into(),
        write.op.into(),
        write.class_type.into(),
        write.fields,
        removed.into(),
        JsonB(Value::Object(props.set)).into(),
        props.removed.into(),
        tombstone.into(),
        write.expected.into(),
        revive.into(),
    ];
    let answer = Spi::connect_mut(|client| -> Result<Option<JsonB>> {
        let stmt = plan(
            client,
            FORWARD,
            &[
                UUID, TEXT, TEXT, JSONB, TEXT_ARRAY, JSONB, TEXT_ARRAY, BOOL, INT4, BOOL,
            ],
            true,
        )?;
        let mut rows = client.update(&*stmt, None, &args)?;
        Ok(match rows.next() {
            Some(row) => row.get::<JsonB>(1)?,
            None => None,
        })
    })?;
    let Some(JsonB(Value::Object(mut answer))) = answer else {
        return Err(EventicError::Internal(
            "eventic._write_on_shard returned nothing".into(),
        ));
    };
    if let Some(event) = answer.remove("event").filter(|e| !e.is_null()) {
        publish(event)?;
    }
    Ok(answer.remove("result").unwrap_or(Value::Null))
}

const TEXT_ARRAY: pgrx::pg_sys::PgOid =
    pgrx::pg_sys::PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::TEXTARRAYOID);
const INT4: pgrx::pg_sys::PgOid =
    pgrx::pg_sys::PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::INT4OID);

/// Enqueue, on this node, the outbox event a shard's write produced (its class's subscribers
/// as this node knows them).
fn publish(event: Value) -> Result<()> {
    let class_type = event
        .get("class_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let Some(class) = crate::classes::cache::lookup(class_type)? else {
        return Ok(());
    };
    if class.subscribers.is_empty() {
        return Ok(());
    }
    crate::outbox::stash(crate::outbox::Events {
        queue_name: class.queue_name.clone(),
        handlers: class.subscribers.clone(),
        event,
    });
    crate::outbox::publish()
}

fn as_version(result: Value) -> i32 {
    result.as_i64().unwrap_or_default() as i32
}

/// [`store::insert_first`] on the node holding `id`.
pub fn insert_first(id: Uuid, class_name: &str, data: Map<String, Value>) -> Result<()> {
    let fields = JsonB(Value::Object(data)).into();
    ship(
        id,
        Shipped {
            op: "create",
            class_type: Some(class_name),
            fields,
            change: None,
            expected: None,
        },
    )
    .map(drop)
}

/// [`store::append`] on the node holding `id`.
pub fn append(id: Uuid, change: Change, expected_version: Option<i32>) -> Result<i32> {
    let fields: DatumWithOid<'static> = match change.set {
        FieldValues::Raw(raw) => raw.into(),
        FieldValues::Built(map) => JsonB(Value::Object(map)).into(),
        FieldValues::One(name, value) => {
            let mut map = Map::new();
            map.insert(name, value.to_value()?);
            JsonB(Value::Object(map)).into()
        }
    };
    let write = Shipped {
        op: "append",
        class_type: None,
        fields,
        change: Some((
            change.removed,
            change.properties,
            change.tombstone,
            change.revive,
        )),
        expected: expected_version,
    };
    ship(id, write).map(as_version)
}

/// [`store::delete_all`] on the node holding `id`.
pub fn delete_all(id: Uuid) -> Result<i64> {
    let write = Shipped {
        op: "purge",
        class_type: None,
        fields: DatumWithOid::null::<JsonB>(),
        change: None,
        expected: None,
    };
    ship(id, write).map(|n| n.as_i64().unwrap_or_default())
}

/// Internal (the router query of [`ship`]): one write of record `id` on this node, the node
/// holding it. Returns `{"result": version or rows removed, "event": outbox event or null}`.
/// It is the same write as eventic.create / set_fields / purge (same checks, as the calling
/// role); only the enqueueing of its outbox event is left to the caller.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, sql = false)]
fn write_on_shard(
    id: Option<Uuid>,
    op: Option<&str>,
    class_type: Option<&str>,
    fields: Option<RawJsonb>,
    removed: Option<Vec<String>>,
    props: Option<JsonB>,
    props_removed: Option<Vec<String>>,
    tombstone: Option<bool>,
    expected: Option<i32>,
    revive: Option<bool>,
) -> JsonB {
    (|| -> Result<JsonB> {
        // only where a coordinator ships writes; anywhere else the public functions write
        // (and enqueue their outbox events) themselves
        if !distributed()? {
            return Err(EventicError::not_allowed(
                "eventic._write_on_shard is only for writes shipped between Citus nodes",
                "Use eventic.create, eventic.set_fields or eventic.purge.",
            ));
        }
        let id = id.ok_or_else(|| EventicError::Internal("id is NULL".into()))?;
        let _here = OnShard::begin();
        crate::outbox::discard();
        let object = |value: Option<Value>| match value {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        let result = match op.unwrap_or_default() {
            "create" => {
                let data = object(fields.map(RawJsonb::to_value).transpose()?);
                store::insert_first(id, class_type.unwrap_or_default(), data)?;
                Value::from(0)
            }
            "append" => {
                let change = Change {
                    set: fields.map_or(FieldValues::default(), FieldValues::Raw),
                    removed: removed.unwrap_or_default(),
                    properties: Patch {
                        set: object(props.map(|p| p.0)),
                        removed: props_removed.unwrap_or_default(),
                    },
                    tombstone: tombstone.unwrap_or(false),
                    revive: revive.unwrap_or(false),
                };
                Value::from(store::append(id, change, expected)?)
            }
            "purge" => Value::from(store::delete_all(id)?),
            other => return Err(EventicError::Internal(format!("unknown write {other:?}"))),
        };
        let event = crate::outbox::take_event().unwrap_or(Value::Null);
        Ok(JsonB(
            serde_json::json!({ "result": result, "event": event }),
        ))
    })()
    .or_report()
}
