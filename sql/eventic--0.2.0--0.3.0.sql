-- Upgrade eventic 0.2.0 -> 0.3.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.3.0'" to load this file. \quit

-- Same rules as eventic--0.1.0--0.2.0.sql: scripts/schema-diff installs 0.1.0 and updates it
-- through every script (0.1.0 -> 0.2.0 -> 0.3.0), compares it with a fresh install and prints
-- what differs; tests/test_upgrade.py checks that nothing does. Changed functions with CREATE OR
-- REPLACE, changed tables with ALTER TABLE, new objects with their comments and grants.
-- Everything here can run twice.

LOCK TABLE eventic.queues IN ACCESS EXCLUSIVE MODE;

-- ---------------------------------------------------------------------------------------------
-- Issue 16, items 3-6 (operations): progress of running jobs (eventic.set_progress, the view
-- eventic.progress), workflow evolution (eventic.patched), eventic.metrics, and the index the
-- pruning of finished workflows (eventic.workflow_retention) walks.

CREATE OR REPLACE FUNCTION eventic.patched("name" text) RETURNS boolean
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'patched_wrapper';
COMMENT ON FUNCTION eventic.patched(text) IS 'Inside a workflow: true if this run reaches the patch for the first time (recorded), false if it passed this point before the patch existed';

CREATE OR REPLACE FUNCTION eventic.set_progress(progress jsonb) RETURNS void
VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'set_progress_wrapper';
COMMENT ON FUNCTION eventic.set_progress(jsonb) IS 'Inside a job or a workflow step: show progress to other sessions now (eventic.progress), with the time (a heartbeat)';

CREATE OR REPLACE FUNCTION eventic.progress_rows()
RETURNS TABLE (pid integer, role oid, detail jsonb, started_us bigint, updated_us bigint)
STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'progress_rows_wrapper';
COMMENT ON FUNCTION eventic.progress_rows() IS 'What eventic.progress shows: the progress of running jobs that run as a role the caller has the privileges of';

CREATE OR REPLACE FUNCTION eventic.worker_liveness() RETURNS TABLE (workers integer, launcher_up boolean)
STRICT VOLATILE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'worker_liveness_wrapper';
COMMENT ON FUNCTION eventic.worker_liveness() IS 'How many eventic workers are connected to this database, and whether the launcher runs (for eventic.metrics)';

CREATE OR REPLACE VIEW eventic.progress AS
SELECT p.detail ->> 'queue_name' AS queue_name,
       (p.detail ->> 'job_id')::bigint AS job_id,
       p.detail ->> 'workflow_id' AS workflow_id,
       (p.detail ->> 'step_position')::integer AS step_position,
       p.detail ->> 'step_name' AS step_name,
       p.detail -> 'progress' AS progress,
       p.role::regrole AS run_as,
       p.pid,
       timestamptz '2000-01-01 00:00:00+00' + p.started_us * interval '1 microsecond' AS started_at,
       timestamptz '2000-01-01 00:00:00+00' + p.updated_us * interval '1 microsecond' AS updated_at
  FROM eventic.progress_rows() p;
COMMENT ON VIEW eventic.progress IS
  'Running jobs and workflow steps that called eventic.set_progress: their last progress and when (a heartbeat)';
GRANT SELECT ON eventic.progress TO PUBLIC;

CREATE OR REPLACE VIEW eventic.metrics AS
WITH queues AS MATERIALIZED (SELECT * FROM eventic.queue_stats)
SELECT m.name, pg_catalog.jsonb_build_object('queue', q.queue_name) AS labels, m.value
  FROM queues q,
       LATERAL (VALUES
           ('eventic_queue_ready', q.ready::float8),
           ('eventic_queue_scheduled', q.scheduled::float8),
           ('eventic_queue_running', q.running::float8),
           ('eventic_queue_dead', q.dead::float8),
           ('eventic_queue_done_last_minute', q.done_last_minute::float8),
           ('eventic_queue_oldest_ready_seconds',
            coalesce(extract(epoch FROM q.oldest_ready_age), 0)::float8),
           ('eventic_queue_paused', CASE WHEN q.paused THEN 1 ELSE 0 END::float8),
           ('eventic_queue_concurrency', q.concurrency::float8)) AS m(name, value)
