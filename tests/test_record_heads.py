"""Where each record's latest version lies, kept in shared memory by every writer
(src/records/heads.rs): the next writer of any connection reads the row there without
searching the primary key, and no address outlives its row (an aborted, rolled-back or
prepared write, a rewrite of eventic.records, a purge)."""

import os

import psycopg
import pytest
from conftest import Cluster

JUNK = 3000


def story(conn):
    conn.execute("SELECT eventic.register_class('Story')")
    return conn.execute("""SELECT eventic.create('Story', '{"title": "first"}')""").fetchone()[0]


def versions(conn, record):
    return [r[0] for r in conn.execute("SELECT version FROM eventic.records WHERE id = %s ORDER BY version", (record,))]


def write_at_the_end(conn, record):
    """Grow eventic.records by thousands of rows, then write `record`: its version lands in
    the last block (the caller then throws all of it away)."""
    conn.execute(f"""SELECT eventic.create('Story', '{{"title": "junk"}}') FROM generate_series(1, {JUNK})""")
    conn.execute("""SELECT eventic.set_field(%s, 'title', '"thrown away"')""", (record,))


def vacuum_truncates(conn):
    before = conn.execute("SELECT pg_relation_size('eventic.records')").fetchone()[0]
    conn.execute("VACUUM eventic.records")
    after = conn.execute("SELECT pg_relation_size('eventic.records')").fetchone()[0]
    # the test means something only if the blocks of the thrown-away rows are gone
    assert after < before / 4, (before, after)


def write_from_another_connection(cluster, db, record, expected_version):
    with cluster.connect(dbname=db) as other:
        got = other.execute("""SELECT eventic.set_field(%s, 'title', '"kept"')""", (record,)).fetchone()[0]
        assert got == expected_version
        assert versions(other, record) == list(range(expected_version + 1))


def by_an_abort(cluster, db, conn, record):
    with pytest.raises(psycopg.errors.RaiseException):
        with conn.transaction():
            write_at_the_end(conn, record)
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'abort'; END $$")


def by_a_rollback_to_savepoint(cluster, db, conn, record):
    with conn.transaction():
        conn.execute("SAVEPOINT s")
        write_at_the_end(conn, record)
        conn.execute("ROLLBACK TO SAVEPOINT s")


def by_rollback_prepared_elsewhere(cluster, db, conn, record):
    conn.execute("BEGIN")
    write_at_the_end(conn, record)
    conn.execute("PREPARE TRANSACTION 'heads_test'")
    with cluster.connect(dbname=db) as other:
        other.execute("ROLLBACK PREPARED 'heads_test'")


@pytest.mark.parametrize("thrown_away", [by_an_abort, by_a_rollback_to_savepoint, by_rollback_prepared_elsewhere])
def test_a_write_thrown_away_leaves_no_address_past_the_end_of_the_table(cluster, db, thrown_away):
    with cluster.connect(dbname=db) as conn:
        record = story(conn)
        thrown_away(cluster, db, conn, record)
        vacuum_truncates(conn)
    write_from_another_connection(cluster, db, record, 1)


def test_a_rewrite_of_the_table_makes_every_address_stale(cluster, db):
    with cluster.connect(dbname=db) as conn:
        record = story(conn)
        dead_rows_then_a_version_of(conn, record)
        before = block_of(conn, record, 1)
        conn.execute("VACUUM FULL eventic.records")
        assert block_of(conn, record, 1) < before  # the row moved: its old address is past the new end
    write_from_another_connection(cluster, db, record, 2)


def dead_rows_then_a_version_of(conn, record):
    """Thousands of rows of a rolled-back transaction, then the record's next version after
    them, committed (its row lies past the dead ones)."""
    with pytest.raises(psycopg.errors.RaiseException):
        with conn.transaction():
            conn.execute(f"""SELECT eventic.create('Story', '{{"title": "junk"}}') FROM generate_series(1, {JUNK})""")
            conn.execute("DO $$ BEGIN RAISE EXCEPTION 'abort'; END $$")
    conn.execute("""SELECT eventic.set_field(%s, 'title', '"second"')""", (record,))


def block_of(conn, record, version):
    return conn.execute("SELECT (ctid::text::point)[0] FROM eventic.records WHERE id = %s AND version = %s",
                        (record, version)).fetchone()[0]


def test_a_purge_forgets_the_address_of_the_rows_it_removes(cluster, db):
    with cluster.connect(dbname=db) as conn:
        record = story(conn)
        dead_rows_then_a_version_of(conn, record)
        conn.execute("SELECT eventic.purge(%s)", (record,))
        vacuum_truncates(conn)
    with cluster.connect(dbname=db) as other:
        with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
            other.execute("""SELECT eventic.set_field(%s, 'title', '"gone"')""", (record,))
        other.execute("SELECT eventic.create('Story', '{}', %s)", (record,))
        assert other.execute("""SELECT eventic.set_field(%s, 'title', '"again"')""", (record,)).fetchone()[0] == 1


