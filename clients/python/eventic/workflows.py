"""Python durable workflows on the eventic extension (`@Eventic.workflow()`, `.step()`,
`.transaction()`, as in the seed).

A workflow is a Python function; every step's result is recorded in the extension's workflow
tables (`eventic.workflows`, `eventic.workflow_steps`), so SQL sees, waits for, cancels,
resumes, forks and messages Python workflows as it does SQL ones. The body runs in a
`WorkflowRunner` (started by `Eventic.launch()`, `python -m eventic worker`, or, for a
workflow function you call directly, in the calling thread). A runner claims a workflow with
a lease (`eventic.claim_workflows`), replays the body from its recorded steps (a recorded
step returns its record instead of running), records each new step, and ends it
(`eventic.finish_workflow`). A runner that dies leaves its lease to run out (30 s); another
runner then replays the body from what was recorded.

Guarantees:
- a `@transaction` step runs its SQL on a connection in one transaction with its record: its
  database effects happen exactly once, across crashes and runners (`Eventic.connection()`,
  and every Record/queue call, use that connection inside the step). Consecutive
  `@transaction` steps share one transaction (see `_workflow_run`): a failing one rolls the
  group back and the body is replayed with each step in its own transaction;
- a `@step` runs again only if its process died (or its lease was lost) after it ran and
  before its record committed (at least once; recorded right after it returns);
- the body must be deterministic: a replay that asks for another step at a recorded position
  fails the workflow (`NonDeterministicError`).

Interface (py's `Eventic` uses it): `workflow()`, `step()`, `transaction()` decorators;
`start(fn, *args, workflow_id=None, **kwargs)` -> `WorkflowHandle`; `retrieve(id)`;
`send`, `get_event`, `cancel`, `resume`, `fork`; inside a body `sleep`, `recv`,
`set_event`, `workflow_id()`, `now()`, `random()`; `WorkflowRunner(pool, stop_event)` and `start_runner()`.
Values (arguments, step results, outputs) are stored as JSON (pydantic's
`to_jsonable_python`) and read back through the function's annotations (pydantic
`TypeAdapter`), so a step annotated `-> uuid.UUID` returns a UUID on replay too.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import random as _random
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb

from . import db
from ._workflow_run import (WORKFLOWS, NonDeterministicError, StepError, WorkflowError,
                            WorkflowFailedError, _claim, _current, _dump, _encode_input, _execute,
                            _load, _pool, _replayed, _return_type, _seconds, _Stop, workflow_id)

CHANNEL = "eventic_external_workflows"
log = logging.getLogger("eventic.workflows")


# ── decorators ──────────────────────────────────────────────────────────────────────────
def _name_of(fn: Callable[..., Any], name: str | None) -> str:
    return name or f"{fn.__module__}:{fn.__qualname__}"


def workflow(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@workflow()`: a durable workflow. Calling it starts it (a new id) and runs it in the
    calling thread, returning its result (when it sleeps or waits, a runner finishes it and
    the call waits for that); `start(fn, ...)` starts it for a runner instead.
    `name` (default `module:qualname`) is how runners find the body: keep it stable."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        body_name = _name_of(fn, name)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _current.get() is not None:
                raise WorkflowError(
                    f"{body_name} called inside a workflow: child workflows are not supported; "
                    "start it with eventic.workflows.start(...) from outside, or call its steps")
            handle = start(call, *args, **kwargs)
            run_now(handle.workflow_id)
            return handle.get_result(timeout=None)  # a sleep or a recv: a runner finishes it

        call.__eventic_workflow__ = body_name  # type: ignore[attr-defined]
        WORKFLOWS[body_name] = call
        return call
    return decorate


def step(name: str | None = None, *, max_attempts: int = 1, backoff: float = 1.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@step()`: a step that may act outside the database (HTTP, files). Inside a workflow
    its result is recorded right after it returns and returned on replays; an exception is
    retried up to `max_attempts` (waiting `backoff` s, doubling), then recorded and raised as
    `StepError` (now and on every replay). Outside a workflow it is a plain call."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        step_name = _name_of(fn, name)
        returns = _return_type(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            run = _current.get()
            if run is None or run.in_step:
                return fn(*args, **kwargs)
            position, record = run.next(step_name, "step")
            if record is not None:
                return _replayed(step_name, record, returns)
            run.flush()  # the @transaction steps before it commit first
            error: BaseException | None = None
            output: Any = None
            attempts = 0
            while attempts < max(1, max_attempts):
                attempts += 1
                run.in_step = True
                try:
                    output = fn(*args, **kwargs)
                    error = None
                    break
                except Exception as exc:  # noqa: BLE001 — recorded, then raised as StepError
                    error = exc
                finally:
                    run.in_step = False
                if attempts < max_attempts:
                    time.sleep(backoff * 2 ** (attempts - 1))
            if error is None:
                dumped = _dump(output)
                run.record(position, step_name, "step", dumped, attempts=attempts)
                return _load(returns, dumped)
            message = f"{type(error).__name__}: {error}"
            run.record(position, step_name, "step", error=message, attempts=attempts)
            raise StepError(f"step {step_name!r} failed: {message}") from error

        call.__eventic_step__ = step_name  # type: ignore[attr-defined]
        return call
    return decorate


def transaction(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@transaction()`: a step that only reads and writes the database. Its SQL (every
    Record/queue call, and `Eventic.connection()`) runs on one connection in one transaction
    with its record: exactly once. An exception rolls it back; the error is recorded and
    raised as `StepError`. Outside a workflow it runs in a transaction of its own."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        step_name = _name_of(fn, name)
        returns = _return_type(fn)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            run = _current.get()
            if run is None or run.in_step:
                return _in_transaction(None, fn, args, kwargs)
            position, record = run.next(step_name, "transaction")
            if record is not None:
                return _replayed(step_name, record, returns)
            output = run.transaction_step(position, step_name, lambda: fn(*args, **kwargs))
            return _load(returns, output)

        call.__eventic_step__ = step_name  # type: ignore[attr-defined]
        return call
    return decorate


def _in_transaction(pool: psycopg_pool.ConnectionPool | None, fn: Callable[..., Any],
                    args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A `@transaction` called outside a workflow: in the bound connection's transaction, or
    in a new one on a pooled connection."""
    bound = db._bound.get()  # noqa: SLF001 — py's binding: join the caller's transaction
    if bound is not None:
        return fn(*args, **kwargs)
    with _pool(pool).connection() as conn, conn.transaction(), db.bind(conn):
        return fn(*args, **kwargs)


