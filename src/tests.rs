//! `#[pg_test]` unit tests: run inside a Postgres backend by `cargo pgrx test`.

use pgrx::prelude::*;

#[pg_test]
fn set_field_appends_a_version() {
    let id = Spi::get_one::<pgrx::Uuid>("SELECT eventic.create('Story', '{\"title\": \"a\"}')")
        .unwrap()
        .unwrap();
    let v = Spi::get_one_with_args::<i32>(
        "SELECT eventic.set_field($1, 'title', '\"b\"')",
        &[id.into()],
    )
    .unwrap();
    assert_eq!(v, Some(1));
}
