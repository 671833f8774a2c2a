"""The dashboard's lists at scale: 1,000,000 finished jobs in the archive and 100,000 workflows
(generated with INSERT ... SELECT generate_series, as a superuser writes a restore), every page
query EXPLAINed as the role that owns them (row-level security on): each reads an index, never
a sequential scan of the big tables, and runs in milliseconds; then the pages themselves."""

import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from dashboard_harness import start_dashboard
from selenium.webdriver.common.by import By

from eventic.dashboard import queues, records, workflows

SCALE_DB = "dash_scale"
BIG = {"finished_batches", "workflow_runs", "records"}

GENERATE = """
CREATE ROLE owner_role LOGIN;
CREATE EXTENSION eventic;
CREATE SCHEMA flows AUTHORIZATION owner_role;
CREATE FUNCTION flows.checkout(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
CREATE FUNCTION flows.refund(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
ALTER FUNCTION flows.checkout(jsonb) OWNER TO owner_role;
ALTER FUNCTION flows.refund(jsonb) OWNER TO owner_role;
SET ROLE owner_role;
SELECT eventic.create_queue('bulk', worker => false);
SELECT eventic.create_queue('rare', worker => false);
RESET ROLE;
-- 2,000 batches of 200 to 800 jobs (a wave, 1,000,000 jobs in all) of queue bulk over the last
-- 10 hours, and 20 batches of queue rare among them
INSERT INTO eventic.finished_batches (queue_name, finished_at, job_ids, fns, args, enqueued_by, enqueued_at, attempts)
SELECT CASE WHEN g % 100 = 0 THEN 'rare' ELSE 'bulk' END,
       now() - g * interval '18 seconds',
       ARRAY(SELECT generate_series(g * 1000, g * 1000 + n - 1)::bigint),
       array_fill('flows.checkout(jsonb)'::regprocedure, ARRAY[n]),
       array_fill('["x"]'::jsonb, ARRAY[n]),
       array_fill('owner_role'::regrole, ARRAY[n]),
       array_fill(now() - g * interval '18 seconds' - interval '1 second', ARRAY[n]),
       array_fill(1, ARRAY[n])
  FROM generate_series(1, 2000) g, LATERAL (SELECT 500 + round(300 * sin(g / 12.0))::int AS n) size;
-- 100,000 workflows: 1 in 1,000 failed, 1 in 100 is a refund
INSERT INTO eventic.workflow_runs (workflow_id, fn, input, status, error, queue_name, started_by, created_at, updated_at)
SELECT 'wf-' || g,
       CASE WHEN g % 100 = 0 THEN 'flows.refund(jsonb)' ELSE 'flows.checkout(jsonb)' END::regprocedure,
       jsonb_build_object('n', g),
       CASE WHEN g % 1000 = 0 THEN 'ERROR' ELSE 'SUCCESS' END,
       CASE WHEN g % 1000 = 0 THEN 'boom' END,
       'workflows', 'owner_role', now() - g * interval '100 ms', now() - g * interval '100 ms'
  FROM generate_series(1, 100000) g;
INSERT INTO eventic.workflow_records (workflow_id, position, name, kind, output)
SELECT 'wf-' || w, p, 'step' || p, 'step', to_jsonb(p) FROM generate_series(1, 2000) w, generate_series(0, 9) p;
ANALYZE eventic.finished_batches;
ANALYZE eventic.workflow_runs;
ANALYZE eventic.workflow_records;
"""


@pytest.fixture(scope="module")
def scale(dash_cluster):
    with dash_cluster.connect(dbname="postgres") as admin:
        admin.execute(f"CREATE DATABASE {SCALE_DB}")
    try:
        with dash_cluster.connect(dbname=SCALE_DB) as conn:
            started = time.monotonic()
            conn.execute(GENERATE)
            print(f"generated in {time.monotonic() - started:.1f} s")
            conn.execute("SELECT eventic.create('Item', '{\"n\": 1}')")
        yield dash_cluster
    finally:
        with dash_cluster.connect(dbname="postgres") as admin:
            admin.execute(f"DROP DATABASE {SCALE_DB} WITH (FORCE)")


def plan_of(conn, query, params):
    row = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + (
        query.as_string(conn) if hasattr(query, "as_string") else query), params).fetchone()[0]
    return row[0]


def nodes(plan):
    yield plan["Plan"] if "Plan" in plan else plan
    for child in (plan.get("Plan") or plan).get("Plans", []):
        yield from nodes(child)


def check(conn, name, query, params, index, limit_ms=250):
    plan = plan_of(conn, query, params)
    seen = list(nodes(plan))
    seq = [n["Relation Name"] for n in seen if n["Node Type"] == "Seq Scan" and n.get("Relation Name") in BIG]
    indexes = {n.get("Index Name") for n in seen}
    ms = plan["Execution Time"]
    print(f"{name}: {ms:.2f} ms, indexes {sorted(i for i in indexes if i)}")
    assert not seq, f"{name} scans {seq} sequentially:\n{json.dumps(plan, indent=1)[:3000]}"
    wanted = {index} if isinstance(index, str) else set(index)
    assert wanted & indexes, f"{name} does not use {wanted}: {sorted(i for i in indexes if i)}"
    assert ms < limit_ms, f"{name} took {ms:.1f} ms"
    return plan


