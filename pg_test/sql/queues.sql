-- Queues (DESIGN.md §3, §5, §6): create/alter/drop_queue, enqueue (args checked against the
-- function at enqueue), run_pending, retries and dead jobs, jobs run as the role that
-- enqueued them, external consumers (dequeue/ack/nack/extend_lease), queue_stats,
-- enqueue_batch, and every error path.
-- The cluster preloads eventic, so its worker drains every queue with worker => true: the
-- queues whose jobs this file runs are created with worker => false (or altered to it).
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS qtest CASCADE;
DROP ROLE IF EXISTS eventic_regress_alice;
DROP ROLE IF EXISTS eventic_regress_bob;
RESET client_min_messages;

-- job functions: each records what it got and the role it ran as
CREATE SCHEMA qtest;
CREATE TABLE qtest.log (n serial PRIMARY KEY, what text NOT NULL, who text NOT NULL);
CREATE TABLE qtest.private (x integer);
CREATE TABLE qtest.flags (fixed boolean NOT NULL);
INSERT INTO qtest.flags VALUES (false);
CREATE FUNCTION qtest.note(what text) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO qtest.log (what, who) VALUES (what, current_user) $$;
CREATE FUNCTION qtest.add(a integer, b integer DEFAULT 10) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO qtest.log (what, who) VALUES (format('%s+%s=%s', a, b, a + b), current_user) $$;
CREATE FUNCTION qtest.whole(doc jsonb) RETURNS void LANGUAGE sql AS
  $$ INSERT INTO qtest.log (what, who) VALUES ('whole ' || doc::text, current_user) $$;
CREATE FUNCTION qtest.mixed(t text, i integer, b boolean, j jsonb, d date, arr integer[])
RETURNS void LANGUAGE sql AS
  $$ INSERT INTO qtest.log (what, who)
     VALUES (format('t=%s i=%s b=%s j=%s d=%s arr=%s', t, i, b, j, d, arr), current_user) $$;
-- inserts, then fails until qtest.flags says fixed: a failed attempt leaves nothing behind
CREATE FUNCTION qtest.flaky(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO qtest.log (what, who) VALUES (what, current_user);
    IF NOT (SELECT fixed FROM qtest.flags) THEN
        RAISE EXCEPTION 'flaky % failed', what;
    END IF;
END
$$;
CREATE FUNCTION qtest.divide(a integer) RETURNS integer LANGUAGE sql AS $$ SELECT 1 / a $$;
CREATE FUNCTION qtest.write_private() RETURNS void LANGUAGE sql AS
  $$ INSERT INTO qtest.private VALUES (1) $$;
-- tries to leave the enqueuer's role
CREATE FUNCTION qtest.escalate() RETURNS void LANGUAGE plpgsql AS $$ BEGIN RESET ROLE; END $$;
CREATE FUNCTION qtest.secret() RETURNS void LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION qtest.secret() FROM PUBLIC;
CREATE PROCEDURE qtest.proc() LANGUAGE sql AS $$ SELECT 1 $$;

------------------------------------------------------------------------------------------
-- create_queue: a row in eventic.queues and the table eventic.queue_<name>
SELECT eventic.create_queue('jobs', worker => false);
SELECT queue_name, table_name, class_name, concurrency, paused, worker,
       owner = current_user::regrole AS owned_by_me
  FROM eventic.queues;
SELECT to_regclass('eventic.queue_jobs') IS NOT NULL AS queue_table_exists;
-- idempotent
SELECT eventic.create_queue('jobs', worker => false);
SELECT count(*) AS queues_named_jobs FROM eventic.queues WHERE queue_name = 'jobs';
-- the worker is on unless asked otherwise; names may start with _ and hold digits
SELECT eventic.create_queue('_plain_2');
SELECT eventic.create_queue(repeat('x', 51));
SELECT queue_name, table_name, worker FROM eventic.queues WHERE queue_name <> 'jobs' ORDER BY queue_name;
-- name rules: 22023, nothing created
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.create_queue('Bad-Name')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.create_queue('9lives')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.create_queue('')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.create_queue('queue; drop table x')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.create_queue(repeat('x', 58))$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.create_queue(NULL)$$);
SELECT count(*) AS queues FROM eventic.queues;
SELECT eventic.drop_queue(repeat('x', 51));

