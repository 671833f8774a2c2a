//! The direct write path (issue 13): append a version by reading the record's latest version
//! from the primary key and inserting the next one into the heap and its index, without an
//! SQL statement (no planner, no executor start), a row lock or the insert trigger. Same rows,
//! same guarantees as the SQL path (`store::append`'s statement), which remains for Citus
//! and for an `eventic.records` whose shape eventic does not know (an index or trigger added).
//!
//! How writers of one record stay in order without locking its latest row (that lock wrote
//! the row and a WAL record on every write): each writer holds a short lock on the record
//! (a heavyweight lock in eventic's own advisory key space, taken and given back around the
//! read and the insert, so a transaction writing 100,000 records keeps none of them) while it
//! reads the latest version with a *dirty* snapshot (which also sees versions that other
//! transactions inserted and have not yet committed) and appends on top of it. A version
//! still in progress in another transaction is waited for (its transaction ends), then the
//! writer reads again: under READ COMMITTED each writer so builds on the version the previous
//! writer committed, versions stay contiguous and no update is lost. Under REPEATABLE READ a
//! latest version the transaction's snapshot cannot see is the standard 40001; SERIALIZABLE
//! transactions also read the record with their snapshot, which registers the read with
//! predicate locking. Where each record's latest version lies is kept in shared memory by
//! every writer (records::heads): the next writer, of any connection, reads it there by its
//! address, without a search.
//!
//! What the insert trigger did for eventic's own versions (the class's JSON Schema, the
//! outbox) the caller does after the insert; row-level security is the caller's access check.

use std::cell::Cell;

use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use pgrx::{IntoDatum, Uuid};

use crate::errors::Result;
use crate::locks::RecordLock;
use crate::records::heads;

/// Attribute numbers of eventic.records (checked against the catalog, see [`layout`]).
const ATT_ID: i32 = 2;
const ATT_VERSION: i32 = 3;
const ATT_CLASS_TYPE: i32 = 4;
const ATT_DATA: i32 = 5;
const ATT_DELETED: i32 = 8;
const NATTS: usize = 8;
const COLUMNS: &str = "version_id,id,version,class_type,data,created_at,created_by,deleted";

#[derive(Clone, Copy)]
pub struct Layout {
    records: pg_sys::Oid,
    pkey: pg_sys::Oid,
}

/// What makes the writes a connection keeps (see [`write_first`]).
type MakeKept = fn() -> Result<()>;

thread_local! {
    /// Writes this connection keeps to make before any other (classes::tracked_batch).
    static WRITE_FIRST: Cell<Option<MakeKept>> = const { Cell::new(None) };
    /// The layout for a distribution generation (bumped by every relcache invalidation of
    /// eventic.records: an index, a trigger or a column added, the extension dropped).
    static LAYOUT: Cell<(u64, Option<Layout>)> = const { Cell::new((0, None)) };
}

/// The tables the direct path writes, or `None` when it must not be used: a Citus node (the
/// SQL statements are what Citus routes) or an eventic.records
/// that is not exactly eventic's own (other columns, indexes or triggers than it creates).
pub fn layout() -> Result<Option<Layout>> {
    if crate::citus::on_shard() || crate::citus::forwards()? {
        return Ok(None);
    }
    let generation = crate::catalog_cache::distribution_generation() + 1;
    let (seen, layout) = LAYOUT.with(Cell::get);
    if seen == generation {
        return Ok(layout);
    }
    let layout = look_up_layout()?;
    LAYOUT.with(|l| l.set((generation, layout)));
    Ok(layout)
}

fn look_up_layout() -> Result<Option<Layout>> {
    let row = Spi::get_three::<pg_sys::Oid, pg_sys::Oid, bool>(&format!(
        "SELECT c.oid,
                (SELECT i.indexrelid FROM pg_catalog.pg_index i
                   JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid
                  WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND ic.relname OPERATOR(pg_catalog.=) 'records_pkey'
                    AND i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 2
                    AND i.indkey[0] OPERATOR(pg_catalog.=) 2 AND i.indkey[1] OPERATOR(pg_catalog.=) 3),
                (SELECT pg_catalog.count(*) FROM pg_catalog.pg_index i
                  WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid) OPERATOR(pg_catalog.=) 2
            AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_trigger t
                  WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid) OPERATOR(pg_catalog.=) 4
            AND (SELECT pg_catalog.string_agg(a.attname::pg_catalog.text, ',' ORDER BY a.attnum)
                   FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0
                    AND NOT a.attisdropped) OPERATOR(pg_catalog.=) '{COLUMNS}'
            -- no dropped column either: a version is NATTS values, at the ATT_* numbers
            AND c.relnatts OPERATOR(pg_catalog.=) {NATTS}
           FROM pg_catalog.pg_class c
          WHERE c.oid OPERATOR(pg_catalog.=) 'eventic.records'::pg_catalog.regclass"
    ))?;
    Ok(match row {
        (Some(records), Some(pkey), Some(true)) => Some(Layout { records, pkey }),
        _ => None,
    })
}

