"""Operations (issue 16, items 3-6): progress of running jobs and workflow steps seen from
another session, workflow evolution with eventic.patched, the metrics view (and the
postgres_exporter queries file) against eventic.queue_stats, and the retention of finished
workflows."""

import os
import pathlib
import time

import psycopg
import pytest
import yaml
from psycopg import sql

from conftest import wait_until

ROOT = pathlib.Path(__file__).resolve().parent.parent

NOT_READY = "55000"
INVALID = "22023"


def sqlstate(conn, query, params=None):
    try:
        conn.execute(query, params)
        return None
    except psycopg.Error as e:
        return e.sqlstate


@pytest.fixture()
def roles(cluster, db):
    """Two ordinary roles (app, other) that may use the test database's public schema."""
    tag = os.urandom(3).hex()
    names = (f"ops_{tag}_app", f"ops_{tag}_other")
    with cluster.connect(dbname=db) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(name)))
    yield names
    with cluster.connect(dbname=db) as conn:
        for name in names:
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


PROGRESS_FUNCTIONS = """
CREATE TABLE done (n int, who name DEFAULT current_user);
GRANT ALL ON done TO PUBLIC;
CREATE FUNCTION slow_job(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        PERFORM eventic.set_progress(jsonb_build_object('done', i, 'total', n));
        PERFORM pg_sleep(0.4);
    END LOOP;
    INSERT INTO done (n) VALUES (n);
END $$;
CREATE FUNCTION quick_job(n int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.set_progress(jsonb_build_object('n', n));
    INSERT INTO done (n) VALUES (n);
END $$;
CREATE FUNCTION slow_step(n int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        PERFORM eventic.set_progress(jsonb_build_object('step_done', i));
        PERFORM pg_sleep(0.4);
    END LOOP;
    RETURN n;
END $$;
CREATE FUNCTION stepper(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('r', eventic.step('crunch', 'slow_step(int)', '[8]'));
END $$;
"""


def progress_of(conn, job_id):
    return conn.execute(
        "SELECT progress, run_as::text, updated_at >= started_at FROM eventic.progress WHERE job_id = %s",
        (job_id,)).fetchone()


def test_progress_is_visible_from_another_session_while_the_job_runs(cluster, db, roles):
    app, other = roles
    with cluster.connect(dbname=db) as pg, cluster.connect(dbname=db, user=app) as a, \
            cluster.connect(dbname=db, user=other) as o:
        pg.execute(PROGRESS_FUNCTIONS)
        pg.execute("SELECT eventic.create_queue('slow')")
        (job,) = a.execute("SELECT eventic.enqueue('slow', 'slow_job(int)', '[10]')").fetchone()
        seen = []

        def sees_progress():
            row = progress_of(a, job)
            if row:
                seen.append(row[0]["done"])
            return len(set(seen)) >= 3
        # the job's transaction is open all along: the progress comes through shared memory
        assert wait_until(sees_progress, timeout=20, interval=0.1), seen
        row = progress_of(a, job)
        assert row[0]["total"] == 10 and row[1] == app and row[2]
        assert seen == sorted(seen)
        # the superuser sees it too; another role does not (not even through the function)
        assert progress_of(pg, job) is not None
        assert progress_of(o, job) is None
        assert o.execute("SELECT count(*) FROM eventic.progress_rows()").fetchone()[0] == 0
        assert pg.execute("SELECT count(*) FROM done").fetchone()[0] == 0     # still running
        assert wait_until(lambda: pg.execute("SELECT count(*) FROM done").fetchone()[0] == 1, timeout=20)
        # gone once the job returned
        assert wait_until(lambda: progress_of(pg, job) is None, timeout=5)


