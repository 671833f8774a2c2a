-- Upgrade eventic 0.1.0 -> 0.2.0 (ALTER EXTENSION eventic UPDATE).
\echo Use "ALTER EXTENSION eventic UPDATE TO '0.2.0'" to load this file. \quit

-- What a fresh 0.2.0 install has that 0.1.0 did not, object by object: scripts/schema-diff
-- installs 0.1.0 + this script and 0.2.0 fresh on a throwaway cluster and prints whatever
-- still differs (--sql: with statements for the functions that do); tests/test_upgrade.py
-- checks that nothing does, and that a filled 0.1.0 database keeps its data and keeps working.
-- Rules: changed functions with CREATE OR REPLACE (bodies exactly as in sql/*.sql, C functions
-- exactly as in the generated eventic--0.2.0.sql: AS 'MODULE_PATHNAME', '<symbol>'), changed
-- tables with ALTER TABLE (the data stays), new objects get their comments and grants here too.
-- Everything here can run twice.

-- Workers keep running during the update. Each worker transaction reads eventic.queues before
-- it touches a queue or workflow table: holding it first, the update waits for the running
-- worker transactions to end and the next ones wait for the update, instead of deadlocking
-- with them over the tables it alters.
LOCK TABLE eventic.queues IN ACCESS EXCLUSIVE MODE;

-- ---------------------------------------------------------------------------------------------
-- Tables

-- the finished-jobs archive is dumped with the data (pg_dump skips an extension's tables otherwise)
SELECT pg_catalog.pg_extension_config_dump('eventic.finished_batches', '');
-- and the position of the message ids (restored without it, new ids collide with restored ones)
SELECT pg_catalog.pg_extension_config_dump('eventic.workflow_messages_message_id_seq', '');

-- Roles and functions by name in a dump (regrole, regprocedure), not by oid: a restore on
-- another cluster maps them to its own roles and functions. The views and policies that read
-- these columns are dropped and made again around the change of type.
DROP VIEW IF EXISTS eventic.workflows, eventic.workflow_steps, eventic.finished_jobs;
DROP POLICY IF EXISTS started_by_me ON eventic.workflow_runs;
ALTER TABLE eventic.workflow_runs ALTER started_by TYPE regrole USING started_by::regrole;
ALTER TABLE eventic.finished_batches ALTER enqueued_by TYPE regrole[] USING enqueued_by::regrole[];
DO $$
BEGIN
    ALTER TABLE eventic.finished_batches ALTER enqueued_by SET COMPRESSION lz4;  -- as before the change
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
ALTER TABLE eventic.classes
    ALTER subscribers DROP DEFAULT,
    ALTER subscribers TYPE regprocedure[] USING subscribers::regprocedure[],
    ALTER subscribers SET DEFAULT '{}',
    ALTER subscriber_roles DROP DEFAULT,
    ALTER subscriber_roles TYPE regrole[] USING subscriber_roles::regrole[],
    ALTER subscriber_roles SET DEFAULT '{}';
CREATE POLICY started_by_me ON eventic.workflow_runs FOR SELECT
    USING (pg_catalog.pg_has_role(started_by, 'USAGE'));
CREATE VIEW eventic.workflows WITH (security_barrier) AS
SELECT w.workflow_id, w.fn::regproc::text AS name, w.status, w.input, w.output, w.error,
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
GRANT SELECT ON eventic.workflows, eventic.workflow_steps TO PUBLIC;
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

-- every queue table (not members of the extension, made by _create_queue): enqueued_by too
DO $upgrade$
DECLARE
    q record;
BEGIN
    FOR q IN SELECT queue_name, table_name FROM eventic.queues
              WHERE pg_catalog.to_regclass(pg_catalog.format('eventic.%I', table_name)) IS NOT NULL LOOP
        EXECUTE pg_catalog.format('DROP POLICY IF EXISTS jobs_visible ON eventic.%I', q.table_name);
        EXECUTE pg_catalog.format(
            'ALTER TABLE eventic.%I ALTER enqueued_by TYPE regrole USING enqueued_by::regrole', q.table_name);
        EXECUTE pg_catalog.format($ddl$
        CREATE POLICY jobs_visible ON eventic.%1$I FOR SELECT
            USING (pg_catalog.pg_has_role(enqueued_by, 'USAGE')
                   OR EXISTS (SELECT FROM eventic.queues q
                               WHERE q.queue_name = %2$L AND q.owner IS NOT NULL
                                 AND pg_catalog.pg_has_role(q.owner, 'USAGE')));
        $ddl$, q.table_name, q.queue_name);
    END LOOP;
END
$upgrade$;

-- ---------------------------------------------------------------------------------------------
-- Functions generated by pgrx (src/), new or changed: as in the generated eventic--0.2.0.sql

CREATE OR REPLACE FUNCTION eventic."_transaction"(
	"name" TEXT, /* Option < & str > */
	"fn_oid" oid, /* Option < pg_sys :: Oid > */
	"args" jsonb /* Option < RawJsonb > */
) RETURNS jsonb /* JsonB */
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'transaction_step_wrapper';