------------------------------------------------------------------------------------------
-- alter_queue
SELECT eventic.alter_queue('jobs', concurrency => 4);
SELECT eventic.alter_queue('jobs', paused => true);
SELECT queue_name, concurrency, paused, worker FROM eventic.queues WHERE queue_name = 'jobs';
SELECT eventic.alter_queue('jobs', paused => false);
SELECT queue_name, concurrency, paused, worker FROM eventic.queues WHERE queue_name = 'jobs';
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.alter_queue('jobs', concurrency => 0)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.alter_queue('jobs', concurrency => -3)$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.alter_queue('missing', paused => true)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.alter_queue(NULL, paused => true)$$);
SELECT concurrency AS still_4 FROM eventic.queues WHERE queue_name = 'jobs';

-- a class's queue: named after the class, its worker can be turned off
SELECT eventic.register_class('InvoiceRun');
SELECT eventic.alter_queue('invoice_run', worker => false);
SELECT queue_name, table_name, class_name, worker FROM eventic.queues WHERE class_name IS NOT NULL;

------------------------------------------------------------------------------------------
-- drop_queue: the table and its jobs go; a class's queue goes with drop_class
SELECT eventic.create_queue('scratch', worker => false);
SELECT eventic.enqueue('scratch', 'qtest.note(text)', '["never runs"]');
SELECT eventic.drop_queue('scratch');
SELECT to_regclass('eventic.queue_scratch') IS NULL AS table_gone,
       NOT EXISTS (SELECT 1 FROM eventic.queues WHERE queue_name = 'scratch') AS row_gone;
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.drop_queue('invoice_run')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.drop_queue('missing')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.drop_queue(NULL)$$);
SELECT to_regclass('eventic.queue_invoice_run') IS NOT NULL AS class_queue_kept;

------------------------------------------------------------------------------------------
-- a paused queue is skipped by run_pending() over all queues
SELECT eventic.create_queue('held', worker => false);
SELECT eventic.enqueue('held', 'qtest.note(text)', '["held job"]');
SELECT eventic.alter_queue('held', paused => true);
SELECT eventic.run_pending() AS ran_while_paused;
SELECT job_id, args FROM eventic.queue_held;
SELECT eventic.alter_queue('held', paused => false);
SELECT eventic.run_pending() AS ran_after_unpause;
SELECT count(*) AS held_jobs_left FROM eventic.queue_held;
SELECT what, who FROM qtest.log ORDER BY n;
SELECT eventic.drop_queue('held');
TRUNCATE qtest.log;

------------------------------------------------------------------------------------------
-- enqueue: job ids; args converted to the parameter types now (a JSON string as it is, other
-- JSON as its text, null as NULL; missing trailing parameters take their defaults)
SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["first"]') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '[1, 2]') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '["40"]') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.mixed(text,integer,boolean,jsonb,date,integer[])',
                       '["s", 3, true, {"k": [1, "two"]}, "2026-01-02", "{1,2}"]') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.mixed(text,integer,boolean,jsonb,date,integer[])',
                       '[null, null, null, null, null, null]') AS job_id;
-- a function taking one jsonb gets args whole, whatever its shape
SELECT eventic.enqueue('jobs', 'qtest.whole(jsonb)', '{"a": 1}') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.whole(jsonb)', '[1, 2]') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.whole(jsonb)') AS job_id;
SELECT job_id, fn, args, priority, attempts, max_attempts, enqueued_by::regrole,
       lease_until IS NULL AS not_leased, dead_at IS NULL AS not_dead, last_error
  FROM eventic.queue_jobs ORDER BY job_id;

