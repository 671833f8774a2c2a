//! JSON Schema per class: compile (Draft 2020-12, as Pydantic's `model_json_schema()` emits,
//! `$defs`/`$ref` included), validate new versions, and derive typed view columns.

use jsonschema::{Draft, Validator};
use serde_json::Value;

use crate::errors::{EventicError, Result};
use crate::records::fields::{check_field_name, PROPERTIES};

/// Compile `schema` for class `class_name`, or 22023 saying why it is not a JSON Schema.
pub fn compile(class_name: &str, schema: &Value) -> Result<Validator> {
    let invalid = |problem: String| {
        EventicError::invalid(
            format!("json_schema of class {class_name} is not a valid JSON Schema: {problem}"),
            "Pass a Draft 2020-12 JSON Schema object, e.g. the output of Pydantic's \
             Model.model_json_schema().",
        )
    };
    if !schema.is_object() {
        return Err(invalid(format!(
            "it is {}, not an object",
            crate::records::fields::json_type(schema)
        )));
    }
    if let Err(err) = jsonschema::meta::validate(schema) {
        let at = err.instance_path().to_string();
        return Err(invalid(format!(
            "{err} (at {})",
            if at.is_empty() { "/" } else { &at }
        )));
    }
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&with_property_bag(schema))
        .map_err(|err| invalid(err.to_string()))
}

/// The schema as it checks documents: eventic's property bag (`properties`, on every
/// document) declared as a top-level property of any value, so a model's schema that forbids
/// other fields (`additionalProperties: false`, Pydantic's `extra='forbid'`) checks the
/// model's fields and leaves the bag alone.
fn with_property_bag(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        let declared = object
            .entry("properties")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(declared) = declared.as_object_mut() {
            declared
                .entry(PROPERTIES)
                .or_insert_with(|| serde_json::json!({"type": "object"}));
        }
    }
    schema
}

/// The first way `doc` breaks the schema, as the 23514 error for record `id`.
pub fn violation(
    validator: &Validator,
    class_name: &str,
    id: &str,
    doc: &Value,
) -> Option<EventicError> {
    let err = validator.iter_errors(doc).next()?;
    let found = most_specific(&err);
    Some(EventicError::SchemaViolation(Box::new(
        crate::errors::SchemaViolation {
            id: id.to_string(),
            class: class_name.to_string(),
            pointer: found.pointer,
            rule: found.rule,
            message: found.message,
            schema_path: found.schema_path,
        },
    )))
}

struct Found {
    pointer: String,
    rule: String,
    message: String,
    schema_path: String,
}

/// For `anyOf`/`oneOf` (what Pydantic emits for every `Optional[...]`), "not valid under any
/// of the schemas" hides the real problem: report the deepest error among the alternatives
/// instead (the first alternative wins ties, so `X` is preferred over `null`).
fn most_specific(err: &jsonschema::ValidationError<'_>) -> Found {
    use jsonschema::error::ValidationErrorKind as Kind;
    let alternatives = match err.kind() {
        Kind::AnyOf { context } | Kind::OneOfNotValid { context } => Some(context),
        _ => None,
    };
    let deepest = alternatives.and_then(|context| {
        context.iter().flatten().map(most_specific).fold(
            None::<Found>,
            |best, candidate| match best {
                Some(best) if depth(&best.pointer) >= depth(&candidate.pointer) => Some(best),
                _ => Some(candidate),
            },
        )
    });
    match deepest {
        Some(found) => found,
        None => {
            let pointer = err.instance_path().to_string();
            Found {
                pointer: if pointer.is_empty() {
                    "/".into()
                } else {
                    pointer
                },
                rule: err.kind().keyword().to_string(),
                message: err.to_string(),
                schema_path: err.schema_path().to_string(),
            }
        }
    }
}

fn depth(pointer: &str) -> usize {
    pointer.matches('/').count() - usize::from(pointer == "/")
}

/// A typed column of a class view.
#[derive(Debug, PartialEq)]
pub struct ViewColumn {
    pub field: String,
    pub sql_type: &'static str,
}

