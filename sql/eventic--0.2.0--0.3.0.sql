-- Upgrade eventic 0.2.0 -> 0.3.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.3.0'" to load this file. \quit

-- Same rules as eventic--0.1.0--0.2.0.sql: scripts/schema-diff installs 0.1.0 and updates it
-- through every script (0.1.0 -> 0.2.0 -> 0.3.0), compares it with a fresh install and prints
-- what differs; tests/test_upgrade.py checks that nothing does. Changed functions with CREATE OR
-- REPLACE, changed tables with ALTER TABLE, new objects with their comments and grants.
-- Everything here can run twice.

LOCK TABLE eventic.queues IN ACCESS EXCLUSIVE MODE;

-- ---------------------------------------------------------------------------------------------
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
