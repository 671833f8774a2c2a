"""Queues and Python jobs: enqueue, Record methods now and later, retries and dead jobs,
exactly-once effects of a batch, and a worker killed with SIGKILL mid-job."""

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from pyclient_harness import wait_until
from eventic import Eventic, JobNotFoundError, Record

RAN: list = []


class Ticket(Record):
    title: str
    hits: int = 0

    def hit(self, by: int = 1) -> int:
        self.hits = self.hits + by
        return self.hits


@Eventic.job()
def remember(ticket_id: uuid.UUID, label: str, *, extra: str = "") -> None:
    assert isinstance(ticket_id, uuid.UUID)  # JSON arguments come back as the annotated types
    RAN.append((ticket_id, label + extra))


@Eventic.job()
def log_row(n: int) -> None:
    """A job that writes through the connection the worker bound (its batch's transaction)."""
    with Eventic.connection() as conn:
        conn.execute("INSERT INTO job_log VALUES (%s)", (n,))
    if n == 13:
        raise ValueError("13 is unlucky")


def not_a_job() -> None:
    pass


def test_python_jobs_and_record_methods_now_and_later(ev, sql):
    RAN.clear()
    ticket = Ticket(title="t")
    assert ticket.hit(2) == 2 and ticket.version == 1  # runs now
    job_id = ticket.hit.later(5)  # later, on the class's queue
    q = Eventic.queue(Ticket._queue_name)
    assert q.python_name == "ticket_py"
    q.enqueue(remember, ticket.id, "a", extra="!")
    assert q.enqueue(remember, ticket.id, "b", dedup_key="once") == q.enqueue(remember, ticket.id, "c", dedup_key="once")
    with pytest.raises(JobNotFoundError, match="@Eventic.job"):
        q.enqueue(not_a_job)
    assert sql.execute("SELECT worker FROM eventic.queues WHERE queue_name = 'ticket_py'").fetchone() == (False,)
    Eventic.launch()
    assert wait_until(lambda: Ticket.hydrate(ticket.id).hits == 7 and len(RAN) == 2)
    assert sorted(label for _, label in RAN) == ["a!", "b"]
    assert wait_until(lambda: sql.execute("SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'ticket_py'")
                      .fetchone() == (3,))
    assert sql.execute("SELECT args->>'job' FROM eventic.finished_jobs WHERE job_id = %s AND queue_name = 'ticket_py'",
                       (job_id,)).fetchone() == ("eventic.record:Ticket.hit",)


def test_sql_functions_go_to_the_extension_queue(ev, sql):
    sql.execute("CREATE TABLE mail (recipient text)")
    sql.execute("CREATE FUNCTION send_mail(r text) RETURNS void LANGUAGE sql AS $$ INSERT INTO mail VALUES (r) $$")
    Ticket(title="registers the class and its queue")
    Eventic.queue("ticket").enqueue("send_mail(text)", "ada@example.com")
    assert wait_until(lambda: sql.execute("SELECT recipient FROM mail").fetchall() == [("ada@example.com",)])


def test_a_failing_job_is_retried_then_dead_and_its_batch_commits_once(ev, sql):
    sql.execute("CREATE TABLE job_log (n int)")
    q = Eventic.queue("batchy")
    for n in range(1, 21):
        q.enqueue(log_row, n, max_attempts=2)
    Eventic.launch(threads=1, queues=["batchy"])
    dead = "SELECT attempts, last_error FROM eventic.queue_batchy_py WHERE dead_at IS NOT NULL"
    assert wait_until(lambda: sql.execute(dead).fetchone() is not None, timeout=60)
    attempts, error = sql.execute(dead).fetchone()
    assert attempts == 2 and error.startswith("ValueError: 13 is unlucky")
    # every other job's insert committed exactly once; 13's never (its transaction rolled back)
    rows = [r[0] for r in sql.execute("SELECT n FROM job_log ORDER BY n").fetchall()]
    assert rows == [n for n in range(1, 21) if n != 13]