-- bad calls: 22023 (42704 for an unknown queue or function), nothing written
SELECT count(*) AS jobs_before FROM eventic.queue_jobs \gset
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '["x"]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '[1.5]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.mixed(text,integer,boolean,jsonb,date,integer[])', '["s", 3, "maybe", {}, "2026-01-02", "{}"]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '[1, 2, 3]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.add(integer,integer)', '[]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', '{"what": "x"}')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', '"x"')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('missing', 'qtest.note(text)', '["x"]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 4000000000::oid::regprocedure)$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.proc()')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'sum(integer)', '[1]')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["x"]', max_attempts => 0)$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue(NULL, 'qtest.note(text)', '["x"]')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('jobs', NULL, '["x"]')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["x"]', priority => NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["x"]', max_attempts => NULL)$$);
SELECT count(*) = :jobs_before AS nothing_written FROM eventic.queue_jobs;

-- dedup_key: while a job with the key waits, enqueue returns that job
SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["nightly 1"]', dedup_key => 'nightly') AS job_id;
SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["nightly 2"]', dedup_key => 'nightly') AS same_job_id;
SELECT job_id, args, dedup_key FROM eventic.queue_jobs WHERE dedup_key IS NOT NULL;
-- run_at in the future: scheduled, not ready
SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["tomorrow"]', run_at => now() + interval '1 day') AS job_id;
SELECT queue_name, ready, scheduled, running, dead, done_last_minute,
       oldest_ready_age IS NULL AS no_ready_age, oldest_ready_age > '0' AS ready_age_positive
  FROM eventic.queue_stats WHERE queue_name = 'jobs';

------------------------------------------------------------------------------------------
-- run_pending(queue, max_jobs): runs up to max_jobs ready jobs, returns how many ran
SELECT eventic.run_pending('jobs', 3) AS ran;
SELECT what, who FROM qtest.log ORDER BY what;
SELECT eventic.run_pending('jobs') AS ran;
SELECT what, who FROM qtest.log ORDER BY what;
SELECT eventic.run_pending('jobs') AS ran_nothing_left;
-- finished jobs leave the queue table for eventic.finished_jobs; the scheduled one waits
SELECT job_id, args, run_at > now() AS scheduled FROM eventic.queue_jobs ORDER BY job_id;
SELECT queue_name, job_id, fn, args, attempts, enqueued_by::regrole,
       finished_at >= enqueued_at AS finished_after_enqueue
  FROM eventic.finished_jobs WHERE queue_name = 'jobs' ORDER BY job_id;
SELECT queue_name, ready, scheduled, running, dead, done_last_minute,
       oldest_ready_age IS NULL AS no_ready_age
  FROM eventic.queue_stats WHERE queue_name = 'jobs';
-- the dedup_key of a finished job is free again
SELECT eventic.enqueue('jobs', 'qtest.note(text)', '["nightly 3"]', dedup_key => 'nightly') AS new_job_id;
SELECT code, message FROM pg_temp.try($$SELECT eventic.run_pending('missing')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.run_pending('jobs', NULL)$$);

-- priority: higher first, then by run_at and id (one job per run_pending call)
SELECT eventic.create_queue('prio', worker => false);
SELECT eventic.enqueue('prio', 'qtest.note(text)', '["p0"]');
SELECT eventic.enqueue('prio', 'qtest.note(text)', '["p10 first"]', priority => 10);
SELECT eventic.enqueue('prio', 'qtest.note(text)', '["p-5"]', priority => -5);
SELECT eventic.enqueue('prio', 'qtest.note(text)', '["p10 second"]', priority => 10);
SELECT eventic.enqueue('prio', 'qtest.note(text)', '["p3"]', priority => 3);
TRUNCATE qtest.log;
SELECT sum(eventic.run_pending('prio', 1)) AS ran FROM generate_series(1, 6);
SELECT what FROM qtest.log ORDER BY n;

