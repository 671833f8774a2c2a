"""Fault tier (issue 12, "Reliability"): what must not happen to eventic whatever a job, a
document or a caller does. Each test here failed on the code before the fix:

- JSON eventic cannot hold is refused at the door (22023, never XX000); numbers beyond the
  float range are held losslessly; a poison job written into a queue table anyway does not
  stop the database's worker.
- a job that kills its own backend goes dead after max_attempts (with the cluster up, and
  with a real crash of the whole cluster on its own cluster).
- a completed step never runs again without a crash (speculative workflows on), and
  eventic.transaction steps run inline exactly once.
- send to a RUNNING workflow is received at once (no lost wake-up).
- a workflow whose run job went dead ends in ERROR.
- outbox events match committed versions one to one under conflicting writers.
- unpausing a queue / retry_job starts the job within 100 ms of the commit.
- read paths assign no transaction id.
- the smaller ones: infinite run_at, enqueue_batch's queue, huge leases, wait_workflow in
  the starting transaction, properties = NULL, additionalProperties: false.
"""

import os
import random
import re
import threading
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from conftest import Cluster, wait_until

DEEP_ARRAY = "[" * 200 + "]" * 200
DEEP_OBJECT = '{"a": ' * 200 + "1" + "}" * 200
BIG_NUMBERS = ["1e400", "-1e400", "1e-400"]




def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()[0]


def expect_sqlstate(conn, sqlstate, sql, params=None):
    """Run sql, which must fail with exactly this SQLSTATE; returns the error."""
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    err = info.value
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {err}"
    return err


def status(conn, workflow):
    return one(conn, "SELECT eventic.workflow_status(%s)", (workflow,))


def has_function(conn, name):
    return one(conn, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                     " WHERE n.nspname = 'eventic' AND p.proname = %s", (name,)) > 0


# ---------------------------------------------------------------------------------------------
# 1. JSON eventic cannot hold
# ---------------------------------------------------------------------------------------------

DEEP_SETUP = """
SELECT eventic.register_class('Story', '{"type": "object", "properties": {
    "title": {"type": "string"}, "meta": {"type": "object"}, "tags": {"type": "array"}}}',
    view_schema => 'public');
SELECT eventic.create_queue('deep', worker => false);
CREATE FUNCTION whole(a jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION two(a jsonb, n int) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION listen(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS
    $$ BEGIN RETURN eventic.recv('t', '1 hour'); END $$;
CREATE TABLE tracked (id int PRIMARY KEY, j jsonb);
SELECT eventic.track('tracked');
"""

# (name, statement); %(id)s is a record of class Story, %(wf)s a running workflow
DEEP_CASES = [
    ("enqueue_args", f"SELECT eventic.enqueue('deep', 'two(jsonb,int)', '[{DEEP_ARRAY}, 1]')"),
    ("enqueue_args_object", f"SELECT eventic.enqueue('deep', 'two(jsonb,int)', '[{DEEP_OBJECT}, 1]')"),
    ("enqueue_whole_jsonb", f"SELECT eventic.enqueue('deep', 'whole(jsonb)', '[{DEEP_ARRAY}]')"),
    ("enqueue_batch", f"SELECT count(*) FROM eventic.enqueue_batch('deep', 'whole(jsonb)', ARRAY['[{DEEP_ARRAY}]'::jsonb])"),
    ("create", f"SELECT eventic.create('Story', '{{\"title\": \"x\", \"meta\": {DEEP_OBJECT}}}')"),
    ("create_array", f"SELECT eventic.create('Story', '{{\"title\": \"x\", \"tags\": {DEEP_ARRAY}}}')"),
    ("set_field", f"SELECT eventic.set_field(%(id)s, 'tags', '{DEEP_ARRAY}')"),
    ("set_field_object", f"SELECT eventic.set_field(%(id)s, 'meta', '{DEEP_OBJECT}')"),
    ("set_fields", f"SELECT eventic.set_fields(%(id)s, '{{\"meta\": {DEEP_OBJECT}}}')"),
    ("add_property", f"SELECT eventic.add_property(%(id)s, 'p', '{DEEP_ARRAY}')"),
    ("start_workflow", f"SELECT eventic.start_workflow('listen(jsonb)', '{{\"x\": {DEEP_ARRAY}}}')"),
    ("send", f"SELECT eventic.send(%(wf)s, 't', '{{\"x\": {DEEP_OBJECT}}}')"),
    ("update_class_view", f"UPDATE public.story SET meta = '{DEEP_OBJECT}' WHERE id = %(id)s"),
    ("update_class_view_properties", f"UPDATE public.story SET properties = '{{\"p\": {DEEP_ARRAY}}}' WHERE id = %(id)s"),
    ("update_latest", f"UPDATE eventic.latest SET data = data || '{{\"tags\": {DEEP_ARRAY}}}' WHERE id = %(id)s"),
    ("insert_latest", f"INSERT INTO eventic.latest (class_type, data) VALUES ('Story', '{{\"meta\": {DEEP_OBJECT}}}')"),
    ("update_records", f"UPDATE eventic.records SET data = data || '{{\"tags\": {DEEP_ARRAY}}}' WHERE id = %(id)s"),
    ("tracked_table_insert", f"INSERT INTO tracked VALUES (1, '{DEEP_OBJECT}')"),
]


