"""Upgrades and dumps (issue 12): a database created at the previous release and updated with
ALTER EXTENSION eventic UPDATE has the same schema as a fresh install and keeps working, and a
pg_dump/pg_restore round trip keeps every record, class, job, archived job and workflow.

The previous release's install script is tests/fixtures/eventic--0.1.0.sql (exactly as 0.1.0
shipped); the tests copy it into the extension directory when it is not there (or differs), and
copy the working tree's upgrade script sql/eventic--0.1.0--<version>.sql over the installed one
(as `cargo pgrx install` does), so they test the scripts of this tree with the installed build.

TestUpdateFrom010: a database at 0.1.0 gets classes (JSON Schema, view, subscriber), records
with history, a tracked table, finished, ready (paused queue), scheduled and dead jobs and two
sleeping workflows (one with a message waiting), then ALTER EXTENSION eventic UPDATE: every row
is still there, the schema equals a fresh install with the same classes and queues (a catalog
fingerprint, and pg_dump --schema-only), and records, views, the tracked table, the subscriber,
jobs, the retry of the dead job and both workflows go on.

The fingerprint (extension members are not in a plain `pg_dump --schema-only`) lists every
object of the extension and every object in a non-system schema, by name, with its full
definition (functions: pg_get_functiondef, so volatility, parallel, security, SET, body or C
symbol; tables: columns in order with types, defaults, identity, compression, constraints,
indexes, triggers, policies, RLS, options; views: definition and options; sequences; types;
comments; owners; ACLs; whether it is a member of the extension) and the extension's
pg_extension_config_dump registrations.

TestDumpRestore: the same data at the current version, pg_dump -Fc, pg_restore into a new
database: the same rows (archive included), and everything goes on there, the workflows that
were asleep at dump time included. test_restore_into_another_cluster_keeps_who_owns_what: the
dump of an ordinary role's data restored on a second cluster, where that role has another oid.

Also a tool for writing the upgrade script (scripts/schema-diff runs it on a throwaway cluster):

    .venv/bin/python tests/test_upgrade.py schema-diff --host DIR --port PORT [--sql] [--bare]

installs 0.1.0 + ALTER EXTENSION UPDATE in one database and the current version fresh in
another (both with the same classes, views, queues and tracked table unless --bare), prints
the difference and exits 1 when there is one; --sql adds statements for the functions that differ.
"""

import argparse
import difflib
import filecmp
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg
import psycopg.sql
import pytest

import conftest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PG_BIN = pathlib.Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
OLD_VERSION = "0.1.0"
FIXTURE = ROOT / "tests" / "fixtures" / f"eventic--{OLD_VERSION}.sql"