-- a class's queue with its worker off is drained by run_pending like any other
SELECT eventic.enqueue('invoice_run', 'qtest.note(text)', '["invoice job"]');
SELECT eventic.run_pending('invoice_run') AS ran;
SELECT queue_name, job_id, args FROM eventic.finished_jobs WHERE queue_name = 'invoice_run';

------------------------------------------------------------------------------------------
-- failures: the job's effects roll back, the error is recorded, the job is retried after a
-- backoff; after max_attempts it is dead until eventic.retry_job revives it
SELECT eventic.create_queue('retry', worker => false);
TRUNCATE qtest.log;
SELECT eventic.enqueue('retry', 'qtest.flaky(text)', '["f"]', max_attempts => 2);
SELECT eventic.enqueue('retry', 'qtest.divide(integer)', '[0]', max_attempts => 1);
SELECT eventic.run_pending('retry') AS ran;
SELECT current_user;
SELECT job_id, attempts, max_attempts, last_error, dead_at IS NOT NULL AS dead,
       lease_until IS NULL AS not_leased, run_at >= enqueued_at + interval '1 second' AS backed_off
  FROM eventic.queue_retry ORDER BY job_id;
SELECT count(*) AS rolled_back_rows FROM qtest.log;
-- make the retry due now
UPDATE eventic.queue_retry SET run_at = now() - interval '1 second' WHERE job_id = 1;
SELECT eventic.run_pending('retry') AS ran;
SELECT job_id, attempts, last_error, dead_at IS NOT NULL AS dead
  FROM eventic.queue_retry ORDER BY job_id;
-- dead jobs do not run
UPDATE eventic.queue_retry SET run_at = now() - interval '1 second';
SELECT eventic.run_pending('retry') AS ran_nothing;
SELECT queue_name, ready, scheduled, running, dead, done_last_minute
  FROM eventic.queue_stats WHERE queue_name = 'retry';
-- retry_job: only a dead job of a queue that exists
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.retry_job('retry', 99)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.retry_job('missing', 1)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.retry_job('retry', NULL)$$);
UPDATE qtest.flags SET fixed = true;
SELECT eventic.retry_job('retry', 1);
SELECT job_id, attempts, dead_at IS NULL AS alive, lease_until IS NULL AS not_leased,
       run_at <= now() AS due
  FROM eventic.queue_retry WHERE job_id = 1;
SELECT code, message FROM pg_temp.try($$SELECT eventic.retry_job('retry', 1)$$);
SELECT eventic.run_pending('retry') AS ran;
SELECT what, who FROM qtest.log ORDER BY n;
SELECT queue_name, job_id, fn, args, attempts FROM eventic.finished_jobs WHERE queue_name = 'retry';
SELECT job_id, fn, last_error, dead_at IS NOT NULL AS dead FROM eventic.queue_retry ORDER BY job_id;

------------------------------------------------------------------------------------------
-- security: jobs run as the role that enqueued them
CREATE ROLE eventic_regress_alice;
CREATE ROLE eventic_regress_bob;
GRANT USAGE ON SCHEMA qtest TO eventic_regress_alice, eventic_regress_bob;
GRANT INSERT ON qtest.log TO eventic_regress_alice, eventic_regress_bob;
GRANT USAGE ON SEQUENCE qtest.log_n_seq TO eventic_regress_alice, eventic_regress_bob;
SELECT eventic.create_queue('roles', worker => false);
TRUNCATE qtest.log;