@pytest.mark.parametrize("statement", [s for _, s in DEEP_CASES], ids=[n for n, _ in DEEP_CASES])
def test_json_nested_deeper_than_128_is_refused_with_22023(cluster, db, statement):
    with cluster.connect(dbname=db) as conn:
        conn.execute(DEEP_SETUP)
        story = one(conn, "SELECT eventic.create('Story', '{\"title\": \"ok\"}')")
        wf = one(conn, "SELECT eventic.start_workflow('listen(jsonb)', '{}')")
        # nesting well within the limit is fine (the fix must not refuse ordinary documents)
        nested_ok = "[" * 40 + "]" * 40
        conn.execute("SELECT eventic.set_field(%s, 'tags', %s::jsonb)", (story, nested_ok))
        expect_sqlstate(conn, "22023", statement, {"id": story, "wf": wf})
        # nothing was written by the refused statement
        assert one(conn, "SELECT max(version) FROM eventic.records WHERE id = %s", (story,)) == 1
        assert one(conn, "SELECT count(*) FROM eventic.queue_deep") == 0
        assert one(conn, "SELECT count(*) FROM tracked") == 0


def nested(levels):
    return "[" * levels + "]" * levels


# (call, the deepest value it accepts): a value sits 1 level (a field) or 2 levels (a
# property: properties → key) down in the document, which holds 127
EDGE_CASES = [
    ("SELECT eventic.set_field(%s, 'tags', %s::jsonb)", 126),
    ("SELECT eventic.set_field(%s, 'properties', jsonb_build_object('p', %s::jsonb))", 125),
    ("SELECT eventic.add_property(%s, 'p', %s::jsonb)", 125),
    ("SELECT eventic.set_fields(%s, jsonb_build_object('tags', %s::jsonb))", 126),
]


@pytest.mark.parametrize("call,deepest", EDGE_CASES, ids=["set_field", "set_field_properties",
                                                           "add_property", "set_fields"])
def test_json_at_the_depth_limit_is_stored_readable_or_refused(cluster, db, call, deepest):
    """What is accepted can always be read back (history, diff): a value one level deeper than
    the document holds is refused with 22023, not stored to fail every later read."""
    with cluster.connect(dbname=db) as conn:
        conn.execute("SELECT eventic.register_class('Story')")
        story = one(conn, "SELECT eventic.create('Story', '{\"title\": \"t\"}')")
        expect_sqlstate(conn, "22023", call, (story, nested(deepest + 1)))
        assert one(conn, "SELECT max(version) FROM eventic.records WHERE id = %s", (story,)) == 0
        assert one(conn, call, (story, nested(deepest))) == 1
        assert one(conn, "SELECT count(*) FROM eventic.history(%s)", (story,)) == 2
        assert one(conn, "SELECT eventic.diff(%s, 0, 1) IS NOT NULL", (story,)) is True


@pytest.mark.parametrize("number", BIG_NUMBERS)
def test_numbers_beyond_float_range_round_trip_exactly(cluster, db, number):
    with cluster.connect(dbname=db) as conn:
        conn.execute("SELECT eventic.register_class('Story')")
        story = one(conn, "SELECT eventic.create('Story', '{\"title\": \"t\"}')")
        assert one(conn, f"SELECT eventic.set_field(%s, 'n', '{number}')", (story,)) == 1
        same = f"({{}})::numeric = {number}::numeric"
        assert one(conn, "SELECT " + same.format("eventic.hydrate(%s)->'n'"), (story,)) is True
        assert one(conn, "SELECT " + same.format("eventic.hydrate(%s, 1)->'n'"), (story,)) is True
        rows = conn.execute(
            "SELECT version, " + same.format("data->'n'") + ", changed_fields FROM eventic.history(%s)",
            (story,),
        ).fetchall()
        assert [(v, eq) for v, eq, _ in rows] == [(0, None), (1, True)]
        assert rows[1][2] == ["n"]
        assert one(conn, "SELECT " + same.format("eventic.diff(%s, 0, 1)->'n'->'new'"), (story,)) is True
        assert one(conn, "SELECT eventic.diff(%s, 0, 1)->'n'->'old'", (story,)) is None
        # an UPDATE of eventic.latest of that record builds on it and keeps the number
        version = one(
            conn, "UPDATE eventic.latest SET data = data || '{\"m\": 1}' WHERE id = %s RETURNING version", (story,)
        )
        assert version == 2
        assert one(conn, "SELECT " + same.format("eventic.hydrate(%s)->'n'"), (story,)) is True
        # and writes one itself
        one(conn, f"UPDATE eventic.latest SET data = data || '{{\"k\": {number}}}' WHERE id = %s RETURNING version",
            (story,))
        assert one(conn, "SELECT " + same.format("eventic.hydrate(%s)->'k'"), (story,)) is True
        assert one(conn, "SELECT eventic.diff(%s, 2, 3)", (story,)).keys() == {"k"}
        # create with it, set_fields and a property
        other = one(conn, f"SELECT eventic.create('Story', '{{\"n\": {number}}}')")
        assert one(conn, "SELECT " + same.format("eventic.hydrate(%s)->'n'"), (other,)) is True
        conn.execute(f"SELECT eventic.set_fields(%s, '{{\"a\": {number}, \"b\": 2}}')", (other,))
        conn.execute(f"SELECT eventic.add_property(%s, 'p', '{number}')", (other,))
        assert one(conn, "SELECT " + same.format("eventic.list_properties(%s)->'p'"), (other,)) is True
        assert len(conn.execute("SELECT * FROM eventic.history(%s)", (other,)).fetchall()) == 3


