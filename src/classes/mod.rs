//! Classes (DESIGN.md §2): registration, JSON Schema validation of every new version, typed
//! updatable views, and tracked ordinary tables.

pub mod access;
pub mod cache;
pub mod naming;
pub mod schema;
pub mod tracked;
pub mod tracked_append;
pub mod tracked_batch;

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::records::fields::check_class_name;
use crate::roles::{as_extension_owner, current_role, may_execute, may_manage};
use crate::settings::strict_field_names;

/// A new version of a record, as the insert trigger of eventic.records sees it.
pub struct NewVersion<'a> {
    pub class_type: &'a str,
    pub id: &'a str,
    pub version: i32,
    pub deleted: bool,
}

/// Whether [`on_new_version`] has anything to do for a version of `class_type` (a schema to
/// match, subscribers to tell): the write paths skip building its arguments when not.
pub fn asks_of_new_versions(class_type: &str, deleted: bool) -> Result<bool> {
    Ok(cache::lookup(class_type)?.is_some_and(|class| asks(&class, deleted)))
}

fn asks(class: &cache::ClassInfo, deleted: bool) -> bool {
    (class.validator.is_some() && !deleted) || !class.subscribers.is_empty()
}

/// What a class asks of each new version: a match with its schema (tombstones excepted), and
/// the events of its subscribers, enqueued in the same transaction (the outbox). `data` is
/// only read when one of the two needs it.
pub fn on_new_version(new: NewVersion<'_>, data: impl FnOnce() -> Result<Value>) -> Result<()> {
    let Some(class) = cache::lookup(new.class_type)? else {
        return Ok(());
    };
    if !asks(&class, new.deleted) {
        return Ok(());
    }
    let check = class.validator.as_ref().filter(|_| !new.deleted);
    let data = data()?;
    if let Some(validator) = check {
        if let Some(err) = schema::violation(validator, new.class_type, new.id, &data) {
            return Err(err);
        }
    }
    if !class.subscribers.is_empty() {
        // published by the write path once the row is in (see crate::outbox)
        crate::outbox::stash(crate::outbox::Events {
            queue_name: class.queue_name.clone(),
            handlers: class.subscribers.clone(),
            event: serde_json::json!({
                "id": new.id, "version": new.version, "class_type": new.class_type,
                "deleted": new.deleted, "data": data,
            }),
        });
    }
    Ok(())
}

/// Add or remove an outbox subscriber of a class. The class's owner may; the handler runs
/// as the role that subscribed it, which needs EXECUTE on it (checked now and when it runs).
fn change_subscription(class_name: Option<&str>, handler: Option<pg_sys::Oid>, on: bool) -> Result<()> {
    let class_name = required(class_name, "class_name")?;
    let handler = required(handler, "handler")?;
    let Some(existing) = registered(class_name)? else {
        return Err(unknown_class(class_name));
    };
    if !may_manage(existing.owner) {
        return Err(EventicError::not_allowed(
            format!("permission denied to change the subscribers of class {class_name}"),
            "Only its owner (or a member of that role) or a superuser may.",
        ));
    }
    if on {
        let takes_jsonb = Spi::get_one_with_args::<bool>(
            "SELECT pronargs = 1 AND proargtypes[0] = 'jsonb'::regtype AND prokind = 'f'
               FROM pg_catalog.pg_proc WHERE oid = $1",
            &[handler.into()],
        );
        if !matches!(takes_jsonb, Ok(Some(true))) {
            return Err(EventicError::invalid(
                format!("handler {} must be a function taking one jsonb (the event)", handler.to_u32()),
                "Declare it as handler(event jsonb); the event has id, version, class_type, deleted, data.",
            ));
        }
        if !may_execute(handler, current_role()) {
            return Err(EventicError::not_allowed(
                format!("permission denied to subscribe function {} (no EXECUTE)", handler.to_u32()),
                "A handler runs as the role that subscribed it: it needs EXECUTE on the function.",
            ));
        }
    }
    let subscriber = current_role();
    as_extension_owner(|| {
        if on {
            Spi::run_with_args(
                "UPDATE eventic.classes SET subscribers = subscribers || $2::regprocedure,
                        subscriber_roles = subscriber_roles || $3::regrole
                  WHERE class_name = $1 AND NOT $2::regprocedure = ANY (subscribers)",
                &[class_name.into(), handler.into(), subscriber.into()],
            )?;
        } else {
            Spi::run_with_args(
                "UPDATE eventic.classes c
                    SET subscribers = c.subscribers[:p.i - 1] || c.subscribers[p.i + 1:],
                        subscriber_roles = c.subscriber_roles[:p.i - 1] || c.subscriber_roles[p.i + 1:]
                   FROM (SELECT array_position(subscribers, $2::regprocedure) AS i FROM eventic.classes
                          WHERE class_name = $1) p
                  WHERE c.class_name = $1 AND p.i IS NOT NULL",
                &[class_name.into(), handler.into()],
            )?;
        }
        Ok(())
    })
}