SET ROLE eventic_regress_alice;
SELECT eventic.enqueue('roles', 'qtest.note(text)', '["by alice"]') AS job_id;
-- a job that tries to leave its role
SELECT eventic.enqueue('roles', 'qtest.escalate()', max_attempts => 1) AS job_id;
-- no EXECUTE on the function: cannot enqueue it
SELECT code, hint FROM pg_temp.try($$SELECT eventic.enqueue('roles', 'qtest.secret()')$$);
-- queue tables, eventic.queues and eventic.finished_jobs: readable, not writable
SELECT job_id, fn, args, enqueued_by::regrole FROM eventic.queue_roles ORDER BY job_id;
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.queue_roles (fn, enqueued_by) VALUES ('qtest.note(text)', 10)$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.queue_roles SET priority = 100$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.queue_roles$$);
SELECT code, message FROM pg_temp.try($$TRUNCATE eventic.queue_roles$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.queues SET paused = true$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.finished_jobs SELECT * FROM eventic.finished_jobs$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.finished_jobs$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.finished_batches SELECT * FROM eventic.finished_batches$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.finished_batches$$);
-- only the queue's owner (or a superuser) alters or drops it, or revives its jobs
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.alter_queue('roles', paused => true)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.drop_queue('roles')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.retry_job('retry', 2)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.alter_queue('invoice_run', paused => true)$$);
-- any role may create its own queue, and alter and drop it
SELECT eventic.create_queue('alices', worker => false);
SELECT eventic.alter_queue('alices', concurrency => 2, paused => true);
SELECT queue_name, owner, concurrency, paused, worker FROM eventic.queues WHERE queue_name = 'alices';
SELECT eventic.drop_queue('alices');
RESET ROLE;

SELECT eventic.enqueue('roles', 'qtest.note(text)', '["by superuser"]') AS job_id;
-- only a superuser can make a job run as another role
SELECT eventic.enqueue('roles', 'qtest.note(text)', '["for alice, by superuser"]',
                       run_as => 'eventic_regress_alice') AS job_id;
SET ROLE eventic_regress_bob;
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.enqueue('roles', 'qtest.note(text)', '["x"]', run_as => 'eventic_regress_alice')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('roles', 'qtest.note(text)', '["x"]', run_as => 'postgres')$$);
SELECT eventic.enqueue('roles', 'qtest.note(text)', '["bob as himself"]', run_as => 'eventic_regress_bob') AS job_id;
SELECT eventic.enqueue('roles', 'qtest.note(text)', '["by bob"]') AS job_id;
-- runs with bob's privileges: no INSERT on qtest.private
SELECT eventic.enqueue('roles', 'qtest.write_private()', max_attempts => 1) AS job_id;
-- a non-superuser's run_pending runs only its own jobs
SELECT eventic.run_pending('roles') AS bob_ran;
SELECT eventic.run_pending() AS bob_ran_everywhere;
RESET ROLE;
SELECT job_id, args, enqueued_by::regrole, attempts, dead_at IS NOT NULL AS dead, last_error
  FROM eventic.queue_roles ORDER BY job_id;
-- a superuser's run_pending runs everyone's jobs, each as its enqueuer
SELECT eventic.run_pending('roles') AS ran;
SELECT current_user;
SELECT what, who FROM qtest.log ORDER BY what;
SELECT job_id, fn, enqueued_by::regrole, dead_at IS NOT NULL AS dead, last_error
  FROM eventic.queue_roles ORDER BY job_id;
SELECT job_id, args, enqueued_by::regrole FROM eventic.finished_jobs
 WHERE queue_name = 'roles' ORDER BY job_id;
SELECT count(*) AS private_rows FROM qtest.private;

------------------------------------------------------------------------------------------
-- external consumers: dequeue leases jobs (fn as regprocedure), ack/nack/extend_lease
SELECT eventic.create_queue('ext', worker => false);
SELECT eventic.enqueue('ext', 'qtest.note(text)', format('["e%s"]', i)::jsonb, priority => i % 2) AS job_id
  FROM generate_series(1, 4) i;
SELECT job_id, fn, pg_typeof(fn) AS fn_type, args, attempt
  FROM eventic.dequeue('ext', 2, '1 minute') ORDER BY job_id;