@pytest.mark.parametrize("number", BIG_NUMBERS)
def test_a_job_gets_numbers_beyond_float_range_exactly(cluster, db, number):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE got (how text, n numeric)")
        conn.execute(
            "CREATE FUNCTION whole(a jsonb) RETURNS void LANGUAGE sql AS"
            " $$ INSERT INTO got VALUES ('whole', (a->>0)::numeric) $$"
        )
        conn.execute(
            "CREATE FUNCTION typed(n numeric) RETURNS void LANGUAGE sql AS $$ INSERT INTO got VALUES ('typed', n) $$"
        )
        conn.execute("SELECT eventic.create_queue('nums')")
        conn.execute(f"SELECT eventic.enqueue('nums', 'whole(jsonb)', '[{number}]')")
        conn.execute(f"SELECT eventic.enqueue('nums', 'typed(numeric)', '[{number}]')")
        assert wait_until(lambda: one(conn, "SELECT count(*) FROM got") == 2, timeout=15), \
            conn.execute("SELECT job_id, attempts, last_error FROM eventic.queue_nums").fetchall()
        rows = conn.execute(f"SELECT how, n = {number}::numeric FROM got ORDER BY how").fetchall()
        assert rows == [("typed", True), ("whole", True)]


def test_a_workflow_holds_numbers_beyond_float_range_exactly(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION big() RETURNS numeric LANGUAGE sql AS 'SELECT 1e400::numeric'")
        conn.execute(
            "CREATE FUNCTION holder(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ DECLARE r jsonb; m jsonb; BEGIN"
            " r := eventic.step('big', 'big()'); m := eventic.recv('t', '30 seconds');"
            " RETURN jsonb_build_array(input->'n', r, m); END $$"
        )
        wf = one(conn, "SELECT eventic.start_workflow('holder(jsonb)', '{\"n\": -1e400}')")
        conn.execute("SELECT eventic.send(%s, 't', '1e-400')", (wf,))
        same = conn.execute(
            "SELECT (x->>0)::numeric = -1e400, (x->>1)::numeric = 1e400, (x->>2)::numeric = 1e-400"
            " FROM eventic.wait_workflow(%s, '30 seconds') x", (wf,)).fetchone()
        assert same == (True, True, True)


@pytest.mark.parametrize("args", ["[1e400]", f"[{DEEP_ARRAY}]"], ids=["huge_number", "deep"])
def test_a_poison_job_in_a_queue_table_does_not_stop_other_queues_or_workflows(cluster, db, args):
    """A superuser writes a job straight into a queue table that the old code could not
    decode (enqueue checks arguments; this skips it): JSON nested too deep must end dead with
    a 22023 error, a number beyond float range is held and the job runs with it. Meanwhile
    other queues' jobs and workflows run promptly (before the fix every claim failed with
    XX000 and the database's workers exited and restarted every few seconds)."""
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE ran (n int, at timestamptz DEFAULT clock_timestamp())")
        conn.execute("CREATE FUNCTION ran(n int) RETURNS void LANGUAGE sql AS $$ INSERT INTO ran (n) VALUES (n) $$")
        conn.execute("CREATE TABLE swallowed (a jsonb)")
        conn.execute("CREATE FUNCTION swallow(a jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO swallowed VALUES (a) $$")
        conn.execute(
            "CREATE FUNCTION flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS"
            " $$ BEGIN RETURN eventic.step('s', 'ran(int)', jsonb_build_array((input->>'n')::int + 1000)); END $$"
        )
        conn.execute("SELECT eventic.create_queue('poison')")
        conn.execute("SELECT eventic.create_queue('other')")
        # the database's workers are up
        conn.execute("SELECT eventic.enqueue('other', 'ran(int)', '[-1]')")
        assert wait_until(lambda: one(conn, "SELECT count(*) FROM ran WHERE n = -1") == 1, timeout=20)
        with conn.transaction():
            job = one(conn, "INSERT INTO eventic.queue_poison (fn, args, enqueued_by, max_attempts)"
                            " VALUES ('swallow(jsonb)', %s::jsonb, 10, 1) RETURNING job_id", (args,))
            # an ordinary enqueue into the same queue wakes the workers, which then meet the poison
            conn.execute("SELECT eventic.enqueue('poison', 'ran(int)', '[0]')")
        # rounds spread over more than the workers' restart time (5 s), each of which must
        # run a job of another queue and a workflow within ~2 s
        for n in range(1, 7):
            round_started = time.monotonic()
            conn.execute("SELECT eventic.enqueue('other', 'ran(int)', %s)", (Jsonb([n]),))
            assert wait_until(lambda: one(conn, "SELECT count(*) FROM ran WHERE n = %s", (n,)) == 1, timeout=3), \
                f"job {n} of another queue did not run within 3 s of a poison job"
            wf = one(conn, "SELECT eventic.start_workflow('flow(jsonb)', %s)", (Jsonb({"n": n}),))
            assert wait_until(lambda: status(conn, wf) == "SUCCESS", timeout=3), \
                f"workflow {n} did not finish within 3 s of a poison job: {status(conn, wf)}"
            time.sleep(max(0.0, 1.0 - (time.monotonic() - round_started)))
        if args == "[1e400]":
            # eventic holds such a number losslessly now: this job is no poison, it runs with
            # the exact number
            assert wait_until(lambda: one(conn, "SELECT count(*) FROM swallowed") == 1, timeout=30), \
                conn.execute("SELECT attempts, dead_at, last_error FROM eventic.queue_poison").fetchall()
            assert one(conn, "SELECT (a->>0)::numeric = 1e400 FROM swallowed") is True
        else:
            # too deep for eventic: the job ends dead, with the reason
            assert wait_until(lambda: one(
                conn, "SELECT dead_at IS NOT NULL FROM eventic.queue_poison WHERE job_id = %s", (job,)), timeout=30)
            (error,) = conn.execute("SELECT last_error FROM eventic.queue_poison WHERE job_id = %s", (job,)).fetchone()
            assert "22023" in error, error
            assert "XX000" not in error
            assert one(conn, "SELECT count(*) FROM swallowed") == 0
        # the ordinary job of the same queue ran too
        assert wait_until(lambda: one(conn, "SELECT count(*) FROM ran WHERE n = 0") == 1, timeout=10)


# ---------------------------------------------------------------------------------------------
# 2. jobs that kill their backend
# ---------------------------------------------------------------------------------------------

DIED = re.compile(r"died|dead|terminat|crash|killed|exit|lost", re.IGNORECASE)


def test_a_job_that_terminates_its_backend_goes_dead_after_max_attempts(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE ran (n int)")
        conn.execute("CREATE FUNCTION ran(n int) RETURNS void LANGUAGE sql AS $$ INSERT INTO ran VALUES (n) $$")
        conn.execute(
            "CREATE FUNCTION suicide() RETURNS boolean LANGUAGE sql AS 'SELECT pg_terminate_backend(pg_backend_pid())'"
        )
        conn.execute("SELECT eventic.create_queue('suicide')")
        conn.execute("SELECT eventic.create_queue('fine')")
        job = one(conn, "SELECT eventic.enqueue('suicide', 'suicide()', max_attempts => 2)")
        conn.execute("SELECT eventic.enqueue('fine', 'ran(int)', '[1]')")

        def dead():
            return one(conn, "SELECT dead_at IS NOT NULL FROM eventic.queue_suicide WHERE job_id = %s", (job,))

        assert wait_until(dead, timeout=30, interval=0.2), conn.execute(
            "SELECT attempts, last_error FROM eventic.queue_suicide").fetchall()
        attempts, error = conn.execute(
            "SELECT attempts, last_error FROM eventic.queue_suicide WHERE job_id = %s", (job,)).fetchone()
        assert attempts == 2
        assert error and DIED.search(error), error
        # the server is up and other jobs keep running
        conn.execute("SELECT eventic.enqueue('fine', 'ran(int)', '[2]')")
        assert wait_until(lambda: one(conn, "SELECT count(*) FROM ran") == 2, timeout=15)
        # and it stays dead
        time.sleep(1)
        assert one(conn, "SELECT attempts FROM eventic.queue_suicide WHERE job_id = %s", (job,)) == 2


def test_a_job_that_crashes_the_cluster_goes_dead_after_max_attempts():
    """Its own cluster: the job kill -9s its backend (each time the whole cluster goes
    through crash recovery); after max_attempts => 2 it is dead and the cluster is up."""
    crashed = Cluster(os.environ.get("EVENTIC_F_CRASH_DIR", "/tmp/eventic-f-crash"),
                      int(os.environ.get("EVENTIC_F_CRASH_PORT", "5831")))
    crashed.run("start", crashed.directory, str(crashed.port))
    try:
        with crashed.connect() as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute(
                "CREATE FUNCTION crash_me() RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
                " EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'kill -9 ' || pg_backend_pid()); END $$"
            )
            conn.execute("CREATE TABLE ran (n int)")
            conn.execute("CREATE FUNCTION ran(n int) RETURNS void LANGUAGE sql AS $$ INSERT INTO ran VALUES (n) $$")
            conn.execute("SELECT eventic.create_queue('crash')")
            job = one(conn, "SELECT eventic.enqueue('crash', 'crash_me()', max_attempts => 2)")

        def dead():
            try:
                with crashed.connect() as c:
                    return c.execute("SELECT dead_at IS NOT NULL FROM eventic.queue_crash WHERE job_id = %s",
                                     (job,)).fetchone()[0]
            except psycopg.OperationalError:  # in crash recovery
                return False

        assert wait_until(dead, timeout=60, interval=0.3), "the crashing job is not dead after 60 s"
        with crashed.connect() as conn:
            attempts, error = conn.execute(
                "SELECT attempts, last_error FROM eventic.queue_crash WHERE job_id = %s", (job,)).fetchone()
            assert attempts == 2
            assert error and DIED.search(error), error
            conn.execute("SELECT eventic.enqueue('crash', 'ran(int)', '[1]')")
            assert wait_until(lambda: one(conn, "SELECT count(*) FROM ran") == 1, timeout=15)
    finally:
        crashed.run("stop", crashed.directory)


# ---------------------------------------------------------------------------------------------
# 3. a completed step never runs again without a crash
# ---------------------------------------------------------------------------------------------

ONCE_SETUP = """
CREATE SEQUENCE s;
CREATE SEQUENCE tries;
CREATE TABLE hits (n bigint);
CREATE FUNCTION hit() RETURNS bigint LANGUAGE sql AS $$ INSERT INTO hits VALUES (nextval('s')) RETURNING n $$;
CREATE FUNCTION flaky() RETURNS int LANGUAGE plpgsql AS
    $$ BEGIN IF nextval('tries') < 3 THEN RAISE EXCEPTION 'not yet'; END IF; RETURN 7; END $$;
"""

ONCE_BODIES = {
    "sleep": "PERFORM eventic.sleep('1 second');",
    "recv": "PERFORM eventic.recv('t', '1 second');",
    "failing_step": "PERFORM eventic.step('flaky', 'flaky()');",
}


@pytest.mark.parametrize("then", list(ONCE_BODIES), ids=list(ONCE_BODIES))
def test_a_completed_step_never_runs_again(cluster, db, then):
    with cluster.connect(dbname=db) as conn:
        assert one(conn, "SHOW eventic.speculative_workflows") == "on"
        conn.execute(ONCE_SETUP)
        conn.execute(
            "CREATE FUNCTION body(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " DECLARE r jsonb; BEGIN r := eventic.step('hit', 'hit()'); "
            + ONCE_BODIES[then]
            + " RETURN r; END $$"
        )
        wf = one(conn, "SELECT eventic.start_workflow('body(jsonb)', '{}')")
        output = one(conn, "SELECT eventic.wait_workflow(%s, '60 seconds')", (wf,))
        assert one(conn, "SELECT last_value FROM s") == 1, "the step's nextval() ran more than once"
        assert output == 1
        assert conn.execute("SELECT n FROM hits").fetchall() == [(1,)]
        if then == "failing_step":
            assert one(conn, "SELECT last_value FROM tries") == 3


@pytest.mark.parametrize("then", ["", "PERFORM eventic.sleep('1 second');"], ids=["returns", "sleeps_after"])
def test_transaction_steps_run_inline_exactly_once(cluster, db, then):
    with cluster.connect(dbname=db) as conn:
        assert has_function(conn, "transaction"), "eventic.transaction(name, fn, args) does not exist"
        conn.execute("CREATE TABLE rows (n int)")
        conn.execute(
            "CREATE FUNCTION add_row(n int) RETURNS int LANGUAGE sql AS $$ INSERT INTO rows VALUES (n) RETURNING n * 10 $$"
        )
        conn.execute(
            "CREATE FUNCTION body(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " DECLARE a jsonb; b jsonb; c jsonb; BEGIN"
            " a := eventic.transaction('a', 'add_row(int)', '[1]');"
            " b := eventic.transaction('b', 'add_row(int)', jsonb_build_array(a::int + 1));"
            " c := eventic.transaction('c', 'add_row(int)', '[3]'); "
            + then
            + " RETURN jsonb_build_array(a, b, c); END $$"
        )
        wf = one(conn, "SELECT eventic.start_workflow('body(jsonb)', '{}')")
        assert one(conn, "SELECT eventic.wait_workflow(%s, '30 seconds')", (wf,)) == [10, 110, 30]
        assert conn.execute("SELECT n FROM rows ORDER BY n").fetchall() == [(1,), (3,), (11,)]


# ---------------------------------------------------------------------------------------------
# 4. lost wake-up, 5. stuck workflows
# ---------------------------------------------------------------------------------------------

def test_send_to_a_running_workflow_is_received_at_once(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS 'SELECT pg_sleep(0.5); SELECT 1'")
        conn.execute(
            "CREATE FUNCTION listener(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM eventic.step('slow', 'slow()'); RETURN eventic.recv('t', '1 day'); END $$"
        )
        for n in range(3):
            wf = one(conn, "SELECT eventic.start_workflow('listener(jsonb)', '{}')")
            # send while the body's step runs (a worker sleeping in pg_sleep), before its recv
            assert wait_until(lambda: one(
                conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventic worker'"
                      " AND wait_event = 'PgSleep' AND datname = current_database()") > 0, timeout=10)
            conn.execute("SELECT eventic.send(%s, 't', %s)", (wf, Jsonb({"n": n})))
            started = time.monotonic()
            assert one(conn, "SELECT eventic.wait_workflow(%s, '10 seconds')", (wf,)) == {"n": n}, \
                f"round {n}: the message was not received ({status(conn, wf)})"
            assert time.monotonic() - started < 8


def test_a_workflow_whose_job_went_dead_ends_in_error(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(
            "CREATE FUNCTION doomed(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN '1'; END $$"
        )
        conn.execute("SELECT eventic.create_queue('doomed_q')")
        wf = one(conn, "SELECT eventic.start_workflow('doomed(jsonb)', '{}', queue => 'doomed_q')")
        assert wait_until(lambda: status(conn, wf) == "ERROR", timeout=75, interval=0.25), \
            f"status {status(conn, wf)}; jobs: " + str(conn.execute(
                "SELECT attempts, max_attempts, dead_at, last_error FROM eventic.queue_doomed_q").fetchall())
        (error,) = conn.execute("SELECT error FROM eventic.workflows WHERE workflow_id = %s", (wf,)).fetchone()
        assert error and DIED.search(error), error
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT eventic.wait_workflow(%s, '1 second')", (wf,))


# ---------------------------------------------------------------------------------------------
# 6. outbox under conflicting writers
# ---------------------------------------------------------------------------------------------

def test_outbox_events_match_committed_versions_one_to_one(cluster, db):
    writers, writes_each, records = 8, 50, 3
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE log (id uuid, version int, data jsonb)")
        conn.execute(
            "CREATE FUNCTION handler(event jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO log"
            " VALUES ((event->>'id')::uuid, (event->>'version')::int, event->'data') $$"
        )
        conn.execute("SELECT eventic.register_class('Doc')")
        conn.execute("SELECT eventic.subscribe('Doc', 'handler(jsonb)')")
        ids = [one(conn, "SELECT eventic.create('Doc', %s)", (Jsonb({"k": i}),)) for i in range(records)]
    errors = []
    start = threading.Barrier(writers)

    def writer(i):
        try:
            rng = random.Random(i)
            with cluster.connect(dbname=db) as c:
                start.wait()
                for n in range(writes_each):
                    c.execute("SELECT eventic.set_field(%s, %s, %s)", (rng.choice(ids), f"w{i}", Jsonb(n)))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with cluster.connect(dbname=db) as conn:
        total = records + writers * writes_each
        assert one(conn, "SELECT count(*) FROM eventic.records WHERE class_type = 'Doc'") == total

        def drained():
            return one(conn, "SELECT count(*) FROM eventic.queue_doc") == 0

        assert wait_until(drained, timeout=60, interval=0.2)
        # events per (id, version): exactly one for each version, no more, no other
        extra = conn.execute(
            "SELECT l.id, l.version, count(*) FROM log l GROUP BY 1, 2 HAVING count(*) > 1").fetchall()
        assert extra == [], f"{len(extra)} versions got more than one event"
        missing = conn.execute(
            "SELECT r.id, r.version FROM eventic.records r WHERE r.class_type = 'Doc'"
            " AND NOT EXISTS (SELECT FROM log l WHERE l.id = r.id AND l.version = r.version)").fetchall()
        assert missing == []
        phantoms = conn.execute(
            "SELECT l.id, l.version FROM log l LEFT JOIN eventic.records r USING (id, version)"
            " WHERE r.data IS DISTINCT FROM l.data").fetchall()
        assert phantoms == [], f"{len(phantoms)} events whose data is not their version's"
        assert one(conn, "SELECT count(*) FROM log") == total
        # and each event's data is what hydrate returns for that version
        mismatched = one(
            conn, "SELECT count(*) FROM log l WHERE eventic.hydrate(l.id, l.version) - 'id' - 'version'"
                  " - 'class_type' <> l.data")
        assert mismatched == 0


# ---------------------------------------------------------------------------------------------
# 7. unpause and retry_job start jobs at commit
# ---------------------------------------------------------------------------------------------

STAMP_SETUP = """
CREATE TABLE stamps (n int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE switch (ok boolean NOT NULL);
INSERT INTO switch VALUES (false);
CREATE FUNCTION stamp(n int) RETURNS void LANGUAGE sql AS $$ INSERT INTO stamps (n) VALUES (n) $$;
CREATE FUNCTION stamp_when_allowed(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN
    IF NOT (SELECT ok FROM switch) THEN RAISE EXCEPTION 'not yet'; END IF;
    INSERT INTO stamps (n) VALUES (n); END $$;
"""


def stamp_after(conn, n, since):
    assert wait_until(lambda: one(conn, "SELECT count(*) FROM stamps WHERE n = %s", (n,)) == 1, timeout=10)
    return one(conn, "SELECT extract(epoch FROM at - %s) * 1000 FROM stamps WHERE n = %s", (since, n))


def test_unpausing_a_queue_starts_its_jobs_within_100_ms(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STAMP_SETUP)
        delays = []
        for n in range(3):  # the old code's delay is uniform in 0..poll_interval: three rounds
            # a new queue, paused from its start: no worker's drain ever saw it unpaused (a
            # drain that began before a pause committed may still claim a job enqueued after it)
            queue = f"held_{n}"
            with conn.transaction():
                conn.execute("SELECT eventic.create_queue(%s)", (queue,))
                conn.execute("SELECT eventic.alter_queue(%s, paused => true)", (queue,))
            conn.execute("SELECT eventic.enqueue(%s, 'stamp(int)', %s)", (queue, Jsonb([n])))
            time.sleep(2)  # the worker is idle (the queue is paused)
            assert one(conn, "SELECT count(*) FROM stamps WHERE n = %s", (n,)) == 0, "a paused queue ran a job"
            with conn.transaction():
                conn.execute("SELECT eventic.alter_queue(%s, paused => false)", (queue,))
                committed = one(conn, "SELECT clock_timestamp()")
            delays.append(float(stamp_after(conn, n, committed)))
        assert max(delays) < 100, f"job start after unpause (ms): {delays}"


def test_retry_job_starts_the_job_within_100_ms(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STAMP_SETUP)
        conn.execute("SELECT eventic.create_queue('revived')")
        delays = []
        for n in range(3):
            conn.execute("UPDATE switch SET ok = false")
            job = one(conn, "SELECT eventic.enqueue('revived', 'stamp_when_allowed(int)', %s, max_attempts => 1)",
                      (Jsonb([n]),))
            assert wait_until(lambda: one(
                conn, "SELECT dead_at IS NOT NULL FROM eventic.queue_revived WHERE job_id = %s", (job,)), timeout=10)
            conn.execute("UPDATE switch SET ok = true")
            time.sleep(2)  # the worker is idle
            with conn.transaction():
                conn.execute("SELECT eventic.retry_job('revived', %s)", (job,))
                committed = one(conn, "SELECT clock_timestamp()")
            delays.append(float(stamp_after(conn, n, committed)))
        assert max(delays) < 100, f"job start after retry_job (ms): {delays}"


# ---------------------------------------------------------------------------------------------
# 8. read paths assign no transaction id
# ---------------------------------------------------------------------------------------------

READS = [
    ("workflow_status", "SELECT eventic.workflow_status(%(wf)s)"),
    ("get_event", "SELECT eventic.get_event(%(wf)s, 'k')"),
    ("get_event_missing", "SELECT eventic.get_event(%(wf)s, 'missing')"),
    ("wait_workflow", "SELECT eventic.wait_workflow(%(wf)s, '0 s')"),
    ("hydrate", "SELECT eventic.hydrate(%(id)s)"),
    ("hydrate_version", "SELECT eventic.hydrate(%(id)s, 0)"),
    ("history", "SELECT count(*) FROM eventic.history(%(id)s)"),
    ("diff", "SELECT eventic.diff(%(id)s, 0, 1)"),
    ("list_properties", "SELECT eventic.list_properties(%(id)s)"),
    ("hydrate_as_of", "SELECT eventic.hydrate_as_of(%(id)s, now())"),
]


@pytest.fixture(scope="module")
def read_db(cluster):
    name = "it_reads_" + os.urandom(4).hex()
    with cluster.connect() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with cluster.connect(dbname=name) as conn:
        conn.execute("CREATE EXTENSION eventic")
        conn.execute(
            "CREATE FUNCTION quick(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN"
            " PERFORM eventic.set_event('k', '\"v\"'); RETURN '{\"done\": true}'; END $$"
        )
        wf = one(conn, "SELECT eventic.start_workflow('quick(jsonb)', '{}')")
        assert one(conn, "SELECT eventic.wait_workflow(%s, '30 seconds')", (wf,)) == {"done": True}
        story = one(conn, "SELECT eventic.create('Story', '{\"title\": \"a\"}')")
        conn.execute("SELECT eventic.set_field(%s, 'title', '\"b\"')", (story,))
    yield name, {"wf": wf, "id": story}
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize("statement", [s for _, s in READS], ids=[n for n, _ in READS])
def test_read_paths_assign_no_transaction_id(cluster, read_db, statement):
    name, params = read_db
    with cluster.connect(dbname=name) as conn:
        with conn.transaction():
            conn.execute(statement, params)
            assert one(conn, "SELECT pg_current_xact_id_if_assigned()") is None


# ---------------------------------------------------------------------------------------------
# 9. smaller ones
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("run_at", ["-infinity", "infinity"])
def test_enqueue_with_an_infinite_run_at_is_refused(cluster, db, run_at):
    role = "eventic_f_" + os.urandom(3).hex()
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION noop() RETURNS void LANGUAGE sql AS 'SELECT'")
        conn.execute("SELECT eventic.create_queue('inf', worker => false)")
        expect_sqlstate(conn, "22023", "SELECT eventic.enqueue('inf', 'noop()', run_at => %s::timestamptz)", (run_at,))
        expect_sqlstate(conn, "22023", "SELECT count(*) FROM eventic.enqueue_batch('inf', 'noop()',"
                                       " ARRAY['[]'::jsonb], run_at => %s::timestamptz)", (run_at,))
        assert one(conn, "SELECT count(*) FROM eventic.queue_inf") == 0
        # queue_stats works, for a superuser and for an ordinary role
        conn.execute("SELECT * FROM eventic.queue_stats")
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"SET ROLE {role}")
            conn.execute("SELECT * FROM eventic.queue_stats")
            conn.execute("RESET ROLE")
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_enqueue_batch_refuses_a_null_or_unknown_queue(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION noop(n int) RETURNS void LANGUAGE sql AS 'SELECT'")
        expect_sqlstate(conn, "22023", "SELECT count(*) FROM eventic.enqueue_batch(NULL, 'noop(int)', ARRAY['[1]'::jsonb])")
        expect_sqlstate(conn, "22023", "SELECT count(*) FROM eventic.enqueue_batch(NULL, 'noop(int)', ARRAY[]::jsonb[])")
        expect_sqlstate(conn, "42704", "SELECT count(*) FROM eventic.enqueue_batch('no_such_queue', 'noop(int)',"
                                       " ARRAY['[1]'::jsonb])")
        expect_sqlstate(conn, "42704", "SELECT count(*) FROM eventic.enqueue_batch('no_such_queue', 'noop(int)',"
                                       " ARRAY[]::jsonb[])")


def test_lease_intervals_beyond_range_are_refused(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION noop(n int) RETURNS void LANGUAGE sql AS 'SELECT'")
        conn.execute("SELECT eventic.create_queue('ext', worker => false)")
        conn.execute("SELECT eventic.enqueue('ext', 'noop(int)', '[1]')")
        expect_sqlstate(conn, "22023", "SELECT * FROM eventic.dequeue('ext', 1, '7116800 months')")
        # nothing was leased by the refused call
        assert one(conn, "SELECT count(*) FROM eventic.queue_ext WHERE lease_until IS NOT NULL") == 0
        (job,) = conn.execute("SELECT job_id FROM eventic.dequeue('ext', 1, '1 minute')").fetchone()
        expect_sqlstate(conn, "22023", "SELECT eventic.extend_lease('ext', %s, '7116800 months')", (job,))
        until = one(conn, "SELECT lease_until - now() FROM eventic.queue_ext WHERE job_id = %s", (job,))
        assert until.total_seconds() <= 61


def test_wait_workflow_in_the_starting_transaction_fails_at_once(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION quick(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '1'::jsonb $$")
        with pytest.raises(psycopg.Error) as info:
            with conn.transaction():
                wf = one(conn, "SELECT eventic.start_workflow('quick(jsonb)', '{}')")
                started = time.monotonic()
                try:
                    conn.execute("SELECT eventic.wait_workflow(%s, '5 seconds')", (wf,))
                finally:
                    elapsed = time.monotonic() - started
        assert info.value.sqlstate == "55000", f"{info.value.sqlstate}: {info.value}"
        assert "commit" in str(info.value).lower(), str(info.value)
        assert elapsed < 2


def test_setting_properties_to_null_in_a_class_view_is_an_error(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("SELECT eventic.register_class('Story', '{\"type\": \"object\", \"properties\":"
                     " {\"title\": {\"type\": \"string\"}}}', view_schema => 'public')")
        story = one(conn, "INSERT INTO public.story (title, properties) VALUES ('a', '{\"p\": 1}') RETURNING id")
        expect_sqlstate(conn, "23502", "UPDATE public.story SET properties = NULL WHERE id = %s", (story,))
        assert one(conn, "SELECT eventic.list_properties(%s)", (story,)) == {"p": 1}
        assert one(conn, "SELECT max(version) FROM eventic.records WHERE id = %s", (story,)) == 0


def test_a_schema_with_additional_properties_false_accepts_valid_records(cluster, db):
    schema = {
        "type": "object",
        "title": "Story",
        "additionalProperties": False,
        "properties": {"title": {"type": "string"}, "words": {"type": "integer"}},
        "required": ["title"],
    }
    with cluster.connect(dbname=db) as conn:
        conn.execute("SELECT eventic.register_class('Story', %s, view_schema => 'public')", (Jsonb(schema),))
        story = one(conn, "SELECT eventic.create('Story', '{\"title\": \"a\"}')")
        assert one(conn, "SELECT eventic.set_field(%s, 'words', '3')", (story,)) == 1
        assert one(conn, "SELECT eventic.add_property(%s, 'featured')", (story,)) == 2
        assert one(conn, "UPDATE public.story SET title = 'b' WHERE id = %s RETURNING version", (story,)) == 3
        one(conn, "INSERT INTO public.story (title) VALUES ('c') RETURNING id")
        # an unknown field is still refused
        expect_sqlstate(conn, "23514", "SELECT eventic.set_field(%s, 'bogus', '1')", (story,))
        expect_sqlstate(conn, "23514", "SELECT eventic.create('Story', '{\"title\": \"x\", \"extra\": 1}')")
        assert one(conn, "SELECT max(version) FROM eventic.records WHERE id = %s", (story,)) == 3
