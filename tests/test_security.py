"""Cross-role security tier (issue 11, DESIGN.md §6): with real, ordinary roles, no role gains
another role's privileges through eventic, and each role's records, jobs and workflows are
its own.

Every test builds its own world (`env`): a fresh database with the extension, a `victim` and
an `attacker` role (LOGIN, no superuser, unique names per test, dropped afterwards), each
owning a schema of its own. The core is the trap tier: the attacker plants functions and
operators that shadow built-ins in its schema `attacker`, puts that schema first in its
search_path, calls one eventic entry point, lets the background worker run, and the test
asserts that no trap ran as any role but the attacker (and that the attacker did not become
a superuser: each trap tries `ALTER ROLE attacker SUPERUSER`)."""

import contextlib
import json
import os
import time
import uuid
import warnings

import psycopg
import pytest
from psycopg import sql

from test_queues import wait_until

DENIED = "42501"            # insufficient_privilege
NO_DATA = "P0002"           # no_data_found (unknown record / workflow)
UNDEFINED = "42704"         # undefined_object (unknown class / queue)
DUPLICATE = "42710"         # duplicate_object
INVALID = "22023"           # invalid_parameter_value
DEPENDENT = "2BP01"         # dependent_objects_still_exist
UNDEFINED_FUNCTION = "42883"

TRUSTED_PATH = "pg_catalog, public"     # the search_path of the postgres and victim sessions
TRAP_PATH = "attacker, pg_catalog"      # the attacker's search_path


# ---------------------------------------------------------------------------------------------
# the world of one test: a database, two roles, connections


class Env:
    def __init__(self, cluster):
        self.cluster = cluster
        self.tag = os.urandom(4).hex()
        self.db = f"sec_{self.tag}"
        self.victim = f"sec_{self.tag}_victim"
        self.attacker = f"sec_{self.tag}_attacker"
        self.dbs = []
        self.roles = []
        self.conns = []

    # -- connections ----------------------------------------------------------------------
    def connect(self, user="postgres", dbname=None, search_path=TRUSTED_PATH):
        conn = self.cluster.connect(dbname=dbname or self.db, user=user)
        self.conns.append(conn)
        if search_path is not None:
            conn.execute(sql.SQL("SET search_path = {}").format(sql.SQL(search_path)))
        return conn

    @property
    def pg(self):
        if not hasattr(self, "_pg"):
            self._pg = self.connect()
        return self._pg

    def as_victim(self):
        return self.connect(self.victim)

    def as_attacker(self, trapped=False):
        """The attacker's session; with `trapped`, its traps are planted and its schema is first
        in its search_path."""
        conn = self.connect(self.attacker)
        if trapped:
            plant_traps(conn, self.attacker)
            conn.execute(f"SET search_path = {TRAP_PATH}")
        return conn

    # -- setup / teardown -----------------------------------------------------------------
    def create_role(self, name):
        with self.cluster.connect() as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        if name not in self.roles:
            self.roles.append(name)

    def create_database(self, name, owner=None, extension=True):
        with self.cluster.connect() as admin:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            admin.execute(query)
        self.dbs.append(name)
        with self.cluster.connect(dbname=name) as conn:
            if extension:
                conn.execute("CREATE EXTENSION eventic")
            # the trap log and a table of effects, written by traps, jobs and handlers of any role
            conn.execute("CREATE TABLE public.trap_log (who name NOT NULL, trap text NOT NULL,"
                         " at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp())")
            conn.execute("GRANT INSERT, SELECT ON public.trap_log TO PUBLIC")
            conn.execute("CREATE TABLE public.effects (who name NOT NULL, what text)")
            conn.execute("GRANT INSERT, SELECT ON public.effects TO PUBLIC")
            for role, schema in ((self.victim, "victim"), (self.attacker, "attacker")):
                conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(role)))
                conn.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(role)))

    def setup(self):
        self.create_role(self.victim)
        self.create_role(self.attacker)
        self.create_database(self.db)

    def teardown(self):
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.close()
        with self.cluster.connect() as admin:
            for name in self.dbs:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            for role in self.roles:
                try:
                    admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
                except psycopg.Error as e:  # never hide the test's own result behind this
                    warnings.warn(f"could not drop role {role}: {e}")


@pytest.fixture()
def env(cluster):
    e = Env(cluster)
    e.setup()
    try:
        yield e
    finally:
        e.teardown()


# ---------------------------------------------------------------------------------------------
# small helpers


def rows(conn, query, params=None):
    cur = conn.execute(query, params)
    return cur.fetchall() if cur.description else None


def one(conn, query, params=None):
    return conn.execute(query, params).fetchone()[0]


def sqlstate(conn, query, params=None):
    """None when `query` succeeds, else its SQLSTATE."""
    try:
        conn.execute(query, params)
        return None
    except psycopg.Error as e:
        return e.sqlstate or "?"


def outcome(conn, query, params=None):
    """(sqlstate or None, message) of `query`."""
    try:
        conn.execute(query, params)
        return None, "succeeded"
    except psycopg.Error as e:
        return e.sqlstate or "?", str(e).splitlines()[0] if str(e) else ""


def settle(pg, timeout=6.0):
    """Lets the background worker run: until no ready or running job of a worker queue is
    left and no workflow is ENQUEUED, RUNNING or SLEEPING (at most `timeout` seconds)."""
    def idle():
        try:
            busy = one(pg, """
                SELECT (SELECT count(*) FROM eventic.workflows
                         WHERE status IN ('ENQUEUED', 'RUNNING', 'SLEEPING'))
                     + (SELECT coalesce(sum(ready + running), 0) FROM eventic.queue_stats
                         WHERE worker AND NOT paused)""")
        except psycopg.Error:
            time.sleep(timeout)
            return True
        return busy == 0
    wait_until(idle, timeout=timeout, interval=0.1)
    time.sleep(0.3)


def workflow_state(pg, workflow_id):
    return one(pg, "SELECT max(status) FROM eventic.workflows WHERE workflow_id = %s", (workflow_id,))


def wait_workflow_state(pg, workflow_id, states, timeout=8.0):
    wait_until(lambda: workflow_state(pg, workflow_id) in states, timeout=timeout, interval=0.1)
    return workflow_state(pg, workflow_id)


def versions(pg, record_id):
    return one(pg, "SELECT count(*) FROM eventic.records WHERE id = %s", (record_id,))


# ---------------------------------------------------------------------------------------------
# the traps

# (name, argument list, result type, how the trap returns the built-in result)
TRAP_FUNCTIONS = [
    ("now", "", "timestamptz", "RETURN pg_catalog.now();"),
    ("clock_timestamp", "", "timestamptz", "RETURN pg_catalog.clock_timestamp();"),
    ("random", "", "double precision", "RETURN pg_catalog.random();"),
    ("lower", "a text", "text", "RETURN pg_catalog.lower(a);"),
    ("pg_notify", "a text, b text", "void", "PERFORM pg_catalog.pg_notify(a, b); RETURN;"),
    ("jsonb_build_object", "a text, b jsonb", "jsonb", "RETURN pg_catalog.jsonb_build_object(a, b);"),
    ("jsonb_build_object", "a text, b uuid, c text, d integer, e text, f text", "jsonb",
     "RETURN pg_catalog.jsonb_build_object(a, b, c, d, e, f);"),
    ("to_jsonb", "a anyelement", "jsonb", "RETURN pg_catalog.to_jsonb(a);"),
    ("pg_has_role", "a name, b name, c text", "boolean", "RETURN pg_catalog.pg_has_role(a, b, c);"),
    ("to_regclass", "a text", "regclass", "RETURN pg_catalog.to_regclass(a);"),
    ("to_regprocedure", "a text", "regprocedure", "RETURN pg_catalog.to_regprocedure(a);"),
    ("quote_ident", "a text", "text", "RETURN pg_catalog.quote_ident(a);"),
    ("current_database", "", "name", "RETURN pg_catalog.current_database();"),
    ("format_type", "a oid, b integer", "text", "RETURN pg_catalog.format_type(a, b);"),
    ("pg_relation_size", "a regclass", "bigint", "RETURN pg_catalog.pg_relation_size(a);"),
    ("jsonb_typeof", "a jsonb", "text", "RETURN pg_catalog.jsonb_typeof(a);"),
    ("array_to_string", "a anyarray, b text", "text", "RETURN pg_catalog.array_to_string(a, b);"),
    ("cardinality", "a anyarray", "integer", "RETURN pg_catalog.cardinality(a);"),
]

# (operator, left type, right type, result type)
TRAP_OPERATORS = [
    ("=", "text", "text", "boolean"),
    ("=", "oid", "oid", "boolean"),
    ("=", "name", "name", "boolean"),
    ("=", "name", "text", "boolean"),
    ("=", "text", "name", "boolean"),
    ("=", "uuid", "uuid", "boolean"),
    ("=", "integer", "integer", "boolean"),
    ("=", "bigint", "bigint", "boolean"),
    ("=", "jsonb", "jsonb", "boolean"),
    ("<>", "text", "text", "boolean"),
    ("||", "jsonb", "jsonb", "jsonb"),
    ("||", "text", "text", "text"),
    ("-", "jsonb", "text", "jsonb"),
    ("->", "jsonb", "text", "jsonb"),
    ("->>", "jsonb", "text", "text"),
    ("<", "timestamptz", "timestamptz", "boolean"),
    ("<=", "timestamptz", "timestamptz", "boolean"),
    (">", "timestamptz", "timestamptz", "boolean"),
    (">=", "timestamptz", "timestamptz", "boolean"),
    ("+", "timestamptz", "interval", "timestamptz"),
    ("-", "timestamptz", "interval", "timestamptz"),
]


def _trap_body(role, label, result):
    return f"""
BEGIN
    INSERT INTO public.trap_log (who, trap) VALUES (current_user, {sql.quote(label)});
    BEGIN
        ALTER ROLE {sql.Identifier(role).as_string()} SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    {result}
END"""


def plant_traps(conn, role, schema="attacker"):
    """Functions and operators in `schema` that shadow built-ins. Each is SECURITY INVOKER,
    logs (current_user, trap) to public.trap_log, tries to make `role` a superuser, and returns
    what the built-in would (so that the code calling it keeps working)."""
    s = sql.Identifier(schema).as_string()
    statements = []
    for name, args, result_type, result in TRAP_FUNCTIONS:
        label = f"{name}({args})"
        statements.append(
            f"CREATE FUNCTION {s}.{name}({args}) RETURNS {result_type} LANGUAGE plpgsql "
            f"SET search_path = pg_catalog, pg_temp AS $trap${_trap_body(role, label, result)}$trap$")
    for i, (op, left, right, result_type) in enumerate(TRAP_OPERATORS):
        label = f"operator {op}({left},{right})"
        fn = f"{s}.trap_op_{i}"
        statements.append(
            f"CREATE FUNCTION {fn}(a {left}, b {right}) RETURNS {result_type} LANGUAGE plpgsql "
            f"SET search_path = pg_catalog, pg_temp AS $trap$"
            f"{_trap_body(role, label, f'RETURN a OPERATOR(pg_catalog.{op}) b;')}$trap$")
        statements.append(
            f"CREATE OPERATOR {s}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})")
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)


