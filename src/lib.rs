//! Eventic: versioned records, per-class queues and durable workflows inside PostgreSQL.
//!
//! Layout: `records` (the versioned store and its SQL functions), `classes` (schemas, typed
//! views, tracked tables), `errors` (SQLSTATEs and
//! messages), `settings` (GUCs),
//! `spi_plans` (prepared statements kept per backend). The DDL is in `sql/`.

use pgrx::prelude::*;

pub mod catalog_cache;
pub mod citus;
pub mod classes;
pub mod errors;
pub mod locks;
pub mod metrics;
pub mod outbox;
pub mod progress;
pub mod queues;
pub mod raw_jsonb;
pub mod records;
pub mod roles;
pub mod runtime;
pub mod schedules;
pub mod settings;
pub mod spi_plans;
pub mod subxact;
pub mod worker;
pub mod workflows;

::pgrx::pg_module_magic!();

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::init();
    catalog_cache::init();
    progress::set_workflow_lookup(workflows::current_workflow_id);
    worker::init();
    classes::tracked_batch::init();
}

extension_sql_file!(
    "../sql/records.sql",
    name = "records_schema",
    requires = [
        records::triggers::records_guard_insert,
        records::triggers::records_redirect_update,
        records::triggers::records_guard_delete,
        classes::access::may_read_class,
        classes::access::may_write_class,
    ]
);
extension_sql_file!(
    "../sql/queues.sql",
    name = "queues_schema",
    requires = ["records_schema", queues::enqueue_job, queues::consumers::dequeue]
);
extension_sql_file!(
    "../sql/workflows.sql",
    name = "workflows_schema",
    requires = [
        "queues_schema",
        workflows::control::start_workflow,
        workflows::body::step,
        workflows::body::start_child,
        workflows::control::fork_workflow
    ]
);
extension_sql_file!(
    "../sql/classes.sql",
    name = "classes_schema",
    requires = [
        "queues_schema",
        catalog_cache::catalog_changed,
        classes::subscribe,
        classes::unsubscribe
    ]
);
extension_sql_file!(
    "../sql/progress.sql",
    name = "progress_schema",
    requires = ["queues_schema", progress::progress_rows]
);
extension_sql_file!(
    "../sql/metrics.sql",
    name = "metrics_schema",
    requires = ["queues_schema", "workflows_schema", metrics::worker_liveness]
);
extension_sql_file!(
    "../sql/schedules.sql",
    name = "schedules_schema",
    requires = ["workflows_schema"]
);
extension_sql_file!(
    "../sql/citus.sql",
    name = "citus_schema",
    requires = ["classes_schema", records::shipped::write_on_shard]
);
extension_sql_file!("../sql/comments.sql", name = "comments", finalize);

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("pg_tests.rs");
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
