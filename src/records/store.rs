//! The write path every change goes through: build the next version from the latest one and
//! append it. Also the reads everything else is built on.
//!
//! Normally a change is applied on the direct path (records::direct: the latest version read
//! from the primary key, the next inserted into heap and key under the record's short write
//! lock; [`append_direct`] builds the document with the same jsonb functions as the SQL
//! below). The SQL path remains for Citus and for an eventic.records eventic does not know:
//! writers of one record are serialised by a row lock (FOR NO KEY UPDATE) on its latest
//! version row: the lock lives in the row's header, so a transaction can write any number of
//! records. A writer locks the latest version in the scan that reads it and appends on top of
//! it; when another writer appended while it waited, that version number is taken (the insert
//! conflicts), so it locks the new latest version, seen with a fresh snapshot, and tries
//! again. Under READ COMMITTED each writer so builds on the version the previous writer
//! committed; versions stay contiguous and no update is lost. Under REPEATABLE READ a writer
//! whose snapshot is stale gets a serialization failure from the primary key (`ON CONFLICT` on
//! an invisible row), which is the standard 40001.

use std::cell::Cell;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{Map, Value};

use crate::errors::{EventicError, Result};
use crate::raw_jsonb::RawJsonb;
use crate::records::direct;
use crate::records::fields::{Patch, PROPERTIES};
use crate::spi_plans::plan;

pub fn new_uuid_v7() -> Uuid {
    Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}

thread_local! {
    /// True while eventic itself inserts or deletes version rows; the guard triggers on
    /// `eventic.records` refuse everything else.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

/// Marks eventic's own writes for the guard triggers for as long as it lives (also when an
/// ERROR unwinds through it).
pub struct OwnWrite {
    previous: bool,
}

impl OwnWrite {
    pub fn begin() -> Self {
        OwnWrite {
            previous: WRITING.with(|w| w.replace(true)),
        }
    }
}

impl Drop for OwnWrite {
    fn drop(&mut self) {
        WRITING.with(|w| w.set(self.previous));
    }
}

pub fn is_own_write() -> bool {
    WRITING.with(|w| w.get())
}

/// One version row as the functions need it.
pub struct VersionRow {
    pub version: i32,
    pub class_type: String,
    pub data: Map<String, Value>,
    pub deleted: bool,
    pub version_id: Option<Uuid>,
    pub created_at: Option<TimestampWithTimeZone>,
    pub created_by: Option<String>,
}

const SELECT_LATEST: &str =
    "SELECT version, class_type, data, deleted, version_id, created_at, created_by::text \
       FROM eventic.records WHERE id = $1 ORDER BY version DESC LIMIT 1";
const SELECT_VERSION: &str =
    "SELECT version, class_type, data, deleted, version_id, created_at, created_by::text \
       FROM eventic.records WHERE id = $1 AND version = $2";
const SELECT_AS_OF: &str =
    "SELECT version, class_type, data, deleted, version_id, created_at, created_by::text \
       FROM eventic.records WHERE id = $1 AND created_at <= $2 ORDER BY version DESC LIMIT 1";
const SELECT_FIRST: &str =
    "SELECT version, class_type, data, deleted, version_id, created_at, created_by::text \
       FROM eventic.records WHERE id = $1 ORDER BY version LIMIT 1";

fn row_from(tuple: pgrx::spi::SpiHeapTupleData<'_>) -> Result<VersionRow> {
    let data = match crate::raw_jsonb::column(&tuple, 3)? {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    Ok(VersionRow {
        version: tuple.get::<i32>(1)?.unwrap_or_default(),
        class_type: tuple.get::<String>(2)?.unwrap_or_default(),
        data,
        deleted: tuple.get::<bool>(4)?.unwrap_or_default(),
        version_id: tuple.get::<Uuid>(5)?,
        created_at: tuple.get::<TimestampWithTimeZone>(6)?,
        created_by: tuple.get::<String>(7)?,
    })
}

fn read_one(
    sql: &'static str,
    args: &[PgOid],
    values: Vec<pgrx::datum::DatumWithOid>,
) -> Result<Option<VersionRow>> {
    Spi::connect(|client| {
        let stmt = plan(client, sql, args, false)?;
        let mut table = client.select(&*stmt, Some(1), &values)?;
        match table.next() {
            Some(tuple) => Ok(Some(row_from(tuple)?)),
            None => Ok(None),
        }
    })
}

pub const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);
const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
const TSTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);
pub const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);
pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);
pub const BOOL: PgOid = PgOid::BuiltIn(PgBuiltInOids::BOOLOID);

