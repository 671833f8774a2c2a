-- Durable workflows (DESIGN.md §4): a workflow is a SQL or PL/pgSQL function
-- fn(input jsonb) returns jsonb whose side effects go through eventic.step(...). Each step's
-- result is recorded here; a replay returns the record instead of running the step again.
-- Workflows run as jobs of a queue (default: workflows) as the role that started them.

CREATE TABLE eventic.workflow_runs (
    workflow_id  text         PRIMARY KEY,
    fn           regprocedure,             -- the SQL body; NULL for an external body
    input        jsonb        NOT NULL,
    status       text         NOT NULL DEFAULT 'ENQUEUED'
                 CHECK (status IN ('ENQUEUED', 'RUNNING', 'SLEEPING', 'WAITING', 'SUCCESS', 'ERROR', 'CANCELLED')),
    output       jsonb,
    error        text,
    queue_name   text         NOT NULL,
    started_by   regrole      NOT NULL,  -- a name in a dump: restored elsewhere, the same role
    deadline     timestamptz,
    parent_id    text,         -- started with eventic.start_child by this workflow
    created_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    -- a body that runs outside Postgres (eventic.start_external_workflow): its name, when a
    -- runner may claim it next (NULL: not runnable), until when its latest claim holds, and
    -- how many claims it has had (the lease number the runner's calls name)
    external_body text,
    next_run_at  timestamptz,
    leased_until timestamptz,
    lease        bigint       NOT NULL DEFAULT 0,
    CONSTRAINT workflow_runs_one_body CHECK ((fn IS NULL) <> (external_body IS NULL))
);
-- Listing workflows newest first, all of them or by status or by function (the dashboard),
-- one page at a time: (created_at, workflow_id) is the page cursor.
CREATE INDEX workflow_runs_by_time ON eventic.workflow_runs (created_at, workflow_id);
CREATE INDEX workflow_runs_by_status ON eventic.workflow_runs (status, created_at, workflow_id);
CREATE INDEX workflow_runs_by_fn ON eventic.workflow_runs (fn, created_at, workflow_id);
COMMENT ON TABLE eventic.workflow_runs IS
  'Durable workflows: status, input, output, error; started with eventic.start_workflow';
-- what eventic.workflow_retention removes, oldest first
CREATE INDEX workflow_runs_finished ON eventic.workflow_runs (updated_at)
 WHERE status IN ('SUCCESS', 'ERROR', 'CANCELLED');
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_runs', '');
-- what claim_workflows reads: the runnable external workflows of a role
CREATE INDEX workflow_runs_runnable ON eventic.workflow_runs (started_by, next_run_at)
    WHERE next_run_at IS NOT NULL;

CREATE TABLE eventic.workflow_records (
    workflow_id  text         NOT NULL REFERENCES eventic.workflow_runs ON DELETE CASCADE,
    position     integer      NOT NULL,
    name         text         NOT NULL,
    kind         text         NOT NULL,   -- step, transaction, sleep, recv, now, random, patch, …
    output       jsonb,
    error        text,
    attempts     integer      NOT NULL DEFAULT 1,
    created_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, position)
);
COMMENT ON TABLE eventic.workflow_records IS
  'The recorded steps of each workflow, in order: what a replay returns instead of running them again';
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_records', '');


-- The views users read: every workflow with its function's name, and every recorded step.
CREATE VIEW eventic.workflows WITH (security_barrier) AS
SELECT w.workflow_id, coalesce(w.external_body, w.fn::regproc::text) AS name, w.status, w.input, w.output, w.error,
       w.queue_name, w.started_by, w.parent_id, w.deadline,
       w.created_at, w.updated_at
  FROM eventic.workflow_runs w
 -- the view reads as its owner: each role sees the workflows it started
 WHERE pg_catalog.pg_has_role(w.started_by, 'USAGE');
COMMENT ON VIEW eventic.workflows IS
  'Durable workflows: status (ENQUEUED, RUNNING, SLEEPING, WAITING, SUCCESS, ERROR, CANCELLED), input, output, error';
CREATE VIEW eventic.workflow_steps WITH (security_barrier) AS
SELECT r.workflow_id, r.position, r.name, r.kind, r.output, r.error, r.attempts,
       r.attempts = 0 AS waiting, r.created_at
  FROM eventic.workflow_records r
 WHERE EXISTS (SELECT FROM eventic.workflow_runs w
                WHERE w.workflow_id = r.workflow_id AND pg_catalog.pg_has_role(w.started_by, 'USAGE'));
