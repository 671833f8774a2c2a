"""Python workers: threads that take the Python jobs of their queues through the extension's
external consumer API and run them.

A worker thread dequeues a batch (`eventic.dequeue(queue, n, lease)`), runs its jobs in one
transaction of its own connection — bound (db.bind), so the jobs' eventic calls are in it —
and acks them in that transaction: a job that only touches the database through eventic
counts **exactly once**, as with the extension's own worker. If a job raises, the batch's
transaction is rolled back and its jobs run again one by one, each with its ack in its own
transaction; the failing one is nacked (retried with backoff by the extension, dead after
max_attempts). A heartbeat thread extends the leases of the jobs still running; if the
process dies, their leases run out and another worker takes the jobs again. The batch size
follows job duration (1 to 512: about 50 ms of work per batch).

A Python job runs as the worker's database role, not as the role that enqueued it (any role
may enqueue into any queue): a worker runs only jobs enqueued by roles its own role is a
member of (pg_has_role USAGE) and nacks the others. A superuser is a member of every role, so
do not run Python workers as one."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from typing import Any

import psycopg
from psycopg import sql

from . import db
from .queues import JOBS, coerce_call

log = logging.getLogger("eventic.worker")

TARGET_BATCH_SECONDS = 0.05
MAX_BATCH = 512


class _JobFailed(Exception):
    def __init__(self, job_id: int, error: str):
        super().__init__(error)
        self.job_id, self.error = job_id, error


class Leases:
    """Jobs being run, by queue; the heartbeat extends their leases."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, int], float] = {}

    def add(self, queue: str, ids: list[int]) -> None:
        with self._lock:
            for i in ids:
                self._jobs[(queue, i)] = time.monotonic()

    def remove(self, queue: str, ids: list[int]) -> None:
        with self._lock:
            for i in ids:
                self._jobs.pop((queue, i), None)

    def older_than(self, seconds: float) -> list[tuple[str, int]]:
        now = time.monotonic()
        with self._lock:
            return [k for k, since in self._jobs.items() if now - since >= seconds]

    def renewed(self, key: tuple[str, int]) -> None:
        with self._lock:
            if key in self._jobs:
                self._jobs[key] = time.monotonic()


def _run_job(job: dict[str, Any], loop: "_Loop") -> Any:
    name = job.get("job") if isinstance(job, dict) else None
    fn = JOBS.get(name) if isinstance(name, str) else None
    if fn is None:
        raise LookupError(
            f"no Python job named {name!r} in this worker: import the module that defines it "
            "(python -m eventic worker --app MODULE)" if name else "not a Python job (no \"job\" in its arguments)")
    args, kwargs = coerce_call(fn, list(job.get("args", [])), dict(job.get("kwargs", {})))
    result = fn(*args, **kwargs)
    if asyncio.iscoroutine(result):
        result = loop.get().run_until_complete(result)
    return result


