//! When a backend must forget what it cached about eventic's own catalog (`eventic.classes`,
//! `eventic.queues`, the extension's owner) and about the functions jobs call.
//!
//! Rows of `eventic.classes` and `eventic.queues` change only through statements that fire the
//! `catalog_changed` trigger, which queues a relcache invalidation of the table; every
//! backend's callback bumps the catalog generation (so does dropping either table, i.e. DROP
//! EXTENSION). A change to `pg_proc`, `pg_type` or `pg_namespace` (a job's function altered,
//! dropped or renamed) bumps the function generation through syscache callbacks. A cache
//! built under an older generation starts again from empty: lookups stay one hash probe on
//! the hot paths (enqueue, writes of a class), and DDL is never missed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;

use pgrx::prelude::*;
use pgrx::{pg_sys, AllocatedByPostgres};

use crate::errors::EventicError;

thread_local! {
    static CATALOG_GENERATION: Cell<u64> = const { Cell::new(0) };
    static FUNCTION_GENERATION: Cell<u64> = const { Cell::new(0) };
    static ACL_GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The oids of eventic.classes and eventic.queues, once a lookup has seen them.
    static WATCHED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    static DISTRIBUTION_GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The oid of eventic.records, once the Citus state has looked it up.
    static RECORDS: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Changes when eventic.records's cache entry is invalidated (e.g. Citus distributes it).
pub fn distribution_generation() -> u64 {
    DISTRIBUTION_GENERATION.with(Cell::get)
}

/// Invalidations of eventic.records (oid `records`) bump the distribution generation.
pub fn watch_records(records: pg_sys::Oid) {
    RECORDS.with(|r| r.set(records));
}

/// Changes when eventic.classes or eventic.queues (or the extension) changes.
pub fn catalog_generation() -> u64 {
    CATALOG_GENERATION.with(Cell::get)
}

/// Changes when any function, type or schema changes.
pub fn function_generation() -> u64 {
    FUNCTION_GENERATION.with(Cell::get)
}

/// Changes when any relation's cache entry (a GRANT on a view or table), a role or a role
/// membership changes: what access checks of classes depend on.
pub fn acl_generation() -> u64 {
    ACL_GENERATION.with(Cell::get)
}

/// Invalidations of `table` (eventic.classes or eventic.queues) bump the catalog generation.
pub fn watch(table: pg_sys::Oid) {
    WATCHED.with(|watched| {
        let mut watched = watched.borrow_mut();
        if table != pg_sys::InvalidOid && !watched.contains(&table) {
            watched.push(table);
        }
    });
}

/// Called by Postgres when a relation's cache entry is invalidated (must not raise).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    ACL_GENERATION.with(|g| g.set(g.get() + 1));
    if relid == pg_sys::InvalidOid || relid == RECORDS.with(Cell::get) {
        DISTRIBUTION_GENERATION.with(|g| g.set(g.get() + 1));
    }
    let ours = relid == pg_sys::InvalidOid // a full reset
        || WATCHED.with(|watched| watched.borrow().contains(&relid));
    if ours {
        CATALOG_GENERATION.with(|g| g.set(g.get() + 1));
    }
}

/// Called by Postgres when a pg_proc, pg_type or pg_namespace entry changes (must not raise).
#[pg_guard]
unsafe extern "C-unwind" fn on_syscache_invalidation(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    FUNCTION_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Called by Postgres when a role or role membership changes (must not raise).
#[pg_guard]
unsafe extern "C-unwind" fn on_role_invalidation(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    ACL_GENERATION.with(|g| g.set(g.get() + 1));
}

/// Registers the callbacks (from `_PG_init`).
pub fn init() {
    use pg_sys::SysCacheIdentifier::{AUTHMEMROLEMEM, AUTHOID, NAMESPACEOID, PROCOID, TYPEOID};
    // SAFETY: registering callbacks from _PG_init; the functions live as long as the library.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0usize),
        );
        for cache in [PROCOID, TYPEOID, NAMESPACEOID] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(on_syscache_invalidation),
                pg_sys::Datum::from(0usize),
            );
        }
        for cache in [AUTHOID, AUTHMEMROLEMEM] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(on_role_invalidation),
                pg_sys::Datum::from(0usize),
            );
        }
    }
}

/// AFTER statement trigger on eventic.classes and eventic.queues: every backend drops what it
/// cached of them (the invalidation is sent at commit, and seen at once in this backend).
#[pg_trigger]
fn catalog_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, EventicError> {
    let relid = trigger
        .relid()
        .map_err(|e| EventicError::Internal(e.to_string()))?;
    // SAFETY: a valid relation oid (the table the trigger fired on).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    // On Citus (eventic.distribute) the trigger fires on a shard of the reference table
    // (eventic.classes_102008); backends watch the table itself.
    // SAFETY: catalog lookups of a valid relation and of names in its schema.
    unsafe {
        let schema = pg_sys::get_rel_namespace(relid);
        for table in [c"classes", c"queues"] {
            let oid = pg_sys::get_relname_relid(table.as_ptr(), schema);
            if oid != pg_sys::InvalidOid && oid != relid {
                pg_sys::CacheInvalidateRelcacheByRelid(oid);
            }
        }
    }
    Ok(None)
}

/// A map that empties itself when its generation moves on.
pub struct Generational<K, V> {
    generation: u64,
    entries: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> Default for Generational<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq, V: Clone> Generational<K, V> {
    pub fn new() -> Self {
        Generational {
            generation: 0,
            entries: HashMap::new(),
        }
    }

    /// The entry for `key`, if cached under `generation`.
    pub fn get<Q>(&mut self, generation: u64, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.generation != generation {
            self.entries.clear();
            self.generation = generation;
        }
        self.entries.get(key).cloned()
    }

    /// Keep `value`, unless `generation` (read before it was looked up) is already stale.
    pub fn insert(&mut self, generation: u64, key: K, value: V) {
        if self.generation != generation {
            self.entries.clear();
            self.generation = generation;
        }
        self.entries.insert(key, value);
    }
}
