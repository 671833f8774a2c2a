"""Queues with the background worker (eventic is preloaded in the test cluster): jobs run
exactly once, as the role that enqueued them, also when the server is killed mid-drain;
external consumers never get the same job twice; failing jobs retry, die, and revive."""

import functools
import os
import threading
import time

import psycopg
import pytest

import conftest
from conftest import Cluster


# polling with this file's defaults
wait_until = functools.partial(conftest.wait_until, timeout=120.0, interval=0.2)


def setup_effects(conn):
    conn.execute("CREATE TABLE effects (n int NOT NULL, who name NOT NULL DEFAULT current_user)")
    conn.execute(
        "CREATE FUNCTION effect(n int) RETURNS void LANGUAGE sql AS "
        "$$ INSERT INTO effects (n) VALUES (n) $$"
    )


def enqueue_many(conn, queue, count):
    with conn.transaction():
        conn.execute(
            "SELECT count(*) FROM eventic.enqueue_batch(%s, 'effect(int)',"
            " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, %s) g))",
            (queue, count),
        )


def effect_counts(conn):
    return conn.execute("SELECT count(*), count(DISTINCT n) FROM effects").fetchone()


def test_worker_runs_20000_jobs_from_one_transaction_exactly_once(cluster, db):
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("SELECT eventic.create_queue('bulk')")
        enqueue_many(conn, "bulk", 20_000)
        assert wait_until(lambda: effect_counts(conn)[0] >= 20_000, timeout=240), effect_counts(conn)
        time.sleep(1)  # anything extra would show now
        assert effect_counts(conn) == (20_000, 20_000)
        assert conn.execute("SELECT min(n), max(n) FROM effects").fetchone() == (1, 20_000)
        stats = conn.execute(
            "SELECT ready, scheduled, running, dead FROM eventic.queue_stats WHERE queue_name = 'bulk'"
        ).fetchone()
        assert stats == (0, 0, 0, 0)


def test_an_emptied_large_queue_table_is_truncated_and_one_with_a_row_left_is_not(cluster, db):
    """A burst of 100,000 jobs leaves ~10 MB of dead rows; once the queue is empty the worker
    truncates its table (autovacuum would take up to a minute). A scheduled job left in
    another queue keeps that table as it is. Job ids go on after the truncation."""
    def heap_bytes(conn, queue):
        return conn.execute(
            "SELECT pg_relation_size(format('eventic.%%I', 'queue_' || %s::text))", (queue,)
        ).fetchone()[0]

    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE FUNCTION noop(n int) RETURNS void LANGUAGE sql AS 'SELECT'")
        for queue in ("burst", "kept"):
            conn.execute("SELECT eventic.create_queue(%s, worker => false)", (queue,))
            with conn.transaction():
                conn.execute(
                    "SELECT count(*) FROM eventic.enqueue_batch(%s, 'noop(int)',"
                    " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 100000) g))",
                    (queue,),
                )
        conn.execute(
            "SELECT eventic.enqueue('kept', 'noop(int)', '[0]', run_at => now() + interval '1 hour')"
        )
        assert heap_bytes(conn, "burst") > 8 * 1024 * 1024
        # the truncation must come from the worker, not from a vacuum cutting empty pages
        conn.execute("ALTER TABLE eventic.queue_burst SET (autovacuum_enabled = false)")
        conn.execute("ALTER TABLE eventic.queue_kept SET (autovacuum_enabled = false)")
        last_id = conn.execute("SELECT max(job_id) FROM eventic.queue_burst").fetchone()[0]
        conn.execute("SELECT eventic.alter_queue('burst', worker => true)")
        conn.execute("SELECT eventic.alter_queue('kept', worker => true)")
        assert wait_until(lambda: heap_bytes(conn, "burst") == 0, timeout=120), heap_bytes(conn, "burst")
        assert conn.execute("SELECT sum(cardinality(job_ids)) FROM eventic.finished_batches"
                            " WHERE queue_name = 'burst'").fetchone()[0] == 100_000
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM eventic.queue_kept").fetchone()[0] == 1, timeout=120)
        time.sleep(3)  # the worker has looked at 'kept' more than once by now
        assert heap_bytes(conn, "kept") > 8 * 1024 * 1024
        new_id = conn.execute("SELECT eventic.enqueue('burst', 'noop(int)', '[1]')").fetchone()[0]
        assert new_id > last_id
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM eventic.queue_burst").fetchone()[0] == 0, timeout=60)