def current_version() -> str:
    text = (ROOT / "Cargo.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


NEW_VERSION = current_version()
# 0.1.0 -> 0.2.0 -> ... -> NEW_VERSION: Postgres chains them; the last one is the one being written
UPGRADE_SCRIPTS = sorted((ROOT / "sql").glob("eventic--*--*.sql"),
                         key=lambda p: [int(x) for x in re.findall(r"\d+", p.name.split("--")[2])])
UPGRADE_SCRIPT = UPGRADE_SCRIPTS[-1]


# polling with this file's defaults
wait_until = functools.partial(conftest.wait_until, timeout=60.0, interval=0.2)


# --------------------------------------------------------------------------------------------
# the installed scripts


def extension_dir() -> pathlib.Path:
    sharedir = subprocess.run([str(PG_BIN / "pg_config"), "--sharedir"], check=True,
                              capture_output=True, text=True).stdout.strip()
    return pathlib.Path(sharedir) / "extension"


def prepare_scripts() -> list:
    """Puts the 0.1.0 install script and this tree's upgrade script into the extension
    directory; returns what it did. Raises when the installed build is not the current version."""
    ext = extension_dir()
    control = (ext / "eventic.control").read_text() if (ext / "eventic.control").exists() else ""
    default = re.search(r"default_version\s*=\s*'([^']*)'", control)
    problems = []
    if not default or default.group(1) != NEW_VERSION:
        problems.append(f"{ext}/eventic.control says default_version "
                        f"{default.group(1) if default else '(none)'}, this tree is {NEW_VERSION}")
    if not (ext / f"eventic--{NEW_VERSION}.sql").exists():
        problems.append(f"{ext}/eventic--{NEW_VERSION}.sql is missing")
    if problems:
        raise RuntimeError("eventic " + NEW_VERSION + " is not installed (run `cargo pgrx install`"
                           " or scripts/test): " + "; ".join(problems))
    done = []
    for source in (FIXTURE, *UPGRADE_SCRIPTS):
        target = ext / source.name
        if not target.exists() or not filecmp.cmp(source, target, shallow=False):
            if os.access(ext, os.W_OK):
                shutil.copyfile(source, target)
                os.chmod(target, 0o644)
            else:  # scripts/test run by a sudo user, as lib.sh's as_root does
                subprocess.run(["sudo", "install", "-m", "644", str(source), str(target)], check=True)
            done.append(f"copied {source.relative_to(ROOT)} to {target}")
    return done


# --------------------------------------------------------------------------------------------
# the schema fingerprint

SYSTEM_SCHEMAS = """n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    AND n.nspname NOT LIKE 'pg\\_temp\\_%%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%%'"""

MEMBER = """EXISTS (SELECT FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                     WHERE d.classid = '{cls}'::regclass AND d.objid = {oid}
                       AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                       AND e.extname = 'eventic')"""


def _acl(value):
    return "{" + ",".join(sorted(value)) + "}" if value is not None else "(default)"


def schema_fingerprint(conn) -> dict:
    """{object: description}: every object of eventic and of the non-system schemas, by name."""
    fp = {}

    def q(sql, *args):
        return conn.execute(sql, args).fetchall()

    ext = q("""SELECT e.extversion, e.extrelocatable, n.nspname, pg_get_userbyid(e.extowner),
                      ARRAY(SELECT format('%%s  where %%L', c::regclass, coalesce(w, ''))
                              FROM unnest(e.extconfig, e.extcondition) AS u(c, w) ORDER BY 1)
                 FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'eventic'""")
    if ext:
        version, relocatable, schema, owner, config = ext[0]
        fp["extension eventic"] = "\n".join(
            [f"version {version}", f"relocatable {relocatable}", f"schema {schema}", f"owner {owner}"]
            + [f"pg_extension_config_dump: {c}" for c in config])

    for name, owner, acl, comment, member in q(f"""
            SELECT n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text[],
                   obj_description(n.oid, 'pg_namespace'),
                   {MEMBER.format(cls='pg_namespace', oid='n.oid')}
              FROM pg_namespace n WHERE {SYSTEM_SCHEMAS}"""):
        fp[f"schema {name}"] = "\n".join([f"owner {owner}", f"acl {_acl(acl)}",
                                          f"comment {comment!r}", f"member of eventic: {member}"])

    kinds = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
             "S": "sequence", "f": "foreign table", "c": "composite type"}
    for (oid, schema, name, kind, owner, acl, options, rls, force_rls, replident, persistence,
         comment, member) in q(f"""
            SELECT c.oid, n.nspname, c.relname, c.relkind::text, pg_get_userbyid(c.relowner),
                   c.relacl::text[], c.reloptions, c.relrowsecurity, c.relforcerowsecurity,
                   c.relreplident::text, c.relpersistence::text, obj_description(c.oid, 'pg_class'),
                   {MEMBER.format(cls='pg_class', oid='c.oid')}
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE {SYSTEM_SCHEMAS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')"""):
        lines = [f"owner {owner}", f"acl {_acl(acl)}", f"options {sorted(options or [])}",
                 f"comment {comment!r}", f"member of eventic: {member}"]
        if kind in "rp":
            lines += [f"row level security {rls}, forced {force_rls}", f"replica identity {replident}",
                      f"persistence {persistence}"]
        columns = q("""
            SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(ad.adbin, ad.adrelid), a.attidentity::text, a.attgenerated::text,
                   CASE WHEN a.attcollation <> t.typcollation THEN a.attcollation::regcollation::text END,
                   a.attcompression::text, a.attstorage::text,
                   -- this server stamps every column with a pg_attver option of its own (a
                   -- counter that differs between databases): not part of the schema
                   ARRAY(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\\_attver=%%' ORDER BY o),
                   a.attacl::text[],
                   col_description(a.attrelid, a.attnum)
              FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
              LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""", oid)
        if kind != "S":
            lines.append("columns in order: " + ", ".join(c[0] for c in columns))
            for (col, typ, notnull, default, identity, generated, collation, compression, storage,
                 col_options, col_acl, col_comment) in columns:
                desc = [typ]
                if notnull:
                    desc.append("NOT NULL")
                if default is not None and not generated:
                    desc.append(f"DEFAULT {default}")
                if generated:
                    desc.append(f"GENERATED ALWAYS AS ({default}) STORED")
                if identity:
                    desc.append({"a": "GENERATED ALWAYS AS IDENTITY", "d": "GENERATED BY DEFAULT AS IDENTITY"}[identity])
                if collation:
                    desc.append(f"COLLATE {collation}")
                if compression:
                    desc.append(f"COMPRESSION {compression}")
                desc.append(f"storage {storage}")
                if col_options:
                    desc.append(f"options {col_options}")
                if col_acl:
                    desc.append(f"acl {_acl(col_acl)}")
                if col_comment is not None:
                    desc.append(f"comment {col_comment!r}")
                lines.append(f"column {col}: " + " ".join(desc))
        for conname, condef, concomment in q("""
                SELECT conname, pg_get_constraintdef(oid), obj_description(oid, 'pg_constraint')
                  FROM pg_constraint WHERE conrelid = %s ORDER BY conname""", oid):
            lines.append(f"constraint {conname}: {condef}" + (f" comment {concomment!r}" if concomment else ""))
        for indexdef, clustered, icomment in q("""
                SELECT pg_get_indexdef(i.indexrelid), i.indisclustered, obj_description(i.indexrelid, 'pg_class')
                  FROM pg_index i WHERE i.indrelid = %s ORDER BY 1""", oid):
            lines.append(f"index: {indexdef}" + (" CLUSTERED" if clustered else "")
                         + (f" comment {icomment!r}" if icomment else ""))
        for trigdef, enabled, tcomment in q("""
                SELECT pg_get_triggerdef(oid), tgenabled::text, obj_description(oid, 'pg_trigger')
                  FROM pg_trigger WHERE tgrelid = %s AND NOT tgisinternal ORDER BY tgname""", oid):
            lines.append(f"trigger: {trigdef}" + ("" if enabled == "O" else f" (enabled: {enabled})")
                         + (f" comment {tcomment!r}" if tcomment else ""))
        for polname, cmd, permissive, roles, qual, check in q("""
                SELECT p.polname, p.polcmd::text, p.polpermissive,
                       ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END
                               FROM unnest(p.polroles) r ORDER BY 1),
                       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
                  FROM pg_policy p WHERE p.polrelid = %s ORDER BY p.polname""", oid):
            lines.append(f"policy {polname}: cmd {cmd} {'permissive' if permissive else 'restrictive'}"
                         f" to {roles} using ({qual}) with check ({check})")
        for rulename, ruledef in q("""
                SELECT rulename, pg_get_ruledef(oid) FROM pg_rewrite
                 WHERE ev_class = %s AND rulename <> '_RETURN' ORDER BY 1""", oid):
            lines.append(f"rule {rulename}: {ruledef}")
        if kind in "vm":
            (viewdef,) = q("SELECT pg_get_viewdef(%s::oid)", oid)[0]
            lines.append("definition:")
            lines += ["    " + line for line in viewdef.splitlines()]
        if kind == "S":
            for row in q("""
                    SELECT format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                           s.seqcache, s.seqcycle,
                           (SELECT format('%%s.%%s (%%s)', d.refobjid::regclass, a.attname, d.deptype)
                              FROM pg_depend d JOIN pg_attribute a
                                ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                             WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                               AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
                      FROM pg_sequence s WHERE s.seqrelid = %s""", oid):
                lines.append("sequence {} start {} increment {} min {} max {} cache {} cycle {} owned by {}".format(*row))
        fp[f"{kinds[kind]} {schema}.{name}"] = "\n".join(lines)

    for schema, name, args, kind, definition, owner, acl, comment, member in q(f"""
            SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), p.prokind::text,
                   CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END,
                   pg_get_userbyid(p.proowner), p.proacl::text[], obj_description(p.oid, 'pg_proc'),
                   {MEMBER.format(cls='pg_proc', oid='p.oid')}
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {SYSTEM_SCHEMAS}"""):
        label = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window function"}[kind]
        fp[f"{label} {schema}.{name}({args})"] = "\n".join(
            (definition or "").rstrip().splitlines()
            + [f"owner {owner}", f"acl {_acl(acl)}", f"comment {comment!r}", f"member of eventic: {member}"])

    for schema, name, typtype, definition, owner, acl, comment, member in q(f"""
            SELECT n.nspname, t.typname, t.typtype::text,
                   CASE t.typtype
                     WHEN 'e' THEN array_to_string(ARRAY(SELECT quote_literal(enumlabel) FROM pg_enum
                                                          WHERE enumtypid = t.oid ORDER BY enumsortorder), ', ')
                     WHEN 'd' THEN format_type(t.typbasetype, t.typtypmod)
                          || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                          || coalesce(' DEFAULT ' || t.typdefault, '')
                          || coalesce(' ' || (SELECT string_agg(pg_get_constraintdef(c.oid), ' ' ORDER BY c.conname)
                                                FROM pg_constraint c WHERE c.contypid = t.oid), '')
                     ELSE format('input %%s output %%s length %%s', t.typinput, t.typoutput, t.typlen) END,
                   pg_get_userbyid(t.typowner), t.typacl::text[], obj_description(t.oid, 'pg_type'),
                   {MEMBER.format(cls='pg_type', oid='t.oid')}
              FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
             WHERE {SYSTEM_SCHEMAS} AND t.typrelid = 0
               AND NOT (t.typelem <> 0 AND t.typsubscript = 'array_subscript_handler'::regproc)"""):
        fp[f"type {schema}.{name}"] = "\n".join(
            [f"kind {typtype}: {definition}", f"owner {owner}", f"acl {_acl(acl)}", f"comment {comment!r}",
             f"member of eventic: {member}"])

    # members of any other kind (operators, casts, event triggers, ...)
    for (desc,) in q("""
            SELECT pg_describe_object(d.classid, d.objid, d.objsubid)
              FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
             WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'eventic'
               AND d.classid NOT IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass,
                                     'pg_namespace'::regclass)"""):
        fp[f"other member {desc}"] = "member of eventic: True"
    for (name, event, fn, enabled) in q("""
            SELECT evtname, evtevent, evtfoid::regprocedure::text, evtenabled::text FROM pg_event_trigger"""):
        fp[f"event trigger {name}"] = f"on {event} execute {fn} enabled {enabled}"
    return fp