def crossed_traps(pg, attacker):
    """The traps that ran as another role than the attacker, and whether it is a superuser."""
    crossed = rows(pg, "SELECT who::text, trap, count(*) FROM public.trap_log WHERE who <> %s"
                       " GROUP BY 1, 2 ORDER BY 1, 2", (attacker,))
    superuser = one(pg, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (attacker,))
    return crossed, superuser


def assert_no_trap_crossed(pg, attacker, what):
    crossed, superuser = crossed_traps(pg, attacker)
    assert not superuser and not crossed, (
        f"{what}: attacker became superuser: {superuser}; traps that ran as another role "
        f"(role, trap, calls): {crossed}")


# ---------------------------------------------------------------------------------------------
# the attacker's own objects for the trap tier: a job, a handler, steps, workflow bodies.
# The `flow_*` bodies, the job, the handler and `step_fn` also set the session's search_path to
# the trap path (not local): in the worker, eventic must undo that before its own statements.
# The `plain_*` bodies do not (for entry points called from outside a workflow).

LEAK_PATH = "PERFORM pg_catalog.set_config('search_path', 'attacker, pg_catalog', false);"

FLOW_SNIPPETS = {
    "all": """
        r := eventic.step('s1', 'attacker.STEP(integer)', '[1]');
        PERFORM eventic.sleep('50 milliseconds');
        PERFORM eventic.set_event('k', '"v"');
        PERFORM eventic.now();
        PERFORM eventic.random();
        PERFORM eventic.workflow_id();
        r := eventic.await_workflow(eventic.start_child('attacker.KIND_child(jsonb)', '{}'));
        r := eventic.step('s2', 'attacker.STEP(integer)', '[2]');
        r := eventic.transaction('t3', 'attacker.STEP(integer)', '[3]');""",
    "child": "r := eventic.step('c1', 'attacker.STEP(integer)', '[3]');",
    "step": "r := eventic.step('s1', 'attacker.STEP(integer)', '[1]');",
    "transaction": "r := eventic.transaction('t1', 'attacker.STEP(integer)', '[1]');",
    "sleep": "PERFORM eventic.sleep('50 milliseconds');",
    "recv": "r := eventic.recv('topic', '5 seconds');",
    "set_event": "PERFORM eventic.set_event('k', '\"v\"');",
    "start_child": "PERFORM eventic.start_child('attacker.KIND_child(jsonb)', '{}');",
    "await_workflow": "r := eventic.await_workflow(eventic.start_child('attacker.KIND_child(jsonb)', '{}'));",
    "now": "PERFORM eventic.now();",
    "random": "PERFORM eventic.random();",
    "workflow_id": "PERFORM eventic.workflow_id();",
    "wait": "r := eventic.recv('never', '1 hour');",
    "patched": """IF eventic.patched('p1') THEN
            r := eventic.step('s1', 'attacker.STEP(integer)', '[1]');
        END IF;""",
    "set_progress": """PERFORM eventic.set_progress('{"at": "body"}');
        r := eventic.step('s1', 'attacker.progress_step(integer)', '[1]');""",
}


def _flow(kind, name, snippet):
    leak, step = (LEAK_PATH, "step_fn") if kind == "flow" else ("", "plain_step")
    body = snippet.replace("STEP", step).replace("KIND", kind)
    return f"""CREATE FUNCTION attacker.{kind}_{name}(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
        DECLARE r jsonb;
        BEGIN {leak} {body}
              RETURN '{{"done": true}}'::jsonb; END $$"""


ATTACKER_OBJECTS = [
    f"""CREATE FUNCTION attacker.job(n integer) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.effects (who, what) VALUES (current_user, 'job'); {LEAK_PATH} END $$""",
    f"""CREATE FUNCTION attacker.handler(event jsonb) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.effects (who, what) VALUES (current_user, 'handler'); {LEAK_PATH} END $$""",
    f"""CREATE FUNCTION attacker.step_fn(n integer) RETURNS integer LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO public.effects (who, what) VALUES (current_user, 'step'); {LEAK_PATH}
              RETURN n; END $$""",
    """CREATE FUNCTION attacker.plain_step(n integer) RETURNS integer LANGUAGE sql
        AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'step') RETURNING n $$""",
    f"""CREATE FUNCTION attacker.progress_job(n integer) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN PERFORM eventic.set_progress(pg_catalog.jsonb_build_object('n', n));
              INSERT INTO public.effects (who, what) VALUES (current_user, 'progress job'); {LEAK_PATH} END $$""",
    f"""CREATE FUNCTION attacker.progress_step(n integer) RETURNS integer LANGUAGE plpgsql AS $$
        BEGIN PERFORM eventic.set_progress(pg_catalog.jsonb_build_object('step', n));
              INSERT INTO public.effects (who, what) VALUES (current_user, 'progress step'); {LEAK_PATH}
              RETURN n; END $$""",
] + [_flow(kind, name, snippet) for kind in ("flow", "plain") for name, snippet in FLOW_SNIPPETS.items()]

SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}})


class Trap:
    """What a trap case gets: the attacker's session `a` (traps planted), postgres's `pg`. A case
    prepares what the entry point needs, then calls `arm()` (the attacker's schema goes first in
    its search_path), then calls the entry point."""

    def __init__(self, env, a):
        self.env = env
        self.a = a
        self.pg = env.pg
        self.armed = False
        self.problems = []      # the entry point did not do its work (checked after the traps)
        self.deferred = []      # (effect, at least) checked once the worker has run

    def arm(self):
        self.a.execute(f"SET search_path = {TRAP_PATH}")
        self.armed = True

    def expect_effect(self, what, at_least=1):
        """After the worker ran: at least `at_least` effects `what` written by the attacker."""
        self.deferred.append((what, at_least))

    def check_effects(self):
        for what, at_least in self.deferred:
            n = one(self.pg, "SELECT count(*) FROM public.effects WHERE what = %s AND who = %s",
                    (what, self.env.attacker))
            if n < at_least:
                self.problems.append(f"expected at least {at_least} effects {what!r} of the attacker, saw {n}")

    def ok(self, query, params=None):
        return rows(self.a, query, params)

    def val(self, query, params=None):
        return one(self.a, query, params)

    def allow(self, query, params=None, states=(DENIED,)):
        """Runs `query`; an error with one of `states` is an acceptable answer."""
        try:
            return rows(self.a, query, params)
        except psycopg.Error as e:
            if e.sqlstate not in states:
                raise
            return None

    # common preparations
    def record(self, data='{"a": 1}'):
        return self.val("SELECT eventic.create('Gadget', %s)", (data,))

    def view_class(self):
        self.ok("SELECT eventic.register_class('Gadget', %s, view_schema => 'attacker')", (SCHEMA,))

    def table(self):
        self.ok("CREATE TABLE attacker.t (id integer PRIMARY KEY, v text)")
        self.ok("INSERT INTO attacker.t VALUES (1, 'one'), (2, 'two')")
        self.ok("SELECT eventic.track('attacker.t')")

    def queue(self, worker=True):
        self.ok("SELECT eventic.create_queue('aq', worker => %s)", (worker,))

    def dequeued(self, max_attempts=5):
        self.queue(worker=False)
        self.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]', max_attempts => %s)",
                (max_attempts,))
        return self.val("SELECT job_id FROM eventic.dequeue('aq', 1, '1 minute')")

    def start(self, flow, workflow_id=None):
        """Starts attacker.<flow>(jsonb): flow_* bodies put the traps in their own path."""
        return self.val("SELECT eventic.start_workflow(%s, '{}', %s)",
                        (f"attacker.{flow}(jsonb)", workflow_id or f"a-{flow}-{os.urandom(3).hex()}"))

    def finished(self, workflow_id, timeout=8.0):
        state = wait_workflow_state(self.pg, workflow_id, {"SUCCESS", "ERROR", "CANCELLED"}, timeout)
        if state != "SUCCESS":
            error = one(self.pg, "SELECT max(error) FROM eventic.workflows WHERE workflow_id = %s", (workflow_id,))
            self.problems.append(f"workflow {workflow_id} ended {state}: {error}")
        return state

    def waiting(self, workflow_id):
        state = wait_workflow_state(self.pg, workflow_id, {"WAITING", "SUCCESS", "ERROR", "CANCELLED"})
        if state != "WAITING":
            self.problems.append(f"workflow {workflow_id} is {state}, not WAITING")
        return state


TRAP_CASES = {}


def trap_case(name):
    def register(fn):
        assert name not in TRAP_CASES
        TRAP_CASES[name] = fn
        return fn
    return register


# -- records ----------------------------------------------------------------------------------

@trap_case("create")
def _(t):
    t.arm()
    t.record()                                      # a new class: registered on the first create
    t.ok("SELECT eventic.create('Gadget', '{\"a\": 2}', %s)", (uuid.uuid4(),))


@trap_case("set_field")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.set_field(%s, 'a', '2')", (rid,))
    t.ok("SELECT eventic.set_field(%s, 'a', '3', expected_version => 1)", (rid,))


@trap_case("set_fields")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.set_fields(%s, '{\"a\": 2, \"b\": 3}')", (rid,))


@trap_case("hydrate")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.hydrate(%s), eventic.hydrate(%s, 0)", (rid, rid))


@trap_case("hydrate_as_of")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.hydrate_as_of(%s, pg_catalog.clock_timestamp())", (rid,))


@trap_case("history")
def _(t):
    rid = t.record()
    t.ok("SELECT eventic.set_field(%s, 'a', '2')", (rid,))
    t.arm()
    t.ok("SELECT * FROM eventic.history(%s)", (rid,))


@trap_case("diff")
def _(t):
    rid = t.record()
    t.ok("SELECT eventic.set_field(%s, 'a', '2')", (rid,))
    t.arm()
    t.ok("SELECT eventic.diff(%s, 0, 1)", (rid,))


@trap_case("add_property")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.add_property(%s, 'featured')", (rid,))
    t.ok("SELECT eventic.add_property(%s, 'score', '7')", (rid,))


@trap_case("remove_property")
def _(t):
    rid = t.record()
    t.ok("SELECT eventic.add_property(%s, 'score', '7')", (rid,))
    t.arm()
    t.ok("SELECT eventic.remove_property(%s, 'score')", (rid,))


@trap_case("list_properties")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.list_properties(%s)", (rid,))


@trap_case("delete")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.delete(%s)", (rid,))


@trap_case("purge")
def _(t):
    rid = t.record()
    t.arm()
    t.allow("SELECT eventic.purge(%s)", (rid,))          # the records' owner only


@trap_case("distribute")
def _(t):
    t.arm()
    t.allow("SELECT eventic.distribute()")          # superusers only (EXECUTE revoked): 42501


@trap_case("prune")
def _(t):
    rid = t.record()
    t.ok("SELECT eventic.set_field(%s, 'a', '2')", (rid,))
    t.ok("SELECT eventic.set_field(%s, 'a', '3')", (rid,))
    t.arm()
    t.allow("SELECT eventic.prune('Gadget', keep_last => 1)")
    t.allow("SELECT eventic.prune('Gadget', older_than => '0 seconds')")