def test_jobs_run_as_the_role_that_enqueued_them(cluster, db):
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("SELECT eventic.create_queue('as_role')")
        conn.execute("DROP ROLE IF EXISTS eventic_it_bob")
        conn.execute("CREATE ROLE eventic_it_bob")
        conn.execute("GRANT INSERT, SELECT ON effects TO eventic_it_bob")
        conn.execute("SET ROLE eventic_it_bob")
        conn.execute("SELECT eventic.enqueue('as_role', 'effect(int)', '[1]')")
        conn.execute("RESET ROLE")
        conn.execute("SELECT eventic.enqueue('as_role', 'effect(int)', '[2]')")
        assert wait_until(lambda: effect_counts(conn)[0] >= 2, timeout=30)
        rows = conn.execute("SELECT n, who FROM effects ORDER BY n").fetchall()
        assert rows == [(1, "eventic_it_bob"), (2, "postgres")]
        # a role cannot make a job run as someone else: there is no such argument for it,
        # and it cannot write the queue table directly
        conn.execute("SET ROLE eventic_it_bob")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO eventic.queue_as_role (fn, args, enqueued_by)"
                " VALUES ('effect(int)', '[3]', 10)"
            )
        conn.execute("RESET ROLE")
        conn.execute("DROP OWNED BY eventic_it_bob")
        conn.execute("DROP ROLE eventic_it_bob")


def test_failing_job_retries_then_dies_then_revives(cluster, db):
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("CREATE TABLE switch (ok boolean NOT NULL)")
        conn.execute("INSERT INTO switch VALUES (false)")
        conn.execute(
            "CREATE FUNCTION flaky(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
            "IF NOT (SELECT ok FROM switch) THEN RAISE EXCEPTION 'not yet (%)', n; END IF; "
            "INSERT INTO effects (n) VALUES (n); END $$"
        )
        conn.execute("SELECT eventic.create_queue('flaky')")
        (job_id,) = conn.execute(
            "SELECT eventic.enqueue('flaky', 'flaky(int)', '[7]', max_attempts => 2)"
        ).fetchone()

        def dead():
            return conn.execute(
                "SELECT dead_at IS NOT NULL FROM eventic.queue_flaky WHERE job_id = %s", (job_id,)
            ).fetchone()[0]

        assert wait_until(dead, timeout=30)
        attempts, error = conn.execute(
            "SELECT attempts, last_error FROM eventic.queue_flaky WHERE job_id = %s", (job_id,)
        ).fetchone()
        assert attempts == 2
        assert error == "P0001: not yet (7)"
        assert effect_counts(conn) == (0, 0)
        conn.execute("UPDATE switch SET ok = true")
        conn.execute("SELECT eventic.retry_job('flaky', %s)", (job_id,))
        assert wait_until(lambda: effect_counts(conn)[0] == 1, timeout=30)
        assert conn.execute("SELECT count(*) FROM eventic.queue_flaky").fetchone()[0] == 0


def test_concurrent_consumers_never_get_the_same_job(cluster, db):
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("SELECT eventic.create_queue('external', worker => false)")
        enqueue_many(conn, "external", 2_000)
    seen = [[] for _ in range(8)]
    errors = []

    def consumer(i):
        try:
            with cluster.connect(dbname=db) as conn:
                while True:
                    jobs = conn.execute(
                        "SELECT job_id FROM eventic.dequeue('external', 10, '1 minute')"
                    ).fetchall()
                    if not jobs:
                        return
                    for (job_id,) in jobs:
                        seen[i].append(job_id)
                        conn.execute("SELECT eventic.ack('external', %s)", (job_id,))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=consumer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = [job for jobs in seen for job in jobs]
    assert len(every) == len(set(every)) == 2_000
    assert sum(1 for jobs in seen if jobs) > 1, "the work was shared between consumers"