/// eventic.records and its primary key, open for appends (one, or a batch of them: see
/// [`append_in`]); closed on drop, their locks kept to the end of the transaction (as the
/// executor keeps them).
pub struct Open {
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
}

impl Open {
    /// # Safety
    /// `layout` names eventic.records and its primary key (see [`layout`]).
    unsafe fn new(layout: Layout) -> Self {
        // SAFETY: the caller's relations exist; RowExclusiveLock as an INSERT takes.
        unsafe {
            let index = pg_sys::index_open(layout.pkey, pg_sys::RowExclusiveLock as i32);
            Open {
                rel: pg_sys::table_open(layout.records, pg_sys::RowExclusiveLock as i32),
                index,
                index_info: pg_sys::BuildIndexInfo(index),
            }
        }
    }
}

/// Open the tables of `layout` for a batch of appends.
pub fn open(layout: Layout) -> Open {
    // SAFETY: a layout is only made by layout(), which checked it.
    unsafe { Open::new(layout) }
}

impl Drop for Open {
    fn drop(&mut self) {
        // an ERROR unwinding through here: the abort closes them
        if !std::thread::panicking() {
            // SAFETY: the relations this guard opened.
            unsafe {
                pg_sys::index_close(self.index, pg_sys::NoLock as i32);
                pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
            }
        }
    }
}


/// The latest version of a record as the next one is built from it.
pub struct Head {
    pub version: i32,
    pub class_type: String,
    /// the class_type text datum (copied into the version appended)
    class_datum: Datum,
    /// the document, detoasted, in the current memory context
    pub data: Datum,
    pub deleted: bool,
}

enum Found {
    Head(Head),
    /// the latest version is being inserted or removed by this transaction id
    Busy(pg_sys::TransactionId),
    Missing,
}

/// Read the latest version of `id`: at its address when its slot holds one (see
/// records::heads), else from the primary key with a dirty snapshot (see the module comment),
/// from the version this backend last saw on.
unsafe fn read_head(rel: pg_sys::Relation, index: pg_sys::Relation, id: &Uuid, id_datum: Datum) -> Found {
    // SAFETY: the caller's relations.
    unsafe {
        let serializable = pg_sys::XactIsoLevel >= pg_sys::XACT_SERIALIZABLE as i32;
        if serializable {
            register_read(rel, index, id_datum);
        } else if let Some(found) =
            heads::latest_address(id, heads::place_of(rel)).and_then(|tid| fetch_head(rel, id, tid))
        {
            return found;
        }
        // a missing version >= the one seen means it is stale
        let from = heads::version_seen(id);
        let found = match scan_head(rel, index, id_datum, from) {
            Found::Missing if from.is_some() => scan_head(rel, index, id_datum, None),
            found => found,
        };
        if let Found::Head(head) = &found {
            heads::remember_version(id, head.version);
        }
        found
    }
}

/// The head at `tid`, if that row is a version of `id` and no other transaction is inserting
/// or removing it (the caller knows it is the latest: see records::heads).
unsafe fn fetch_head(rel: pg_sys::Relation, id: &Uuid, tid: pg_sys::ItemPointerData) -> Option<Found> {
    unsafe {
        let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let mut tuple: pg_sys::HeapTupleData = std::mem::zeroed();
        tuple.t_self = tid;
        let mut buffer: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
        if !pg_sys::heap_fetch(rel, &mut dirty, &mut tuple, &mut buffer, false) {
            return None;
        }
        // read from the pinned page straight into arrays (no slot made and dropped per write)
        let row = Row::of(&mut tuple, (*rel).rd_att);
        let same = row.get::<Uuid>(ATT_ID).is_some_and(|found| found == *id);
        // a row in flux (being inserted or removed) is left to the search: it tells what to
        // wait for
        let in_flux = dirty.xmin != pg_sys::InvalidTransactionId || dirty.xmax != pg_sys::InvalidTransactionId;
        let found = if !same || in_flux {
            None
        } else {
            check_visible_to_transaction(tuple.t_data);
            Some(Found::Head(row.head()))
        };
        pg_sys::ReleaseBuffer(buffer);
        found
    }
}

