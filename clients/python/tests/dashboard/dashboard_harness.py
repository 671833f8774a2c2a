"""Harness of the dashboard's browser tests: a throwaway cluster (scripts/cluster, as tests/conftest.py)
with data in it, dashboards started as `python -m eventic dashboard` subprocesses, and headless
Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Environment: PG_BIN (PostgreSQL to run), EVENTIC_DASH_DIR (/tmp/eventic-dash), EVENTIC_DASH_PORT
(6200; the dashboards use the next ports), EVENTIC_DASH_OUTPUT (screenshots; default output/
next to this file)."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import urllib.request

import psycopg
import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[3]
DB = "dash"


def _repo_tests():
    """tests/conftest.py of the repository (wait_until, Cluster), loaded under its own name: it
    is not a conftest of these tests (its fixtures stay out of this session)."""
    spec = importlib.util.spec_from_file_location("eventic_repo_tests", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_repo = _repo_tests()
wait_until = _repo.wait_until


class Cluster(_repo.Cluster):
    """The repository's test cluster, defaulting to this suite's database."""

    def dsn(self, dbname: str = DB, user: str = "postgres") -> str:
        return super().dsn(dbname, user)

    def connect(self, dbname: str = DB, user: str = "postgres") -> psycopg.Connection:
        return super().connect(dbname=dbname, user=user)


# Data a person would look at. Role `app` owns everything; `viewer` is an ordinary role that
# started one workflow of its own and may read nothing else.
SETUP_AS_POSTGRES = """
CREATE ROLE app LOGIN;
CREATE ROLE viewer LOGIN;
CREATE SCHEMA app AUTHORIZATION app;
CREATE SCHEMA viewer AUTHORIZATION viewer;
CREATE EXTENSION eventic;
"""

SETUP_AS_APP = r"""
SET search_path = app;
CREATE TABLE app.mailboxes (address text PRIMARY KEY);
CREATE TABLE app.sent (address text, at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION app.send_mail(address text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM app.mailboxes m WHERE m.address = send_mail.address) THEN
        RAISE EXCEPTION 'mailbox % does not exist', address;
    END IF;
    INSERT INTO app.sent (address) VALUES (send_mail.address);
END $$;
CREATE FUNCTION app.fetch_order(n int) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('order', n, 'total', 42) $$;
CREATE FUNCTION app.charge(n int) RETURNS jsonb LANGUAGE sql AS $$ SELECT jsonb_build_object('charged', n) $$;
CREATE FUNCTION app.tick(i int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    IF i = 20 THEN PERFORM eventic.alter_queue('long', paused => true); END IF;
    RETURN i;
END $$;
CREATE FUNCTION app.checkout(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE o jsonb; i int;
BEGIN
    o := eventic.step('fetch_order', 'app.fetch_order(int)', jsonb_build_array(input -> 'order'));
    PERFORM eventic.set_event('stage', '"fetched"');
    PERFORM eventic.step('charge', 'app.charge(int)', jsonb_build_array(input -> 'order'));
    IF input ? 'wait' THEN
        PERFORM eventic.recv('go', '1 hour');
    END IF;
    IF input ? 'nap' THEN
        PERFORM eventic.sleep('1 hour');
    END IF;
    IF input ? 'fail' THEN
        RAISE EXCEPTION 'card declined for order %', input ->> 'order';
    END IF;
    IF input ? 'long' THEN
        -- RUNNING is committed when a job hands the workflow on to a next job (after at most
        -- 100 steps); tick 20 pauses the queue, so the next job waits and it stays RUNNING
        FOR i IN 1..110 LOOP
            PERFORM eventic.step('tick', 'app.tick(int)', jsonb_build_array(i));
        END LOOP;
    END IF;
    RETURN jsonb_build_object('done', input -> 'order');
END $$;

SELECT eventic.create_queue('mail');
SELECT eventic.create_queue('held');
SELECT eventic.create_queue('long');
SELECT eventic.alter_queue('held', paused => true);
INSERT INTO app.mailboxes VALUES ('ada@example.com');
SELECT eventic.enqueue('mail', 'app.send_mail(text)', '["ada@example.com"]');
SELECT eventic.enqueue('mail', 'app.send_mail(text)', '["bob@example.com"]', max_attempts => 1);
SELECT eventic.enqueue('mail', 'app.send_mail(text)', '["ada@example.com"]', run_at => now() + interval '1 day');

SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 1}', workflow_id => 'order-1-success');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 2, "fail": true}', workflow_id => 'order-2-error');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 3, "nap": true}', workflow_id => 'order-3-sleeping');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 4, "wait": true}', workflow_id => 'order-4-waiting');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 5, "nap": true}', workflow_id => 'order-5-cancelled');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 6}', workflow_id => 'order-6-enqueued', queue => 'held');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 7, "long": true}', workflow_id => 'order-7-running', queue => 'long');
SELECT eventic.start_workflow('app.checkout(jsonb)', '{"order": 8, "nap": true}', workflow_id => 'order-8-to-cancel');