-- leased jobs are not handed out again
SELECT job_id, args, attempt FROM eventic.dequeue('ext', 10, '1 minute') ORDER BY job_id;
SELECT count(*) AS nothing_left FROM eventic.dequeue('ext', 10, '1 minute');
SELECT queue_name, ready, scheduled, running, dead, done_last_minute,
       oldest_ready_age IS NULL AS no_ready_age
  FROM eventic.queue_stats WHERE queue_name = 'ext';
-- run_pending leaves leased jobs alone
SELECT eventic.run_pending('ext') AS ran_nothing;
-- ack: out of the queue, into eventic.finished_jobs
SELECT eventic.ack('ext', 1);
SELECT job_id FROM eventic.queue_ext ORDER BY job_id;
SELECT queue_name, job_id, fn, args, attempts FROM eventic.finished_jobs WHERE queue_name = 'ext';
-- extend_lease: returns the new end of the lease, later than the old one
SELECT lease_until AS lease_before FROM eventic.queue_ext WHERE job_id = 3 \gset
SELECT eventic.extend_lease('ext', 3, '10 minutes') > :'lease_before'::timestamptz AS extended;
SELECT lease_until > now() + interval '9 minutes' AS lease_is_10_minutes FROM eventic.queue_ext WHERE job_id = 3;
-- nack: the error is recorded, the lease released, a retry scheduled after a backoff
SELECT eventic.nack('ext', 2, 'consumer failed');
SELECT job_id, attempts, last_error, lease_until IS NULL AS released,
       run_at >= enqueued_at + interval '1 second' AS backed_off, dead_at IS NULL AS alive
  FROM eventic.queue_ext ORDER BY job_id;
-- nack without an error text
SELECT eventic.nack('ext', 4);
SELECT job_id, last_error FROM eventic.queue_ext WHERE job_id = 4;
-- nack of the last attempt: dead
SELECT eventic.enqueue('ext', 'qtest.note(text)', '["once"]', priority => 5, max_attempts => 1) AS job_id;
SELECT job_id, attempt FROM eventic.dequeue('ext', 1, '1 minute');
SELECT eventic.nack('ext', 5, 'gave up');
SELECT job_id, attempts, last_error, dead_at IS NOT NULL AS dead FROM eventic.queue_ext WHERE job_id = 5;
-- an expired lease makes the job available again, as its next attempt
SELECT eventic.enqueue('ext', 'qtest.note(text)', '["slow consumer"]', priority => 9) AS job_id;
SELECT job_id, attempt FROM eventic.dequeue('ext', 1, '10 milliseconds');
SELECT pg_sleep(0.1);
SELECT job_id, attempt FROM eventic.dequeue('ext', 1, '1 minute');
SELECT eventic.ack('ext', 6);
-- errors
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.ack('ext', 1)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.ack('ext', 99)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.ack('missing', 1)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.ack('ext', NULL)$$);
-- a waiting job that no consumer took: nothing to ack or extend
SELECT code, message FROM pg_temp.try($$SELECT eventic.ack('jobs', 12)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.extend_lease('jobs', 12, '1 minute')$$);
SELECT job_id, args, attempts, lease_until IS NULL AS not_leased FROM eventic.queue_jobs WHERE job_id = 12;
SELECT code, message FROM pg_temp.try($$SELECT eventic.nack('ext', 99, 'x')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.nack('ext', 5, 'already dead')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.extend_lease('ext', 99, '1 minute')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.extend_lease('ext', 2, '1 minute')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.extend_lease('ext', 3, '-1 second')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT * FROM eventic.dequeue('ext', 1, '-1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.dequeue('ext', 1, '0')$$);
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.dequeue('ext', 1, '1 month -40 days')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT * FROM eventic.dequeue('ext', 0, '1 minute')$$);
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.dequeue('ext', NULL, '1 minute')$$);
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.dequeue('missing', 1, '1 minute')$$);
SELECT job_id, attempts, dead_at IS NOT NULL AS dead FROM eventic.queue_ext ORDER BY job_id;

