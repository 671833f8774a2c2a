//! Per-backend cache of registered classes and their compiled validators.
//!
//! Any change to `eventic.classes` empties it (`crate::catalog_cache`): schemas compile once
//! per backend, not per row.

use std::cell::RefCell;
use std::rc::Rc;

use jsonschema::Validator;
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};

use crate::catalog_cache::{catalog_generation, watch, Generational};
use crate::classes::schema;
use crate::errors::Result;
use crate::spi_plans::plan;

/// A registered class as the write path needs it.
pub struct ClassInfo {
    pub validator: Option<Validator>,
    pub queue_name: String,
    /// Handlers (eventic.subscribe) that get an event job for each new version, and the
    /// role each runs as (the one that subscribed it).
    pub subscribers: Vec<(pg_sys::Oid, pg_sys::Oid)>,
    /// The role that owns the class (and its records).
    pub owner: pg_sys::Oid,
    /// The relations whose privileges grant access to its records: its view, its tracked
    /// table (either may be gone since; access checks look them up).
    pub grant_targets: Vec<pg_sys::Oid>,
}

thread_local! {
    /// `None`: known not to be registered.
    static CACHE: RefCell<Generational<String, Option<Rc<ClassInfo>>>> =
        RefCell::new(Generational::new());
}

/// The table's oid comes back even when the class is not registered: the invalidation
/// callback needs it to recognise the registration that will follow.
const SELECT_CLASS: &str = "SELECT c.class_name IS NOT NULL, c.json_schema, \
            'eventic.classes'::regclass::oid, c.queue_name, c.subscribers::oid[], c.subscriber_roles::oid[], \
            c.owner::oid, \
            array_remove(ARRAY[CASE WHEN c.view_name IS NOT NULL \
                         THEN to_regclass(format('%I.%I', c.view_schema, c.view_name))::oid END, \
                               c.tracked_table::oid], NULL) \
       FROM (SELECT 1) one LEFT JOIN eventic.classes c ON c.class_name = $1";

/// The registered class `name`, or `None` when it is not registered.
pub fn lookup(name: &str) -> Result<Option<Rc<ClassInfo>>> {
    let generation = catalog_generation();
    let cached = CACHE.with(|cache| cache.borrow_mut().get(generation, name));
    if let Some(found) = cached {
        return Ok(found);
    }
    // No borrow is held while SPI runs: invalidations may arrive meanwhile.
    let (registered, json_schema, classes_oid, queue_name, subscribers, owner, grant_targets) =
        crate::citus::allowing_nested(|| Spi::connect(|client| -> Result<_> {
            let stmt = plan(client, SELECT_CLASS, &[crate::records::store::TEXT], true)?;
            let mut table = client.select(&*stmt, Some(1), &[name.into()])?;
            let row = table.next().ok_or_else(|| {
                crate::errors::EventicError::Internal("class lookup returned no row".into())
            })?;
            Ok((
                row.get::<bool>(1)?.unwrap_or(false),
                row.get::<JsonB>(2)?,
                row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<String>(4)?.unwrap_or_default(),
                {
                    let handlers = row.get::<Vec<pg_sys::Oid>>(5)?.unwrap_or_default();
                    let roles = row.get::<Vec<pg_sys::Oid>>(6)?.unwrap_or_default();
                    handlers.into_iter().zip(roles).collect::<Vec<_>>()
                },
                row.get::<pg_sys::Oid>(7)?.unwrap_or(pg_sys::InvalidOid),
                row.get::<Vec<pg_sys::Oid>>(8)?.unwrap_or_default(),
            ))
        }))?;
    watch(classes_oid);
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
                owner,
                grant_targets,
            }))
        }
    };
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .insert(generation, name.to_string(), info.clone())
    });
    Ok(info)
}
