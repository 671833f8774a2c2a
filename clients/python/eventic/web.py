"""`Eventic.create_app()`: a FastAPI app with a REST resource per Record class.

For a class `Story` (path `/story`, the class's snake_case name):
`POST /story` (201, version 0), `GET /story/{id}?version=&as_of=`, `PATCH /story/{id}`
(`If-Match: <version>` → 412 when the record moved on; 422 when Pydantic or the class's JSON
Schema refuses), `DELETE /story/{id}`, `GET /story/{id}/history`,
`GET /story/{id}/diff?from=&to=`; and `GET /workflows/{id}`. Every response of a record
carries `ETag: "<version>"`."""


import contextlib
import datetime as dt
import uuid
import weakref
from typing import Any, AsyncIterator, Optional

import pydantic
from fastapi import APIRouter, FastAPI, Header, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from . import db
from .errors import RecordNotFoundError, SchemaViolationError, StaleRecordError
from .hooks import on_record_class
from .naming import snake_case
from .records import CLASSES, META_FIELDS, HistoryEntry, Record

_apps: "weakref.WeakSet[FastAPI]" = weakref.WeakSet()


class WorkflowInfo(pydantic.BaseModel):
    """A row of `eventic.workflows`."""
    workflow_id: str
    name: str | None
    status: str
    input: Any = None
    output: Any = None
    error: str | None = None
    queue_name: str | None = None
    parent_id: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


def create_app(name: str, db_url: str | None, **fastapi_kwargs: Any) -> FastAPI:
    from .core import Eventic
    Eventic.init(name, db_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        Eventic.launch()
        try:
            yield
        finally:
            Eventic.shutdown()
            await db.close_async_pool()

    fastapi_kwargs.setdefault("title", name)
    app = FastAPI(lifespan=lifespan, **fastapi_kwargs)
    app.state.eventic_classes = set()
    app.include_router(_workflow_router())
    for cls in list(CLASSES.values()):
        _mount(app, cls)
    _apps.add(app)
    return app


def _class_defined(cls: type) -> None:
    for app in list(_apps):
        _mount(app, cls)


on_record_class(_class_defined)


def _user_fields(cls: type[Record]) -> dict[str, Any]:
    return {n: f for n, f in cls.model_fields.items() if n not in META_FIELDS and n != "properties"}


def _input_models(cls: type[Record]) -> tuple[type[pydantic.BaseModel], type[pydantic.BaseModel]]:
    fields = _user_fields(cls)
    create = pydantic.create_model(f"{cls.__name__}Create", **{n: (f.annotation, f) for n, f in fields.items()})
    patch = pydantic.create_model(f"{cls.__name__}Patch",
                                  **{n: (Optional[f.annotation], None) for n, f in fields.items()})
    return create, patch


def _etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def _mount(app: FastAPI, cls: type[Record]) -> None:
    if cls in app.state.eventic_classes:
        return
    app.state.eventic_classes.add(cls)
    path = "/" + snake_case(cls.__eventic_class__)
    tag = cls.__eventic_class__
    Create, Patch = _input_models(cls)
    router = APIRouter(prefix=path, tags=[tag])

    def load(record_id: uuid.UUID, version: int | None = None, as_of: dt.datetime | None = None) -> Record:
        try:
            if as_of is not None:
                return cls.as_of(record_id, as_of)
            return cls.hydrate(record_id, version)
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc

    @router.post("", response_model=cls, status_code=201, summary=f"Create a {tag} (version 0)")
    def create(body: Create, response: Response) -> Any:  # type: ignore[valid-type]
        try:
            obj = cls(**body.model_dump())  # type: ignore[attr-defined]
        except SchemaViolationError as exc:
            raise HTTPException(422, {"message": str(exc), "detail": exc.detail}) from exc
        _etag(response, obj.version)
        return obj

    @router.get("/{record_id}", response_model=cls, summary=f"Read a {tag} (latest, ?version= or ?as_of=)")
    def read(record_id: uuid.UUID, response: Response, version: int | None = None,
             as_of: dt.datetime | None = None) -> Any:
        obj = load(record_id, version, as_of)
        _etag(response, obj.version)
        return obj

    @router.patch("/{record_id}", response_model=cls,
                  summary=f"Change fields of a {tag} (one new version; If-Match: <version>)",
                  responses={412: {"description": "the record is no longer at the If-Match version"},
                             422: {"description": "Pydantic or the class's JSON Schema refused the change"}})
    def patch(record_id: uuid.UUID, body: Patch, response: Response,  # type: ignore[valid-type]
              if_match: str | None = Header(default=None)) -> Any:
        obj = load(record_id)
        changes = body.model_dump(exclude_unset=True)  # type: ignore[attr-defined]
        if if_match is not None:
            try:
                expected = int(if_match.strip().removeprefix("W/").strip('"'))
            except ValueError as exc:
                raise HTTPException(400, "If-Match must be a record version, such as \"3\"") from exc
            if expected != obj.version:
                raise HTTPException(412, f"{tag} {record_id} is at version {obj.version}, not {expected}")
        try:
            if changes:
                obj.set(**changes)
        except StaleRecordError as exc:
            raise HTTPException(412, str(exc)) from exc
        except pydantic.ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc
        except SchemaViolationError as exc:
            raise HTTPException(422, {"message": str(exc), "detail": exc.detail}) from exc
        _etag(response, obj.version)
        return obj

    @router.delete("/{record_id}", summary=f"Delete a {tag} (a tombstone version; history stays)")
    def delete(record_id: uuid.UUID) -> dict[str, Any]:
        version = load(record_id).delete()
        return {"id": str(record_id), "version": version, "deleted": True}

    @router.get("/{record_id}/history", response_model=list[HistoryEntry], summary=f"Every version of a {tag}")
    def history(record_id: uuid.UUID) -> Any:
        try:
            return cls.model_construct(id=record_id, version=0).history()
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc

    @router.get("/{record_id}/diff", summary=f"What changed between two versions of a {tag}")
    def diff(record_id: uuid.UUID, from_: int = Query(alias="from"), to: int = Query()) -> dict[str, Any]:
        try:
            return cls.model_construct(id=record_id, version=0).diff(from_, to)
        except RecordNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc

    app.include_router(router)
    app.openapi_schema = None  # routes added after the schema was built show up


def _workflow_router() -> APIRouter:
    router = APIRouter(prefix="/workflows", tags=["workflows"])

    @router.get("/{workflow_id}", response_model=WorkflowInfo, summary="A workflow's status and output")
    def workflow(workflow_id: str) -> Any:
        rows = db.call("SELECT row_to_json(w)::jsonb FROM eventic.workflows w WHERE workflow_id = %s",
                       (workflow_id,), many=True)
        if not rows:
            return JSONResponse({"detail": f"no workflow {workflow_id}"}, status_code=404)
        return rows[0][0]

    return router