UNION ALL
SELECT 'eventic_workflows_count', pg_catalog.jsonb_build_object('status', s.status),
       count(w.status)::float8
  FROM (VALUES ('ENQUEUED'), ('RUNNING'), ('SLEEPING'), ('WAITING'),
               ('SUCCESS'), ('ERROR'), ('CANCELLED')) AS s(status)
  LEFT JOIN eventic.workflows w ON w.status = s.status
 GROUP BY s.status
UNION ALL
-- from the workers' shared board: pg_stat_activity hides other roles' backend types
SELECT v.name, '{}'::jsonb, v.value
  FROM eventic.worker_liveness() l,
       LATERAL (VALUES ('eventic_workers', l.workers::float8),
                       ('eventic_launcher_up', CASE WHEN l.launcher_up THEN 1 ELSE 0 END::float8)) AS v(name, value);
COMMENT ON VIEW eventic.metrics IS
  'Monitoring metrics (name, labels, value): queue depths and rates, dead jobs, workflows by status, workers running';
GRANT SELECT ON eventic.metrics TO PUBLIC;

-- what eventic.workflow_retention removes, oldest first
CREATE INDEX IF NOT EXISTS workflow_runs_finished ON eventic.workflow_runs (updated_at)
 WHERE status IN ('SUCCESS', 'ERROR', 'CANCELLED');

-- Dashboard (issue 15): indexes for its paginated lists of finished jobs and workflows.
CREATE INDEX IF NOT EXISTS finished_batches_by_queue ON eventic.finished_batches (queue_name, finished_at);
CREATE INDEX IF NOT EXISTS workflow_runs_by_time ON eventic.workflow_runs (created_at, workflow_id);
CREATE INDEX IF NOT EXISTS workflow_runs_by_status ON eventic.workflow_runs (status, created_at, workflow_id);
CREATE INDEX IF NOT EXISTS workflow_runs_by_fn ON eventic.workflow_runs (fn, created_at, workflow_id);

-- ======================================================================================
-- Workflows with external bodies (Python): start_external_workflow, claim_workflows (leases),
-- record_step, workflow_sleep/recv/set_event, finish_workflow, extend_workflow_lease,
-- release_workflow. workflow_runs gets the body's name, next_run_at and the lease columns;
-- fn may be NULL (an external body has none).

ALTER TABLE eventic.workflow_runs
    ALTER fn DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS external_body text,
    ADD COLUMN IF NOT EXISTS next_run_at timestamptz,
    ADD COLUMN IF NOT EXISTS leased_until timestamptz,
    ADD COLUMN IF NOT EXISTS lease bigint NOT NULL DEFAULT 0;
ALTER TABLE eventic.workflow_runs DROP CONSTRAINT IF EXISTS workflow_runs_one_body;
ALTER TABLE eventic.workflow_runs
    ADD CONSTRAINT workflow_runs_one_body CHECK ((fn IS NULL) <> (external_body IS NULL));
CREATE INDEX IF NOT EXISTS workflow_runs_runnable ON eventic.workflow_runs (started_by, next_run_at)
    WHERE next_run_at IS NOT NULL;

CREATE OR REPLACE VIEW eventic.workflows WITH (security_barrier) AS
SELECT w.workflow_id, coalesce(w.external_body, w.fn::regproc::text) AS name, w.status, w.input, w.output, w.error,
       w.queue_name, w.started_by, w.parent_id, w.deadline,
       w.created_at, w.updated_at
  FROM eventic.workflow_runs w
 -- the view reads as its owner: each role sees the workflows it started
 WHERE pg_catalog.pg_has_role(w.started_by, 'USAGE');

