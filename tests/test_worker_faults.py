"""Fault tier of the background worker and its launcher (issue 12): workers only where the
extension is, every database its first worker before any its second (else a WARNING in the
log and a NOTICE at enqueue), lowered settings stop the extra workers, an error outside a job
neither stops a worker nor loses other queues' jobs, no job runs during a pg_restore, idle
workers write no WAL, a terminated worker is back at once.

One cluster of its own for the module (max_worker_processes = 8, autovacuum off so that the
transaction and WAL counts below are the workers' alone), on EVENTIC_IT_PORT + 5."""

import os
import subprocess
import time

import psycopg
import pytest

from conftest import Cluster, wait_until

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")




@pytest.fixture(scope="module")
def faults():
    directory = os.environ.get("EVENTIC_IT_DIR", "/tmp/eventic-it") + "-faults"
    port = int(os.environ.get("EVENTIC_IT_PORT", "5800")) + 5
    c = Cluster(directory, port)
    c.run("start", directory, str(port), "max_worker_processes = 8", "autovacuum = off")
    c.started = time.monotonic()
    try:
        yield c
    finally:
        c.run("stop", directory)


def log_size(c):
    return os.path.getsize(os.path.join(c.directory, "server.log"))


def log_since(c, offset):
    with open(os.path.join(c.directory, "server.log"), encoding="utf-8", errors="replace") as f:
        f.seek(offset)
        return f.read()


def sql(c, query, params=None, dbname="postgres"):
    with c.connect(dbname=dbname) as conn:
        return conn.execute(query, params).fetchall()


def workers(c, dbname):
    return sorted(pid for (pid,) in sql(
        c, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventic worker' AND datname = %s",
        (dbname,)))


def set_setting(c, name, value):
    with c.connect() as conn:
        if value is None:
            conn.execute(f"ALTER SYSTEM RESET {name}")
        else:
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def make_database(c, name, extension=True):
    with c.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {name}")
    if extension:
        with c.connect(dbname=name) as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute("CREATE TABLE effects (n int, at timestamptz DEFAULT clock_timestamp())")
            conn.execute("CREATE FUNCTION effect(n int) RETURNS void LANGUAGE sql AS "
                         "$$ INSERT INTO effects (n) VALUES (n) $$")
            conn.execute("SELECT eventic.create_queue('q')")


def drop_database(c, name):
    with c.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def effects(c, dbname):
    return sql(c, "SELECT count(*) FROM effects", dbname=dbname)[0][0]


def test_no_worker_in_a_database_without_the_extension(faults):
    """A worker that finds no extension says so on the launcher's board, and the launcher
    starts none there again until CREATE EXTENSION asks (it started one every 10 s)."""
    make_database(faults, "noext", extension=False)
    xacts = "SELECT xact_commit FROM pg_stat_database WHERE datname = 'noext'"
    # a reload wakes the launcher, which then tries the new database once
    sql(faults, "SELECT pg_reload_conf()")
    assert wait_until(lambda: sql(faults, xacts)[0][0] > 0, timeout=5)
    time.sleep(0.5)
    before = sql(faults, xacts)[0][0]
    # more than one look of the launcher (every 10 s), until ~15 s after the start or later
    time.sleep(max(11.0, 15.0 - (time.monotonic() - faults.started)))
    assert workers(faults, "noext") == [] and workers(faults, "postgres") == []
    after = sql(faults, xacts)[0][0]
    assert after == before, f"{after - before} transactions of workers started in noext"
    # CREATE EXTENSION asks for workers: they come at once
    with faults.connect(dbname="noext") as conn:
        conn.execute("CREATE EXTENSION eventic")
    assert wait_until(lambda: len(workers(faults, "noext")) == 2, timeout=3)
    with faults.connect(dbname="noext") as conn:
        conn.execute("DROP EXTENSION eventic")
    assert wait_until(lambda: workers(faults, "noext") == [], timeout=3)
    drop_database(faults, "noext")