@trap_case("apply_change")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("SELECT eventic.apply_change(%s, '{\"a\": 1}', '{\"a\": 2, \"b\": 3}')", (rid,))


@trap_case("may_read_class")
def _(t):
    t.record()
    t.arm()
    t.ok("SELECT eventic.may_read_class('Gadget'), eventic.may_read_class('Nobody')")


@trap_case("may_write_class")
def _(t):
    t.record()
    t.arm()
    t.ok("SELECT eventic.may_write_class('Gadget'), eventic.may_write_class('Nobody')")


@trap_case("read: SELECT eventic views")
def _(t):
    t.record()
    t.queue()
    t.arm()
    for relation in ("records", "latest", "classes", "queue_stats", "finished_jobs", "workflows",
                     "workflow_steps"):
        t.ok(f"SELECT * FROM eventic.{relation}")


# -- classes ----------------------------------------------------------------------------------

@trap_case("register_class")
def _(t):
    t.arm()
    t.view_class()
    evolved = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}, "c": {"type": "string"}}})
    t.ok("SELECT eventic.register_class('Gadget', %s, view_schema => 'attacker')", (evolved,))
    t.ok("SELECT eventic.register_class('Plain')")


@trap_case("drop_class")
def _(t):
    t.view_class()
    t.record()
    t.arm()
    t.ok("SELECT eventic.drop_class('Gadget')")


@trap_case("track")
def _(t):
    t.ok("CREATE TABLE attacker.t (id integer PRIMARY KEY, v text)")
    t.ok("INSERT INTO attacker.t VALUES (1, 'one'), (2, 'two')")
    t.arm()
    t.ok("SELECT eventic.track('attacker.t')")


@trap_case("untrack")
def _(t):
    t.table()
    t.arm()
    t.ok("SELECT eventic.untrack('attacker.t')")


@trap_case("tracked_id")
def _(t):
    t.table()
    t.arm()
    t.ok("SELECT eventic.tracked_id('attacker.t', '1')")


@trap_case("subscribe")
def _(t):
    t.ok("SELECT eventic.register_class('Gadget')")
    t.arm()
    t.ok("SELECT eventic.subscribe('Gadget', 'attacker.handler(jsonb)')")
    rid = t.record()                                # the outbox: a handler job per version
    t.ok("SELECT eventic.set_field(%s, 'a', '2')", (rid,))
    t.expect_effect("handler", 2)


@trap_case("unsubscribe")
def _(t):
    t.ok("SELECT eventic.register_class('Gadget')")
    t.ok("SELECT eventic.subscribe('Gadget', 'attacker.handler(jsonb)')")
    t.arm()
    t.ok("SELECT eventic.unsubscribe('Gadget', 'attacker.handler(jsonb)')")
    t.record()


# -- queues -----------------------------------------------------------------------------------

@trap_case("create_queue")
def _(t):
    t.arm()
    t.queue()
    t.queue()                                       # idempotent: the second call too


@trap_case("alter_queue")
def _(t):
    t.queue()
    t.arm()
    t.ok("SELECT eventic.alter_queue('aq', concurrency => 2, paused => false, worker => true)")


@trap_case("drop_queue")
def _(t):
    t.queue()
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]', run_at => now() + interval '1 hour')")
    t.arm()
    t.ok("SELECT eventic.drop_queue('aq')")


@trap_case("enqueue")
def _(t):
    t.queue()
    t.arm()
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]')")
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[2]', dedup_key => 'd')")
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[3]', dedup_key => 'd')")
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[4]', run_at => pg_catalog.clock_timestamp(),"
         " priority => 1, max_attempts => 2)")
    t.expect_effect("job", 3)


@trap_case("queue_counts")
def _(t):
    t.queue()
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]', run_at => now() + interval '1 hour')")
    t.arm()
    t.ok("SELECT * FROM eventic.queue_counts('aq')")


@trap_case("enqueue_batch")
def _(t):
    t.queue()
    t.arm()
    t.ok("SELECT count(*) FROM eventic.enqueue_batch('aq', 'attacker.job(integer)',"
         " ARRAY['[1]'::jsonb, '[2]'::jsonb, '[3]'::jsonb])")
    t.expect_effect("job", 3)


@trap_case("schedule")
def _(t):
    t.queue()
    t.arm()
    t.ok("SELECT eventic.schedule('as', '* * * * * *', 'attacker.job(integer)', '[1]', queue => 'aq')")
    t.ok("SELECT eventic.schedule('as', '* * * * * *', 'attacker.job(integer)', '[2]', queue => 'aq',"
         " timezone => 'Europe/Berlin', skip_missed => true)")   # replaced
    # the worker fires ticks as the attacker (whose job leaves the trap path in the worker)
    wait_until(lambda: one(t.pg, "SELECT count(*) FROM public.effects WHERE what = 'job'") >= 2,
               timeout=6, interval=0.1)
    t.ok("SELECT eventic.unschedule('as')")
    t.expect_effect("job", 2)


@trap_case("unschedule")
def _(t):
    t.ok("SELECT eventic.schedule('us', '0 0 1 1 *', 'attacker.job(integer)', '[1]')")
    t.arm()
    t.ok("SELECT eventic.unschedule('us')")
    if one(t.pg, "SELECT count(*) FROM eventic.schedules WHERE name = 'us'") != 0:
        t.problems.append("unschedule left the schedule")


@trap_case("run_pending")
def _(t):
    t.queue(worker=False)
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]')")
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[2]')")
    t.arm()
    t.ok("SELECT eventic.run_pending('aq')")
    t.ok("SELECT eventic.run_pending()")
    t.expect_effect("job", 2)


@trap_case("dequeue")
def _(t):
    t.queue(worker=False)
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]')")
    t.arm()
    t.ok("SELECT * FROM eventic.dequeue('aq', 5, '1 minute')")


@trap_case("ack")
def _(t):
    job = t.dequeued()
    t.arm()
    t.ok("SELECT eventic.ack('aq', %s)", (job,))


@trap_case("nack")
def _(t):
    job = t.dequeued()
    t.arm()
    t.ok("SELECT eventic.nack('aq', %s, 'boom')", (job,))


@trap_case("extend_lease")
def _(t):
    job = t.dequeued()
    t.arm()
    t.ok("SELECT eventic.extend_lease('aq', %s, '2 minutes')", (job,))


@trap_case("retry_job")
def _(t):
    job = t.dequeued(max_attempts=1)
    t.ok("SELECT eventic.nack('aq', %s, 'boom')", (job,))        # dead after its one attempt
    t.arm()
    t.ok("SELECT eventic.retry_job('aq', %s)", (job,))


# -- workflows, from outside (plain bodies) -------------------------------------------------------

@trap_case("start_workflow")
def _(t):
    t.arm()
    t.finished(t.start("plain_all"))


@trap_case("wait_workflow")
def _(t):
    wf = t.start("plain_all")
    t.arm()
    t.ok("SELECT eventic.wait_workflow(%s, '8 seconds')", (wf,))
    t.finished(wf)


@trap_case("workflow_status")
def _(t):
    wf = t.start("plain_all")
    t.arm()
    t.ok("SELECT eventic.workflow_status(%s)", (wf,))
    t.finished(wf)
    t.ok("SELECT eventic.workflow_status(%s)", (wf,))


@trap_case("send")
def _(t):
    wf = t.start("plain_recv")
    t.arm()
    t.ok("SELECT eventic.send(%s, 'topic', '{\"m\": 1}')", (wf,))
    t.finished(wf)


@trap_case("get_event")
def _(t):
    wf = t.start("plain_set_event")
    t.arm()
    t.ok("SELECT eventic.get_event(%s, 'k', '8 seconds')", (wf,))


@trap_case("cancel_workflow")
def _(t):
    wf = t.start("plain_wait")
    t.waiting(wf)
    t.arm()
    t.ok("SELECT eventic.cancel_workflow(%s)", (wf,))


@trap_case("resume_workflow")
def _(t):
    wf = t.start("plain_wait")
    t.waiting(wf)
    t.ok("SELECT eventic.cancel_workflow(%s)", (wf,))
    t.arm()
    t.ok("SELECT eventic.resume_workflow(%s)", (wf,))
    t.waiting(wf)


@trap_case("fork_workflow")
def _(t):
    wf = t.start("plain_all")
    t.finished(wf)
    t.arm()
    t.finished(t.val("SELECT eventic.fork_workflow(%s, 1)", (wf,)))


# -- workflows, inside a body the attacker starts: the body puts the traps in its own path ---------

def _body_case(name):
    def case(t):
        wf = t.start(f"flow_{name}")
        t.arm()
        if name == "recv":
            t.ok("SELECT eventic.send(%s, 'topic', '{\"m\": 1}')", (wf,))
        t.finished(wf)
    return case


for _name in ("step", "transaction", "sleep", "recv", "set_event", "start_child", "await_workflow",
              "now", "random", "workflow_id", "patched"):
    trap_case(_name)(_body_case(_name))


@trap_case("set_progress")
def _(t):
    t.queue()
    t.arm()
    # in a job (several of one function: a group that falls back to one by one), in a body,
    # in a step, and through run_pending in the attacker's own session
    t.ok("SELECT eventic.enqueue_batch('aq', 'attacker.progress_job(integer)', '{[1],[2],[3],[4]}')")
    t.finished(t.start("flow_set_progress"))
    t.ok("SELECT eventic.create_queue('aq_local', worker => false)")
    t.ok("SELECT eventic.enqueue('aq_local', 'attacker.progress_job(integer)', '[5]')")
    t.ok("SELECT eventic.run_pending('aq_local')")
    t.expect_effect("progress job", 5)
    t.expect_effect("progress step", 1)


@trap_case("progress_rows")
def _(t):
    t.arm()
    t.ok("SELECT * FROM eventic.progress_rows()")
    t.ok("SELECT * FROM eventic.progress")


@trap_case("worker_liveness")
def _(t):
    t.queue()
    t.ok("SELECT eventic.enqueue('aq', 'attacker.job(integer)', '[1]')")
    t.arm()
    t.ok("SELECT * FROM eventic.worker_liveness()")
    t.ok("SELECT * FROM eventic.metrics")

# -- workflows with external bodies (a runner's calls on a workflow the attacker started) ----------

def _external(t, claim=True):
    """Starts an external workflow of the attacker (and claims it): (id, lease)."""
    wid = t.val("SELECT eventic.start_external_workflow('a.body', '{}', %s)", (f"a-ext-{os.urandom(3).hex()}",))
    if not claim:
        return wid, None
    return wid, t.val("SELECT lease FROM eventic.claim_workflows(ARRAY['a.body'], 1, '1 minute', %s)", (wid,))


def _finish(t, wid, lease):
    t.ok("SELECT eventic.finish_workflow(%s, %s, '\"done\"')", (wid, lease))
    t.finished(wid)


@trap_case("start_external_workflow")
def _(t):
    t.arm()
    wid, _ = _external(t, claim=False)
    lease = t.val("SELECT lease FROM eventic.claim_workflows(NULL, 1, '1 minute', %s)", (wid,))
    _finish(t, wid, lease)


