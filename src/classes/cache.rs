//! Per-backend cache of registered classes and their compiled validators.
//!
//! Any change to `eventic.classes` fires a statement trigger that queues a relcache
//! invalidation of that table; every backend's callback bumps a generation counter, and the
//! next lookup starts from an empty cache. So schemas compile once per backend, not per row.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use jsonschema::Validator;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::classes::schema;
use crate::errors::Result;
use crate::spi_plans::plan;

/// A registered class as the write path needs it.
pub struct ClassInfo {
    pub validator: Option<Validator>,
    pub queue_name: String,
    /// Handlers (eventic.subscribe) that get an event job for each new version.
    pub subscribers: Vec<pg_sys::Oid>,
}

struct Cache {
    generation: u64,
    /// `None`: known not to be registered.
    classes: HashMap<String, Option<Rc<ClassInfo>>>,
}

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    static CLASSES_OID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static CACHE: RefCell<Cache> = RefCell::new(Cache { generation: 0, classes: HashMap::new() });
}

/// Called by Postgres when a relation's cache entry is invalidated (must not raise).
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == CLASSES_OID.with(Cell::get) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

pub fn init() {
    // SAFETY: registering a callback from _PG_init; the function lives as long as the library.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0usize),
        );
    }
}

/// Queue an invalidation of every backend's class cache (sent at commit; seen at once here).
pub fn invalidate(classes_table: pg_sys::Oid) {
    // SAFETY: a valid relation oid (the table the trigger fired on).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(classes_table) };
}

/// The table's oid comes back even when the class is not registered: the invalidation
/// callback needs it to recognise the registration that will follow.
const SELECT_CLASS: &str = "SELECT c.class_name IS NOT NULL, c.json_schema, \
            'eventic.classes'::regclass::oid, c.queue_name, c.subscribers \
       FROM (SELECT 1) one LEFT JOIN eventic.classes c ON c.class_name = $1";

/// The registered class `name`, or `None` when it is not registered.
pub fn lookup(name: &str) -> Result<Option<Rc<ClassInfo>>> {
    let generation = GENERATION.with(Cell::get);
    let cached = CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.generation != generation {
            cache.classes.clear();
            cache.generation = generation;
        }
        cache.classes.get(name).cloned()
    });
    if let Some(found) = cached {
        return Ok(found);
    }
    // No borrow is held while SPI runs: invalidations may arrive meanwhile.
    let (registered, json_schema, classes_oid, queue_name, subscribers) =
        Spi::connect_mut(|client| -> Result<_> {
            let stmt = plan(client, SELECT_CLASS, &[crate::records::store::TEXT], true)?;
            let mut table = client.update(&*stmt, Some(1), &[name.into()])?;
            let row = table.next().ok_or_else(|| {
                crate::errors::EventicError::Internal("class lookup returned no row".into())
            })?;
            Ok((
                row.get::<bool>(1)?.unwrap_or(false),
                row.get::<JsonB>(2)?,
                row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<String>(4)?.unwrap_or_default(),
                row.get::<Vec<pg_sys::Oid>>(5)?.unwrap_or_default(),
            ))
        })?;
    CLASSES_OID.with(|oid| oid.set(classes_oid));
    let info = match registered {
        false => None,
        true => {
            let validator = match json_schema {
                Some(JsonB(doc)) => Some(schema::compile(name, &doc)?),
                None => None,
            };
            Some(Rc::new(ClassInfo {
                validator,
                queue_name,
                subscribers,
            }))
        }
    };
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.generation == GENERATION.with(Cell::get) {
            cache.classes.insert(name.to_string(), info.clone());
        }
    });
    Ok(info)
}
