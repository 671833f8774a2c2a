-- Upgrade eventic 0.2.0 -> 0.3.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.3.0'" to load this file. \quit

-- Same rules as eventic--0.1.0--0.2.0.sql: scripts/schema-diff installs 0.1.0 and updates it
-- through every script (0.1.0 -> 0.2.0 -> 0.3.0), compares it with a fresh install and prints
-- what differs; tests/test_upgrade.py checks that nothing does. Changed functions with CREATE OR
-- REPLACE, changed tables with ALTER TABLE, new objects with their comments and grants.
-- Everything here can run twice.

LOCK TABLE eventic.queues IN ACCESS EXCLUSIVE MODE;

-- Dashboard (issue 15): indexes for its paginated lists of finished jobs and workflows.
CREATE INDEX IF NOT EXISTS finished_batches_by_queue ON eventic.finished_batches (queue_name, finished_at);
CREATE INDEX IF NOT EXISTS workflow_runs_by_time ON eventic.workflow_runs (created_at, workflow_id);
CREATE INDEX IF NOT EXISTS workflow_runs_by_status ON eventic.workflow_runs (status, created_at, workflow_id);
CREATE INDEX IF NOT EXISTS workflow_runs_by_fn ON eventic.workflow_runs (fn, created_at, workflow_id);
