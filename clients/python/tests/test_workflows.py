"""Python durable workflows (eventic.workflows) against a real cluster: the seed's decorators,
steps recorded in the extension's tables (seen from SQL), a worker process killed with
SIGKILL mid-workflow and another taking over (every @transaction effect exactly once),
send/recv, durable sleep, events, cancel/resume/fork from Python and from SQL."""

import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest

from pyclient_harness import wait_until
from eventic import Eventic, Record
from eventic import workflows as wf

HERE = pathlib.Path(__file__).resolve().parent


class Story(Record):
    title: str | None = None
    body: str | None = None


@Eventic.transaction(name="t.create_story")
def create_story(title: str) -> uuid.UUID:
    return Story(title=title).id


@Eventic.transaction(name="t.draft")
def draft(sid: uuid.UUID, text: str) -> int:
    story = Story.hydrate(sid)
    story.body = text
    return story.version


CALLS: list[str] = []


@Eventic.step(name="t.outside")
def outside(x: int) -> int:
    CALLS.append(f"outside {x}")
    return x * 2


@Eventic.workflow(name="t.story_flow")
def story_flow(title: str) -> dict:
    sid = create_story(title)
    version = draft(sid, "Once upon a time")
    doubled = outside(21)
    return {"id": str(sid), "version": version, "doubled": doubled}


@Eventic.workflow(name="t.chat")
def chat(n: int) -> list:
    wf.set_event("ready", {"n": n})
    got = [wf.recv("go", 30) for _ in range(n)]
    return got


@Eventic.workflow(name="t.napper")
def napper(seconds: float) -> str:
    before = outside(1)
    wf.sleep(seconds)
    after = outside(2)
    return f"{before}-{after}"


@Eventic.step(name="t.fail")
def fail_step() -> None:
    raise ValueError("no luck")


@Eventic.workflow(name="t.catches")
def catches() -> str:
    try:
        fail_step()
    except wf.StepError as exc:
        return f"caught {exc}"
    return "not reached"


@Eventic.workflow(name="t.fails")
def fails() -> str:
    fail_step()
    return "not reached"


@pytest.fixture()
def runner(ev):
    r = wf.WorkflowRunner(Eventic.pool(), threads=2, lease=5.0, poll=0.1).start()
    yield r
    r.stop()


def steps_of(sql, workflow_id):
    return sql.execute("SELECT position, name, kind, output, error FROM eventic.workflow_steps "
                       "WHERE workflow_id = %s ORDER BY position", (workflow_id,)).fetchall()


def status_of(sql, workflow_id):
    return sql.execute("SELECT eventic.workflow_status(%s)", (workflow_id,)).fetchone()[0]


def test_seed_style_call_runs_durably_and_sql_sees_its_steps(ev, sql):
    CALLS.clear()
    result = story_flow("First")
    assert result["version"] == 1 and result["doubled"] == 42
    sid = uuid.UUID(result["id"])
    assert Story.hydrate(sid).body == "Once upon a time"
    (wid, name, status, output) = sql.execute(
        "SELECT workflow_id, name, status, output FROM eventic.workflows").fetchone()
    assert (name, status, output) == ("t.story_flow", "SUCCESS", result)
    steps = steps_of(sql, wid)
    assert [(p, n, k) for p, n, k, _, _ in steps] == [
        (0, "t.create_story", "transaction"), (1, "t.draft", "transaction"), (2, "t.outside", "step")]
    assert steps[0][3] == str(sid) and steps[2][3] == 42
    assert CALLS == ["outside 21"]
    # the worker never runs an external body: no job of it in any queue
    assert sql.execute("SELECT count(*) FROM eventic.queue_stats WHERE ready + scheduled + running > 0").fetchone()[0] == 0


def test_start_handle_and_runner(runner, sql):
    handle = wf.start(story_flow, "Second", workflow_id="story-2")
    assert handle.workflow_id == "story-2"
    assert handle.get_result(timeout=30)["version"] == 1
    assert handle.get_status() == "SUCCESS"
    # the same id again starts nothing
    assert wf.start(story_flow, "Again", workflow_id="story-2").get_result()["version"] == 1
    assert sql.execute("SELECT count(*) FROM eventic.records WHERE data->>'title' = 'Again'").fetchone()[0] == 0
    # and from SQL: wait_workflow returns the output
    assert sql.execute("SELECT eventic.wait_workflow('story-2')").fetchone()[0]["doubled"] == 42


def test_started_from_sql_runs_in_python(runner, sql):
    wid = sql.execute("""SELECT eventic.start_external_workflow('t.story_flow', '{"args": ["From SQL"]}')""").fetchone()[0]
    out = sql.execute("SELECT eventic.wait_workflow(%s, '30 seconds')", (wid,)).fetchone()[0]
    assert out["version"] == 1


def test_not_run_without_a_runner(ev, sql):
    handle = wf.start(story_flow, "Nobody")
    time.sleep(1.0)
    assert handle.get_status() == "ENQUEUED"
    assert steps_of(sql, handle.workflow_id) == []


