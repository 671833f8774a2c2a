//! Pure JSON logic for records: which names are allowed, what a patch looks like,
//! what changed between two versions. No Postgres calls here, so it is unit-tested with
//! plain `cargo test`.

use serde_json::{Map, Value};

use crate::errors::{EventicError, Result};

/// Keys `hydrate` adds from the version row's columns; a document cannot carry them.
pub const RESERVED_FIELDS: [&str; 3] = ["id", "version", "class_type"];
/// The free-form bag every record has.
pub const PROPERTIES: &str = "properties";

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 63
}

/// A class name is an identifier (`Story`, `StoryDraft`) or, for tracked tables, `schema.table`.
pub fn check_class_name(name: &str) -> Result<()> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| is_identifier(p)) {
        Ok(())
    } else {
        Err(EventicError::invalid(
            format!("invalid class name {name:?}"),
            "A class name is letters, digits and underscores, starting with a letter or underscore \
             (at most 63 characters), optionally schema-qualified: Story, StoryDraft, public.orders.",
        ))
    }
}

/// A field is what a Pydantic model attribute would be: an identifier (with `strict_names`;
/// otherwise any non-empty key), not one of the reserved keys. `properties` is a field too,
/// but only an object may be stored in it.
pub fn check_field(name: &str, value: &Value, strict_names: bool) -> Result<()> {
    check_field_name(name, strict_names)?;
    if name == PROPERTIES && !value.is_object() {
        return Err(EventicError::invalid(
            "field \"properties\" must be a JSON object",
            "Use eventic.add_property(id, key, value) / eventic.remove_property(id, key).",
        ));
    }
    Ok(())
}

/// The name rules of [`check_field`] alone (the value is checked only for `properties`).
pub fn check_field_name(name: &str, strict_names: bool) -> Result<()> {
    let acceptable = if strict_names {
        is_identifier(name)
    } else {
        !name.is_empty()
    };
    if !acceptable {
        return Err(EventicError::invalid(
            format!("invalid field name {name:?}"),
            "A field name is letters, digits and underscores, starting with a letter or \
             underscore, at most 63 characters (SET eventic.strict_field_names = off accepts \
             any non-empty key).",
        ));
    }
    if RESERVED_FIELDS.contains(&name) {
        return Err(EventicError::invalid(
            format!("field {name:?} is reserved"),
            "id, version and class_type come from the version row; pass the id as the id \
             argument and let eventic number the versions.",
        ));
    }
    Ok(())
}

/// Check a whole document (create) or patch (set_fields): an object whose keys are all valid.
pub fn check_document<'a>(
    doc: &'a Value,
    what: &str,
    strict_names: bool,
) -> Result<&'a Map<String, Value>> {
    let map = doc.as_object().ok_or_else(|| {
        EventicError::invalid(
            format!("{what} must be a JSON object, not {}", json_type(doc)),
            "Pass an object such as '{\"title\": \"Once upon a time\"}'::jsonb.",
        )
    })?;
    for (name, value) in map {
        check_field(name, value, strict_names)?;
    }
    Ok(map)
}

pub fn check_property_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(EventicError::invalid(
            "property key must not be empty",
            "Pass a non-empty key such as 'featured'.",
        ));
    }
    Ok(())
}

pub fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A change from one document to the next: keys to set and keys to remove.
#[derive(Debug, Default, PartialEq)]
pub struct Patch {
    pub set: Map<String, Value>,
    pub removed: Vec<String>,
}

impl Patch {
    /// The patch that turns `old` into `new` (both objects).
    pub fn between(old: &Map<String, Value>, new: &Map<String, Value>) -> Patch {
        let set = new
            .iter()
            .filter(|(k, v)| old.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        Patch { set, removed }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.removed.is_empty()
    }
}

/// Names of the fields whose value differs between two versions (a field that appears or
/// disappears counts as changed), sorted. The first version (no `old`) changes every field it has.
pub fn changed_fields(old: Option<&Map<String, Value>>, new: &Map<String, Value>) -> Vec<String> {
    let Some(old) = old else {
        let mut names: Vec<String> = new.keys().cloned().collect();
        names.sort();
        return names;
    };
    let mut names: Vec<String> = old
        .keys()
        .chain(new.keys().filter(|k| !old.contains_key(*k)))
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect();
    names.sort();
    names
}

/// `{"field": {"old": …, "new": …}}` for every field that differs.
pub fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    for name in changed_fields(Some(old), new) {
        let mut pair = Map::new();
        pair.insert("old".into(), old.get(&name).cloned().unwrap_or(Value::Null));
        pair.insert("new".into(), new.get(&name).cloned().unwrap_or(Value::Null));
        out.insert(name, Value::Object(pair));
    }
    Value::Object(out)
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn class_names() {
        assert!(check_class_name("Story").is_ok());
        assert!(check_class_name("public.orders").is_ok());
        for bad in ["", "1Story", "Story Draft", "a.b.c", "x;drop", "Story-1"] {
            assert!(check_class_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn field_names() {
        assert!(check_field("title", &json!("x"), true).is_ok());
        assert!(check_field("properties", &json!({}), true).is_ok());
        for bad in ["", "9lives", "a b", "version", "id", "class_type"] {
            assert!(
                check_field(bad, &json!(1), true).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(check_field("properties", &json!([1]), true).is_err());
        // relaxed: any non-empty key that is not reserved
        assert!(check_field("first-name", &json!(1), false).is_ok());
        for bad in ["", "version"] {
            assert!(
                check_field(bad, &json!(1), false).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn patch_between_documents() {
        let old = obj(json!({"a": 1, "b": 2, "c": 3}));
        let new = obj(json!({"a": 1, "b": 5, "d": 4}));
        let patch = Patch::between(&old, &new);
        assert_eq!(patch.set, obj(json!({"b": 5, "d": 4})));
        assert_eq!(patch.removed, vec!["c".to_string()]);
        assert!(Patch::between(&old, &old).is_empty());
    }

    #[test]
    fn diff_reports_old_and_new() {
        let old = obj(json!({"title": "a", "body": null}));
        let new = obj(json!({"title": "b", "body": null, "tags": [1]}));
        assert_eq!(
            diff(&old, &new),
            json!({"title": {"old": "a", "new": "b"}, "tags": {"old": null, "new": [1]}})
        );
        assert_eq!(changed_fields(None, &new).len(), 3);
    }
}
