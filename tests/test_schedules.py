"""Cron schedules and rate limits (issue 16 items 1-2): every tick enqueued exactly once, by
two workers, across a kill -9 of the server; ticks missed while the server was down run once
at start-up, or not at all with skip_missed; bad patterns and zones are 22023; a queue's rate
limit holds across two workers.

The restart tests use a cluster of their own (EVENTIC_SCHED_DIR, EVENTIC_SCHED_PORT)."""

import datetime
import os
import time

import psycopg
import pytest

import conftest
from conftest import Cluster

wait_until = conftest.wait_until


def setup_ticks(conn):
    """ticks: one row per run of tick(name), with the tick it ran for (the schedule's last_run
    when it ran: the tick just enqueued) and the backend that ran it."""
    conn.execute("CREATE TABLE ticks (name text, tick timestamptz, at timestamptz DEFAULT clock_timestamp(),"
                 " who name DEFAULT current_user, pid int DEFAULT pg_backend_pid())")
    conn.execute("GRANT INSERT, SELECT ON ticks TO PUBLIC")
    conn.execute("""CREATE FUNCTION tick(name text) RETURNS void LANGUAGE sql AS $$
                    INSERT INTO public.ticks (name, tick)
                    SELECT name, (SELECT last_run FROM eventic.schedules s WHERE s.name = tick.name) $$""")


def runs(conn, name):
    return conn.execute("SELECT tick, at FROM ticks WHERE name = %s ORDER BY at", (name,)).fetchall()


def assert_once_per_tick(conn, name):
    got = runs(conn, name)
    ticks = [tick for tick, _ in got]
    assert None not in ticks and len(set(ticks)) == len(ticks), f"a tick ran twice: {got}"
    return got


def worker_count(conn):
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventic worker'"
                        " AND datname = current_database()").fetchone()[0]


def test_six_field_schedule_every_2s_runs_3_times_in_7s_once_per_tick(cluster, db):
    """Two workers race for every tick: each tick runs once, on time, as the schedule's owner."""
    role = "sched_owner_" + os.urandom(3).hex()
    with cluster.connect() as admin:
        admin.execute(f"CREATE ROLE {role}")
    try:
        with cluster.connect(dbname=db) as conn:
            setup_ticks(conn)
            assert wait_until(lambda: worker_count(conn) == 2, timeout=10), "expected two workers"
            conn.execute(f"SET ROLE {role}")
            first = conn.execute("SELECT eventic.schedule('every2', '*/2 * * * * *', 'tick(text)', '[\"every2\"]')"
                                 ).fetchone()[0]
            assert first.second % 2 == 0 and first.microsecond == 0
            time.sleep(7)
            got = assert_once_per_tick(conn, "every2")
            assert len(got) in (3, 4), got
            for tick, at in got:
                assert datetime.timedelta(0) <= at - tick < datetime.timedelta(seconds=1.9), got
            assert conn.execute("SELECT DISTINCT who FROM ticks").fetchall() == [(role,)]
            row = conn.execute("SELECT name, cron, owner::text, next_run > last_run FROM eventic.schedules").fetchall()
            assert row == [("every2", "*/2 * * * * *", role, True)]
            assert conn.execute("SELECT eventic.unschedule('every2')").fetchone()[0] is True
            count = len(runs(conn, "every2"))
            time.sleep(2.5)
            assert len(runs(conn, "every2")) == count, "ran after unschedule"
            conn.execute("RESET ROLE")
    finally:
        with cluster.connect(dbname=db) as conn:
            conn.execute(f"DROP OWNED BY {role}")
        with cluster.connect() as admin:
            admin.execute(f"DROP ROLE {role}")