def test_six_databases_each_get_a_worker_or_a_warning_and_a_notice(faults):
    """max_worker_processes = 8 leaves 6 slots (the launcher and the logical replication
    launcher take two): every one of six databases gets its first worker before any gets a
    second (it was two each for the first three, none for the others, silently). With
    eventic.max_workers = 4, and with a seventh database, those left out get a WARNING in
    the log naming the setting to raise and a NOTICE at enqueue."""
    names = [f"six_{i}" for i in range(7)]
    try:
        for name in names[:6]:
            make_database(faults, name)
            with faults.connect(dbname=name) as conn:
                conn.execute("SELECT eventic.enqueue('q', 'effect(int)', '[1]')")
        assert wait_until(lambda: all(effects(faults, n) == 1 for n in names[:6]), timeout=20), \
            {n: effects(faults, n) for n in names[:6]}
        assert all(len(workers(faults, n)) == 1 for n in names[:6])

        # eventic.max_workers = 4: the last two databases (by oid) lose their workers
        offset = log_size(faults)
        set_setting(faults, "eventic.max_workers", 4)
        assert wait_until(lambda: workers(faults, names[4]) == [] and workers(faults, names[5]) == [],
                          timeout=5)
        assert all(len(workers(faults, n)) == 1 for n in names[:4])
        assert wait_until(lambda: log_since(faults, offset).count(
            "eventic.max_workers (4) are all given to other databases") == 2, timeout=5), \
            log_since(faults, offset)
        log = log_since(faults, offset)
        assert f'no eventic worker runs jobs in database "{names[4]}"' in log
        assert "WARNING" in log and "Raise eventic.max_workers" in log
        with faults.connect(dbname=names[4]) as conn:
            notices = []
            conn.add_notice_handler(lambda diag: notices.append((diag.message_primary, diag.message_hint)))
            conn.execute("SELECT eventic.enqueue('q', 'effect(int)', '[2]')")
            conn.execute("SELECT eventic.enqueue('q', 'effect(int)', '[3]')")
            assert len(notices) == 1, notices  # once per session
            assert "eventic.max_workers (4)" in notices[0][0] and "eventic.max_workers" in notices[0][1]
        time.sleep(1)
        assert effects(faults, names[4]) == 1
        set_setting(faults, "eventic.max_workers", None)
        assert wait_until(lambda: effects(faults, names[4]) == 3, timeout=5)

        # a seventh database: no free background worker slot for its first worker
        offset = log_size(faults)
        make_database(faults, names[6])
        assert wait_until(lambda: "no free background worker slot (max_worker_processes = 8)"
                          in log_since(faults, offset), timeout=5), log_since(faults, offset)
        assert f'no eventic worker runs jobs in database "{names[6]}"' in log_since(faults, offset)
        with faults.connect(dbname=names[6]) as conn:
            notices = []
            conn.add_notice_handler(lambda diag: notices.append((diag.message_primary, diag.message_hint)))
            conn.execute("SELECT eventic.enqueue('q', 'effect(int)', '[1]')")
            assert len(notices) == 1 and "max_worker_processes" in notices[0][1], notices
        # a slot comes free: the seventh gets it
        drop_database(faults, names[0])
        assert wait_until(lambda: effects(faults, names[6]) == 1, timeout=10)
    finally:
        set_setting(faults, "eventic.max_workers", None)
        for name in names:
            drop_database(faults, name)


def test_lowering_workers_per_database_stops_the_extra_workers(faults):
    make_database(faults, "fewer")
    try:
        assert wait_until(lambda: len(workers(faults, "fewer")) == 2, timeout=5)
        offset = log_size(faults)
        set_setting(faults, "eventic.workers_per_database", 1)
        assert wait_until(lambda: len(workers(faults, "fewer")) == 1, timeout=3), workers(faults, "fewer")
        assert "stops: eventic.workers_per_database is now 1" in log_since(faults, offset)
        set_setting(faults, "eventic.workers_per_database", None)
        assert wait_until(lambda: len(workers(faults, "fewer")) == 2, timeout=3)
    finally:
        set_setting(faults, "eventic.workers_per_database", None)
        drop_database(faults, "fewer")