pub fn latest(id: Uuid) -> Result<Option<VersionRow>> {
    read_one(SELECT_LATEST, &[UUID], vec![id.into()])
}

pub fn version(id: Uuid, version: i32) -> Result<Option<VersionRow>> {
    read_one(
        SELECT_VERSION,
        &[UUID, INT4],
        vec![id.into(), version.into()],
    )
}

pub fn as_of(id: Uuid, at: TimestampWithTimeZone) -> Result<Option<VersionRow>> {
    read_one(SELECT_AS_OF, &[UUID, TSTZ], vec![id.into(), at.into()])
}

pub fn first(id: Uuid) -> Result<Option<VersionRow>> {
    read_one(SELECT_FIRST, &[UUID], vec![id.into()])
}

const DUMP_LATEST: &str = "SELECT data || jsonb_build_object('id', id, 'version', version, \
            'class_type', class_type), deleted \
       FROM eventic.records WHERE id = $1 ORDER BY version DESC LIMIT 1";
const DUMP_VERSION: &str = "SELECT data || jsonb_build_object('id', id, 'version', version, \
            'class_type', class_type), deleted \
       FROM eventic.records WHERE id = $1 AND version = $2";

/// The model dump of the latest version (or `version`) built in SQL and handed back as a
/// datum: `hydrate` never converts the document to Rust and back. `None` when there is no
/// such row; the flag is `deleted`.
pub fn model_dump(id: Uuid, version: Option<i32>) -> Result<Option<(RawJsonb, bool)>> {
    Spi::connect(|client| {
        let mut table = match version {
            None => client.select(
                &*plan(client, DUMP_LATEST, &[UUID], false)?,
                Some(1),
                &[id.into()],
            )?,
            Some(v) => client.select(
                &*plan(client, DUMP_VERSION, &[UUID, INT4], false)?,
                Some(1),
                &[id.into(), v.into()],
            )?,
        };
        let Some(row) = table.next() else {
            return Ok(None);
        };
        let deleted = row.get::<bool>(2)?.unwrap_or(false);
        let dump = row
            .get::<RawJsonb>(1)?
            .ok_or_else(|| EventicError::Internal("model dump is null".into()))?;
        Ok(Some((dump.transfer_out_of_spi(), deleted)))
    })
}

/// The latest version, or the P0002 error that says why there is none to write to / read.
pub fn latest_live(id: Uuid) -> Result<VersionRow> {
    match latest(id)? {
        None => Err(EventicError::RecordNotFound { id: id.to_string() }),
        Some(row) if row.deleted => Err(EventicError::RecordDeleted {
            id: id.to_string(),
            version: row.version,
        }),
        Some(row) => Ok(row),
    }
}

/// A requested version, or P0002 naming the range that exists.
pub fn existing_version(id: Uuid, wanted: i32) -> Result<VersionRow> {
    if let Some(row) = version(id, wanted)? {
        return Ok(row);
    }
    match latest(id)? {
        None => Err(EventicError::RecordNotFound { id: id.to_string() }),
        Some(last) => Err(EventicError::VersionNotFound {
            id: id.to_string(),
            version: wanted,
            latest: last.version,
        }),
    }
}

const INSERT_FIRST: &str = "INSERT INTO eventic.records \
       (version_id, id, version, class_type, data, created_at, created_by, deleted) \
     VALUES ($1, $2, 0, $3, $4, clock_timestamp(), current_user, false) \
     ON CONFLICT (id, version) DO NOTHING RETURNING version";

