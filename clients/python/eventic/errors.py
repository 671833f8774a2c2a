"""The exceptions of eventic for Python, and how a server error becomes one of them.

Every operation is a call of an extension SQL function; the server's SQLSTATE decides the
Python exception (README "Errors"), and the server's message, DETAIL and HINT are kept."""

from __future__ import annotations

import psycopg


class EventicError(Exception):
    """Base class. `sqlstate`, `detail` and `hint` come from the server when it raised it."""

    def __init__(self, message: str, *, sqlstate: str | None = None, detail: str | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint


class NotInitializedError(EventicError):
    """An operation ran before `Eventic.init(...)` (or `Eventic.create_app(...)`)."""


class ExtensionMissingError(EventicError):
    """The database has no eventic extension: run `CREATE EXTENSION eventic` there."""


class StaleRecordError(EventicError):
    """The record moved on since this object was read (SQLSTATE 40001): re-read it with
    `Model.hydrate(id)` and apply the change again."""


class SchemaViolationError(EventicError, ValueError):
    """The new version does not match the class's JSON Schema (SQLSTATE 23514); `detail` says
    which rule failed where. Nothing was written."""


class RecordNotFoundError(EventicError, LookupError):
    """Unknown record id or version, a deleted record, or a time before its creation (P0002)."""


class JobNotFoundError(EventicError, LookupError):
    """A Python job name that no decorator registered in this process."""


_BY_SQLSTATE = {
    "40001": StaleRecordError,
    "23514": SchemaViolationError,
    "P0002": RecordNotFoundError,
}


def translate(exc: psycopg.Error) -> EventicError:
    """The eventic exception for a server error (the original stays as `__cause__`)."""
    diag = exc.diag
    sqlstate = diag.sqlstate or getattr(exc, "sqlstate", None)
    cls = _BY_SQLSTATE.get(sqlstate or "", EventicError)
    message = diag.message_primary or str(exc)
    if diag.message_detail:
        message = f"{message} ({diag.message_detail})"
    return cls(message, sqlstate=sqlstate, detail=diag.message_detail, hint=diag.message_hint)