/// SERIALIZABLE: read the record's versions with the transaction's snapshot too, which is
/// what registers the read with predicate locking (a dirty read does not).
unsafe fn register_read(rel: pg_sys::Relation, index: pg_sys::Relation, id: Datum) {
    unsafe {
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(&mut key, 1, pg_sys::BTEqualStrategyNumber as u16, pg_sys::Oid::from(pg_sys::F_UUID_EQ), id);
        let scan = pg_sys::index_beginscan(rel, index, pg_sys::GetTransactionSnapshot(), 1, 0);
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::BackwardScanDirection, slot);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
    }
}

/// The highest version of `id` (at or above `from`) a dirty snapshot sees.
unsafe fn scan_head(rel: pg_sys::Relation, index: pg_sys::Relation, id: Datum, from: Option<i32>) -> Found {
    unsafe {
        let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
        dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
        let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut keys[0],
            1,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_UUID_EQ),
            id,
        );
        if let Some(from) = from {
            pg_sys::ScanKeyInit(
                &mut keys[1],
                2,
                pg_sys::BTGreaterEqualStrategyNumber as u16,
                pg_sys::Oid::from(pg_sys::F_INT4GE),
                Datum::from(from),
            );
        }
        let nkeys = if from.is_some() { 2 } else { 1 };
        let scan = pg_sys::index_beginscan(rel, index, &mut dirty, nkeys, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
        let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
        let found = if !pg_sys::index_getnext_slot(
            scan,
            pg_sys::ScanDirection::BackwardScanDirection,
            slot,
        ) {
            Found::Missing
        } else if dirty.xmin != pg_sys::InvalidTransactionId {
            Found::Busy(dirty.xmin)
        } else if dirty.xmax != pg_sys::InvalidTransactionId {
            Found::Busy(dirty.xmax)
        } else {
            let mut should_free = false;
            let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, &mut should_free);
            check_visible_to_transaction((*tuple).t_data);
            Found::Head(Row::of(tuple, (*rel).rd_att).head())
        };
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_endscan(scan);
        found
    }
}

/// Under REPEATABLE READ, a latest version committed after the transaction's snapshot is a
/// serialization failure (what the SQL path's ON CONFLICT raised).
unsafe fn check_visible_to_transaction(header: pg_sys::HeapTupleHeader) {
    unsafe {
        if pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32 {
            return;
        }
        let xmin = (*header).t_choice.t_heap.t_xmin;
        let frozen = (*header).t_infomask & pg_sys::HEAP_XMIN_FROZEN as u16
            == pg_sys::HEAP_XMIN_FROZEN as u16;
        if frozen
            || pg_sys::TransactionIdIsCurrentTransactionId(xmin)
            || !pg_sys::XidInMVCCSnapshot(xmin, pg_sys::GetTransactionSnapshot())
        {
            return;
        }
    }
    // the message Postgres gives for the same conflict (ON CONFLICT on an invisible row)
    pgrx::ereport!(
        ERROR,
        pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        "could not serialize access due to concurrent update"
    );
}

/// A version's columns, read from its tuple in one pass (eventic.records has exactly
/// [`NATTS`] attributes: see [`layout`]).
struct Row {
    values: [Datum; NATTS],
    nulls: [bool; NATTS],
}