/// Append version 0 of a new record.
pub fn insert_first(id: Uuid, class_name: &str, data: Map<String, Value>) -> Result<()> {
    if crate::citus::forwards()? {
        return crate::records::shipped::insert_first(id, class_name, data);
    }
    let _own = OwnWrite::begin();
    crate::outbox::discard();
    let inserted = Spi::connect_mut(|client| -> Result<bool> {
        let stmt = plan(client, INSERT_FIRST, &[UUID, UUID, TEXT, JSONB], true)?;
        let args = [
            new_uuid_v7().into(),
            id.into(),
            class_name.into(),
            JsonB(Value::Object(data)).into(),
        ];
        Ok(!client.update(&*stmt, None, &args)?.is_empty())
    })?;
    if inserted {
        crate::outbox::publish()
    } else {
        Err(EventicError::RecordExists { id: id.to_string() })
    }
}

/// Every write: one INSERT that locks the latest version row (FOR NO KEY UPDATE), reads it
/// in the same scan and appends the next version when there is something to append,
/// returning its number. No row back means "nothing appended": nothing to append, or (READ
/// COMMITTED) another writer appended while this one waited for the lock, so the locked row
/// is no longer the latest and its next version number is taken: `ON CONFLICT DO NOTHING`.
/// [`append`] tells the two apart. Under REPEATABLE READ or SERIALIZABLE that conflict is on
/// a row the snapshot cannot see, and Postgres raises the standard 40001.
/// Parameters: $1 id, $2 fields to set (object), $3 fields to remove, $4 properties to set,
/// $5 properties to remove, $6 tombstone, $7 new version_id, $8 expected version (NULL: any),
/// $9 revive a deleted record, $10/$11 one field name and value to set (instead of $2).
macro_rules! append_next_tail {
    () => {
        " CROSS JOIN LATERAL (
        SELECT CASE WHEN $6 THEN cur.data
                    WHEN $9 AND cur.deleted
                         THEN f.fields || jsonb_build_object('properties', '{}'::jsonb)
                    WHEN cardinality($5) = 0 AND $4 = '{}'::jsonb
                         THEN (cur.data - $3) || f.fields
                    ELSE jsonb_set((cur.data - $3) || f.fields, '{properties}',
                           (coalesce(((cur.data - $3) || f.fields) -> 'properties', '{}') - $5) || $4)
               END AS data) nxt
 WHERE (NOT cur.deleted OR $9)
   AND ($8::int4 IS NULL OR cur.version = $8)
   AND ($6 OR cur.deleted OR nxt.data <> cur.data)
    ON CONFLICT (id, version) DO NOTHING
RETURNING version"
    };
}
const APPEND_NEXT: &str = concat!(
    "INSERT INTO eventic.records
       (version_id, id, version, class_type, data, created_at, created_by, deleted)
SELECT $7, $1, cur.version + 1, cur.class_type, nxt.data, clock_timestamp(), current_user, $6
  FROM (SELECT version, class_type, data, deleted
          FROM eventic.records WHERE id = $1
         ORDER BY version DESC LIMIT 1 FOR NO KEY UPDATE) cur
 CROSS JOIN LATERAL (
        SELECT CASE WHEN $10::text IS NULL THEN $2
                    ELSE jsonb_build_object($10::text, $11::jsonb) END AS fields) f
",
    append_next_tail!()
);
/// The same on a Citus shard, in the form Citus runs as one statement on the shard (an
/// `INSERT ... SELECT` whose id comes from the row read and with no volatile function;
/// anything else it runs as a SELECT, a copy and an INSERT over a connection to the node
/// itself, 3x slower, and it then miscounts a skipped `ON CONFLICT` row, which SPI rejects).
/// Citus evaluates every function of constants, in untaken CASE branches too: the fields
/// come as one object ($2; $10/$11 are NULL in a shipped write). $12 is the clock time taken before the statement, kept after the locked version's.
const APPEND_NEXT_CITUS: &str = concat!(
    "INSERT INTO eventic.records
       (version_id, id, version, class_type, data, created_at, created_by, deleted)
SELECT $7, cur.id, cur.version + 1, cur.class_type, nxt.data,
       greatest($12, cur.created_at + interval '1 microsecond'), current_user, $6
  FROM (SELECT id, version, class_type, data, deleted, created_at
          FROM eventic.records WHERE id = $1
         ORDER BY version DESC LIMIT 1 FOR NO KEY UPDATE) cur
 CROSS JOIN LATERAL (SELECT $2 AS fields) f
",
    append_next_tail!()
);

