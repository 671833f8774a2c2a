"""Queries of the record pages: classes, a class's records, a record's history with the diff of
each version, any version in full. eventic.records has row-level security: a role reads the
versions of the classes it may read (README "Security")."""

import json
import uuid

from .db import Database, DbError

PAGE = 50
HISTORY_PAGE = 20
META = ("id", "version", "class_type")


def classes(db: Database) -> list[dict]:
    return db.all("""SELECT class_name, queue_name, owner::text AS owner,
                            CASE WHEN view_name IS NOT NULL THEN format('%%I.%%I', view_schema, view_name) END AS view,
                            json_schema IS NOT NULL AS has_schema, tracked_table::text AS tracked_table
                       FROM eventic.classes ORDER BY class_name LIMIT 500""")


def class_records_query(class_name: str, after: uuid.UUID | None) -> tuple:
    """A class's live records by id: eventic.latest over the records_by_class index."""
    if after is None:
        return ("""SELECT id, version, updated_at, updated_by FROM eventic.latest
                    WHERE class_type = %s ORDER BY id LIMIT %s""", (class_name, PAGE + 1))
    return ("""SELECT id, version, updated_at, updated_by FROM eventic.latest
                WHERE class_type = %s AND id > %s ORDER BY id LIMIT %s""", (class_name, after, PAGE + 1))


def class_page(db: Database, class_name: str, after: str | None) -> dict:
    cls = db.one("""SELECT class_name, queue_name, owner::text AS owner, json_schema,
                           CASE WHEN view_name IS NOT NULL THEN format('%%I.%%I', view_schema, view_name) END AS view,
                           tracked_table::text AS tracked_table, created_at, updated_at
                      FROM eventic.classes WHERE class_name = %s""", (class_name,))
    if cls is None:
        raise DbError(f'class "{class_name}" does not exist', "42704",
                      hint="The records page lists every registered class.")
    rows = db.all(*class_records_query(class_name, parse_id(after) if after else None))
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    schema = json.dumps(cls["json_schema"], indent=2) if cls["json_schema"] is not None else None
    return {"cls": cls, "schema": schema, "records": rows,
            "next": str(rows[-1]["id"]) if more else None}


def parse_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text.strip())
    except ValueError:
        raise DbError(f'"{text}" is not a record id (a UUID)', "22P02",
                      hint="Search a record by its id, or a class by its name.") from None


def history_query(record_id: uuid.UUID, upto: int | None) -> tuple:
    """A page of versions, newest first, plus the one before the page (to diff the oldest):
    a range of the primary key (id, version)."""
    if upto is None:
        return ("""SELECT version, data, created_at, created_by, deleted, class_type
                     FROM eventic.records WHERE id = %s ORDER BY version DESC LIMIT %s""",
                (record_id, HISTORY_PAGE + 1))
    return ("""SELECT version, data, created_at, created_by, deleted, class_type
                 FROM eventic.records WHERE id = %s AND version <= %s ORDER BY version DESC LIMIT %s""",
            (record_id, upto, HISTORY_PAGE + 1))


def diff(old: dict | None, new: dict | None) -> list[dict]:
    """Top-level fields that differ, as eventic.diff reports them (a missing field is null)."""
    old, new = old or {}, new or {}
    out = []
    for key in sorted(set(old) | set(new)):
        if key in META or old.get(key) == new.get(key) and (key in old) == (key in new):
            continue
        kind = "added" if key not in old else "removed" if key not in new else "changed"
        out.append({"field": key, "kind": kind, "old": pretty(old.get(key)), "new": pretty(new.get(key))})
    return out


def pretty(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def record_page(db: Database, id_text: str, upto: int | None) -> dict:
    record_id = parse_id(id_text)
    # LIMIT page + 1: the row after the page is what the page's oldest version is diffed with
    rows = db.all(*history_query(record_id, upto))
    if not rows:
        raise DbError(f"record {record_id} does not exist (or its class is one you may not read)",
                      "P0002", hint="Search by id or pick a class on the records page.")
    versions = []
    for i, row in enumerate(rows[:HISTORY_PAGE]):
        prev = rows[i + 1] if i + 1 < len(rows) else None
        entry = dict(row)
        if row["deleted"]:
            entry["diff"], entry["note"] = [], "deleted (tombstone)"
        elif row["version"] == 0:
            entry["diff"], entry["note"] = diff(None, row["data"]), "created"
        elif prev is None:  # (prune keeps version 0: only a superuser's direct writes get here)
            entry["diff"], entry["note"] = None, "its earlier versions are gone"
        elif prev["version"] != row["version"] - 1:
            entry["diff"], entry["note"] = None, f"versions {prev['version'] + 1}–{row['version'] - 1} were pruned"
        else:
            entry["diff"], entry["note"] = diff(None if prev["deleted"] else prev["data"], row["data"]), None
        versions.append(entry)
    head = rows[0]
    nxt = rows[HISTORY_PAGE]["version"] if len(rows) > HISTORY_PAGE else None
    return {"id": record_id, "class_type": head["class_type"], "versions": versions, "next": nxt,
            "latest": head["version"] if upto is None else None}


def version_page(db: Database, id_text: str, version: int) -> dict:
    record_id = parse_id(id_text)
    doc, prev, last = db.many([
        ("SELECT eventic.hydrate(%s, %s) AS doc", (record_id, version)),
        ("""SELECT data, deleted FROM eventic.records WHERE id = %s AND version = %s""",
         (record_id, version - 1)),
        ("SELECT version FROM eventic.records WHERE id = %s ORDER BY version DESC LIMIT 1", (record_id,)),
    ])
    document = doc[0]["doc"]
    before = prev[0]["data"] if prev and not prev[0]["deleted"] else None
    changed = {d["field"] for d in diff(before, document)} if version > 0 else set()
    fields = [{"key": k, "value": pretty(v), "changed": k in changed} for k, v in document.items()]
    return {"id": record_id, "version": version, "fields": fields, "class_type": document.get("class_type"),
            "latest": last[0]["version"]}
