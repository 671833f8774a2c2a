//! Every `eventic.*` setting (GUC), with its accessor. Registered from `_PG_init`, so they
//! exist as soon as the library is loaded (preloaded or on first use).

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static STRICT_FIELD_NAMES: GucSetting<bool> = GucSetting::<bool>::new(true);
static SPECULATIVE_WORKFLOWS: GucSetting<bool> = GucSetting::<bool>::new(true);
static ARCHIVE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(86_400);
static WORKFLOW_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 86_400);
static POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(1_000);
static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(8);
static WORKERS_PER_DATABASE: GucSetting<i32> = GucSetting::<i32>::new(2);
static PAUSE_WORKERS: GucSetting<bool> = GucSetting::<bool>::new(false);
static RECORD_ADDRESS_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(1 << 18);
static LAUNCHER_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

pub fn init() {
    GucRegistry::define_bool_guc(
        c"eventic.strict_field_names",
        c"Require record field names to be identifiers (letters, digits, underscores).",
        c"On (the default), field names must be what a Pydantic attribute or a view column can \
          be. Off accepts any non-empty key (e.g. \"first-name\") except id, version and \
          class_type; such fields cannot become typed view columns.",
        &STRICT_FIELD_NAMES,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"eventic.speculative_workflows",
        c"Run a workflow body once, running new steps where it reaches them.",
        c"On (the default), a body that can finish in one go runs once, its steps inline, all \
          committed together. A body that sleeps, waits or meets a failing step is rolled back \
          (its steps' database effects with it) and replayed step by step, as it is from then \
          on in that worker: a step with effects outside the database may then run twice. Off: \
          always step by step, each step committed before the body goes on.",
        &SPECULATIVE_WORKFLOWS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventic.archive_retention",
        c"How long finished jobs stay in eventic.finished_jobs.",
        c"Each drain removes finished jobs older than this, so the archive does not grow \
          without bound. 0 keeps none.",
        &ARCHIVE_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"eventic.workflow_retention",
        c"How long finished workflows (and their steps, messages, events) are kept.",
        c"The workers remove workflows that ended (SUCCESS, ERROR, CANCELLED) longer ago than \
          this, with their step records, messages and events; never one that is still \
          running, sleeping or waiting, nor a child whose parent has not ended. -1 keeps them \
          all.",
        &WORKFLOW_RETENTION,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"eventic.poll_interval",
        c"How often a database worker looks for due jobs when nothing woke it.",
        c"Workers are woken when an enqueue commits; this is the fallback (and the granularity \
          of run_at and retry backoff).",
        &POLL_INTERVAL,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"eventic.max_workers",
        c"How many database workers eventic's launcher runs at once, in all databases.",
        c"They count against max_worker_processes, with the launcher. Every database with \
          eventic gets its first worker before any database gets a second; a database that \
          gets none has a WARNING in the log and a NOTICE at enqueue. Lowered (and reloaded), \
          the extra workers stop at the end of their transaction.",
        &MAX_WORKERS,
        0,
        1024,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"eventic.workers_per_database",
        c"How many workers each database with eventic gets.",
        c"A queue is drained by at most its concurrency (eventic.alter_queue) of them at once. \
          Lowered (and reloaded), the extra workers stop at the end of their transaction.",
        &WORKERS_PER_DATABASE,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"eventic.pause_workers",
        c"Keep eventic's workers from running jobs in a database (set it with ALTER DATABASE).",
        c"For restores through psql: ALTER DATABASE db SET eventic.pause_workers = on before, \
          ALTER DATABASE db RESET eventic.pause_workers after. The workers read it from the \
          catalog at most a second later; set anywhere else (postgresql.conf, a role, a \
          session) it has no effect. pg_restore needs none of this: workers hold off by \
          themselves while a pg_restore session is connected to their database.",
        &PAUSE_WORKERS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"eventic.launcher_database",
        c"The database eventic's launcher connects to, to list the databases.",
        c"Any database that exists; the launcher only reads pg_database there. Read when the \
          launcher starts.",
        &LAUNCHER_DATABASE,
        // not Postmaster: a library loaded after startup (no preload) cannot define those
        GucContext::Sighup,
        GucFlags::default(),
    );
}

/// The settings that exist only when eventic is preloaded (a postmaster setting can be
/// defined only then); called from `_PG_init` only then.
pub fn init_preloaded() {
    GucRegistry::define_int_guc(
        c"eventic.record_address_slots",
        c"How many records' latest addresses shared memory keeps (32 bytes each).",
        c"The next write of a record whose address is kept reads its latest version there \
          instead of searching the primary key. A record's slot is a hash of its id: with more \
          records written than slots, some writes search. 0 keeps none. Read at server start.",
        &RECORD_ADDRESS_SLOTS,
        0,
        1 << 24,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// `eventic.strict_field_names`
pub fn strict_field_names() -> bool {
    STRICT_FIELD_NAMES.get()
}

/// `eventic.speculative_workflows`
pub fn speculative_workflows() -> bool {
    SPECULATIVE_WORKFLOWS.get()
}

/// `eventic.archive_retention`, in seconds
pub fn archive_retention_seconds() -> i32 {
    ARCHIVE_RETENTION.get()
}

/// `eventic.poll_interval`, in milliseconds
pub fn poll_interval_ms() -> i32 {
    POLL_INTERVAL.get()
}

/// `eventic.max_workers`
pub fn max_workers() -> i32 {
    MAX_WORKERS.get()
}

/// `eventic.launcher_database`
pub fn launcher_database() -> String {
    LAUNCHER_DATABASE
        .get()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "postgres".to_string())
}

/// `eventic.record_address_slots` (defined when preloaded; read when shared memory is asked for)
pub fn record_address_slots() -> usize {
    usize::try_from(RECORD_ADDRESS_SLOTS.get()).unwrap_or(0)
}

/// `eventic.workers_per_database`
pub fn workers_per_database() -> i32 {
    WORKERS_PER_DATABASE.get()
}

/// `eventic.workflow_retention`, in seconds; -1 keeps finished workflows for ever
pub fn workflow_retention_seconds() -> i32 {
    WORKFLOW_RETENTION.get()
}
