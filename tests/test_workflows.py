"""Durable workflows run by the background worker: steps recorded and replayed, database
steps exactly once across kill -9, sleeps that survive restarts, messages, events,
children, cancel, resume, fork, and the errors of a non-deterministic body."""

import os
import time

import psycopg
import pytest

from conftest import Cluster
from test_queues import wait_until

STEP_FUNCTIONS = """
CREATE TABLE effects (workflow text, step int, who name DEFAULT current_user);
CREATE FUNCTION add_effect(workflow text, step int) RETURNS int LANGUAGE sql
    AS $$ INSERT INTO effects (workflow, step) VALUES (workflow, step) RETURNING step * 10 $$;
CREATE FUNCTION ten_steps(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + eventic.step('step ' || i, 'add_effect(text,int)',
                                      jsonb_build_array(eventic.workflow_id(), i))::int;
    END LOOP;
    RETURN jsonb_build_object('total', total);
END $$;
CREATE FUNCTION napper(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.step('before', 'add_effect(text,int)', jsonb_build_array(eventic.workflow_id(), 1));
    PERFORM eventic.sleep((input->>'sleep')::interval);
    PERFORM eventic.step('after', 'add_effect(text,int)', jsonb_build_array(eventic.workflow_id(), 2));
    RETURN '"rested"';
END $$;
"""


def effects(conn, workflow=None):
    if workflow is None:
        return conn.execute("SELECT count(*), count(DISTINCT (workflow, step)) FROM effects").fetchone()
    return [r[0] for r in conn.execute(
        "SELECT step FROM effects WHERE workflow = %s ORDER BY step", (workflow,))]


def status(conn, workflow):
    return conn.execute("SELECT eventic.workflow_status(%s)", (workflow,)).fetchone()[0]


