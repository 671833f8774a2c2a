-- Queues (DESIGN.md §3). A queue named n is the table eventic.queue_<n>; users always pass
-- the name. Classes get theirs from eventic.register_class, others come from
-- eventic.create_queue. Jobs are taken with FOR UPDATE SKIP LOCKED; a finished job leaves its
-- queue table for the archive (eventic.finished_jobs), so queue tables hold only waiting/leased/dead jobs.

CREATE TABLE eventic.queues (
    queue_name   text        PRIMARY KEY CHECK (queue_name ~ '^[a-z_][a-z0-9_]{0,50}$'),
    table_name   name        NOT NULL UNIQUE,
    class_name   text,       -- the class whose queue this is, if any
    concurrency  integer     NOT NULL DEFAULT 1 CHECK (concurrency > 0),
    paused       boolean     NOT NULL DEFAULT false,
    worker       boolean     NOT NULL DEFAULT true,
    owner        regrole,    -- who created it (NULL: the extension owner); a class queue: the class owner
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- at most rate_limit jobs start per rate_period (src/queues/rate.rs); NULL: no limit
    rate_limit   integer     CHECK (rate_limit > 0),
    rate_period  interval    CHECK (rate_period > interval '0')
);
COMMENT ON TABLE eventic.queues IS 'Every eventic queue: its table, concurrency and state';
SELECT pg_catalog.pg_extension_config_dump('eventic.queues', '');

-- Records that `owner` owns eventic objects kept in `tbl` (a queue, a class, workflows) the
-- way Postgres records owners of its own objects: as a dependency in pg_shdepend (here a
-- grant of SELECT), so DROP ROLE is refused while the role owns any ("privileges for table
-- eventic.queue_story"); DROP OWNED BY removes it, after which the old rows keep the dropped
-- role's oid, which no new role ever gets. Runs as the extension owner.
CREATE FUNCTION eventic._note_owner(tbl regclass, owner regrole) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
                    WHERE c.oid = tbl AND a.grantee = owner) THEN
        EXECUTE format('GRANT SELECT ON %s TO %s', tbl, owner);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION eventic._note_owner(regclass, regrole) FROM PUBLIC;
COMMENT ON FUNCTION eventic._note_owner(regclass, regrole) IS
  'Internal: a dependency of the role on the table (DROP ROLE is refused while it owns eventic objects)';

-- Creates the table of queue `queue_name` (idempotent). Runs as the extension owner. Queue
-- tables are not members of the extension: pg_dump dumps them (and their jobs) like any
-- table, and DROP EXTENSION leaves them (with the schema eventic); a later CREATE EXTENSION
-- adopts them again when their class or queue is registered.
CREATE FUNCTION eventic._create_queue(queue_name text, class_name text DEFAULT NULL,
                                      queue_owner regrole DEFAULT NULL)
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
    INSERT INTO eventic.queues (queue_name, table_name, class_name, owner)
    VALUES (_create_queue.queue_name, tbl, _create_queue.class_name, _create_queue.queue_owner);
    -- a queue of that name may have existed: its archived jobs would collide with the new ids
    DELETE FROM eventic.finished_batches f WHERE f.queue_name = _create_queue.queue_name;
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
            enqueued_by  regrole      NOT NULL,  -- a name in a dump: restored elsewhere, the same role
            enqueued_at  timestamptz  NOT NULL DEFAULT now(),
            lease_until  timestamptz,  -- taken (running, or leased to a consumer) until then
            dead_at      timestamptz,  -- gave up after max_attempts; eventic.retry_job revives
            last_error   text
        );
        CREATE INDEX IF NOT EXISTS %2$I ON eventic.%1$I (priority DESC, run_at, job_id)
            WHERE dead_at IS NULL;
        -- dedup keys are per enqueuing role: one role's key never finds another role's job
        CREATE UNIQUE INDEX IF NOT EXISTS %3$I ON eventic.%1$I (enqueued_by, dedup_key)
            WHERE dedup_key IS NOT NULL AND dead_at IS NULL;
        COMMENT ON TABLE eventic.%1$I IS %4$L;
        -- a drained queue is mostly dead rows: vacuum it early so it keeps its size and speed
        ALTER TABLE eventic.%1$I SET (autovacuum_vacuum_scale_factor = 0.01,
                                      autovacuum_vacuum_threshold = 1000,
                                      autovacuum_vacuum_insert_scale_factor = 0.05);
        -- every role reads the jobs it enqueued; the queue's owner reads them all
        GRANT SELECT ON eventic.%1$I TO PUBLIC;
        ALTER TABLE eventic.%1$I ENABLE ROW LEVEL SECURITY;
    $ddl$, tbl, tbl || '_ready', tbl || '_dedup',
        'Jobs of eventic queue ' || queue_name || '; use eventic.enqueue, never write directly',
        queue_name);
    -- (a table kept by DROP EXTENSION and adopted again has its policy)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_policy p
                    WHERE p.polrelid = format('eventic.%I', tbl)::regclass AND p.polname = 'jobs_visible') THEN
        EXECUTE format($ddl$
        CREATE POLICY jobs_visible ON eventic.%1$I FOR SELECT
            USING (pg_catalog.pg_has_role(enqueued_by, 'USAGE')
                   OR EXISTS (SELECT FROM eventic.queues q
                               WHERE q.queue_name = %5$L AND q.owner IS NOT NULL
                                 AND pg_catalog.pg_has_role(q.owner, 'USAGE')));
        $ddl$, tbl, NULL, NULL, NULL, queue_name);
    END IF;
    -- a table kept by DROP EXTENSION and adopted again may hold jobs whose function is gone:
    -- eventic's own (eventic._run_workflow) went with the extension, and their workflows too
    EXECUTE format('UPDATE eventic.%I SET dead_at = pg_catalog.clock_timestamp(), last_error = %L
                     WHERE dead_at IS NULL
                       AND NOT EXISTS (SELECT FROM pg_catalog.pg_proc p WHERE p.oid = fn)',
                   tbl, 'its function no longer exists (dropped, or eventic''s own, dropped with the extension)');
    IF queue_owner IS NOT NULL THEN
        PERFORM eventic._note_owner(format('eventic.%I', tbl)::regclass, queue_owner);
    END IF;
