"""eventic on Citus: a coordinator and two workers on one machine (scripts/citus), eventic
distributed with eventic.distribute(). Records, classes, views, the outbox, queues and
workflows are driven through the coordinator as a non-superuser role; records must land on
both workers, versions stay contiguous under 8 concurrent writers."""

import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # noqa: E402
from test_records_concurrency import run_threads  # noqa: E402

PREFIX = os.environ.get("EVENTIC_CITUS_DIR", "/tmp/eventic-citus")
PORT = int(os.environ.get("EVENTIC_CITUS_PORT", "5850"))
DB = "eventic"
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "points": {"type": "integer"}},
    "required": ["title"],
}


def wait_until(predicate, timeout=60.0):
    return conftest.wait_until(predicate, timeout=timeout, interval=0.2)


def connect(port=PORT, node="coord", user="postgres", dbname=DB, autocommit=True):
    return psycopg.connect(
        f"host={PREFIX}-{node} port={port} dbname={dbname} user={user}", autocommit=autocommit
    )


def worker(n, **kwargs):
    return connect(port=PORT + n, node=f"w{n}", **kwargs)


@pytest.fixture(scope="module")
def citus():
    subprocess.run([str(ROOT / "scripts" / "citus"), "start", PREFIX, str(PORT), DB], check=True)
    try:
        with connect() as conn:
            conn.execute("SELECT eventic.distribute(shard_count => 8)")
            # the application role (Citus connects to the workers as the same role: LOGIN)
            conn.execute("CREATE ROLE app LOGIN")
            conn.execute("GRANT CREATE ON SCHEMA public TO app")
        yield
    finally:
        subprocess.run([str(ROOT / "scripts" / "citus"), "stop", PREFIX], check=True)


@pytest.fixture()
def app(citus):
    with connect(user="app") as conn:
        yield conn


def new_class(conn, schema=None, view=False):
    name = "C" + uuid.uuid4().hex[:10]
    conn.execute(
        "SELECT eventic.register_class(%s, %s, %s)",
        (name, Jsonb(schema) if schema else None, "public" if view else None),
    )
    return name


def test_distribute_refuses_without_citus_off_the_coordinator_and_for_non_superusers(citus):
    with connect() as conn:
        conn.execute("CREATE DATABASE plain")
    try:
        with connect(dbname="plain") as conn:
            conn.execute("CREATE EXTENSION eventic")
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="CREATE EXTENSION citus"):
                conn.execute("SELECT eventic.distribute()")
    finally:
        with connect() as conn:
            conn.execute("DROP DATABASE plain WITH (FORCE)")
    with worker(1) as conn:
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="coordinator"):
            conn.execute("SELECT eventic.distribute()")
    with connect(user="app") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT eventic.distribute()")
    # a second call on the coordinator does nothing
    with connect() as conn:
        conn.execute("SELECT eventic.distribute()")
        placement = conn.execute(
            "SELECT partmethod FROM pg_dist_partition WHERE logicalrelid = 'eventic.records'::regclass"
        ).fetchone()
        assert placement == ("h",)
        assert conn.execute(
            "SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'eventic.records'::regclass").fetchone() == (8,)
        assert conn.execute(
            "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'eventic.classes'::regclass"
            " AND partmethod = 'n'").fetchone() == (1,)


def test_reads_are_delegated_to_the_records_node(app):
    cls = new_class(app)
    (rid,) = app.execute("SELECT eventic.create(%s, '{}')", (cls,)).fetchone()
    notices = []
    app.add_notice_handler(lambda d: notices.append(d.message_primary))
    app.execute("SET client_min_messages = debug1")
    try:
        for call in ("eventic.hydrate(%s)", "eventic.history(%s)", "eventic.list_properties(%s)"):
            notices.clear()
            app.execute(f"SELECT {call}", (rid,))
            assert "pushing down the function call" in notices, (call, notices)
    finally:
        app.execute("RESET client_min_messages")


