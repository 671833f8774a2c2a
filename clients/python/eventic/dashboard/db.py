"""The dashboard's connections: one small pool, connected as the role of the URL, so every page
shows exactly what that role may see (row-level security and eventic's own checks apply)."""

from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

# SQLSTATE -> HTTP status for the error page
_STATUS = {"42501": 403, "P0002": 404, "42704": 404, "22023": 400, "22P02": 400, "22007": 400,
           "22008": 400, "23514": 400, "55000": 409, "40001": 409, "57014": 504}


@dataclass
class DbError(Exception):
    """A database error as a person reads it: message, detail, hint, SQLSTATE."""
    message: str
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None

    @property
    def status(self) -> int:
        return _STATUS.get(self.sqlstate or "", 500)

    @classmethod
    def from_psycopg(cls, e: psycopg.Error) -> "DbError":
        diag = e.diag
        message = diag.message_primary or str(e).strip() or type(e).__name__
        return cls(message, e.sqlstate, diag.message_detail, diag.message_hint)


def _configure(conn: psycopg.Connection) -> None:
    # a page never waits long: a slow query is a message, not a hung browser tab
    conn.execute("SET statement_timeout = '15s'")
    conn.execute("SET application_name = 'eventic dashboard'")
    conn.execute("SET TimeZone = 'UTC'")  # every time on the pages is UTC


class Database:
    def __init__(self, url: str, max_size: int = 4):
        self.pool = ConnectionPool(url, min_size=1, max_size=max_size, open=False, timeout=5,
                                   kwargs={"autocommit": True, "row_factory": dict_row},
                                   configure=_configure)

    def open(self) -> None:
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    def _run(self, fn):
        try:
            with self.pool.connection() as conn:
                return fn(conn)
        except PoolTimeout:
            raise DbError("cannot connect to the database (no connection within 5 s)",
                          hint="Check --database-url and that PostgreSQL is running.") from None
        except psycopg.Error as e:
            raise DbError.from_psycopg(e) from None

    def all(self, query, params=()) -> list[dict]:
        return self._run(lambda conn: conn.execute(query, params).fetchall())

    def one(self, query, params=()) -> dict | None:
        return self._run(lambda conn: conn.execute(query, params).fetchone())

    def many(self, queries) -> list[list[dict]]:
        """Several queries on one connection (one pool checkout per page)."""
        return self._run(lambda conn: [conn.execute(q, p).fetchall() for q, p in queries])
