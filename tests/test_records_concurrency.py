"""Many connections writing one record at once: versions stay contiguous, none is lost, each
is built from the one before it."""

import threading

import psycopg
import pytest
from psycopg.types.json import Jsonb

WRITERS = 8
WRITES_EACH = 60


def run_threads(target, count):
    errors = []

    def guarded(i):
        try:
            target(i)
        except Exception as exc:  # surfaced after join, so a failing thread fails the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def new_story(cluster, db):
    with cluster.connect(dbname=db) as conn:
        return conn.execute("SELECT eventic.create('Story', '{\"title\": \"t\"}')").fetchone()[0]


def test_concurrent_set_field_keeps_every_version(cluster, db):
    story = new_story(cluster, db)
    returned = [[] for _ in range(WRITERS)]
    start = threading.Barrier(WRITERS)

    def writer(i):
        with cluster.connect(dbname=db) as conn:
            start.wait()
            for n in range(1, WRITES_EACH + 1):
                (v,) = conn.execute(
                    "SELECT eventic.set_field(%s, %s, %s)", (story, f"w{i}", Jsonb(n))
                ).fetchone()
                returned[i].append(v)

    run_threads(writer, WRITERS)

    total = WRITERS * WRITES_EACH
    with cluster.connect(dbname=db) as conn:
        versions = [
            r[0]
            for r in conn.execute(
                "SELECT version FROM eventic.records WHERE id = %s ORDER BY version", (story,)
            )
        ]
        assert versions == list(range(total + 1)), "versions must be 0..N with no gap or duplicate"

        # every call got its own version number
        all_returned = sorted(v for vs in returned for v in vs)
        assert all_returned == list(range(1, total + 1))
        for vs in returned:
            assert vs == sorted(vs), "a writer's own versions increase"

        # no lost update: every writer's last value is in the final document
        final = conn.execute("SELECT eventic.hydrate(%s)", (story,)).fetchone()[0]
        for i in range(WRITERS):
            assert final[f"w{i}"] == WRITES_EACH

        # each version differs from the one before it by exactly one field, and keeps all others
        rows = conn.execute(
            "SELECT version, data, changed_fields FROM eventic.history(%s)", (story,)
        ).fetchall()
        for (_, before, _), (version, after, changed) in zip(rows, rows[1:]):
            assert len(changed) == 1, f"version {version} changed {changed}"
            field = changed[0]
            assert {k: v for k, v in after.items() if k != field} == {
                k: v for k, v in before.items() if k != field
            }
            assert after[field] == before.get(field, 0) + 1


def test_expected_version_lets_exactly_one_writer_win(cluster, db):
    story = new_story(cluster, db)
    outcomes = []
    start = threading.Barrier(WRITERS)

    def writer(i):
        with cluster.connect(dbname=db) as conn:
            start.wait()
            try:
                conn.execute(
                    "SELECT eventic.set_field(%s, 'title', %s, expected_version => 0)",
                    (story, Jsonb(f"writer {i}")),
                )
                outcomes.append("ok")
            except psycopg.errors.SerializationFailure as exc:
                assert "expected version 0" in str(exc)
                outcomes.append("40001")

    run_threads(writer, WRITERS)
    assert sorted(outcomes) == ["40001"] * (WRITERS - 1) + ["ok"]
    with cluster.connect(dbname=db) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM eventic.records WHERE id = %s", (story,)
        ).fetchone()
        assert count == 2


def test_plain_update_and_set_field_interleave_without_loss(cluster, db):
    """UPDATE eventic.records from one set of clients, set_field from another, on different
    fields: each UPDATE appends one version built on the latest, so nothing is lost."""
    story = new_story(cluster, db)
    rounds = 40
    start = threading.Barrier(4)

    def updater(i):
        with cluster.connect(dbname=db) as conn:
            start.wait()
            for n in range(1, rounds + 1):
                if i % 2 == 0:
                    conn.execute(
                        "UPDATE eventic.records SET data = data || jsonb_build_object(%s::text, %s::int)"
                        " WHERE id = %s",
                        (f"u{i}", n, story),
                    )
                else:
                    conn.execute(
                        "SELECT eventic.set_field(%s, %s, %s)", (story, f"s{i}", Jsonb(n))
                    )

    run_threads(updater, 4)
    with cluster.connect(dbname=db) as conn:
        final = conn.execute("SELECT eventic.hydrate(%s)", (story,)).fetchone()[0]
        assert final["u0"] == final["u2"] == final["s1"] == final["s3"] == rounds
        (count, top) = conn.execute(
            "SELECT count(*), max(version) FROM eventic.records WHERE id = %s", (story,)
        ).fetchone()
        assert count == top + 1 == 4 * rounds + 1