def test_kill_9_mid_drain_every_job_still_runs_exactly_once():
    """A separate cluster: SIGKILL the postmaster and all server processes while the worker
    drains, start it again, and count the database effects."""
    crashed = Cluster(os.environ.get("EVENTIC_CRASH_DIR", "/tmp/eventic-it-crash"), int(os.environ.get("EVENTIC_CRASH_PORT", "5801")))
    crashed.run("start", crashed.directory, str(crashed.port))
    try:
        with crashed.connect() as conn:
            conn.execute("CREATE EXTENSION eventic")
            setup_effects(conn)
            # jobs of ~0.5 ms, so that the drain (batches of up to 1,000 jobs per transaction)
            # is surely still running when the server is killed
            conn.execute(
                "CREATE OR REPLACE FUNCTION effect(n int) RETURNS void LANGUAGE sql AS "
                "$$ SELECT pg_sleep(0.0005); INSERT INTO effects (n) VALUES (n) $$"
            )
            conn.execute("SELECT eventic.create_queue('crash')")
            enqueue_many(conn, "crash", 20_000)
            assert wait_until(lambda: effect_counts(conn)[0] >= 2_000, timeout=120)
        crashed.run("kill", crashed.directory)
        crashed.run("resume", crashed.directory)
        with crashed.connect() as conn:
            before = effect_counts(conn)[0]
            assert before < 20_000, "the kill came too late to interrupt the drain"
            assert wait_until(lambda: effect_counts(conn)[0] >= 20_000, timeout=240), effect_counts(conn)
            time.sleep(1)
            assert effect_counts(conn) == (20_000, 20_000)
            left = conn.execute("SELECT count(*) FROM eventic.queue_crash").fetchone()[0]
            assert left == 0
    finally:
        crashed.run("stop", crashed.directory)