/// The fields a write sets.
pub enum FieldValues {
    /// A JSON object, as given by the caller (no conversion).
    Raw(RawJsonb),
    /// An object built in Rust.
    Built(Map<String, Value>),
    /// One field (set_field): name and value, the value passed through untouched.
    One(String, RawJsonb),
}

impl Default for FieldValues {
    fn default() -> Self {
        FieldValues::Built(Map::new())
    }
}

/// What one write does to the latest version.
#[derive(Default)]
pub struct Change {
    pub set: FieldValues,
    pub removed: Vec<String>,
    pub properties: Patch,
    pub tombstone: bool,
    /// Turn a tombstoned record live again with `set` as its document (tracked tables, where
    /// a key can be deleted and inserted again).
    pub revive: bool,
}

const LOCK_LATEST: &str = "SELECT version FROM eventic.records WHERE id = $1 \
       ORDER BY version DESC LIMIT 1 FOR NO KEY UPDATE";

/// Lock the latest version row of `id` for this transaction (waiting for its writer, if
/// any) and return its version; `None` when the record has no version. After a wait the
/// locked row may no longer be the latest: the caller checks with a fresh snapshot.
fn lock_latest(id: Uuid) -> Result<Option<i32>> {
    Spi::connect_mut(|client| {
        let stmt = plan(client, LOCK_LATEST, &[UUID], true)?;
        let mut rows = client.update(&*stmt, None, &[id.into()])?;
        Ok(match rows.next() {
            Some(row) => row.get::<i32>(1)?,
            None => None,
        })
    })
}

/// Lock the latest version of `id`, however many writers append while this one waits;
/// returns its version (`None`: no record).
fn lock_current(id: Uuid) -> Result<Option<i32>> {
    loop {
        let locked = lock_latest(id)?;
        if latest(id)?.map(|row| row.version) == locked {
            return Ok(locked);
        }
    }
}

/// Apply `change` to the latest version of `id` and return the resulting version number.
/// A change that alters nothing writes nothing and returns the current version.
pub fn append(id: Uuid, change: Change, expected_version: Option<i32>) -> Result<i32> {
    if let Some(layout) = direct::layout()? {
        return append_direct(layout, id, change, expected_version);
    }
    if crate::citus::forwards()? {
        return crate::records::shipped::append(id, change, expected_version);
    }
    let _own = OwnWrite::begin();
    let revive = change.revive;
    // the statement's arguments, converted once for both attempts below
    let (set, one_name, one_value): (DatumWithOid, Option<String>, Option<RawJsonb>) = match change
        .set
    {
        FieldValues::Raw(raw) => (raw.into(), None, None),
        FieldValues::Built(map) => (JsonB(Value::Object(map)).into(), None, None),
        FieldValues::One(name, value) => (DatumWithOid::null::<JsonB>(), Some(name), Some(value)),
    };
    let args = [
        id.into(),
        set,
        change.removed.into(),
        JsonB(Value::Object(change.properties.set)).into(),
        change.properties.removed.into(),
        change.tombstone.into(),
        new_uuid_v7().into(),
        expected_version.into(),
        revive.into(),
        one_name.into(),
        one_value.into(),
        // $12, only in APPEND_NEXT_CITUS: the clock now (clock_timestamp() there would keep
        // Citus from running the statement on the shard as it is)
        if crate::citus::on_shard() {
            // SAFETY: reads the system clock.
            TimestampWithTimeZone::try_from(unsafe { pg_sys::GetCurrentTimestamp() }).ok().into()
        } else {
            DatumWithOid::null::<TimestampWithTimeZone>()
        },
    ];
    if let Some(version) = append_next(&args)? {
        return Ok(version);
    }
    // Nothing appended. A role that may read the record but not write it sees it, but the
    // row-level security of eventic.records kept its append from locking it.
    match latest(id)? {
        None => return Err(EventicError::RecordNotFound { id: id.to_string() }),
        Some(row) => crate::classes::access::require(&row.class_type, crate::classes::access::Access::Write)?,
    }
    // Maybe another writer appended while this one waited for the lock: lock the latest
    // version as a fresh snapshot sees it, and try again; with that lock held no locking
    // writer can append in between, so "nothing" is the record's state, unless a writer that
    // takes no lock (a tracked row's UPDATE, see classes::tracked_append) appended meanwhile.
    loop {
        let locked = lock_current(id)?;
        if let Some(version) = append_next(&args)? {
            return Ok(version);
        }
        let id_text = || id.to_string();
        return match latest(id)? {
            Some(row) if Some(row.version) != locked => continue,
            None => Err(EventicError::RecordNotFound { id: id_text() }),
            Some(row) if row.deleted && !revive => Err(EventicError::RecordDeleted {
                id: id_text(),
                version: row.version,
            }),
            Some(row) if expected_version.is_some_and(|e| e != row.version) => {
                Err(EventicError::StaleVersion {
                    id: id_text(),
                    expected: expected_version.unwrap_or_default(),
                    actual: row.version,
                })
            }
            // the change would not alter the document: nothing to write
            Some(row) => Ok(row.version),
        };
    }
}