def test_scheduled_workflow_gets_an_id_of_its_tick_and_replacing_keeps_the_name(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE flows (input jsonb)")
        conn.execute("""CREATE FUNCTION flow(input jsonb) RETURNS jsonb LANGUAGE sql AS
                        $$ INSERT INTO flows VALUES (input) RETURNING input $$""")
        conn.execute("SELECT eventic.schedule('wf', '* * * * * *', 'flow(jsonb)', '{\"a\": 1}', workflow => true)")
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM eventic.workflows WHERE status = 'SUCCESS'").fetchone()[0] >= 2, timeout=10)
        # replaced: the same name, another pattern and input
        conn.execute("SELECT eventic.schedule('wf', '0 0 1 1 *', 'flow(jsonb)', '{\"b\": 2}', workflow => true,"
                     " timezone => 'Europe/Berlin')")
        ids = [i for (i,) in conn.execute("SELECT workflow_id FROM eventic.workflows ORDER BY 1")]
        assert all(i.startswith("schedule:wf@") and i.endswith("Z") for i in ids), ids
        assert conn.execute("SELECT count(*) FROM eventic.schedules").fetchone()[0] == 1
        next_run = conn.execute("SELECT next_run AT TIME ZONE 'Europe/Berlin' FROM eventic.schedules").fetchone()[0]
        assert (next_run.month, next_run.day, next_run.hour, next_run.minute) == (1, 1, 0, 0)


@pytest.mark.parametrize("call,named", [
    ("SELECT eventic.schedule('b', '*/2 * * *', 'tick(text)', '[\"b\"]')", "*/2 * * *"),
    ("SELECT eventic.schedule('b', '* * * * * * *', 'tick(text)', '[\"b\"]')", "* * * * * * *"),
    ("SELECT eventic.schedule('b', 'every minute', 'tick(text)', '[\"b\"]')", "every minute"),
    ("SELECT eventic.schedule('b', '61 * * * *', 'tick(text)', '[\"b\"]')", "61 * * * *"),
    ("SELECT eventic.schedule('b', '0 0 31 2 *', 'tick(text)', '[\"b\"]')", "0 0 31 2 *"),
    ("SELECT eventic.schedule('b', '* * * * *', 'tick(text)', '[\"b\"]', timezone => 'Mars/Olympus')", "Mars/Olympus"),
    ("SELECT eventic.schedule('b', '* * * * *', 'tick(text)', '[\"b\"]', timezone => '')", '""'),
    ("SELECT eventic.schedule('b', '* * * * *', 'tick(text)', '[1, 2]')", "tick"),
    ("SELECT eventic.schedule('', '* * * * *', 'tick(text)', '[\"b\"]')", '""'),
    ("SELECT eventic.schedule('b', NULL, 'tick(text)')", "cron"),
    ("SELECT eventic.alter_queue('rq', rate_limit => -1)", "-1"),
    ("SELECT eventic.alter_queue('rq', rate_limit => 5, rate_period => '0')", "rate_period"),
    ("SELECT eventic.alter_queue('rq', rate_limit => 5, rate_period => '-1 second')", "rate_period"),
    ("SELECT eventic.alter_queue('rq', rate_limit => 5, rate_period => '1 year')", "rate_period"),
])
def test_bad_cron_timezone_or_rate_is_22023_naming_the_value(cluster, db, call, named):
    with cluster.connect(dbname=db) as conn:
        setup_ticks(conn)
        conn.execute("SELECT eventic.create_queue('rq')")
        with pytest.raises(psycopg.Error) as err:
            conn.execute(call)
        assert err.value.sqlstate == "22023", err.value
        assert named in str(err.value), err.value
        assert conn.execute("SELECT count(*) FROM eventic.schedules").fetchone()[0] == 0


def test_rate_limit_50_per_second_over_500_jobs_with_two_workers(cluster, db):
    """At most 50 jobs start in any second (a sliding window, src/queues/rate.rs), with two
    workers draining the queue (concurrency 2): 500 jobs take 9 s or more."""
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE starts (at timestamptz DEFAULT clock_timestamp(), pid int DEFAULT pg_backend_pid())")
        # 10 ms a job: a worker claims a few at a time (src/queues/drain.rs: claim_size), so both
        # workers start jobs in every window (no-op jobs are claimed 512 at a time: one worker
        # would take a window's 50 in one claim)
        conn.execute("CREATE FUNCTION started(n int) RETURNS void LANGUAGE sql AS"
                     " $$ INSERT INTO starts DEFAULT VALUES; SELECT pg_sleep(0.01) $$")
        assert wait_until(lambda: worker_count(conn) == 2, timeout=10), "expected two workers"
        conn.execute("SELECT eventic.create_queue('limited')")
        conn.execute("SELECT eventic.alter_queue('limited', concurrency => 2, rate_limit => 50, rate_period => '1 second')")
        assert conn.execute("SELECT rate_limit, rate_period FROM eventic.queues WHERE queue_name = 'limited'"
                            ).fetchone() == (50, datetime.timedelta(seconds=1))
        began = time.monotonic()
        with conn.transaction():
            conn.execute("SELECT count(*) FROM eventic.enqueue_batch('limited', 'started(int)',"
                         " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 500) g))")
        count = lambda: conn.execute("SELECT count(*) FROM starts").fetchone()[0]  # noqa: E731
        assert wait_until(lambda: count() >= 500, timeout=40), f"{count()} of 500 jobs ran in 40 s"
        took = time.monotonic() - began
        assert took >= 9.0, f"500 jobs at 50/s took {took:.2f} s"
        # no second-long window holds more than 50 starts: the limit counts claims, and a job
        # runs a little after its claim (after the jobs claimed with it; longer on a loaded
        # machine), so windows of 0.9 s of run times leave it 100 ms (a token bucket would let
        # 95 start in 0.9 s after a quiet spell, fixed windows 100 around a boundary)
        busiest = conn.execute("""SELECT max((SELECT count(*) FROM starts s2
                                              WHERE s2.at >= s1.at AND s2.at < s1.at + interval '0.9 second'))
                                    FROM starts s1""").fetchone()[0]
        assert busiest <= 50, f"{busiest} jobs started within 0.9 s"
        pids = conn.execute("SELECT count(DISTINCT pid) FROM starts").fetchone()[0]
        per_worker = conn.execute("SELECT count(*) FROM starts GROUP BY pid ORDER BY 1").fetchall()
        assert pids == 2, f"jobs ran in {pids} worker(s): {per_worker}"
        # removed: the rest runs at once
        conn.execute("SELECT eventic.alter_queue('limited', rate_limit => 0)")
        assert conn.execute("SELECT rate_limit, rate_period FROM eventic.queues WHERE queue_name = 'limited'"
                            ).fetchone() == (None, None)
        began = time.monotonic()
        with conn.transaction():
            conn.execute("SELECT count(*) FROM eventic.enqueue_batch('limited', 'started(int)',"
                         " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 500) g))")
        assert wait_until(lambda: count() >= 1000, timeout=20), f"{count() - 500} of 500 jobs ran in 20 s"
        took = time.monotonic() - began
        assert took < 6, f"500 jobs of 10 ms without the limit took {took:.2f} s"


def test_rate_limit_counts_external_consumers_too(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION nothing(n int) RETURNS void LANGUAGE sql AS 'SELECT'")
        conn.execute("SELECT eventic.create_queue('consumed', worker => false)")
        conn.execute("SELECT eventic.alter_queue('consumed', rate_limit => 5, rate_period => '1 minute')")
        with conn.transaction():
            conn.execute("SELECT count(*) FROM eventic.enqueue_batch('consumed', 'nothing(int)',"
                         " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 20) g))")
        taken = [conn.execute("SELECT count(*) FROM eventic.dequeue('consumed', 3)").fetchone()[0]
                 for _ in range(4)]
        assert taken == [3, 2, 0, 0], taken


# ---------------------------------------------------------------------------------------------
# restarts: a cluster of their own


@pytest.fixture(scope="module")
def restarted():
    c = Cluster(os.environ.get("EVENTIC_SCHED_DIR", "/tmp/eventic-it-sched"),
                int(os.environ.get("EVENTIC_SCHED_PORT", "5816")))
    c.run("start", c.directory, str(c.port))
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION eventic")
            setup_ticks(conn)
        yield c
    finally:
        c.run("stop", c.directory)


def last_run(conn, name):
    return conn.execute("SELECT last_run FROM eventic.schedules WHERE name = %s", (name,)).fetchone()[0]


def test_kill_9_between_ticks_every_tick_once_and_missed_ones_once(restarted):
    """kill -9 of the server right after a tick; while it is down ticks pass; after the restart
    they run once (one run for all of them, before the next regular tick), then every tick
    again; no tick ever runs twice."""
    try:
        kill_9_between_ticks(restarted)
    finally:  # the next test's ticks alone
        with restarted.connect() as conn:
            conn.execute("SELECT eventic.unschedule(name) FROM eventic.schedules WHERE name = 'crash'")


def kill_9_between_ticks(restarted):
    with restarted.connect() as conn:
        assert wait_until(lambda: worker_count(conn) == 2, timeout=10)
        conn.execute("SELECT eventic.schedule('crash', '*/2 * * * * *', 'tick(text)', '[\"crash\"]')")
        assert wait_until(lambda: len(runs(conn, "crash")) >= 2, timeout=10)
        seen = last_run(conn, "crash")
        assert wait_until(lambda: last_run(conn, "crash") != seen, timeout=5)
        time.sleep(0.2)  # the tick's job has run
    killed_at = datetime.datetime.now(datetime.timezone.utc)
    restarted.run("kill", restarted.directory)
    time.sleep(4.5)  # two or three ticks pass while the server is down
    restarted.run("resume", restarted.directory)
    with restarted.connect() as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        assert wait_until(lambda: len([1 for tick, _ in runs(conn, "crash") if tick > killed_at]) >= 3,
                          timeout=12), (started, runs(conn, "crash"))
        got = assert_once_per_tick(conn, "crash")
        post = [(tick, at) for tick, at in got if tick > killed_at]
        # the ticks missed while down ran at most once (collapsed into one run; none when the
        # first tick after the start came before the worker's first look, and covered them)
        missed = [tick for tick, _ in post if tick < started]
        assert len(missed) <= 1, f"ticks missed while down ran {len(missed)} times: {got}"
        # the first run came right at start-up, then every tick, 2 s apart
        assert post and post[0][1] - started < datetime.timedelta(seconds=3), (started, got)
        gaps = {(b[0] - a[0]).total_seconds() for a, b in zip(post[1:], post[2:])}
        assert len(post) >= 3 and gaps == {2.0}, (started, got)


def test_missed_ticks_run_once_at_start_up_or_are_skipped(restarted):
    """Two schedules at one second of each minute, one with skip_missed: the server is down at
    that second; after the start the first runs once, the second not at all."""
    with restarted.connect() as conn:
        now = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        second = (now.second + 6) % 60
        for name, skip in (("catch_up", False), ("skipper", True)):
            conn.execute("SELECT eventic.schedule(%s, %s, 'tick(text)', jsonb_build_array(%s::text), skip_missed => %s)",
                         (name, f"{second} * * * * *", name, skip))
        due = conn.execute("SELECT min(next_run) FROM eventic.schedules WHERE name IN ('catch_up', 'skipper')"
                           ).fetchone()[0]
    restarted.run("stop", restarted.directory)
    assert datetime.datetime.now(datetime.timezone.utc) < due, "the server stopped too late for this test"
    time.sleep(max(0.0, (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) + 1.5)
    restarted.run("resume", restarted.directory)
    with restarted.connect() as conn:
        assert wait_until(lambda: len(runs(conn, "catch_up")) == 1, timeout=10), runs(conn, "catch_up")
        time.sleep(1.5)
        assert [tick for tick, _ in runs(conn, "catch_up")] == [due]
        assert runs(conn, "skipper") == []
        # both wait for the same second of the next minute
        nexts = conn.execute("SELECT DISTINCT next_run FROM eventic.schedules WHERE name IN ('catch_up', 'skipper')"
                             ).fetchall()
        assert nexts == [(due + datetime.timedelta(minutes=1),)], nexts
        assert last_run(conn, "skipper") is None
        conn.execute("SELECT eventic.unschedule('catch_up')")
        conn.execute("SELECT eventic.unschedule('skipper')")