/// Internal: eventic.subscribe (which takes the handler as regprocedure).
#[pg_extern(volatile, parallel_unsafe, name = "_subscribe")]
fn subscribe(class_name: Option<&str>, handler: Option<pg_sys::Oid>) {
    change_subscription(class_name, handler, true).or_report()
}

/// Internal: eventic.unsubscribe.
#[pg_extern(volatile, parallel_unsafe, name = "_unsubscribe")]
fn unsubscribe(class_name: Option<&str>, handler: Option<pg_sys::Oid>) {
    change_subscription(class_name, handler, false).or_report()
}

/// Register `class_name` with no schema and no view if it was never registered (first use).
pub fn ensure_registered(class_name: &str) -> Result<()> {
    if cache::lookup(class_name)?.is_none() {
        register(class_name, None, None, None)?;
    }
    Ok(())
}

struct Registered {
    owner: pg_sys::Oid,
    queue_name: String,
    json_schema: Option<Value>,
    view_schema: Option<String>,
    view_name: Option<String>,
}

fn registered(class_name: &str) -> Result<Option<Registered>> {
    Spi::connect_mut(|client| {
        let mut table = client.update(
            "SELECT owner::oid, json_schema, view_schema::text, view_name::text, queue_name \
               FROM eventic.classes WHERE class_name = $1",
            Some(1),
            &[class_name.into()],
        )?;
        let Some(row) = table.next() else {
            return Ok(None);
        };
        Ok(Some(Registered {
            owner: row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            json_schema: row.get::<JsonB>(2)?.map(|j| j.0),
            view_schema: row.get::<String>(3)?,
            view_name: row.get::<String>(4)?,
            queue_name: row.get::<String>(5)?.unwrap_or_default(),
        }))
    })
}

/// Record that class `class_name` is the class of tracked table `table`.
pub fn mark_tracked(class_name: &str, table: pg_sys::Oid) -> Result<()> {
    as_extension_owner(|| {
        Spi::run_with_args(
            "UPDATE eventic.classes SET tracked_table = $2::oid::regclass
              WHERE class_name = $1 AND tracked_table IS DISTINCT FROM $2::oid::regclass",
            &[class_name.into(), table.into()],
        )?;
        Ok(())
    })
}

/// A class named `schema.name` lives in that schema, as a table would: registering it needs
/// CREATE there (so nobody claims the class of a table they could not create, before
/// `eventic.track` of that table).
fn check_class_schema(class_name: &str) -> Result<()> {
    let Some((schema_name, _)) = class_name.split_once('.') else {
        return Ok(());
    };
    let may_create = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_schema_privilege(n.oid, 'CREATE')
           FROM pg_catalog.pg_namespace n WHERE n.nspname = $1",
        &[schema_name.into()],
    )?;
    match may_create {
        Some(true) => Ok(()),
        Some(false) => Err(EventicError::not_allowed(
            format!("permission denied to register class {class_name}: no CREATE on schema {schema_name}"),
            "A schema-qualified class lives in that schema; its owner grants CREATE, or use an unqualified name.",
        )),
        None => Err(EventicError::invalid(
            format!("schema {schema_name:?} of class {class_name} does not exist"),
            "Create the schema first, or use an unqualified class name.",
        )),
    }
}