def test_progress_of_a_workflow_step_is_visible_while_it_runs(cluster, db):
    with cluster.connect(dbname=db) as pg, cluster.connect(dbname=db) as watcher:
        pg.execute(PROGRESS_FUNCTIONS)
        (wf,) = pg.execute("SELECT eventic.start_workflow('stepper(jsonb)', '{}', 'p1')").fetchone()

        def step_progress():
            return watcher.execute(
                "SELECT workflow_id, step_position, step_name, progress, queue_name FROM eventic.progress"
                " WHERE workflow_id = 'p1'").fetchone()
        assert wait_until(lambda: (step_progress() or (None,) * 4)[3] is not None
                          and step_progress()[3]["step_done"] >= 2, timeout=20)
        workflow_id, position, name, progress, queue = step_progress()
        assert (workflow_id, position, name, queue) == ("p1", 0, "crunch", "workflows")
        assert pg.execute("SELECT eventic.wait_workflow('p1', '30 seconds')").fetchone()[0] == {"r": 8}
        assert step_progress() is None


def test_progress_in_jobs_that_would_run_as_a_group_runs_each_once(cluster, db):
    """Jobs of one function are run as one statement; one that reports progress makes them
    run one by one (its progress must be one job's), each exactly once."""
    with cluster.connect(dbname=db) as pg:
        pg.execute(PROGRESS_FUNCTIONS)
        pg.execute("SELECT eventic.create_queue('quick', worker => false)")
        pg.execute("SELECT eventic.enqueue_batch('quick', 'quick_job(int)', "
                   "array(SELECT jsonb_build_array(i) FROM generate_series(1, 300) i))")
        assert pg.execute("SELECT eventic.run_pending('quick', 1000)").fetchone()[0] == 300
        assert pg.execute("SELECT count(*), count(DISTINCT n) FROM done").fetchone() == (300, 300)
        assert pg.execute("SELECT count(*) FROM eventic.progress").fetchone()[0] == 0


def test_set_progress_errors(cluster, db):
    with cluster.connect(dbname=db) as pg:
        pg.execute(PROGRESS_FUNCTIONS)
        assert sqlstate(pg, "SELECT eventic.set_progress('{\"done\": 1}')") == NOT_READY
        assert sqlstate(pg, "SELECT eventic.set_progress(NULL)") == INVALID
        pg.execute("""CREATE FUNCTION big_job(n int) RETURNS void LANGUAGE sql
                      AS $$ SELECT eventic.set_progress(to_jsonb(repeat('x', n))) $$""")
        pg.execute("SELECT eventic.create_queue('big', worker => false)")
        pg.execute("SELECT eventic.enqueue('big', 'big_job(int)', '[5000]', max_attempts => 1)")
        pg.execute("SELECT eventic.run_pending('big')")
        (error,) = pg.execute("SELECT last_error FROM eventic.queue_big").fetchone()
        assert error.startswith("22023: progress is too large"), error


# ---------------------------------------------------------------------------------------------
# workflow evolution

EVOLUTION = """
CREATE TABLE ran (workflow text, step text);
CREATE FUNCTION mark(workflow text, step text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO ran VALUES (workflow, step) RETURNING step $$;
"""

BODY_V1 = """
CREATE OR REPLACE FUNCTION flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE id text := eventic.workflow_id();
BEGIN
    PERFORM eventic.step('A', 'mark(text,text)', jsonb_build_array(id, 'A'));
    PERFORM eventic.recv('go', '1 hour');
    PERFORM eventic.step('B', 'mark(text,text)', jsonb_build_array(id, 'B'));
    PERFORM eventic.recv('end', '1 hour');
    RETURN '"old"';
END $$;
"""

# the patch: step C instead of B for runs that had not passed that point
BODY_V2 = """
CREATE OR REPLACE FUNCTION flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE id text := eventic.workflow_id(); path text;
BEGIN
    PERFORM eventic.step('A', 'mark(text,text)', jsonb_build_array(id, 'A'));
    PERFORM eventic.recv('go', '1 hour');
    IF eventic.patched('use-c') THEN
        PERFORM eventic.step('C', 'mark(text,text)', jsonb_build_array(id, 'C'));
        path := 'new';
    ELSE
        PERFORM eventic.step('B', 'mark(text,text)', jsonb_build_array(id, 'B'));
        path := 'old';
    END IF;
    PERFORM eventic.recv('end', '1 hour');
    RETURN to_jsonb(path);
END $$;
"""

