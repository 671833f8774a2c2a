// `#[pg_test]` unit tests: each runs inside a Postgres backend (in its own transaction) via
// `cargo pgrx test`. SQL-surface details are covered by `pg_test/` regression files; these
// check the Rust write path and error mapping from inside.

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::json;

const STORY: &str = "00000000-0000-7000-8000-0000000000a1";

fn create_story() -> Uuid {
    Spi::get_one::<Uuid>(&format!(
        "SELECT eventic.create('Story', '{{\"title\": \"a\"}}', '{STORY}')"
    ))
    .expect("create")
    .expect("an id")
}

fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql).expect("query").expect("a value")
}

#[pg_test]
fn create_then_hydrate_returns_the_model_dump() {
    create_story();
    let doc = one::<JsonB>(&format!("SELECT eventic.hydrate('{STORY}')")).0;
    assert_eq!(
        doc,
        json!({"id": STORY, "version": 0, "class_type": "Story", "title": "a", "properties": {}})
    );
}

#[pg_test]
fn set_field_appends_versions_built_on_the_latest() {
    create_story();
    assert_eq!(one::<i32>(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"b\"')")), 1);
    assert_eq!(one::<i32>(&format!("SELECT eventic.set_field('{STORY}', 'body', '\"x\"')")), 2);
    let doc = one::<JsonB>(&format!("SELECT eventic.hydrate('{STORY}')")).0;
    assert_eq!(doc["title"], json!("b"));
    assert_eq!(doc["body"], json!("x"));
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM eventic.records WHERE id = '{STORY}'")), 3);
}

#[pg_test]
fn setting_the_current_value_writes_nothing() {
    create_story();
    assert_eq!(one::<i32>(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"a\"')")), 0);
    assert_eq!(one::<i32>(&format!("SELECT eventic.set_fields('{STORY}', '{{}}')")), 0);
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM eventic.records WHERE id = '{STORY}'")), 1);
}

#[pg_test(error = "record 00000000-0000-7000-8000-0000000000a1 is at version 1, not at the expected version 0")]
fn stale_expected_version_is_refused() {
    create_story();
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"b\"', 0)")).unwrap();
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"c\"', 0)")).unwrap();
}

#[pg_test(error = "record 00000000-0000-7000-8000-0000000000ff does not exist")]
fn unknown_record_is_reported() {
    Spi::run("SELECT eventic.set_field('00000000-0000-7000-8000-0000000000ff', 'a', '1')").unwrap();
}

#[pg_test(error = "invalid field name \"not a field\"")]
fn bad_field_name_is_refused() {
    create_story();
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'not a field', '1')")).unwrap();
}

#[pg_test(error = "record 00000000-0000-7000-8000-0000000000a1 was deleted at version 1")]
fn writes_after_delete_are_refused() {
    create_story();
    assert_eq!(one::<i32>(&format!("SELECT eventic.delete('{STORY}')")), 1);
    // the earlier version stays readable
    assert_eq!(one::<JsonB>(&format!("SELECT eventic.hydrate('{STORY}', 0)")).0["title"], json!("a"));
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"z\"')")).unwrap();
}

#[pg_test]
fn update_of_records_appends_one_version_and_keeps_old_rows() {
    create_story();
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"b\"')")).unwrap();
    Spi::run(&format!(
        "UPDATE eventic.records SET data = data || '{{\"body\": \"x\"}}' WHERE id = '{STORY}'"
    ))
    .unwrap();
    assert_eq!(one::<i64>(&format!("SELECT count(*) FROM eventic.records WHERE id = '{STORY}'")), 3);
    let v0 = one::<JsonB>(&format!("SELECT data FROM eventic.records WHERE id = '{STORY}' AND version = 0")).0;
    assert_eq!(v0, json!({"title": "a", "properties": {}}));
    let v2 = one::<JsonB>(&format!("SELECT data FROM eventic.records WHERE id = '{STORY}' AND version = 2")).0;
    assert_eq!(v2, json!({"title": "b", "body": "x", "properties": {}}));
}

#[pg_test]
fn history_lists_changed_fields_oldest_first() {
    create_story();
    Spi::run(&format!("SELECT eventic.set_fields('{STORY}', '{{\"title\": \"b\", \"n\": 1}}')")).unwrap();
    Spi::run(&format!("SELECT eventic.add_property('{STORY}', 'featured')")).unwrap();
    let changed = one::<String>(&format!(
        "SELECT string_agg(version || ':' || array_to_string(changed_fields, ','), ' ' ORDER BY version) \
           FROM eventic.history('{STORY}')"
    ));
    assert_eq!(changed, "0:properties,title 1:n,title 2:properties");
}