def test_outbox_events_exist_if_and_only_if_the_version_does(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE seen (id uuid, version int, title text, who name DEFAULT current_user)")
        conn.execute(
            "CREATE FUNCTION on_story(event jsonb) RETURNS void LANGUAGE sql AS $$"
            " INSERT INTO seen (id, version, title) VALUES ((event->>'id')::uuid,"
            " (event->>'version')::int, event->'data'->>'title') $$"
        )
        conn.execute("SELECT eventic.register_class('Story')")
        conn.execute("SELECT eventic.subscribe('Story', 'on_story(jsonb)')")
        with conn.transaction():
            (story,) = conn.execute("SELECT eventic.create('Story', '{\"title\": \"a\"}')").fetchone()
            conn.execute("SELECT eventic.set_field(%s, 'title', '\"b\"')", (story,))
        # a version rolled back with its transaction leaves no event behind
        try:
            with conn.transaction():
                conn.execute("SELECT eventic.set_field(%s, 'title', '\"never\"')", (story,))
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

        def events():
            return conn.execute("SELECT version, title, who FROM seen ORDER BY version").fetchall()

        assert wait_until(lambda: len(events()) >= 2, timeout=30)
        time.sleep(0.5)
        assert events() == [(0, "a", "postgres"), (1, "b", "postgres")]
        conn.execute("SELECT eventic.unsubscribe('Story', 'on_story(jsonb)')")
        conn.execute("SELECT eventic.set_field(%s, 'title', '\"c\"')", (story,))
        time.sleep(1.5)
        assert len(events()) == 2
        # a handler must take the event as one jsonb
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT eventic.subscribe('Story', 'abs(int)')")


def test_only_a_superuser_may_run_a_job_as_another_role(cluster, db):
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("SELECT eventic.create_queue('run_as', worker => false)")
        conn.execute("DROP ROLE IF EXISTS eventic_it_carol")
        conn.execute("CREATE ROLE eventic_it_carol")
        conn.execute("GRANT INSERT ON effects TO eventic_it_carol")
        conn.execute("SET ROLE eventic_it_carol")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT eventic.enqueue('run_as', 'effect(int)', '[1]', run_as => 'postgres')")
        conn.execute("RESET ROLE")
        conn.execute("SELECT eventic.enqueue('run_as', 'effect(int)', '[2]', run_as => 'eventic_it_carol')")
        assert conn.execute("SELECT eventic.run_pending('run_as')").fetchone()[0] == 1
        assert conn.execute("SELECT n, who FROM effects").fetchall() == [(2, "eventic_it_carol")]
        conn.execute("DROP OWNED BY eventic_it_carol")
        conn.execute("DROP ROLE eventic_it_carol")


@pytest.mark.parametrize("concurrency", [1, 2])
def test_queue_concurrency_bounds_parallel_jobs(cluster, db, concurrency):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE TABLE spans (pid int, started timestamptz, ended timestamptz)")
        conn.execute(
            "CREATE FUNCTION slow(n int) RETURNS void LANGUAGE plpgsql AS $$"
            " DECLARE t0 timestamptz := clock_timestamp(); BEGIN PERFORM pg_sleep(0.2);"
            " INSERT INTO spans VALUES (pg_backend_pid(), t0, clock_timestamp()); END $$"
        )
        conn.execute("SELECT eventic.create_queue('slow', worker => false)")
        conn.execute("SELECT eventic.alter_queue('slow', concurrency => %s)", (concurrency,))
        with conn.transaction():
            conn.execute(
                "SELECT count(*) FROM eventic.enqueue_batch('slow', 'slow(int)',"
                " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 8) g))"
            )
        conn.execute("SELECT eventic.alter_queue('slow', worker => true)")
        conn.execute("SELECT eventic.enqueue('slow', 'slow(int)', '[9]')")  # wakes the workers
        assert wait_until(
            lambda: conn.execute("SELECT count(*) FROM spans").fetchone()[0] == 9, timeout=60
        )
        # the most jobs that ever ran at the same instant
        (most,) = conn.execute(
            "SELECT max((SELECT count(*) FROM spans o WHERE o.started <= s.started AND o.ended > s.started))"
            " FROM spans s"
        ).fetchone()
        workers = conn.execute("SELECT count(DISTINCT pid) FROM spans").fetchone()[0]
    assert most <= concurrency
    if concurrency > 1:
        assert most == concurrency and workers == concurrency


def test_without_preload_everything_works_and_run_pending_drains():
    """No shared_preload_libraries: CREATE EXTENSION works, the first enqueue says how to get
    the worker, and run_pending drains in the calling session."""
    plain = Cluster(os.environ.get("EVENTIC_PLAIN_DIR", "/tmp/eventic-it-plain"), int(os.environ.get("EVENTIC_PLAIN_PORT", "5802")))
    plain.run("start", plain.directory, str(plain.port), "shared_preload_libraries = ''")
    try:
        with plain.connect() as conn:
            notices = []
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
            conn.execute("CREATE EXTENSION eventic")
            setup_effects(conn)
            conn.execute("SELECT eventic.create_queue('manual')")
            conn.execute("SELECT eventic.enqueue('manual', 'effect(int)', '[1]')")
            conn.execute("SELECT eventic.enqueue('manual', 'effect(int)', '[2]')")
            assert sum("shared_preload_libraries" in n for n in notices) == 1
            time.sleep(1.5)
            assert effect_counts(conn) == (0, 0), "nothing runs them in the background"
            assert conn.execute("SELECT eventic.run_pending('manual')").fetchone()[0] == 2
            assert effect_counts(conn) == (2, 2)
    finally:
        plain.run("stop", plain.directory)


def test_finished_jobs_older_than_archive_retention_are_removed(cluster, db):
    """eventic.archive_retention (SIGHUP) bounds the archive: a drain removes batches that
    finished longer ago than it (at most every 5 s per process)."""
    with cluster.connect() as admin:
        admin.execute("ALTER SYSTEM SET eventic.archive_retention = '1s'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        with cluster.connect(dbname=db) as conn:
            assert wait_until(lambda: conn.execute("SHOW eventic.archive_retention").fetchone()[0] == "1s")
            setup_effects(conn)
            conn.execute("SELECT eventic.create_queue('kept_briefly', worker => false)")
            enqueue_many(conn, "kept_briefly", 3)
            assert conn.execute("SELECT eventic.run_pending('kept_briefly')").fetchone()[0] == 3
            finished = "SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'kept_briefly'"
            assert conn.execute(finished).fetchone()[0] == 3
            time.sleep(5.5)  # past the retention and the 5 s between prunes of this session
            conn.execute("SELECT eventic.enqueue('kept_briefly', 'effect(int)', '[4]')")
            assert conn.execute("SELECT eventic.run_pending('kept_briefly')").fetchone()[0] == 1
            # the three old jobs are gone, the one that just finished is kept
            assert conn.execute(
                "SELECT array_agg(args ORDER BY job_id) FROM eventic.finished_jobs WHERE queue_name = 'kept_briefly'"
            ).fetchone()[0] == [[4]]
            assert effect_counts(conn) == (4, 4)
    finally:
        with cluster.connect() as admin:
            admin.execute("ALTER SYSTEM RESET eventic.archive_retention")
            admin.execute("SELECT pg_reload_conf()")


def test_fast_shutdown_ends_a_running_job_and_the_job_runs_again_after_restart():
    """A separate cluster: `pg_ctl stop -m fast` while the worker runs a 30 s job returns
    promptly (it waited forever: the worker consumed its SIGTERM flag and slept on its latch);
    the interrupted job's transaction rolled back, and it runs again after the restart."""
    stopped = Cluster(os.environ.get("EVENTIC_STOP_DIR", "/tmp/eventic-it-stop"), int(os.environ.get("EVENTIC_STOP_PORT", "5804")))
    stopped.run("start", stopped.directory, str(stopped.port))
    try:
        with stopped.connect() as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute("CREATE TABLE runs (n int, at timestamptz DEFAULT clock_timestamp())")
            conn.execute(
                "CREATE FUNCTION slow(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN "
                "INSERT INTO runs (n) VALUES (n); PERFORM pg_sleep(CASE WHEN n = 1 THEN 30 ELSE 0 END); "
                "INSERT INTO runs (n) VALUES (-n); END $$"
            )
            conn.execute("SELECT eventic.create_queue('slow')")
            conn.execute("SELECT eventic.enqueue('slow', 'slow(int)', '[1]')")
            # the job is running: its first INSERT is visible only inside its transaction, so
            # look at the worker's activity instead
            assert wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventic worker'"
                " AND wait_event = 'PgSleep'").fetchone()[0] == 1, timeout=30)
        started = time.monotonic()
        stopped.run("stop", stopped.directory)  # pg_ctl stop -m fast -w (gives up after 60 s)
        stop_seconds = time.monotonic() - started
        assert stop_seconds < 20, f"fast shutdown took {stop_seconds:.1f} s with a 30 s job running"
        stopped.run("resume", stopped.directory)
        with stopped.connect() as conn:
            # nothing of the interrupted run committed
            assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
            # the job is still queued, and runs (to its end this time, 30 s) after the restart
            assert wait_until(lambda: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventic worker'"
                " AND wait_event = 'PgSleep'").fetchone()[0] == 1, timeout=30)
            assert conn.execute("SELECT count(*) FROM eventic.queue_slow").fetchone()[0] == 1
    finally:
        stopped.run("stop", stopped.directory)


