"""`Eventic`: the process-wide entry point (class methods, as in the seed)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import psycopg
import psycopg_pool

from . import db
from .queues import KNOWN_QUEUES, Queue, register_job
from .worker import Workers


def _workflows() -> Any:
    """eventic.workflows (Python durable workflows), imported when first needed."""
    from . import workflows  # noqa: PLC0415 — lazy: it is optional and imports us
    return workflows


class Eventic:
    """`Eventic.init(name, database_url)` once per process, then records, queues, jobs,
    workflows; `Eventic.launch()` starts the Python workers in this process;
    `Eventic.create_app(name, db_url=...)` is a FastAPI app that does both on startup.

    Interface for eventic.workflows: `Eventic.pool()` (sync psycopg_pool, autocommit
    connections), `await Eventic.async_pool()`, `Eventic.connection()` (the bound connection
    or a pooled one), `Eventic.bind(conn)` (run every eventic call of the block on `conn`, in
    its transaction), `eventic.queues.register_job(fn, name)`; the worker calls
    `eventic.workflows.start_runner()` (→ an object with `.stop()`) in `launch()`."""

    _workers: Workers | None = None

    # ── connection ──────────────────────────────────────────────────────────────────────
    @classmethod
    def init(cls, name: str = "eventic", database_url: str | None = None, *, pool_size: int = 10) -> None:
        """Connect to the database (a psycopg_pool pool). Without a URL: $EVENTIC_DATABASE_URL,
        $DBOS_DATABASE_URL or $DATABASE_URL. Raises ExtensionMissingError when the database
        has no `CREATE EXTENSION eventic`."""
        db.open_state(name, database_url, pool_size)

    @classmethod
    def pool(cls) -> psycopg_pool.ConnectionPool:
        """The sync pool (autocommit connections)."""
        return db.state().pool

    @classmethod
    async def async_pool(cls) -> psycopg_pool.AsyncConnectionPool:
        """The async pool, opened on first use in the running event loop."""
        return await db.async_pool()

    @classmethod
    def database_url(cls) -> str:
        return db.state().url

    @staticmethod
    @contextlib.contextmanager
    def connection() -> Iterator[psycopg.Connection]:
        """The connection eventic calls use here: the bound one, or a pooled one."""
        with db.connection() as conn:
            yield conn

    @staticmethod
    def bind(conn: psycopg.Connection) -> contextlib.AbstractContextManager[psycopg.Connection]:
        """`with Eventic.bind(conn), conn.transaction(): ...` — every Record, queue and job call
        in the block runs on `conn`, so they commit or roll back together with your own SQL."""
        return db.bind(conn)

    @staticmethod
    def abind(conn: psycopg.AsyncConnection) -> contextlib.AbstractAsyncContextManager[psycopg.AsyncConnection]:
        return db.abind(conn)

    @classmethod
    def close(cls) -> None:
        """Stop the workers and close the pools."""
        cls.shutdown()
        db.close_state()

    # ── queues and jobs ─────────────────────────────────────────────────────────────────
    @staticmethod
    def queue(name: str) -> Queue:
        """The queue `name` (a class's queue is `Model._queue_name`)."""
        return Queue(name)

    @staticmethod
    def job(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@Eventic.job()`: the function can be enqueued and runs in Python workers. Calling
        it directly still runs it now. `name` defaults to `module:qualname` (workers find the
        job by it, so keep it stable)."""
        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            register_job(fn, name)
            return fn
        return decorate

    # ── workflows (eventic.workflows) ───────────────────────────────────────────────────
    @staticmethod
    def workflow(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@Eventic.workflow()`: eventic.workflows.workflow (a durable Python workflow)."""
        return _registered(_workflows().workflow(*args, **kwargs))

    @staticmethod
    def step(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@Eventic.step()`: eventic.workflows.step; the function can also be enqueued."""
        return _registered(_workflows().step(*args, **kwargs))

    @staticmethod
    def transaction(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`@Eventic.transaction()`: eventic.workflows.transaction; the function can also be
        enqueued (as a job it runs in the worker's batch transaction)."""
        return _registered(_workflows().transaction(*args, **kwargs))

    # ── workers ─────────────────────────────────────────────────────────────────────────
    @classmethod
    def launch(cls, threads: int = 2, *, queues: list[str] | None = None, lease_seconds: float = 30.0,
               poll: float = 1.0, workflows: bool = True) -> Workers:
        """Start Python workers in this process (daemon threads): `threads` job threads for
        the Python jobs of `queues` (default: every queue this process has used or defined
        jobs for), plus the workflow runner. Idempotent: a second call returns the running
        workers. Stop them with `Eventic.shutdown()`."""
        if cls._workers is not None:
            return cls._workers
        names = [q if q.endswith("_py") else q + "_py" for q in queues] if queues else sorted(KNOWN_QUEUES)
        for name in names:
            Queue(name[:-3]).ensure_python_queue()
        cls._workers = Workers(db.state().url, names, threads, lease_seconds, poll, workflows).start()
        return cls._workers

    @classmethod
    def shutdown(cls) -> None:
        if cls._workers is not None:
            workers, cls._workers = cls._workers, None
            workers.stop()

    # ── FastAPI ─────────────────────────────────────────────────────────────────────────
    @staticmethod
    def create_app(name: str = "eventic", db_url: str | None = None, **fastapi_kwargs: Any) -> Any:
        """A FastAPI app: connects now, starts the workers on startup (lifespan), mounts the
        routes of every Record class (also those defined later) and GET /workflows/{id}."""
        from .web import create_app
        return create_app(name, db_url, **fastapi_kwargs)


def _registered(decorator: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Callable[..., Any]:
    """Wrap a workflow decorator so that what it returns can also be enqueued as a job."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        wrapped = decorator(fn)
        if getattr(wrapped, "__eventic_job__", None) is None:
            register_job(wrapped, f"{fn.__module__}:{fn.__qualname__}")
        return wrapped
    return decorate