# the patch retired: no run is left that took the old branch
BODY_V3 = """
CREATE OR REPLACE FUNCTION flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE id text := eventic.workflow_id();
BEGIN
    PERFORM eventic.step('A', 'mark(text,text)', jsonb_build_array(id, 'A'));
    PERFORM eventic.recv('go', '1 hour');
    PERFORM eventic.step('C', 'mark(text,text)', jsonb_build_array(id, 'C'));
    PERFORM eventic.recv('end', '1 hour');
    RETURN '"retired"';
END $$;
"""


def steps_of(conn, workflow):
    return [tuple(r) for r in conn.execute(
        "SELECT name, kind FROM eventic.workflow_steps WHERE workflow_id = %s ORDER BY position",
        (workflow,))]


def ran(conn, workflow):
    return [r[0] for r in conn.execute("SELECT step FROM ran WHERE workflow = %s ORDER BY step", (workflow,))]


def waiting_for(conn, workflow, topic):
    return wait_until(lambda: conn.execute(
        "SELECT status = 'WAITING' AND EXISTS (SELECT FROM eventic.workflow_steps s WHERE s.workflow_id = w.workflow_id"
        " AND s.kind = 'recv' AND s.name = %s AND s.waiting) FROM eventic.workflows w WHERE workflow_id = %s",
        (topic, workflow)).fetchone()[0], timeout=20, interval=0.1)


def test_body_replaced_mid_flight_with_a_patch_finishes_on_both_paths(cluster, db):
    with cluster.connect(dbname=db) as pg:
        pg.execute(EVOLUTION)
        pg.execute(BODY_V1)
        # passed: went past the patch point (ran B) under v1; before: waits before it
        pg.execute("SELECT eventic.start_workflow('flow(jsonb)', '{}', 'passed')")
        pg.execute("SELECT eventic.start_workflow('flow(jsonb)', '{}', 'before')")
        assert waiting_for(pg, "passed", "go") and waiting_for(pg, "before", "go")
        pg.execute("SELECT eventic.send('passed', 'go', '1')")
        assert waiting_for(pg, "passed", "end")
        assert ran(pg, "passed") == ["A", "B"]

        pg.execute(BODY_V2)                 # CREATE OR REPLACE while both are in flight
        pg.execute("SELECT eventic.start_workflow('flow(jsonb)', '{}', 'fresh')")
        assert waiting_for(pg, "fresh", "go")
        for wf in ("passed", "before", "fresh"):
            pg.execute("SELECT eventic.send(%s, 'go', '1')", (wf,))
            pg.execute("SELECT eventic.send(%s, 'end', '1')", (wf,))
        outputs = {wf: pg.execute("SELECT eventic.wait_workflow(%s, '30 seconds')", (wf,)).fetchone()[0]
                   for wf in ("passed", "before", "fresh")}
        # replayed past the point: patched() is false, the old branch's record is used
        assert outputs == {"passed": "old", "before": "new", "fresh": "new"}
        assert ran(pg, "passed") == ["A", "B"]
        assert ran(pg, "before") == ["A", "C"] and ran(pg, "fresh") == ["A", "C"]
        assert ("use-c", "patch") not in steps_of(pg, "passed")
        assert steps_of(pg, "before") == [("A", "step"), ("go", "recv"), ("use-c", "patch"),
                                          ("C", "step"), ("end", "recv")]

        # retiring the patch: a run that recorded the marker replays the new body past it
        pg.execute("SELECT eventic.start_workflow('flow(jsonb)', '{}', 'marked')")
        assert waiting_for(pg, "marked", "go")
        pg.execute("SELECT eventic.send('marked', 'go', '1')")
        assert waiting_for(pg, "marked", "end")
        pg.execute(BODY_V3)
        pg.execute("SELECT eventic.send('marked', 'end', '1')")
        assert pg.execute("SELECT eventic.wait_workflow('marked', '30 seconds')").fetchone()[0] == "retired"
        assert ran(pg, "marked") == ["A", "C"]
        assert pg.execute("SELECT count(*) FROM eventic.workflows WHERE status <> 'SUCCESS'").fetchone()[0] == 0