def test_repeatable_read_writer_with_a_stale_snapshot_gets_40001(cluster, db):
    """Under REPEATABLE READ a writer whose snapshot predates another writer's commit must
    not build on the version it cannot see: it gets a serialization failure, nothing written."""
    story = new_story(cluster, db)
    with cluster.connect(dbname=db, autocommit=False) as stale, cluster.connect(dbname=db) as other:
        stale.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        stale.execute("SELECT eventic.hydrate(%s)", (story,)).fetchone()  # takes the snapshot
        other.execute("SELECT eventic.set_field(%s, 'title', '\"from other\"')", (story,))
        try:
            stale.execute("SELECT eventic.set_field(%s, 'body', '\"from stale\"')", (story,))
            raise AssertionError("the stale writer was not refused")
        except psycopg.errors.SerializationFailure:
            stale.rollback()
    with cluster.connect(dbname=db) as conn:
        rows = conn.execute(
            "SELECT version, data ->> 'title', data ? 'body' FROM eventic.records WHERE id = %s ORDER BY version",
            (story,),
        ).fetchall()
    assert rows == [(0, "t", False), (1, "from other", False)]


def test_one_transaction_writes_50000_records_and_a_tracked_table_of_30000_rows(cluster, db):
    """Writers lock a record's latest version row, not an entry of the shared lock table, so
    a bulk write is not bounded by max_locks_per_transaction (64 here: the lock table holds
    about 64 x 230 entries, and a lock per record ran out at 10,000-20,000 records)."""
    with cluster.connect(dbname=db) as conn:
        assert conn.execute("SHOW max_locks_per_transaction").fetchone()[0] == "64"
        conn.execute(
            "SELECT count(eventic.create('Story', jsonb_build_object('title', g::text)))"
            " FROM generate_series(1, 50000) g"
        )
        conn.execute("CREATE TABLE items (sku text PRIMARY KEY, qty int NOT NULL)")
        conn.execute("SELECT eventic.track('items', id_column => 'sku')")
        conn.execute("INSERT INTO items SELECT 's' || g, 0 FROM generate_series(1, 30000) g")
        with conn.transaction():
            (written,) = conn.execute(
                "SELECT count(eventic.set_field(id, 'title', '\"bulk\"'))"
                " FROM eventic.records WHERE class_type = 'Story' AND version = 0"
            ).fetchone()
            conn.execute("UPDATE items SET qty = qty + 1")
            (locks,) = conn.execute("SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()").fetchone()
        assert written == 50000
        assert locks < 100
        assert conn.execute(
            "SELECT count(*) FILTER (WHERE version = 1 AND data->>'title' = 'bulk') FROM eventic.records"
            " WHERE class_type = 'Story'"
        ).fetchone()[0] == 50000
        assert conn.execute(
            "SELECT count(*) FROM eventic.records r JOIN items i ON r.id = eventic.tracked_id('items', i.sku)"
            " WHERE r.version = 1 AND (r.data->>'qty')::int = 1"
        ).fetchone()[0] == 30000


