//! Every `eventic.*` setting (GUC), with its accessor. Registered from `_PG_init`, so they
//! exist as soon as the library is loaded (preloaded or on first use).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static STRICT_FIELD_NAMES: GucSetting<bool> = GucSetting::<bool>::new(true);
static ARCHIVE_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(86_400);

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
}

/// `eventic.strict_field_names`
pub fn strict_field_names() -> bool {
    STRICT_FIELD_NAMES.get()
}

/// `eventic.archive_retention`, in seconds
pub fn archive_retention_seconds() -> i32 {
    ARCHIVE_RETENTION.get()
}
