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