def fingerprint_diff(upgraded: dict, fresh: dict, upgraded_label="0.1.0 + upgrade",
                     fresh_label=f"fresh {NEW_VERSION}") -> str:
    """A readable difference: objects only on one side (with their definition) and, for
    objects on both, a unified diff of their descriptions."""
    out = []
    for key in sorted(set(upgraded) | set(fresh)):
        if key not in fresh:
            out.append(f"== only in {upgraded_label} (drop it in the upgrade script): {key}")
            out += ["     " + line for line in upgraded[key].splitlines()]
        elif key not in upgraded:
            out.append(f"== missing in {upgraded_label} (the upgrade script must create it): {key}")
            out += ["     " + line for line in fresh[key].splitlines()]
        elif upgraded[key] != fresh[key]:
            out.append(f"== differs: {key}")
            out += ["   " + line for line in difflib.unified_diff(
                upgraded[key].splitlines(), fresh[key].splitlines(),
                fromfile=upgraded_label, tofile=fresh_label, lineterm="", n=2)]
    return "\n".join(out)


def suggested_sql(fresh_conn, upgraded: dict, fresh: dict) -> str:
    """Statements for the upgrade script, for the functions that differ: each missing or changed
    function as the fresh install has it (pg_get_functiondef: the body exactly, a C function's
    symbol as MODULE_PATHNAME), with its comment and PUBLIC's EXECUTE; DROP for functions the
    fresh install does not have. Other objects are left to the reader of the diff."""
    out = []
    rows = fresh_conn.execute("""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid),
               obj_description(p.oid, 'pg_proc'), p.oid::regprocedure::text,
               p.proacl IS NULL OR EXISTS (SELECT FROM aclexplode(p.proacl) a
                                            WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE')
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'eventic' AND p.prokind <> 'a' ORDER BY 2, 3""", ()).fetchall()
    for schema, name, args, definition, comment, signature, public_execute in rows:
        key = f"function {schema}.{name}({args})"
        if key in upgraded and upgraded[key] == fresh.get(key):
            continue
        definition = re.sub(r"AS '\$libdir/eventic', \$function\$(\w+)\$function\$",
                            r"AS 'MODULE_PATHNAME', '\1'", definition.rstrip())
        out.append(f"-- {'changed' if key in upgraded else 'new'}: {signature}"
                   + (" (if CREATE OR REPLACE refuses a changed result or argument name: DROP it first,"
                      " with what depends on it)" if key in upgraded else ""))
        out.append(definition + ";")
        if comment is not None:
            out.append(f"COMMENT ON FUNCTION {signature} IS " + psycopg.sql.Literal(comment).as_string(fresh_conn) + ";")
        if not public_execute:
            out.append(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;")
        out.append("")
    for key in sorted(set(upgraded) - set(fresh)):
        if key.startswith("function eventic."):
            out.append(f"DROP FUNCTION IF EXISTS {key[len('function '):]};")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# what both databases get (the objects eventic creates outside the extension: queue tables,
# class views, the tracked table's trigger), and the data only the old one gets

STRUCTURE = [
    "CREATE TABLE effects (n int NOT NULL, who name NOT NULL DEFAULT current_user)",
    "CREATE FUNCTION effect(n int) RETURNS void LANGUAGE sql AS $$ INSERT INTO effects (n) VALUES (n) $$",
    "CREATE TABLE switch (ok boolean NOT NULL)",
    "INSERT INTO switch VALUES (false)",
    """CREATE FUNCTION flaky(n int) RETURNS void LANGUAGE plpgsql AS $$ BEGIN
       IF NOT (SELECT ok FROM switch) THEN RAISE EXCEPTION 'not yet (%)', n; END IF;
       INSERT INTO effects (n) VALUES (n); END $$""",
    "CREATE TABLE events (event jsonb NOT NULL)",
    "CREATE FUNCTION on_story(event jsonb) RETURNS void LANGUAGE sql AS $$ INSERT INTO events VALUES (event) $$",
    """CREATE FUNCTION napper(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN
       PERFORM eventic.step('before', 'effect(int)', jsonb_build_array((input->>'n')::int));
       PERFORM eventic.sleep((input->>'sleep')::interval);
       PERFORM eventic.step('after', 'effect(int)', jsonb_build_array((input->>'n')::int + 1));
       RETURN '"rested"'; END $$""",
    """CREATE FUNCTION listener(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
       DECLARE first jsonb; second jsonb; BEGIN
       PERFORM eventic.sleep((input->>'sleep')::interval);
       first := eventic.recv('go', '60 seconds');
       second := eventic.recv('go', '60 seconds');
       RETURN jsonb_build_object('first', first, 'second', second); END $$""",
    "CREATE FUNCTION quick(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$",
    """SELECT eventic.register_class('Story', '{"type": "object", "properties": {
         "title": {"type": "string"}, "words": {"type": "integer", "minimum": 0}},
         "required": ["title"]}', view_schema => 'public')""",
    "SELECT eventic.subscribe('Story', 'on_story(jsonb)')",
    "SELECT eventic.register_class('Note')",
    "CREATE TABLE orders (id uuid PRIMARY KEY, status text NOT NULL, total numeric)",
    "SELECT eventic.track('public.orders')",
    "SELECT eventic.create_queue('mail')",
    "SELECT eventic.create_queue('held')",
    "SELECT eventic.alter_queue('held', paused => true)",
    "SELECT eventic.create_queue('flaky')",
    # creates the workflows queue
    "SELECT eventic.start_workflow('quick(jsonb)', '{\"q\": 1}', 'quick')",
]


def create_structure(conn):
    for statement in STRUCTURE:
        conn.execute(statement)


def fill(conn, sleep="20 seconds"):
    """Records with history, tracked rows, finished/ready/scheduled/dead jobs, a sleeping
    workflow and one sleeping with a message waiting for it. Returns what the checks need."""
    ids = {}
    ids["hare"] = conn.execute(
        "SELECT eventic.create('Story', '{\"title\": \"The Hare\", \"words\": 2}')").fetchone()[0]
    conn.execute("SELECT eventic.set_field(%s, 'words', '5')", (ids["hare"],))
    conn.execute("SELECT eventic.set_fields(%s, '{\"title\": \"The Hare and the Tortoise\", \"words\": 6}')",
                 (ids["hare"],))
    conn.execute("SELECT eventic.add_property(%s, 'featured')", (ids["hare"],))
    ids["gone"] = conn.execute("SELECT eventic.create('Story', '{\"title\": \"Gone\"}')").fetchone()[0]
    conn.execute("SELECT eventic.delete(%s)", (ids["gone"],))
    ids["view_row"] = conn.execute(
        "INSERT INTO public.story (title, words) VALUES ('Through the view', 3) RETURNING id").fetchone()[0]
    ids["note"] = conn.execute("SELECT eventic.create('Note', '{\"text\": \"unclassified\"}')").fetchone()[0]
    conn.execute("INSERT INTO orders VALUES ('00000000-0000-4000-8000-000000000001', 'new', 10),"
                 " ('00000000-0000-4000-8000-000000000002', 'new', 20)")
    conn.execute("UPDATE orders SET status = 'paid' WHERE id = '00000000-0000-4000-8000-000000000001'")
    ids["order"] = "00000000-0000-4000-8000-000000000001"
    # a finished job (in the archive)
    conn.execute("SELECT eventic.enqueue('mail', 'effect(int)', '[1]')")
    # ready jobs, held by a paused queue
    ids["held"] = [conn.execute("SELECT eventic.enqueue('held', 'effect(int)', %s)",
                                (json.dumps([n]),)).fetchone()[0] for n in (11, 12, 13)]
    # and one that 0.1.0's enqueue accepted but 0.2.0's refuses: run_at => '-infinity'
    conn.execute("INSERT INTO eventic.queue_held (fn, args, run_at, enqueued_by)"
                 " VALUES ('effect(int)', '[14]', '-infinity', 'postgres'::regrole)")
    # a scheduled job
    ids["scheduled"] = conn.execute(
        "SELECT eventic.enqueue('mail', 'effect(int)', '[2]', run_at => now() + %s::interval)",
        (sleep,)).fetchone()[0]
    # a dead job
    ids["dead"] = conn.execute(
        "SELECT eventic.enqueue('flaky', 'flaky(int)', '[3]', max_attempts => 1)").fetchone()[0]
    # sleeping workflows: one plain, one with a message sent while it sleeps
    conn.execute("SELECT eventic.start_workflow('napper(jsonb)', %s, 'napper')",
                 (json.dumps({"n": 20, "sleep": sleep}),))
    conn.execute("SELECT eventic.start_workflow('listener(jsonb)', %s, 'listener')",
                 (json.dumps({"sleep": sleep}),))
    conn.execute("SELECT eventic.send('listener', 'go', '{\"n\": 1}')")
    # wait for the worker: the job archived, the dead job dead, both workflows asleep
    states = {}

    def settled():
        states["finished"] = conn.execute(
            "SELECT count(*) FROM eventic.finished_jobs WHERE queue_name = 'mail'").fetchone()[0]
        states["dead"] = conn.execute(
            "SELECT dead_at IS NOT NULL FROM eventic.queue_flaky WHERE job_id = %s", (ids["dead"],)).fetchone()[0]
        states["workflows"] = dict(conn.execute(
            "SELECT workflow_id, status FROM eventic.workflows").fetchall())
        states["events"] = conn.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM eventic.records"
            " WHERE class_type = 'Story')").fetchone()
        return (states["finished"] >= 1 and states["dead"]
                and states["workflows"].get("napper") == "SLEEPING"
                and states["workflows"].get("listener") == "SLEEPING"
                and states["workflows"].get("quick") == "SUCCESS"
                and states["events"][0] == states["events"][1])
    assert wait_until(settled, timeout=15), f"the worker did not get the data into shape: {states}"
    return ids