CREATE OR REPLACE FUNCTION eventic."start_external_workflow"(
	"name" TEXT, /* Option < & str > */
	"input" jsonb DEFAULT '{}', /* Option < RawJsonb > */
	"workflow_id" TEXT DEFAULT NULL, /* Option < & str > */
	"timeout" interval DEFAULT NULL /* Option < Interval > */
) RETURNS TEXT /* String */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'start_external_workflow_wrapper';

CREATE OR REPLACE FUNCTION eventic."claim_workflows"(
	"names" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < String > > > */
	"batch" INT DEFAULT 1, /* Option < i32 > */
	"duration" interval DEFAULT '30 seconds', /* Option < Interval > */
	"only" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"workflow_id" TEXT,  /* String */
	"name" TEXT,  /* String */
	"input" jsonb,  /* JsonB */
	"lease" bigint,  /* i64 */
	"steps" jsonb  /* JsonB */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claim_workflows_wrapper';

CREATE OR REPLACE FUNCTION eventic."record_step"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"position" INT, /* Option < i32 > */
	"name" TEXT, /* Option < & str > */
	"kind" TEXT DEFAULT 'step', /* Option < & str > */
	"output" jsonb DEFAULT NULL, /* Option < RawJsonb > */
	"error" TEXT DEFAULT NULL, /* Option < & str > */
	"attempts" INT DEFAULT 1 /* Option < i32 > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'record_step_wrapper';

CREATE OR REPLACE FUNCTION eventic."workflow_sleep"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"position" INT, /* Option < i32 > */
	"duration" interval /* Option < Interval > */
) RETURNS double precision /* f64 */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'workflow_sleep_wrapper';

CREATE OR REPLACE FUNCTION eventic."workflow_recv"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"position" INT, /* Option < i32 > */
	"topic" TEXT, /* Option < & str > */
	"timeout" interval DEFAULT '1 minute' /* Option < Interval > */
) RETURNS TABLE (
	"received" bool,  /* bool */
	"message" jsonb  /* Option < JsonB > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'workflow_recv_wrapper';

CREATE OR REPLACE FUNCTION eventic."workflow_set_event"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"position" INT, /* Option < i32 > */
	"key" TEXT, /* Option < & str > */
	"value" jsonb /* Option < RawJsonb > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'workflow_set_event_wrapper';

CREATE OR REPLACE FUNCTION eventic."finish_workflow"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"output" jsonb DEFAULT NULL, /* Option < RawJsonb > */
	"error" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'finish_workflow_wrapper';

CREATE OR REPLACE FUNCTION eventic."extend_workflow_lease"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint, /* Option < i64 > */
	"duration" interval DEFAULT '30 seconds' /* Option < Interval > */
) RETURNS timestamp with time zone /* TimestampWithTimeZone */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'extend_workflow_lease_wrapper';