def test_patched_in_one_speculative_run_and_its_errors(cluster, db):
    with cluster.connect(dbname=db) as pg:
        pg.execute(EVOLUTION)
        pg.execute("""CREATE FUNCTION quick(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
            BEGIN
                IF eventic.patched('p1') AND eventic.patched('p2') THEN
                    RETURN eventic.transaction('t', 'mark(text,text)', jsonb_build_array(eventic.workflow_id(), 'T'));
                END IF;
                RETURN '"unpatched"';
            END $$""")
        pg.execute("SELECT eventic.start_workflow('quick(jsonb)', '{}', 'q')")
        assert pg.execute("SELECT eventic.wait_workflow('q', '30 seconds')").fetchone()[0] == "T"
        assert steps_of(pg, "q") == [("p1", "patch"), ("p2", "patch"), ("t", "transaction")]
        assert sqlstate(pg, "SELECT eventic.patched('x')") == INVALID
        assert sqlstate(pg, "SELECT eventic.patched(NULL)") == INVALID
        pg.execute("""CREATE FUNCTION unnamed(input jsonb) RETURNS jsonb LANGUAGE sql
                      AS $$ SELECT to_jsonb(eventic.patched('')) $$""")
        pg.execute("SELECT eventic.start_workflow('unnamed(jsonb)', '{}', 'u')")
        with pytest.raises(psycopg.Error, match="patch name must not be empty"):
            pg.execute("SELECT eventic.wait_workflow('u', '30 seconds')")


# ---------------------------------------------------------------------------------------------
# metrics

def metrics(conn):
    return {(name, tuple(sorted(labels.items()))): value
            for name, labels, value in conn.execute("SELECT name, labels, value FROM eventic.metrics")}


def queue_metrics_from_stats(conn):
    expected = {}
    for (queue, ready, scheduled, running, dead, done, age, paused, concurrency) in conn.execute(
            "SELECT queue_name, ready, scheduled, running, dead, done_last_minute,"
            " coalesce(extract(epoch FROM oldest_ready_age), 0), paused, concurrency FROM eventic.queue_stats"):
        for name, value in (("ready", ready), ("scheduled", scheduled), ("running", running),
                            ("dead", dead), ("done_last_minute", done), ("paused", int(paused)),
                            ("concurrency", concurrency)):
            expected[(f"eventic_queue_{name}", (("queue", queue),))] = float(value)
        expected[("eventic_queue_oldest_ready_seconds", (("queue", queue),))] = float(age)
    return expected


def exporter_metrics(conn):
    """What postgres_exporter makes of contrib/postgres_exporter/queries.yaml: <key>_<column>."""
    spec = yaml.safe_load((ROOT / "contrib" / "postgres_exporter" / "queries.yaml").read_text())
    out = {}
    for key, entry in spec.items():
        cur = conn.execute(entry["query"])
        columns = [d.name for d in cur.description]
        usage = {name: props["usage"] for metric in entry["metrics"] for name, props in metric.items()}
        assert set(usage) == set(columns), (key, usage, columns)
        for row in cur.fetchall():
            values = dict(zip(columns, row))
            labels = tuple(sorted((c, v) for c, v in values.items() if usage[c] == "LABEL"))
            for column, value in values.items():
                if usage[column] != "LABEL":
                    out[(f"{key}_{column}", labels)] = float(value)
    return out