@trap_case("claim_workflows")
def _(t):
    wid, _ = _external(t, claim=False)
    t.arm()
    got = t.ok("SELECT workflow_id, lease, steps FROM eventic.claim_workflows(ARRAY['a.body'], 5, '1 minute')")
    if [r[0] for r in got] != [wid]:
        t.problems.append(f"claim_workflows returned {got}")
    else:
        _finish(t, wid, got[0][1])


@trap_case("record_step")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.record_step(%s, %s, 0, 's', 'step', '1')", (wid, lease))
    t.ok("SELECT eventic.record_step(%s, %s, 1, 't', 'transaction', NULL, 'ValueError: no', 2)", (wid, lease))
    _finish(t, wid, lease)


@trap_case("workflow_sleep")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.workflow_sleep(%s, %s, 0, '0 seconds')", (wid, lease))
    _finish(t, wid, lease)


@trap_case("workflow_recv")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.send(%s, 'topic', '1')", (wid,))
    if t.ok("SELECT received, message FROM eventic.workflow_recv(%s, %s, 0, 'topic', '1 minute')",
            (wid, lease)) != [(True, 1)]:
        t.problems.append("workflow_recv did not receive the message")
    _finish(t, wid, lease)


@trap_case("workflow_set_event")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.workflow_set_event(%s, %s, 0, 'k', '\"v\"')", (wid, lease))
    _finish(t, wid, lease)


@trap_case("finish_workflow")
def _(t):
    wid, lease = _external(t)
    t.arm()
    _finish(t, wid, lease)


@trap_case("extend_workflow_lease")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.extend_workflow_lease(%s, %s, '2 minutes')", (wid, lease))
    _finish(t, wid, lease)


@trap_case("release_workflow")
def _(t):
    wid, lease = _external(t)
    t.arm()
    t.ok("SELECT eventic.release_workflow(%s, %s)", (wid, lease))
    again = t.val("SELECT lease FROM eventic.claim_workflows(NULL, 1, '1 minute', %s)", (wid,))
    _finish(t, wid, again)


# -- write paths through views and tables (their triggers) ----------------------------------------

@trap_case("write: INSERT eventic.latest")
def _(t):
    t.record()
    t.arm()
    t.ok("INSERT INTO eventic.latest (class_type, data) VALUES ('Gadget', '{\"a\": 1}') RETURNING id, version")
    # a class never seen before: registered on this first write
    t.ok("INSERT INTO eventic.latest (class_type, data) VALUES ('Fresh', '{\"a\": 1}') RETURNING id, version")


@trap_case("write: UPDATE eventic.latest")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("UPDATE eventic.latest SET data = '{\"a\": 5, \"b\": 6}' WHERE id = %s RETURNING version", (rid,))


@trap_case("write: DELETE eventic.latest")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("DELETE FROM eventic.latest WHERE id = %s", (rid,))


@trap_case("write: INSERT class view")
def _(t):
    t.view_class()
    t.arm()
    t.ok("INSERT INTO attacker.gadget (a, b) VALUES (1, 2) RETURNING id, version")


@trap_case("write: UPDATE class view")
def _(t):
    t.view_class()
    rid = t.val("INSERT INTO attacker.gadget (a, b) VALUES (1, 2) RETURNING id")
    t.arm()
    t.ok("UPDATE attacker.gadget SET b = 7 WHERE id = %s RETURNING version", (rid,))


@trap_case("write: DELETE class view")
def _(t):
    t.view_class()
    rid = t.val("INSERT INTO attacker.gadget (a, b) VALUES (1, 2) RETURNING id")
    t.arm()
    t.ok("DELETE FROM attacker.gadget WHERE id = %s", (rid,))


@trap_case("write: UPDATE eventic.records")
def _(t):
    rid = t.record()
    t.arm()
    t.ok("UPDATE eventic.records SET data = '{\"a\": 9, \"properties\": {}}' WHERE id = %s", (rid,))
    t.ok("UPDATE eventic.records SET deleted = true WHERE id = %s", (rid,))


@trap_case("write: INSERT tracked table")
def _(t):
    t.table()
    t.arm()
    t.ok("INSERT INTO attacker.t VALUES (3, 'three')")


@trap_case("write: UPDATE tracked table")
def _(t):
    t.table()
    t.arm()
    t.ok("UPDATE attacker.t SET v = 'uno' WHERE id = 1")
    t.ok("UPDATE attacker.t SET id = 10 WHERE id = 2")          # a key change: tombstone + new


@trap_case("write: DELETE tracked table")
def _(t):
    t.table()
    t.arm()
    t.ok("DELETE FROM attacker.t WHERE id = 1")


@pytest.mark.parametrize("case", list(TRAP_CASES))
def test_trap_search_path_entry_point(env, case):
    """The attacker plants its traps, prepares, then calls one entry point with its schema
    first in its search_path; the worker runs what that queued; no trap ran as anyone but the
    attacker, and the entry point did its work."""
    a = env.as_attacker()
    for statement in ATTACKER_OBJECTS:
        a.execute(statement)
    plant_traps(a, env.attacker)
    t = Trap(env, a)
    TRAP_CASES[case](t)
    assert t.armed, f"trap case {case!r} never armed its traps"
    settle(env.pg)
    assert_no_trap_crossed(env.pg, env.attacker, f"entry point {case!r}")
    t.check_effects()
    assert not t.problems, f"entry point {case!r} did not do its work: {t.problems}"


def test_trap_cases_cover_every_eventic_function(env):
    """Every function of schema eventic a user calls (not `_` internal, not a trigger function:
    those are covered by the write-path cases) has a trap case above."""
    names = {name for (name,) in rows(env.pg, """
        SELECT p.proname::text FROM pg_proc p
         WHERE p.pronamespace = 'eventic'::regnamespace AND p.proname !~ '^_'
           AND p.prorettype NOT IN ('trigger'::regtype, 'event_trigger'::regtype)""")}
    missing = sorted(names - set(TRAP_CASES))
    assert not missing, f"eventic functions without a trap case in tests/test_security.py: {missing}"


def test_trap_database_search_path_set_by_its_owner(env):
    """The attacker owns a database (CREATE EXTENSION by postgres) and sets its default
    search_path to its trap schema. postgres and the victim (whose own sessions pin their
    search_path) enqueue jobs, start workflows, write records with a subscriber; the worker,
    which connects with the database's settings, must not run a trap as anyone but the
    attacker."""
    owned = f"sec_{env.tag}_owned"
    env.create_database(owned, owner=env.attacker, extension=False)
    a = env.connect(env.attacker, dbname=owned, search_path=None)
    plant_traps(a, env.attacker)
    a.execute(sql.SQL("ALTER DATABASE {} SET search_path = attacker, pg_catalog").format(sql.Identifier(owned)))
    a.close()
    # every session from now on starts with the attacker's search_path: postgres's and the
    # victim's pin theirs; the workers start when the extension is created, with the database's
    pg = env.connect(dbname=owned, search_path="pg_catalog, pg_temp")
    pg.execute("CREATE EXTENSION eventic")
    pg.execute("CREATE SCHEMA admin")
    pg.execute("""CREATE FUNCTION admin.job(n integer) RETURNS void LANGUAGE sql
                  AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'admin job') $$""")
    pg.execute("""CREATE FUNCTION admin.step_fn(n integer) RETURNS integer LANGUAGE sql
                  AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'admin step') RETURNING n $$""")
    pg.execute("""CREATE FUNCTION admin.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                  BEGIN
                      PERFORM eventic.step('s1', 'admin.step_fn(integer)', '[1]'::jsonb);
                      PERFORM eventic.sleep('50 milliseconds'::interval);
                      PERFORM eventic.set_event('k', '1'::jsonb);
                      PERFORM eventic.now();
                      RETURN input;
                  END $$""")

    v = env.connect(env.victim, dbname=owned, search_path="pg_catalog, pg_temp")
    v.execute("""CREATE FUNCTION victim.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim job') $$""")
    v.execute("""CREATE FUNCTION victim.handler(event jsonb) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim handler') $$""")
    v.execute("""CREATE FUNCTION victim.step_fn(n integer) RETURNS integer LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim step') RETURNING n $$""")
    v.execute("""CREATE FUNCTION victim.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                 BEGIN
                     PERFORM eventic.step('s1', 'victim.step_fn(integer)', '[1]'::jsonb);
                     PERFORM eventic.sleep('50 milliseconds'::interval);
                     PERFORM eventic.recv('topic', '3 seconds'::interval);
                     RETURN input;
                 END $$""")

    v.execute("SELECT eventic.create_queue('vq')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.job(integer)', '[1]')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.job(integer)', '[2]', dedup_key => 'd')")
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{\"n\": 1}', 'victim-flow')")
    v.execute("SELECT eventic.register_class('VictimThing')")
    v.execute("SELECT eventic.subscribe('VictimThing', 'victim.handler(jsonb)')")
    rid = one(v, "SELECT eventic.create('VictimThing', '{\"a\": 1}')")
    v.execute("SELECT eventic.set_field(%s, 'a', '2')", (rid,))

    pg.execute("SELECT eventic.create_queue('pq')")
    pg.execute("SELECT eventic.enqueue('pq', 'admin.job(integer)', '[1]')")
    pg.execute("SELECT count(*) FROM eventic.enqueue_batch('pq', 'admin.job(integer)', ARRAY['[2]'::jsonb, '[3]'::jsonb])")
    pg.execute("SELECT eventic.start_workflow('admin.flow(jsonb)', '{}', 'admin-flow')")
    prid = one(pg, "SELECT eventic.create('AdminThing', '{\"a\": 1}')")
    pg.execute("SELECT eventic.set_field(%s, 'a', '2')", (prid,))
    pg.execute("UPDATE eventic.latest SET data = '{\"a\": 3}' WHERE id = %s", (prid,))
    v.execute("SELECT eventic.send('victim-flow', 'topic', '{}')")

    wait_workflow_state(pg, "admin-flow", {"SUCCESS", "ERROR", "CANCELLED"})
    wait_workflow_state(pg, "victim-flow", {"SUCCESS", "ERROR", "CANCELLED"})
    settle(pg)
    time.sleep(1.0)  # the worker's periodic bookkeeping (archive, truncation checks) too
    assert_no_trap_crossed(pg, env.attacker, "database search_path set by its owner")
    # and the work was done, as the roles that asked for it
    done = rows(pg, "SELECT who::text, what FROM public.effects GROUP BY 1, 2 ORDER BY 1, 2")
    assert ("postgres", "admin job") in done and (env.victim, "victim job") in done, done


# ---------------------------------------------------------------------------------------------
# 2. the outbox


def test_outbox_subscribe_to_a_class_of_another_role_is_refused(env):
    v = env.as_victim()
    v.execute("SELECT eventic.register_class('Payroll')")
    rid = one(v, "SELECT eventic.create('Payroll', '{\"salary\": 100}')")
    a = env.as_attacker()
    a.execute("""CREATE FUNCTION attacker.spy(event jsonb) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'spy: ' || event::text) $$""")
    state, message = outcome(a, "SELECT eventic.subscribe('Payroll', 'attacker.spy(jsonb)')")
    v.execute("SELECT eventic.set_field(%s, 'salary', '200')", (rid,))
    settle(env.pg)
    spied = rows(env.pg, "SELECT who::text, what FROM public.effects WHERE what LIKE 'spy%%'")
    assert state == DENIED and not spied, (
        f"subscribe to another role's class: {state} {message}; the handler saw: {spied}")