# ── inside a body: sleep, messages, events ──────────────────────────────────────────────
def sleep(seconds: float | timedelta) -> None:
    """Inside a body: a durable sleep (the workflow is put away and claimed again when it is
    due, by any runner; nothing is held meanwhile). Outside: time.sleep."""
    run = _current.get()
    if run is None:
        time.sleep(_seconds(seconds))
        return
    position, record = run.next("sleep", "sleep")
    if record is not None and isinstance(record.get("output"), (int, float)) and record["output"] < time.time() - 5:
        return  # long past (a margin for clock skew): no call
    (left,) = run.call("SELECT eventic.workflow_sleep(%s, %s, %s, %s)",
                       (run.workflow_id, run.lease, position, timedelta(seconds=_seconds(seconds))))
    if left > 0:
        raise _Stop("sleeping")


def recv(topic: str, timeout: float | timedelta = 60.0) -> Any:
    """Inside a body: the next message sent to this workflow on `topic` (`send`), or None
    after `timeout` (counted from the first time the body got here). While it waits the
    workflow is put away (WAITING); a message wakes it."""
    run = _current.get()
    if run is None:
        raise WorkflowError("recv() can only be called inside a workflow body")
    position, record = run.next(topic, "recv")
    if record is not None and record.get("attempts", 0) > 0:
        return record.get("output")
    received, message = run.call(
        "SELECT received, message FROM eventic.workflow_recv(%s, %s, %s, %s, %s)",
        (run.workflow_id, run.lease, position, topic, timedelta(seconds=_seconds(timeout))))
    if not received:
        raise _Stop("waiting for a message")
    return message


def set_event(key: str, value: Any) -> None:
    """Inside a body: publish `value` under `key` (read with `get_event`, or
    `eventic.get_event` in SQL)."""
    run = _current.get()
    if run is None:
        raise WorkflowError("set_event() can only be called inside a workflow body")
    position, record = run.next(key, "set_event")
    if record is not None:
        return
    run.call("SELECT eventic.workflow_set_event(%s, %s, %s, %s, %s)",
             (run.workflow_id, run.lease, position, key, Jsonb(_dump(value))))