def test_an_error_outside_a_job_neither_stops_the_worker_nor_loses_other_queues_jobs(faults):
    """A job of queue `a` drops its own queue: the drain's bookkeeping then fails outside the
    job (its queue table is gone). That rolls back queue a's work only, with a WARNING; the
    20 jobs of queue c that ran in the same transaction commit, and the workers live on (the
    ERROR ended the worker and rolled back every job of its transaction)."""
    make_database(faults, "broken")
    try:
        assert wait_until(lambda: len(workers(faults, "broken")) == 2, timeout=5)
        before = workers(faults, "broken")
        offset = log_size(faults)
        with faults.connect(dbname="broken") as conn:
            conn.execute("CREATE FUNCTION drop_own_queue(n int) RETURNS void LANGUAGE plpgsql AS "
                         "$$ BEGIN PERFORM eventic.drop_queue('a'); END $$")
            conn.execute("SELECT eventic.create_queue('a')")
            conn.execute("SELECT eventic.create_queue('c')")
            with conn.transaction():
                conn.execute("SELECT eventic.enqueue('a', 'drop_own_queue(int)', '[1]')")
                conn.execute("SELECT count(*) FROM eventic.enqueue_batch('c', 'effect(int)',"
                             " ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, 20) g))")
            assert wait_until(lambda: effects(faults, "broken") == 20, timeout=10)
            time.sleep(1.5)
            assert workers(faults, "broken") == before, "a worker died"
            assert 'draining queue "a" failed' in log_since(faults, offset)
            assert conn.execute("SELECT count(*) FROM eventic.queue_a").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM eventic.queue_c").fetchone()[0] == 0
            assert effects(faults, "broken") == 20
            conn.execute("DELETE FROM eventic.queue_a")
    finally:
        drop_database(faults, "broken")


