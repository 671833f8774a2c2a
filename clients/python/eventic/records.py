"""`Record`: a Pydantic v2 model whose instances are eventic records.

No ORM: every operation is one call of an extension SQL function (README "Records"):
`Story(title=...)` → `eventic.create` (version 0); `story.title = ...` → `eventic.set_field`
with `expected_version` (a stale object raises StaleRecordError); `Story.hydrate` →
`eventic.hydrate`, and so on. The class is registered (`eventic.register_class`, with the JSON
Schema of the model and its typed view) on its first use in a process."""

from __future__ import annotations

import contextvars
import datetime as dt
import threading
import uuid
from typing import Any, ClassVar

from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic_core import to_jsonable_python

from . import db
from .errors import EventicError, RecordNotFoundError
from .hooks import record_class_defined
from .naming import snake_case
from .queues import wrap_public_methods

META_FIELDS = ("id", "version")

# set while an object is built that must not be stored (acreate stores it itself)
_NO_CREATE: contextvars.ContextVar[bool] = contextvars.ContextVar("eventic_no_create", default=False)
# class name -> Record class: the worker finds the class of a `.later()` job here
CLASSES: dict[str, type["Record"]] = {}
_registered: set[tuple[int, str]] = set()
_registered_lock = threading.Lock()


class HistoryEntry(BaseModel):
    """One row of `eventic.history(id)`."""
    version: int
    version_id: uuid.UUID
    data: dict[str, Any]
    changed_fields: list[str]
    created_at: dt.datetime
    created_by: str
    deleted: bool


def _json(value: Any) -> Jsonb:
    return Jsonb(to_jsonable_python(value))