def test_steps_run_once_and_replays_return_records(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        (wf,) = conn.execute("SELECT eventic.start_workflow('ten_steps(jsonb)', '{}', 'w1')").fetchone()
        # the same id again starts nothing new
        assert conn.execute("SELECT eventic.start_workflow('ten_steps(jsonb)', '{}', 'w1')").fetchone()[0] == wf
        (output,) = conn.execute("SELECT eventic.wait_workflow('w1', '30 seconds')").fetchone()
        assert output == {"total": 550}
        assert effects(conn, "w1") == list(range(1, 11))
        steps = conn.execute(
            "SELECT position, name, output FROM eventic.workflow_steps WHERE workflow_id = 'w1' ORDER BY position"
        ).fetchall()
        assert [(p, n) for p, n, _ in steps] == [(i, f"step {i + 1}") for i in range(10)]
        assert status(conn, "w1") == "SUCCESS"


def test_start_inside_a_rolled_back_transaction_starts_nothing(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        try:
            with conn.transaction():
                conn.execute("SELECT eventic.start_workflow('ten_steps(jsonb)', '{}', 'never')")
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        time.sleep(1)
        assert conn.execute("SELECT count(*) FROM eventic.workflows").fetchone()[0] == 0
        assert effects(conn) == (0, 0)


def test_non_deterministic_body_fails_with_a_clear_error(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        # the body asks for a differently named step on every run (random() is not recorded,
        # eventic.random() would be): the replay must notice. (The sleep makes it a body that
        # is replayed: one that finishes in a single speculative run never is.)
        conn.execute(
            "CREATE FUNCTION fickle(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " BEGIN"
            " PERFORM eventic.step('a' || floor(random() * 1e9), 'add_effect(text,int)', jsonb_build_array('f', 1));"
            " PERFORM eventic.step('b', 'add_effect(text,int)', jsonb_build_array('f', 2));"
            " PERFORM eventic.sleep('0 seconds');"
            " RETURN '{}'; END $$"
        )
        conn.execute("SELECT eventic.start_workflow('fickle(jsonb)', '{}', 'fickle')")
        assert wait_until(lambda: status(conn, "fickle") == "ERROR", timeout=30)
        (error,) = conn.execute("SELECT error FROM eventic.workflows WHERE workflow_id = 'fickle'").fetchone()
        assert "not deterministic" in error
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT eventic.wait_workflow('fickle', '1 second')")


def test_failing_step_retries_then_succeeds_or_fails_the_workflow(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        # a failing step's effects roll back with it; a sequence counts the attempts anyway
        conn.execute("CREATE SEQUENCE tries")
        conn.execute(
            "CREATE FUNCTION second_time_lucky() RETURNS int LANGUAGE plpgsql AS $$"
            " BEGIN IF nextval('tries') < 2 THEN RAISE EXCEPTION 'not yet'; END IF; RETURN 7; END $$"
        )
        conn.execute(
            "CREATE FUNCTION never_lucky() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'never'; END $$"
        )
        conn.execute(
            "CREATE FUNCTION lucky(input jsonb) RETURNS jsonb LANGUAGE sql AS"
            " $$ SELECT eventic.step('try', 'second_time_lucky()') $$"
        )
        conn.execute(
            "CREATE FUNCTION unlucky(input jsonb) RETURNS jsonb LANGUAGE sql AS"
            " $$ SELECT eventic.step('try', 'never_lucky()') $$"
        )
        conn.execute("SELECT eventic.start_workflow('lucky(jsonb)', '{}', 'lucky')")
        conn.execute("SELECT eventic.start_workflow('unlucky(jsonb)', '{}', 'unlucky')")
        assert conn.execute("SELECT eventic.wait_workflow('lucky', '30 seconds')").fetchone()[0] == 7
        assert wait_until(lambda: status(conn, "unlucky") == "ERROR", timeout=30)
        (attempts, error) = conn.execute(
            "SELECT attempts, error FROM eventic.workflow_steps WHERE workflow_id = 'unlucky'"
        ).fetchone()
        assert attempts == 3 and error == "P0001: never"


def test_messages_events_and_timeouts(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(
            "CREATE FUNCTION listener(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " DECLARE first jsonb; second jsonb; BEGIN"
            " PERFORM eventic.set_event('ready', 'true');"
            " first := eventic.recv('go', '20 seconds');"
            " second := eventic.recv('go', '1 second');"
            " RETURN jsonb_build_object('first', first, 'second', second); END $$"
        )
        conn.execute("SELECT eventic.start_workflow('listener(jsonb)', '{}', 'listener')")
        assert conn.execute("SELECT eventic.get_event('listener', 'ready', '10 seconds')").fetchone()[0] is True
        conn.execute("SELECT eventic.send('listener', 'go', '{\"n\": 1}')")
        output = conn.execute("SELECT eventic.wait_workflow('listener', '30 seconds')").fetchone()[0]
        assert output == {"first": {"n": 1}, "second": None}
        assert conn.execute("SELECT eventic.get_event('listener', 'missing')").fetchone()[0] is None
        with pytest.raises(psycopg.errors.NoDataFound):
            conn.execute("SELECT eventic.send('no-such-workflow', 'go')")


def test_cancel_a_sleeping_workflow_its_later_steps_never_run(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        conn.execute("SELECT eventic.start_workflow('napper(jsonb)', '{\"sleep\": \"3 seconds\"}', 'nap')")
        assert wait_until(lambda: status(conn, "nap") == "SLEEPING", timeout=20)
        conn.execute("SELECT eventic.cancel_workflow('nap')")
        time.sleep(4.5)
        assert status(conn, "nap") == "CANCELLED"
        assert effects(conn, "nap") == [1]
        # resume runs the rest
        conn.execute("SELECT eventic.resume_workflow('nap')")
        assert conn.execute("SELECT eventic.wait_workflow('nap', '20 seconds')").fetchone()[0] == "rested"
        assert effects(conn, "nap") == [1, 2]


def test_fork_reuses_the_records_before_a_step(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        conn.execute("SELECT eventic.start_workflow('ten_steps(jsonb)', '{}', 'orig')")
        conn.execute("SELECT eventic.wait_workflow('orig', '30 seconds')")
        (fork,) = conn.execute("SELECT eventic.fork_workflow('orig', 7)").fetchone()
        assert conn.execute("SELECT eventic.wait_workflow(%s, '30 seconds')", (fork,)).fetchone()[0] == {"total": 550}
        # steps 1..7 came from the records, 8..10 ran again in the fork
        assert effects(conn, fork) == [8, 9, 10]


def test_child_workflows(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        conn.execute(
            "CREATE FUNCTION parent(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " DECLARE a text; b text; BEGIN"
            " a := eventic.start_child('ten_steps(jsonb)', '{}');"
            " b := eventic.start_child('ten_steps(jsonb)', '{}');"
            " RETURN jsonb_build_array(eventic.await_workflow(a), eventic.await_workflow(b)); END $$"
        )
        conn.execute("SELECT eventic.start_workflow('parent(jsonb)', '{}', 'parent')")
        output = conn.execute("SELECT eventic.wait_workflow('parent', '60 seconds')").fetchone()[0]
        assert output == [{"total": 550}, {"total": 550}]
        assert effects(conn) == (20, 20)


def test_hundreds_of_workflows_survive_kill_9_with_every_step_once():
    crashed = Cluster(os.environ.get("EVENTIC_WF_CRASH_DIR", "/tmp/eventic-it-wfcrash"), 5803)
    crashed.run("start", crashed.directory, str(crashed.port))
    try:
        with crashed.connect() as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute(STEP_FUNCTIONS)
            # steps of ~1 ms, so that the workflows are surely still running at the kill
            conn.execute(
                "CREATE OR REPLACE FUNCTION add_effect(workflow text, step int) RETURNS int LANGUAGE sql"
                " AS $$ SELECT pg_sleep(0.001); INSERT INTO effects (workflow, step) VALUES (workflow, step)"
                " RETURNING step * 10 $$"
            )
            with conn.transaction():
                conn.execute(
                    "SELECT count(eventic.start_workflow('ten_steps(jsonb)', '{}', 'many-' || g))"
                    " FROM generate_series(1, 300) g"
                )
                conn.execute(
                    "SELECT count(eventic.start_workflow('napper(jsonb)', '{\"sleep\": \"2 seconds\"}', 'sleepy-' || g))"
                    " FROM generate_series(1, 20) g"
                )
            assert wait_until(lambda: effects(conn)[0] >= 300, timeout=120)
        crashed.run("kill", crashed.directory)
        crashed.run("resume", crashed.directory)
        with crashed.connect() as conn:
            assert effects(conn)[0] < 3040, "the kill came after everything had finished"

            def all_done():
                return conn.execute(
                    "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), count(*) FROM eventic.workflows"
                ).fetchone() == (320, 320)

            assert wait_until(all_done, timeout=300)
            # every step's database effect exists exactly once
            assert effects(conn) == (3040, 3040)
    finally:
        crashed.run("stop", crashed.directory)


def test_a_body_that_catches_errors_around_a_step_still_stops_there(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        conn.execute(
            "CREATE FUNCTION catcher(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$"
            " DECLARE r jsonb; BEGIN"
            " BEGIN r := eventic.step('one', 'add_effect(text,int)', jsonb_build_array('catcher', 1));"
            " EXCEPTION WHEN OTHERS THEN r := to_jsonb('caught: ' || SQLERRM); END;"
            " RETURN jsonb_build_object('r', r); END $$"
        )
        conn.execute("SELECT eventic.start_workflow('catcher(jsonb)', '{}', 'catcher')")
        output = conn.execute("SELECT eventic.wait_workflow('catcher', '30 seconds')").fetchone()[0]
        assert output == {"r": 10}
        assert effects(conn, "catcher") == [1]


def test_timeout_ends_a_sleeping_workflow_on_time(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute(STEP_FUNCTIONS)
        conn.execute(
            "SELECT eventic.start_workflow('napper(jsonb)', '{\"sleep\": \"1 hour\"}', 'late', timeout => '2 seconds')"
        )
        assert wait_until(lambda: status(conn, "late") == "ERROR", timeout=20)
        (error,) = conn.execute("SELECT error FROM eventic.workflows WHERE workflow_id = 'late'").fetchone()
        assert error == "timed out"
        assert effects(conn, "late") == [1]