------------------------------------------------------------------------------------------
-- enqueue_batch: one id per element, in order
SELECT eventic.enqueue_batch('jobs', 'qtest.note(text)', ARRAY['["b1"]', '["b2"]', '["b3"]']::jsonb[], priority => 2) AS job_id;
SELECT job_id, args, priority, max_attempts FROM eventic.queue_jobs WHERE priority = 2 ORDER BY job_id;
SELECT count(*) AS empty_batch FROM eventic.enqueue_batch('jobs', 'qtest.note(text)', '{}');
-- one bad element: 22023, nothing written
SELECT count(*) AS jobs_before FROM eventic.queue_jobs \gset
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue_batch('jobs', 'qtest.note(text)', ARRAY['["ok"]', '[1, 2]']::jsonb[])$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue_batch('missing', 'qtest.note(text)', ARRAY['["ok"]']::jsonb[])$$);
SELECT count(*) = :jobs_before AS nothing_written FROM eventic.queue_jobs;

------------------------------------------------------------------------------------------
-- queue_stats for every queue (the retries of the nacked ext jobs 2 and 4: an hour away)
UPDATE eventic.queue_ext SET run_at = now() + interval '1 hour' WHERE job_id IN (2, 4);
SELECT queue_name, ready, scheduled, running, dead, done_last_minute,
       oldest_ready_age IS NULL AS no_ready_age, oldest_ready_age > '0' AS ready_age_positive,
       paused, concurrency, worker
  FROM eventic.queue_stats ORDER BY queue_name;

------------------------------------------------------------------------------------------
-- a batch of jobs runs in priority order, also within one claim
SELECT eventic.create_queue('order_q', worker => false);
TRUNCATE qtest.log;
SELECT count(*) FROM (SELECT eventic.enqueue('order_q', 'qtest.note(text)', format('["prio %s"]', pr)::jsonb, priority => pr)
                        FROM unnest(ARRAY[0, 10, -5, 10, 3]) pr) e;
SELECT eventic.run_pending('order_q');
SELECT string_agg(what, ', ' ORDER BY n) AS ran FROM qtest.log;

-- creating a queue again changes nothing (its worker flag stays as set)
SELECT eventic.create_queue('order_q');
SELECT worker FROM eventic.queues WHERE queue_name = 'order_q';
-- queue names are at most 51 characters (the table's index names must fit)
SELECT code, message FROM pg_temp.try($$SELECT eventic.create_queue(repeat('a', 52))$$);
SELECT code FROM pg_temp.try($$SELECT eventic.create_queue(repeat('a', 51), worker => false)$$);
SELECT code FROM pg_temp.try($$SELECT eventic.enqueue(repeat('a', 51), 'qtest.note(text)', '["long"]')$$);

-- a job cannot change the session that runs it: settings are undone, temp objects refused
CREATE FUNCTION qtest.set_path() RETURNS void LANGUAGE sql
    AS $$ SELECT set_config('search_path', 'qtest, pg_catalog', false) $$;
CREATE FUNCTION qtest.make_temp() RETURNS void LANGUAGE sql
    AS $$ CREATE TEMP TABLE leaked (x int) $$;
SELECT eventic.enqueue('order_q', 'qtest.set_path()'), eventic.enqueue('order_q', 'qtest.make_temp()');
SHOW search_path;
SELECT eventic.run_pending('order_q');
SHOW search_path;
SELECT args, attempts, last_error FROM eventic.queue_order_q ORDER BY job_id;
SELECT to_regclass('pg_temp.leaked') IS NULL AS no_temp_table;

-- nack needs a job that was dequeued; a paused queue hands out nothing
SELECT eventic.enqueue('order_q', 'qtest.note(text)', '["waiting"]') AS waiting_job \gset
SELECT code, message FROM pg_temp.try(format($$SELECT eventic.nack('order_q', %s, 'x')$$, :waiting_job));
SELECT eventic.alter_queue('order_q', paused => true);
SELECT count(*) AS taken_while_paused FROM eventic.dequeue('order_q', 10);
SELECT eventic.alter_queue('order_q', paused => false);
-- consumers act for the queue's owner: another role may not take or ack its jobs
SET ROLE eventic_regress_bob;
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.dequeue('order_q', 10)$$);
SELECT code, message FROM pg_temp.try(format($$SELECT eventic.ack('order_q', %s)$$, :waiting_job));
RESET ROLE;
SELECT count(*) AS handed_out FROM eventic.dequeue('order_q', 10);

