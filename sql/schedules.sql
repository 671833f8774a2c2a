-- Cron schedules (src/schedules.rs): every tick of `cron` in `timezone`, fn(args) is enqueued
-- on `queue_name` (or started as a workflow) as `owner`, by a worker, exactly once. Names
-- are shared by all roles of the database; each role sees and removes its own schedules.
CREATE TABLE eventic.schedule_entries (
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
CREATE INDEX schedule_entries_next_run ON eventic.schedule_entries (next_run);
COMMENT ON TABLE eventic.schedule_entries IS
  'Cron schedules; read eventic.schedules, change with eventic.schedule / eventic.unschedule';
SELECT pg_catalog.pg_extension_config_dump('eventic.schedule_entries', '');
-- written by eventic as the extension owner only; each role reads its own rows
ALTER TABLE eventic.schedule_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY schedules_visible ON eventic.schedule_entries FOR SELECT
    USING (pg_catalog.pg_has_role(owner, 'USAGE'));
GRANT SELECT ON eventic.schedule_entries TO PUBLIC;

CREATE VIEW eventic.schedules WITH (security_barrier) AS
SELECT s.name, s.cron, s.next_run, s.last_run, s.owner, s.timezone, s.fn, s.args,
       s.queue_name, s.workflow, s.skip_missed, s.created_at
  FROM eventic.schedule_entries s
 WHERE pg_catalog.pg_has_role(s.owner, 'USAGE');
COMMENT ON VIEW eventic.schedules IS
  'The cron schedules of the calling role (all of them for a superuser): next and last tick';
GRANT SELECT ON eventic.schedules TO PUBLIC;

CREATE FUNCTION eventic.schedule(name text, cron text, fn regprocedure, args jsonb DEFAULT '[]',
                                 queue text DEFAULT NULL, workflow boolean DEFAULT false,
                                 timezone text DEFAULT 'UTC', skip_missed boolean DEFAULT false)
RETURNS timestamptz LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'schedule_wrapper';
COMMENT ON FUNCTION eventic.schedule(text, text, regprocedure, jsonb, text, boolean, text, boolean) IS
  'Call fn(args) at every tick of a cron pattern (5 fields, or 6 with seconds) as a job on queue (default: schedules) or as a workflow, as the calling role; returns the first tick';

CREATE FUNCTION eventic.unschedule(name text) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'unschedule_wrapper';
COMMENT ON FUNCTION eventic.unschedule(text) IS 'Remove a schedule of the calling role';
