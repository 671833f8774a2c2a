-- Upgrade eventic 0.2.0 -> 0.3.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.3.0'" to load this file. \quit

-- Same rules as eventic--0.1.0--0.2.0.sql: scripts/schema-diff installs 0.1.0 and updates it
-- through every script (0.1.0 -> 0.2.0 -> 0.3.0), compares it with a fresh install and prints
-- what differs; tests/test_upgrade.py checks that nothing does. Changed functions with CREATE OR
-- REPLACE, changed tables with ALTER TABLE, new objects with their comments and grants.
-- Everything here can run twice.

LOCK TABLE eventic.queues IN ACCESS EXCLUSIVE MODE;

-- =============================================================================================
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