def test_step_errors_are_recorded_and_raised(runner, sql):
    assert wf.start(catches).get_result(30).startswith("caught step 't.fail' failed: ValueError: no luck")
    handle = wf.start(fails)
    with pytest.raises(wf.WorkflowFailedError, match="no luck"):
        handle.get_result(30)
    assert status_of(sql, handle.workflow_id) == "ERROR"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no luck"):
        sql.execute("SELECT eventic.wait_workflow(%s)", (handle.workflow_id,))


def test_send_recv_and_events_from_python_and_sql(runner, sql):
    handle = wf.start(chat, 2)
    assert handle.get_event("ready", timeout=30) == {"n": 2}
    assert sql.execute("SELECT eventic.get_event(%s, 'ready')", (handle.workflow_id,)).fetchone()[0] == {"n": 2}
    assert wait_until(lambda: handle.get_status() == "WAITING", 30)
    handle.send("go", {"from": "python"})
    sql.execute("""SELECT eventic.send(%s, 'go', '{"from": "sql"}')""", (handle.workflow_id,))
    assert handle.get_result(30) == [{"from": "python"}, {"from": "sql"}]
    kinds = [k for _, _, k, _, _ in steps_of(sql, handle.workflow_id)]
    assert kinds == ["set_event", "recv", "recv"]


def test_recv_times_out_to_none(runner, sql):
    @Eventic.workflow(name="t.short_wait")
    def short_wait() -> list:
        return [wf.recv("never", 0.5)]
    assert wf.start(short_wait).get_result(30) == [None]


def test_durable_sleep(runner, sql):
    CALLS.clear()
    handle = wf.start(napper, 1.5)
    assert wait_until(lambda: handle.get_status() == "SLEEPING", 30)
    started = time.monotonic()
    assert handle.get_result(30) == "2-4"
    assert time.monotonic() - started < 10
    kinds = [(n, k) for _, n, k, _, _ in steps_of(sql, handle.workflow_id)]
    assert kinds == [("t.outside", "step"), ("sleep", "sleep"), ("t.outside", "step")]
    assert CALLS == ["outside 1", "outside 2"]  # the replay after the sleep did not run step 0 again


def test_cancel_and_resume_from_python_and_sql(runner, sql):
    handle = wf.start(chat, 1)
    assert wait_until(lambda: handle.get_status() == "WAITING", 30)
    sql.execute("SELECT eventic.cancel_workflow(%s)", (handle.workflow_id,))
    assert handle.get_status() == "CANCELLED"
    handle.send("go", "late")
    time.sleep(0.5)
    assert handle.get_status() == "CANCELLED"  # nothing ran it
    handle.resume()
    assert handle.get_result(30) == ["late"]

    other = wf.start(chat, 1)
    assert wait_until(lambda: other.get_status() == "WAITING", 30)
    other.cancel()
    assert status_of(sql, other.workflow_id) == "CANCELLED"
    sql.execute("SELECT eventic.resume_workflow(%s)", (other.workflow_id,))
    sql.execute("SELECT eventic.send(%s, 'go', '\"again\"')", (other.workflow_id,))
    assert other.get_result(30) == ["again"]


def test_fork_reruns_the_later_steps(runner, sql):
    CALLS.clear()
    first = wf.start(napper, 0)
    assert first.get_result(30) == "2-4"
    assert CALLS == ["outside 1", "outside 2"]
    forked = first.fork(2)
    assert forked.get_result(30) == "2-4"
    assert CALLS == ["outside 1", "outside 2", "outside 2"]
    (forked_sql,) = sql.execute("SELECT eventic.fork_workflow(%s, 0)", (first.workflow_id,)).fetchone()
    assert sql.execute("SELECT eventic.wait_workflow(%s, '30 seconds')", (forked_sql,)).fetchone()[0] == "2-4"
    assert CALLS[3:] == ["outside 1", "outside 2"]


def test_killed_worker_process_is_taken_over(db_url, sql):
    """SIGKILL a worker process mid-workflow; another finishes every workflow from its
    recorded steps, and each @transaction step's INSERT happened exactly once."""
    sql.execute("CREATE TABLE crash_effects (workflow text, n int)")
    count = 6
    ids = [sql.execute("SELECT eventic.start_external_workflow('crash.flow', %s)",
                       (psycopg.types.json.Jsonb({"args": [f"w{i}"]}),)).fetchone()[0] for i in range(count)]
    env = {**os.environ, "DBOS_DATABASE_URL": db_url, "EVENTIC_WORKFLOW_LEASE": "2",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "eventic", "worker", "--app", "wf_crash_app"]

    def recorded():
        return sql.execute("SELECT count(*) FROM eventic.workflow_steps WHERE workflow_id = ANY(%s)",
                           (ids,)).fetchone()[0]

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: recorded() >= 12, 60), "the first worker recorded no steps"
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    done_by_first = sql.execute("SELECT count(*) FROM eventic.workflows WHERE status = 'SUCCESS'").fetchone()[0]
    assert done_by_first < count, "the kill came too late to test anything"
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for wid in ids:
            out = sql.execute("SELECT eventic.wait_workflow(%s, '60 seconds')", (wid,)).fetchone()[0]
            assert out is not None and out["total"] == 45, wid
    finally:
        second.terminate()
        second.wait(20)
    rows = sql.execute("SELECT workflow, n, count(*) FROM crash_effects GROUP BY 1, 2").fetchall()
    assert len(rows) == count * 10
    assert all(c == 1 for _, _, c in rows), [r for r in rows if r[2] != 1]
    # every workflow's 20 steps recorded once, in order
    for wid in ids:
        steps = steps_of(sql, wid)
        assert [p for p, *_ in steps] == list(range(20))