# what must survive an upgrade or a dump: every row of eventic's tables, the queue tables,
# the archive and the user tables (to_jsonb shows regclass/regprocedure/regrole by name)
def data_snapshot(conn) -> dict:
    tables = ["eventic.records", "eventic.classes", "eventic.queues", "eventic.finished_jobs",
              "eventic.workflow_runs", "eventic.workflow_records", "eventic.workflow_messages",
              "eventic.workflow_events", "public.orders", "public.effects", "public.events",
              "public.switch"]
    tables += [f"eventic.{t}" for (t,) in conn.execute(
        "SELECT table_name FROM eventic.queues ORDER BY 1").fetchall()]
    snapshot = {}
    for table in tables:
        # roles and functions kept as oids before 0.2.0 (regrole/regprocedure since): compared
        # by name, whichever type the column has (a dangling oid shows as a number)
        extra = ""
        for column, kind, is_array in conn.execute(
                "SELECT attname, CASE WHEN attname IN ('subscribers') THEN 'regprocedure' ELSE 'regrole' END,"
                "       attndims > 0 OR typcategory = 'A'"
                "  FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                "   AND attname IN ('enqueued_by', 'started_by', 'subscriber_roles', 'subscribers')",
                (table,)).fetchall():
            cast = kind + ("[]" if is_array else "")
            extra += f" || jsonb_build_object('{column}', to_jsonb(t.{column}::{cast}))"
        rows = conn.execute(f"SELECT to_jsonb(t){extra} FROM {table} t").fetchall()
        snapshot[table] = sorted(json.dumps(r, sort_keys=True) for (r,) in rows)
    return snapshot


