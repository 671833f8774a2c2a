"""The machinery under eventic.workflows: a body's run under a lease (`_Run`), replaying
recorded steps, grouping `@transaction` steps, and running claimed workflows (`_execute`).

A run uses one connection (autocommit). Consecutive `@transaction` steps run in one database
transaction (a group): BEGIN, each step's statements, then one round trip with every step's
record (`eventic.record_step`) and COMMIT, sent when the body reaches anything else (a `@step`,
a sleep, a message, its end), after GROUP_STEPS steps or GROUP_SECONDS. Each step's effects
still commit with its record, exactly once: a group that fails is rolled back whole and the body
is replayed from its committed records with every `@transaction` step in a transaction of its
own (strict), where the failing step's error is recorded and raised as StepError.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

import psycopg
import psycopg_pool
from psycopg.types.json import Jsonb
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from . import db

LEASE_LOST = "55000"  # the extension's answer to a call under a lease that is not the latest
GROUP_STEPS = 50      # @transaction steps in one transaction at most
GROUP_SECONDS = 0.5   # and for at most this long (a slow body does not hold locks long)
RECORD = "SELECT eventic.record_step(%s, %s, %s, %s, %s, %s, %s, %s)"
RECORD_MANY = ("SELECT count(eventic.record_step(%s, %s, r.p, r.n, r.k, r.o))"
               " FROM jsonb_to_recordset(%s) AS r(p int, n text, k text, o jsonb)")


# ── errors ──────────────────────────────────────────────────────────────────────────────
class WorkflowError(Exception):
    """Base of the errors of eventic.workflows."""


class StepError(WorkflowError):
    """A step failed (also raised on replay, from its recorded error)."""


class WorkflowFailedError(WorkflowError):
    """`get_result` of a workflow that ended in ERROR (the message carries its error)."""


class NonDeterministicError(WorkflowError):
    """A replay asked for a different step than the one recorded at that position."""


class _Replay(BaseException):
    """Unwinds a body whose group of @transaction steps failed: rolled back, replayed strictly."""


class _Stop(BaseException):
    """Unwinds a body that sleeps, waits, lost its lease, or whose runner stops
    (a BaseException: `except Exception` in a body does not catch it)."""


# ── values ──────────────────────────────────────────────────────────────────────────────
def _dump(value: Any) -> Any:
    return to_jsonable_python(value)


@functools.lru_cache(maxsize=None)
def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    if annotation is inspect.Signature.empty or annotation is None or annotation is Any:
        return None
    try:
        return TypeAdapter(annotation)
    except Exception:  # an annotation pydantic cannot build a validator for: plain JSON
        return None


def _load(annotation: Any, value: Any) -> Any:
    adapter = _adapter(annotation)
    return value if adapter is None else adapter.validate_python(value)


@functools.lru_cache(maxsize=None)
def _hints(fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(fn, eval_str=True)
    except (NameError, TypeError):
        return inspect.signature(fn)


def _encode_input(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"args": _dump(list(args)), "kwargs": _dump(kwargs)}


def _decode_input(fn: Callable[..., Any], data: Any) -> tuple[list[Any], dict[str, Any]]:
    data = data or {}
    args, kwargs = list(data.get("args", [])), dict(data.get("kwargs", {}))
    params = list(_hints(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    args = [_load(positional[i].annotation, a) if i < len(positional) else a for i, a in enumerate(args)]
    by_name = {p.name: p for p in params}
    kwargs = {k: _load(by_name[k].annotation, v) if k in by_name else v for k, v in kwargs.items()}
    return args, kwargs


def _return_type(fn: Callable[..., Any]) -> Any:
    return _hints(fn).return_annotation


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


# ── the run of a body ───────────────────────────────────────────────────────────────────
@dataclass
class _Run:
    """A body being run under a lease: its committed step records and the next position."""
    workflow_id: str
    lease: int
    records: dict[int, dict[str, Any]]
    conn: psycopg.Connection
    stopping: Any = None          # a threading.Event: the runner stops
    strict: bool = False          # every @transaction step in a transaction of its own
    position: int = 0
    in_step: bool = False
    lost: bool = False
    pending: list[tuple[int, str, str, Any]] = field(default_factory=list)  # the open group's records
    group_since: float | None = None  # when the open group's transaction began

    def next(self, name: str, kind: str) -> tuple[int, dict[str, Any] | None]:
        """The position of the next step and its record (None when it has none yet)."""
        if self.stopping is not None and self.stopping.is_set():
            raise _Stop("runner stopping")
        position = self.position
        self.position += 1
        record = self.records.get(position)
        if record is not None and (record["name"] != name or record["kind"] != kind):
            raise NonDeterministicError(
                f"workflow {self.workflow_id} is not deterministic: step {position} was "
                f"{record['kind']} {record['name']!r} when it ran, now it is {kind} {name!r}")
        return position, record

    def lost_lease(self, exc: BaseException) -> bool:
        """Whether `exc` is the extension refusing this run's lease (claimed again, or ended)."""
        return (isinstance(exc, psycopg.Error) and exc.sqlstate == LEASE_LOST
                and str(exc).startswith(f"workflow {self.workflow_id} "))

    def stop_if_lost(self, exc: BaseException) -> None:
        if self.lost_lease(exc):
            self.lost = True
            raise _Stop(str(exc)) from exc

    def record_sql(self, position: int, name: str, kind: str, output: Any = None,
                   error: str | None = None, attempts: int = 1) -> tuple[str, tuple[Any, ...]]:
        return RECORD, (self.workflow_id, self.lease, position, name, kind,
                        None if error is not None else Jsonb(output), error, attempts)

    def committed(self, position: int, name: str, kind: str, output: Any = None,
                  error: str | None = None, attempts: int = 1) -> None:
        self.records[position] = {"position": position, "name": name, "kind": kind, "output": output,
                                  "error": error, "attempts": attempts}

    def rollback(self) -> None:
        """Abandon the open transaction (a group's, or a strict step's)."""
        self.pending.clear()
        self.group_since = None
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")

    def run_many(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Several statements in one round trip (client-side parameters, simple protocol)."""
        sql = "; ".join(s for s, _ in statements)
        params = tuple(p for _, ps in statements for p in ps)
        psycopg.ClientCursor(self.conn).execute(sql, params)

    def flush(self, then: list[tuple[str, tuple[Any, ...]]] | None = None) -> None:
        """Commit the open group: its records (and `then`) and COMMIT in one round trip."""
        if self.group_since is None:
            if then:
                self.run_many(then)
            return
        # every record in one statement (parsed once, unlike one statement per record)
        statements = [(RECORD_MANY, (self.workflow_id, self.lease, Jsonb(
            [{"p": p, "n": n, "k": k, "o": o} for p, n, k, o in self.pending])))] if self.pending else []
        statements += then or []
        try:
            self.run_many(statements + [("COMMIT", ())])
        except psycopg.Error as exc:
            self.rollback()
            self.stop_if_lost(exc)
            raise _Replay(str(exc)) from exc  # a deferred check of some step: find which, strictly
        for p, n, k, o in self.pending:
            self.committed(p, n, k, o)
        self.pending.clear()
        self.group_since = None

    def call(self, sql: str, params: tuple[Any, ...]) -> Any:
        """One of the extension's runner calls, after the open group is committed; a lost
        lease or an ended workflow stops the body."""
        self.flush()
        try:
            return self.conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            self.stop_if_lost(exc)
            raise

    def record(self, position: int, name: str, kind: str, output: Any = None,
               error: str | None = None, attempts: int = 1) -> None:
        """Record a step now (committed when this returns)."""
        self.call(*self.record_sql(position, name, kind, output, error, attempts))
        self.committed(position, name, kind, output, error, attempts)

    def transaction_step(self, position: int, name: str, body: Callable[[], Any]) -> Any:
        """Run a new @transaction step; its dumped output."""
        if not self.strict:
            if self.group_since is None:
                self.conn.execute("BEGIN")
                self.group_since = time.monotonic()
            self.in_step = True
            try:
                with db.bind(self.conn):
                    output = _dump(body())
            except (_Stop, _Replay, NonDeterministicError):
                raise
            except Exception as exc:  # noqa: BLE001 — the group is rolled back and replayed strictly
                raise _Replay(f"{type(exc).__name__}: {exc}") from exc
            finally:
                self.in_step = False
            self.pending.append((position, name, "transaction", output))
            if len(self.pending) >= GROUP_STEPS or time.monotonic() - self.group_since > GROUP_SECONDS:
                self.flush()
            return output
        try:
            self.conn.execute("BEGIN")
            self.in_step = True
            try:
                with db.bind(self.conn):
                    output = _dump(body())
            finally:
                self.in_step = False
            self.run_many([self.record_sql(position, name, "transaction", output), ("COMMIT", ())])
            self.committed(position, name, "transaction", output)
            return output
        except (_Stop, NonDeterministicError):
            self.rollback()
            raise
        except Exception as exc:  # noqa: BLE001 — rolled back; recorded as the step's error
            self.rollback()
            self.stop_if_lost(exc)
            message = f"{type(exc).__name__}: {exc}"
            self.record(position, name, "transaction", error=message)
            raise StepError(f"step {name!r} failed: {message}") from exc


_current: contextvars.ContextVar[_Run | None] = contextvars.ContextVar("eventic_workflow_run", default=None)


def _pool(pool: psycopg_pool.ConnectionPool | None = None) -> psycopg_pool.ConnectionPool:
    return pool if pool is not None else db.state().pool


def workflow_id() -> str | None:
    """Inside a workflow body: the id of the running workflow (None outside)."""
    run = _current.get()
    return run.workflow_id if run is not None else None


def _replayed(name: str, record: dict[str, Any], returns: Any) -> Any:
    if record.get("error") is not None:
        raise StepError(f"step {name!r} failed: {record['error']}")
    return _load(returns, record.get("output"))


# ── running claimed workflows ───────────────────────────────────────────────────────────
WORKFLOWS: dict[str, Callable[..., Any]] = {}


def _execute(pool: psycopg_pool.ConnectionPool, row: tuple[Any, ...],
             stopping: Any = None, held: dict[str, int] | None = None) -> None:
    """Run (replay) one claimed workflow on one connection until it ends, sleeps, waits or
    is lost."""
    wid, name, data, lease, steps = row
    records = {int(s["position"]): s for s in (steps or [])}
    if held is not None:
        held[wid] = lease
    try:
        with pool.connection() as conn:
            _run_body(conn, WORKFLOWS.get(name), name, wid, lease, records, data, stopping)
    finally:
        if held is not None:
            held.pop(wid, None)


def _run_body(conn: psycopg.Connection, fn: Callable[..., Any] | None, name: str, wid: str, lease: int,
              records: dict[int, dict[str, Any]], data: Any, stopping: Any) -> None:
    strict = False
    while True:
        run = _Run(wid, lease, dict(records), conn, stopping, strict)
        token = _current.set(run)
        try:
            try:
                if fn is None:
                    raise WorkflowError(f"no workflow named {name!r} in this process")
                args, kwargs = _decode_input(fn, data)
                output: Any = _dump(fn.__wrapped__(*args, **kwargs))
                error = None
            except _Replay:
                run.rollback()
                records, strict = run.records, True
                continue
            except _Stop:
                run.rollback()
                if not run.lost and stopping is not None and stopping.is_set():
                    conn.execute("SELECT eventic.release_workflow(%s, %s)", (wid, lease))
                return
            except Exception as exc:  # noqa: BLE001 — the workflow's error
                if run.lost_lease(exc):
                    run.rollback()
                    return
                output, error = None, f"{type(exc).__name__}: {exc}"
            try:
                # the open group's records, the end and COMMIT: one round trip
                run.flush([("SELECT eventic.finish_workflow(%s, %s, %s, %s)",
                            (wid, lease, None if error else Jsonb(output), error))])
            except _Stop:
                pass  # cancelled meanwhile, or claimed again: nothing to end
            except _Replay:
                records, strict = run.records, True
                continue
            except psycopg.Error as exc:
                if not run.lost_lease(exc):
                    raise
            return
        finally:
            _current.reset(token)


def _claim(conn: psycopg.Connection, batch: int, lease: float, only: str | None = None) -> list[tuple[Any, ...]]:
    names = list(WORKFLOWS)
    if not names:
        return []
    return conn.execute(
        "SELECT workflow_id, name, input, lease, steps FROM eventic.claim_workflows(%s, %s, %s, %s)",
        (names, batch, timedelta(seconds=lease), only)).fetchall()
