"""Queries of the overview and queue pages. Each `*_query` returns (sql, params) so the tests
can EXPLAIN exactly what a page runs. Lists are keyset-paginated on an index."""

from datetime import datetime, timedelta, timezone

from psycopg import sql

from .db import Database, DbError

PAGE = 50

STATS = """SELECT queue_name, ready, scheduled, running, dead, done_last_minute,
                  extract(epoch FROM oldest_ready_age) AS oldest_ready_s, paused, concurrency, worker
             FROM eventic.queue_stats ORDER BY queue_name"""


def queue_row(db: Database, name: str) -> dict:
    row = db.one("""SELECT queue_name, table_name, class_name, concurrency, paused, worker,
                           coalesce(owner::text, '(extension owner)') AS owner
                      FROM eventic.queues WHERE queue_name = %s""", (name,))
    if row is None:
        raise DbError(f'queue "{name}" does not exist', "42704",
                      hint="The overview lists every queue.")
    return row


def jobs_query(table: str, dead: bool, before: int | None) -> tuple:
    """Waiting/running jobs, or dead ones, newest first (primary key, backwards)."""
    cond = sql.SQL("dead_at IS NOT NULL" if dead else "dead_at IS NULL")
    if before is not None:
        cond = sql.SQL("{} AND job_id < %s").format(cond)
    query = sql.SQL("""SELECT job_id, fn::text AS fn, args, attempts, max_attempts, run_at, priority,
                              enqueued_by::text AS enqueued_by, enqueued_at, lease_until, dead_at, last_error,
                              lease_until >= now() AS running, run_at > now() AS scheduled
                         FROM eventic.{} WHERE {} ORDER BY job_id DESC LIMIT %s""").format(
        sql.Identifier(table), cond)
    return query, ((before,) if before is not None else ()) + (PAGE + 1,)


# eventic.finished_jobs is a security-barrier view over batches: an ORDER BY ... LIMIT on it
# cannot walk an index (the jobs come out of unnest), so a page reads a window of time that
# grows until it holds a page: each window is a range of the (queue_name, finished_at) index
WINDOWS = (timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=30),
           timedelta(hours=2), timedelta(hours=12), timedelta(days=2), None)


def finished_query(queue: str, before: tuple[datetime, int] | None, window: timedelta | None,
                   now: datetime | None = None) -> tuple:
    """One queue's finished jobs, newest first, finished within `window` before the cursor."""
    conds, params = ["queue_name = %s"], [queue]
    if before is not None:
        at, job = before
        conds.append("finished_at <= %s AND (finished_at < %s OR job_id < %s)")
        params += [at, at, job]
    if window is not None:
        conds.append("finished_at > %s")
        params.append((before[0] if before else now or datetime.now(timezone.utc)) - window)
    return (f"""SELECT job_id, fn::text AS fn, args, attempts, enqueued_by::text AS enqueued_by,
                       enqueued_at, finished_at
                  FROM eventic.finished_jobs WHERE {" AND ".join(conds)}
                 ORDER BY finished_at DESC, job_id DESC LIMIT %s""", (*params, PAGE + 1))


def finished_page(db: Database, queue: str, before: tuple[datetime, int] | None) -> list[dict]:
    now = db.one("SELECT now() AS now")["now"]
    for window in WINDOWS:
        rows = db.all(*finished_query(queue, before, window, now))
        if len(rows) > PAGE:
            return rows
    return rows


def throughput_query(batches: bool) -> tuple:
    """Jobs finished per minute over the last hour. The archive's rows are batches: with SELECT
    on eventic.finished_batches (its owner, superusers) one row per batch is read; other roles
    read the per-job view, which shows them only their jobs."""
    if batches:
        return ("""SELECT date_bin('1 minute', finished_at, 'epoch') AS minute,
                          sum(cardinality(job_ids))::bigint AS jobs
                     FROM eventic.finished_batches WHERE finished_at > now() - interval '1 hour'
                    GROUP BY 1 ORDER BY 1""", ())
    return ("""SELECT date_bin('1 minute', finished_at, 'epoch') AS minute, count(*) AS jobs
                 FROM eventic.finished_jobs WHERE finished_at > now() - interval '1 hour'
                GROUP BY 1 ORDER BY 1""", ())


# a count per status, capped (a page never counts 10 million finished workflows: more shows as
# "10000+"); one subquery per status, so each is planned with that status's statistics (the
# (status, created_at, workflow_id) index for the rare ones, at most 10,001 rows for any)
STATUS_CAP = 10000
_STATUSES = ("ENQUEUED", "RUNNING", "SLEEPING", "WAITING", "SUCCESS", "ERROR", "CANCELLED")
STATUS_COUNTS = (" UNION ALL ".join(
    f"""(SELECT '{s}' AS status, count(*) AS n FROM (SELECT FROM eventic.workflow_runs
          WHERE status = '{s}' LIMIT {STATUS_CAP + 1}) c)""" for s in _STATUSES), ())


def may_read_batches(db: Database) -> bool:
    row = db.one("SELECT has_table_privilege('eventic.finished_batches', 'SELECT') AS ok")
    return bool(row and row["ok"])


def overview(db: Database) -> dict:
    batches = may_read_batches(db)
    stats, plot, status, now = db.many([
        (STATS, ()),
        throughput_query(batches),
        STATUS_COUNTS,
        ("SELECT now() AS now, current_user AS who", ()),
    ])
    return {"queues": stats, "throughput": plot, "now": now[0]["now"],
            "workflows": {r["status"]: r["n"] if r["n"] <= STATUS_CAP else f"{STATUS_CAP}+" for r in status}}


def queue_page(db: Database, name: str, tab: str, before: str | None) -> dict:
    queue = queue_row(db, name)
    if tab == "finished":
        cursor = None
        if before:
            at, _, job = before.rpartition("_")
            try:
                cursor = (datetime.fromisoformat(at), int(job))
            except ValueError:
                raise DbError(f"bad page cursor {before!r}", "22023") from None
        rows = finished_page(db, name, cursor)
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        next_cursor = f"{rows[-1]['finished_at'].isoformat()}_{rows[-1]['job_id']}" if more else None
    else:
        cursor = None
        if before:
            try:
                cursor = int(before)
            except ValueError:
                raise DbError(f"bad page cursor {before!r}", "22023") from None
        rows = db.all(*jobs_query(queue["table_name"], tab == "dead", cursor))
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        next_cursor = str(rows[-1]["job_id"]) if more else None
    stats = db.one("SELECT * FROM eventic.queue_stats WHERE queue_name = %s", (name,))
    return {"queue": queue, "stats": stats, "jobs": rows, "next": next_cursor}


def retry(db: Database, name: str, job_id: int) -> None:
    db.one("SELECT eventic.retry_job(%s, %s)", (name, job_id))


def set_paused(db: Database, name: str, paused: bool) -> None:
    db.one("SELECT eventic.alter_queue(%s, paused => %s)", (name, paused))