END
$$;
COMMENT ON FUNCTION eventic._create_queue(text, text, regrole) IS
  'Internal: create the table of a queue (idempotent); called by register_class as the extension owner';
REVOKE ALL ON FUNCTION eventic._create_queue(text, text, regrole) FROM PUBLIC;

GRANT SELECT ON eventic.queues TO PUBLIC;

-- Finished jobs, kept for eventic.archive_retention (then removed by a later drain). One row
-- per finished batch, the jobs' columns as parallel arrays: archiving a batch of 512 jobs
-- writes one row and one index entry, not 512 (a row per job halved the drain rate). The
-- view eventic.finished_jobs shows one row per job.
CREATE TABLE eventic.finished_batches (
    queue_name   text           NOT NULL,
    finished_at  timestamptz    NOT NULL DEFAULT clock_timestamp(),
    job_ids      bigint[]       NOT NULL,
    fns          regprocedure[] NOT NULL,
    args         jsonb[]        NOT NULL,
    enqueued_by  regrole[]      NOT NULL,
    enqueued_at  timestamptz[]  NOT NULL,
    attempts     integer[]      NOT NULL
);
CREATE INDEX finished_batches_by_time ON eventic.finished_batches (finished_at);
-- one queue's finished jobs, newest first (the dashboard's queue page), without walking the
-- other queues' batches; one entry per batch, not per job
CREATE INDEX finished_batches_by_queue ON eventic.finished_batches (queue_name, finished_at);
-- dumped with the data (pg_dump skips an extension's tables otherwise)
SELECT pg_catalog.pg_extension_config_dump('eventic.finished_batches', '');
-- a batch's arrays are TOASTed: lz4 compresses them several times faster than pglz (where
-- the server was built without lz4, the default stays)
DO $$
BEGIN
    ALTER TABLE eventic.finished_batches
        ALTER job_ids SET COMPRESSION lz4, ALTER fns SET COMPRESSION lz4,
        ALTER args SET COMPRESSION lz4, ALTER enqueued_by SET COMPRESSION lz4,
        ALTER enqueued_at SET COMPRESSION lz4, ALTER attempts SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
COMMENT ON TABLE eventic.finished_batches IS
  'Jobs that ran successfully, one row per finished batch, kept for eventic.archive_retention; read eventic.finished_jobs';
-- read through eventic.finished_jobs, which shows each role its own jobs (and the jobs of
-- the queues it owns)
CREATE VIEW eventic.finished_jobs WITH (security_barrier) AS
SELECT b.queue_name, j.job_id, j.fn, j.args, j.enqueued_by, j.enqueued_at, b.finished_at, j.attempts
  FROM eventic.finished_batches b
  LEFT JOIN eventic.queues q ON q.queue_name = b.queue_name,
       unnest(b.job_ids, b.fns, b.args, b.enqueued_by, b.enqueued_at, b.attempts)
           AS j(job_id, fn, args, enqueued_by, enqueued_at, attempts)
 WHERE pg_catalog.pg_has_role(j.enqueued_by, 'USAGE')
    OR (q.owner IS NOT NULL AND pg_catalog.pg_has_role(q.owner, 'USAGE'));
COMMENT ON VIEW eventic.finished_jobs IS
  'Jobs that ran successfully (one row per job), kept for eventic.archive_retention';
GRANT SELECT ON eventic.finished_jobs TO PUBLIC;

