-- Queues (DESIGN.md §3). A queue named n is the table eventic.queue_<n>; users always pass
-- the name. Classes get theirs from eventic.register_class; the worker that drains them comes
-- with the queue milestone.

CREATE TABLE eventic.queues (
    queue_name   text        PRIMARY KEY CHECK (queue_name ~ '^[a-z_][a-z0-9_]{0,56}$'),
    table_name   name        NOT NULL UNIQUE,
    class_name   text,       -- the class whose queue this is, if any
    concurrency  integer     NOT NULL DEFAULT 1 CHECK (concurrency > 0),
    paused       boolean     NOT NULL DEFAULT false,
    worker       boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE eventic.queues IS 'Every eventic queue: its table, concurrency and state';
SELECT pg_catalog.pg_extension_config_dump('eventic.queues', '');

-- Creates the table of queue `queue_name` (idempotent). Runs as the extension owner. Queue
-- tables are not members of the extension: pg_dump dumps them (and their jobs) like any
-- table, and DROP EXTENSION leaves them (with the schema eventic); a later CREATE EXTENSION
-- adopts them again when their class or queue is registered.
CREATE FUNCTION eventic._create_queue(queue_name text, class_name text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    tbl name := 'queue_' || queue_name;
BEGIN
    IF EXISTS (SELECT 1 FROM eventic.queues q WHERE q.queue_name = _create_queue.queue_name) THEN
        RETURN;
    END IF;
    INSERT INTO eventic.queues (queue_name, table_name, class_name)
    VALUES (_create_queue.queue_name, tbl, _create_queue.class_name);
    EXECUTE format($ddl$
        CREATE TABLE IF NOT EXISTS eventic.%1$I (
            job_id       bigint       GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            fn           regprocedure NOT NULL,
            args         jsonb        NOT NULL DEFAULT '[]',
            run_at       timestamptz  NOT NULL DEFAULT now(),
            priority     integer      NOT NULL DEFAULT 0,
            dedup_key    text,
            attempts     integer      NOT NULL DEFAULT 0,
            max_attempts integer      NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
            enqueued_by  oid          NOT NULL,
            enqueued_at  timestamptz  NOT NULL DEFAULT now(),
            lease_until  timestamptz,
            last_error   text
        );
        CREATE INDEX IF NOT EXISTS %2$I ON eventic.%1$I (priority DESC, run_at, job_id);
        CREATE UNIQUE INDEX IF NOT EXISTS %3$I ON eventic.%1$I (dedup_key) WHERE dedup_key IS NOT NULL;
        COMMENT ON TABLE eventic.%1$I IS %4$L;
    $ddl$, tbl, tbl || '_ready', tbl || '_dedup',
        'Jobs of eventic queue ' || queue_name || '; use eventic.enqueue, never write directly');
END
$$;
COMMENT ON FUNCTION eventic._create_queue(text, text) IS
  'Internal: create the table of a queue (idempotent); called by register_class as the extension owner';
REVOKE ALL ON FUNCTION eventic._create_queue(text, text) FROM PUBLIC;

GRANT SELECT ON eventic.queues TO PUBLIC;