def _recorded_value(kind: str, make: Callable[[], Any]) -> Any:
    run = _current.get()
    if run is None:
        return make()
    position, record = run.next(kind, kind)
    if record is not None:
        return record.get("output")
    value = make()
    run.record(position, kind, kind, value)
    return value


def now() -> datetime:
    """Inside a body: the current time (UTC), recorded, so a replay sees the same value (use
    it, not datetime.now(), to decide which steps to run). Outside: datetime.now(UTC)."""
    return datetime.fromisoformat(_recorded_value("now", lambda: datetime.now(timezone.utc).isoformat()))


def random() -> float:
    """Inside a body: a random number in [0, 1), recorded for replays."""
    return float(_recorded_value("random", _random.random))


def send(workflow_id: str, topic: str, message: Any = None, *, pool: psycopg_pool.ConnectionPool | None = None) -> None:
    """Send `message` to a workflow (Python or SQL) on `topic`. Inside a body it is a
    recorded step (sent once)."""
    run = _current.get()
    if run is None or run.in_step:
        with _pool(pool).connection() as conn:
            conn.execute("SELECT eventic.send(%s, %s, %s)", (workflow_id, topic, Jsonb(_dump(message))))
        return
    position, record = run.next(f"send:{topic}", "transaction")
    if record is not None:
        return
    run.transaction_step(position, f"send:{topic}", lambda: db.call(
        "SELECT eventic.send(%s, %s, %s)", (workflow_id, topic, Jsonb(_dump(message)))))


def get_event(workflow_id: str, key: str, timeout: float | timedelta = 0.0, *,
              pool: psycopg_pool.ConnectionPool | None = None) -> Any:
    """The value a workflow published under `key`, waiting up to `timeout`; None if none."""
    with _pool(pool).connection() as conn:
        return conn.execute("SELECT eventic.get_event(%s, %s, %s)",
                            (workflow_id, key, timedelta(seconds=_seconds(timeout)))).fetchone()[0]


# ── starting, handles ───────────────────────────────────────────────────────────────────
class WorkflowHandle:
    """A started workflow: `workflow_id`, `get_result()`, `get_status()`, `cancel()`,
    `resume()`, `fork(from_step)`, `send(topic, message)`, `get_event(key)`."""

    def __init__(self, workflow_id: str, fn: Callable[..., Any] | None = None,
                 pool: psycopg_pool.ConnectionPool | None = None):
        self.workflow_id = workflow_id
        self._fn = fn
        self._pool = pool

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    def get_status(self) -> str:
        """ENQUEUED, RUNNING, SLEEPING, WAITING, SUCCESS, ERROR or CANCELLED."""
        with _pool(self._pool).connection() as conn:
            return conn.execute("SELECT eventic.workflow_status(%s)", (self.workflow_id,)).fetchone()[0]

    def get_result(self, timeout: float | None = 60.0) -> Any:
        """Wait for the output (read back through the workflow function's return annotation;
        `timeout=None`: as long as it takes). Raises WorkflowFailedError if it failed,
        TimeoutError if it has not ended in time or was cancelled."""
        deadline = time.monotonic() + (timeout if timeout is not None else float("inf"))
        with _pool(self._pool).connection() as conn:
            while True:
                left = max(0.0, deadline - time.monotonic())
                try:
                    row = conn.execute(
                        "SELECT status, output, error FROM eventic.workflows WHERE workflow_id = %s",
                        (self.workflow_id,)).fetchone()
                    if row is None:
                        raise WorkflowError(f"workflow {self.workflow_id} does not exist (or is another role's)")
                    if row[0] not in ("SUCCESS", "ERROR", "CANCELLED") and left > 0:
                        conn.execute("SELECT eventic.wait_workflow(%s, %s)",
                                     (self.workflow_id, timedelta(seconds=min(left, 5.0))))
                        continue
                except psycopg.errors.InvalidParameterValue:
                    continue  # it failed meanwhile: read its row again
                status, output, error = row
                if status == "SUCCESS":
                    fn = self._fn or self._lookup_fn()
                    return _load(_return_type(fn), output) if fn is not None else output
                if status == "ERROR":
                    raise WorkflowFailedError(f"workflow {self.workflow_id} failed: {error}")
                raise TimeoutError(f"workflow {self.workflow_id} is {status}")

    def _lookup_fn(self) -> Callable[..., Any] | None:
        with _pool(self._pool).connection() as conn:
            row = conn.execute("SELECT name FROM eventic.workflows WHERE workflow_id = %s",
                               (self.workflow_id,)).fetchone()
        return WORKFLOWS.get(row[0]) if row else None

    def cancel(self) -> None:
        cancel(self.workflow_id, pool=self._pool)

    def resume(self) -> "WorkflowHandle":
        resume(self.workflow_id, pool=self._pool)
        return self

    def fork(self, from_step: int) -> "WorkflowHandle":
        return fork(self.workflow_id, from_step, pool=self._pool)

    def send(self, topic: str, message: Any = None) -> None:
        send(self.workflow_id, topic, message, pool=self._pool)

    def get_event(self, key: str, timeout: float | timedelta = 0.0) -> Any:
        return get_event(self.workflow_id, key, timeout, pool=self._pool)