def snapshot_diff(before: dict, after: dict, only_old_columns=False) -> str:
    out = []
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table), after.get(table)
        if old is None or new is None:
            out.append(f"{table}: {'missing after' if new is None else 'new'}")
            continue
        if only_old_columns and old:
            keys = set(json.loads(old[0]))
            new = sorted(json.dumps({k: v for k, v in json.loads(r).items() if k in keys}, sort_keys=True)
                         for r in new)
        if old != new:
            out.append(f"{table}: {len(old)} rows before, {len(new)} after")
            lines = list(difflib.unified_diff(old, new, "before", "after", lineterm="", n=0))
            out += ["   " + line for line in lines[:24]]
            if len(lines) > 24:
                out.append(f"   ... {len(lines) - 24} more lines")
    return "\n".join(out)


def new_database(admin, prefix):
    name = prefix + os.urandom(3).hex()
    admin.execute(f"CREATE DATABASE {name}")
    return name


def drop_database(cluster, name):
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --------------------------------------------------------------------------------------------
# 1. ALTER EXTENSION eventic UPDATE from 0.1.0


@pytest.fixture(scope="class")
def upgraded(cluster):
    """Database A: 0.1.0, filled, then updated; database B: the current version, fresh, with
    the same classes, queues and tracked table."""
    try:
        notes = prepare_scripts()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with cluster.connect() as admin:
        a = new_database(admin, "upg_old_")
        b = new_database(admin, "upg_new_")
    try:
        with cluster.connect(dbname=a) as conn:
            try:
                conn.execute(f"CREATE EXTENSION eventic VERSION '{OLD_VERSION}'")
            except psycopg.errors.UndefinedFunction as exc:
                # every 0.1.0 database runs the new library until it is updated
                pytest.fail(f"the installed library lacks a C symbol of {OLD_VERSION} ({exc}): databases at"
                            f" {OLD_VERSION} break when the new build is installed, before ALTER EXTENSION UPDATE;"
                            " keep the old #[pg_extern] symbols")
            create_structure(conn)
            ids = fill(conn)
            before = data_snapshot(conn)
            waiting = dict(conn.execute("SELECT workflow_id, status FROM eventic.workflows").fetchall())
            assert waiting["napper"] == "SLEEPING" and waiting["listener"] == "SLEEPING", (
                f"the workflows woke before the upgrade (the test's timing): {waiting}")
            update_error = None
            try:
                conn.execute("ALTER EXTENSION eventic UPDATE")
            except psycopg.Error as exc:
                update_error = f"{exc.sqlstate}: {exc}"
            (version,) = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'eventic'").fetchone()
            after = data_snapshot(conn) if update_error is None else None
        with cluster.connect(dbname=b) as conn:
            conn.execute("CREATE EXTENSION eventic")
            create_structure(conn)
        yield dict(cluster=cluster, a=a, b=b, ids=ids, before=before, after=after, version=version,
                   update_error=update_error, notes=notes)
    finally:
        drop_database(cluster, a)
        drop_database(cluster, b)


def require_updated(upgraded):
    assert upgraded["update_error"] is None, f"ALTER EXTENSION eventic UPDATE failed: {upgraded['update_error']}"
    assert upgraded["version"] == NEW_VERSION


