"""The dashboard's web app: server-rendered pages (Jinja2), each with a live part that the page's
script fetches again every few seconds (the same URL with the header X-Eventic-Partial), and
POST actions (retry, pause/resume, cancel/resume/fork) behind a CSRF token and an Origin check,
refused with --read-only."""

import contextlib
import inspect
import logging
import pathlib
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from . import queues, records, workflows
from .db import Database, DbError
from .plot import throughput_svg
from .security import Csrf
from .templating import register_filters

HERE = pathlib.Path(__file__).resolve().parent
REFRESH_MS = 2000
log = logging.getLogger("eventic.dashboard")


def create_app(database_url: str, read_only: bool = False, db: Database | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """allowed_hosts: the Host headers served (others get 400): a dashboard on a loopback
    address answers only to loopback names, so a web page whose name was rebound to 127.0.0.1
    (DNS rebinding) cannot read it or take its token."""
    db = db or Database(database_url)
    csrf = Csrf()
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    register_filters(env)
    env.globals.update(read_only=read_only, refresh_ms=REFRESH_MS, statuses=workflows.STATUSES,
                       csrf_token=csrf.token)
    who: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        db.open()
        yield
        db.close()

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)

    def role() -> str:
        if "role" not in who:
            row = db.one("SELECT current_user AS who, current_database() AS db")
            who["role"], who["db"] = row["who"], row["db"]
        return who["role"]

    def render(request: Request, name: str, ctx: dict, status: int = 200) -> HTMLResponse:
        template = env.get_template(name)
        msg = request.query_params.get("msg")
        # only the messages this dashboard wrote (a link cannot make it say something else)
        ctx = {**ctx, "request": request, "msg": msg if csrf.verify(msg, request.query_params.get("sig")) else None}
        if request.headers.get("x-eventic-partial") and "live" in template.blocks:
            body = "".join(template.blocks["live"](template.new_context(ctx)))
        else:
            try:
                ctx.setdefault("role", role())
                ctx.setdefault("database", who.get("db"))
            except DbError:
                ctx.setdefault("role", "?")
            body = template.render(ctx)
        return HTMLResponse(body, status_code=status, headers=_HEADERS)

    def error(request: Request, e: DbError) -> HTMLResponse:
        return render(request, "error.html", {"error": e}, status=e.status)

    def page(name: str, fn):
        """A GET page: fn() gives the template's context; database errors become the error page."""
        def handler(request: Request, **kwargs):
            try:
                return render(request, name, fn(request, **kwargs))
            except DbError as e:
                return error(request, e)
        # FastAPI reads the path parameters (and their types) from the signature: fn's
        params = list(inspect.signature(fn).parameters.values())[1:]
        handler.__signature__ = inspect.Signature(
            [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)]
            + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
        return handler

    async def action(request: Request, fn, done: str) -> HTMLResponse | RedirectResponse:
        """A POST action: the checks, then fn(form) in a thread; back to `done` with a message."""
        form = await csrf.form(request)
        try:
            if read_only:
                raise DbError("this dashboard is read-only (started with --read-only): actions are refused",
                              "42501")
            csrf.check(request, form)
            result = await run_in_threadpool(fn, form)
        except DbError as e:
            return error(request, e)
        target, msg = result if isinstance(result, tuple) else (done, result)
        sep = "&" if "?" in target else "?"
        query = urlencode({"msg": msg, "sig": csrf.sign(msg)})
        return RedirectResponse(f"{target}{sep}{query}", status_code=303)

    # --- overview -------------------------------------------------------------------------
    def overview(request):
        data = queues.overview(db)
        data["plot"], data["jobs_last_hour"] = throughput_svg(data["throughput"], data["now"])
        return data

    app.get("/", response_class=HTMLResponse)(page("overview.html", overview))

    # --- queues ---------------------------------------------------------------------------
    def queue(request, name: str):
        tab = request.query_params.get("tab", "jobs")
        if tab not in ("jobs", "dead", "finished"):
            raise DbError(f'unknown tab "{tab}"', "22023", hint="jobs, dead or finished")
        data = queues.queue_page(db, name, tab, request.query_params.get("before"))
        return {**data, "tab": tab}

    app.get("/queues/{name}", response_class=HTMLResponse)(page("queue.html", queue))

    @app.post("/queues/{name}/retry")
    async def retry(request: Request, name: str):
        def run(form):
            job = _int(form.get("job_id"), "job_id")
            queues.retry(db, name, job)
            return f"job {job} will run again"
        return await action(request, run, f"/queues/{quote(name)}?tab=dead")

    @app.post("/queues/{name}/pause")
    async def pause(request: Request, name: str):
        def run(form):
            paused = form.get("paused") == "true"
            queues.set_paused(db, name, paused)
            return f"queue {name} {'paused' if paused else 'resumed'}"
        return await action(request, run, f"/queues/{quote(name)}")

    # --- workflows ------------------------------------------------------------------------
    def workflow_list(request):
        q = request.query_params
        status, name = q.get("status") or None, (q.get("name") or "").strip() or None
        data = workflows.list_page(db, status, name, q.get("before"))
        return {**data, "status": status, "name": name}

    app.get("/workflows", response_class=HTMLResponse)(page("workflows.html", workflow_list))

    def workflow(request, workflow_id: str):
        start = _int(request.query_params.get("from", "0"), "from")
        return workflows.workflow_page(db, workflow_id, start)

    app.get("/workflows/{workflow_id:path}", response_class=HTMLResponse)(page("workflow.html", workflow))

    @app.post("/workflow-actions/{verb}")
    async def workflow_action(request: Request, verb: str):
        def run(form):
            wid = form.get("workflow_id") or ""
            back = f"/workflows/{quote(wid, safe='')}"
            if verb == "cancel":
                workflows.cancel(db, wid)
                return back, f"workflow {wid} cancelled"
            if verb == "resume":
                workflows.resume(db, wid)
                return back, f"workflow {wid} resumed"
            if verb == "fork":
                step = _int(form.get("from_step"), "from_step")
                new = workflows.fork(db, wid, step)
                return f"/workflows/{quote(new, safe='')}", f"forked from {wid} at step {step}"
            raise DbError(f'unknown action "{verb}"', "22023")
        return await action(request, run, "/workflows")

    # --- records --------------------------------------------------------------------------
    def record_index(request):
        q = (request.query_params.get("q") or "").strip()
        return {"classes": records.classes(db), "q": q}

    @app.get("/records", response_class=HTMLResponse)
    def record_search(request: Request):
        q = (request.query_params.get("q") or "").strip()
        if q:
            try:
                records.parse_id(q)
                return RedirectResponse(f"/records/{quote(q)}", status_code=303)
            except DbError:
                return RedirectResponse(f"/classes/{quote(q, safe='')}", status_code=303)
        return page("records.html", record_index)(request)

    def class_page(request, name: str):
        return records.class_page(db, name, request.query_params.get("after"))

    app.get("/classes/{name:path}", response_class=HTMLResponse)(page("class.html", class_page))

    def record(request, record_id: str):
        upto = request.query_params.get("upto")
        return records.record_page(db, record_id, _int(upto, "upto") if upto else None)

    app.get("/records/{record_id}", response_class=HTMLResponse)(page("record.html", record))

    def version(request, record_id: str, version: int):
        return records.version_page(db, record_id, version)

    app.get("/records/{record_id}/versions/{version}", response_class=HTMLResponse)(
        page("version.html", version))

    # --- errors that never reach a handler (unknown URL, bad path parameter, a bug) -------
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return render(request, "error.html", {"error": DbError(str(exc.detail))}, status=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("dashboard error on %s", request.url.path)
        return render(request, "error.html", {"error": DbError(
            "the dashboard failed on this page (the server log has the details)")}, status=500)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return render(request, "error.html", {"error": DbError(f"bad request ({where})", "22023")},
                      status=400)

    return app


# no framing (the action buttons cannot be clickjacked), scripts only from /static
_HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                       "img-src 'self' data:; frame-ancestors 'none'",
            "Cache-Control": "no-store"}


def _int(text, name: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise DbError(f"{name} must be a whole number, not {text!r}", "22023") from None
