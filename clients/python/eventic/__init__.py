"""eventic for Python: Pydantic records, jobs and durable workflows on the eventic extension.

    from eventic import Eventic, Record
    Eventic.init("svc", "postgresql://…")
    class Todo(Record):
        text: str
    item = Todo(text="Learn Eventic")   # version 0
    item.text = "Ship v1"               # version 1
"""

from .core import Eventic
from .errors import (EventicError, ExtensionMissingError, JobNotFoundError, NotInitializedError,
                     RecordNotFoundError, SchemaViolationError, StaleRecordError)
from .queues import Queue
from .records import HistoryEntry, Record

__all__ = ["Eventic", "Record", "HistoryEntry", "Queue", "EventicError", "ExtensionMissingError",
           "JobNotFoundError", "NotInitializedError", "RecordNotFoundError", "SchemaViolationError",
           "StaleRecordError"]
