//! Every `eventic.*` setting (GUC), with its accessor. Registered from `_PG_init`, so they
//! exist as soon as the library is loaded (preloaded or on first use).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

static STRICT_FIELD_NAMES: GucSetting<bool> = GucSetting::<bool>::new(true);

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
}

/// `eventic.strict_field_names`
pub fn strict_field_names() -> bool {
    STRICT_FIELD_NAMES.get()
}
