-- Durable workflows (DESIGN.md §4): a workflow is a SQL or PL/pgSQL function
-- fn(input jsonb) returns jsonb whose side effects go through eventic.step(...). Each step's
-- result is recorded here; a replay returns the record instead of running the step again.
-- Workflows run as jobs of a queue (default: workflows) as the role that started them.

CREATE TABLE eventic.workflows (
    workflow_id  text         PRIMARY KEY,
    fn           regprocedure NOT NULL,
    input        jsonb        NOT NULL,
    status       text         NOT NULL DEFAULT 'ENQUEUED'
                 CHECK (status IN ('ENQUEUED', 'RUNNING', 'SLEEPING', 'WAITING', 'SUCCESS', 'ERROR', 'CANCELLED')),
    output       jsonb,
    error        text,
    queue_name   text         NOT NULL,
    started_by   oid          NOT NULL,
    deadline     timestamptz,
    created_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz  NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE eventic.workflows IS
  'Durable workflows: status, input, output, error; started with eventic.start_workflow';
SELECT pg_catalog.pg_extension_config_dump('eventic.workflows', '');

CREATE TABLE eventic.workflow_steps (
    workflow_id  text         NOT NULL REFERENCES eventic.workflows ON DELETE CASCADE,
    position     integer      NOT NULL,
    name         text         NOT NULL,
    kind         text         NOT NULL,   -- step, sleep, now, random
    output       jsonb,
    error        text,
    attempts     integer      NOT NULL DEFAULT 1,
    created_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, position)
);
COMMENT ON TABLE eventic.workflow_steps IS
  'The recorded steps of each workflow, in order: what a replay returns instead of running them again';
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_steps', '');

GRANT SELECT ON eventic.workflows, eventic.workflow_steps TO PUBLIC;

CREATE FUNCTION eventic.start_workflow(fn regprocedure, input jsonb DEFAULT '{}',
                                       workflow_id text DEFAULT NULL, queue text DEFAULT NULL,
                                       timeout interval DEFAULT NULL)
RETURNS text LANGUAGE sql VOLATILE AS
$$ SELECT eventic._start_workflow(fn::oid, input, workflow_id, queue, timeout) $$;
COMMENT ON FUNCTION eventic.start_workflow(regprocedure, jsonb, text, text, interval) IS
  'Start fn(input jsonb) as a durable workflow (idempotent by workflow_id); returns its id';

CREATE FUNCTION eventic.step(name text, fn regprocedure, args jsonb DEFAULT '[]')
RETURNS jsonb LANGUAGE sql VOLATILE AS
$$ SELECT eventic._step(name, fn::oid, args) $$;
COMMENT ON FUNCTION eventic.step(text, regprocedure, jsonb) IS
  'Inside a workflow body: run fn(args) once, record its result, return the record on replay';
