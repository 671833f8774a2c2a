//! Versions of tracked rows appended at the end of their statement, in record-id order
//! (issue 13).
//!
//! A statement that updates many rows of a tracked table fires the AFTER row trigger once per
//! row, and each appends at a random place of eventic.records' primary key (record ids are
//! random): most of a 30,000-row UPDATE went to finding pages no cache held. So while the
//! AFTER triggers of a statement that changed more than one row run (inside the executor's
//! finish, which eventic hooks), the trigger only keeps the row as a document; when they have all run, still inside the
//! statement, the kept rows are appended sorted by record id (stably: one record's rows in
//! the order they came), each exactly as the trigger would have appended it then (the latest
//! version read under the record's write lock, the same checks, errors and outbox events).
//!
//! What this changes: another AFTER trigger of the same statement does not see those versions
//! yet. What it does not: any other eventic write of this connection (set_field, a purge, the
//! generic path of a tracked row) first appends what is kept, so no write overtakes an earlier
//! one; a (sub)transaction that aborts forgets what it kept; at most [`MAX_BYTES`] of documents
//! are kept at once (then they are appended, and keeping starts again). A row trigger fired
//! outside a hooked executor finish (logical replication's apply, eventic loaded in the middle
//! of the statement) appends at once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use pgrx::pg_sys::{self, Datum};
use pgrx::prelude::*;
use pgrx::{FromDatum, JsonB, Uuid};

use crate::errors::OrReport;
use crate::records::direct::{self, Appended, Next};
use crate::records::fields::PROPERTIES;
use crate::records::jsonb_fn;
use crate::records::store::{self, new_uuid_v7};

type Res<T> = crate::errors::Result<T>;

/// Documents kept before they are appended (a statement of more rows appends in parts).
const MAX_BYTES: usize = 32 << 20;

/// A tracked row's document, kept until the end of its statement.
struct Kept {
    id: Uuid,
    /// `to_jsonb(row)`, in [`KEPT_MEMORY`]
    doc: Datum,
    /// index into `TABLES`
    table: usize,
    /// the subtransaction that kept it (forgotten when that aborts)
    subxact: pg_sys::SubTransactionId,
    /// the role that changed the row: its version is appended as that role, whoever's write
    /// makes the kept rows append first (a SECURITY DEFINER function's, say)
    user: pg_sys::Oid,
}