def test_a_job_no_decorator_registered_is_refused_not_imported(ev, sql):
    sql.execute("SELECT eventic.create_queue('strange_py', worker => false)")
    sql.execute("""SELECT eventic.enqueue('strange_py', 'pg_catalog.jsonb_typeof(jsonb)',
                   '{"job": "os:system", "args": ["touch /tmp/py-pwned"]}', max_attempts => 1)""")
    Eventic.launch(threads=1, queues=["strange"])
    err = "SELECT last_error FROM eventic.queue_strange_py WHERE dead_at IS NOT NULL"
    assert wait_until(lambda: sql.execute(err).fetchone() is not None)
    assert "no Python job named 'os:system'" in sql.execute(err).fetchone()[0]
    assert not os.path.exists("/tmp/py-pwned")


WORKER_APP = '''
import os, time
from eventic import Eventic

@Eventic.job()
def slow(marker: str) -> None:
    runs = open(marker, "a+")
    runs.write("run\\n"); runs.close()
    if open(marker).read().count("run") == 1:
        time.sleep(600)  # the first run is killed here
    with Eventic.connection() as conn:
        conn.execute("INSERT INTO done VALUES (%s)", (os.getpid(),))
'''


def _worker(tmp_path, db_url, lease):
    return subprocess.Popen(
        [sys.executable, "-m", "eventic", "worker", "--app", "killapp", "--queue", "kill", "--threads", "1",
         "--lease", str(lease), "--database-url", db_url],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_worker_killed_mid_job_leaves_it_to_the_next_after_the_lease(tmp_path, db_url, sql):
    (tmp_path / "killapp.py").write_text(textwrap.dedent(WORKER_APP))
    marker = tmp_path / "runs"
    sql.execute("CREATE TABLE done (pid int)")
    sql.execute("SELECT eventic.create_queue('kill_py', worker => false)")
    sql.execute("""SELECT eventic.enqueue('kill_py', 'pg_catalog.jsonb_typeof(jsonb)',
                   jsonb_build_object('job', 'killapp:slow', 'args', jsonb_build_array(%s::text)))""",
                (str(marker),))
    first = _worker(tmp_path, db_url, lease=3)
    try:
        assert wait_until(lambda: marker.exists(), timeout=60), "the first worker never started the job"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        second = _worker(tmp_path, db_url, lease=3)
        try:
            assert wait_until(lambda: sql.execute("SELECT count(*) FROM done").fetchone() == (1,), timeout=60)
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()
    assert marker.read_text().count("run") == 2
    assert sql.execute("SELECT pid FROM done").fetchone() == (second.pid,)
    assert sql.execute("SELECT attempts FROM eventic.finished_jobs WHERE queue_name = 'kill_py'").fetchone() == (2,)


@Eventic.job()
def sleepy(seconds: float) -> None:
    import time
    RAN.append("sleepy")
    time.sleep(seconds)


def test_the_heartbeat_keeps_a_long_job_leased(ev, sql):
    RAN.clear()
    Eventic.queue("sleepy").enqueue(sleepy, 3.0)
    Eventic.launch(threads=2, queues=["sleepy"], lease_seconds=1.0)
    assert wait_until(lambda: sql.execute("SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'sleepy_py'")
                      .fetchone() == (1,), timeout=60)
    assert RAN == ["sleepy"]  # the other thread never took it, although the lease is 1 s


def test_run_at_and_priority(ev, sql):
    import datetime as dt
    RAN.clear()
    q = Eventic.queue("timed")
    ticket = Ticket(title="order")
    later = sql.execute("SELECT now() + interval '3 seconds'").fetchone()[0]
    q.enqueue(remember, ticket.id, "scheduled", run_at=later)
    q.enqueue(remember, ticket.id, "low", priority=0)
    q.enqueue(remember, ticket.id, "high", priority=10)
    Eventic.launch(threads=1, queues=["timed"], workflows=False)
    assert wait_until(lambda: len(RAN) == 2)
    assert [label for _, label in RAN] == ["high", "low"]
    assert wait_until(lambda: len(RAN) == 3, timeout=30)
    assert dt.datetime.now(dt.timezone.utc) >= later