class TestUpdateFrom010:
    """One 0.1.0 database, filled and updated (its databases are dropped when the class ends:
    the workers of a cluster serve a limited number of databases)."""

    def test_update_reaches_the_current_version_and_keeps_every_row(self, upgraded):
        require_updated(upgraded)
        diff = snapshot_diff(upgraded["before"], upgraded["after"], only_old_columns=True)
        assert not diff, "rows changed by ALTER EXTENSION eventic UPDATE:\n" + diff

    def test_updated_schema_equals_a_fresh_install(self, upgraded):
        require_updated(upgraded)
        cluster = upgraded["cluster"]
        with cluster.connect(dbname=upgraded["a"]) as conn:
            old = schema_fingerprint(conn)
        with cluster.connect(dbname=upgraded["b"]) as conn:
            new = schema_fingerprint(conn)
        diff = fingerprint_diff(old, new)
        assert not diff, ("the schema after ALTER EXTENSION eventic UPDATE differs from a fresh install"
                          f" (re-run scripts/schema-diff while editing {UPGRADE_SCRIPT.name}):\n" + diff)

    def test_updated_pg_dump_schema_equals_a_fresh_install(self, upgraded):
        """What pg_dump --schema-only shows (the objects that are not members of the extension:
        queue tables, class views, the tracked table's trigger) is the same text on both sides."""
        require_updated(upgraded)
        cluster = upgraded["cluster"]
        dumps = []
        for db in (upgraded["a"], upgraded["b"]):
            code, output = pg_tool("pg_dump", "-h", cluster.directory, "-p", str(cluster.port), "-U", "postgres",
                                   "--schema-only", db)
            assert code == 0, output
            # (\restrict and \unrestrict carry a random key per dump)
            dumps.append([line for line in output.splitlines()
                          if not line.startswith(("-- Dumped", "\\restrict ", "\\unrestrict "))])
        diff = "\n".join(difflib.unified_diff(dumps[0], dumps[1], "0.1.0 + upgrade", f"fresh {NEW_VERSION}",
                                              lineterm="", n=2))
        assert not diff, "pg_dump --schema-only differs:\n" + diff

    def test_updated_records_classes_and_tracked_table_work(self, upgraded):
        require_updated(upgraded)
        ids = upgraded["ids"]
        with upgraded["cluster"].connect(dbname=upgraded["a"]) as conn:
            hare = conn.execute("SELECT eventic.hydrate(%s)", (ids["hare"],)).fetchone()[0]
            assert hare["title"] == "The Hare and the Tortoise" and hare["version"] == 3
            assert hare["properties"] == {"featured": True}
            assert conn.execute("SELECT eventic.hydrate(%s, 0)", (ids["hare"],)).fetchone()[0]["title"] == "The Hare"
            history = conn.execute("SELECT version, changed_fields FROM eventic.history(%s)", (ids["hare"],)).fetchall()
            assert [v for v, _ in history] == [0, 1, 2, 3] and history[1][1] == ["words"]
            assert conn.execute("SELECT eventic.diff(%s, 0, 1)", (ids["hare"],)).fetchone()[0] == {
                "words": {"old": 2, "new": 5}}
            with pytest.raises(psycopg.errors.NoDataFound):
                conn.execute("SELECT eventic.hydrate(%s)", (ids["gone"],))
            # a new version of an old record, validated against the class's schema
            assert conn.execute("SELECT eventic.set_field(%s, 'words', '7')", (ids["hare"],)).fetchone()[0] == 4
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("SELECT eventic.set_field(%s, 'words', '-1')", (ids["hare"],))
            assert conn.execute("UPDATE public.story SET words = 4 WHERE id = %s RETURNING version",
                                (ids["view_row"],)).fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM eventic.latest WHERE class_type = 'Story'").fetchone()[0] == 2
            # the subscriber got the new versions
            assert wait_until(lambda: conn.execute(
                "SELECT count(*) FROM events WHERE event->>'id' = %s AND (event->>'version')::int = 4",
                (str(ids["hare"]),)).fetchone()[0] == 1, timeout=30), "the subscriber missed a version after the upgrade"
            # the tracked table's UPDATE still versions
            conn.execute("UPDATE orders SET status = 'shipped' WHERE id = %s", (ids["order"],))
            versions = conn.execute("SELECT version, data->>'status' FROM eventic.history(%s)", (ids["order"],)).fetchall()
            assert versions == [(0, "new"), (1, "paid"), (2, "shipped")]
            new_id = conn.execute("SELECT eventic.create('Story', '{\"title\": \"New\"}')").fetchone()[0]
            assert conn.execute("SELECT eventic.hydrate(%s)", (new_id,)).fetchone()[0]["version"] == 0

    def test_updated_queues_and_workflows_go_on(self, upgraded):
        require_updated(upgraded)
        ids = upgraded["ids"]
        with upgraded["cluster"].connect(dbname=upgraded["a"]) as conn:
            def effects():
                return sorted(n for (n,) in conn.execute("SELECT n FROM effects"))
            assert conn.execute("SELECT ready, scheduled, dead FROM eventic.queue_stats"
                                " WHERE queue_name = 'held'").fetchone() == (4, 0, 0)
            # the held ready jobs run once their queue is unpaused; a new enqueue runs
            conn.execute("SELECT eventic.alter_queue('held', paused => false)")
            conn.execute("SELECT eventic.enqueue('mail', 'effect(int)', '[30]')")
            # the dead job is retried
            conn.execute("UPDATE switch SET ok = true")
            conn.execute("SELECT eventic.retry_job('flaky', %s)", (ids["dead"],))
            # the sleeping listener gets its second message
            conn.execute("SELECT eventic.send('listener', 'go', '{\"n\": 2}')")
            assert conn.execute("SELECT eventic.wait_workflow('napper', '60 seconds')").fetchone()[0] == "rested"
            assert conn.execute("SELECT eventic.wait_workflow('listener', '60 seconds')").fetchone()[0] == {
                "first": {"n": 1}, "second": {"n": 2}}
            # 1 finished before, 2 scheduled, 3 retried, 11-14 held, 20/21 the napper's steps, 30 new
            assert wait_until(lambda: effects() == [1, 2, 3, 11, 12, 13, 14, 20, 21, 30], timeout=60), effects()
            time.sleep(0.5)
            assert effects() == [1, 2, 3, 11, 12, 13, 14, 20, 21, 30], "a job ran twice"
            stats = conn.execute("SELECT queue_name, ready, scheduled, dead FROM eventic.queue_stats"
                                 " WHERE queue_name IN ('mail', 'held', 'flaky') ORDER BY 1").fetchall()
            assert stats == [("flaky", 0, 0, 0), ("held", 0, 0, 0), ("mail", 0, 0, 0)]
            assert conn.execute("SELECT count(*) FROM eventic.finished_jobs").fetchone()[0] >= 9


# --------------------------------------------------------------------------------------------
# 2. pg_dump / pg_restore


def pg_tool(tool, *args):
    result = subprocess.run([str(PG_BIN / tool), *args], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="class")
def restored(cluster):
    """A database at the current version, filled, dumped (custom format) and restored into a
    new database of the same cluster."""
    try:
        prepare_scripts()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with cluster.connect() as admin:
        source = new_database(admin, "dump_src_")
        target = new_database(admin, "dump_dst_")
    dump = tempfile.NamedTemporaryFile(prefix="eventic-dump-", suffix=".dump", delete=False).name
    try:
        with cluster.connect(dbname=source) as conn:
            conn.execute("CREATE EXTENSION eventic")
            create_structure(conn)
            ids = fill(conn)
            before = data_snapshot(conn)
        common = ["-h", cluster.directory, "-p", str(cluster.port), "-U", "postgres"]
        code, output = pg_tool("pg_dump", *common, "-Fc", "-f", dump, source)
        assert code == 0, f"pg_dump failed:\n{output}"
        code, restore_output = pg_tool("pg_restore", *common, "-d", target, dump)
        with cluster.connect(dbname=target) as conn:
            after = data_snapshot(conn)
        code_list, listing = pg_tool("pg_restore", "-l", dump)
        yield dict(cluster=cluster, source=source, target=target, ids=ids, before=before, after=after,
                   restore_code=code, restore_output=restore_output, listing=listing)
    finally:
        os.unlink(dump)
        drop_database(cluster, source)
        drop_database(cluster, target)