def test_metrics_match_queue_stats_and_the_exporter_file(cluster, db, roles):
    app, other = roles
    with cluster.connect(dbname=db) as pg, cluster.connect(dbname=db, user=app) as a, \
            cluster.connect(dbname=db, user=other) as o:
        pg.execute(PROGRESS_FUNCTIONS)
        pg.execute("GRANT EXECUTE ON FUNCTION quick_job(int) TO PUBLIC")
        a.execute("SELECT eventic.create_queue('m', worker => false)")
        a.execute("SELECT eventic.enqueue('m', 'quick_job(int)', '[8]', max_attempts => 1)")
        for i in range(5):
            a.execute("SELECT eventic.enqueue('m', 'quick_job(int)', %s)", (f"[{i}]",))
        a.execute("SELECT eventic.enqueue('m', 'quick_job(int)', '[9]', run_at => now() + interval '1 hour')")
        o.execute("SELECT eventic.enqueue('m', 'quick_job(int)', '[7]')")       # other's own job
        (job,) = a.execute("SELECT job_id FROM eventic.dequeue('m', 1)").fetchone()
        a.execute("SELECT eventic.nack('m', %s, 'boom')", (job,))               # dead: 1 attempt
        a.execute("SELECT job_id FROM eventic.dequeue('m', 2, '1 minute')").fetchall()
        a.execute("SELECT eventic.alter_queue('m', paused => true)")
        pg.execute("SELECT eventic.start_workflow('stepper(jsonb)', '{}', 'm1')")
        assert wait_until(lambda: pg.execute(
            "SELECT value FROM eventic.metrics WHERE name = 'eventic_workers'").fetchone()[0] >= 1, timeout=10)
        pg.execute("SELECT eventic.wait_workflow('m1', '30 seconds')")

        for conn in (pg, a, o):              # each role: what queue_stats shows it
            with conn.transaction():         # one now(): the oldest ready job's age
                got = metrics(conn)
                expected = queue_metrics_from_stats(conn)
                exported = exporter_metrics(conn)
            assert {k: v for k, v in got.items() if k[0].startswith("eventic_queue_")} == expected
            statuses = dict(conn.execute("SELECT status, count(*) FROM eventic.workflows GROUP BY 1").fetchall())
            for status in ("ENQUEUED", "RUNNING", "SLEEPING", "WAITING", "SUCCESS", "ERROR", "CANCELLED"):
                assert got[("eventic_workflows_count", (("status", status),))] == statuses.get(status, 0)
            assert got[("eventic_launcher_up", ())] == 1
            assert exported == got
        m = metrics(a)
        assert m[("eventic_queue_dead", (("queue", "m"),))] == 1
        assert m[("eventic_queue_running", (("queue", "m"),))] == 2
        assert m[("eventic_queue_scheduled", (("queue", "m"),))] == 1
        assert m[("eventic_queue_paused", (("queue", "m"),))] == 1
        assert metrics(pg)[("eventic_workflows_count", (("status", "SUCCESS"),))] == 1
        assert metrics(a)[("eventic_workflows_count", (("status", "SUCCESS"),))] == 0   # not its own
        # the other role sees its own job only (the queue belongs to app)
        assert metrics(o)[("eventic_queue_ready", (("queue", "m"),))] == 1


# ---------------------------------------------------------------------------------------------
# retention

def reload(cluster, setting):
    with cluster.connect() as admin:
        if setting is None:
            admin.execute("ALTER SYSTEM RESET eventic.workflow_retention")
        else:
            admin.execute(f"ALTER SYSTEM SET eventic.workflow_retention = '{setting}'")
        admin.execute("SELECT pg_reload_conf()")


