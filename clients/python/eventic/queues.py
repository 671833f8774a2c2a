"""Queues and Python jobs.

A queue `n` of the extension takes SQL function calls (run by the extension's background
worker). Python jobs go to its companion queue `n_py`, created with `worker => false`, so the
background worker never takes them: Python workers (eventic.worker) take them through the
external consumer API (`dequeue` with a lease, `extend_lease`, `ack`/`nack`). A Python job is
stored as a call of the marker function `pg_catalog.jsonb_typeof(jsonb)` whose argument is
`{"job": "<name>", "args": [...], "kwargs": {...}}`; a worker runs only jobs whose name a
decorator registered in its process (`@Eventic.job()`, the workflow decorators, Record methods),
never an arbitrary importable name."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import sys
import threading
from typing import Any, Callable

from psycopg.types.json import Jsonb
from pydantic import TypeAdapter
from pydantic_core import to_jsonable_python

from . import db
from .errors import JobNotFoundError

MARKER_FN = "pg_catalog.jsonb_typeof(jsonb)"
PY_SUFFIX = "_py"

# job name -> the callable a worker runs
JOBS: dict[str, Callable[..., Any]] = {}
# queues whose Python jobs a worker of this process takes (their companion names)
KNOWN_QUEUES: set[str] = set()
_created: set[tuple[int, str]] = set()
_lock = threading.Lock()


def job_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__eventic_job__", None) or f"{fn.__module__}:{fn.__qualname__}"


def register_job(fn: Callable[..., Any], name: str | None = None) -> str:
    """Make `fn` runnable as a Python job under `name` (default `module:qualname`)."""
    name = name or job_name(fn)
    JOBS[name] = fn
    try:
        fn.__eventic_job__ = name  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    return name


def python_queue_name(queue: str) -> str:
    return queue + PY_SUFFIX


class Queue:
    """`Eventic.queue(name)`: enqueue SQL functions (by signature, e.g. "send_mail(text,text)")
    or Python jobs (functions decorated `@Eventic.job()` or with a workflow decorator)."""

    def __init__(self, name: str):
        self.name = name
        self.python_name = python_queue_name(name)
        KNOWN_QUEUES.add(self.python_name)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def _plan(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, Any]:
        if isinstance(fn, str):
            if kwargs:
                raise TypeError("a SQL function job takes positional arguments only")
            return self.name, fn, Jsonb(to_jsonable_python(list(args)))
        name = job_name(fn)
        if JOBS.get(name) is None:
            raise JobNotFoundError(
                f"{name} is not a Python job: decorate it with @Eventic.job() (or a workflow decorator)")
        payload = {"job": name, "args": to_jsonable_python(list(args))}
        if kwargs:
            payload["kwargs"] = to_jsonable_python(kwargs)
        return self.python_name, MARKER_FN, Jsonb(payload)

    _SQL = ("SELECT eventic.enqueue(%s, %s::regprocedure, %s, run_at => %s, priority => %s, "
            "dedup_key => %s, max_attempts => %s)")

    def enqueue(self, fn: Any, *args: Any, run_at: dt.datetime | None = None, priority: int = 0,
                dedup_key: str | None = None, max_attempts: int = 5, **kwargs: Any) -> int:
        """Enqueue `fn(*args, **kwargs)`; returns the job id (the waiting job's id when
        `dedup_key` is already waiting). Arguments travel as JSON.

        In a workflow body (outside its steps) the enqueue is a recorded `@transaction` step
        of its own, named "enqueue <queue>:<function>": it happens once, and a replay of the
        body gets the recorded job id instead of enqueuing again."""
        queue, signature, payload = self._plan(fn, args, kwargs)
        workflows = sys.modules.get("eventic.workflows")
        if workflows is not None and workflows.workflow_id() is not None:
            label = signature if queue == self.name else payload.obj["job"]
            step = workflows.transaction(f"enqueue {queue}:{label}")(self._insert)
            return step(queue, signature, payload, run_at, priority, dedup_key, max_attempts)
        return self._insert(queue, signature, payload, run_at, priority, dedup_key, max_attempts)

    def _insert(self, queue: str, signature: str, payload: Any, run_at: dt.datetime | None, priority: int,
                dedup_key: str | None, max_attempts: int) -> int:
        if queue == self.python_name:
            self.ensure_python_queue()
        return db.call(self._SQL, (queue, signature, payload, run_at, priority, dedup_key, max_attempts))[0]

    async def aenqueue(self, fn: Any, *args: Any, run_at: dt.datetime | None = None, priority: int = 0,
                       dedup_key: str | None = None, max_attempts: int = 5, **kwargs: Any) -> int:
        queue, signature, payload = self._plan(fn, args, kwargs)
        if queue == self.python_name:
            await self.aensure_python_queue()
        row = await db.acall(self._SQL, (queue, signature, payload, run_at, priority, dedup_key, max_attempts))
        return row[0]

    def ensure_python_queue(self) -> None:
        key = (db.state().key, self.python_name)
        if key not in _created:
            db.call("SELECT eventic.create_queue(%s, worker => false)", (self.python_name,))
            _created.add(key)

    async def aensure_python_queue(self) -> None:
        key = (db.state().key, self.python_name)
        if key not in _created:
            await db.acall("SELECT eventic.create_queue(%s, worker => false)", (self.python_name,))
            _created.add(key)

    def stats(self) -> dict[str, Any]:
        """`eventic.queue_stats` of the Python queue (ready, scheduled, running, dead, …)."""
        rows = db.call("SELECT row_to_json(s)::jsonb FROM eventic.queue_stats s WHERE queue_name = %s",
                       (self.python_name,))
        return rows[0] if rows else {}


# ── calling a job with its JSON arguments ──────────────────────────────────────────────────
@functools.lru_cache(maxsize=1024)
def _plan_call(fn: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, TypeAdapter]] | None:
    """The function's signature and a validator per annotated parameter (None: nothing to
    convert, the arguments are passed as they are)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    adapters = {}
    for name, param in sig.parameters.items():
        if param.annotation is inspect.Parameter.empty or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        try:
            adapters[name] = TypeAdapter(param.annotation)
        except Exception:  # an annotation pydantic cannot validate: passed as JSON
            continue
    return (sig, adapters) if adapters else None