def test_outbox_handler_runs_as_the_subscriber_not_as_the_writer(env):
    a = env.as_attacker()
    a.execute("""CREATE FUNCTION attacker.h(event jsonb) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'handler') $$""")
    a.execute("GRANT USAGE ON SCHEMA attacker TO PUBLIC")
    a.execute("SELECT eventic.register_class('Gizmo')")
    a.execute("SELECT eventic.subscribe('Gizmo', 'attacker.h(jsonb)')")
    env.pg.execute("SELECT eventic.create('Gizmo', '{\"a\": 1}')")
    assert wait_until(lambda: one(env.pg, "SELECT count(*) FROM public.effects WHERE what = 'handler'") > 0,
                      timeout=8), "the handler never ran"
    settle(env.pg)
    who = rows(env.pg, "SELECT DISTINCT who::text FROM public.effects WHERE what = 'handler'")
    assert who == [(env.attacker,)], f"the handler ran as {who}, not as the subscriber {env.attacker}"


# ---------------------------------------------------------------------------------------------
# 3. class squatting


@pytest.mark.parametrize("squat", ["register_class", "create"])
def test_class_squatting_before_track(env, squat):
    a = env.as_attacker()
    a.execute("""CREATE FUNCTION attacker.spy(event jsonb) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'spy') $$""")
    a.execute("GRANT USAGE ON SCHEMA attacker TO PUBLIC")
    call = ("SELECT eventic.register_class('public.payroll')" if squat == "register_class"
            else "SELECT eventic.create('public.payroll', '{}')")
    squat_state, squat_message = outcome(a, call)
    if squat_state is None:
        outcome(a, "SELECT eventic.subscribe('public.payroll', 'attacker.spy(jsonb)')")
    else:
        assert squat_state in (DENIED, INVALID), f"the squat failed, but with {squat_state}: {squat_message}"

    pg = env.pg
    pg.execute("CREATE TABLE public.payroll (id integer PRIMARY KEY, salary integer)")
    track_state, track_message = outcome(pg, "SELECT eventic.track('public.payroll')")
    if squat_state is None:
        # the squat was let through: then track must refuse to adopt it
        owner = one(pg, "SELECT max(owner::text) FROM eventic.classes WHERE class_name = 'public.payroll'")
        if track_state is None:
            pg.execute("INSERT INTO public.payroll VALUES (1, 100)")
            settle(pg)
        spied = one(pg, "SELECT count(*) FROM public.effects WHERE what = 'spy'")
        assert track_state == DENIED, (
            f"the attacker's {squat} of public.payroll succeeded and track adopted it "
            f"({track_state} {track_message}): class owner {owner}, the attacker's handler ran {spied} times")
    else:
        assert track_state is None, f"track after a refused squat: {track_state} {track_message}"
        owner = one(pg, "SELECT max(owner::text) FROM eventic.classes WHERE class_name = 'public.payroll'")
        assert owner != env.attacker


# ---------------------------------------------------------------------------------------------
# 4. internal functions


def _victim_world(env):
    """The victim's queue with a job, a workflow waiting for a message, a record of a class."""
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim job ' || n) $$""")
    v.execute("""CREATE FUNCTION victim.step_fn(n integer) RETURNS integer LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim step ' || n)
                       RETURNING n $$""")
    v.execute("""CREATE FUNCTION victim.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                 DECLARE m jsonb;
                 BEGIN
                     PERFORM eventic.step('first', 'victim.step_fn(integer)', '[1]');
                     m := eventic.recv('go', '1 hour');
                     PERFORM eventic.set_event('k', m);
                     PERFORM eventic.step('second', 'victim.step_fn(integer)', '[2]');
                     RETURN m;
                 END $$""")
    v.execute("GRANT USAGE ON SCHEMA victim TO PUBLIC")   # its functions are reachable, as in public
    v.execute("SELECT eventic.create_queue('vq')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.job(integer)', '[1]', run_at => now() + interval '1 hour')")
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{\"secret\": \"input\"}', 'victim-wf')")
    v.execute("SELECT eventic.register_class('Secret')")
    rid = one(v, "SELECT eventic.create('Secret', '{\"pin\": 1234}')")
    wait_workflow_state(env.pg, "victim-wf", {"WAITING", "SUCCESS", "ERROR"})
    return v, rid


def _internal_args(env, pg, fn_oid, rid):
    """A plausible, non-NULL argument list for an internal function, aimed at the victim's
    objects (its queue vq, its workflow victim-wf, its function, its record)."""
    name, types = one(pg, "SELECT json_build_array(proname, ARRAY(SELECT format_type(t, NULL)"
                          " FROM unnest(proargtypes) t)) FROM pg_proc WHERE oid = %s", (fn_oid,))
    victim_fn = int(one(pg, "SELECT 'victim.job(integer)'::regprocedure::oid::bigint"))
    flow_fn = int(one(pg, "SELECT 'victim.flow(jsonb)'::regprocedure::oid::bigint"))
    text_first = {"_enqueue": "vq", "_dequeue": "vq", "_create_queue": "vq", "_queue_counts": "vq",
                  "_subscribe": "Secret", "_track_change": "Secret"}.get(name, "victim-wf")
    literals = []
    seen_text = False
    for t in types:
        if t == "text":
            literals.append(sql.Literal(text_first if not seen_text else "workflows"))
            seen_text = True
        elif t in ("oid", "regprocedure"):
            literals.append(sql.SQL("{}::oid").format(sql.Literal(flow_fn if "workflow" in name or "step" in name
                                                                  or "child" in name else victim_fn)))
        elif t == "jsonb":
            literals.append(sql.SQL("'[1]'::jsonb") if name in ("_enqueue", "_step") else sql.SQL("'{}'::jsonb"))
        elif t == "uuid":
            literals.append(sql.SQL("{}::uuid").format(sql.Literal(str(rid))))
        elif t in ("integer", "bigint", "smallint"):
            literals.append(sql.SQL("1"))
        elif t == "boolean":
            literals.append(sql.SQL("true"))
        elif t == "interval":
            literals.append(sql.SQL("'1 second'::interval"))
        elif t.startswith("timestamp"):
            literals.append(sql.SQL("now()"))
        elif t == "regclass":
            literals.append(sql.SQL("'eventic.records'::regclass"))
        elif t == "regrole":
            literals.append(sql.SQL("{}::regrole").format(sql.Literal(env.victim)))
        else:
            literals.append(sql.SQL("NULL::" + t))
    return name, sql.SQL("SELECT eventic.{}({})").format(sql.Identifier(name), sql.SQL(", ").join(literals))


def test_internal_functions_are_refused_to_ordinary_roles(env):
    """Every eventic._* function, called by the attacker with arguments aimed at the victim's
    objects: 42501 (trigger functions: refused one way or the other, never run)."""
    v, rid = _victim_world(env)
    a = env.as_attacker()
    functions = rows(env.pg, "SELECT oid, prorettype = 'trigger'::regtype FROM pg_proc"
                             " WHERE pronamespace = 'eventic'::regnamespace AND proname ~ '^_' ORDER BY proname")
    assert functions
    wrong = []
    for fn_oid, is_trigger in functions:
        name, call = _internal_args(env, env.pg, fn_oid, rid)
        state, message = outcome(a, call)
        accepted = (DENIED, "0A000", "39P01") if is_trigger else (DENIED,)
        if state not in accepted:
            wrong.append(f"{call.as_string(a)} -> {state or 'ran'}: {message}")
    assert not wrong, "internal functions callable by an ordinary role:\n" + "\n".join(wrong)


# %(job)s, %(step)s, %(flow)s: the oids of the victim's functions (numbers: no name lookup)
INTERNAL_CALLS = {
    "_run_workflow": "SELECT eventic._run_workflow('victim-wf')",
    # a forged version of a row of the victim's class (as the tracked-table trigger would write)
    "_track_change": "SELECT eventic._track_change('Secret', NULL, '\"k1\"'::jsonb, '{\"pin\": 0}'::jsonb)",
    "_apply_update": "SELECT eventic._apply_update(%(rid)s, '{\"pin\": 1234}'::jsonb, '{\"pin\": 0}'::jsonb)",
    "_enqueue": "SELECT eventic._enqueue('vq', %(job)s::oid, '[2]'::jsonb, NULL, 0, NULL, 5, NULL)",
    "_step": "SELECT eventic._step('evil', %(step)s::oid, '[9]'::jsonb)",
    "_start_workflow": "SELECT eventic._start_workflow(%(flow)s::oid, '{}'::jsonb, 'evil-wf', NULL, NULL)",
    "_start_child": "SELECT eventic._start_child(%(flow)s::oid, '{}'::jsonb)",
    "_fork_workflow": "SELECT eventic._fork_workflow('victim-wf', 1)",
}


@pytest.mark.parametrize("name", list(INTERNAL_CALLS))
def test_internal_function_refused(env, name):
    """The internal functions the issue names, called by the attacker on the victim's objects
    (with the current signature when it changed): 42501 (or the function is gone)."""
    v, rid = _victim_world(env)
    a = env.as_attacker()
    exists = rows(env.pg, "SELECT oid FROM pg_proc WHERE pronamespace = 'eventic'::regnamespace"
                          " AND proname = %s", (name,))
    if not exists:
        return  # gone: nobody can call it
    oids = {key: one(env.pg, "SELECT %s::regprocedure::oid::bigint", (signature,))
            for key, signature in (("job", "victim.job(integer)"), ("step", "victim.step_fn(integer)"),
                                   ("flow", "victim.flow(jsonb)"))}
    state, message = outcome(a, INTERNAL_CALLS[name], {"rid": rid, **oids})
    if state == UNDEFINED_FUNCTION:      # the signature changed: aim the generic arguments instead
        _, call = _internal_args(env, env.pg, exists[0][0], rid)
        state, message = outcome(a, call)
    status = workflow_state(env.pg, "victim-wf")
    assert state == DENIED, f"{name} by the attacker: {state or 'ran'} ({message}); victim-wf is {status}"


# ---------------------------------------------------------------------------------------------
# 5. the catalog


def test_catalog_no_security_definer_without_search_path_and_no_public_internal_functions(env):
    definers = rows(env.pg, """
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'eventic'::regnamespace AND p.prosecdef
           AND NOT EXISTS (SELECT FROM unnest(coalesce(p.proconfig, '{}')) c WHERE c LIKE 'search_path=%%')
         ORDER BY 1""")
    public_internal = rows(env.pg, """
        SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'eventic'::regnamespace AND p.proname ~ '^_'
           AND (p.proacl IS NULL
                OR EXISTS (SELECT FROM aclexplode(p.proacl) a WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'))
         ORDER BY 1""")
    assert not definers and not public_internal, (
        f"SECURITY DEFINER without a search_path: {definers}; internal functions executable by PUBLIC: "
        f"{public_internal}")


# ---------------------------------------------------------------------------------------------
# 6. drop_class and queues