def test_retention_removes_old_finished_workflows_only(cluster, db):
    with cluster.connect(dbname=db) as pg:
        pg.execute("""
            CREATE FUNCTION done(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM eventic.set_event('k', '1');
                IF input ? 'fail' THEN RAISE EXCEPTION 'failed on purpose'; END IF;
                RETURN input;
            END $$;
            CREATE FUNCTION waits(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
            BEGIN
                IF input ? 'child' THEN
                    PERFORM eventic.start_child('done(jsonb)', '{}');
                END IF;
                RETURN eventic.recv('never', '1 day');
            END $$;
            CREATE FUNCTION naps(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
            BEGIN PERFORM eventic.sleep('1 day'); RETURN '1'; END $$;""")
        for wf, fn, input in (("old-ok", "done", "{}"), ("old-err", "done", '{"fail": 1}'),
                              ("old-cancelled", "waits", "{}"), ("new-ok", "done", "{}"),
                              ("old-waiting", "waits", "{}"), ("old-sleeping", "naps", "{}"),
                              ("parent", "waits", '{"child": 1}')):
            pg.execute("SELECT eventic.start_workflow(%s, %s, %s)", (f"{fn}(jsonb)", input, wf))
        assert wait_until(lambda: pg.execute(
            "SELECT count(*) FROM eventic.workflows WHERE status IN ('SUCCESS', 'ERROR', 'WAITING', 'SLEEPING')"
        ).fetchone()[0] == 8, timeout=30)
        pg.execute("SELECT eventic.cancel_workflow('old-cancelled')")
        pg.execute("SELECT eventic.send('old-waiting', 'unread', '1')")
        # everything but new-ok ended (or last changed) two hours ago
        pg.execute("UPDATE eventic.workflow_runs SET updated_at = now() - interval '2 hours'"
                   " WHERE workflow_id <> 'new-ok'")
        child = "parent/0"
        assert pg.execute("SELECT status FROM eventic.workflows WHERE workflow_id = %s", (child,)).fetchone()[0] == "SUCCESS"
        reload(cluster, "1h")
        try:
            gone = {"old-ok", "old-err", "old-cancelled"}
            assert wait_until(lambda: pg.execute(
                "SELECT count(*) FROM eventic.workflow_runs WHERE workflow_id = ANY(%s)", (list(gone),)
            ).fetchone()[0] == 0, timeout=20)
            assert sqlstate(pg, "SELECT eventic.workflow_status('old-err')") == "P0002"
            left = {r[0] for r in pg.execute("SELECT workflow_id FROM eventic.workflow_runs")}
            # never one still waiting or sleeping, nor a finished child of a waiting parent
            assert left == {"new-ok", "old-waiting", "old-sleeping", "parent", child}
            for table in ("workflow_records", "workflow_events", "workflow_messages"):
                assert pg.execute(f"SELECT count(*) FROM eventic.{table} WHERE workflow_id = ANY(%s)",
                                  (list(gone),)).fetchone()[0] == 0, table
            assert pg.execute("SELECT count(*) FROM eventic.workflow_messages WHERE workflow_id = 'old-waiting'"
                              ).fetchone()[0] == 1
            # the parent ends: its old child goes with it next time
            pg.execute("SELECT eventic.cancel_workflow('parent')")
            pg.execute("UPDATE eventic.workflow_runs SET updated_at = now() - interval '2 hours'"
                       " WHERE workflow_id = 'parent'")
            assert wait_until(lambda: pg.execute(
                "SELECT count(*) FROM eventic.workflow_runs WHERE workflow_id IN ('parent', %s)", (child,)
            ).fetchone()[0] == 0, timeout=20)
            # the same id starts a new workflow once the old one is gone
            pg.execute("SELECT eventic.start_workflow('done(jsonb)', '{\"again\": 1}', 'old-ok')")
            assert pg.execute("SELECT eventic.wait_workflow('old-ok', '30 seconds')").fetchone()[0] == {"again": 1}
        finally:
            reload(cluster, None)
        with cluster.connect() as admin:
            assert admin.execute("SHOW eventic.workflow_retention").fetchone()[0] == "7d"
            assert sqlstate(admin, "ALTER SYSTEM SET eventic.workflow_retention = -2") == INVALID