SELECT eventic.register_class('Story', '{
  "type": "object",
  "properties": {"title": {"type": "string"}, "body": {"type": "string"},
                 "words": {"type": "integer", "minimum": 0}}}');
"""

SETUP_AS_VIEWER = """
CREATE FUNCTION viewer.hello(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '"hi"'::jsonb $$;
SELECT eventic.start_workflow('viewer.hello(jsonb)', '{}', workflow_id => 'viewer-own');
"""


def seed(cluster: Cluster) -> dict:
    with cluster.connect(dbname="postgres") as admin:
        admin.execute(f"CREATE DATABASE {DB}")
    with cluster.connect() as conn:
        conn.execute(SETUP_AS_POSTGRES)
    with cluster.connect(user="app") as conn:
        conn.execute(SETUP_AS_APP)
        story = conn.execute("""SELECT eventic.create('Story', '{"title": "The Hare"}')""").fetchone()[0]
        conn.execute("""SELECT eventic.set_field(%s, 'body', '"Once upon a time"')""", (story,))
        conn.execute("""SELECT eventic.set_fields(%s, '{"title": "The Hare and the Tortoise", "words": 4}')""",
                     (story,))
        conn.execute("SELECT eventic.add_property(%s, 'featured')", (story,))
    with cluster.connect(user="viewer") as conn:
        conn.execute(SETUP_AS_VIEWER)
    with cluster.connect(user="app") as conn:
        def status(wid):
            return conn.execute("SELECT eventic.workflow_status(%s)", (wid,)).fetchone()[0]
        expected = {"order-1-success": "SUCCESS", "order-2-error": "ERROR", "order-3-sleeping": "SLEEPING",
                    "order-4-waiting": "WAITING", "order-5-cancelled": "SLEEPING",
                    "order-7-running": "RUNNING", "order-8-to-cancel": "SLEEPING"}
        for wid, want in expected.items():
            assert wait_until(lambda: status(wid) == want, 60), (wid, status(wid))
        conn.execute("SELECT eventic.cancel_workflow('order-5-cancelled')")
        dead = lambda: conn.execute("SELECT dead FROM eventic.queue_stats WHERE queue_name = 'mail'").fetchone()[0]
        assert wait_until(lambda: dead() == 1, 30)
        assert wait_until(lambda: conn.execute("SELECT count(*) FROM app.sent").fetchone()[0] == 1, 30)
    return {"story": str(story)}


@pytest.fixture(scope="session")
def dash_cluster():
    directory = os.environ.get("EVENTIC_DASH_DIR", "/tmp/eventic-dash")
    port = int(os.environ.get("EVENTIC_DASH_PORT", "6200"))
    c = Cluster(directory, port)
    c.run("start", directory, str(port))
    try:
        c.data = seed(c)
        yield c
    finally:
        c.run("stop", directory)


class Dashboard:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc


def start_dashboard(dsn: str, port: int, *flags: str) -> Dashboard:
    proc = subprocess.Popen([sys.executable, "-m", "eventic", "dashboard", "--database-url", dsn,
                             "--port", str(port), *flags])
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return urllib.request.urlopen(url + "/static/dash.css", timeout=2).status == 200
        except OSError:
            return False
    assert wait_until(up, 30), "the dashboard did not start"
    return Dashboard(url, proc)


@pytest.fixture(scope="session")
def dashboards(dash_cluster):
    """The dashboard as app (read-write), as app with --read-only, and as viewer."""
    base = dash_cluster.port + 1
    started = {}
    try:
        started["app"] = start_dashboard(dash_cluster.dsn(user="app"), base)
        started["read_only"] = start_dashboard(dash_cluster.dsn(user="app"), base + 1, "--read-only")
        started["viewer"] = start_dashboard(dash_cluster.dsn(user="viewer"), base + 2)
        yield started
    finally:
        for d in started.values():
            d.proc.terminate()
            d.proc.wait(10)


@pytest.fixture(scope="session")
def output_dir():
    out = pathlib.Path(os.environ.get("EVENTIC_DASH_OUTPUT", HERE / "output"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--hide-scrollbars"):
        options.add_argument(arg)
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