def test_idle_workers_assign_no_transaction_id_and_write_no_wal(faults):
    """Idle workers polling every 100 ms: no transaction id assigned, no WAL written over
    5 s (each poll committed a transaction with an xid: two per worker and poll)."""
    make_database(faults, "idle")
    set_setting(faults, "eventic.poll_interval", "100ms")
    try:
        with faults.connect(dbname="idle") as conn:
            conn.execute("SELECT eventic.create_queue('waiting')")
            conn.execute("SELECT eventic.enqueue('waiting', 'effect(int)', '[1]')")
            conn.execute("SELECT eventic.enqueue('waiting', 'effect(int)', '[2]', run_at => now() + interval '1 hour')")
            assert wait_until(lambda: effects(faults, "idle") == 1, timeout=5)
            assert len(workers(faults, "idle")) == 2
            time.sleep(1)
            conn.execute("CHECKPOINT")
            probe = ("SELECT pg_current_wal_insert_lsn(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            lsn0, xid0 = conn.execute(probe).fetchone()
            time.sleep(5)
            lsn1, xid1 = conn.execute(probe).fetchone()
            wal = conn.execute("SELECT %s::pg_lsn - %s::pg_lsn", (lsn1, lsn0)).fetchone()[0]
        print(f"idle 5 s, 2 workers polling every 100 ms: {xid1 - xid0} xids, {wal} bytes of WAL")
        assert xid1 == xid0, f"{xid1 - xid0} transaction ids assigned in 5 s"
        assert wal < 256, f"{wal} bytes of WAL in 5 s"  # at most a running-xacts record
    finally:
        set_setting(faults, "eventic.poll_interval", None)
        drop_database(faults, "idle")


def test_a_terminated_worker_is_back_within_two_seconds(faults):
    """pg_terminate_backend (or a FATAL) ends a worker: the launcher starts it again within a
    second, also the second time in a row (it waited until 10 s after the last start)."""
    make_database(faults, "killed")
    try:
        assert wait_until(lambda: len(workers(faults, "killed")) == 2, timeout=5)
        for _ in range(2):
            victim = workers(faults, "killed")[0]
            sql(faults, "SELECT pg_terminate_backend(%s)", (victim,))
            started = time.monotonic()
            assert wait_until(lambda: len(workers(faults, "killed")) == 2
                              and victim not in workers(faults, "killed"), timeout=2), \
                workers(faults, "killed")
            print(f"terminated worker back after {time.monotonic() - started:.2f} s")
        # and it runs jobs
        with faults.connect(dbname="killed") as conn:
            conn.execute("SELECT eventic.enqueue('q', 'effect(int)', '[1]')")
        assert wait_until(lambda: effects(faults, "killed") == 1, timeout=5)
    finally:
        drop_database(faults, "killed")


def run_client(program, *args):
    subprocess.run([os.path.join(PG_BIN, program), *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def conninfo(c):
    return ["-h", c.directory, "-p", str(c.port), "-U", "postgres"]


@pytest.fixture(scope="module")
def restore_source(faults):
    """A database whose queue holds 10 jobs (each inserts clock_timestamp() into `ran`) and a
    big table restored after the queue, dumped in custom and plain format. Its jobs are kept
    from running by eventic.max_workers = 0 while it is built and dumped."""
    set_setting(faults, "eventic.max_workers", 0)
    try:
        assert wait_until(lambda: sql(faults, "SELECT count(*) FROM pg_stat_activity"
                                      " WHERE backend_type = 'eventic worker'")[0][0] == 0, timeout=5)
        make_database(faults, "restore_src", extension=False)
        with faults.connect(dbname="restore_src") as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute("CREATE TABLE ran (n int, at timestamptz DEFAULT clock_timestamp())")
            conn.execute("CREATE FUNCTION job(n int) RETURNS void LANGUAGE sql AS "
                         "$$ INSERT INTO ran (n) VALUES (n) $$")
            conn.execute("SELECT eventic.create_queue('r')")
            with conn.transaction():
                for n in range(10):
                    conn.execute("SELECT eventic.enqueue('r', 'job(int)', %s)",
                                 (psycopg.types.json.Jsonb([n]),))
            # restored after the queue (schema public after eventic): a big table and its
            # indexes make the restore take a few seconds
            conn.execute("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS t"
                         " FROM generate_series(1, 1500000) g")
            conn.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
            conn.execute("CREATE INDEX ON big (t)")
            assert conn.execute("SELECT count(*) FROM ran").fetchone()[0] == 0
        custom = os.path.join(faults.directory, "restore.dump")
        plain = os.path.join(faults.directory, "restore.sql")
        run_client("pg_dump", *conninfo(faults), "-Fc", "-f", custom, "restore_src")
        run_client("pg_dump", *conninfo(faults), "-Fp", "-f", plain, "restore_src")
    finally:
        set_setting(faults, "eventic.max_workers", None)
    drop_database(faults, "restore_src")
    try:
        yield custom, plain
    finally:
        os.remove(custom)
        os.remove(plain)


def ran(c, dbname):
    return sql(c, "SELECT count(*), extract(epoch FROM min(at))::float8 FROM ran", dbname=dbname)[0]


def test_no_job_runs_during_a_pg_restore(faults, restore_source):
    """Workers hold off while a pg_restore session is connected to their database: they ran
    jobs as soon as the restore's CREATE EXTENSION committed, before the rest of the data."""
    custom, _ = restore_source
    make_database(faults, "restore_dst", extension=False)
    try:
        started = time.time()
        run_client("pg_restore", *conninfo(faults), "-d", "restore_dst", custom)
        ended = time.time()
        assert ended - started > 1.5, f"the restore took only {ended - started:.2f} s"
        assert wait_until(lambda: ran(faults, "restore_dst")[0] == 10, timeout=10)
        first = ran(faults, "restore_dst")[1]
        print(f"pg_restore took {ended - started:.2f} s; first job {first - ended:.2f} s after it")
        assert first >= ended, \
            f"a job ran {ended - first:.2f} s before pg_restore ended (it took {ended - started:.2f} s)"
    finally:
        drop_database(faults, "restore_dst")


def test_pause_workers_keeps_jobs_from_running_during_a_psql_restore(faults, restore_source):
    """The switch for plain-SQL restores: ALTER DATABASE ... SET eventic.pause_workers = on
    before, RESET after; workers read it from the catalog within a second."""
    _, plain = restore_source
    make_database(faults, "restore_psql", extension=False)
    try:
        with faults.connect() as admin:
            admin.execute("ALTER DATABASE restore_psql SET eventic.pause_workers = on")
        offset = log_size(faults)
        run_client("psql", *conninfo(faults), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                   "-d", "restore_psql", "-f", plain)
        ended = time.time()
        time.sleep(1.5)
        assert ran(faults, "restore_psql")[0] == 0, "jobs ran while eventic.pause_workers was on"
        assert 'database "restore_psql" run no jobs: eventic.pause_workers is on' in log_since(faults, offset)
        with faults.connect(dbname="restore_psql") as conn:
            notices = []
            conn.add_notice_handler(lambda diag: notices.append(diag.message_primary))
            conn.execute("SELECT eventic.enqueue('r', 'job(int)', '[10]')")
            assert any("eventic.pause_workers is on" in n for n in notices), notices
        time.sleep(1)
        assert ran(faults, "restore_psql")[0] == 0
        with faults.connect() as admin:
            admin.execute("ALTER DATABASE restore_psql RESET eventic.pause_workers")
        resumed = time.time()
        assert wait_until(lambda: ran(faults, "restore_psql")[0] == 11, timeout=5)
        assert ran(faults, "restore_psql")[1] >= resumed > ended
        assert 'database "restore_psql" run jobs again' in log_since(faults, offset)
    finally:
        drop_database(faults, "restore_psql")