def test_every_list_query_uses_an_index_at_scale(scale):
    with scale.connect(dbname=SCALE_DB) as conn:
        conn.execute("SET ROLE owner_role")  # row-level security applies, as for the dashboard
        newest = datetime.now(timezone.utc)
        mid = conn.execute("SELECT created_at, workflow_id FROM eventic.workflow_runs WHERE workflow_id = 'wf-50000'").fetchone()
        # workflow lists: all, by status, by function, and a page deep in each
        check(conn, "workflows newest", *workflows.list_query(None, None, None), "workflow_runs_by_time")
        check(conn, "workflows page 1000", *workflows.list_query(None, None, tuple(mid)), "workflow_runs_by_time")
        check(conn, "workflows ERROR", *workflows.list_query("ERROR", None, None), "workflow_runs_by_status")
        check(conn, "workflows ERROR older", *workflows.list_query("ERROR", None, tuple(mid)), "workflow_runs_by_status")
        refund = conn.execute("SELECT 'flows.refund(jsonb)'::regprocedure::oid").fetchone()[0]
        check(conn, "workflows refund", *workflows.list_query(None, refund, None), "workflow_runs_by_fn")
        check(conn, "workflows refund older", *workflows.list_query(None, refund, tuple(mid)), "workflow_runs_by_fn")
        check(conn, "workflow steps", *workflows.steps_query("wf-1500", 0), "workflow_records_pkey")
        # counts per status: the rare statuses by index, and no status reads more than the cap
        plan = plan_of(conn, *queues.STATUS_COUNTS)
        scans = [n for n in nodes(plan) if n.get("Relation Name") == "workflow_runs"]
        read = [n["Actual Rows"] + n.get("Rows Removed by Filter", 0) for n in scans]
        print(f"workflows by status: {plan['Execution Time']:.2f} ms, rows read per status {read}")
        assert len(scans) == 7 and max(read) <= 2 * (queues.STATUS_CAP + 1) and plan["Execution Time"] < 250
        assert sum(n["Node Type"].startswith(("Index", "Bitmap")) for n in scans) >= 5
        check(conn, "workflow run", "SELECT * FROM eventic.workflow_runs WHERE workflow_id = %s", ("wf-77",),
              "workflow_runs_pkey")
        # finished jobs of a busy queue and of a rare one, first page and deep
        # the windows a page reads (queues.finished_page): until one holds a page
        archive = ("finished_batches_by_queue", "finished_batches_by_time")
        for q in ("bulk", "rare"):
            for before in (None, (newest - timedelta(hours=5), 10**9)):
                for window in queues.WINDOWS:
                    query = queues.finished_query(q, before, window, newest)
                    check(conn, f"finished {q} {'older ' if before else ''}within {window}", *query, archive)
                    if len(conn.execute(*query).fetchall()) > queues.PAGE:
                        break
        check(conn, "queue done last minute", "SELECT * FROM eventic.queue_stats WHERE queue_name = 'bulk'", (),
              archive)
        # throughput through the per-job view (roles without SELECT on the batches): the last
        # hour's 100,000 jobs, one by one
        check(conn, "throughput per job", *queues.throughput_query(False), "finished_batches_by_time", limit_ms=3000)
        conn.execute("RESET ROLE")
        # throughput from the batches (roles with SELECT on the archive: its owner, superusers)
        check(conn, "throughput", *queues.throughput_query(True), "finished_batches_by_time")
        check(conn, "class records", *records.class_records_query("Item", None), "records_by_class")


@pytest.mark.parametrize("user, port", [("owner_role", 9), ("postgres", 7)])
def test_the_pages_answer_quickly_at_scale(scale, user, port, browser, output_dir):
    """As the owning role (the per-job archive view) and as a superuser (the batches)."""
    dash = start_dashboard(scale.dsn(dbname=SCALE_DB, user=user), scale.port + port)
    try:
        browser.get(dash.url + "/")
        assert browser.find_element(By.ID, "jobs-last-hour").text.isdigit()
        browser.save_screenshot(str(output_dir / f"overview-at-scale-{user}.png"))
        for path, expect in [("/", "10000+"), ("/workflows", "wf-1"), ("/workflows?status=ERROR", "wf-1000"),
                             ("/workflows?name=flows.refund", "wf-100"), ("/queues/rare?tab=finished", "checkout"),
                             ("/queues/bulk?tab=finished", "checkout"), ("/workflows/wf-1500", "step9")]:
            started = time.monotonic()
            r = httpx.get(dash.url + path, timeout=30)
            took = time.monotonic() - started
            print(f"as {user}: GET {path}: {r.status_code} in {took * 1000:.0f} ms")
            assert r.status_code == 200 and expect in r.text, path
            assert took < 5, f"{path} took {took:.1f} s"
            if 'id="older"' in r.text:
                older = r.text.split('id="older" href="?')[1].split('"')[0].replace("&amp;", "&")
                r = httpx.get(dash.url + path.split("?")[0] + "?" + older, timeout=30)
                assert r.status_code == 200 and expect.rstrip("0123456789") in r.text, older
    finally:
        dash.proc.terminate()
        dash.proc.wait(10)