class TestDumpRestore:
    """One database at the current version, filled, dumped and restored into a new database."""

    def test_restore_is_clean(self, restored):
        assert restored["restore_code"] == 0 and not restored["restore_output"].strip(), (
            "pg_restore reported errors:\n" + restored["restore_output"])

    def test_the_dump_has_the_finished_jobs_archive(self, restored):
        # eventic.finished_jobs is a view of eventic.finished_batches: its rows are dumped only if
        # that table is registered with pg_extension_config_dump
        assert "TABLE DATA eventic finished_batches" in restored["listing"], (
            "the dump has no data for eventic.finished_batches (the archive behind eventic.finished_jobs):"
            " it is not registered with pg_extension_config_dump")
        assert restored["after"]["eventic.finished_jobs"] == restored["before"]["eventic.finished_jobs"]
        assert len(restored["before"]["eventic.finished_jobs"]) >= 1

    def test_restore_keeps_every_row(self, restored):
        diff = snapshot_diff(restored["before"], restored["after"])
        assert not diff, "rows differ between the dumped and the restored database:\n" + diff

    def test_restored_workflow_gets_messages_in_order(self, restored):
        # (first, while the restored message still waits for the sleeping listener)
        with restored["cluster"].connect(dbname=restored["target"]) as conn:
            assert conn.execute("SELECT count(*) FROM eventic.workflow_messages").fetchone()[0] == 1
            try:
                conn.execute("SELECT eventic.send('listener', 'go', '{\"n\": 2}')")
            except psycopg.errors.UniqueViolation as exc:
                pytest.fail("eventic.send after the restore reuses a message id of a restored message: the"
                            " identity sequence of eventic.workflow_messages (an extension member) is not in"
                            f" the dump (pg_extension_config_dump registers a sequence too): {exc}")
            assert conn.execute("SELECT eventic.wait_workflow('listener', '60 seconds')").fetchone()[0] == {
                "first": {"n": 1}, "second": {"n": 2}}

    def test_restored_records_and_tracked_table_work(self, restored):
        ids = restored["ids"]
        with restored["cluster"].connect(dbname=restored["target"]) as conn:
            hare = conn.execute("SELECT eventic.hydrate(%s)", (ids["hare"],)).fetchone()[0]
            assert hare["title"] == "The Hare and the Tortoise" and hare["version"] == 3
            assert [v for (v,) in conn.execute("SELECT version FROM eventic.history(%s)", (ids["hare"],))] == [0, 1, 2, 3]
            assert conn.execute("SELECT eventic.set_field(%s, 'words', '7')", (ids["hare"],)).fetchone()[0] == 4
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute("SELECT eventic.set_field(%s, 'words', '-1')", (ids["hare"],))
            assert conn.execute("UPDATE public.story SET words = 4 WHERE id = %s RETURNING version",
                                (ids["view_row"],)).fetchone()[0] == 1
            conn.execute("UPDATE orders SET status = 'shipped' WHERE id = %s", (ids["order"],))
            versions = conn.execute("SELECT version, data->>'status' FROM eventic.history(%s)", (ids["order"],)).fetchall()
            assert versions == [(0, "new"), (1, "paid"), (2, "shipped")]

    def test_restored_jobs_and_sleeping_workflow_run(self, restored):
        ids = restored["ids"]
        with restored["cluster"].connect(dbname=restored["target"]) as conn:
            def effects():
                return sorted(n for (n,) in conn.execute("SELECT n FROM effects"))
            # new jobs get new ids (the queue tables' identity sequences were restored)
            (new_job,) = conn.execute("SELECT eventic.enqueue('mail', 'effect(int)', '[30]')").fetchone()
            assert new_job > ids["scheduled"], (
                f"job id {new_job} after the restore: the queue table's identity sequence was not restored"
                f" (the dumped queue had job {ids['scheduled']})")
            assert conn.execute("SELECT ready, scheduled, dead FROM eventic.queue_stats"
                                " WHERE queue_name = 'held'").fetchone() == (4, 0, 0)
            conn.execute("SELECT eventic.alter_queue('held', paused => false)")
            conn.execute("UPDATE switch SET ok = true")
            conn.execute("SELECT eventic.retry_job('flaky', %s)", (ids["dead"],))
            assert conn.execute("SELECT eventic.wait_workflow('napper', '60 seconds')").fetchone()[0] == "rested"
            # 1 and 20 ran before the dump; 2 scheduled, 3 retried, 11-14 held, 21 the napper, 30 new
            assert wait_until(lambda: effects() == [1, 2, 3, 11, 12, 13, 14, 20, 21, 30], timeout=60), effects()
            time.sleep(0.5)
            assert effects() == [1, 2, 3, 11, 12, 13, 14, 20, 21, 30], "a job ran twice"

    def test_restored_subscriber_gets_new_versions(self, restored):
        ids = restored["ids"]
        with restored["cluster"].connect(dbname=restored["target"]) as conn:
            conn.execute("SELECT eventic.set_field(%s, 'words', '8')", (ids["hare"],))
            assert wait_until(lambda: conn.execute(
                "SELECT count(*) FROM events WHERE event->>'id' = %s AND (event->'data'->>'words')::int = 8", (str(ids["hare"]),)).fetchone()[0] == 1, timeout=30), (
                "the restored class's subscriber did not get the new version; eventic.classes.subscribers"
                " (function oids, not names) after the restore: " + repr(conn.execute(
                    "SELECT subscribers, subscribers::regprocedure[]::text FROM eventic.classes"
                    " WHERE class_name = 'Story'").fetchone()))