/// Register `class_name` (or change its schema or view). `tracked`: the table of a class
/// made by eventic.track.
pub fn register(
    class_name: &str,
    json_schema: Option<Value>,
    view_schema: Option<&str>,
    tracked: Option<pg_sys::Oid>,
) -> Result<()> {
    check_class_name(class_name)?;
    let queue = naming::queue_name_for(class_name)?;
    if let Some(doc) = &json_schema {
        schema::compile(class_name, doc)?;
        schema::view_columns(class_name, doc, strict_field_names())?;
    }
    crate::locks::lock_class(class_name);
    let existing = registered(class_name)?;
    if let Some(existing) = &existing {
        let changes = json_schema
            .as_ref()
            .is_some_and(|s| Some(s) != existing.json_schema.as_ref())
            || view_schema.is_some_and(|v| Some(v) != existing.view_schema.as_deref());
        if changes && !may_manage(existing.owner) {
            return Err(EventicError::not_allowed(
                format!("permission denied to change class {class_name}"),
                "Only its owner (or a member of that role) or a superuser may change its schema or view.",
            ));
        }
        if !changes {
            return Ok(()); // idempotent
        }
    } else {
        claimable(class_name, &queue, tracked.is_some())?;
    }
    if let Some(target) = view_schema {
        let may_create = Spi::get_one_with_args::<bool>(
            "SELECT has_schema_privilege($1, 'CREATE')",
            &[target.into()],
        );
        if !matches!(may_create, Ok(Some(true))) {
            return Err(EventicError::not_allowed(
                format!("permission denied to create the view of class {class_name} in schema {target:?}"),
                "Pass a view_schema where you have CREATE privilege (the schema must exist).",
            ));
        }
    }
    let schema_arg = json_schema.clone().map(JsonB);
    let caller = current_role();
    let queue = existing.as_ref().map_or(queue, |e| e.queue_name.clone());
    as_extension_owner(|| {
        Spi::run_with_args(
            "SELECT eventic._create_queue($1, $2, $3::oid::regrole)",
            &[queue.as_str().into(), class_name.into(), caller.into()],
        )?;
        Spi::run_with_args(
            "INSERT INTO eventic.classes AS c (class_name, queue_name, json_schema, owner, tracked_table)
             VALUES ($1, $2, $3, $4::oid::regrole, $5::oid::regclass)
             ON CONFLICT (class_name) DO UPDATE
                SET json_schema = coalesce(EXCLUDED.json_schema, c.json_schema), updated_at = EXCLUDED.updated_at",
            &[
                class_name.into(),
                queue.as_str().into(),
                schema_arg.into(),
                caller.into(),
                tracked.into(),
            ],
        )?;
        Ok(())
    })?;

    let effective_schema = json_schema.or(existing.as_ref().and_then(|e| e.json_schema.clone()));
    let old_view = existing
        .as_ref()
        .and_then(|e| Some((e.view_schema.clone()?, e.view_name.clone()?)));
    let target = view_schema
        .map(str::to_string)
        .or(old_view.as_ref().map(|(s, _)| s.clone()));
    if let Some(target) = target {
        build_view(
            class_name,
            &queue,
            effective_schema.as_ref(),
            &target,
            old_view,
        )?;
    }
    Ok(())
}

/// (Re)create the typed view `<view_schema>.<snake_case>` of a class, owned by the caller. No
/// other role may use it until granted: privileges on the view are the class's access list.
fn build_view(
    class_name: &str,
    view_name: &str,
    json_schema: Option<&Value>,
    view_schema: &str,
    old_view: Option<(String, String)>,
) -> Result<()> {
    let columns = match json_schema {
        Some(doc) => schema::view_columns(class_name, doc, strict_field_names())?,
        None => Vec::new(),
    };
    let has = |name: &str| columns.iter().any(|c| c.field == name);
    let mut select = vec!["l.id".to_string(), "l.version".to_string()];
    for column in &columns {
        select.push(format!(
            "{} AS {}",
            schema::column_expression(column),
            pgrx::spi::quote_identifier(&column.field)
        ));
    }
    select.push("COALESCE(l.data -> 'properties', '{}') AS properties".into());
    if !has("created_at") {
        select.push("l.created_at".into());
    }
    if !has("updated_at") {
        select.push("l.updated_at".into());
    }
    let qualified = format!(
        "{}.{}",
        pgrx::spi::quote_identifier(view_schema),
        pgrx::spi::quote_identifier(view_name)
    );
    let mut trigger_args = vec![schema::quote_literal(class_name)];
    trigger_args.extend(columns.iter().map(|c| schema::quote_literal(&c.field)));
    let mut ddl = String::new();
    if let Some((old_schema, old_name)) = old_view {
        ddl.push_str(&format!(
            "DROP VIEW IF EXISTS {}.{};\n",
            pgrx::spi::quote_identifier(old_schema),
            pgrx::spi::quote_identifier(old_name)
        ));
    }
    ddl.push_str(&format!(
        "CREATE VIEW {qualified} AS SELECT {} FROM eventic.latest l WHERE l.class_type = {};\n\
         CREATE TRIGGER eventic_write INSTEAD OF INSERT OR UPDATE OR DELETE ON {qualified} \
           FOR EACH ROW EXECUTE FUNCTION eventic.class_view_write({});\n\
         COMMENT ON VIEW {qualified} IS {};",
        select.join(", "),
        schema::quote_literal(class_name),
        trigger_args.join(", "),
        schema::quote_literal(&format!(
            "Latest versions of eventic class {class_name}; INSERT/UPDATE/DELETE append versions"
        )),
    ));
    Spi::run(&ddl)?;
    as_extension_owner(|| {
        Spi::run_with_args(
            "UPDATE eventic.classes SET view_schema = $2::name, view_name = $3::name WHERE class_name = $1",
            &[class_name.into(), view_schema.into(), view_name.into()],
        )?;
        Ok(())
    })
}

