"""Tracked rows updated by one statement get their versions at the end of the statement, in
record-id order (src/classes/tracked_batch.rs): the same versions as one by one, no write of the
same connection overtaken, nothing kept past an error or a rolled-back subtransaction."""

import psycopg
import pytest

ROWS = 200


def tracked_table(conn, name, rows=ROWS):
    conn.execute(f"CREATE TABLE {name} (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), title text, qty int)")
    conn.execute(f"INSERT INTO {name} (title, qty) SELECT 'row ' || g, g FROM generate_series(1, {rows}) g")
    conn.execute(f"SELECT eventic.track('{name}')")


def versions_by_record(conn, name):
    return dict(
        conn.execute(
            f"SELECT id, array_agg(version ORDER BY version) FROM eventic.records"
            f" WHERE class_type = 'public.{name}' GROUP BY id"
        ).fetchall()
    )


def test_a_statement_appends_each_rows_version_in_record_order(cluster, db):
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt")
        conn.execute("UPDATE bt SET title = title || ' changed'")
        assert set(map(tuple, versions_by_record(conn, "bt").values())) == {(0, 1)}
        wrong = conn.execute(
            "SELECT count(*) FROM bt JOIN eventic.latest l ON l.id = bt.id"
            " WHERE l.data ->> 'title' IS DISTINCT FROM bt.title OR (l.data ->> 'qty')::int <> bt.qty"
        ).fetchone()[0]
        assert wrong == 0
        # version ids are UUIDv7, increasing in the order the versions were appended
        appended = [
            r[0]
            for r in conn.execute(
                "SELECT id FROM eventic.records WHERE class_type = 'public.bt' AND version = 1"
                " ORDER BY version_id"
            )
        ]
        assert appended == sorted(appended, key=lambda u: u.bytes)
        assert appended != [r[0] for r in conn.execute("SELECT id FROM bt ORDER BY ctid")]


def test_a_write_by_a_later_trigger_comes_after_the_rows_version(cluster, db):
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt", rows=3)
        # an AFTER trigger of the same statement writing the row's record (named to run after
        # eventic's): its set_field must build on the row's version, not precede it
        conn.execute(
            """CREATE FUNCTION note_change() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM eventic.set_field(NEW.id, 'note', to_jsonb('seen ' || NEW.title)); RETURN NULL; END $$"""
        )
        conn.execute("CREATE TRIGGER zz_note AFTER UPDATE ON bt FOR EACH ROW EXECUTE FUNCTION note_change()")
        conn.execute("UPDATE bt SET title = 'new'")
        for (record,) in conn.execute("SELECT id FROM bt").fetchall():
            rows = conn.execute(
                "SELECT version, data ->> 'title', data ->> 'note' FROM eventic.records WHERE id = %s ORDER BY version",
                (record,),
            ).fetchall()
            assert [r[0] for r in rows] == [0, 1, 2]
            assert rows[1][1:] == ("new", None), "version 1 is the row's change"
            assert rows[2][1:] == ("new", "seen new"), "version 2 is the trigger's set_field over it"


@pytest.mark.parametrize("failure", ["raise", "while_appending"])
def test_rows_appended_inside_a_subtransaction_that_fails_are_appended_again(cluster, db, failure):
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt", rows=20)
        tracked_table(conn, "inner_t", rows=5)
        conn.execute(
            """SELECT eventic.register_class('public.inner_t', '{"type": "object",
                 "properties": {"qty": {"type": "integer", "minimum": 0}}}')"""
        )
        # for each row of bt an AFTER trigger runs an UPDATE of another tracked table in a
        # subtransaction that fails (after that UPDATE, or while its end appends what bt's
        # statement has kept so far and its own rows): the subtransaction rolls back what was
        # appended in it
        inner = {
            "raise": "UPDATE inner_t SET qty = qty + 1; RAISE EXCEPTION 'undo';",
            "while_appending": "UPDATE inner_t SET qty = -1;",
        }[failure]
        conn.execute(
            f"""CREATE FUNCTION touch_inner() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 BEGIN
                   {inner}
                 EXCEPTION WHEN raise_exception OR check_violation THEN NULL;
                 END;
                 RETURN NULL;
               END $$"""
        )
        conn.execute("CREATE TRIGGER zz_inner AFTER UPDATE ON bt FOR EACH ROW EXECUTE FUNCTION touch_inner()")
        conn.execute("UPDATE bt SET qty = qty * 10")
        assert set(map(tuple, versions_by_record(conn, "bt").values())) == {(0, 1)}
        assert set(map(tuple, versions_by_record(conn, "inner_t").values())) == {(0,)}
        wrong = conn.execute(
            "SELECT count(*) FROM bt JOIN eventic.latest l ON l.id = bt.id WHERE (l.data ->> 'qty')::int <> bt.qty"
        ).fetchone()[0]
        assert wrong == 0