class Record(BaseModel):
    """Subclass it: `class Story(Record): title: str | None = None`.

    Class settings (ClassVars): `__eventic_class__` (the class name in eventic, default the
    Python class name), `__eventic_view_schema__` (schema of the typed view, default "public";
    None for no view). `_queue_name` is the class's queue (snake_case of the class name, as
    the extension names it)."""

    model_config = ConfigDict(extra="ignore")

    id: uuid.UUID | None = Field(default=None, description="the record's stable id")
    version: int = Field(default=-1, description="0 when created, +1 per change")
    properties: dict[str, Any] = Field(default_factory=dict, description="free-form property bag")

    __eventic_class__: ClassVar[str] = ""
    __eventic_view_schema__: ClassVar[str | None] = "public"
    _queue_name: ClassVar[str] = ""
    _deleted: bool = PrivateAttr(default=False)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "__eventic_class__" not in cls.__dict__:
            cls.__eventic_class__ = cls.__name__
        cls._queue_name = snake_case(cls.__eventic_class__)
        CLASSES[cls.__eventic_class__] = cls
        wrap_public_methods(cls)
        record_class_defined(cls)

    # ── creation ─────────────────────────────────────────────────────────────────────────
    def __init__(self, /, **data: Any) -> None:
        # pydantic calls __init__ also when it validates data (model_validate, FastAPI): data
        # read from the database (a version) is not created again
        super().__init__(**data)
        if data.get("version", -1) >= 0 or _NO_CREATE.get():
            return
        type(self)._ensure_registered()
        row = db.call("SELECT eventic.create(%s, %s, %s)",
                      (self.__eventic_class__, _json(self._document()), self.id))
        self.__dict__["id"] = row[0]
        self.__dict__["version"] = 0

    @classmethod
    async def acreate(cls, **data: Any) -> "Record":
        """Async `Model(**data)`: validates, then creates version 0."""
        token = _NO_CREATE.set(True)
        try:
            obj = cls.model_validate(data)
        finally:
            _NO_CREATE.reset(token)
        await cls._aensure_registered()
        row = await db.acall("SELECT eventic.create(%s, %s, %s)",
                             (cls.__eventic_class__, _json(obj._document()), obj.id))
        obj.__dict__["id"], obj.__dict__["version"] = row[0], 0
        return obj

    def _document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=set(META_FIELDS))

    # ── registration ────────────────────────────────────────────────────────────────────
    @classmethod
    def eventic_json_schema(cls) -> dict[str, Any]:
        """The JSON Schema registered for the class: the model's, without id and version
        (the extension keeps them outside the document) and the property bag."""
        schema = cls.model_json_schema()
        props = dict(schema.get("properties", {}))
        for name in (*META_FIELDS, "properties"):
            props.pop(name, None)
        schema["properties"] = props
        required = [r for r in schema.get("required", []) if r not in META_FIELDS and r != "properties"]
        if required:
            schema["required"] = required
        else:
            schema.pop("required", None)
        return schema

    @classmethod
    def _registration(cls) -> tuple[str, tuple[Any, ...]]:
        return ("SELECT eventic.register_class(%s, %s, view_schema => %s)",
                (cls.__eventic_class__, Jsonb(cls.eventic_json_schema()), cls.__eventic_view_schema__))

    @classmethod
    def _ensure_registered(cls) -> None:
        key = (db.state().key, cls.__eventic_class__)
        if key in _registered:
            return
        with _registered_lock:
            if key in _registered:
                return
            sql, params = cls._registration()
            try:
                db.call(sql, params)
            except EventicError as exc:
                if exc.sqlstate != "42501":  # registered by another role: its schema applies
                    raise
            _registered.add(key)

    @classmethod
    async def _aensure_registered(cls) -> None:
        key = (db.state().key, cls.__eventic_class__)
        if key in _registered:
            return
        sql, params = cls._registration()
        try:
            await db.acall(sql, params)
        except EventicError as exc:
            if exc.sqlstate != "42501":
                raise
        _registered.add(key)

    # ── reading ─────────────────────────────────────────────────────────────────────────
    @classmethod
    def _from_doc(cls, doc: dict[str, Any] | None, what: str) -> "Record":
        if doc is None:
            raise RecordNotFoundError(f"no {cls.__eventic_class__} {what}", sqlstate="P0002")
        class_type = doc.pop("class_type", cls.__eventic_class__)
        if class_type != cls.__eventic_class__:
            raise RecordNotFoundError(
                f"record {doc.get('id')} is a {class_type}, not a {cls.__eventic_class__}: "
                f"read it with {class_type}.hydrate", sqlstate="P0002")
        return cls.model_validate(doc)

    @classmethod
    def hydrate(cls, id: uuid.UUID | str, version: int | None = None) -> "Record":
        """The record as it is now, or at `version`."""
        row = db.call("SELECT eventic.hydrate(%s, %s)", (_uuid(id), version))
        return cls._from_doc(row[0], f"record {id}")

    @classmethod
    async def ahydrate(cls, id: uuid.UUID | str, version: int | None = None) -> "Record":
        row = await db.acall("SELECT eventic.hydrate(%s, %s)", (_uuid(id), version))
        return cls._from_doc(row[0], f"record {id}")

    @classmethod
    def as_of(cls, id: uuid.UUID | str, when: dt.datetime) -> "Record":
        """The version that was current at `when` (a timezone-aware datetime)."""
        row = db.call("SELECT eventic.hydrate_as_of(%s, %s)", (_uuid(id), when))
        return cls._from_doc(row[0], f"record {id} at {when}")

    @classmethod
    async def aas_of(cls, id: uuid.UUID | str, when: dt.datetime) -> "Record":
        row = await db.acall("SELECT eventic.hydrate_as_of(%s, %s)", (_uuid(id), when))
        return cls._from_doc(row[0], f"record {id} at {when}")

    _HISTORY = ("SELECT version, version_id, data, changed_fields, created_at, created_by, deleted "
                "FROM eventic.history(%s)")

    def history(self) -> list[HistoryEntry]:
        """Every version, oldest first."""
        return [HistoryEntry(**r) for r in _dicts(db.call(self._HISTORY, (self._id(),), many=True))]

    async def ahistory(self) -> list[HistoryEntry]:
        return [HistoryEntry(**r) for r in _dicts(await db.acall(self._HISTORY, (self._id(),), many=True))]

    def diff(self, from_version: int, to_version: int) -> dict[str, dict[str, Any]]:
        """`{"field": {"old": …, "new": …}}` for each field that differs."""
        return db.call("SELECT eventic.diff(%s, %s, %s)", (self._id(), from_version, to_version))[0]

    async def adiff(self, from_version: int, to_version: int) -> dict[str, dict[str, Any]]:
        return (await db.acall("SELECT eventic.diff(%s, %s, %s)", (self._id(), from_version, to_version)))[0]

    # ── writing ─────────────────────────────────────────────────────────────────────────
    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or name not in type(self).model_fields or self.version < 0:
            return super().__setattr__(name, value)
        value_json = self._checked({name: value})
        row = db.call("SELECT eventic.set_field(%s, %s, %s, expected_version => %s)",
                      (self._id(), name, Jsonb(value_json[name]), self.version))
        self._apply(value_json, row[0])

    def set(self, **fields: Any) -> int:
        """Change several fields in one version (`eventic.set_fields`, stale-checked)."""
        patch = self._checked(fields)
        row = db.call("SELECT eventic.set_fields(%s, %s, expected_version => %s)",
                      (self._id(), Jsonb(patch), self.version))
        return self._apply(patch, row[0])

    async def aset(self, **fields: Any) -> int:
        """Async `set`: several fields in one version."""
        patch = self._checked(fields)
        row = await db.acall("SELECT eventic.set_fields(%s, %s, expected_version => %s)",
                             (self._id(), Jsonb(patch), self.version))
        return self._apply(patch, row[0])

    def _checked(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Validate the new values with the model (before anything is written); returns them
        as JSON."""
        for name in fields:
            if name in META_FIELDS or name == "properties":
                raise AttributeError(
                    f"{name} of a {self.__eventic_class__} cannot be assigned"
                    + (": use add_property/remove_property" if name == "properties" else ""))
            if name not in type(self).model_fields:
                raise AttributeError(f"{self.__eventic_class__} has no field {name!r}")
        # validate the whole model with the change applied (field and model validators run)
        candidate = self.model_dump()
        candidate.update(fields)
        checked = type(self).model_validate(candidate)
        return checked.model_dump(mode="json", include=set(fields))

    def _apply(self, patch_json: dict[str, Any], new_version: int) -> int:
        current = type(self).model_validate({**self.model_dump(), **patch_json})
        for name in patch_json:
            self.__dict__[name] = current.__dict__[name]
        self.__dict__["version"] = new_version
        return new_version

    def _id(self) -> uuid.UUID:
        if self.id is None or self.version < 0:
            raise EventicError(f"this {self.__eventic_class__} is not stored yet")
        return self.id

    # property bag
    def add_property(self, key: str, value: Any = True) -> int:
        row = db.call("SELECT eventic.add_property(%s, %s, %s)", (self._id(), key, _json(value)))
        self.properties[key] = to_jsonable_python(value)
        self.__dict__["version"] = row[0]
        return row[0]

    def remove_property(self, key: str) -> int:
        row = db.call("SELECT eventic.remove_property(%s, %s)", (self._id(), key))
        self.properties.pop(key, None)
        self.__dict__["version"] = row[0]
        return row[0]

    def list_properties(self) -> dict[str, Any]:
        return db.call("SELECT eventic.list_properties(%s)", (self._id(),))[0]

    def delete(self) -> int:
        """Append a tombstone; returns its version. Later reads of the id raise
        RecordNotFoundError; history and earlier versions stay readable."""
        row = db.call("SELECT eventic.delete(%s)", (self._id(),))
        self.__dict__["version"] = row[0]
        self._deleted = True
        return row[0]

    async def adelete(self) -> int:
        row = await db.acall("SELECT eventic.delete(%s)", (self._id(),))
        self.__dict__["version"] = row[0]
        self._deleted = True
        return row[0]

    def refresh(self) -> "Record":
        """Re-read the latest version into this object (after a StaleRecordError)."""
        fresh = type(self).hydrate(self._id())
        self.__dict__.update(fresh.__dict__)
        return self


def _uuid(value: uuid.UUID | str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


_HISTORY_COLUMNS = ("version", "version_id", "data", "changed_fields", "created_at", "created_by", "deleted")


def _dicts(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    return [dict(zip(_HISTORY_COLUMNS, r)) for r in rows]


__all__ = ["Record", "HistoryEntry", "CLASSES"]