def test_tracked_updates_and_set_field_on_one_record_lose_nothing(cluster, db):
    """A tracked row's UPDATE appends without a row lock on the latest version (its own row
    lock serialises the table's writers); set_field on the same record takes the lock. Mixed,
    every write is a version, contiguous, each built on the one before (issue 13)."""
    rounds = 40
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE mixed_t (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), a int NOT NULL DEFAULT 0)")
        row = conn.execute("INSERT INTO mixed_t DEFAULT VALUES RETURNING id").fetchone()[0]
        conn.execute("SELECT eventic.track('mixed_t')")
    start = threading.Barrier(4)

    def writer(i):
        with cluster.connect(dbname=db) as conn:
            start.wait()
            for n in range(1, rounds + 1):
                if i < 2:
                    conn.execute("UPDATE mixed_t SET a = a + 1 WHERE id = %s", (row,))
                else:
                    conn.execute("SELECT eventic.set_field(%s, %s, %s)", (row, f"s{i}", Jsonb(n)))

    run_threads(writer, 4)
    with cluster.connect(dbname=db) as conn:
        final = conn.execute("SELECT eventic.hydrate(%s)", (row,)).fetchone()[0]
        assert (final["a"], final["s2"], final["s3"]) == (2 * rounds, rounds, rounds)
        (count, top) = conn.execute(
            "SELECT count(*), max(version) FROM eventic.records WHERE id = %s", (row,)
        ).fetchone()
        assert count == top + 1 == 4 * rounds + 1


def test_purge_of_a_tracked_record_waits_for_the_tables_writer(cluster, db):
    """purge of a tracked record while a transaction has updated its row: the purge waits
    for that writer (a table lock, as the tracked path takes no row lock on the latest
    version), so no version is left behind without version 0."""
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE purged_t (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), a int NOT NULL DEFAULT 0)")
        row = conn.execute("INSERT INTO purged_t DEFAULT VALUES RETURNING id").fetchone()[0]
        conn.execute("SELECT eventic.track('purged_t')")
    with cluster.connect(dbname=db, autocommit=False) as writer:
        writer.execute("UPDATE purged_t SET a = 1 WHERE id = %s", (row,))
        _purge_waits_for(writer, cluster, db, row)
    with cluster.connect(dbname=db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM eventic.records WHERE id = %s", (row,)
        ).fetchone()[0] == 0
        # the row lives on: its next change starts a new history at version 0
        conn.execute("UPDATE purged_t SET a = 2 WHERE id = %s", (row,))
        assert conn.execute(
            "SELECT array_agg(version ORDER BY version) FROM eventic.records WHERE id = %s", (row,)
        ).fetchone()[0] == [0]


def _purge_waits_for(writer, cluster, db, record):
    """Purge `record` from another connection while `writer` has written it uncommitted: the
    purge must wait for the writer, then remove both versions."""
    done = []
    purger = threading.Thread(target=lambda: done.append(_purge(cluster, db, record)), daemon=True)
    purger.start()
    purger.join(1.5)
    assert done == [], "purge did not wait for the transaction that wrote the record"
    writer.commit()
    purger.join(30)
    assert done == [2]


def _purge(cluster, db, record):
    with cluster.connect(dbname=db) as conn:
        return conn.execute("SELECT eventic.purge(%s)", (record,)).fetchone()[0]


def test_purge_waits_for_an_uncommitted_set_field(cluster, db):
    """set_field appends without a row lock (the direct path): a purge while its version is
    uncommitted waits for it, so no version outlives the purge without version 0."""
    story = new_story(cluster, db)
    with cluster.connect(dbname=db, autocommit=False) as writer:
        writer.execute("SELECT eventic.set_field(%s, 'title', '\"pending\"')", (story,))
        _purge_waits_for(writer, cluster, db, story)
    with cluster.connect(dbname=db) as conn:
        assert conn.execute("SELECT count(*) FROM eventic.records WHERE id = %s", (story,)).fetchone()[0] == 0
        try:
            conn.execute("SELECT eventic.set_field(%s, 'title', '\"late\"')", (story,))
            raise AssertionError("a purged record was written")
        except psycopg.errors.NoDataFound:
            pass