def test_drop_class_register_class_does_not_adopt_or_drop_another_roles_queue(env):
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim job') $$""")
    v.execute("SELECT eventic.create_queue('payments')")
    job = one(v, "SELECT eventic.enqueue('payments', 'victim.job(integer)', '[1]', run_at => now() + interval '1 hour')")
    a = env.as_attacker()
    register_state, register_message = outcome(a, "SELECT eventic.register_class('Payments')")
    drop_state, drop_message = outcome(a, "SELECT eventic.drop_class('Payments')")
    table = one(env.pg, "SELECT to_regclass('eventic.queue_payments')")
    jobs = one(env.pg, "SELECT count(*) FROM eventic.queue_payments WHERE job_id = %s", (job,)) if table else 0
    queue_owner = one(env.pg, "SELECT max(owner::text) FROM eventic.queues WHERE queue_name = 'payments'")
    assert register_state in (DUPLICATE, DENIED) and table is not None and jobs == 1 \
        and queue_owner == env.victim, (
            f"register_class('Payments') by the attacker: {register_state or 'succeeded'} ({register_message}); "
            f"drop_class: {drop_state or 'succeeded'} ({drop_message}); queue table left: {table}, "
            f"the victim's job left: {jobs}, queue owner now: {queue_owner}")


def test_drop_class_of_another_role_is_refused(env):
    v = env.as_victim()
    v.execute("SELECT eventic.register_class('Ledger', view_schema => 'victim')")
    rid = one(v, "SELECT eventic.create('Ledger', '{\"a\": 1}')")
    a = env.as_attacker()
    state, message = outcome(a, "SELECT eventic.drop_class('Ledger')")
    left = one(env.pg, "SELECT count(*) FROM eventic.classes WHERE class_name = 'Ledger'")
    assert state == DENIED and left == 1, f"drop_class of the victim's class: {state or 'succeeded'} ({message})"
    assert one(v, "SELECT eventic.hydrate(%s) ->> 'a'", (rid,)) == "1"


# ---------------------------------------------------------------------------------------------
# 7. another role's workflow


WORKFLOW_CALLS = {
    "send": "SELECT eventic.send('victim-wf', 'go', '{\"from\": \"attacker\"}')",
    "cancel_workflow": "SELECT eventic.cancel_workflow('victim-wf')",
    "resume_workflow": "SELECT eventic.resume_workflow('victim-wf')",
    "fork_workflow": "SELECT eventic.fork_workflow('victim-wf', 1)",
    "get_event": "SELECT eventic.get_event('victim-wf', 'k')",
    "wait_workflow": "SELECT eventic.wait_workflow('victim-wf', '0 seconds')",
    "workflow_status": "SELECT eventic.workflow_status('victim-wf')",
}


@pytest.mark.parametrize("call", list(WORKFLOW_CALLS))
def test_workflow_of_another_role_refused(env, call):
    """The attacker on the victim's workflow: 42501. Then the victim's own message, not the
    attacker's, is what its workflow receives."""
    v, _ = _victim_world(env)
    a = env.as_attacker()
    state, message = outcome(a, WORKFLOW_CALLS[call])
    v.execute("SELECT eventic.send('victim-wf', 'go', '{\"from\": \"victim\"}')")
    output = one(v, "SELECT eventic.wait_workflow('victim-wf', '8 seconds')")
    assert state == DENIED and output == {"from": "victim"}, (
        f"{call} of the victim's workflow by the attacker: {state or 'succeeded'} ({message}); "
        f"the workflow's output: {output}")


def test_workflow_calls_by_its_owner_work(env):
    v, _ = _victim_world(env)
    assert one(v, "SELECT eventic.workflow_status('victim-wf')") == "WAITING"
    assert one(v, "SELECT eventic.get_event('victim-wf', 'k')") is None
    v.execute("SELECT eventic.send('victim-wf', 'go', '{\"n\": 1}')")
    assert one(v, "SELECT eventic.wait_workflow('victim-wf', '8 seconds')") == {"n": 1}
    assert one(v, "SELECT eventic.get_event('victim-wf', 'k')") == {"n": 1}
    fork = one(v, "SELECT eventic.fork_workflow('victim-wf', 3)")
    assert one(v, "SELECT eventic.wait_workflow(%s, '8 seconds')", (fork,)) == {"n": 1}
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{}', 'victim-wf2')")
    wait_workflow_state(env.pg, "victim-wf2", {"WAITING"})
    v.execute("SELECT eventic.cancel_workflow('victim-wf2')")
    assert one(v, "SELECT eventic.workflow_status('victim-wf2')") == "CANCELLED"
    v.execute("SELECT eventic.resume_workflow('victim-wf2')")
    v.execute("SELECT eventic.send('victim-wf2', 'go', '2')")
    assert one(v, "SELECT eventic.wait_workflow('victim-wf2', '8 seconds')") == 2


# ---------------------------------------------------------------------------------------------
# 8. records access


def _secret(env):
    v = env.as_victim()
    v.execute("SELECT eventic.register_class('Secret')")
    rid = one(v, "SELECT eventic.create('Secret', '{\"pin\": 1234, \"properties\": {\"tag\": true}}')")
    v.execute("SELECT eventic.set_field(%s, 'pin', '4321')", (rid,))
    return v, rid


RECORD_READS = {
    "hydrate": "SELECT eventic.hydrate(%(rid)s)",
    "hydrate_version": "SELECT eventic.hydrate(%(rid)s, 0)",
    "hydrate_as_of": "SELECT eventic.hydrate_as_of(%(rid)s, now())",
    "history": "SELECT * FROM eventic.history(%(rid)s)",
    "diff": "SELECT eventic.diff(%(rid)s, 0, 1)",
    "list_properties": "SELECT eventic.list_properties(%(rid)s)",
}


@pytest.mark.parametrize("read", list(RECORD_READS))
def test_records_read_of_another_roles_class_refused(env, read):
    _, rid = _secret(env)
    a = env.as_attacker()
    state, message = outcome(a, RECORD_READS[read], {"rid": rid})
    assert state in (DENIED, NO_DATA), f"{read} of the victim's record: {state or 'succeeded'} ({message})"


RECORD_WRITES = {
    "set_field": "SELECT eventic.set_field(%(rid)s, 'pin', '0')",
    "set_fields": "SELECT eventic.set_fields(%(rid)s, '{\"pin\": 0}')",
    "add_property": "SELECT eventic.add_property(%(rid)s, 'owned')",
    "remove_property": "SELECT eventic.remove_property(%(rid)s, 'tag')",
    "delete": "SELECT eventic.delete(%(rid)s)",
    "update_latest": "UPDATE eventic.latest SET data = '{\"pin\": 0}' WHERE id = %(rid)s",
    "delete_latest": "DELETE FROM eventic.latest WHERE id = %(rid)s",
}


@pytest.mark.parametrize("write", list(RECORD_WRITES))
def test_records_write_of_another_roles_class_refused(env, write):
    _, rid = _secret(env)
    before = versions(env.pg, rid)
    a = env.as_attacker()
    state, message = outcome(a, RECORD_WRITES[write], {"rid": rid})
    after = versions(env.pg, rid)
    # a write through eventic.latest may also find no row it can see (UPDATE 0): no version either way
    accepted = (DENIED, NO_DATA) + ((None,) if write.endswith("_latest") else ())
    assert state in accepted and after == before, (
        f"{write} of the victim's record: {state or 'succeeded'} ({message}); versions {before} -> {after}")


def test_records_rows_of_another_roles_class_invisible(env):
    _, rid = _secret(env)
    a = env.as_attacker()
    seen = {}
    for relation in ("eventic.records", "eventic.latest"):
        try:
            seen[relation] = one(a, f"SELECT count(*) FROM {relation} WHERE class_type = 'Secret'")
        except psycopg.Error as e:
            assert e.sqlstate == DENIED, f"{relation}: {e.sqlstate} {e}"
            seen[relation] = 0
    assert seen == {"eventic.records": 0, "eventic.latest": 0}, f"the attacker sees Secret rows: {seen}"


def test_records_update_of_records_table_by_another_role_changes_nothing(env):
    _, rid = _secret(env)
    before = rows(env.pg, "SELECT version, data FROM eventic.records WHERE id = %s ORDER BY version", (rid,))
    a = env.as_attacker()
    state, message = outcome(a, "UPDATE eventic.records SET data = '{\"pin\": 0, \"properties\": {}}' WHERE id = %s",
                             (rid,))
    outcome(a, "UPDATE eventic.records SET deleted = true WHERE id = %s", (rid,))
    after = rows(env.pg, "SELECT version, data FROM eventic.records WHERE id = %s ORDER BY version", (rid,))
    assert after == before, f"UPDATE eventic.records by the attacker ({state or 'ok'}: {message}) appended {after[len(before):]}"


def test_records_create_in_another_roles_class_refused(env):
    _secret(env)
    a = env.as_attacker()
    state, message = outcome(a, "SELECT eventic.create('Secret', '{\"pin\": 1}')")
    count = one(env.pg, "SELECT count(DISTINCT id) FROM eventic.records WHERE class_type = 'Secret'")
    assert state == DENIED and count == 1, f"create('Secret') by the attacker: {state or 'succeeded'} ({message})"


def test_records_access_follows_grants_on_the_class_view(env):
    env.pg.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(env.victim)))
    v = env.as_victim()
    v.execute("SELECT eventic.register_class('Shared', %s, view_schema => 'public')",
              (json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}),))
    rid = one(v, "SELECT eventic.create('Shared', '{\"a\": 1}')")
    a = env.as_attacker()
    problems = []

    def expect(what, query, params, accepted):
        state, message = outcome(a, query, params)
        if state not in accepted:
            problems.append(f"{what}: {state or 'succeeded'} ({message})")

    n = versions(env.pg, rid)
    # no grant: neither read nor write
    expect("no grant: hydrate", "SELECT eventic.hydrate(%s)", (rid,), (DENIED, NO_DATA))
    expect("no grant: SELECT view", "SELECT * FROM public.shared", None, (DENIED,))
    expect("no grant: set_field", "SELECT eventic.set_field(%s, 'a', '2')", (rid,), (DENIED, NO_DATA))
    expect("no grant: UPDATE view", "UPDATE public.shared SET a = 3", None, (DENIED,))
    expect("no grant: create", "SELECT eventic.create('Shared', '{\"a\": 5}')", None, (DENIED,))
    if versions(env.pg, rid) != n:
        problems.append("no grant: a version was appended")

    v.execute(sql.SQL("GRANT SELECT ON public.shared TO {}").format(sql.Identifier(env.attacker)))
    expect("SELECT granted: hydrate", "SELECT eventic.hydrate(%s)", (rid,), (None,))
    expect("SELECT granted: history", "SELECT * FROM eventic.history(%s)", (rid,), (None,))
    expect("SELECT granted: SELECT view", "SELECT * FROM public.shared", None, (None,))
    expect("SELECT granted: set_field", "SELECT eventic.set_field(%s, 'a', '2')", (rid,), (DENIED,))
    expect("SELECT granted: UPDATE view", "UPDATE public.shared SET a = 3", None, (DENIED,))
    expect("SELECT granted: create", "SELECT eventic.create('Shared', '{\"a\": 5}')", None, (DENIED,))
    if versions(env.pg, rid) != n:
        problems.append("SELECT granted: a version was appended")
    try:
        seen = one(a, "SELECT count(*) FROM public.shared WHERE id = %s", (rid,))
        if seen != 1:
            problems.append(f"SELECT granted: the view shows {seen} rows of the record")
    except psycopg.Error as e:
        problems.append(f"SELECT granted: SELECT view: {e.sqlstate}")

    v.execute(sql.SQL("GRANT INSERT, UPDATE, DELETE ON public.shared TO {}").format(sql.Identifier(env.attacker)))
    expect("write granted: set_field", "SELECT eventic.set_field(%s, 'a', '2')", (rid,), (None,))
    expect("write granted: UPDATE view", "UPDATE public.shared SET a = 3 WHERE id = %s", (rid,), (None,))
    expect("write granted: create", "SELECT eventic.create('Shared', '{\"a\": 5}')", None, (None,))
    expect("write granted: INSERT view", "INSERT INTO public.shared (a) VALUES (6)", None, (None,))
    if one(env.pg, "SELECT data ->> 'a' FROM eventic.latest WHERE id = %s", (rid,)) != "3":
        problems.append("write granted: the record is not at a = 3")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# 9. tracked history forgery