def start(fn: Callable[..., Any], *args: Any, workflow_id: str | None = None,
          timeout: float | timedelta | None = None, pool: psycopg_pool.ConnectionPool | None = None,
          **kwargs: Any) -> WorkflowHandle:
    """Start workflow `fn(*args, **kwargs)` for a runner; the same `workflow_id` twice starts
    it once. Returns its handle at once (in the caller's transaction when a connection is
    bound with `Eventic.bind`). In a workflow body it is a recorded step (started once)."""
    name = getattr(fn, "__eventic_workflow__", None)
    if name is None:
        raise WorkflowError(f"{getattr(fn, '__qualname__', fn)!r} is not a workflow: decorate it with @Eventic.workflow()")
    run = _current.get()
    if run is not None and not run.in_step and pool is None:
        # in a workflow body: a recorded step, so a replay does not start another one
        wid = transaction(f"start {name}")(
            lambda: start(fn, *args, workflow_id=workflow_id, timeout=timeout, **kwargs).workflow_id)()
        return WorkflowHandle(wid, fn, pool)
    params = (name, Jsonb(_encode_input(fn, args, kwargs)), workflow_id,
              None if timeout is None else timedelta(seconds=_seconds(timeout)))
    sql = "SELECT eventic.start_external_workflow(%s, %s, %s, %s)"
    bound = db._bound.get() if pool is None else None  # noqa: SLF001
    if bound is not None:
        (wid,) = bound.execute(sql, params).fetchone()
    else:
        with _pool(pool).connection() as conn:
            (wid,) = conn.execute(sql, params).fetchone()
    return WorkflowHandle(wid, fn, pool)


def retrieve(workflow_id: str, pool: psycopg_pool.ConnectionPool | None = None) -> WorkflowHandle:
    """The handle of an existing workflow."""
    return WorkflowHandle(workflow_id, None, pool)


def cancel(workflow_id: str, *, pool: psycopg_pool.ConnectionPool | None = None) -> None:
    """Cancel a workflow: its later steps never run (a runner stops at its next step)."""
    with _pool(pool).connection() as conn:
        conn.execute("SELECT eventic.cancel_workflow(%s)", (workflow_id,))


def resume(workflow_id: str, *, pool: psycopg_pool.ConnectionPool | None = None) -> None:
    """Run a cancelled or failed workflow again from its last recorded step."""
    with _pool(pool).connection() as conn:
        conn.execute("SELECT eventic.resume_workflow(%s)", (workflow_id,))


def fork(workflow_id: str, from_step: int, *, pool: psycopg_pool.ConnectionPool | None = None) -> WorkflowHandle:
    """A new workflow reusing the records of the steps before `from_step`; its handle."""
    with _pool(pool).connection() as conn:
        (new_id,) = conn.execute("SELECT eventic.fork_workflow(%s, %s)", (workflow_id, from_step)).fetchone()
    return WorkflowHandle(new_id, None, pool)