def test_restore_into_another_cluster_keeps_who_owns_what(cluster):
    """A dump restored on another server, where the roles were created again (as pg_dumpall
    --roles-only does) and so have other oids: an ordinary role's scheduled job and sleeping
    workflow still run as that role and stay visible to it."""
    from conftest import Cluster
    other = Cluster(os.environ.get("EVENTIC_RESTORE_DIR", "/tmp/eventic-u-restore"),
                    int(os.environ.get("EVENTIC_RESTORE_PORT", "5842")))
    role = "eventic_u_app_" + os.urandom(3).hex()
    with cluster.connect() as admin:
        source = new_database(admin, "dump_role_")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    dump = tempfile.NamedTemporaryFile(prefix="eventic-dump-", suffix=".dump", delete=False).name
    other.run("start", other.directory, str(other.port))
    try:
        with cluster.connect(dbname=source) as conn:
            conn.execute("CREATE EXTENSION eventic")
            conn.execute(f"GRANT CREATE ON SCHEMA public TO {role}")
        with cluster.connect(dbname=source, user=role) as conn:
            conn.execute("CREATE TABLE app_effects (n int NOT NULL, who name NOT NULL DEFAULT current_user)")
            conn.execute("CREATE FUNCTION app_effect(n int) RETURNS void LANGUAGE sql"
                         " AS $$ INSERT INTO app_effects (n) VALUES (n) $$")
            conn.execute("""CREATE FUNCTION app_flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$ BEGIN
                PERFORM eventic.step('before', 'app_effect(int)', '[1]');
                PERFORM eventic.sleep('12 seconds');
                PERFORM eventic.step('after', 'app_effect(int)', '[2]');
                RETURN to_jsonb(current_user::text); END $$""")
            conn.execute("SELECT eventic.register_class('Gadget', NULL, view_schema => 'public')")
            (gadget,) = conn.execute("SELECT eventic.create('Gadget', '{\"n\": 1}')").fetchone()
            conn.execute("SELECT eventic.enqueue('gadget', 'app_effect(int)', '[3]', run_at => now() + interval '12 seconds')")
            conn.execute("SELECT eventic.start_workflow('app_flow(jsonb)', '{}', 'app-flow')")
            assert wait_until(lambda: conn.execute(
                "SELECT eventic.workflow_status('app-flow')").fetchone()[0] == "SLEEPING", timeout=10), (
                "the workflow did not reach its sleep: " + repr(conn.execute(
                    "SELECT status, error FROM eventic.workflows").fetchall()))
        common = ["-h", cluster.directory, "-p", str(cluster.port), "-U", "postgres"]
        code, output = pg_tool("pg_dump", *common, "-Fc", "-f", dump, source)
        assert code == 0, f"pg_dump failed:\n{output}"
        with other.connect() as admin:
            # other roles first, so that the role gets another oid than on the source
            admin.execute("CREATE ROLE eventic_u_pad_1; CREATE ROLE eventic_u_pad_2")
            admin.execute(f"CREATE ROLE {role} LOGIN")
            admin.execute("CREATE DATABASE restored")
        code, output = pg_tool("pg_restore", "-h", other.directory, "-p", str(other.port), "-U", "postgres",
                               "-d", "restored", dump)
        assert code == 0, f"pg_restore failed:\n{output}"
        with other.connect(dbname="restored", user=role) as conn:
            assert conn.execute("SELECT eventic.hydrate(%s)", (gadget,)).fetchone()[0]["n"] == 1, (
                "the role no longer reads its own record after the restore")
            seen = conn.execute("SELECT workflow_id FROM eventic.workflows").fetchall()
            assert seen == [("app-flow",)], f"the role's workflows after the restore: {seen}"
            jobs = conn.execute("SELECT count(*) FROM eventic.queue_gadget").fetchone()[0]
            assert jobs == 1, f"the role sees {jobs} of its jobs after the restore (1 waiting)"
            output = conn.execute("SELECT eventic.wait_workflow('app-flow', '60 seconds')").fetchone()[0]
            assert output == role, output
            assert wait_until(lambda: conn.execute("SELECT count(*) FROM app_effects").fetchone()[0] == 3,
                              timeout=30), conn.execute("SELECT * FROM app_effects").fetchall()
            assert sorted(conn.execute("SELECT n, who FROM app_effects").fetchall()) == [
                (1, role), (2, role), (3, role)]
    finally:
        os.unlink(dump)
        other.run("stop", other.directory)
        drop_database(cluster, source)
        with cluster.connect() as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


# --------------------------------------------------------------------------------------------
# the tool behind scripts/schema-diff


def schema_diff_main(argv):
    parser = argparse.ArgumentParser(prog="test_upgrade.py schema-diff",
                                     description="0.1.0 + ALTER EXTENSION UPDATE vs a fresh install")
    parser.add_argument("--host", required=True, help="socket directory of the cluster")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sql", action="store_true",
                        help="also print statements for the upgrade script (the functions that differ)")
    parser.add_argument("--bare", action="store_true",
                        help="only the extension (no classes, queues, tracked table created in both)")
    args = parser.parse_args(argv)
    for note in prepare_scripts():
        print(f"-- {note}")

    def connect(dbname):
        return psycopg.connect(f"host={args.host} port={args.port} dbname={dbname} user=postgres",
                               autocommit=True)
    prints = {}
    with connect("postgres") as admin:
        for name in ("schema_diff_upgraded", "schema_diff_fresh"):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
    try:
        with connect("schema_diff_upgraded") as conn:
            conn.execute(f"CREATE EXTENSION eventic VERSION '{OLD_VERSION}'")
            if not args.bare:
                create_structure(conn)
            conn.execute("ALTER EXTENSION eventic UPDATE")
            prints["upgraded"] = schema_fingerprint(conn)
        with connect("schema_diff_fresh") as conn:
            conn.execute("CREATE EXTENSION eventic")
            if not args.bare:
                create_structure(conn)
            prints["fresh"] = schema_fingerprint(conn)
            if args.sql:
                prints["sql"] = suggested_sql(conn, prints["upgraded"], prints["fresh"])
    finally:
        with connect("postgres") as admin:
            for name in ("schema_diff_upgraded", "schema_diff_fresh"):
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    diff = fingerprint_diff(prints["upgraded"], prints["fresh"])
    installed = extension_dir() / f"eventic--{NEW_VERSION}.sql"
    print(f"-- {OLD_VERSION} + {UPGRADE_SCRIPT.name} vs fresh {NEW_VERSION}"
          f" ({installed}, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(installed.stat().st_mtime))} UTC);"
          f" {len(prints['fresh'])} objects compared")
    print(diff if diff else "-- no difference")
    if args.sql and prints["sql"]:
        print("\n-- statements for " + UPGRADE_SCRIPT.name + " (functions only; check them):\n")
        print(prints["sql"])
    return 1 if diff else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "schema-diff":
        sys.exit(schema_diff_main(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)
