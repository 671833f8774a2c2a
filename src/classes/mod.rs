//! Classes (DESIGN.md §2): registration, JSON Schema validation of every new version, typed
//! updatable views, and tracked ordinary tables.

pub mod cache;
pub mod naming;
pub mod schema;
pub mod tracked;

use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::Value;

use crate::errors::{required, EventicError, OrReport, Result};
use crate::records::fields::check_class_name;
use crate::records::store;
use crate::roles::as_extension_owner;
use crate::settings::strict_field_names;

/// A new version of a record, as the insert trigger of eventic.records sees it.
pub struct NewVersion<'a> {
    pub class_type: &'a str,
    pub id: &'a str,
    pub version: i32,
    pub deleted: bool,
}

/// What a class asks of each new version: a match with its schema (tombstones excepted), and
/// an event job for each subscriber, enqueued in the same transaction (the outbox). `data` is
/// only read when one of the two needs it.
pub fn on_new_version(new: NewVersion<'_>, data: impl FnOnce() -> Result<Value>) -> Result<()> {
    let Some(class) = cache::lookup(new.class_type)? else {
        return Ok(());
    };
    let check = class.validator.as_ref().filter(|_| !new.deleted);
    if check.is_none() && class.subscribers.is_empty() {
        return Ok(());
    }
    let data = data()?;
    if let Some(validator) = check {
        if let Some(err) = schema::violation(validator, new.class_type, new.id, &data) {
            return Err(err);
        }
    }
    if !class.subscribers.is_empty() {
        let table = crate::queues::queue_table(&class.queue_name)?;
        let event = serde_json::json!({
            "id": new.id, "version": new.version, "class_type": new.class_type,
            "deleted": new.deleted, "data": data,
        });
        for handler in &class.subscribers {
            crate::queues::insert_job(
                &table,
                crate::queues::NewJob {
                    fn_oid: *handler,
                    args: crate::queues::JobArgs::Json(event.clone()),
                    run_at: None,
                    priority: 0,
                    dedup_key: None,
                    max_attempts: 5,
                    enqueued_by: crate::roles::current_role(),
                },
            )?;
        }
        crate::queues::announce(&class.queue_name)?;
    }
    Ok(())
}

/// Add or remove an outbox subscriber of a class (the SQL faces are eventic.subscribe /
/// eventic.unsubscribe, which take the handler as regprocedure).
#[pg_extern(volatile, parallel_unsafe, name = "_subscribe")]
fn subscribe(class_name: Option<&str>, handler: Option<pg_sys::Oid>, on: Option<bool>) {
    (|| {
        let class_name = required(class_name, "class_name")?;
        let handler = required(handler, "handler")?;
        let on = required(on, "on")?;
        let Some(existing) = registered(class_name)? else {
            return Err(unknown_class(class_name));
        };
        if !may_manage(&existing.owner)? {
            return Err(EventicError::not_allowed(
                format!("permission denied to change the subscribers of class {class_name}"),
                format!("Only its owner ({}) or a superuser may.", existing.owner),
            ));
        }
        let takes_jsonb = Spi::get_one_with_args::<bool>(
            "SELECT pronargs = 1 AND proargtypes[0] = 'jsonb'::regtype AND prokind = 'f'
               FROM pg_proc WHERE oid = $1",
            &[handler.into()],
        );
        if on && !matches!(takes_jsonb, Ok(Some(true))) {
            return Err(EventicError::invalid(
                format!("handler {} must be a function taking one jsonb (the event)", handler.to_u32()),
                "Declare it as handler(event jsonb); the event has id, version, class_type, deleted, data.",
            ));
        }
        as_extension_owner(|| {
            Spi::run_with_args(
                "UPDATE eventic.classes SET subscribers = CASE WHEN $3
                        THEN CASE WHEN $2 = ANY (subscribers) THEN subscribers ELSE subscribers || $2 END
                        ELSE array_remove(subscribers, $2) END
                  WHERE class_name = $1",
                &[class_name.into(), handler.into(), on.into()],
            )?;
            Ok(())
        })
    })()
    .or_report()
}

/// Register `class_name` with no schema and no view if it was never registered (first use).
pub fn ensure_registered(class_name: &str) -> Result<()> {
    if cache::lookup(class_name)?.is_none() {
        register(class_name, None, None)?;
    }
    Ok(())
}

struct Registered {
    owner: String,
    json_schema: Option<Value>,
    view_schema: Option<String>,
    view_name: Option<String>,
}