# ── running bodies ──────────────────────────────────────────────────────────────────────
def run_now(workflow_id: str, pool: psycopg_pool.ConnectionPool | None = None, lease: float = 30.0) -> bool:
    """Run workflow `workflow_id` in this thread if it is runnable and no runner holds it
    (what calling a workflow function does); False if it was not claimed here."""
    pool = _pool(pool)
    with pool.connection() as conn:
        rows = _claim(conn, 1, lease, workflow_id)
    if not rows:
        return False
    _execute(pool, rows[0])
    return True


class WorkflowRunner:
    """Runs the Python workflows of this process's registered bodies (`WORKFLOWS`) that the
    pool's role started: `threads` threads claim runnable workflows (`batch` at a time, each
    leased for `lease` s and extended every lease/3 s while it runs), a listener wakes them
    when one becomes runnable, and they look anyway every `poll` s (due sleeps). `stop()`
    lets each thread finish its current step, gives its workflows back and joins them.

        runner = WorkflowRunner(pool, stop_event).start()
    """

    def __init__(self, pool: psycopg_pool.ConnectionPool | None = None, stop_event: threading.Event | None = None,
                 *, threads: int = 4, batch: int = 4, lease: float = 30.0, poll: float = 0.5):
        self.pool = _pool(pool)
        self.stop_event = stop_event or threading.Event()
        self.threads = threads
        self.batch = batch
        self.lease = lease
        self.poll = poll
        self.wake = threading.Event()
        self.held: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> "WorkflowRunner":
        targets = [self._listen, self._heartbeat] + [self._work] * self.threads
        for i, target in enumerate(targets):
            t = threading.Thread(target=target, name=f"eventic-workflows-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.wake.set()
        for t in self._threads:
            t.join(timeout)

    def _work(self) -> None:
        while not self.stop_event.is_set():
            try:
                with self.pool.connection() as conn:
                    rows = _claim(conn, self.batch, self.lease)
            except psycopg.Error:
                self.stop_event.wait(self.poll)
                continue
            if not rows:
                self.wake.wait(self.poll)
                self.wake.clear()
                continue
            for i, row in enumerate(rows):
                if self.stop_event.is_set():
                    with self.pool.connection() as conn:
                        for rest in rows[i:]:
                            conn.execute("SELECT eventic.release_workflow(%s, %s)", (rest[0], rest[3]))
                    return
                try:
                    _execute(self.pool, row, self.stop_event, self.held)
                except Exception:  # noqa: BLE001 — the lease runs out, another claim replays it
                    log.exception("running workflow %s", row[0])

    def _listen(self) -> None:
        url = self.pool.conninfo
        while not self.stop_event.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{CHANNEL}"')
                    while not self.stop_event.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self.wake.set()
            except psycopg.Error:
                self.stop_event.wait(1.0)

    def _heartbeat(self) -> None:
        while not self.stop_event.wait(self.lease / 3):
            for wid, lease in list(self.held.items()):
                try:
                    with self.pool.connection() as conn:
                        conn.execute("SELECT eventic.extend_workflow_lease(%s, %s, %s)",
                                     (wid, lease, timedelta(seconds=self.lease)))
                except psycopg.Error:
                    pass  # ended or claimed again meanwhile


def start_runner(pool: psycopg_pool.ConnectionPool | None = None, **options: Any) -> WorkflowRunner:
    """What `Eventic.launch()` calls: a started WorkflowRunner on Eventic's pool. The lease
    defaults to $EVENTIC_WORKFLOW_LEASE seconds (30): how long a workflow of a runner that
    died waits before another runner takes it over; the threads to $EVENTIC_WORKFLOW_THREADS
    (4; each holds a pooled connection while it runs a body)."""
    options.setdefault("lease", float(os.environ.get("EVENTIC_WORKFLOW_LEASE", "30")))
    options.setdefault("threads", int(os.environ.get("EVENTIC_WORKFLOW_THREADS", "4")))
    return WorkflowRunner(pool, **options).start()


__all__ = ["WORKFLOWS", "now", "random", "workflow", "step", "transaction", "start", "retrieve", "send", "recv", "sleep", "set_event",
           "get_event", "cancel", "resume", "fork", "workflow_id", "run_now", "WorkflowHandle",
           "WorkflowRunner", "start_runner", "WorkflowError", "StepError", "WorkflowFailedError",
           "NonDeterministicError", "CHANNEL"]