def coerce_call(fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """JSON arguments converted to the function's annotated parameter types (a UUID string
    to uuid.UUID, …), as far as pydantic can; anything else is passed as it is."""
    plan = _plan_call(fn)
    if plan is None or not (args or kwargs):
        return args, kwargs
    sig, adapters = plan
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs
    for name, value in bound.arguments.items():
        adapter = adapters.get(name)
        if adapter is not None:
            try:
                bound.arguments[name] = adapter.validate_python(value)
            except Exception:
                pass
    return list(bound.args), dict(bound.kwargs)


# ── Record methods: run now, or `.later()` on the class's queue ──────────────────────────────
_RECORD_API = {"hydrate", "ahydrate", "as_of", "aas_of", "history", "ahistory", "diff", "adiff", "set", "aset",
               "add_property", "remove_property", "list_properties", "delete", "adelete", "refresh",
               "acreate", "eventic_json_schema"}


class _Evented:
    """A public Record method: calling it runs it now; `obj.method.later(*args)` enqueues it."""

    def __init__(self, cls: type, fn: Callable[..., Any]):
        self.cls, self.fn = cls, fn
        functools.update_wrapper(self, fn)

        def run_later(record_id: str, *args: Any, **kwargs: Any) -> Any:
            obj = cls.hydrate(record_id)
            args, kwargs = coerce_call(fn, [obj, *args], kwargs)
            return fn(*args, **kwargs)
        self._run_later = run_later
        register_job(run_later, f"eventic.record:{cls.__eventic_class__}.{fn.__name__}")

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.fn
        return _BoundEvented(self, obj)


class _BoundEvented:
    def __init__(self, evented: _Evented, obj: Any):
        self._evented, self._obj = evented, obj
        functools.update_wrapper(self, evented.fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._evented.fn(self._obj, *args, **kwargs)

    def later(self, *args: Any, run_at: dt.datetime | None = None, priority: int = 0,
              dedup_key: str | None = None, max_attempts: int = 5, **kwargs: Any) -> int:
        """Enqueue this method call on the record's class queue; a Python worker hydrates the
        record (its latest version then) and calls the method. Returns the job id."""
        queue = Queue(self._evented.cls._queue_name)
        return queue.enqueue(self._evented._run_later, str(self._obj._id()), *args, run_at=run_at,
                             priority=priority, dedup_key=dedup_key, max_attempts=max_attempts, **kwargs)


def wrap_public_methods(cls: type) -> None:
    """Wrap every public plain method defined by a Record subclass (not the Record API)."""
    wrapped = False
    for name, value in list(cls.__dict__.items()):
        if name.startswith("_") or name in _RECORD_API or not inspect.isfunction(value):
            continue
        setattr(cls, name, _Evented(cls, value))
        wrapped = True
    if wrapped:
        KNOWN_QUEUES.add(python_queue_name(cls._queue_name))