def index_scans_of_the_primary_key(conn):
    return conn.execute(
        "SELECT idx_scan FROM pg_stat_all_indexes WHERE indexrelid = 'eventic.records_pkey'::regclass"
    ).fetchone()[0]


def flush_statistics(*conns):
    # a backend sends its counts when it next goes idle (before the client gets the result)
    for conn in conns:
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")


def searches_of_connections_taking_turns(cluster, db, records=1, turns=10):
    """Two connections write `records` records (created in one statement, as UUIDv7s of one
    millisecond) in turns: how many of the 2 * turns * records writes searched records_pkey."""
    with cluster.connect(dbname=db) as a, cluster.connect(dbname=db) as b, cluster.connect(dbname=db) as watch:
        a.execute("SELECT eventic.register_class('Story')")
        ids = [r[0] for r in a.execute(
            """SELECT eventic.create('Story', '{"title": "first"}') FROM generate_series(1, %s)""", (records,))]
        for record in ids:  # a search each: nothing kept yet
            b.execute("""SELECT eventic.set_field(%s, 'title', '"b0"')""", (record,))
        flush_statistics(a, b)
        watch.execute("SELECT pg_stat_clear_snapshot()")
        start = index_scans_of_the_primary_key(watch)
        assert start >= 1  # the search is counted: the count below means something
        for turn in range(turns):
            for name, conn in (("a", a), ("b", b)):
                for record in ids:
                    conn.execute("SELECT eventic.set_field(%s, 'title', to_jsonb(%s::text))",
                                 (record, f"turn {turn} of {name}"))
        flush_statistics(a, b)
        watch.execute("SELECT pg_stat_clear_snapshot()")
        # every record has its versions 0 .. 2 * turns + 1, each once
        assert watch.execute(
            """SELECT count(*) FROM (SELECT id FROM eventic.records WHERE id = ANY(%s) GROUP BY id
                HAVING count(*) = %s AND count(DISTINCT version) = %s AND max(version) = %s) full_rows""",
            (ids, 2 * turns + 2, 2 * turns + 2, 2 * turns + 1)).fetchone()[0] == records
        return index_scans_of_the_primary_key(watch) - start


def test_connections_taking_turns_read_each_others_address_without_a_search(cluster, db):
    with cluster.connect() as conn:
        assert conn.execute("SHOW eventic.record_address_slots").fetchone()[0] == "262144"
    assert searches_of_connections_taking_turns(cluster, db) == 0


def test_records_created_together_keep_their_addresses_apart(cluster, db):
    # UUIDv7s of one millisecond share most of their bits: a slot taken from a part of the id
    # put 1,000 of them in 34 slots, and each write searched
    writes = 2 * 3 * 200
    assert searches_of_connections_taking_turns(cluster, db, records=200, turns=3) <= writes // 50


@pytest.mark.parametrize("slots, records", [(0, 1), (1, 2)], ids=["no slots", "two records in one slot"])
def test_a_record_without_its_address_is_searched_for(slots, records):
    """eventic.record_address_slots (server start): with none, every write searches; with
    records sharing a slot, each finds the other's address there and searches too."""
    small = Cluster(os.environ.get("EVENTIC_SLOTS_DIR", "/tmp/eventic-it-slots"),
                    int(os.environ.get("EVENTIC_SLOTS_PORT", "5807")))
    small.run("start", small.directory, str(small.port), f"eventic.record_address_slots = {slots}")
    try:
        with small.connect() as conn:
            assert conn.execute("SHOW eventic.record_address_slots").fetchone()[0] == str(slots)
            with pytest.raises(psycopg.errors.CantChangeRuntimeParam, match="restart"):
                conn.execute("SET eventic.record_address_slots = 10")
            conn.execute("CREATE EXTENSION eventic")
        assert searches_of_connections_taking_turns(small, "postgres", records) >= 2 * 10 * records
    finally:
        small.run("stop", small.directory)


def test_a_version_a_superuser_inserts_by_hand_is_built_on(cluster, db):
    # as pg_restore into a live database would: the kept address no longer names the latest row
    with cluster.connect(dbname=db) as conn:
        record = story(conn)
        conn.execute("""SELECT eventic.set_field(%s, 'title', '"second"')""", (record,))
        conn.execute(
            """INSERT INTO eventic.records (version_id, id, version, class_type, data)
               SELECT gen_random_uuid(), id, version + 1, class_type, data || '{"title": "by hand"}'
                 FROM eventic.records WHERE id = %s AND version = 1""", (record,))
    write_from_another_connection(cluster, db, record, 3)