-- Per queue: waiting (ready now / scheduled later), taken, dead, finished in the last minute,
-- age of the oldest ready job. Reads every queue table: meant for humans and monitoring.
-- Counts the jobs the caller may see (its own; all of the queues it owns).
CREATE FUNCTION eventic.queue_counts(queue_name text,
    OUT ready bigint, OUT scheduled bigint, OUT running bigint, OUT dead bigint,
    OUT oldest_ready_age interval)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    EXECUTE format(
        'SELECT count(*) FILTER (WHERE dead_at IS NULL AND run_at <= now()
                                   AND (lease_until IS NULL OR lease_until < now())),
                count(*) FILTER (WHERE dead_at IS NULL AND run_at > now()),
                count(*) FILTER (WHERE dead_at IS NULL AND lease_until >= now()),
                count(*) FILTER (WHERE dead_at IS NOT NULL),
                -- (isfinite: a -infinity run_at from before 0.2.0 has no age to show)
                now() - min(run_at) FILTER (WHERE dead_at IS NULL AND run_at <= now() AND isfinite(run_at)
                                   AND (lease_until IS NULL OR lease_until < now()))
           FROM eventic.%I', 'queue_' || queue_name)
       INTO ready, scheduled, running, dead, oldest_ready_age;
END
$$;

CREATE VIEW eventic.queue_stats AS
SELECT q.queue_name, c.ready, c.scheduled, c.running, c.dead,
       (SELECT coalesce(sum(cardinality(f.job_ids)), 0) FROM eventic.finished_batches f
         WHERE f.queue_name = q.queue_name AND f.finished_at > now() - interval '1 minute')
           AS done_last_minute,
       c.oldest_ready_age, q.paused, q.concurrency, q.worker
  FROM eventic.queues q, LATERAL eventic.queue_counts(q.queue_name) c;
COMMENT ON VIEW eventic.queue_stats IS
  'Per queue: ready, scheduled, running, dead, done in the last minute, oldest ready age';
GRANT SELECT ON eventic.queue_stats TO PUBLIC;

-- The SQL faces of enqueue/dequeue: they take and return the job's function as regprocedure.
-- (C functions of their own, not SQL wrappers of the internal _ functions, which ordinary
-- roles may not call; regprocedure and regrole are oids on the way in)
CREATE FUNCTION eventic.enqueue(queue text, fn regprocedure, args jsonb DEFAULT '[]',
                                run_at timestamptz DEFAULT NULL, priority integer DEFAULT 0,
                                dedup_key text DEFAULT NULL, max_attempts integer DEFAULT 5,
                                run_as regrole DEFAULT NULL)
RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'enqueue_job_wrapper';
COMMENT ON FUNCTION eventic.enqueue(text, regprocedure, jsonb, timestamptz, integer, text, integer, regrole) IS
  'Enqueue fn(args) on a queue; the job runs as the calling role (run_as: superusers only). Returns the job id.';

CREATE FUNCTION eventic.enqueue_batch(queue text, fn regprocedure, args_list jsonb[],
                                      run_at timestamptz DEFAULT NULL, priority integer DEFAULT 0,
                                      max_attempts integer DEFAULT 5)
RETURNS SETOF bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- the checks of eventic.enqueue, also for an empty (or NULL) list, which enqueues nothing
    IF queue IS NULL OR fn IS NULL OR args_list IS NULL THEN
        RAISE EXCEPTION '% must not be null',
                CASE WHEN queue IS NULL THEN 'queue' WHEN fn IS NULL THEN 'fn' ELSE 'args_list' END
            USING ERRCODE = '22023', HINT = 'Pass a queue name, a function and an array of args (one per job).';
    END IF;
    IF NOT EXISTS (SELECT FROM eventic.queues q WHERE q.queue_name = queue) THEN
        RAISE EXCEPTION 'queue "%" does not exist', queue
            USING ERRCODE = '42704',
                  HINT = 'See SELECT queue_name FROM eventic.queues; create one with eventic.create_queue(name) or eventic.register_class(class).';
    END IF;
    RETURN QUERY
        SELECT eventic.enqueue(queue, fn, t.a, run_at, priority, NULL, max_attempts, NULL)
          FROM pg_catalog.unnest(args_list) WITH ORDINALITY AS t(a, i) ORDER BY t.i;
END
$$;
COMMENT ON FUNCTION eventic.enqueue_batch(text, regprocedure, jsonb[], timestamptz, integer, integer) IS
  'Enqueue one job per element of args_list; returns their ids in order.';

CREATE FUNCTION eventic.dequeue(queue text, batch integer DEFAULT 1, lease interval DEFAULT '30 seconds')
RETURNS TABLE (job_id bigint, fn regprocedure, args jsonb, attempt integer)
LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1000 AS 'MODULE_PATHNAME', 'dequeue_wrapper';
COMMENT ON FUNCTION eventic.dequeue(text, integer, interval) IS
  'External consumers: take up to batch ready jobs, invisible to others for lease; then ack or nack each';

-- (the 0.1.0/0.2.0 alter_queue without the rate arguments is the symbol alter_queue_wrapper)
CREATE FUNCTION eventic.alter_queue(queue_name text, concurrency integer DEFAULT NULL,
                                    paused boolean DEFAULT NULL, worker boolean DEFAULT NULL,
                                    rate_limit integer DEFAULT NULL, rate_period interval DEFAULT NULL)
RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'alter_queue_with_rate_wrapper';