def test_a_long_job_leaves_the_queues_its_transaction_visited_to_the_other_worker(cluster, db):
    """A worker holds a queue's slot while it runs that queue's jobs; a long job of one queue
    must not keep the other (concurrency 1) queues it looked at in the same transaction closed
    to the other worker until it ends (seen: a retried job waited for a 300 s step elsewhere)."""
    queues = [f"q{i}" for i in range(1, 10)]
    with cluster.connect(dbname=db) as conn:
        setup_effects(conn)
        conn.execute("CREATE FUNCTION long_job() RETURNS void LANGUAGE sql AS 'SELECT pg_sleep(15)'")
        for name in ["a_long", *queues]:
            conn.execute("SELECT eventic.create_queue(%s)", (name,))
            conn.execute("SELECT eventic.alter_queue(%s, concurrency => 1)", (name,))
        # the long job's transaction starts wherever the worker's rotation is; with nine
        # queues besides it, it visits (and used to keep) some of them first, 9 times in 10
        conn.execute("SELECT eventic.enqueue('a_long', 'long_job()', '[]')")
        assert wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()"
            " AND pid <> pg_backend_pid()").fetchone()[0] == 1, timeout=10)
        for round_ in range(2):
            started = time.monotonic()
            for i, name in enumerate(queues):
                conn.execute("SELECT eventic.enqueue(%s, 'effect(int)', %s)", (name, f"[{round_ * 10 + i}]"))
            assert wait_until(lambda: effect_counts(conn)[0] == (round_ + 1) * len(queues), timeout=8), (
                f"round {round_}: {effect_counts(conn)[0]} of {(round_ + 1) * len(queues)} jobs ran within 8 s"
                " while the other worker ran a 15 s job")