------------------------------------------------------------------------------------------
-- jobs of one function run as one statement; when one of them fails, the group is rolled
-- back and its jobs run one by one: every other job's effect exactly once, the failing job's
-- none, and the failing job waits for its retry
CREATE FUNCTION qtest.note_unless_bad(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO qtest.log (what, who) VALUES (what, current_user);
    IF what = 'bad' THEN
        RAISE EXCEPTION 'bad job';
    END IF;
END $$;
SELECT eventic.create_queue('grouped', worker => false);
SELECT count(*) AS enqueued FROM eventic.enqueue_batch('grouped', 'qtest.note_unless_bad(text)',
       ARRAY['["a"]', '["b"]', '["bad"]', '["c"]', '["d"]']::jsonb[]);
TRUNCATE qtest.log;
SELECT eventic.run_pending('grouped') AS ran;
SELECT what, count(*) FROM qtest.log GROUP BY what ORDER BY min(n);
SELECT args, attempts, last_error FROM eventic.queue_grouped;
SELECT array_agg(args ORDER BY job_id) AS archived FROM eventic.finished_jobs WHERE queue_name = 'grouped';
SELECT eventic.drop_queue('grouped');
TRUNCATE qtest.log;

------------------------------------------------------------------------------------------
-- each backend caches queues and job signatures: DDL in this very session is seen at once
SELECT eventic.create_queue('cached', worker => false);
SELECT eventic.enqueue('cached', 'qtest.note(text)', '["before the drop"]') > 0 AS enqueued;
SELECT eventic.drop_queue('cached');
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('cached', 'qtest.note(text)', '["gone"]')$$);
SELECT eventic.create_queue('cached', worker => false);
SELECT eventic.enqueue('cached', 'qtest.note(text)', '["queue made again"]') AS job_id_restarts;
-- a renamed function: its jobs call it by its new name
ALTER FUNCTION qtest.note(text) RENAME TO note_renamed;
SELECT eventic.enqueue('cached', 'qtest.note_renamed(text)', '["after the rename"]') AS job_id;
TRUNCATE qtest.log;
SELECT eventic.run_pending('cached') AS ran;
SELECT what FROM qtest.log ORDER BY n;
ALTER FUNCTION qtest.note_renamed(text) RENAME TO note;
-- a privilege granted, then revoked, is checked again at the next enqueue
GRANT USAGE ON SCHEMA qtest TO eventic_regress_bob;
GRANT EXECUTE ON FUNCTION qtest.secret() TO eventic_regress_bob;
SET ROLE eventic_regress_bob;
SELECT eventic.enqueue('cached', 'qtest.secret()') > 0 AS granted;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION qtest.secret() FROM eventic_regress_bob;
SET ROLE eventic_regress_bob;
SELECT code, message FROM pg_temp.try($$SELECT eventic.enqueue('cached', 'qtest.secret()')$$);
RESET ROLE;
SELECT eventic.drop_queue('cached');

------------------------------------------------------------------------------------------
SET client_min_messages = warning;
DROP SCHEMA qtest CASCADE;
DROP OWNED BY eventic_regress_alice, eventic_regress_bob;
DROP ROLE eventic_regress_alice;
DROP ROLE eventic_regress_bob;
RESET client_min_messages;
