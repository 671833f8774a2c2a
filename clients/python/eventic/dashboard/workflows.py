"""Queries of the workflow pages. eventic.workflow_runs has the row-level security of the
eventic.workflows view (each role sees the workflows it started); the list reads the table so
its filters and page cursor match the indexes (by time, by status, by function)."""

from datetime import datetime

from .db import Database, DbError

PAGE = 50
STEPS_PAGE = 200
STATUSES = ("ENQUEUED", "RUNNING", "SLEEPING", "WAITING", "SUCCESS", "ERROR", "CANCELLED")
ACTIVE = ("ENQUEUED", "RUNNING", "SLEEPING", "WAITING")


def list_query(status: str | None, fn: int | None, before: tuple[datetime, str] | None) -> tuple:
    conds, params = [], []
    if status:
        conds.append("status = %s")
        params.append(status)
    if fn is not None:
        conds.append("fn = %s::oid")
        params.append(fn)
    if before:
        conds.append("(created_at, workflow_id) < (%s, %s)")
        params.extend(before)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    return (f"""SELECT workflow_id, fn::regproc::text AS name, status, error, queue_name,
                       started_by::text AS started_by, parent_id, created_at, updated_at
                  FROM eventic.workflow_runs {where}
                 ORDER BY created_at DESC, workflow_id DESC LIMIT %s""", (*params, PAGE + 1))


def resolve_name(db: Database, name: str) -> int:
    """A workflow's name is its function (fn(input jsonb)): 'checkout' or 'app.checkout'."""
    row = db.one("SELECT to_regprocedure(%s || '(jsonb)')::oid AS oid", (name,))
    if row is None or row["oid"] is None:
        raise DbError(f'no workflow function named "{name}" (a function {name}(jsonb))', "42704",
                      hint="Give the function name as in the Name column, e.g. checkout or app.checkout.")
    return row["oid"]


def list_page(db: Database, status: str | None, name: str | None, before: str | None) -> dict:
    if status and status not in STATUSES:
        raise DbError(f'unknown workflow status "{status}"', "22023",
                      hint="One of " + ", ".join(STATUSES) + ".")
    fn = resolve_name(db, name) if name else None
    cursor = None
    if before:
        at, _, wid = before.partition("_")
        try:
            cursor = (datetime.fromisoformat(at), wid)
        except ValueError:
            raise DbError(f"bad page cursor {before!r}", "22023") from None
    rows = db.all(*list_query(status, fn, cursor))
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    nxt = f"{rows[-1]['created_at'].isoformat()}_{rows[-1]['workflow_id']}" if more else None
    return {"workflows": rows, "next": nxt}


def steps_query(workflow_id: str, from_position: int) -> tuple:
    return ("""SELECT position, name, kind, output, error, attempts, waiting, created_at
                 FROM eventic.workflow_steps WHERE workflow_id = %s AND position >= %s
                ORDER BY position LIMIT %s""", (workflow_id, from_position, STEPS_PAGE + 1))


def workflow_page(db: Database, workflow_id: str, from_position: int) -> dict:
    run, steps, events, messages, prev = db.many([
        ("""SELECT workflow_id, fn::regproc::text AS name, status, input, output, error, queue_name,
                   started_by::text AS started_by, parent_id, deadline, created_at, updated_at,
                   now() AS now
              FROM eventic.workflow_runs WHERE workflow_id = %s""", (workflow_id,)),
        steps_query(workflow_id, from_position),
        ("SELECT key, value, set_at FROM eventic.workflow_events WHERE workflow_id = %s ORDER BY key",
         (workflow_id,)),
        ("""SELECT message_id, topic, message, sent_at FROM eventic.workflow_messages
             WHERE workflow_id = %s ORDER BY message_id LIMIT 100""", (workflow_id,)),
        # the step before this page: where the first step's duration starts
        ("""SELECT created_at FROM eventic.workflow_steps WHERE workflow_id = %s AND position = %s""",
         (workflow_id, from_position - 1)),
    ])
    if not run:
        raise DbError(f'workflow "{workflow_id}" does not exist (or was started by a role whose '
                      "workflows you may not see)", "P0002",
                      hint="The workflow list shows every workflow you may see.")
    run = run[0]
    more = len(steps) > STEPS_PAGE
    steps = steps[:STEPS_PAGE]
    start = prev[0]["created_at"] if prev else run["created_at"]
    end = steps[-1]["created_at"] if steps else start
    span = max((end - run["created_at"]).total_seconds(), 1e-6)
    previous = start
    for s in steps:
        s["duration"] = (s["created_at"] - previous).total_seconds()
        # the timeline bar: where the step started and how long it took, in % of the run so far
        s["bar_left"] = 100 * (previous - run["created_at"]).total_seconds() / span
        s["bar_width"] = max(100 * s["duration"] / span, 0.5)
        previous = s["created_at"]
    return {"run": run, "steps": steps, "events": events, "messages": messages,
            "next_position": steps[-1]["position"] + 1 if more else None,
            "cancellable": run["status"] in ACTIVE}


def cancel(db: Database, workflow_id: str) -> None:
    db.one("SELECT eventic.cancel_workflow(%s)", (workflow_id,))


def resume(db: Database, workflow_id: str) -> None:
    db.one("SELECT eventic.resume_workflow(%s)", (workflow_id,))


def fork(db: Database, workflow_id: str, from_step: int) -> str:
    return db.one("SELECT eventic.fork_workflow(%s, %s) AS id", (workflow_id, from_step))["id"]