/// The access a write of a record of `class_type` needs: reading it (else, as the row-level
/// security of the SQL path would have it, there is no such record) and writing it.
pub fn require_write(id: Uuid, class_type: &str) -> Result<()> {
    use crate::classes::access::{may, require, Access};
    if !may(class_type, Access::Read)? {
        return Err(EventicError::RecordNotFound { id: id.to_string() });
    }
    require(class_type, Access::Write)
}

/// The checks and the outbox of a version the direct path appended (what the insert trigger
/// of eventic.records does for the SQL path).
pub fn after_direct_append(id: Uuid, class_type: &str, version: i32, data: pg_sys::Datum, deleted: bool) -> Result<()> {
    crate::outbox::discard();
    if !crate::classes::asks_of_new_versions(class_type, deleted)? {
        return Ok(());
    }
    let id = id.to_string();
    let new = crate::classes::NewVersion { class_type, id: &id, version, deleted };
    crate::classes::on_new_version(new, || RawJsonb::from_raw(data).to_value())?;
    crate::outbox::publish()
}

/// [`append`] on the direct path (records::direct): the same document, built with the same
/// jsonb functions as [`APPEND_NEXT`]'s expression.
fn append_direct(layout: direct::Layout, id: Uuid, change: Change, expected_version: Option<i32>) -> Result<i32> {
    use crate::records::jsonb_fn::{
        concat, delete_keys, empty_object, field, merge_objects_telling, set_key, set_key_telling, Sameness,
    };
    let (revive, tombstone) = (change.revive, change.tombstone);
    let zero = pg_sys::Datum::from(0usize);
    let (fields, one) = match change.set {
        FieldValues::Raw(raw) => (raw.datum(), None),
        FieldValues::Built(map) => (JsonB(Value::Object(map)).into_datum().unwrap_or(zero), None),
        FieldValues::One(name, value) => (zero, Some((name, value.datum()))),
    };
    let removed = (!change.removed.is_empty()).then(|| change.removed.into_datum()).flatten();
    let properties = match change.properties {
        p if p.set.is_empty() && p.removed.is_empty() => None,
        p => Some((
            JsonB(Value::Object(p.set)).into_datum().unwrap_or(zero),
            p.removed.into_datum().unwrap_or(zero),
        )),
    };
    let appended = direct::append(layout, id, new_uuid_v7(), |head| {
        require_write(id, &head.class_type)?;
        if (head.deleted && !revive) || expected_version.is_some_and(|e| e != head.version) {
            return Ok(None);
        }
        let mut told = Sameness::Unknown;
        // SAFETY: every datum is a non-null jsonb (text[] for removed / properties removed).
        let data = unsafe {
            if tombstone {
                head.data
            } else if revive && head.deleted {
                let fields = match &one {
                    Some((name, value)) => set_key(empty_object(), name, *value),
                    None => fields,
                };
                set_key(fields, PROPERTIES, empty_object())
            } else {
                let mut data = match removed {
                    Some(removed) => delete_keys(head.data, removed),
                    None => head.data,
                };
                let sameness;
                (data, sameness) = match &one {
                    Some((name, value)) => set_key_telling(data, name, *value),
                    None => merge_objects_telling(data, fields, None),
                };
                // what the merge tells holds against the latest version when it was the only change
                if removed.is_none() && properties.is_none() {
                    told = sameness;
                }
                if let Some((set, gone)) = properties {
                    let bag = field(data, PROPERTIES).unwrap_or_else(empty_object);
                    data = set_key(data, PROPERTIES, concat(delete_keys(bag, gone), set));
                }
                data
            }
        };
        // SAFETY: two jsonb datums.
        if tombstone || head.deleted || unsafe { told.differs(data, head.data) } {
            Ok(Some(direct::Next { data, deleted: tombstone }))
        } else {
            Ok(None)
        }
    })?;
    let id_text = || id.to_string();
    match appended {
        direct::Appended::Version { version, class_type, data, deleted } => {
            after_direct_append(id, &class_type, version, data, deleted)?;
            Ok(version)
        }
        direct::Appended::NoRecord => Err(EventicError::RecordNotFound { id: id_text() }),
        direct::Appended::Nothing(head) if head.deleted && !revive => {
            Err(EventicError::RecordDeleted { id: id_text(), version: head.version })
        }
        direct::Appended::Nothing(head) if expected_version.is_some_and(|e| e != head.version) => {
            Err(EventicError::StaleVersion {
                id: id_text(),
                expected: expected_version.unwrap_or_default(),
                actual: head.version,
            })
        }
        // the change would not alter the document: nothing to write
        direct::Appended::Nothing(head) => Ok(head.version),
    }
}