def test_records_history_diff_as_of_and_latest(app):
    cls = new_class(app, SCHEMA)
    (rid,) = app.execute("SELECT eventic.create(%s, '{\"title\": \"a\"}')", (cls,)).fetchone()
    assert app.execute("SELECT eventic.set_field(%s, 'points', '3')", (rid,)).fetchone() == (1,)
    (t1,) = app.execute("SELECT clock_timestamp()").fetchone()
    # in a transaction block (not delegated by Citus: the coordinator ships the write)
    with app.transaction():
        app.execute("SELECT eventic.set_fields(%s, '{\"title\": \"b\"}')", (rid,))
        app.execute("SELECT eventic.add_property(%s, 'tag', '\"x\"')", (rid,))
    assert app.execute("SELECT eventic.hydrate(%s)", (rid,)).fetchone()[0] == {
        "id": str(rid), "version": 3, "class_type": cls, "title": "b", "points": 3,
        "properties": {"tag": "x"},
    }
    assert [r[0] for r in app.execute("SELECT version FROM eventic.history(%s)", (rid,))] == [0, 1, 2, 3]
    (diff,) = app.execute("SELECT eventic.diff(%s, 0, 2)", (rid,)).fetchone()
    assert "title" in str(diff) and "points" in str(diff)
    (as_of,) = app.execute("SELECT eventic.hydrate_as_of(%s, %s)", (rid, t1)).fetchone()
    assert as_of["version"] == 1 and as_of["title"] == "a"
    assert app.execute("SELECT version, data->>'title' FROM eventic.latest WHERE id = %s", (rid,)).fetchone() == (3, "b")
    # JSON Schema checked where the record is; the error keeps its SQLSTATE through Citus
    with pytest.raises(psycopg.errors.CheckViolation):
        app.execute("SELECT eventic.set_field(%s, 'points', '\"many\"')", (rid,))
    with pytest.raises(psycopg.errors.CheckViolation):
        app.execute("SELECT eventic.create(%s, '{\"points\": 1}')", (cls,))
    # optimistic concurrency and a missing record keep their errors
    with pytest.raises(psycopg.errors.SerializationFailure):
        app.execute("SELECT eventic.set_field(%s, 'points', '4', 1)", (rid,))
    with pytest.raises(psycopg.errors.NoDataFound):
        app.execute("SELECT eventic.set_field(%s, 'points', '4')", (uuid.uuid4(),))
    assert app.execute("SELECT eventic.delete(%s)", (rid,)).fetchone() == (4,)
    assert app.execute("SELECT count(*) FROM eventic.latest WHERE id = %s", (rid,)).fetchone() == (0,)


def test_a_write_through_a_worker_of_a_class_with_subscribers_is_refused(app):
    """Its outbox event would be enqueued on that worker, which has no queues: refused, with
    nothing written (through the coordinator the same write works)."""
    cls = new_class(app)
    (rid,) = app.execute("SELECT eventic.create(%s, '{}')", (cls,)).fetchone()
    app.execute(f"CREATE FUNCTION on_w_{cls.lower()}(event jsonb) RETURNS void LANGUAGE sql AS 'SELECT'")
    app.execute(f"SELECT eventic.subscribe(%s, 'on_w_{cls.lower()}(jsonb)')", (cls,))
    with worker(1, user="app") as conn:
        with pytest.raises(psycopg.errors.UndefinedObject, match="queue"):
            conn.execute("SELECT eventic.set_field(%s, 'n', '1')", (rid,))
    assert app.execute("SELECT max(version) FROM eventic.records WHERE id = %s", (rid,)).fetchone() == (0,)
    assert app.execute("SELECT eventic.set_field(%s, 'n', '1')", (rid,)).fetchone() == (1,)