fn registered(class_name: &str) -> Result<Option<Registered>> {
    Spi::connect_mut(|client| {
        let mut table = client.update(
            "SELECT owner::text, json_schema, view_schema::text, view_name::text \
               FROM eventic.classes WHERE class_name = $1",
            Some(1),
            &[class_name.into()],
        )?;
        let Some(row) = table.next() else {
            return Ok(None);
        };
        Ok(Some(Registered {
            owner: row.get::<String>(1)?.unwrap_or_default(),
            json_schema: row.get::<JsonB>(2)?.map(|j| j.0),
            view_schema: row.get::<String>(3)?,
            view_name: row.get::<String>(4)?,
        }))
    })
}

fn may_manage(owner: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT pg_has_role(current_user, $1::name, 'USAGE')",
        &[owner.into()],
    )?
    .unwrap_or(false))
}

pub fn register(
    class_name: &str,
    json_schema: Option<Value>,
    view_schema: Option<&str>,
) -> Result<()> {
    check_class_name(class_name)?;
    let queue = naming::queue_name_for(class_name)?;
    if let Some(doc) = &json_schema {
        schema::compile(class_name, doc)?;
        schema::view_columns(class_name, doc, strict_field_names())?;
    }
    store::lock_class(class_name);
    let existing = registered(class_name)?;
    if let Some(existing) = &existing {
        let changes = json_schema
            .as_ref()
            .is_some_and(|s| Some(s) != existing.json_schema.as_ref())
            || view_schema.is_some_and(|v| Some(v) != existing.view_schema.as_deref());
        if changes && !may_manage(&existing.owner)? {
            return Err(EventicError::not_allowed(
                format!("permission denied to change class {class_name}"),
                format!(
                    "Only its owner ({}) or a superuser may change its schema or view.",
                    existing.owner
                ),
            ));
        }
        if !changes {
            return Ok(()); // idempotent
        }
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
    let caller = Spi::get_one::<String>("SELECT current_user::text")?.unwrap_or_default();
    as_extension_owner(|| {
        Spi::run_with_args(
            "SELECT eventic._create_queue($1, $2)",
            &[queue.as_str().into(), class_name.into()],
        )?;
        Spi::run_with_args(
            "INSERT INTO eventic.classes AS c (class_name, queue_name, json_schema, owner)
             VALUES ($1, $2, $3, $4::name)
             ON CONFLICT (class_name) DO UPDATE
                SET json_schema = coalesce(EXCLUDED.json_schema, c.json_schema), updated_at = now()",
            &[class_name.into(), queue.as_str().into(), schema_arg.into(), caller.as_str().into()],
        )?;
        Spi::run_with_args(
            "UPDATE eventic.queues SET owner = coalesce(owner, $2::name) WHERE queue_name = $1",
            &[queue.as_str().into(), caller.as_str().into()],
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

/// (Re)create the typed view `<view_schema>.<snake_case>` of a class, owned by the caller.
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
           FOR EACH ROW EXECUTE FUNCTION eventic._class_view_write({});\n\
         COMMENT ON VIEW {qualified} IS {};\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified} TO PUBLIC;",
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
    json_schema: default!(Option<JsonB>, "NULL"),
    view_schema: default!(Option<&str>, "NULL"),
) {
    (|| {
        register(
            required(class_name, "class_name")?,
            json_schema.map(|j| j.0),
            view_schema,
        )
    })()
    .or_report()
}

/// Drop a class: its view, its queue and its registration. Its records stay.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_class(class_name: Option<&str>) {
    (|| {
        let class_name = required(class_name, "class_name")?;
        store::lock_class(class_name);
        let Some(existing) = registered(class_name)? else {
            return Err(unknown_class(class_name));
        };
        if !may_manage(&existing.owner)? {
            return Err(EventicError::not_allowed(
                format!("permission denied to drop class {class_name}"),
                format!("Only its owner ({}) or a superuser may drop it.", existing.owner),
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
            Spi::run_with_args(
                "WITH gone AS (DELETE FROM eventic.classes WHERE class_name = $1 RETURNING queue_name),
                      archived AS (DELETE FROM eventic.finished_batches f USING gone
                                    WHERE f.queue_name = gone.queue_name)
                 DELETE FROM eventic.queues q USING gone WHERE q.queue_name = gone.queue_name",
                &[class_name.into()],
            )?;
            let queue = naming::queue_name_for(class_name)?;
            Spi::run(&format!(
                "DROP TABLE IF EXISTS eventic.{}",
                pgrx::spi::quote_identifier(format!("queue_{queue}"))
            ))?;
            Ok(())
        })
    })()
    .or_report()
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