#[pg_test]
fn diff_reports_old_and_new_values() {
    create_story();
    Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'title', '\"b\"')")).unwrap();
    let diff = one::<JsonB>(&format!("SELECT eventic.diff('{STORY}', 0, 1)")).0;
    assert_eq!(diff, json!({"title": {"old": "a", "new": "b"}}));
}

#[pg_test(error = "version rows of eventic.records cannot be deleted")]
fn deleting_history_is_refused() {
    create_story();
    Spi::run("DELETE FROM eventic.records").unwrap();
}

#[pg_test]
fn relaxed_field_names_accept_any_key() {
    create_story();
    Spi::run("SET LOCAL eventic.strict_field_names = off").unwrap();
    assert_eq!(one::<i32>(&format!("SELECT eventic.set_field('{STORY}', 'first-name', '\"Ada\"')")), 1);
    Spi::run("SET LOCAL eventic.strict_field_names = on").unwrap();
    let accepted = PgTryBuilder::new(|| {
        Spi::run(&format!("SELECT eventic.set_field('{STORY}', 'last-name', '\"L\"')")).is_ok()
    })
    .catch_others(|_| false)
    .execute();
    assert!(!accepted, "strict names refuse last-name");
}

#[pg_test]
fn view_update_without_properties_keeps_the_bag() {
    create_story();
    Spi::run(&format!("SELECT eventic.add_property('{STORY}', 'featured')")).unwrap();
    Spi::run(&format!("UPDATE eventic.latest SET data = '{{\"title\": \"c\"}}' WHERE id = '{STORY}'"))
        .unwrap();
    let doc = one::<JsonB>(&format!("SELECT eventic.hydrate('{STORY}')")).0;
    assert_eq!(doc["title"], json!("c"));
    assert_eq!(doc["properties"], json!({"featured": true}));
}