# Every kind of change, applied on the direct path and again on the SQL path; the versions
# written must be the same rows (data, deletion, numbering) and the errors the same.
CHANGES = [
    "SELECT eventic.set_field(:id, 'title', '\"two\"')",
    "SELECT eventic.set_field(:id, 'title', '\"two\"')",  # changes nothing: no version
    "SELECT eventic.set_fields(:id, '{\"body\": \"b\", \"n\": 1, \"deep\": {\"a\": [1, 2]}}')",
    "SELECT eventic.add_property(:id, 'color', '\"red\"')",
    "SELECT eventic.add_property(:id, 'size', '3')",
    "SELECT eventic.remove_property(:id, 'color')",
    "UPDATE eventic.latest SET data = data - 'n' || '{\"title\": \"three\"}' WHERE id = :id",
    "SELECT eventic.set_field(:id, 'title', '\"four\"', expected_version => 2)",  # 40001
    "SELECT eventic.set_field(:id, 'properties', '{\"only\": true}')",
    "SELECT eventic.delete(:id)",
    "SELECT eventic.set_field(:id, 'title', '\"after\"')",  # P0002
]
TRACKED_CHANGES = [
    "UPDATE paths_t SET a = 1 WHERE k = 1",
    "UPDATE paths_t SET a = 1 WHERE k = 1",  # the same value: no version
    "UPDATE paths_t SET b = 'x', a = 2 WHERE k = 1",
    "SELECT eventic.set_field(eventic.tracked_id('paths_t', '1'), 'extra', '1')",
    "UPDATE paths_t SET a = 3 WHERE k = 1",
    "DELETE FROM paths_t WHERE k = 1",
    "INSERT INTO paths_t VALUES (1, 9, 'back')",
    "UPDATE paths_t SET a = 10 WHERE k = 1",
]


def _apply(conn, changes, record=None):
    outcomes = []
    for sql in changes:
        try:
            with conn.transaction():
                conn.execute(sql.replace(":id", f"'{record}'::uuid") if record else sql)
            outcomes.append("ok")
        except psycopg.Error as err:
            outcomes.append(err.sqlstate)
    return outcomes


def _history(conn, record):
    return conn.execute(
        "SELECT version, data, deleted, created_by FROM eventic.records WHERE id = %s ORDER BY version",
        (record,),
    ).fetchall()


@pytest.mark.parametrize("leave_the_direct_path", [
    "CREATE INDEX records_extra ON eventic.records (created_at)",
    # a dropped column is still an attribute: the direct path's rows would be one short
    "ALTER TABLE eventic.records ADD COLUMN extra int; ALTER TABLE eventic.records DROP COLUMN extra",
], ids=["an index added", "a column added and dropped"])
def test_the_direct_and_the_sql_write_paths_write_the_same_versions(cluster, db, leave_the_direct_path):
    """An index (or a dropped column) added to eventic.records sends writes through the SQL
    statement instead of the direct path; both must produce identical histories and errors."""
    results = []
    with cluster.connect(dbname=db) as conn:
        for path in ("direct", "sql"):
            if path == "sql":
                conn.execute(leave_the_direct_path)
            story = conn.execute("SELECT eventic.create('Story', '{\"title\": \"one\"}')").fetchone()[0]
            story_outcomes = _apply(conn, CHANGES, story)
            conn.execute("DROP TABLE IF EXISTS paths_t")
            conn.execute("CREATE TABLE paths_t (k int PRIMARY KEY, a int, b text)")
            conn.execute("INSERT INTO paths_t VALUES (1, 0, NULL)")
            conn.execute("SELECT eventic.purge(eventic.tracked_id('paths_t', '1'))"
                         " WHERE EXISTS (SELECT 1 FROM eventic.records WHERE id = eventic.tracked_id('paths_t', '1'))")
            conn.execute("SELECT eventic.track('paths_t', id_column => 'k')")
            tracked_outcomes = _apply(conn, TRACKED_CHANGES)
            tracked = conn.execute("SELECT eventic.tracked_id('paths_t', '1')").fetchone()[0]
            results.append((story_outcomes, tracked_outcomes, _history(conn, story), _history(conn, tracked)))
            # which path wrote: only the SQL path locks (sets xmax on) the version it builds on
            locked = conn.execute(
                "SELECT count(*) FILTER (WHERE xmax <> '0') FROM eventic.records WHERE id = %s", (story,)
            ).fetchone()[0]
            assert (locked > 0) == (path == "sql"), (path, locked)
    direct, sql = results
    assert direct[0] == ["ok"] * 7 + ["40001", "ok", "ok", "P0002"]
    assert direct[1] == ["ok"] * len(TRACKED_CHANGES)
    assert [v for v, *_ in direct[2]] == list(range(9))
    assert direct[3][-1][1] == {"a": 10, "b": "back", "properties": {}}
    assert direct == sql