/// Register a class (idempotent): its queue, an optional JSON Schema that every new version
/// must match, and with `view_schema` an updatable typed view `<view_schema>.<snake_case>`.
#[pg_extern(volatile, parallel_unsafe)]
fn register_class(
    class_name: Option<&str>,
    json_schema: default!(Option<crate::raw_jsonb::RawJsonb>, "NULL"),
    view_schema: default!(Option<&str>, "NULL"),
) {
    (|| {
        register(
            required(class_name, "class_name")?,
            json_schema.map(|j| j.to_value()).transpose()?,
            view_schema,
            None,
        )
    })()
    .or_report()
}

/// Drop a class: its view, its queue and its registration. Its records stay.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_class(class_name: Option<&str>) {
    (|| {
        let class_name = required(class_name, "class_name")?;
        crate::locks::lock_class(class_name);
        let Some(existing) = registered(class_name)? else {
            return Err(unknown_class(class_name));
        };
        if !may_manage(existing.owner) {
            return Err(EventicError::not_allowed(
                format!("permission denied to drop class {class_name}"),
                "Only its owner (or a member of that role) or a superuser may drop it.",
            ));
        }
        if let (Some(schema_name), Some(view)) = (&existing.view_schema, &existing.view_name) {
            Spi::run(&format!(
                "DROP VIEW IF EXISTS {}.{}",
                pgrx::spi::quote_identifier(schema_name),
                pgrx::spi::quote_identifier(view)
            ))?;
        }
        as_extension_owner(|| {
            // one statement per table: on Citus eventic.classes is a reference table, which
            // a modifying CTE may not join with the coordinator's own tables
            Spi::run_with_args(
                "DELETE FROM eventic.classes WHERE class_name = $1",
                &[class_name.into()],
            )?;
            for table in ["finished_batches", "queues"] {
                Spi::run_with_args(
                    &format!("DELETE FROM eventic.{table} WHERE queue_name = $1"),
                    &[existing.queue_name.as_str().into()],
                )?;
            }
            // the class's own queue, as registered (never another queue of the same name)
            Spi::run(&format!(
                "DROP TABLE IF EXISTS eventic.{}",
                pgrx::spi::quote_identifier(format!("queue_{}", existing.queue_name))
            ))?;
            Ok(())
        })
    })()
    .or_report()
}

/// A class that was never registered may be claimed by the caller: not when its queue's name
/// is another queue's (42710), nor when records of that name are left from a dropped class
/// (only a superuser may adopt those, 42501), nor in a schema where the caller may not
/// create (see [`check_class_schema`]; tracked tables are checked by eventic.track).
fn claimable(class_name: &str, queue: &str, tracked: bool) -> Result<()> {
    if !tracked {
        check_class_schema(class_name)?;
    }
    let (queue_taken, orphans) = as_extension_owner(|| {
        let queue_taken = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT FROM eventic.queues WHERE queue_name = $1)",
            &[queue.into()],
        )?;
        let orphans = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM eventic.records WHERE class_type = $1 AND version = 0)",
            &[class_name.into()],
        )?;
        Ok((queue_taken.unwrap_or(false), orphans.unwrap_or(false)))
    })?;
    if queue_taken {
        return Err(EventicError::AlreadyExists {
            what: "queue",
            name: queue.to_string(),
            hint: format!(
                "Class {class_name} would get queue {queue}, which another queue already uses; \
                 choose another class name (or drop that queue)."
            ),
        });
    }
    if orphans && !crate::roles::is_superuser() {
        return Err(EventicError::not_allowed(
            format!("permission denied to register class {class_name}: records of a dropped class of that name exist"),
            "Only a superuser may register it again (its records would belong to the new owner).",
        ));
    }
    Ok(())
}

pub fn unknown_class(class_name: &str) -> EventicError {
    EventicError::UnknownObject {
        what: "class",
        name: class_name.to_string(),
        hint: "See SELECT class_name FROM eventic.classes; classes are registered by \
               eventic.register_class or by their first eventic.create."
            .into(),
    }
}