/// Column names the view itself uses; a schema property with one of these names stays in
/// the document but gets no typed column of its own (except created_at/updated_at, which
/// then come from the document instead of the version rows).
const METADATA_COLUMNS: [&str; 3] = ["id", "version", PROPERTIES];

/// The typed columns for the schema's top-level properties, in the schema's order.
pub fn view_columns(
    class_name: &str,
    schema: &Value,
    strict_names: bool,
) -> Result<Vec<ViewColumn>> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut columns = Vec::new();
    for (field, prop) in properties {
        if METADATA_COLUMNS.contains(&field.as_str()) {
            continue;
        }
        check_field_name(field, strict_names).map_err(|_| {
            EventicError::invalid(
                format!("property {field:?} in the json_schema of class {class_name} is not a valid field name"),
                "Field names are identifiers (letters, digits, underscores), not id, version or class_type.",
            )
        })?;
        columns.push(ViewColumn {
            field: field.clone(),
            sql_type: sql_type(prop, schema, 0),
        });
    }
    Ok(columns)
}

/// Follow a local `$ref` (`#/$defs/Name`, `#/definitions/Name`).
fn resolve<'a>(prop: &'a Value, root: &'a Value) -> &'a Value {
    match prop.get("$ref").and_then(Value::as_str) {
        Some(reference) if reference.starts_with("#/") => {
            root.pointer(&reference[1..]).unwrap_or(prop)
        }
        _ => prop,
    }
}

/// string→text (date-time→timestamptz, uuid→uuid), integer→bigint, number→double precision,
/// boolean→boolean, object/array/anything else→jsonb. `Optional[X]` (anyOf X | null) is X.
fn sql_type(prop: &Value, root: &Value, depth: usize) -> &'static str {
    let prop = resolve(prop, root);
    if depth > 8 {
        return "jsonb";
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(variants) = prop.get(combinator).and_then(Value::as_array) {
            let non_null: Vec<&Value> = variants
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            return match non_null.as_slice() {
                [only] => sql_type(only, root, depth + 1),
                _ => "jsonb",
            };
        }
    }
    let type_name = match prop.get("type") {
        Some(Value::String(t)) => Some(t.as_str()),
        Some(Value::Array(types)) => {
            let non_null: Vec<&str> = types
                .iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect();
            if non_null.len() == 1 {
                Some(non_null[0])
            } else {
                None
            }
        }
        _ => None,
    };
    match type_name {
        Some("string") => match prop.get("format").and_then(Value::as_str) {
            Some("date-time") => "timestamptz",
            Some("uuid") => "uuid",
            _ => "text",
        },
        Some("integer") => "bigint",
        Some("number") => "double precision",
        Some("boolean") => "boolean",
        None if prop
            .get("enum")
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().all(Value::is_string)) =>
        {
            "text"
        }
        _ => "jsonb",
    }
}

/// The SQL expression that reads `field` of `l.data` as `sql_type`. Numbers and booleans are
/// read only when the JSON has that type (versions written before the schema can differ), so
/// a SELECT on the view never fails on old data.
pub fn column_expression(column: &ViewColumn) -> String {
    let key = quote_literal(&column.field);
    let typed = |json_type: &str, cast: &str| {
        format!("CASE WHEN jsonb_typeof(l.data -> {key}) = '{json_type}' THEN (l.data -> {key})::{cast} END")
    };
    match column.sql_type {
        "text" => format!("(l.data ->> {key})"),
        // numbers of any size are stored (exactly): one outside the column's range reads as
        // NULL, never as an error that would fail every read of the view
        "bigint" => format!(
            "CASE WHEN jsonb_typeof(l.data -> {key}) = 'number' \
                   AND (l.data -> {key})::numeric BETWEEN -9223372036854775808 AND 9223372036854775807 \
                  THEN (l.data -> {key})::numeric::bigint END"
        ),
        "double precision" => format!(
            "CASE WHEN jsonb_typeof(l.data -> {key}) = 'number' \
                   AND (abs((l.data -> {key})::numeric) BETWEEN 4.9406564584124654e-324 AND 1.7976931348623157e308 \
                        OR (l.data -> {key})::numeric = 0) \
                  THEN (l.data -> {key})::double precision END"
        ),
        "boolean" => typed("boolean", "boolean"),
        "timestamptz" => format!("(l.data ->> {key})::timestamptz"),
        "uuid" => format!("(l.data ->> {key})::uuid"),
        _ => format!("(l.data -> {key})"),
    }
}

pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    /// What Pydantic v2 emits for a model with optional fields and a nested model.
    fn pydantic_story() -> Value {
        json!({
            "$defs": {"Author": {"properties": {"name": {"type": "string"}}, "required": ["name"], "type": "object"}},
            "properties": {
                "title": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
                "words": {"type": "integer"},
                "score": {"type": "number"},
                "draft": {"type": "boolean"},
                "published_at": {"format": "date-time", "type": "string"},
                "editor_id": {"format": "uuid", "type": "string"},
                "tags": {"items": {"type": "string"}, "type": "array"},
                "author": {"$ref": "#/$defs/Author"},
                "properties": {"type": "object"}
            },
            "required": ["words"],
            "title": "Story",
            "type": "object"
        })
    }

    #[test]
    fn pydantic_schema_maps_to_typed_columns() {
        let columns = view_columns("Story", &pydantic_story(), true).unwrap();
        let types: Vec<(&str, &str)> = columns
            .iter()
            .map(|c| (c.field.as_str(), c.sql_type))
            .collect();
        assert_eq!(
            types,
            vec![
                ("title", "text"),
                ("words", "bigint"),
                ("score", "double precision"),
                ("draft", "boolean"),
                ("published_at", "timestamptz"),
                ("editor_id", "uuid"),
                ("tags", "jsonb"),
                ("author", "jsonb"),
            ]
        );
    }

    #[test]
    fn violations_name_the_pointer_and_rule() {
        let schema = pydantic_story();
        let validator = compile("Story", &schema).unwrap();
        assert!(violation(
            &validator,
            "Story",
            "x",
            &json!({"words": 3, "author": {"name": "A"}})
        )
        .is_none());
        let err = violation(
            &validator,
            "Story",
            "x",
            &json!({"words": 3, "author": {"name": 5}}),
        )
        .unwrap();
        match err {
            EventicError::SchemaViolation(v) => {
                assert_eq!(v.pointer, "/author/name");
                assert_eq!(v.rule, "type");
            }
            other => panic!("unexpected {other:?}"),
        }
        // Optional[Author]: the error inside the Author alternative, not "anyOf failed"
        let optional = json!({
            "$defs": {"Author": {"properties": {"name": {"type": "string"}}, "type": "object"}},
            "properties": {"author": {"anyOf": [{"$ref": "#/$defs/Author"}, {"type": "null"}]}}
        });
        let optional_validator = compile("Story", &optional).unwrap();
        match violation(
            &optional_validator,
            "Story",
            "x",
            &json!({"author": {"name": 7}}),
        )
        .unwrap()
        {
            EventicError::SchemaViolation(v) => {
                assert_eq!(v.pointer, "/author/name");
                assert_eq!(v.rule, "type");
            }
            other => panic!("unexpected {other:?}"),
        }
        let missing = violation(&validator, "Story", "x", &json!({})).unwrap();
        assert!(matches!(missing, EventicError::SchemaViolation(ref v) if v.rule == "required"));
        let bad_date = violation(
            &validator,
            "Story",
            "x",
            &json!({"words": 1, "published_at": "yesterday"}),
        );
        assert!(bad_date.is_some(), "formats are validated");
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(compile("Story", &json!({"type": "strnig"})).is_err());
        assert!(compile("Story", &json!([1])).is_err());
        assert!(compile("Story", &json!({"properties": {"a": {"minLength": -1}}})).is_err());
    }
}