def test_direct_writes_to_records_are_refused_on_the_shards(app):
    cls = new_class(app)
    (rid,) = app.execute("SELECT eventic.create(%s, '{}')", (cls,)).fetchone()
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute(
            "INSERT INTO eventic.records (version_id, id, version, class_type, data)"
            " VALUES (gen_random_uuid(), %s, 1, %s, '{}')", (rid, cls))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        app.execute("DELETE FROM eventic.records WHERE id = %s", (rid,))
    # another role sees none of app's records
    with connect() as conn:
        conn.execute("DO $$ BEGIN CREATE ROLE other LOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
    with connect(user="other") as conn:
        assert conn.execute("SELECT count(*) FROM eventic.records WHERE id = %s", (rid,)).fetchone() == (0,)
        # (as on one node: a record the role may not read does not exist for it)
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute("SELECT eventic.set_field(%s, 'x', '1')", (rid,))
        # nor can it ship a write of its own to the record's node
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute(
                "SELECT eventic._write_on_shard(%s, 'append', NULL, '{\"x\": 1}', '{}', '{}', '{}',"
                " false, NULL, false) FROM (SELECT count(*) FROM eventic.records WHERE id = %s) s",
                (rid, rid))


def test_class_view_insert_and_read(app):
    """INSERT through a class view creates the record on its worker. (UPDATE and DELETE
    through a view over a distributed table are beyond Citus: README "Scale-out".)"""
    cls = new_class(app, SCHEMA, view=True)
    view = app.execute("SELECT view_name FROM eventic.classes WHERE class_name = %s", (cls,)).fetchone()[0]
    (rid,) = app.execute(f"INSERT INTO public.{view} (title, points) VALUES ('v', 1) RETURNING id").fetchone()
    app.execute("SELECT eventic.set_field(%s, 'points', '2')", (rid,))
    assert app.execute(f"SELECT title, points, version FROM public.{view} WHERE id = %s", (rid,)).fetchone() == ("v", 2, 1)
    with pytest.raises(psycopg.errors.CheckViolation):
        app.execute(f"INSERT INTO public.{view} (points) VALUES (1)")
    # a class changes and goes on the reference table, and every node sees it
    app.execute("SELECT eventic.register_class(%s, %s)", (cls, Jsonb({"type": "object"})))
    app.execute("SELECT eventic.create(%s, '{\"points\": 1}')", (cls,))  # no title needed now
    app.execute("SELECT eventic.drop_class(%s)", (cls,))
    for n in (1, 2):
        with worker(n) as conn:
            assert conn.execute("SELECT count(*) FROM eventic.classes WHERE class_name = %s", (cls,)).fetchone() == (0,)


PLACEMENTS = """SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
                 WHERE p.shardid = %s"""


def test_latest_insert_and_update_of_records_append_versions(app):
    cls = new_class(app)
    (rid,) = app.execute(
        "INSERT INTO eventic.latest (class_type, data) VALUES (%s, '{\"a\": 1}') RETURNING id", (cls,)).fetchone()
    # UPDATE of a version row appends a version (the redirect trigger runs on the shard)
    app.execute("UPDATE eventic.records SET data = data || '{\"a\": 2}' WHERE id = %s AND version = 0", (rid,))
    assert app.execute("SELECT version, data->>'a' FROM eventic.latest WHERE id = %s", (rid,)).fetchone() == (1, "2")
    assert app.execute("SELECT count(*) FROM eventic.records WHERE id = %s", (rid,)).fetchone() == (2,)


def shard_counts(conn):
    """Version rows per worker port, counted on the shards themselves."""
    counts = {}
    for shard, ok, result in conn.execute(
            "SELECT * FROM run_command_on_shards('eventic.records', 'SELECT count(*) FROM %s')"):
        assert ok, result
        (port,) = conn.execute(PLACEMENTS, (shard,)).fetchone()
        counts[port] = counts.get(port, 0) + int(result)
    return counts


def test_records_are_spread_over_both_workers(app):
    cls = new_class(app)
    app.execute("SELECT count(eventic.create(%s, '{}')) FROM generate_series(1, 200)", (cls,))
    with connect() as conn:
        counts = shard_counts(conn)
        total = conn.execute("SELECT count(*) FROM eventic.records").fetchone()[0]
    assert set(counts) == {PORT + 1, PORT + 2}
    assert sum(counts.values()) == total
    assert all(n >= 50 for n in counts.values()), counts


def ids_on_both_workers(conn, cls, each=1):
    """`each` new records of `cls` on each worker: {port: [ids]}."""
    found = {PORT + 1: [], PORT + 2: []}
    while any(len(v) < each for v in found.values()):
        (rid,) = conn.execute("SELECT eventic.create(%s, '{\"n\": 0}')", (cls,)).fetchone()
        (port,) = conn.execute(
            PLACEMENTS % "get_shard_id_for_distribution_column('eventic.records', %s)", (rid,)
        ).fetchone()
        found[port].append(rid)
    return {p: v[:each] for p, v in found.items()}


def test_outbox_and_a_job_writing_records_on_both_workers_run_once(app):
    cls = new_class(app)
    app.execute(f"CREATE TABLE seen_{cls.lower()} (event jsonb)")
    app.execute(
        f"CREATE FUNCTION on_{cls.lower()}(event jsonb) RETURNS void LANGUAGE sql"
        f" AS $$ INSERT INTO seen_{cls.lower()} VALUES (event) $$")
    ids = ids_on_both_workers(app, cls)
    a, b = ids[PORT + 1][0], ids[PORT + 2][0]
    app.execute(f"SELECT eventic.subscribe(%s, 'on_{cls.lower()}(jsonb)')", (cls,))
    (c,) = app.execute("SELECT eventic.create(%s, '{\"n\": 0}')", (cls,)).fetchone()
    # one job bumps a record on each worker in its one transaction
    app.execute(
        "CREATE OR REPLACE FUNCTION bump_both(a uuid, b uuid) RETURNS void LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM eventic.set_field(a, 'n', '1'); PERFORM eventic.set_field(b, 'n', '1'); END $$")
    app.execute("SELECT eventic.create_queue('citus_jobs')")
    app.execute("SELECT eventic.enqueue('citus_jobs', 'bump_both(uuid,uuid)', %s)", (Jsonb([str(a), str(b)]),))
    seen = f"SELECT count(*) FROM seen_{cls.lower()}"
    # 1 create + 2 updates, each one event
    assert wait_until(lambda: app.execute(seen).fetchone()[0] >= 3), app.execute(seen).fetchone()
    assert wait_until(lambda: app.execute(
        "SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'citus_jobs'").fetchone()[0] == 1)
    time.sleep(2)  # anything run twice would show now
    assert app.execute(seen).fetchone() == (3,)
    versions = app.execute(
        f"SELECT event->>'id', event->>'version' FROM seen_{cls.lower()} ORDER BY 1, 2").fetchall()
    assert sorted(versions) == sorted([(str(a), "1"), (str(b), "1"), (str(c), "0")])
    for rid in (a, b):
        assert app.execute("SELECT eventic.hydrate(%s)->>'n'", (rid,)).fetchone() == ("1",)


def test_a_failing_transaction_leaves_no_write_on_any_worker(app):
    """Shipped writes are part of the caller's transaction: a statement, a transaction block
    and a job that fail after writing records on both workers leave none of their versions."""
    cls = new_class(app)
    ids = ids_on_both_workers(app, cls)
    a, b = ids[PORT + 1][0], ids[PORT + 2][0]
    app.execute(
        "CREATE OR REPLACE FUNCTION bump_then_fail(a uuid, b uuid) RETURNS void LANGUAGE plpgsql AS $$"
        " BEGIN PERFORM eventic.set_field(a, 'n', '1'); PERFORM eventic.set_field(b, 'n', '1');"
        " RAISE EXCEPTION 'after the writes'; END $$")
    with pytest.raises(psycopg.errors.RaiseException):
        app.execute("SELECT bump_then_fail(%s, %s)", (a, b))
    with pytest.raises(psycopg.errors.RaiseException):
        with app.transaction():
            app.execute("SELECT eventic.set_field(%s, 'n', '2')", (a,))
            app.execute("SELECT eventic.set_field(%s, 'n', '2')", (b,))
            app.execute("SELECT bump_then_fail(%s, %s)", (a, b))
    app.execute("SELECT eventic.create_queue('citus_failing')")
    app.execute("SELECT eventic.enqueue('citus_failing', 'bump_then_fail(uuid,uuid)', %s, max_attempts => 1)",
                (Jsonb([str(a), str(b)]),))
    assert wait_until(lambda: app.execute(
        "SELECT dead FROM eventic.queue_stats WHERE queue_name = 'citus_failing'").fetchone() == (1,))
    assert app.execute("SELECT count(*) FROM eventic.records WHERE id IN (%s, %s) AND version > 0",
                       (a, b)).fetchone() == (0,)
    # and a transaction that commits writes on both workers keeps both
    with app.transaction():
        app.execute("SELECT eventic.set_field(%s, 'n', '3')", (a,))
        app.execute("SELECT eventic.set_field(%s, 'n', '3')", (b,))
    assert app.execute("SELECT count(*) FROM eventic.records WHERE id IN (%s, %s) AND version = 1",
                       (a, b)).fetchone() == (2,)


def test_workflow_steps_write_records_on_both_workers_once(app):
    cls = new_class(app)
    ids = ids_on_both_workers(app, cls)
    a, b = ids[PORT + 1][0], ids[PORT + 2][0]
    app.execute(
        "CREATE OR REPLACE FUNCTION wf_bump(rid uuid) RETURNS int LANGUAGE sql AS"
        " $$ SELECT eventic.set_fields(rid, jsonb_build_object('n', (eventic.hydrate(rid)->>'n')::int + 1)) $$")
    app.execute(
        "CREATE OR REPLACE FUNCTION wf_body(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
        " BEGIN"
        "   PERFORM eventic.step('a', 'wf_bump(uuid)', jsonb_build_array(input->'a'));"
        "   PERFORM eventic.step('b', 'wf_bump(uuid)', jsonb_build_array(input->'b'));"
        "   PERFORM eventic.step('a again', 'wf_bump(uuid)', jsonb_build_array(input->'a'));"
        "   RETURN '\"done\"';"
        " END $$")
    app.execute("SELECT eventic.start_workflow('wf_body(jsonb)', %s, 'citus-wf')",
                (Jsonb({"a": str(a), "b": str(b)}),))
    (output,) = app.execute("SELECT eventic.wait_workflow('citus-wf', '60 seconds')").fetchone()
    assert output == "done"
    assert app.execute("SELECT eventic.hydrate(%s)->>'n', eventic.hydrate(%s)->>'n'", (a, b)).fetchone() == ("2", "1")
    assert app.execute("SELECT max(version) FROM eventic.records WHERE id = %s", (a,)).fetchone() == (2,)


WRITERS = 8
WRITES_EACH = 40


def test_eight_writers_keep_versions_contiguous(app):
    """Eight writers on one record, six through the coordinator and one on each worker (a
    class without outbox subscribers can be written through any node): every version once,
    none lost."""
    cls = new_class(app)
    (rid,) = app.execute("SELECT eventic.create(%s, '{}')", (cls,)).fetchone()
    returned = [[] for _ in range(WRITERS)]
    start = threading.Barrier(WRITERS)

    nodes = [lambda: connect(user="app")] * 6 + [lambda: worker(1, user="app"), lambda: worker(2, user="app")]

    def write(i):
        with nodes[i]() as conn:
            start.wait()
            for n in range(1, WRITES_EACH + 1):
                (v,) = conn.execute("SELECT eventic.set_field(%s, %s, %s)", (rid, f"w{i}", Jsonb(n))).fetchone()
                returned[i].append(v)

    run_threads(write, WRITERS)
    total = WRITERS * WRITES_EACH
    versions = [r[0] for r in app.execute("SELECT version FROM eventic.records WHERE id = %s ORDER BY version", (rid,))]
    assert versions == list(range(total + 1))
    assert sorted(v for vs in returned for v in vs) == list(range(1, total + 1))
    final = app.execute("SELECT eventic.hydrate(%s)", (rid,)).fetchone()[0]
    assert all(final[f"w{i}"] == WRITES_EACH for i in range(WRITERS))