def test_a_statement_failing_while_it_appends_leaves_nothing_behind(cluster, db):
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt", rows=50)
        conn.execute(
            """SELECT eventic.register_class('public.bt', '{"type": "object",
                 "properties": {"qty": {"type": "integer", "minimum": 0}}}')"""
        )
        conn.autocommit = False
        conn.execute("SAVEPOINT s")
        # the last rows in record order break the schema: the first ones were appended
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE bt SET qty = CASE WHEN qty = 50 THEN -1 ELSE qty + 100 END")
        conn.execute("ROLLBACK TO SAVEPOINT s")
        conn.execute("UPDATE bt SET title = 'after' WHERE qty = 1")
        conn.commit()
        versions = versions_by_record(conn, "bt")
        changed = conn.execute("SELECT id FROM bt WHERE qty = 1").fetchone()[0]
        assert versions.pop(changed) == [0, 1]
        assert set(map(tuple, versions.values())) == {(0,)}
        assert conn.execute("SELECT data ->> 'title', (data ->> 'qty')::int FROM eventic.latest WHERE id = %s",
                            (changed,)).fetchone() == ("after", 1)


def test_a_statement_of_one_row_appends_at_once(cluster, db):
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt", rows=3)
        # a later AFTER trigger of the statement notes the version it sees
        conn.execute("CREATE TABLE seen (id uuid, version int)")
        conn.execute(
            """CREATE FUNCTION note_version() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO seen SELECT NEW.id, max(version) FROM eventic.records WHERE id = NEW.id;
                     RETURN NULL; END $$"""
        )
        conn.execute("CREATE TRIGGER zz_seen AFTER UPDATE ON bt FOR EACH ROW EXECUTE FUNCTION note_version()")
        conn.execute("UPDATE bt SET title = 'one' WHERE qty = 1")
        assert conn.execute("SELECT version FROM seen").fetchall() == [(1,)], "nothing to sort: appended by its trigger"
        conn.execute("TRUNCATE seen")
        conn.execute("UPDATE bt SET title = 'all'")
        # (the row updated before is at version 1, the others at 0: their new versions come later)
        assert sorted(conn.execute("SELECT version FROM seen").fetchall()) == [(0,), (0,), (1,)], (
            "a statement of many rows appends at its end, after the other AFTER triggers"
        )


def test_kept_rows_are_appended_as_the_role_that_changed_them(cluster, db):
    """A SECURITY DEFINER function writing eventic from a later AFTER trigger makes the kept
    rows append first: they are appended as the role that changed them, not as its owner."""
    role = "batch_writer_" + db
    with cluster.connect(dbname=db) as conn:
        tracked_table(conn, "bt", rows=3)
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT SELECT, UPDATE ON bt TO {role}")
        story = conn.execute("SELECT eventic.create('Story', '{\"n\": 0}')").fetchone()[0]
        conn.execute(
            f"""CREATE FUNCTION count_changes() RETURNS void LANGUAGE sql SECURITY DEFINER
                SET search_path = pg_catalog, pg_temp
                AS $$ SELECT eventic.set_field('{story}', 'n', to_jsonb(pg_catalog.random())) $$"""
        )
        conn.execute(
            """CREATE FUNCTION after_change() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN PERFORM count_changes(); RETURN NULL; END $$"""
        )
        conn.execute("CREATE TRIGGER zz_count AFTER UPDATE ON bt FOR EACH ROW EXECUTE FUNCTION after_change()")
    try:
        with cluster.connect(dbname=db, user=role) as conn:
            conn.execute("UPDATE bt SET title = 'by the role'")
        with cluster.connect(dbname=db) as conn:
            authors = conn.execute(
                "SELECT DISTINCT created_by::text FROM eventic.records WHERE class_type = 'public.bt' AND version = 1"
            ).fetchall()
            assert authors == [(role,)]
            assert conn.execute(
                "SELECT count(*) FROM eventic.records WHERE id = %s AND created_by = 'postgres'", (story,)
            ).fetchone()[0] == 4
    finally:
        with cluster.connect(dbname=db) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")