class _Loop:
    """The event loop of a worker thread, made for its first async job and kept (the async
    pool of eventic.db belongs to one loop: each worker thread's loop gets its own)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(db.close_async_pool())
            self.loop.close()


def _foreign(enqueuer: str, conn: psycopg.Connection) -> str:
    return (f"refused: enqueued by role {enqueuer}, which the worker's role {conn.info.user} is not a member "
            "of (a Python job runs as the worker's role, so it runs only jobs of roles the worker may act as)")


def _error_text(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


class JobWorker(threading.Thread):
    def __init__(self, url: str, queues: list[str], leases: Leases, stop: threading.Event,
                 wake: threading.Event, lease_seconds: float = 30.0, poll: float = 1.0, index: int = 0):
        super().__init__(name=f"eventic-job-worker-{index}", daemon=True)
        self.url, self.queues, self.leases = url, queues, leases
        self.stop_event, self.wake = stop, wake
        self.lease = f"{lease_seconds} seconds"
        self.poll = poll
        self.batch = {q: 4 for q in queues}
        self.loop = _Loop()
        self.done = 0

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.loop.close()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    self._serve(conn)
            except Exception as exc:  # noqa: BLE001 — a worker thread must not die
                # a lost connection, or an ack refused because the lease ran out and another
                # worker took the jobs (the batch's transaction rolled back): start afresh
                log.warning("eventic worker: %s: %s; reconnecting", type(exc).__name__, exc)
                self.stop_event.wait(1.0)

    def _serve(self, conn: psycopg.Connection) -> None:
        while not self.stop_event.is_set():
            took = 0
            for queue in self.queues:
                took += self._drain_once(conn, queue)
            if took == 0:
                self.wake.wait(self.poll)
                self.wake.clear()

    def _drain_once(self, conn: psycopg.Connection, queue: str) -> int:
        # with each job: may this worker's role act as its enqueuer? (the queue table's old row
        # version is in the statement's snapshot; enqueued_by never changes). OFFSET 0 keeps
        # the lookup a nested loop on the primary key: as a join it became a hash join over a
        # sequential scan of the whole queue (16 ms per batch of 64 with 20,000 jobs waiting).
        # The jobs run in dequeue's order (priority, run_at, id).
        rows = conn.execute(sql.SQL(
            "SELECT d.job_id, d.args, pg_catalog.pg_has_role(e.enqueued_by, 'USAGE'), e.enqueued_by::text "
            "FROM eventic.dequeue(%s, %s, %s::interval) WITH ORDINALITY AS d(job_id, fn, args, attempt, n), "
            "LATERAL (SELECT q.enqueued_by FROM eventic.{} q WHERE q.job_id = d.job_id OFFSET 0) e "
            "ORDER BY d.n").format(sql.Identifier("queue_" + queue)),
            (queue, self.batch[queue], self.lease)).fetchall()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        self.leases.add(queue, ids)
        started = time.monotonic()
        try:
            runnable = [(job_id, args) for job_id, args, allowed, _ in rows if allowed]
            for job_id, _, allowed, enqueuer in rows:
                if not allowed:
                    conn.execute("SELECT eventic.nack(%s, %s, %s)", (queue, job_id, _foreign(enqueuer, conn)))
            try:
                self._run_batch(conn, queue, runnable)
            except _JobFailed:
                for row in runnable:  # again one by one: the failing job alone is nacked
                    try:
                        self._run_batch(conn, queue, [row])
                    except _JobFailed as failed:
                        conn.execute("SELECT eventic.nack(%s, %s, %s)", (queue, failed.job_id, failed.error))
        finally:
            self.leases.remove(queue, ids)
        self._adapt(queue, len(rows), time.monotonic() - started)
        self.done += len(rows)
        return len(rows)

    def _run_batch(self, conn: psycopg.Connection, queue: str, rows: list[tuple[int, Any]]) -> None:
        if not rows:
            return
        with conn.transaction(), db.bind(conn):
            for job_id, args in rows:
                try:
                    _run_job(args, self.loop)
                except Exception as exc:  # the job's failure, not the worker's
                    raise _JobFailed(job_id, _error_text(exc)) from exc
            conn.execute("SELECT eventic.ack(%s, j) FROM unnest(%s::bigint[]) AS j", (queue, [r[0] for r in rows]))

    def _adapt(self, queue: str, n: int, seconds: float) -> None:
        per_job = seconds / n
        want = MAX_BATCH if per_job <= 0 else int(TARGET_BATCH_SECONDS / per_job)
        size = 1
        while size * 2 <= min(want, MAX_BATCH):
            size *= 2
        self.batch[queue] = size


class Heartbeat(threading.Thread):
    """Extends the lease of every job that has been running for a third of its lease."""

    def __init__(self, url: str, leases: Leases, stop: threading.Event, lease_seconds: float):
        super().__init__(name="eventic-heartbeat", daemon=True)
        self.url, self.leases, self.stop_event = url, leases, stop
        self.lease_seconds = lease_seconds

    def run(self) -> None:
        every = max(self.lease_seconds / 3, 0.2)
        conn = None
        while not self.stop_event.wait(every / 2):
            due = self.leases.older_than(every)
            if not due:
                continue
            try:
                conn = conn or psycopg.connect(self.url, autocommit=True)
                for queue, job_id in due:
                    try:
                        conn.execute("SELECT eventic.extend_lease(%s, %s, %s::interval)",
                                     (queue, job_id, f"{self.lease_seconds} seconds"))
                        self.leases.renewed((queue, job_id))
                    except psycopg.errors.NoDataFound:
                        pass  # acked meanwhile
            except psycopg.OperationalError:
                conn = None
        if conn is not None:
            conn.close()


class Listener(threading.Thread):
    """LISTEN eventic_<queue>: an enqueue wakes the idle workers at once."""

    def __init__(self, url: str, queues: list[str], stop: threading.Event, wake: threading.Event):
        super().__init__(name="eventic-listener", daemon=True)
        self.url, self.queues, self.stop_event, self.wake = url, queues, stop, wake

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    for q in self.queues:
                        conn.execute(f'LISTEN "eventic_{q}"')
                    while not self.stop_event.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.wake.set()
            except psycopg.OperationalError:
                self.stop_event.wait(1.0)


class Workers:
    """The threads of one `Eventic.launch()`: job workers, heartbeat, listener, and the
    workflow runner of eventic.workflows when that module provides one."""

    def __init__(self, url: str, queues: list[str], threads: int = 2, lease_seconds: float = 30.0,
                 poll: float = 1.0, workflows: bool = True):
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.leases = Leases()
        self.queues = sorted(queues)
        self.jobs = [JobWorker(url, self.queues, self.leases, self.stop_event, self.wake,
                               lease_seconds, poll, i) for i in range(threads)] if self.queues else []
        self.others: list[threading.Thread] = []
        if self.queues:
            self.others = [Heartbeat(url, self.leases, self.stop_event, lease_seconds),
                           Listener(url, self.queues, self.stop_event, self.wake)]
        self.workflow_runner: Any = None
        self.with_workflows = workflows

    def start(self) -> "Workers":
        for t in [*self.others, *self.jobs]:
            t.start()
        if self.with_workflows:
            self.workflow_runner = _start_workflow_runner()
        return self

    @property
    def done(self) -> int:
        return sum(w.done for w in self.jobs)

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.wake.set()
        if self.workflow_runner is not None:
            self.workflow_runner.stop()
        for t in [*self.jobs, *self.others]:
            t.join(timeout)


def _start_workflow_runner() -> Any:
    """eventic.workflows' runner (started next to the job threads), if that module exists."""
    try:
        from . import workflows  # type: ignore[attr-defined]
    except ImportError:
        return None
    start = getattr(workflows, "start_runner", None)
    return start() if start is not None else None
