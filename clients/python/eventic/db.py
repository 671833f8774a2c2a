"""Connections: one psycopg_pool pool per process (sync, and async on first async use), and
the connection a piece of code is bound to.

Every eventic operation runs `call(sql, params)`: on the connection bound to the current
context (`bind(conn)`: a Python job, a workflow `@transaction` step, your own transaction), or
else on a pooled autocommit connection, so each call is its own transaction."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, AsyncIterator

import psycopg
import psycopg_pool

from .errors import ExtensionMissingError, NotInitializedError, translate

_generations = itertools.count(1)
URL_VARIABLES = ("EVENTIC_DATABASE_URL", "DBOS_DATABASE_URL", "DATABASE_URL")


@dataclass
class State:
    name: str
    url: str
    pool: psycopg_pool.ConnectionPool
    # async pools by event loop: a pool belongs to the loop that opened it (the app's, each
    # worker thread's)
    apools: dict[int, tuple[asyncio.AbstractEventLoop, psycopg_pool.AsyncConnectionPool]] = field(default_factory=dict)
    extension_version: str = ""
    key: int = field(default_factory=lambda: next(_generations))  # caches are per connection set-up
    extras: dict[str, Any] = field(default_factory=dict)


_state: State | None = None
_bound: contextvars.ContextVar[psycopg.Connection | None] = contextvars.ContextVar("eventic_conn", default=None)
_abound: contextvars.ContextVar[psycopg.AsyncConnection | None] = contextvars.ContextVar("eventic_aconn", default=None)


def resolve_url(url: str | None) -> str:
    if url:
        return url
    for variable in URL_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    raise NotInitializedError(
        "no database URL: pass database_url= (or db_url=) or set one of " + ", ".join(URL_VARIABLES))


def open_state(name: str, url: str | None, max_size: int = 10) -> State:
    """Connect (a pool of autocommit connections) and check that the extension is there."""
    global _state
    url = resolve_url(url)
    if _state is not None and _state.url == url:
        _state.name = name
        return _state
    close_state()
    pool = psycopg_pool.ConnectionPool(
        url, min_size=1, max_size=max_size, kwargs={"autocommit": True},
        name=f"eventic-{name}", open=True)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'eventic'").fetchone()
            db = conn.info.dbname
    except BaseException:
        pool.close()
        raise
    if row is None:
        pool.close()
        raise ExtensionMissingError(
            f"the eventic extension is not installed in database {db!r}: run CREATE EXTENSION eventic "
            "there (as a superuser, with eventic in shared_preload_libraries for its background worker)")
    _state = State(name=name, url=url, pool=pool, extension_version=row[0])
    return _state


def close_state() -> None:
    global _state
    if _state is not None:
        _state.pool.close()
        _state = None


def state() -> State:
    if _state is None:
        raise NotInitializedError("eventic is not initialised: call Eventic.init(name, database_url) first")
    return _state


async def async_pool() -> psycopg_pool.AsyncConnectionPool:
    """The async pool of the running event loop (opened on first use in it)."""
    s = state()
    loop = asyncio.get_running_loop()
    entry = s.apools.get(id(loop))
    if entry is None or entry[0] is not loop:
        pool = psycopg_pool.AsyncConnectionPool(
            s.url, min_size=1, max_size=10, kwargs={"autocommit": True}, name=f"eventic-{s.name}-async",
            open=False)
        await pool.open()
        entry = s.apools[id(loop)] = (loop, pool)
    return entry[1]


async def close_async_pool() -> None:
    """Close the running loop's async pool (if it has one)."""
    if _state is not None:
        entry = _state.apools.pop(id(asyncio.get_running_loop()), None)
        if entry is not None:
            await entry[1].close()


@contextlib.contextmanager
def connection() -> Iterator[psycopg.Connection]:
    """The bound connection, or a pooled autocommit one for the duration of the block."""
    conn = _bound.get()
    if conn is not None:
        yield conn
        return
    with state().pool.connection() as conn:
        yield conn


@contextlib.contextmanager
def bind(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Run every eventic call of this context (thread/task) on `conn`, in its transaction."""
    token = _bound.set(conn)
    try:
        yield conn
    finally:
        _bound.reset(token)


@contextlib.asynccontextmanager
async def aconnection() -> AsyncIterator[psycopg.AsyncConnection]:
    conn = _abound.get()
    if conn is not None:
        yield conn
        return
    async with (await async_pool()).connection() as conn:
        yield conn


@contextlib.asynccontextmanager
async def abind(conn: psycopg.AsyncConnection) -> AsyncIterator[psycopg.AsyncConnection]:
    token = _abound.set(conn)
    try:
        yield conn
    finally:
        _abound.reset(token)


def call(sql: str, params: Any = None, *, many: bool = False) -> Any:
    """Run one statement; the first row (or all rows with many=True). Server errors become
    eventic exceptions (errors.translate)."""
    with connection() as conn:
        try:
            cur = conn.execute(sql, params)
            return cur.fetchall() if many else cur.fetchone()
        except psycopg.Error as exc:
            raise translate(exc) from exc


async def acall(sql: str, params: Any = None, *, many: bool = False) -> Any:
    async with aconnection() as conn:
        try:
            cur = await conn.execute(sql, params)
            return await (cur.fetchall() if many else cur.fetchone())
        except psycopg.Error as exc:
            raise translate(exc) from exc
