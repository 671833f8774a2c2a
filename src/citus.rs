//! Citus (README "Scale-out"): with `eventic.records` distributed by `id`, every version row
//! is written by the node that holds the record's shard.
//!
//! The triggers of `eventic.records` run on the shards, in the backend that executes the
//! shard's statement. A write planned on the coordinator would reach them in a worker's
//! backend, where nothing marks it as eventic's own (the guard refuses it). So the write path
//! ships the whole write there instead: one router query per write, routed by the record's
//! id, calls [`write_on_shard`] on the node holding it, inside the caller's (distributed)
//! transaction. There the usual path runs unchanged: lock, append, the insert trigger with
//! its JSON Schema check (classes are a reference table, on every node). Only the outbox event
//! travels back: queues live on the coordinator, where the caller publishes it.
//!
//! On a single node none of this runs: [`forwards`] is three thread-local reads (the state is
//! looked up once per backend, and again after an invalidation of eventic.records).

use std::cell::Cell;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

use crate::catalog_cache::distribution_generation;
use crate::errors::{EventicError, OrReport, Result};
use crate::raw_jsonb::RawJsonb;
use crate::records::fields::Patch;
use crate::records::store::{self, Change, FieldValues, BOOL, JSONB, TEXT, UUID};
use crate::spi_plans::plan;

thread_local! {
    /// (distribution generation it was computed under + 1, records distributed); 0: unknown.
    static DISTRIBUTED: Cell<(u64, bool)> = const { Cell::new((0, false)) };
    /// True inside [`write_on_shard`]: the write happens here, and its outbox event is handed
    /// back to the caller instead of being enqueued on this node.
    static ON_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// True when writes must be shipped to the node holding the record.
#[inline]
pub fn forwards() -> Result<bool> {
    if ON_SHARD.with(Cell::get) {
        return Ok(false);
    }
    distributed()
}

/// Is eventic.records distributed (cached until its cache entry is invalidated)?
fn distributed() -> Result<bool> {
    let generation = distribution_generation() + 1;
    let (seen, distributed) = DISTRIBUTED.with(Cell::get);
    if seen == generation {
        return Ok(distributed);
    }
    let distributed = records_distributed()?;
    DISTRIBUTED.with(|d| d.set((generation, distributed)));
    Ok(distributed)
}

/// True inside [`write_on_shard`].
pub fn on_shard() -> bool {
    ON_SHARD.with(Cell::get)
}

/// Run `f` (a read of the classes, a reference table) where Citus could see a nested
/// distributed execution: in a policy or trigger of a shard run for another node. The read is
/// of the node's own copy of the table. Without Citus loaded, just `f()`.
pub fn allowing_nested<T>(f: impl FnOnce() -> T) -> T {
    const NAME: &std::ffi::CStr = c"citus.allow_nested_distributed_execution";
    // SAFETY: a GUC lookup by name (missing_ok) that returns NULL when Citus is not loaded.
    if unsafe { pg_sys::GetConfigOption(NAME.as_ptr(), true, false) }.is_null() {
        return f();
    }
    // SAFETY: a GUC nest level of our own, popped below (or by the abort of the transaction
    // or subtransaction an error unwinds to).
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            NAME.as_ptr(),
            c"on".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let out = f();
    // SAFETY: pops the level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}

/// Is `eventic.records` a Citus distributed table in this database? (Asked again after any
/// invalidation of the table's cache entry, which `create_distributed_table` sends.)
fn records_distributed() -> Result<bool> {
    let records = Spi::get_one::<pg_sys::Oid>("SELECT 'eventic.records'::regclass::oid")?
        .unwrap_or(pg_sys::InvalidOid);
    crate::catalog_cache::watch_records(records);
    let citus = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
    )?
    .unwrap_or(false);
    if !citus {
        return Ok(false);
    }
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition \
          WHERE logicalrelid = 'eventic.records'::regclass AND partmethod = 'h')",
    )?
    .unwrap_or(false))
}

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

/// Marks the write of [`write_on_shard`] for as long as it lives (also when an ERROR unwinds).
struct OnShard {
    previous: bool,
}

impl OnShard {
    fn begin() -> Self {
        OnShard {
            previous: ON_SHARD.with(|s| s.replace(true)),
        }
    }
}

impl Drop for OnShard {
    fn drop(&mut self) {
        ON_SHARD.with(|s| s.set(self.previous));
    }
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