/// Run [`APPEND_NEXT`] with `args`: the new version, or `None` when nothing was appended.
fn append_next(args: &[DatumWithOid]) -> Result<Option<i32>> {
    crate::outbox::discard();
    let appended = Spi::connect_mut(|client| -> Result<Option<i32>> {
        const TYPES: [PgOid; 12] = [
            UUID, JSONB, TEXT_ARRAY, JSONB, TEXT_ARRAY, BOOL, UUID, INT4, BOOL, TEXT, JSONB, TSTZ,
        ];
        let (sql, n) = match crate::citus::on_shard() {
            false => (APPEND_NEXT, 11),
            true => (APPEND_NEXT_CITUS, 12),
        };
        let stmt = plan(client, sql, &TYPES[..n], true)?;
        let mut table = client.update(&*stmt, None, &args[..n])?;
        Ok(match table.next() {
            Some(row) => row.get::<i32>(1)?,
            None => None,
        })
    })?;
    // the row went in (the trigger's events are this version's): its outbox events go out
    if appended.is_some() {
        crate::outbox::publish()?;
    }
    Ok(appended)
}

/// Append a tombstone version (eventic.delete); returns its version.
pub fn append_tombstone(id: Uuid) -> Result<i32> {
    append(
        id,
        Change {
            tombstone: true,
            ..Change::default()
        },
        None,
    )
}

const DELETE_ALL: &str = "DELETE FROM eventic.records WHERE id = $1";

/// Remove every version of `id`; the number removed.
pub fn delete_all(id: Uuid) -> Result<i64> {
    if crate::citus::forwards()? {
        return crate::records::shipped::delete_all(id);
    }
    // no writer may append a version this DELETE would not see: with the direct path, the
    // record's write lock once no version is in progress; else the latest version's row lock
    let _settled = match direct::layout()? {
        Some(layout) => Some(direct::settle(layout, id)?),
        None => {
            lock_current(id)?;
            None
        }
    };
    let _own = OwnWrite::begin();
    Spi::connect_mut(|client| -> Result<i64> {
        let stmt = plan(client, DELETE_ALL, &[UUID], true)?;
        Ok(client.update(&*stmt, None, &[id.into()])?.len() as i64)
    })
}

/// Run a statement that removes version rows (prune), marked as eventic's own write.
pub fn delete_where(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Result<i64> {
    let _own = OwnWrite::begin();
    Spi::connect_mut(|client| Ok(client.update(sql, None, args)?.len() as i64))
}

/// True when the current role owns `eventic.records` (or is a member of its owner) or is a
/// superuser: the roles that may purge or prune history.
pub fn may_remove_history() -> Result<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT pg_has_role(current_user, relowner, 'USAGE') \
           FROM pg_class WHERE oid = 'eventic.records'::regclass",
    )?
    .unwrap_or(false))
}