/// The class and key column of a tracked table rows were kept of.
struct Table {
    class_name: String,
    id_column: String,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
    /// rows kept by a subtransaction and appended inside a later one, by that one
    static APPENDED_INSIDE: RefCell<Vec<(pg_sys::SubTransactionId, Kept)>> = const { RefCell::new(Vec::new()) };
    static TABLES: RefCell<Vec<Rc<Table>>> = const { RefCell::new(Vec::new()) };
    static KEPT_BYTES: Cell<usize> = const { Cell::new(0) };
    /// the memory the kept documents live in (a child of TopMemoryContext, emptied when
    /// nothing is kept)
    static KEPT_MEMORY: Cell<pg_sys::MemoryContext> = const { Cell::new(std::ptr::null_mut()) };
    /// hooked executor finishes in progress (row triggers run inside them)
    static FINISHING: Cell<u32> = const { Cell::new(0) };
    /// whether the statement finishing (the innermost) changed more than one row: a single
    /// row has nothing to sort, and appends at once
    static MANY_ROWS: Cell<bool> = const { Cell::new(false) };
    static APPENDING: Cell<bool> = const { Cell::new(false) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

static mut PREVIOUS_FINISH: pg_sys::ExecutorFinish_hook_type = None;

/// Hook the executor's finish (from `_PG_init`).
pub fn init() {
    // SAFETY: _PG_init runs once per process, before any query of this library.
    unsafe {
        PREVIOUS_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(finish);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn finish(query: *mut pg_sys::QueryDesc) {
    /// Counts a finish in progress (and restores the enclosing statement's row count); an
    /// ERROR unwinding through it counts it out too.
    struct InProgress {
        outer_many: bool,
    }
    impl Drop for InProgress {
        fn drop(&mut self) {
            FINISHING.with(|f| f.set(f.get() - 1));
            MANY_ROWS.with(|m| m.set(self.outer_many));
        }
    }
    // SAFETY: the executor's query, its estate set up by ExecutorStart.
    let many = unsafe { !(*query).estate.is_null() && (*(*query).estate).es_processed > 1 };
    FINISHING.with(|f| f.set(f.get() + 1));
    let in_progress = InProgress { outer_many: MANY_ROWS.with(|m| m.replace(many)) };
    // SAFETY: the executor's own call, passed on as it came.
    unsafe {
        match PREVIOUS_FINISH {
            Some(previous) => pg_sys::ffi::pg_guard_ffi_boundary(|| previous(query)),
            None => pg_sys::standard_ExecutorFinish(query),
        }
    }
    drop(in_progress);
    // the statement's AFTER triggers have run: append what they kept
    append_kept().or_report();
}

/// Append the version for an UPDATE of a tracked row that kept its key (`doc` is the new row
/// as jsonb), now or, inside a statement, at its end. False when the record has no version
/// (appending now): the caller then takes the generic path, which creates it.
pub fn append(layout: direct::Layout, id: Uuid, class_name: &str, id_column: &str, doc: Datum) -> Res<bool> {
    if FINISHING.with(Cell::get) == 0 || !MANY_ROWS.with(Cell::get) || APPENDING.with(Cell::get) {
        return append_now(&direct::open(layout), id, id_column, doc);
    }
    keep(id, class_name, id_column, doc);
    if KEPT_BYTES.with(Cell::get) >= MAX_BYTES {
        append_kept()?;
    }
    Ok(true)
}

fn keep(id: Uuid, class_name: &str, id_column: &str, doc: Datum) {
    register_callbacks();
    let table = TABLES.with(|tables| {
        let mut tables = tables.borrow_mut();
        match tables.iter().position(|t| t.class_name == class_name && t.id_column == id_column) {
            Some(found) => found,
            None => {
                tables.push(Rc::new(Table { class_name: class_name.into(), id_column: id_column.into() }));
                tables.len() - 1
            }
        }
    });
    // SAFETY: `doc` is a plain (untoasted) jsonb datum built by row_to_jsonb; it is copied into
    // memory that lives until it is appended or forgotten.
    let doc = unsafe {
        let size = pgrx::varlena::varsize_any(doc.cast_mut_ptr());
        let copy = pg_sys::MemoryContextAlloc(kept_memory(), size);
        std::ptr::copy_nonoverlapping(doc.cast_mut_ptr::<u8>(), copy.cast::<u8>(), size);
        KEPT_BYTES.with(|b| b.set(b.get() + size));
        Datum::from(copy)
    };
    // SAFETY: reads backend globals.
    let (subxact, user) = unsafe { (pg_sys::GetCurrentSubTransactionId(), pg_sys::GetUserId()) };
    KEPT.with(|kept| kept.borrow_mut().push(Kept { id, doc, table, subxact, user }));
    direct::write_first(append_kept);
}

fn kept_memory() -> pg_sys::MemoryContext {
    KEPT_MEMORY.with(|memory| {
        if memory.get().is_null() {
            // SAFETY: a context of its own under TopMemoryContext, for the backend's life.
            memory.set(unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"eventic tracked rows".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            });
        }
        memory.get()
    })
}

/// Append every kept row, sorted by record id.
pub fn append_kept() -> Res<()> {
    if APPENDING.with(Cell::get) || KEPT.with(|kept| kept.borrow().is_empty()) {
        return Ok(());
    }
    let mut rows = KEPT.with(|kept| std::mem::take(&mut *kept.borrow_mut()));
    rows.sort_by(|a, b| a.id.as_bytes().cmp(b.id.as_bytes()));
    let mut appending = Appending { rows, done: 0 };
    APPENDING.with(|a| a.set(true));
    // SAFETY: reads a backend global.
    let current = unsafe { pg_sys::GetCurrentSubTransactionId() };
    // eventic.records opened once for all (no direct path any more: the generic one)
    let open = direct::layout()?.map(direct::open);
    // each row's work in memory of its own, emptied after it
    let mut per_row = pgrx::PgMemoryContexts::new("eventic tracked row");
    while appending.done < appending.rows.len() {
        let row = &appending.rows[appending.done];
        let table = TABLES.with(|tables| Rc::clone(&tables.borrow()[row.table]));
        let append = || append_one(open.as_ref(), row, &table.class_name, &table.id_column);
        // SAFETY: the closure makes and uses datums of this context only; GetUserId reads a
        // backend global.
        unsafe {
            if row.user == pg_sys::GetUserId() {
                per_row.switch_to(|_| append())?;
            } else {
                per_row.switch_to(|_| crate::roles::run_as(row.user, append))?;
            }
            per_row.reset();
        }
        appending.done += 1;
    }
    // rows kept by an enclosing subtransaction, appended inside this one: kept again if this
    // one aborts (as Postgres fires again the outer AFTER trigger events an aborted
    // subtransaction fired)
    let rows = std::mem::take(&mut appending.rows);
    APPENDED_INSIDE.with(|inside| {
        let mut inside = inside.borrow_mut();
        inside.extend(rows.into_iter().filter(|row| row.subxact < current).map(|row| (current, row)));
    });
    drop(appending);
    if KEPT.with(|kept| kept.borrow().is_empty()) && APPENDED_INSIDE.with(|i| i.borrow().is_empty()) {
        forget_all();
    }
    Ok(())
}

/// The rows an [`append_kept`] is appending: when an error ends it, all are kept again (the
/// abort undoes those appended, and forgets those its subtransaction kept).
struct Appending {
    rows: Vec<Kept>,
    done: usize,
}

impl Drop for Appending {
    fn drop(&mut self) {
        APPENDING.with(|a| a.set(false));
        // ended by an error (the rows are taken when all are appended): all of them, as those
        // appended are undone by the abort too
        if !self.rows.is_empty() {
            let rows: Vec<Kept> = self.rows.drain(..).collect();
            KEPT.with(|kept| kept.borrow_mut().extend(rows));
            direct::write_first(append_kept);
        }
    }
}

fn append_one(open: Option<&direct::Open>, row: &Kept, class_name: &str, id_column: &str) -> Res<()> {
    if let Some(open) = open {
        if append_now(open, row.id, id_column, row.doc)? {
            return Ok(());
        }
    }
    // no record yet (or no direct path any more): the generic path, as the trigger takes it
    // SAFETY: a jsonb datum in KEPT_MEMORY.
    let doc = unsafe { jsonb_fn::delete_key(row.doc, pgrx::IntoDatum::into_datum(id_column).unwrap_or(Datum::from(0usize))) };
    // SAFETY: as above.
    let doc = unsafe { JsonB::from_datum(doc, false) }.map(|d| d.0).unwrap_or_default();
    super::tracked::upsert(class_name, row.id, doc)
}

/// The row's document set over the latest version (all its columns but the key), appended
/// now. False when the record has no version.
fn append_now(open: &direct::Open, id: Uuid, id_column: &str, doc: Datum) -> Res<bool> {
    let appended = direct::append_in(open, id, new_uuid_v7(), |head| {
        store::require_write(id, &head.class_type)?;
        // SAFETY: jsonb datums (objects).
        unsafe {
            if head.deleted {
                let fresh = jsonb_fn::set_key(jsonb_fn::empty_object(), PROPERTIES, jsonb_fn::empty_object());
                let data = jsonb_fn::merge_objects(fresh, doc, Some(id_column));
                return Ok(Some(Next { data, deleted: false }));
            }
            // the latest version with the row's columns (but its key) set over it
            let (data, sameness) = jsonb_fn::merge_objects_telling(head.data, doc, Some(id_column));
            Ok(sameness.differs(data, head.data).then_some(Next { data, deleted: false }))
        }
    })?;
    match appended {
        Appended::Version { version, class_type, data, deleted } => {
            store::after_direct_append(id, &class_type, version, data, deleted)?;
            Ok(true)
        }
        // the row's columns change nothing in the document
        Appended::Nothing(_) => Ok(true),
        Appended::NoRecord => Ok(false),
    }
}

fn forget_all() {
    if APPENDING.with(Cell::get) {
        return; // the rows being appended live in the kept memory
    }
    KEPT.with(|kept| kept.borrow_mut().clear());
    APPENDED_INSIDE.with(|inside| inside.borrow_mut().clear());
    TABLES.with(|tables| tables.borrow_mut().clear());
    KEPT_BYTES.with(|b| b.set(0));
    direct::write_first_done();
    KEPT_MEMORY.with(|memory| {
        if !memory.get().is_null() {
            // SAFETY: nothing refers to the kept documents any more.
            unsafe { pg_sys::MemoryContextReset(memory.get()) };
        }
    });
}

fn register_callbacks() {
    if !CALLBACKS.with(|c| c.replace(true)) {
        // SAFETY: registering backend-lifetime callbacks with no argument.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // every statement appends what it kept: this only guards against a path not known
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => append_kept().or_report(),
        XACT_EVENT_COMMIT | XACT_EVENT_PREPARE | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => forget_all(),
        _ => {}
    }
}

unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    ending: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    // subtransactions begun after the one ending are inside it
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => APPENDED_INSIDE.with(|inside| {
            let mut inside = inside.borrow_mut();
            for (by, _) in inside.iter_mut().filter(|(by, _)| *by >= ending) {
                *by = parent;
            }
            // appended by the subtransaction that kept them: they share its fate
            inside.retain(|(by, row)| row.subxact < *by);
        }),
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            let again: Vec<Kept> = APPENDED_INSIDE.with(|inside| {
                let mut inside = inside.borrow_mut();
                let (undone, stay): (Vec<_>, Vec<_>) = inside.drain(..).partition(|(by, _)| *by >= ending);
                *inside = stay;
                undone.into_iter().map(|(_, row)| row).filter(|row| row.subxact < ending).collect()
            });
            KEPT.with(|kept| {
                let mut kept = kept.borrow_mut();
                kept.retain(|row| row.subxact < ending);
                // appended before the rows still kept: first again
                let later = std::mem::replace(&mut *kept, again);
                kept.extend(later);
            });
            if KEPT.with(|kept| kept.borrow().is_empty()) && APPENDED_INSIDE.with(|i| i.borrow().is_empty()) {
                forget_all();
            } else {
                direct::write_first(append_kept);
            }
        }
        _ => {}
    }
}