/// The one-pass merge of the direct write path gives exactly what `base || (over - key)` gives,
/// byte for byte (jsonb equality would hide a wrong key order).
#[pg_test]
fn merge_objects_is_concat_without_the_skipped_key() {
    use crate::raw_jsonb::RawJsonb;
    use crate::records::jsonb_fn::merge_objects;
    let many = (many_keys(0, 40), many_keys(20, 60), many_keys(0, 70));
    let cases: [(&str, &str, Option<&str>); 13] = [
        (r#"{}"#, r#"{}"#, None),
        (r#"{"a": 1}"#, r#"{}"#, None),
        (r#"{}"#, r#"{"a": 1, "bb": [1, {"c": 2}]}"#, None),
        (r#"{"a": 1, "ccc": 3, "dd": {"x": [1, 2]}}"#, r#"{"b": 2, "ccc": "new", "e": null}"#, None),
        (r#"{"title": "a", "properties": {"k": 1}, "zz": true}"#, r#"{"id": 7, "title": "b", "body": "x"}"#, Some("id")),
        (r#"{"id": "kept", "n": 1}"#, r#"{"id": 7, "n": 2}"#, Some("id")),
        (r#"{"aaaa": 1, "b": 2}"#, r#"{"aaaa": {"deep": [[1], {"e": 1.50}]}, "ccc": 1e400}"#, Some("zz")),
        // numbers and nested values after strings of every length mod 4 (alignment padding)
        (r#"{"a": "x", "bb": 1.5, "ccc": "xyz", "dddd": [1, "two", 3.25], "e": true, "f": false, "g": null}"#,
         r#"{"a": "xy", "bb": -7, "h": {"k": [1.0, {"m": null}]}, "ii": "ü✓", "": ""}"#, None),
        (r#"{"n1": 1, "n2": 22.0, "s": "", "o": {}, "l": []}"#, r#"{"n1": 1, "s": "abc", "o": {"x": 1}, "id": 3}"#, Some("id")),
        // more than 32 items: every 32nd entry stores an offset
        (many.0.as_str(), many.1.as_str(), None),
        (many.2.as_str(), r#"{"k05": "changed", "zzz": 1.25}"#, Some("k07")),
        // not two objects: the operators' answer
        (r#"[1, 2]"#, r#"{"a": 1}"#, None),
        (r#"{"a": 1}"#, r#"[3]"#, None),
    ];
    for (base, over, skip) in cases {
        // SAFETY: two jsonb datums.
        let merged = RawJsonb::from_raw(unsafe { merge_objects(jsonb(base), jsonb(over), skip) });
        let expected = match skip {
            Some(key) => format!("SELECT '{base}'::jsonb || ('{over}'::jsonb - '{key}')"),
            None => format!("SELECT '{base}'::jsonb || '{over}'::jsonb"),
        };
        let same = Spi::get_one_with_args::<bool>(
            &format!("SELECT jsonb_send($1) = jsonb_send(({expected}))"),
            &[merged.into()],
        );
        assert_eq!(same, Ok(Some(true)), "{base} || {over} - {skip:?}");
    }
}

/// `text::jsonb`, in the test's memory context.
#[cfg(any(test, feature = "pg_test"))]
fn jsonb(text: &str) -> pgrx::pg_sys::Datum {
    let text = std::ffi::CString::new(text).expect("no NUL");
    // SAFETY: jsonb_in of a C string.
    unsafe {
        pgrx::direct_function_call_as_datum(pgrx::pg_sys::jsonb_in, &[Some(pgrx::pg_sys::Datum::from(text.as_ptr()))])
    }
    .expect("a jsonb")
}

/// `{"k<from>": <from>, ... }` up to `to` (exclusive), numbers and strings alternating.
#[cfg(any(test, feature = "pg_test"))]
fn many_keys(from: usize, to: usize) -> String {
    let pairs: Vec<String> = (from..to)
        .map(|i| if i % 2 == 0 { format!(r#""k{i:02}": {i}.5"#) } else { format!(r#""k{i:02}": "v{i}""#) })
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// What the merge tells of its result: the same pairs, a difference it is sure of, or one only
/// jsonb's comparison can tell (a number stored with another scale).
#[pg_test]
fn merge_objects_tells_whether_the_result_differs() {
    use crate::records::jsonb_fn::{merge_objects_telling, Sameness};
    let cases = [
        (r#"{"a": 1, "b": "x", "c": [1]}"#, r#"{"a": 1, "b": "x", "c": [1], "id": 9}"#, Sameness::Same),
        (r#"{"a": 1, "b": "x"}"#, r#"{"b": "y"}"#, Sameness::Differs),
        (r#"{"a": 1, "b": "x"}"#, r#"{"c": null}"#, Sameness::Differs),
        (r#"{"a": 1, "b": "x"}"#, r#"{"a": "1"}"#, Sameness::Differs),
        (r#"{"a": 1, "b": true}"#, r#"{"b": false}"#, Sameness::Differs),
        (r#"{"a": 1.0}"#, r#"{"a": 1}"#, Sameness::Unknown),
        (r#"{"a": {"x": 1.0}}"#, r#"{"a": {"x": 1}}"#, Sameness::Unknown),
    ];
    for (base, over, want) in cases {
        // SAFETY: two jsonb objects.
        let (_, told) = unsafe { merge_objects_telling(jsonb(base), jsonb(over), Some("id")) };
        assert_eq!(told, want, "{base} || {over}");
    }
}

/// The tracked row's document built straight from its columns is the jsonb `to_jsonb(row) -
/// key` makes, byte for byte (numbers from integers, strings, booleans, nulls), and a row with
/// a column of another type is left to `to_jsonb`.
#[pg_test]
fn plain_row_to_jsonb_is_to_jsonb_without_the_key() {
    use crate::raw_jsonb::RawJsonb;
    use crate::records::jsonb_fn::plain_row_to_jsonb;
    use pgrx::pg_sys;
    use pgrx::IntoDatum;
    Spi::run(
        "CREATE TABLE plain_rows (id uuid PRIMARY KEY, flag bool, small int2, medium int4, big int8,
                                  title text, code varchar(10), dropped int)",
    )
    .expect("table");
    Spi::run("ALTER TABLE plain_rows DROP COLUMN dropped").expect("drop");
    type Case = (Option<bool>, Option<i16>, Option<i32>, Option<i64>, Option<&'static str>, Option<&'static str>);
    let cases: [Case; 6] = [
        (Some(true), Some(0), Some(0), Some(0), Some(""), Some("")),
        (Some(false), Some(i16::MIN), Some(i32::MIN), Some(i64::MIN), Some("a \"quoted\" \\ line\nnext"), Some("ütf-8 ✓")),
        (None, Some(i16::MAX), Some(i32::MAX), Some(i64::MAX), None, None),
        (Some(true), Some(-1), Some(9999), Some(10000), Some("x"), Some("y")),
        (Some(false), Some(10000), Some(-10000), Some(12_345_678_901), Some("{\"not\": \"json\"}"), Some("0")),
        (None, None, None, None, None, None),
    ];
    let relid = Spi::get_one::<pg_sys::Oid>("SELECT 'plain_rows'::regclass::oid").expect("oid").expect("oid");
    for (n, (flag, small, medium, big, title, code)) in cases.into_iter().enumerate() {
        let id = pgrx::Uuid::from_bytes([n as u8 + 1; 16]);
        Spi::run_with_args(
            "INSERT INTO plain_rows VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[id.into(), flag.into(), small.into(), medium.into(), big.into(), title.into(), code.into()],
        )
        .expect("insert");
        let zero = pg_sys::Datum::from(0usize);
        let mut values = [
            id.into_datum().unwrap_or(zero),
            flag.into_datum().unwrap_or(zero),
            small.into_datum().unwrap_or(zero),
            medium.into_datum().unwrap_or(zero),
            big.into_datum().unwrap_or(zero),
            title.into_datum().unwrap_or(zero),
            code.into_datum().unwrap_or(zero),
            zero,
        ];
        let mut nulls = [
            false,
            flag.is_none(),
            small.is_none(),
            medium.is_none(),
            big.is_none(),
            title.is_none(),
            code.is_none(),
            true,
        ];
        // SAFETY: a row formed for the table's own descriptor, read while the table is open.
        let doc = unsafe {
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
            let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            let doc = plain_row_to_jsonb(tuple, (*rel).rd_att, "id");
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            doc
        };
        let doc = RawJsonb::from_raw(doc.expect("plain columns"));
        let same = Spi::get_one_with_args::<bool>(
            "SELECT jsonb_send($1) = jsonb_send(to_jsonb(p) - 'id') FROM plain_rows p WHERE id = $2",
            &[doc.into(), id.into()],
        );
        assert_eq!(same, Ok(Some(true)), "case {n}");
    }
    // a column of another type: not built here
    Spi::run("ALTER TABLE plain_rows ADD COLUMN at timestamptz").expect("add");
    // SAFETY: as above.
    let other = unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
        let mut values = [pg_sys::Datum::from(0usize); 9];
        let mut nulls = [true; 9];
        let tuple = pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
        let doc = plain_row_to_jsonb(tuple, (*rel).rd_att, "id");
        pg_sys::table_close(rel, pg_sys::NoLock as i32);
        doc
    };
    assert!(other.is_none());
}

/// Setting one key straight in jsonb's binary form gives exactly what `jsonb_set` gives, byte
/// for byte, for every kind of value, a key that exists and one that does not.
#[pg_test]
fn set_key_is_jsonb_set() {
    use crate::raw_jsonb::RawJsonb;
    use crate::records::jsonb_fn::set_key_telling;
    let docs = [r#"{}"#, r#"{"a": "x", "title": "old", "n": 1.50, "properties": {"k": [1, 2.0]}}"#];
    let values = [
        r#""new""#, r#""""#, "7", "-1.250", "1e400", "true", "false", "null", "{}", "[]",
        r#"{"x": [1, {"y": 2.5}], "s": "t"}"#, r#"[1, "two", 3.0, null, [true]]"#,
    ];
    for doc in docs {
        for key in ["title", "zz", "a", "n"] {
            for value in values {
                // SAFETY: two jsonb datums.
                let (set, _) = unsafe { set_key_telling(jsonb(doc), key, jsonb(value)) };
                let same = Spi::get_one_with_args::<bool>(
                    &format!("SELECT jsonb_send($1) = jsonb_send(jsonb_set('{doc}'::jsonb, '{{{key}}}', '{value}'::jsonb))"),
                    &[RawJsonb::from_raw(set).into()],
                );
                assert_eq!(same, Ok(Some(true)), "{doc} set {key} = {value}");
            }
        }
    }
}

#[pg_test]
fn a_schedule_found_due_by_a_clock_a_moment_ahead_of_the_workers_runs_its_tick_once() {
    // a worker woken just before a tick reads its clock in the second before it, and the
    // query that finds the schedule due reads a later one: the tick fired must be the one due
    Spi::run("CREATE FUNCTION public.scheduled_noop() RETURNS void LANGUAGE sql AS 'SELECT'")
        .expect("function");
    Spi::run("SELECT eventic.schedule('early', '*/2 * * * * *', 'public.scheduled_noop()', '[]')")
        .expect("schedule");
    let due = one::<i64>(
        "SELECT EXTRACT(epoch FROM pg_catalog.date_trunc('second', clock_timestamp()))::int8 / 2 * 2 - 10",
    );
    Spi::run(&format!(
        "UPDATE eventic.schedule_entries SET next_run = to_timestamp({due}) WHERE name = 'early'"
    ))
    .expect("due");
    crate::schedules::fire_with(|| ((due - 1) * 1_000_000, 0)).expect("fire");
    let (last_run, next_run) = Spi::get_two::<i64, i64>(
        "SELECT EXTRACT(epoch FROM last_run)::int8, EXTRACT(epoch FROM next_run)::int8
           FROM eventic.schedule_entries WHERE name = 'early'",
    )
    .expect("schedule row");
    assert_eq!((last_run, next_run), (Some(due), Some(due + 2)));
    let keys = one::<Vec<String>>("SELECT array_agg(dedup_key) FROM eventic.queue_schedules");
    let tick = one::<String>(&format!(
        "SELECT to_char(to_timestamp({due}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    ));
    assert_eq!(keys, vec![format!("schedule:early@{tick}")]);
}