CREATE OR REPLACE FUNCTION eventic."release_workflow"(
	"workflow_id" TEXT, /* Option < & str > */
	"lease" bigint /* Option < i64 > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'release_workflow_wrapper';

COMMENT ON FUNCTION eventic.start_external_workflow(text, jsonb, text, interval) IS 'Start a workflow whose body (by name) runs in an external runner (the Python package); returns its id';
COMMENT ON FUNCTION eventic.claim_workflows(text[], integer, interval, text) IS 'External runners: lease runnable workflows of the current role, with their recorded steps';
COMMENT ON FUNCTION eventic.record_step(text, bigint, integer, text, text, jsonb, text, integer) IS 'External runners: record a step of a held workflow (with its effects, in one transaction)';
COMMENT ON FUNCTION eventic.workflow_sleep(text, bigint, integer, interval) IS 'External runners: a durable sleep; returns the seconds left (0: go on; more: the workflow sleeps, lease released)';
COMMENT ON FUNCTION eventic.workflow_recv(text, bigint, integer, text, interval) IS 'External runners: receive a message, or release the workflow to wait for it';
COMMENT ON FUNCTION eventic.workflow_set_event(text, bigint, integer, text, jsonb) IS 'External runners: publish an event as a step';
COMMENT ON FUNCTION eventic.finish_workflow(text, bigint, jsonb, text) IS 'External runners: end a held workflow with its output or error';
COMMENT ON FUNCTION eventic.extend_workflow_lease(text, bigint, interval) IS 'External runners: keep holding a workflow longer';
COMMENT ON FUNCTION eventic.release_workflow(text, bigint) IS 'External runners: give a held workflow back (runnable again at once)';
-- Issue 16, items 1-2: rate limits of queues and cron schedules (sql/queues.sql,
-- sql/schedules.sql).

ALTER TABLE eventic.queues
    ADD COLUMN IF NOT EXISTS rate_limit  integer  CHECK (rate_limit > 0),
    ADD COLUMN IF NOT EXISTS rate_period interval CHECK (rate_period > interval '0');

-- alter_queue gains rate_limit and rate_period (the old 4-argument symbol stays in the library
-- for databases not yet updated)
DROP FUNCTION IF EXISTS eventic.alter_queue(text, integer, boolean, boolean);
CREATE OR REPLACE FUNCTION eventic.alter_queue(queue_name text, concurrency integer DEFAULT NULL,
                                    paused boolean DEFAULT NULL, worker boolean DEFAULT NULL,
                                    rate_limit integer DEFAULT NULL, rate_period interval DEFAULT NULL)
RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'alter_queue_with_rate_wrapper';
COMMENT ON FUNCTION eventic.alter_queue(text, integer, boolean, boolean, integer, interval) IS 'Change a queue''s concurrency, paused and worker flags, and its rate limit (rate_limit jobs start per rate_period at most; 0 removes it)';

CREATE TABLE IF NOT EXISTS eventic.schedule_entries (
    name         text         PRIMARY KEY CHECK (name <> ''),
    cron         text         NOT NULL,
    timezone     text         NOT NULL DEFAULT 'UTC',
    fn           regprocedure NOT NULL,
    args         jsonb        NOT NULL DEFAULT '[]',
    queue_name   text,        -- NULL: a workflow's default queue
    workflow     boolean      NOT NULL DEFAULT false,
    skip_missed  boolean      NOT NULL DEFAULT false,  -- skip ticks missed while the server was down
    owner        regrole      NOT NULL,  -- ticks run as this role
    next_run     timestamptz  NOT NULL,  -- the next tick not yet enqueued
    last_run     timestamptz,            -- the tick enqueued last
    created_at   timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS schedule_entries_next_run ON eventic.schedule_entries (next_run);
COMMENT ON TABLE eventic.schedule_entries IS
  'Cron schedules; read eventic.schedules, change with eventic.schedule / eventic.unschedule';
SELECT pg_catalog.pg_extension_config_dump('eventic.schedule_entries', '');
ALTER TABLE eventic.schedule_entries ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS schedules_visible ON eventic.schedule_entries;
CREATE POLICY schedules_visible ON eventic.schedule_entries FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'USAGE'));
GRANT SELECT ON eventic.schedule_entries TO PUBLIC;

CREATE OR REPLACE VIEW eventic.schedules WITH (security_barrier) AS
SELECT s.name, s.cron, s.next_run, s.last_run, s.owner, s.timezone, s.fn, s.args,
       s.queue_name, s.workflow, s.skip_missed, s.created_at
  FROM eventic.schedule_entries s
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');
COMMENT ON VIEW eventic.schedules IS
  'The cron schedules of the calling role (all of them for a superuser): next and last tick';
GRANT SELECT ON eventic.schedules TO PUBLIC;

CREATE OR REPLACE FUNCTION eventic.schedule(name text, cron text, fn regprocedure, args jsonb DEFAULT '[]',
                                 queue text DEFAULT NULL, workflow boolean DEFAULT false,
                                 timezone text DEFAULT 'UTC', skip_missed boolean DEFAULT false)
RETURNS timestamptz LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'schedule_wrapper';
COMMENT ON FUNCTION eventic.schedule(text, text, regprocedure, jsonb, text, boolean, text, boolean) IS
  'Call fn(args) at every tick of a cron pattern (5 fields, or 6 with seconds) as a job on queue (default: schedules) or as a workflow, as the calling role; returns the first tick';

CREATE OR REPLACE FUNCTION eventic.unschedule(name text) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'unschedule_wrapper';
COMMENT ON FUNCTION eventic.unschedule(text) IS 'Remove a schedule of the calling role';
-- Scale-out on Citus (issue 17): eventic.distribute() and the write a coordinator ships to the
-- node holding a record (sql/citus.sql).
CREATE OR REPLACE FUNCTION eventic._write_on_shard(id uuid, op text, class_type text, fields jsonb,
                                                   removed text[], props jsonb, props_removed text[],
                                                   tombstone boolean, expected integer, revive boolean)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET citus.allow_nested_distributed_execution = on
AS 'MODULE_PATHNAME', 'write_on_shard_wrapper';
COMMENT ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) IS
  'Internal (Citus): one write of a record, run on the node holding it; returns its version and outbox event';
REVOKE ALL ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) FROM PUBLIC;
CREATE OR REPLACE FUNCTION eventic.distribute(shard_count integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn regprocedure;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION 'permission denied to distribute eventic'
            USING ERRCODE = '42501', HINT = 'Run eventic.distribute() as a superuser, on the Citus coordinator.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in database %', pg_catalog.current_database()
            USING ERRCODE = '0A000',
                  HINT = 'Add citus first to shared_preload_libraries (''citus,eventic''), run CREATE EXTENSION citus on every node and add the workers with citus_add_node, then call eventic.distribute() on the coordinator.';
    END IF;
    IF NOT (SELECT pg_catalog.citus_is_coordinator()) THEN
        RAISE EXCEPTION 'eventic.distribute() must run on the Citus coordinator'
            USING ERRCODE = '0A000',
                  HINT = 'Connect to the coordinator (SELECT citus_set_coordinator_host(...) registers it) and run it there.';
    END IF;
    -- The write a coordinator ships to the node holding a record: Citus runs it there as the
    -- calling role, which must be allowed to. Granted only here, on every node, so that a
    -- single server keeps every internal function closed to PUBLIC.
    GRANT EXECUTE ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) TO PUBLIC;
    PERFORM pg_catalog.run_command_on_workers(
        'GRANT EXECUTE ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) TO PUBLIC');
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'eventic.records'::regclass) THEN
        RETURN;  -- done already
    END IF;
    -- the guard and redirect triggers of eventic.records run on its shards
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- Classes on every node: the row-level security of records and the JSON Schema check run
    -- where the record is. Queues stay on the coordinator (its background worker runs them),
    -- so the registry no longer references them.
    ALTER TABLE eventic.classes DROP CONSTRAINT IF EXISTS classes_queue_name_fkey;
    PERFORM pg_catalog.create_reference_table('eventic.classes');
    PERFORM pg_catalog.create_distributed_table('eventic.records', 'id',
                                                shard_count => shard_count);
    -- reads run where the record is (Citus delegates a call made outside a transaction
    -- block); writes are shipped there by eventic itself (eventic._write_on_shard)
    FOREACH fn IN ARRAY ARRAY['eventic.hydrate(uuid,integer)', 'eventic.hydrate_as_of(uuid,timestamptz)',
                              'eventic.history(uuid)', 'eventic.diff(uuid,integer,integer)',
                              'eventic.list_properties(uuid)']::regprocedure[] LOOP
        PERFORM pg_catalog.create_distributed_function(fn, 'id', colocate_with => 'eventic.records');
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION eventic.distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION eventic.distribute(integer) IS
  'Citus: distribute eventic.records by id over the workers (classes become a reference table; queues and workflows stay on the coordinator)';
