"""The seed's FastAPI example (eventic/examples/demo.py, the seed's code with only the URL
line changed) and its quick start (`python -m eventic.examples.demo`)."""

import importlib
import subprocess
import sys
import os

import pytest
from fastapi.testclient import TestClient

from pyclient_harness import wait_until
from eventic import Eventic


@pytest.fixture()
def demo(db_url, monkeypatch):
    monkeypatch.setenv("DBOS_DATABASE_URL", db_url)
    module = sys.modules.get("eventic.examples.demo")
    module = importlib.reload(module) if module else importlib.import_module("eventic.examples.demo")
    yield module
    Eventic.close()


def test_the_seed_fastapi_example(demo, sql, capfd):
    with TestClient(demo.app) as client:
        answer = client.get("/")
        assert answer.status_code == 200
        sid = answer.json()["id"]
        # the draft and snapshot jobs run in the app's Python workers
        assert wait_until(lambda: client.get(f"/story/{sid}").json()["body"] == "Once upon a time …", timeout=60)
        assert wait_until(lambda: sql.execute(
            "SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'story_py'").fetchone() == (2,), timeout=60)
        history = client.get(f"/story/{sid}/history").json()
        assert [(h["version"], h["changed_fields"]) for h in history] == [
            (0, ["body", "properties", "title"]), (1, ["body"])]
        wid, = sql.execute("SELECT workflow_id FROM eventic.workflows WHERE name LIKE '%demo_flow'").fetchone()
        workflow = client.get(f"/workflows/{wid}").json()
        assert workflow["status"] == "SUCCESS" and workflow["output"] == {"id": sid}
        steps = sql.execute("SELECT name FROM eventic.workflow_steps WHERE workflow_id = %s ORDER BY position",
                            (wid,)).fetchall()
        assert [s[0].split(":")[-1] for s in steps] == ["create_story", "draft", "snapshot"]
    assert f"'id': UUID('{sid}')" in capfd.readouterr().out  # snapshot's pprint of model_dump()


def test_the_quick_start_demo_runs(db_url, sql):
    env = {**os.environ, "DBOS_DATABASE_URL": db_url}
    result = subprocess.run([sys.executable, "-m", "eventic.examples.demo"], env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert '"title": "The Hare and the Tortoise"' in result.stdout
    assert '"featured": true' in result.stdout
    sid, status = sql.execute(
        "SELECT output->>'id', status FROM eventic.workflows WHERE name LIKE '%demo_flow'").fetchone()
    assert status == "SUCCESS"
    assert sql.execute("SELECT max(version) FROM eventic.history(%s)", (sid,)).fetchone() == (4,)
