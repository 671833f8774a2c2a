"""Records: the seed's minimal script, versions, stale writes, validation, the property bag."""

import datetime as dt
import time

import pydantic
import pytest

from pyclient_harness import run_script
from eventic import (Eventic, ExtensionMissingError, Record, RecordNotFoundError, SchemaViolationError,
                     StaleRecordError)


class Todo(Record):
    text: str
    done: bool = False


class StoryDraft(Record):
    title: str | None = None
    words: int = pydantic.Field(default=0, ge=0)


MINIMAL_SCRIPT = '''
import os, uuid
from eventic import Eventic, Record

class Todo(Record):
    text: str

# 1️⃣  One‑time init (connects to Postgres & injects RecordStore)
Eventic.init(name="todo‑svc", database_url=os.getenv("DBOS_DATABASE_URL"))

# 2️⃣  Start DBOS worker threads
Eventic.launch()  # mandatory in scripts

# 3️⃣  Use your record like any Pydantic model
item = Todo(text="Learn Eventic")
print(item.version)      # 0
item.text = "Ship v1"    # copy‑on‑write ➜ version 1 row inserted
print(item.version)      # 1
print(item.id)
'''


def test_the_seed_minimal_script_runs_unchanged(tmp_path, db_url, sql):
    script = tmp_path / "minimal.py"
    script.write_text(MINIMAL_SCRIPT)
    result = run_script(script, db_url)
    assert result.returncode == 0, result.stderr
    version0, version1, record_id = result.stdout.split()
    assert (version0, version1) == ("0", "1")
    rows = sql.execute("SELECT version, data->>'text' FROM eventic.history(%s)", (record_id,)).fetchall()
    assert rows == [(0, "Learn Eventic"), (1, "Ship v1")]
    # the class was registered with the model's JSON Schema and its typed view
    schema, view = sql.execute(
        "SELECT json_schema, view_name FROM eventic.classes WHERE class_name = 'Todo'").fetchone()
    assert schema["properties"]["text"]["type"] == "string" and schema["required"] == ["text"]
    assert sql.execute("SELECT text FROM public.todo WHERE id = %s", (record_id,)).fetchone() == ("Ship v1",)


def test_init_names_create_extension_when_it_is_missing(cluster):
    with pytest.raises(ExtensionMissingError, match="CREATE EXTENSION eventic"):
        Eventic.init("x", cluster.url("postgres"))


def test_versions_history_diff_as_of(ev, sql):
    item = Todo(text="Learn Eventic")
    assert item.version == 0
    created = sql.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.01)
    item.text = "Ship v1"
    item.done = True
    assert item.version == 2
    item.text = "Ship v1"  # same value: nothing written
    assert item.version == 2
    assert item.set(text="Ship v2", done=False) == 3  # one version for both fields
    assert [(h.version, h.changed_fields) for h in item.history()] == [
        (0, ["done", "properties", "text"]), (1, ["text"]), (2, ["done"]), (3, ["done", "text"])]
    assert item.diff(0, 3) == {"text": {"old": "Learn Eventic", "new": "Ship v2"}}
    assert Todo.hydrate(item.id, 1).text == "Ship v1"
    assert Todo.hydrate(str(item.id)).model_dump() == item.model_dump()
    assert Todo.as_of(item.id, created).version == 0
    assert Todo.as_of(item.id, dt.datetime.now(dt.timezone.utc)).version == 3
    with pytest.raises(RecordNotFoundError):
        Todo.as_of(item.id, created - dt.timedelta(days=1))
    with pytest.raises(RecordNotFoundError, match="not a StoryDraft"):
        StoryDraft.hydrate(item.id)


def test_a_stale_object_raises_instead_of_overwriting(ev, sql):
    item = Todo(text="a")
    other = Todo.hydrate(item.id)
    other.text = "b"  # version 1 by another writer
    with pytest.raises(StaleRecordError, match="expected version 0") as caught:
        item.text = "c"
    assert caught.value.sqlstate == "40001"
    assert item.text == "a" and item.version == 0  # the object is unchanged
    with pytest.raises(StaleRecordError):
        item.set(text="c", done=True)
    assert sql.execute("SELECT max(version) FROM eventic.history(%s)", (item.id,)).fetchone() == (1,)
    item.refresh()
    item.text = "c"
    assert item.version == 2
    assert Todo.hydrate(item.id).text == "c"


def test_pydantic_validates_before_the_write(ev, sql):
    story = StoryDraft(title="x")
    with pytest.raises(pydantic.ValidationError):
        story.words = -1
    with pytest.raises(pydantic.ValidationError):
        StoryDraft(words="many")
    with pytest.raises(AttributeError):
        story.version = 7
    assert story.version == 0 and story.words == 0
    assert sql.execute("SELECT count(*) FROM eventic.records WHERE class_type = 'StoryDraft'").fetchone() == (1,)


def test_the_server_schema_check_becomes_a_schema_violation_with_its_detail(ev, sql):
    story = StoryDraft(title="x")
    # another client tightens the class's schema on the server: titles are at most 3 characters
    sql.execute("""SELECT eventic.register_class('StoryDraft', '{"type": "object", "properties":
                   {"title": {"type": "string", "maxLength": 3}}}')""")
    with pytest.raises(SchemaViolationError) as caught:
        story.title = "much too long"
    assert caught.value.sqlstate == "23514"
    assert "maxLength" in caught.value.detail and "/title" in caught.value.detail
    assert story.version == 0 and story.title == "x"


def test_the_property_bag_and_delete(ev):
    item = Todo(text="p")
    assert item.add_property("featured") == 1
    assert item.add_property("score", 7) == 2
    assert item.remove_property("score") == 3
    assert item.list_properties() == {"featured": True}
    assert Todo.hydrate(item.id).properties == {"featured": True}
    assert item.delete() == 4
    with pytest.raises(RecordNotFoundError, match="deleted"):
        Todo.hydrate(item.id)
    assert Todo.hydrate(item.id, 3).properties == {"featured": True}
    assert item.history()[-1].deleted


def test_bound_connection_commits_and_rolls_back_with_your_transaction(ev, db_url):
    import psycopg
    with psycopg.connect(db_url) as conn:
        with pytest.raises(RuntimeError), Eventic.bind(conn), conn.transaction():
            doomed = Todo(text="rolled back")
            raise RuntimeError("abort")
        with pytest.raises(RecordNotFoundError):
            Todo.hydrate(doomed.id)
        with Eventic.bind(conn), conn.transaction():
            kept = Todo(text="kept")
    assert Todo.hydrate(kept.id).text == "kept"