def test_tracked_history_cannot_be_forged_by_a_reader_of_the_table(env):
    pg = env.pg
    pg.execute("CREATE TABLE public.t (id integer PRIMARY KEY, v text)")
    pg.execute("SELECT eventic.track('public.t')")
    pg.execute("INSERT INTO public.t VALUES (1, 'real')")
    pg.execute(sql.SQL("GRANT SELECT ON public.t TO {}").format(sql.Identifier(env.attacker)))
    rid = one(pg, "SELECT eventic.tracked_id('public.t', '1')")
    before = rows(pg, "SELECT version, data FROM eventic.history(%s)", (rid,))
    a = env.as_attacker()
    problems = []
    for call in ("SELECT eventic.set_field(eventic.tracked_id('public.t', '1'), 'v', '\"forged\"')",
                 "SELECT eventic.set_fields(eventic.tracked_id('public.t', '1'), '{\"v\": \"forged\"}')",
                 "SELECT eventic.delete(eventic.tracked_id('public.t', '1'))",
                 "UPDATE eventic.latest SET data = '{\"v\": \"forged\"}' WHERE id = eventic.tracked_id('public.t', '1')"):
        state, message = outcome(a, call)
        if state != DENIED and not call.startswith("UPDATE"):
            problems.append(f"{call}: {state or 'succeeded'} ({message})")
    after = rows(pg, "SELECT version, data FROM eventic.history(%s)", (rid,))
    if after != before:
        problems.append(f"history changed: {after[len(before):]}")
    try:
        read = rows(a, "SELECT version, data FROM eventic.history(eventic.tracked_id('public.t', '1'))")
        if read != after:
            problems.append(f"the attacker, who may SELECT the table, reads its history as {read}")
    except psycopg.Error as e:
        problems.append(f"the attacker, who may SELECT the table, cannot read its history: {e.sqlstate} {e}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# 10. jobs and workflow data


def test_jobs_and_workflow_data_of_another_role_invisible(env):
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.job(secret text) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim job') $$""")
    v.execute("""CREATE FUNCTION victim.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                 BEGIN
                     PERFORM eventic.set_event('k', '"secret-event"');
                     PERFORM eventic.recv('never', '1 hour');
                     RETURN input;
                 END $$""")
    v.execute("SELECT eventic.create_queue('vq')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.job(text)', '[\"secret-args-done\"]')")
    wait_until(lambda: one(env.pg, "SELECT count(*) FROM public.effects") > 0, timeout=8)
    v.execute("SELECT eventic.enqueue('vq', 'victim.job(text)', '[\"secret-args-waiting\"]',"
              " run_at => now() + interval '1 hour')")
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{\"secret\": \"input\"}', 'victim-wf')")
    wait_workflow_state(env.pg, "victim-wf", {"WAITING", "SUCCESS", "ERROR"})
    v.execute("SELECT eventic.send('victim-wf', 'other', '\"secret-message\"')")
    settle(env.pg)

    a = env.as_attacker()
    relations = ["eventic.queue_vq", "eventic.finished_jobs", "eventic.workflows", "eventic.workflow_runs",
                 "eventic.workflow_steps", "eventic.workflow_records", "eventic.workflow_messages",
                 "eventic.workflow_events"]
    leaks, own = {}, {}
    for relation in relations:
        try:
            n = one(env.pg, f"SELECT count(*) FROM {relation}")
        except psycopg.Error as e:      # a relation gone in a newer layout
            leaks[relation] = f"not readable by postgres: {e.sqlstate}"
            continue
        own[relation] = n
        try:
            seen = one(a, f"SELECT count(*) FROM {relation}")
        except psycopg.Error as e:
            if e.sqlstate != DENIED:
                leaks[relation] = f"{e.sqlstate} {e}"
            continue
        if seen:
            leaks[relation] = f"{seen} of the victim's {n} rows"
    assert all(own.get(r, 1) > 0 for r in relations), f"the victim's rows per relation (as postgres): {own}"
    # the victim sees its own
    for relation in ("eventic.queue_vq", "eventic.finished_jobs", "eventic.workflows", "eventic.workflow_steps"):
        try:
            if one(v, f"SELECT count(*) FROM {relation}") == 0:
                leaks[relation + " (victim)"] = "the victim does not see its own rows"
        except psycopg.Error as e:
            leaks[relation + " (victim)"] = f"the victim cannot read its own rows: {e.sqlstate}"
    assert not leaks, f"the attacker sees the victim's jobs and workflows: {leaks}"


def test_progress_and_metrics_of_another_role_invisible(env):
    """The victim's running job reports progress: the attacker sees none of it (eventic.progress,
    eventic.progress_rows) and counts none of the victim's jobs or workflows in eventic.metrics."""
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.slow(n integer) RETURNS void LANGUAGE plpgsql AS $$
                 BEGIN
                     FOR i IN 1..n LOOP
                         PERFORM eventic.set_progress(pg_catalog.jsonb_build_object('secret', i));
                         PERFORM pg_catalog.pg_sleep(0.2);
                     END LOOP;
                 END $$""")
    v.execute("""CREATE FUNCTION victim.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                 BEGIN RETURN eventic.recv('never', '1 hour'); END $$""")
    v.execute("SELECT eventic.create_queue('vq')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.slow(integer)', '[40]')")
    v.execute("SELECT eventic.enqueue('vq', 'victim.slow(integer)', '[1]', run_at => now() + interval '1 hour')")
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{}', 'victim-wf')")
    assert wait_until(lambda: one(v, "SELECT count(*) FROM eventic.progress") == 1, timeout=10)
    wait_workflow_state(env.pg, "victim-wf", {"WAITING"})
    a = env.as_attacker()
    assert one(env.pg, "SELECT count(*) FROM eventic.progress") == 1
    assert one(a, "SELECT count(*) FROM eventic.progress") == 0
    assert one(a, "SELECT count(*) FROM eventic.progress_rows()") == 0
    # the victim sees its own numbers; the attacker the queue with nothing in it
    mine = dict(rows(v, "SELECT name, value FROM eventic.metrics WHERE labels IN ('{\"queue\": \"vq\"}', '{\"status\": \"WAITING\"}')"))
    seen = dict(rows(a, "SELECT name, value FROM eventic.metrics WHERE labels IN ('{\"queue\": \"vq\"}', '{\"status\": \"WAITING\"}')"))
    assert mine["eventic_queue_scheduled"] == 1 and mine["eventic_workflows_count"] == 1
    assert seen["eventic_queue_scheduled"] == 0 and seen["eventic_workflows_count"] == 0
    assert seen["eventic_queue_ready"] == 0 and seen["eventic_queue_done_last_minute"] == 0


# ---------------------------------------------------------------------------------------------
# 11. dedup keys, 12. workflow ids


def test_dedup_key_of_another_role_does_not_swallow_the_job(env):
    env.pg.execute("SELECT eventic.create_queue('shared')")
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim job') $$""")
    queue = "shared"
    if sqlstate(v, "SELECT eventic.enqueue('shared', 'victim.job(integer)', '[1]', dedup_key => 'k',"
                   " run_at => now() + interval '1 hour')") == DENIED:
        queue = "vshared"          # enqueue into postgres's queue is refused: the victim's own queue
        v.execute("SELECT eventic.create_queue('vshared')")
        v.execute("SELECT eventic.enqueue('vshared', 'victim.job(integer)', '[1]', dedup_key => 'k',"
                  " run_at => now() + interval '1 hour')")
    victim_job = one(env.pg, f"SELECT job_id FROM eventic.queue_{queue} WHERE dedup_key = 'k'")
    a = env.as_attacker()
    a.execute("""CREATE FUNCTION attacker.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'attacker job') $$""")
    a.execute("GRANT USAGE ON SCHEMA attacker TO PUBLIC")
    try:
        attacker_job = one(a, f"SELECT eventic.enqueue('{queue}', 'attacker.job(integer)', '[2]', dedup_key => 'k')")
    except psycopg.Error as e:
        assert e.sqlstate == DENIED, f"enqueue with the victim's dedup_key: {e.sqlstate} {e}"
        return
    ran = wait_until(lambda: one(env.pg, "SELECT count(*) FROM public.effects WHERE what = 'attacker job'") > 0,
                     timeout=6)
    still = one(env.pg, f"SELECT count(*) FROM eventic.queue_{queue} WHERE job_id = %s", (victim_job,))
    assert attacker_job != victim_job and ran and still == 1, (
        f"the attacker's enqueue with dedup_key 'k' returned job {attacker_job} (the victim's is {victim_job}); "
        f"the attacker's job ran: {ran}; the victim's job still waiting: {still}")