CREATE OR REPLACE FUNCTION eventic."workflow_status"(
	"workflow_id" TEXT /* Option < & str > */
) RETURNS TEXT /* String */
STABLE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'workflow_status_wrapper';

-- ---------------------------------------------------------------------------------------------
-- Functions of sql/*.sql, new or changed (with their comments when these changed)

CREATE OR REPLACE FUNCTION eventic.transaction(name text, fn regprocedure, args jsonb DEFAULT '[]')
RETURNS jsonb LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'transaction_step_wrapper';
COMMENT ON FUNCTION eventic.transaction(text, regprocedure, jsonb) IS
  'Inside a workflow body: a step whose fn only reads and writes the database; its effects commit with its record, exactly once (it may run inline: the fast path)';

CREATE OR REPLACE FUNCTION eventic._create_queue(queue_name text, class_name text DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION eventic.queue_counts(queue_name text,
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

CREATE OR REPLACE FUNCTION eventic.enqueue_batch(queue text, fn regprocedure, args_list jsonb[],
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

CREATE OR REPLACE FUNCTION eventic.class_view_write() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    class_name text := TG_ARGV[0];
    fields text[] := TG_ARGV[1:TG_NARGS - 1];
    new_doc jsonb;
    old_doc jsonb;
    record_id uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM eventic.delete(OLD.id);
        RETURN OLD;
    END IF;
    -- on INSERT a NULL column is an absent field (so optional fields stay optional)
    SELECT coalesce(jsonb_object_agg(key, value), '{}') INTO new_doc
      FROM jsonb_each(to_jsonb(NEW))
     WHERE key = ANY (fields) AND (TG_OP = 'UPDATE' OR value <> 'null');
    -- the property bag is an object; NULL does not clear it (that would be silently ignored)
    IF TG_OP = 'UPDATE' AND jsonb_typeof(to_jsonb(NEW) -> 'properties') IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'the properties of record % must be a JSON object, not %', OLD.id,
                coalesce(jsonb_typeof(to_jsonb(NEW) -> 'properties'), 'NULL')
            USING ERRCODE = CASE WHEN to_jsonb(NEW) -> 'properties' = 'null' THEN '23502' ELSE '22023' END,
                  HINT = 'Set properties = ''{}'' to remove them all, or use eventic.remove_property.';
    END IF;
    IF jsonb_typeof(to_jsonb(NEW) -> 'properties') = 'object' THEN
        new_doc := new_doc || jsonb_build_object('properties', to_jsonb(NEW) -> 'properties');
    END IF;
    IF TG_OP = 'INSERT' THEN
        record_id := eventic.create(class_name, new_doc, NEW.id);
    ELSE
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            RAISE EXCEPTION 'the id of record % cannot change', OLD.id
                USING ERRCODE = '22023', HINT = 'Insert a new row to create a new record.';
        END IF;
        SELECT coalesce(jsonb_object_agg(key, value), '{}') INTO old_doc
          FROM jsonb_each(to_jsonb(OLD))
         WHERE key = ANY (fields) OR key = 'properties';
        PERFORM eventic.apply_change(OLD.id, old_doc, new_doc);
        record_id := OLD.id;
    END IF;
    EXECUTE format('SELECT * FROM %I.%I WHERE id = $1', TG_TABLE_SCHEMA, TG_TABLE_NAME)
       INTO NEW USING record_id;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION eventic.class_view_write() IS
  'INSTEAD OF trigger of class views: INSERT/UPDATE/DELETE become create/versions/tombstone';

-- ---------------------------------------------------------------------------------------------
-- Comments and grants (sql/comments.sql) of new functions, and changed comments

COMMENT ON FUNCTION eventic._transaction(text, oid, jsonb) IS 'Internal: eventic.transaction';
REVOKE ALL ON FUNCTION eventic._transaction(text, oid, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION eventic.step(text, regprocedure, jsonb) IS
  'Inside a workflow body: run fn(args) once, record its result, return the record on replay; fn may act outside the database (it never runs again once completed, unless the server crashed while it ran)';