def test_a_connection_that_remembers_a_record_builds_on_what_others_wrote(cluster, db):
    """A connection remembers where the latest version of a record it wrote lies and reads it
    there next time (records::heads); whatever happened to the record in between (another
    writer, its own rollback, a table rewrite, a purge) it must build on the true latest
    version or fail as the record's state says."""
    with cluster.connect(dbname=db) as a, cluster.connect(dbname=db) as b:
        assert "eventic" in a.execute("SHOW shared_preload_libraries").fetchone()[0]
        story = a.execute("SELECT eventic.create('Story', '{\"n\": 0}')").fetchone()[0]

        def set_n(conn, n):
            return conn.execute("SELECT eventic.set_field(%s, 'n', %s)", (story, Jsonb(n))).fetchone()[0]

        assert set_n(a, 1) == 1
        assert set_n(b, 2) == 2  # a's remembered version is stale now
        assert set_n(a, 3) == 3
        with a.transaction(force_rollback=True):
            assert set_n(a, 4) == 4  # remembered, then rolled back
        assert set_n(a, 5) == 4
        with a.transaction():
            a.execute("SAVEPOINT s")
            assert set_n(a, 6) == 5
            a.execute("ROLLBACK TO SAVEPOINT s")
            assert set_n(a, 7) == 5
        b.execute("VACUUM FULL eventic.records")  # every row moves
        assert set_n(a, 8) == 6
        versions = a.execute(
            "SELECT array_agg((data->>'n')::int ORDER BY version) FROM eventic.records WHERE id = %s", (story,)
        ).fetchone()[0]
        assert versions == [0, 1, 2, 3, 5, 7, 8]
        assert b.execute("SELECT eventic.purge(%s)", (story,)).fetchone()[0] == 7
        with pytest.raises(psycopg.errors.NoDataFound):
            set_n(a, 9)


def test_serializable_writers_of_one_record_conflict_with_40001(cluster, db):
    """SERIALIZABLE writers take the direct path too: two that read and write one record
    concurrently cannot both commit; the loser gets 40001 and nothing of it is written."""
    story = new_story(cluster, db)
    with cluster.connect(dbname=db, autocommit=False) as t1, cluster.connect(dbname=db, autocommit=False) as t2:
        for conn in (t1, t2):
            conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            conn.execute("SELECT eventic.hydrate(%s)", (story,)).fetchone()
        t1.execute("SELECT eventic.set_field(%s, 'a', '1')", (story,))
        done = []

        def second():
            try:
                t2.execute("SELECT eventic.set_field(%s, 'b', '2')", (story,))
                t2.commit()
                done.append("committed")
            except psycopg.errors.SerializationFailure:
                t2.rollback()
                done.append("40001")

        waiter = threading.Thread(target=second, daemon=True)
        waiter.start()
        waiter.join(1.0)
        assert done == [], "the second writer did not wait for the first"
        t1.commit()
        waiter.join(30)
        assert done == ["40001"]
    with cluster.connect(dbname=db) as conn:
        rows = conn.execute(
            "SELECT version, data ? 'a', data ? 'b' FROM eventic.records WHERE id = %s ORDER BY version", (story,)
        ).fetchall()
    assert rows == [(0, False, False), (1, True, False)]


def test_the_write_path_is_not_misled_by_a_type_in_the_callers_search_path(cluster, db):
    """The direct path checks the shape of eventic.records with a query run as the caller:
    a `text` type of the caller's own, first in its search_path, must not change it."""
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE SCHEMA shadow")
        conn.execute("CREATE DOMAIN shadow.text AS integer")
        story = conn.execute("SELECT eventic.create('Story', '{\"n\": 0}')").fetchone()[0]
    with cluster.connect(dbname=db) as conn:  # a new session: the check runs on its first write
        conn.execute("SET search_path = shadow, pg_catalog")
        assert conn.execute("SELECT eventic.set_field(%s, 'n', '1')", (story,)).fetchone()[0] == 1