def test_workflow_id_of_another_role_is_refused(env):
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
                 BEGIN RETURN eventic.recv('go', '1 hour'); END $$""")
    v.execute("SELECT eventic.start_workflow('victim.flow(jsonb)', '{\"secret\": 1}', 'w-shared')")
    a = env.as_attacker()
    a.execute("""CREATE FUNCTION attacker.flow(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$""")
    a.execute("GRANT USAGE ON SCHEMA attacker TO PUBLIC")
    try:
        got = one(a, "SELECT eventic.start_workflow('attacker.flow(jsonb)', '{}', 'w-shared')")
        state = None
    except psycopg.Error as e:
        got, state = None, e.sqlstate
    assert state == DENIED, f"start_workflow with the victim's workflow id: {state or 'returned ' + repr(got)}"


def _victim_external(env):
    """The victim's external workflow 'victim-ext', claimed by the victim's runner (lease 1)."""
    v = env.as_victim()
    v.execute("SELECT eventic.start_external_workflow('v.body', '{\"secret\": 1}', 'victim-ext')")
    lease = one(v, "SELECT lease FROM eventic.claim_workflows(NULL, 1, '1 minute')")
    return v, lease


EXTERNAL_CALLS = {
    "record_step": "SELECT eventic.record_step('victim-ext', 1, 0, 's', 'step', '\"forged\"')",
    "workflow_sleep": "SELECT eventic.workflow_sleep('victim-ext', 1, 0, '1 day')",
    "workflow_recv": "SELECT * FROM eventic.workflow_recv('victim-ext', 1, 0, 'go', '1 day')",
    "workflow_set_event": "SELECT eventic.workflow_set_event('victim-ext', 1, 0, 'k', '\"forged\"')",
    "finish_workflow": "SELECT eventic.finish_workflow('victim-ext', 1, '\"forged\"')",
    "extend_workflow_lease": "SELECT eventic.extend_workflow_lease('victim-ext', 1, '1 day')",
    "start_external_workflow": "SELECT eventic.start_external_workflow('a.body', '{}', 'victim-ext')",
}


@pytest.mark.parametrize("call", list(EXTERNAL_CALLS))
def test_external_workflow_of_another_role_refused(env, call):
    """A runner's calls by the attacker on the victim's external workflow (with the victim's
    lease number, which is guessable): 42501; the victim's runner then goes on undisturbed."""
    v, lease = _victim_external(env)
    assert lease == 1
    a = env.as_attacker()
    state, message = outcome(a, EXTERNAL_CALLS[call])
    v.execute("SELECT eventic.record_step('victim-ext', %s, 0, 's', 'step', '\"mine\"')", (lease,))
    v.execute("SELECT eventic.finish_workflow('victim-ext', %s, '\"ok\"')", (lease,))
    output = one(v, "SELECT eventic.wait_workflow('victim-ext', '0 seconds')")
    steps = rows(v, "SELECT position, kind, output FROM eventic.workflow_steps WHERE workflow_id = 'victim-ext'")
    events = one(env.pg, "SELECT count(*) FROM eventic.workflow_events WHERE workflow_id = 'victim-ext'")
    assert state == DENIED and output == "ok" and steps == [(0, "step", "mine")] and events == 0, (
        f"{call} on the victim's external workflow by the attacker: {state or 'succeeded'} ({message}); "
        f"output {output}, steps {steps}, events {events}")


def test_claim_workflows_takes_only_the_callers_own(env):
    """Neither another role nor a superuser claims (and so runs with its own rights) the
    victim's external workflows; releasing the victim's lease does nothing."""
    v = env.as_victim()
    v.execute("SELECT eventic.start_external_workflow('v.body', '{}', 'victim-ext')")
    a = env.as_attacker()
    a.execute("SELECT eventic.start_external_workflow('v.body', '{}', 'attacker-ext')")
    assert [r[0] for r in rows(a, "SELECT workflow_id FROM eventic.claim_workflows(NULL, 10)")] == ["attacker-ext"]
    assert rows(a, "SELECT * FROM eventic.claim_workflows(ARRAY['v.body'], 10, '1 minute', 'victim-ext')") == []
    assert rows(env.pg, "SELECT * FROM eventic.claim_workflows(NULL, 10)") == []
    assert rows(a, "SELECT workflow_id FROM eventic.workflows") == [("attacker-ext",)]
    lease = one(v, "SELECT lease FROM eventic.claim_workflows(NULL, 10)")
    a.execute("SELECT eventic.release_workflow('victim-ext', %s)", (lease,))
    assert one(env.pg, "SELECT leased_until > now() FROM eventic.workflow_runs WHERE workflow_id = 'victim-ext'")
    assert rows(v, "SELECT * FROM eventic.claim_workflows(NULL, 10)") == []   # still the victim's lease


def test_external_workflow_is_never_run_by_the_worker(env):
    """An external body has no SQL function: the worker does not touch it; it stays ENQUEUED
    until a runner of its role claims it."""
    v = env.as_victim()
    v.execute("SELECT eventic.start_external_workflow('v.body', '{}', 'victim-ext')")
    time.sleep(1.0)
    assert one(v, "SELECT eventic.workflow_status('victim-ext')") == "ENQUEUED"
    assert one(env.pg, "SELECT coalesce(sum(ready + scheduled + running), 0) FROM eventic.queue_stats") == 0
    assert one(v, "SELECT name FROM eventic.workflows") == "v.body"

def test_schedules_of_another_role_are_invisible_and_untouchable(env):
    """The attacker sees none of the victim's schedules (view or table), cannot remove them
    (42704, as if they did not exist) nor take over their name (42501); the victim's ticks
    run as the victim."""
    v = env.as_victim()
    v.execute("""CREATE FUNCTION victim.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'victim-tick') $$""")
    v.execute("SELECT eventic.schedule('nightly', '* * * * * *', 'victim.job(integer)', '[7]')")
    a = env.as_attacker(trapped=True)
    a.execute("""CREATE FUNCTION attacker.job(n integer) RETURNS void LANGUAGE sql
                 AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'attacker-tick') $$""")
    problems = []
    seen = (one(a, "SELECT count(*) FROM eventic.schedules"),
            one(a, "SELECT count(*) FROM eventic.schedule_entries"))
    if seen != (0, 0):
        problems.append(f"the attacker sees the victim's schedules (view, table): {seen}")
    state = sqlstate(a, "SELECT eventic.unschedule('nightly')")
    if state != UNDEFINED:
        problems.append(f"unschedule of the victim's schedule: {state or 'succeeded'}")
    state = sqlstate(a, "SELECT eventic.schedule('nightly', '* * * * * *', 'attacker.job(integer)', '[1]')")
    if state != DENIED:
        problems.append(f"schedule with the victim's schedule name: {state or 'succeeded'}")
    if state is None:
        a.execute("SELECT eventic.unschedule('nightly')")
    wait_until(lambda: one(env.pg, "SELECT count(*) FROM public.effects") >= 2, timeout=6, interval=0.1)
    ran = rows(env.pg, "SELECT who::text, what, count(*) FROM public.effects GROUP BY 1, 2 ORDER BY 1, 2")
    if [(who, what) for who, what, _ in ran] != [(env.victim, "victim-tick")]:
        problems.append(f"ticks after the attack (role, what, count): {ran}")
    if one(env.pg, "SELECT owner::text FROM eventic.schedules WHERE name = 'nightly'") != env.victim:
        problems.append("the victim's schedule changed hands")
    assert_no_trap_crossed(env.pg, env.attacker, "schedules of another role")
    assert not problems, "\n".join(problems)


def test_schedule_needs_execute_and_each_tick_checks_it_again(env):
    """A schedule of a function the role may not EXECUTE is refused (42501); a schedule whose
    EXECUTE is revoked afterwards runs no more ticks (each tick is enqueued as its owner)."""
    pg = env.pg
    pg.execute("""CREATE FUNCTION public.guarded(n integer) RETURNS void LANGUAGE sql
                  AS $$ INSERT INTO public.effects (who, what) VALUES (current_user, 'guarded') $$""")
    pg.execute("REVOKE EXECUTE ON FUNCTION public.guarded(integer) FROM PUBLIC")
    a = env.as_attacker()
    problems = []
    state = sqlstate(a, "SELECT eventic.schedule('g', '* * * * * *', 'public.guarded(integer)', '[1]')")
    if state != DENIED:
        problems.append(f"schedule without EXECUTE: {state or 'succeeded'}")
    pg.execute(sql.SQL("GRANT EXECUTE ON FUNCTION public.guarded(integer) TO {}").format(sql.Identifier(env.attacker)))
    a.execute("SELECT eventic.schedule('g', '* * * * * *', 'public.guarded(integer)', '[1]')")
    if not wait_until(lambda: one(pg, "SELECT count(*) FROM public.effects") >= 1, timeout=5, interval=0.1):
        problems.append("the granted schedule did not run")
    pg.execute(sql.SQL("REVOKE EXECUTE ON FUNCTION public.guarded(integer) FROM {}").format(sql.Identifier(env.attacker)))
    time.sleep(0.5)   # a job enqueued before the REVOKE may still run (and fail)
    before = one(pg, "SELECT count(*) FROM public.effects")
    time.sleep(2.5)
    after = one(pg, "SELECT count(*) FROM public.effects")
    if after != before:
        problems.append(f"{after - before} ticks ran after EXECUTE was revoked")
    who = rows(pg, "SELECT DISTINCT who::text FROM public.effects")
    if who not in ([(env.attacker,)], []):
        problems.append(f"ticks ran as {who}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# 13. DROP ROLE and ownership by OID


OWNED = {
    "class": ("SELECT eventic.register_class('Owned')",
              ["SELECT eventic.register_class('Owned', '{}')", "SELECT eventic.drop_class('Owned')"],
              (DENIED, UNDEFINED)),
    "queue": ("SELECT eventic.create_queue('owned')",
              ["SELECT eventic.alter_queue('owned', paused => true)", "SELECT eventic.drop_queue('owned')"],
              (DENIED, UNDEFINED)),
    "schedule": ("SELECT eventic.schedule('owned-s', '0 0 1 1 *', 'public.owned_flow(jsonb)', '{}', workflow => true)",
                 ["SELECT eventic.unschedule('owned-s')"],
                 (DENIED, UNDEFINED)),
    "workflow": ("SELECT eventic.start_workflow('public.owned_flow(jsonb)', '{}', 'owned-wf')",
                 ["SELECT eventic.cancel_workflow('owned-wf')", "SELECT eventic.send('owned-wf', 'go', '1')"],
                 (DENIED, NO_DATA)),
}


@pytest.mark.parametrize("kind", list(OWNED))
def test_drop_role_refused_while_it_owns_and_ownership_is_by_oid(env, kind):
    """A role that owns a class, a queue or a workflow (and no Postgres object): DROP ROLE is
    refused (2BP01). After DROP OWNED BY + DROP ROLE, a new role of the same name may not alter
    or drop what the old one owned (42501; or it is gone)."""
    role = f"sec_{env.tag}_owner"
    env.create_role(role)
    pg = env.pg
    pg.execute("""CREATE FUNCTION public.owned_flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql
                  AS $$ BEGIN RETURN eventic.recv('go', '1 hour'); END $$""")
    create, attempts, accepted = OWNED[kind]
    r = env.connect(role)
    r.execute(create)
    r.close()
    if kind == "workflow":
        wait_workflow_state(pg, "owned-wf", {"WAITING", "SUCCESS", "ERROR"})
    problems = []
    drop = sql.SQL("DROP ROLE {}").format(sql.Identifier(role))
    state, message = outcome(pg, drop)
    if state != DEPENDENT:
        problems.append(f"DROP ROLE of a role that owns a {kind}: {state or 'succeeded'} ({message})")
    dropped = state is None
    if not dropped:
        state, message = outcome(pg, sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        if state is None:
            state, message = outcome(pg, drop)
        dropped = state is None
        if not dropped:
            problems.append(f"DROP OWNED BY + DROP ROLE: {state} ({message})")
    if dropped:
        pg.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))   # the same name, a new role
        new = env.connect(role)
        for attempt in attempts:
            state, message = outcome(new, attempt)
            if state not in accepted:
                problems.append(f"a new role with the dropped role's name: {attempt}: {state or 'succeeded'} ({message})")
    assert not problems, "\n".join(problems)