impl Row {
    /// # Safety
    /// `tuple` is a row of eventic.records (`desc`), its buffer pinned while the row is used.
    unsafe fn of(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> Row {
        let mut row = Row { values: [Datum::from(0usize); NATTS], nulls: [true; NATTS] };
        // SAFETY: heap_deform_tuple fills natts entries, which layout() checked is NATTS.
        unsafe {
            if (*desc).natts as usize != NATTS {
                pgrx::error!("eventic.records has {} attributes, not {NATTS}", (*desc).natts);
            }
            pg_sys::heap_deform_tuple(tuple, desc, row.values.as_mut_ptr(), row.nulls.as_mut_ptr());
        }
        row
    }

    fn get<T: FromDatum>(&self, att: i32) -> Option<T> {
        let at = att as usize - 1;
        // SAFETY: `T` is the attribute's type in eventic.records (the ATT_* constants).
        unsafe { T::from_datum(self.values[at], self.nulls[at]) }
    }

    /// The head this version is: its class and document copied out of the page.
    unsafe fn head(&self) -> Head {
        // SAFETY: class_type and data are varlenas, never null in eventic.records.
        unsafe {
            let copy = |att: i32| {
                Datum::from(pg_sys::pg_detoast_datum_copy(self.values[att as usize - 1].cast_mut_ptr()))
            };
            let class_datum = copy(ATT_CLASS_TYPE);
            Head {
                version: self.get::<i32>(ATT_VERSION).unwrap_or_default(),
                class_type: String::from_datum(class_datum, false).unwrap_or_default(),
                class_datum,
                data: copy(ATT_DATA),
                deleted: self.get::<bool>(ATT_DELETED).unwrap_or(false),
            }
        }
    }
}

/// What to append on top of the head: the document and whether it is a tombstone.
pub struct Next {
    pub data: Datum,
    pub deleted: bool,
}

/// The result of [`append`].
pub enum Appended {
    /// the version appended, and the head it was built on
    Version { version: i32, class_type: String, data: Datum, deleted: bool },
    /// `build` appended nothing; the head as it was
    Nothing(Head),
    /// the record has no version (or only versions being removed)
    NoRecord,
}

/// Have `make` called before the next append or settle (it makes the writes it keeps, so that
/// no later write overtakes them), until [`write_first_done`].
pub fn write_first(make: MakeKept) {
    WRITE_FIRST.with(|w| w.set(Some(make)));
}

pub fn write_first_done() {
    WRITE_FIRST.with(|w| w.set(None));
}

fn make_writes_kept() -> Result<()> {
    match WRITE_FIRST.with(Cell::get) {
        Some(make) => make(),
        None => Ok(()),
    }
}

/// Append the next version of `id` with what `build` makes of the latest version (`None`:
/// append nothing). `build` runs with the record's write lock held: it must not wait for
/// other transactions (no SQL).
pub fn append(
    layout: Layout,
    id: Uuid,
    version_id: Uuid,
    build: impl FnMut(&Head) -> Result<Option<Next>>,
) -> Result<Appended> {
    append_in(&open(layout), id, version_id, build)
}

/// [`append`] with the tables already open (a batch of appends opens them once).
pub fn append_in(
    open: &Open,
    id: Uuid,
    version_id: Uuid,
    mut build: impl FnMut(&Head) -> Result<Option<Next>>,
) -> Result<Appended> {
    make_writes_kept()?;
    let id_datum = id.into_datum().unwrap_or(Datum::from(0usize));
    loop {
        // SAFETY: the layout's relations (checked by layout()), open while read and written.
        let outcome = unsafe {
            let (lock, found) = lock_and_read(open, &id, id_datum);
            let outcome = match found {
                Found::Busy(xid) => Ok(Err(xid)),
                Found::Missing => Ok(Ok(Appended::NoRecord)),
                Found::Head(head) => match build(&head) {
                    Err(err) => Err(err),
                    Ok(None) => Ok(Ok(Appended::Nothing(head))),
                    Ok(Some(next)) => {
                        let version = head.version + 1;
                        let tid = insert(open, id_datum, version, &head, &next, version_id);
                        heads::publish(&id, heads::place_of(open.rel), tid);
                        heads::remember_version(&id, version);
                        Ok(Ok(Appended::Version {
                            version,
                            class_type: head.class_type,
                            data: next.data,
                            deleted: next.deleted,
                        }))
                    }
                },
            };
            drop(lock);
            outcome?
        };
        match outcome {
            Ok(appended) => return Ok(appended),
            Err(xid) => wait_for(xid),
        }
    }
}

/// Take the record's write lock and read its latest version (the start of every append and
/// settle).
///
/// # Safety
/// `open` holds eventic.records and its primary key (see [`layout`]).
unsafe fn lock_and_read(open: &Open, id: &Uuid, id_datum: Datum) -> (RecordLock, Found) {
    // SAFETY: the caller's open relations.
    unsafe {
        let lock = RecordLock::take(id);
        heads::check_generation(); // after the open, which has seen the table's invalidations
        let found = read_head(open.rel, open.index, id, id_datum);
        (lock, found)
    }
}

/// Wait for transaction `xid` to end (a version it inserts or removes is in the way).
fn wait_for(xid: pg_sys::TransactionId) {
    // SAFETY: waits on the transaction's lock, released at its commit or abort.
    unsafe {
        pg_sys::XactLockTableWait(xid, std::ptr::null_mut(), std::ptr::null_mut(), pg_sys::XLTW_Oper::XLTW_None)
    };
}

/// The record's write lock, taken when no version of it is being inserted or removed by
/// another transaction (waiting for those to end): what a statement that removes versions
/// (eventic.purge) holds, so that no writer appends a version it would not see.
pub fn settle(layout: Layout, id: Uuid) -> Result<RecordLock> {
    make_writes_kept()?;
    let id_datum = id.into_datum().unwrap_or(Datum::from(0usize));
    loop {
        // SAFETY: as in append.
        let busy = unsafe {
            let (lock, found) = lock_and_read(&open(layout), &id, id_datum);
            match found {
                Found::Busy(xid) => {
                    drop(lock);
                    xid
                }
                Found::Head(_) | Found::Missing => {
                    // its rows may be removed: no one may read them by their address
                    heads::forget_address(&id);
                    return Ok(lock);
                }
            }
        };
        wait_for(busy);
    }
}

thread_local! {
    /// The name of the role last seen writing (created_by), by its oid.
    static USER_NAME: Cell<(pg_sys::Oid, u64, [u8; pg_sys::NAMEDATALEN as usize])> =
        const { Cell::new((pg_sys::InvalidOid, 0, [0; pg_sys::NAMEDATALEN as usize])) };
}

/// `current_user` as a `name`, cached by the role's oid until a role changes (renamed).
fn current_user_name() -> pg_sys::NameData {
    // SAFETY: GetUserId reads a backend global.
    let role = unsafe { pg_sys::GetUserId() };
    let generation = crate::catalog_cache::acl_generation();
    let (seen, seen_generation, mut bytes) = USER_NAME.with(Cell::get);
    if seen != role || seen_generation != generation {
        // SAFETY: the current role exists (noerr = false raises if not); namestrcpy copies at
        // most NAMEDATALEN - 1 bytes and terminates.
        unsafe {
            let mut name: pg_sys::NameData = std::mem::zeroed();
            pg_sys::namestrcpy(&mut name, pg_sys::GetUserNameFromId(role, false));
            for (b, c) in bytes.iter_mut().zip(name.data.iter()) {
                *b = *c as u8;
            }
        }
        USER_NAME.with(|u| u.set((role, generation, bytes)));
    }
    // SAFETY: NameData is a plain byte array.
    let mut name: pg_sys::NameData = unsafe { std::mem::zeroed() };
    for (c, b) in name.data.iter_mut().zip(bytes.iter()) {
        *c = *b as std::ffi::c_char;
    }
    name
}

/// Insert version `version` into the heap and the primary key (the partial index of
/// version-0 rows takes no later version).
unsafe fn insert(
    open: &Open,
    id: Datum,
    version: i32,
    head: &Head,
    next: &Next,
    version_id: Uuid,
) -> pg_sys::ItemPointerData {
    unsafe {
        let (rel, index) = (open.rel, open.index);
        let mut created_by = current_user_name();
        let mut values = [
            version_id.into_datum().unwrap_or(Datum::from(0usize)),
            id,
            Datum::from(version),
            head.class_datum,
            next.data,
            Datum::from(pg_sys::GetCurrentTimestamp()),
            Datum::from(&mut created_by as *mut pg_sys::NameData),
            Datum::from(next.deleted),
        ];
        let mut nulls = [false; 8];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::heap_insert(rel, tuple, pg_sys::GetCurrentCommandId(true), 0, std::ptr::null_mut());
        let mut key = [id, Datum::from(version)];
        let mut key_nulls = [false; 2];
        pg_sys::index_insert(
            index,
            key.as_mut_ptr(),
            key_nulls.as_mut_ptr(),
            &mut (*tuple).t_self,
            rel,
            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES,
            false,
            open.index_info,
        );
        (*tuple).t_self
    }
}