@Eventic.transaction(name="t.count")
def count_effect(tag: str, n: int) -> int:
    with Eventic.connection() as conn:
        conn.execute("INSERT INTO effects VALUES (%s, %s)", (tag, n))
        if n == 2 and tag.startswith("boom"):
            raise RuntimeError("step 2 refuses")
    return n


@Eventic.workflow(name="t.group")
def group_flow(tag: str) -> list:
    done = []
    for n in range(4):
        try:
            done.append(count_effect(tag, n))
        except wf.StepError as exc:
            done.append(str(exc))
    return done


def test_failing_step_in_a_group_is_replayed_step_by_step(ev, sql):
    """Consecutive @transaction steps share a transaction; when one fails the group is rolled
    back and the body replayed with each step alone: every effect of a step that succeeded is
    there once, the failed step's not at all, and its error is recorded."""
    sql.execute("CREATE TABLE effects (tag text, n int)")
    assert group_flow("calm") == [0, 1, 2, 3]
    out = group_flow("boom")
    assert out[:2] == [0, 1] and "step 2 refuses" in out[2] and out[3] == 3
    rows = sql.execute("SELECT tag, n, count(*) FROM effects GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert rows == [("boom", 0, 1), ("boom", 1, 1), ("boom", 3, 1),
                    ("calm", 0, 1), ("calm", 1, 1), ("calm", 2, 1), ("calm", 3, 1)]
    (wid,) = sql.execute("SELECT workflow_id FROM eventic.workflows WHERE input->'args' = '[\"boom\"]'").fetchone()
    errors = [e for *_, e in steps_of(sql, wid)]
    assert errors[2].startswith("RuntimeError: step 2 refuses") and errors.count(None) == 3


def test_a_runner_that_lost_its_lease_commits_nothing(ev, sql):
    """Runner A's lease runs out and runner B claims the workflow: A's @transaction steps
    cannot commit (their record is refused in their transaction); B's run is the one that counts."""
    from eventic import _workflow_run as machinery
    sql.execute("CREATE TABLE effects (tag text, n int)")
    handle = wf.start(group_flow, "lease")
    pool = Eventic.pool()
    with pool.connection() as conn:
        (stale,) = machinery._claim(conn, 1, 0.2, handle.workflow_id)
    time.sleep(0.5)
    with pool.connection() as conn:
        (fresh,) = machinery._claim(conn, 1, 30, handle.workflow_id)
    assert fresh[3] == stale[3] + 1
    machinery._execute(pool, stale)                     # A: refused at its first commit
    assert sql.execute("SELECT count(*) FROM effects").fetchone()[0] == 0
    assert steps_of(sql, handle.workflow_id) == []
    machinery._execute(pool, fresh)                     # B
    assert handle.get_result(10) == [0, 1, 2, 3]
    assert sql.execute("SELECT count(*), count(DISTINCT n) FROM effects").fetchone() == (4, 4)


@Eventic.workflow(name="t.starter")
def starter() -> str:
    child = wf.start(napper, 0)
    wf.sleep(0.2)  # the body is replayed after this: the start is not done again
    return child.workflow_id


def test_start_in_a_body_is_a_recorded_step(runner, sql):
    first = wf.start(starter).get_result(30)
    assert wf.retrieve(first).get_result(30) == "2-4"
    assert sql.execute("SELECT count(*) FROM eventic.workflows WHERE name = 't.napper'").fetchone()[0] == 1


@Eventic.workflow(name="t.values")
def values() -> list:
    first = (wf.now().isoformat(), wf.random())
    wf.sleep(0.1)  # replayed after this: the same values come back
    return [first, (wf.now().isoformat(), wf.random())]


def test_now_and_random_are_recorded(runner, sql):
    (t1, r1), (t2, r2) = wf.start(values).get_result(30)
    assert 0 <= r1 < 1 and 0 <= r2 < 1 and t1 <= t2
    kinds = sql.execute("SELECT array_agg(kind ORDER BY position) FROM eventic.workflow_steps").fetchone()[0]
    assert kinds == ["now", "random", "sleep", "now", "random"]
    recorded = sql.execute("SELECT output FROM eventic.workflow_steps WHERE position = 1").fetchone()[0]
    assert recorded == r1