COMMENT ON VIEW eventic.workflow_steps IS
  'The recorded steps of each workflow in order (waiting: a recv that has not received yet)';
GRANT SELECT ON eventic.workflow_runs, eventic.workflow_records, eventic.workflows,
                eventic.workflow_steps TO PUBLIC;

CREATE FUNCTION eventic.start_workflow(fn regprocedure, input jsonb DEFAULT '{}',
                                       workflow_id text DEFAULT NULL, queue text DEFAULT NULL,
                                       timeout interval DEFAULT NULL)
RETURNS text LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'start_workflow_wrapper';
COMMENT ON FUNCTION eventic.start_workflow(regprocedure, jsonb, text, text, interval) IS
  'Start fn(input jsonb) as a durable workflow (idempotent by workflow_id); returns its id';

CREATE FUNCTION eventic.step(name text, fn regprocedure, args jsonb DEFAULT '[]')
RETURNS jsonb LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'step_wrapper';
COMMENT ON FUNCTION eventic.step(text, regprocedure, jsonb) IS
  'Inside a workflow body: run fn(args) once, record its result, return the record on replay; fn may act outside the database (it never runs again once completed, unless the server crashed while it ran)';

CREATE FUNCTION eventic.transaction(name text, fn regprocedure, args jsonb DEFAULT '[]')
RETURNS jsonb LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'transaction_step_wrapper';
COMMENT ON FUNCTION eventic.transaction(text, regprocedure, jsonb) IS
  'Inside a workflow body: a step whose fn only reads and writes the database; its effects commit with its record, exactly once (it may run inline: the fast path)';

-- Messages sent to workflows (eventic.send), taken in order by eventic.recv.
CREATE TABLE eventic.workflow_messages (
    message_id   bigint       GENERATED ALWAYS AS IDENTITY,
    workflow_id  text         NOT NULL REFERENCES eventic.workflow_runs ON DELETE CASCADE,
    topic        text         NOT NULL,
    message      jsonb,
    sent_at      timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, message_id)
);
COMMENT ON TABLE eventic.workflow_messages IS 'Messages sent to workflows, not yet received';
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_messages', '');
-- its position too: restored without it, new message ids would collide with restored ones
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_messages_message_id_seq', '');

-- Events a workflow publishes (eventic.set_event), read with eventic.get_event.
CREATE TABLE eventic.workflow_events (
    workflow_id  text         NOT NULL REFERENCES eventic.workflow_runs ON DELETE CASCADE,
    key          text         NOT NULL,
    value        jsonb,
    set_at       timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, key)
);
COMMENT ON TABLE eventic.workflow_events IS 'Key/value events published by workflows';
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_events', '');
GRANT SELECT ON eventic.workflow_messages, eventic.workflow_events TO PUBLIC;

-- A workflow's run, steps, messages and events are visible to the role that started it (and
-- roles that have its privileges) and to superusers; eventic writes them as the extension
-- owner after checking the caller.
ALTER TABLE eventic.workflow_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY started_by_me ON eventic.workflow_runs FOR SELECT
    USING (pg_catalog.pg_has_role(started_by, 'USAGE'));
ALTER TABLE eventic.workflow_records ENABLE ROW LEVEL SECURITY;
CREATE POLICY of_my_workflows ON eventic.workflow_records FOR SELECT
    USING (EXISTS (SELECT FROM eventic.workflow_runs w WHERE w.workflow_id = workflow_records.workflow_id));
ALTER TABLE eventic.workflow_messages ENABLE ROW LEVEL SECURITY;
CREATE POLICY of_my_workflows ON eventic.workflow_messages FOR SELECT
    USING (EXISTS (SELECT FROM eventic.workflow_runs w WHERE w.workflow_id = workflow_messages.workflow_id));
ALTER TABLE eventic.workflow_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY of_my_workflows ON eventic.workflow_events FOR SELECT
    USING (EXISTS (SELECT FROM eventic.workflow_runs w WHERE w.workflow_id = workflow_events.workflow_id));

CREATE FUNCTION eventic.start_child(fn regprocedure, input jsonb DEFAULT '{}') RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'start_child_wrapper';
COMMENT ON FUNCTION eventic.start_child(regprocedure, jsonb) IS
  'Inside a workflow body: start a child workflow (once); returns its id';

CREATE FUNCTION eventic.fork_workflow(workflow_id text, from_step integer) RETURNS text
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'fork_workflow_wrapper';
COMMENT ON FUNCTION eventic.fork_workflow(text, integer) IS
  'A new workflow that reuses the records of the steps before from_step and runs the rest again';
