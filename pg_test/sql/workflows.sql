-- Durable workflows (DESIGN.md §4, §5, §6): start_workflow (idempotent by id), steps recorded
-- and run exactly once, recorded now/random, workflow_id, errors of the body and of steps
-- (retries), send/recv, set_event/get_event, sleep, cancel, resume, fork, children, the
-- views eventic.workflows and eventic.workflow_steps, and every error path.
-- The cluster preloads eventic, so its worker runs workflows of the queue 'workflows'
-- asynchronously: the file waits with eventic.wait_workflow (or pg_temp.wait_until) before it
-- prints, and prints no timestamps or generated ids. Workflows of the queue 'wf_manual'
-- (worker => false) run only when this file calls eventic.run_pending.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS wftest CASCADE;
DROP ROLE IF EXISTS eventic_regress_wf_alice;
DROP ROLE IF EXISTS eventic_regress_wf_bob;
RESET client_min_messages;

-- pg_temp.wait_until(condition): polls the boolean query (each try sees what has committed)
-- until it is true or the timeout passes; returns its last value
CREATE FUNCTION pg_temp.wait_until(cond text, timeout interval DEFAULT '60 seconds')
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + timeout;
    ok boolean;
BEGIN
    LOOP
        EXECUTE 'SELECT (' || cond || ')' INTO ok;
        EXIT WHEN ok OR clock_timestamp() > deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN ok;
END
$$;

CREATE SCHEMA wftest;
-- what the steps (and bodies) did, in order
CREATE TABLE wftest.log (n serial PRIMARY KEY, workflow text NOT NULL, what text NOT NULL,
                         who text NOT NULL DEFAULT current_user);
CREATE TABLE wftest.flags (fixed boolean NOT NULL);
INSERT INTO wftest.flags VALUES (false);
CREATE SEQUENCE wftest.fickle_seq;

-- step functions
CREATE FUNCTION wftest.note(workflow text, what text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO wftest.log (workflow, what) VALUES (workflow, what) RETURNING what || ' done' $$;
CREATE FUNCTION wftest.add(a integer, b integer) RETURNS integer LANGUAGE sql AS $$ SELECT a + b $$;
-- logs, then fails until wftest.flags says fixed (a failed attempt leaves no log row)
CREATE FUNCTION wftest.flaky(workflow text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO wftest.log (workflow, what) VALUES (workflow, 'flaky');
    IF NOT (SELECT fixed FROM wftest.flags) THEN
        RAISE EXCEPTION 'flaky step failed';
    END IF;
    RETURN 'flaky fixed';
END
$$;

-- workflow bodies
CREATE FUNCTION wftest.noop(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
-- three steps; the body also writes outside any step (kept once: only the last replay commits)
CREATE FUNCTION wftest.three_steps(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a text;
    b integer;
    c jsonb;
BEGIN
    INSERT INTO wftest.log (workflow, what) VALUES (eventic.workflow_id(), 'body');
    a := eventic.step('first', 'wftest.note(text,text)',
                      jsonb_build_array(eventic.workflow_id(), 'first')) #>> '{}';
    b := eventic.step('second', 'wftest.add(integer,integer)',
                      jsonb_build_array(input->'n', 40))::integer;
    c := eventic.step('third', 'wftest.note(text,text)',
                      jsonb_build_array(eventic.workflow_id(), 'third'));
    RETURN jsonb_build_object('id', eventic.workflow_id(), 'a', a, 'b', b, 'c', c);
END
$$;
-- recorded time and random value, with a step between so the body is replayed
CREATE FUNCTION wftest.clock(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := eventic.now();
    r float8 := eventic.random();
BEGIN
    PERFORM eventic.step('between', 'wftest.note(text,text)',
                         jsonb_build_array(eventic.workflow_id(), 'between'));
    RETURN jsonb_build_object('now', t, 'random', r, 'id', eventic.workflow_id());
END
$$;
CREATE FUNCTION wftest.fails(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.step('before', 'wftest.note(text,text)',
                         jsonb_build_array(eventic.workflow_id(), 'before'));
    RAISE EXCEPTION 'body failed: %', input->>'why';
END
$$;
CREATE FUNCTION wftest.flaky_body(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.step('one', 'wftest.note(text,text)', jsonb_build_array(eventic.workflow_id(), 'one'));
    PERFORM eventic.step('flaky', 'wftest.flaky(text)', jsonb_build_array(eventic.workflow_id()));
    PERFORM eventic.step('three', 'wftest.note(text,text)', jsonb_build_array(eventic.workflow_id(), 'three'));
    RETURN '"all three"';
END
$$;
CREATE FUNCTION wftest.listener(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    msg jsonb;
    late jsonb;
BEGIN
    PERFORM eventic.set_event('ready', jsonb_build_object('listening', true));
    msg := eventic.recv('go', '60 seconds');
    late := eventic.recv('late', '1 second');
    PERFORM eventic.set_event('done', msg);
    RETURN jsonb_build_object('msg', msg, 'late', late);
END
$$;
CREATE FUNCTION wftest.mailbox(input jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT jsonb_build_array(eventic.recv('box', '1 hour'), eventic.recv('box', '1 hour')) $$;
CREATE FUNCTION wftest.napper(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.step('before', 'wftest.note(text,text)', jsonb_build_array(eventic.workflow_id(), 'before'));
    PERFORM eventic.sleep((input->>'sleep')::interval);
    PERFORM eventic.step('after', 'wftest.note(text,text)', jsonb_build_array(eventic.workflow_id(), 'after'));
    RETURN '"rested"';
END
$$;
CREATE FUNCTION wftest.parent(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    a text;
    b text;
BEGIN
    a := eventic.start_child('wftest.three_steps(jsonb)', '{"n": 1}');
    b := eventic.start_child('wftest.three_steps(jsonb)', '{"n": 2}');
    RETURN jsonb_build_object('children', jsonb_build_array(a, b),
                              'outputs', jsonb_build_array(eventic.await_workflow(a) - 'id',
                                                           eventic.await_workflow(b) - 'id'));
END
$$;
CREATE FUNCTION wftest.bad_parent(input jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT eventic.await_workflow(eventic.start_child('wftest.fails(jsonb)', '{"why": "child"}')) $$;
CREATE FUNCTION wftest.await_unknown(input jsonb) RETURNS jsonb LANGUAGE sql AS
  $$ SELECT eventic.await_workflow('no-such-workflow') $$;
-- asks for a differently named step on every replay (nextval is not rolled back); the sleep
-- makes it a body that is replayed (one that finishes in one speculative run is not)
CREATE FUNCTION wftest.fickle(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM eventic.sleep('0 seconds');
    RETURN eventic.step('s' || nextval('wftest.fickle_seq'), 'wftest.add(integer,integer)', '[1, 2]');
END $$;
CREATE FUNCTION wftest.bad_sleep(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS
  $$ BEGIN PERFORM eventic.sleep('-1 second'); RETURN 'true'; END $$;
-- not workflow bodies
CREATE FUNCTION wftest.takes_text(input text) RETURNS jsonb LANGUAGE sql AS $$ SELECT '1'::jsonb $$;
CREATE FUNCTION wftest.returns_text(input jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION wftest.two_args(input jsonb, extra jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
CREATE FUNCTION wftest.no_args() RETURNS jsonb LANGUAGE sql AS $$ SELECT '1'::jsonb $$;
CREATE PROCEDURE wftest.proc(input jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION wftest.secret(input jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT input $$;
REVOKE EXECUTE ON FUNCTION wftest.secret(jsonb) FROM PUBLIC;

SELECT eventic.create_queue('wf_manual', worker => false);

------------------------------------------------------------------------------------------
-- the views' columns
SELECT column_name, data_type FROM information_schema.columns
 WHERE table_schema = 'eventic' AND table_name = 'workflows' ORDER BY ordinal_position;
SELECT column_name, data_type FROM information_schema.columns
 WHERE table_schema = 'eventic' AND table_name = 'workflow_steps' ORDER BY ordinal_position;

------------------------------------------------------------------------------------------
-- a step that fails until fixed: started first, as its retries take a few seconds (backoff
-- 2 s, then 4 s); checked further down
SELECT eventic.start_workflow('wftest.flaky_body(jsonb)', '{}', 'wf-flaky');

------------------------------------------------------------------------------------------
-- start_workflow returns the id; the queue 'workflows' is created on first use
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 2}', 'wf-1');
SELECT queue_name, worker FROM eventic.queues WHERE queue_name = 'workflows';
-- the same id again (even with another function or input) returns it and starts nothing new
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 2}', 'wf-1');
SELECT eventic.start_workflow('wftest.noop(jsonb)', '{"n": 99}', 'wf-1');
SELECT eventic.wait_workflow('wf-1', '60 seconds');
SELECT workflow_id, name, status, input, output, error, queue_name, started_by, parent_id,
       deadline IS NULL AS no_deadline, updated_at >= created_at AS updated_after_created
  FROM eventic.workflows WHERE workflow_id = 'wf-1';
-- every step once, in position order; each effect exactly once (the body's own write too)
SELECT position, name, kind, output, error, attempts, waiting
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-1' ORDER BY position;
SELECT what, who, count(*) FROM wftest.log WHERE workflow = 'wf-1' GROUP BY what, who ORDER BY min(n);
-- starting a finished workflow again returns it and runs nothing
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 2}', 'wf-1');
SELECT eventic.workflow_status('wf-1');
SELECT count(*) AS wf_1_effects FROM wftest.log WHERE workflow = 'wf-1';
SELECT count(*) AS workflows_named_wf_1 FROM eventic.workflows WHERE workflow_id = 'wf-1';

-- without an id: a UUIDv7 text
SELECT eventic.start_workflow('wftest.noop(jsonb)', '{"anonymous": true}') AS anon_id \gset
SELECT length(:'anon_id') AS id_length, substr(:'anon_id', 15, 1) AS uuid_version,
       :'anon_id'::uuid IS NOT NULL AS is_uuid;
SELECT eventic.wait_workflow(:'anon_id', '60 seconds');
-- input defaults to {}
SELECT eventic.start_workflow('wftest.noop(jsonb)', workflow_id => 'wf-default-input');
SELECT eventic.wait_workflow('wf-default-input', '60 seconds');

-- a start that rolls back starts nothing
BEGIN;
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 0}', 'wf-rolled-back');
ROLLBACK;
SELECT code, message FROM pg_temp.try($$SELECT eventic.workflow_status('wf-rolled-back')$$);

-- another queue
SELECT eventic.create_queue('wf_other');
SELECT eventic.start_workflow('wftest.noop(jsonb)', '{"q": "other"}', 'wf-other-queue', 'wf_other');
SELECT eventic.wait_workflow('wf-other-queue', '60 seconds');
SELECT workflow_id, name, status, queue_name FROM eventic.workflows WHERE workflow_id = 'wf-other-queue';

-- bad starts: 22023 (not fn(jsonb) returns jsonb, or not executable), 42704 (queue), NULLs
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.takes_text(text)')$$);
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.returns_text(jsonb)')$$);
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.two_args(jsonb,jsonb)')$$);
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.no_args()')$$);
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.proc(jsonb)')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.missing(jsonb)')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.noop(jsonb)', '{}', 'wf-bad', 'no_such_queue')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.noop(jsonb)', '{}', 'wf-bad', 'Bad-Name')$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.start_workflow(NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.start_workflow(NULL, '{}', 'wf-bad')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.noop(jsonb)', NULL, 'wf-bad')$$);
SELECT count(*) AS bad_starts_written FROM eventic.workflows WHERE workflow_id = 'wf-bad';

------------------------------------------------------------------------------------------
-- the step functions outside a workflow body: 22023
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.step('x', 'wftest.add(integer,integer)', '[1, 2]')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.sleep('1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.recv('go', '1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_event('k', '1')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.start_child('wftest.noop(jsonb)')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.await_workflow('wf-1')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.now()$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.random()$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.workflow_id()$$);
-- and with bad arguments
SELECT code, message FROM pg_temp.try($$SELECT eventic.sleep('-1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.sleep(NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.step(NULL, 'wftest.add(integer,integer)')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.step('x', NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.recv(NULL)$$);

------------------------------------------------------------------------------------------
-- the outside functions with an unknown id: P0002; with NULLs: 22023
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.workflow_status('nope')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('nope', '1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.send('nope', 'go', '1')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.get_event('nope', 'ready')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.cancel_workflow('nope')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.resume_workflow('nope')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.fork_workflow('nope', 0)$$);
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.fork_workflow('wf-1', -1)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.fork_workflow('wf-1', NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.workflow_status(NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow(NULL, '1 second')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-1', NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.send(NULL, 'go', '1')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.send('wf-1', NULL, '1')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.get_event(NULL, 'ready')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.get_event('wf-1', NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.cancel_workflow(NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.resume_workflow(NULL)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.fork_workflow(NULL, 0)$$);
SELECT count(*) AS workflows_after_errors FROM eventic.workflows;
SELECT count(*) AS messages_after_errors FROM eventic.workflow_messages;

------------------------------------------------------------------------------------------
-- recorded now() and random(): the body sees on its last replay the values recorded on its
-- first run
SELECT eventic.start_workflow('wftest.clock(jsonb)', '{}', 'wf-clock');
SELECT eventic.wait_workflow('wf-clock', '60 seconds') ->> 'id' AS workflow_id_inside;
SELECT position, name, kind, jsonb_typeof(output) AS output_type, attempts
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-clock' ORDER BY position;
SELECT (w.output->>'now')::timestamptz = (s.output #>> '{}')::timestamptz AS now_as_recorded,
       (w.output->'random') = r.output AS random_as_recorded,
       (r.output)::float8 >= 0 AND (r.output)::float8 < 1 AS random_in_range
  FROM eventic.workflows w
  JOIN eventic.workflow_steps s ON s.workflow_id = w.workflow_id AND s.kind = 'now'
  JOIN eventic.workflow_steps r ON r.workflow_id = w.workflow_id AND r.kind = 'random'
 WHERE w.workflow_id = 'wf-clock';
SELECT what, count(*) FROM wftest.log WHERE workflow = 'wf-clock' GROUP BY what;

------------------------------------------------------------------------------------------
-- a body that raises: ERROR with its message; the step before it ran once; wait_workflow
-- raises the error
SELECT eventic.start_workflow('wftest.fails(jsonb)', '{"why": "on purpose"}', 'wf-fails');
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-fails', '60 seconds')$$);
SELECT status, output, error FROM eventic.workflows WHERE workflow_id = 'wf-fails';
SELECT position, name, kind, output, error, attempts
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-fails' ORDER BY position;
SELECT what, count(*) FROM wftest.log WHERE workflow = 'wf-fails' GROUP BY what;
-- a body that sleeps a negative interval fails with that error
SELECT eventic.start_workflow('wftest.bad_sleep(jsonb)', '{}', 'wf-bad-sleep');
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-bad-sleep', '60 seconds')$$);
-- a body whose step sequence differs from the record fails with a clear error
SELECT eventic.start_workflow('wftest.fickle(jsonb)', '{}', 'wf-fickle');
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-fickle', '60 seconds')$$);
SELECT position, name, kind, CASE WHEN kind = 'step' THEN output END AS output
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-fickle';
-- a workflow whose timeout passed before it ran: ERROR timed out
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 0}', 'wf-timeout', timeout => '0 seconds');
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-timeout', '60 seconds')$$);
SELECT status, error FROM eventic.workflows WHERE workflow_id = 'wf-timeout';
SELECT count(*) AS timed_out_effects FROM wftest.log WHERE workflow = 'wf-timeout';

------------------------------------------------------------------------------------------
-- the failing step (started above): three attempts, then the workflow is ERROR; the failed
-- attempts left no effect; the step before it ran once and the one after never
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-flaky', '60 seconds')$$);
SELECT status, error FROM eventic.workflows WHERE workflow_id = 'wf-flaky';
SELECT position, name, kind, output, error, attempts
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-flaky' ORDER BY position;
SELECT what FROM wftest.log WHERE workflow = 'wf-flaky' ORDER BY n;
-- fixed meanwhile: resume runs the failed step again (new attempts) and the rest, the
-- recorded step before it is not run again
UPDATE wftest.flags SET fixed = true;
SELECT eventic.resume_workflow('wf-flaky');
SELECT eventic.wait_workflow('wf-flaky', '60 seconds');
SELECT status, error FROM eventic.workflows WHERE workflow_id = 'wf-flaky';
SELECT position, name, kind, output, error, attempts
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-flaky' ORDER BY position;
SELECT what FROM wftest.log WHERE workflow = 'wf-flaky' ORDER BY n;
-- resume of a workflow that did not fail or get cancelled does nothing
SELECT eventic.resume_workflow('wf-flaky');
SELECT eventic.workflow_status('wf-flaky');
UPDATE wftest.flags SET fixed = false;

-- the retries are scheduled with backoff: run by hand on the manual queue
SELECT eventic.start_workflow('wftest.flaky_body(jsonb)', '{}', 'wf-backoff', 'wf_manual');
SELECT eventic.workflow_status('wf-backoff');
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT name, attempts, error FROM eventic.workflow_steps WHERE workflow_id = 'wf-backoff' ORDER BY position;
SELECT run_at - now() BETWEEN interval '1 second' AND interval '2 seconds' AS retry_in_2s
  FROM eventic.queue_wf_manual;
UPDATE eventic.queue_wf_manual SET run_at = now() - interval '1 second';
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT run_at - now() BETWEEN interval '3 seconds' AND interval '4 seconds' AS retry_in_4s
  FROM eventic.queue_wf_manual;
UPDATE eventic.queue_wf_manual SET run_at = now() - interval '1 second';
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT status, error FROM eventic.workflows WHERE workflow_id = 'wf-backoff';
SELECT name, attempts, error FROM eventic.workflow_steps WHERE workflow_id = 'wf-backoff' ORDER BY position;
SELECT count(*) AS jobs_left FROM eventic.queue_wf_manual;

------------------------------------------------------------------------------------------
-- send / recv / set_event / get_event
SELECT eventic.start_workflow('wftest.listener(jsonb)', '{}', 'wf-recv');
-- get_event waits for the event; by then the workflow waits for its message
SELECT eventic.get_event('wf-recv', 'ready', '60 seconds');
SELECT eventic.workflow_status('wf-recv');
SELECT position, name, kind, waiting
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-recv' ORDER BY position;
-- an event not set (yet): NULL, at once or after the timeout
SELECT eventic.get_event('wf-recv', 'done') IS NULL AS not_yet;
SELECT eventic.get_event('wf-recv', 'missing', '0.2 seconds') IS NULL AS never_set;
SELECT eventic.send('wf-recv', 'other', '"not for recv"');
SELECT eventic.send('wf-recv', 'go', '{"n": 1}');
-- the message arrives; the second recv times out with NULL
SELECT eventic.wait_workflow('wf-recv', '60 seconds');
SELECT eventic.get_event('wf-recv', 'done');
SELECT position, name, kind, output, waiting
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-recv' ORDER BY position;
-- the message of another topic is still there
SELECT workflow_id, topic, message FROM eventic.workflow_messages;

-- messages sent before the workflow runs wait for it, taken in order
SELECT eventic.start_workflow('wftest.mailbox(jsonb)', '{}', 'wf-mailbox', 'wf_manual');
SELECT eventic.send('wf-mailbox', 'box', '"first"');
SELECT eventic.send('wf-mailbox', 'box', '"second"');
SELECT eventic.send('wf-mailbox', 'box', '"third"');
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT status, output FROM eventic.workflows WHERE workflow_id = 'wf-mailbox';
SELECT topic, message FROM eventic.workflow_messages WHERE workflow_id = 'wf-mailbox';

------------------------------------------------------------------------------------------
-- cancel a sleeping workflow: CANCELLED, its later steps never run (manual queue, so the
-- wake-up run is ours to make)
SELECT eventic.start_workflow('wftest.napper(jsonb)', '{"sleep": "1 second"}', 'wf-nap', 'wf_manual');
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT eventic.workflow_status('wf-nap');
SELECT position, name, kind FROM eventic.workflow_steps WHERE workflow_id = 'wf-nap' ORDER BY position;
SELECT eventic.cancel_workflow('wf-nap');
SELECT eventic.workflow_status('wf-nap');
-- wait_workflow returns at once for a cancelled workflow, with no output
SELECT eventic.wait_workflow('wf-nap', '60 seconds') IS NULL AS no_output;
SELECT pg_sleep(1.5);
SELECT eventic.run_pending('wf_manual') AS ran_wake_up;
SELECT eventic.workflow_status('wf-nap');
SELECT what FROM wftest.log WHERE workflow = 'wf-nap' ORDER BY n;
-- resume: the recorded step is not run again, the sleep is over, the rest runs
SELECT eventic.resume_workflow('wf-nap');
SELECT eventic.workflow_status('wf-nap');
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT status, output FROM eventic.workflows WHERE workflow_id = 'wf-nap';
SELECT what FROM wftest.log WHERE workflow = 'wf-nap' ORDER BY n;
-- cancel of a finished workflow does nothing
SELECT eventic.cancel_workflow('wf-nap');
SELECT eventic.workflow_status('wf-nap');
SELECT eventic.cancel_workflow('wf-fails');
SELECT eventic.workflow_status('wf-fails');
-- a cancelled workflow that has not run yet never runs
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 0}', 'wf-cancel-early', 'wf_manual');
SELECT eventic.cancel_workflow('wf-cancel-early');
SELECT eventic.run_pending('wf_manual') AS ran;
SELECT eventic.workflow_status('wf-cancel-early');
SELECT count(*) AS effects FROM wftest.log WHERE workflow = 'wf-cancel-early';

-- the same with the worker: a workflow asleep for an hour
SELECT eventic.start_workflow('wftest.napper(jsonb)', '{"sleep": "1 hour"}', 'wf-hour');
SELECT pg_temp.wait_until($$eventic.workflow_status('wf-hour') = 'SLEEPING'$$);
-- wait_workflow times out with NULL
SELECT eventic.wait_workflow('wf-hour', '0.2 seconds') IS NULL AS timed_out;
SELECT eventic.cancel_workflow('wf-hour');
SELECT eventic.workflow_status('wf-hour');
-- resumed, it sleeps again (the recorded wake-up time stays): its first step is not run again
SELECT eventic.resume_workflow('wf-hour');
SELECT pg_temp.wait_until($$eventic.workflow_status('wf-hour') = 'SLEEPING'$$);
SELECT what FROM wftest.log WHERE workflow = 'wf-hour' ORDER BY n;
SELECT position, name, kind FROM eventic.workflow_steps WHERE workflow_id = 'wf-hour' ORDER BY position;
SELECT eventic.cancel_workflow('wf-hour');

------------------------------------------------------------------------------------------
-- fork_workflow(id, n): a new workflow that reuses the records before position n
SELECT eventic.fork_workflow('wf-1', 2) AS fork2 \gset
SELECT eventic.wait_workflow(:'fork2', '60 seconds') - 'id' AS output,
       eventic.wait_workflow(:'fork2', '60 seconds') ->> 'id' = :'fork2' AS own_id;
SELECT name, status, input, queue_name FROM eventic.workflows WHERE workflow_id = :'fork2';
SELECT position, name, output FROM eventic.workflow_steps WHERE workflow_id = :'fork2' ORDER BY position;
-- only the third step ran again (and the body's own write)
SELECT what FROM wftest.log WHERE workflow = :'fork2' ORDER BY n;
-- from 0: everything runs again
SELECT eventic.fork_workflow('wf-1', 0) AS fork0 \gset
SELECT eventic.wait_workflow(:'fork0', '60 seconds') - 'id' AS output;
SELECT what FROM wftest.log WHERE workflow = :'fork0' ORDER BY n;
-- past the end: every step from the record
SELECT eventic.fork_workflow('wf-1', 99) AS fork99 \gset
SELECT eventic.wait_workflow(:'fork99', '60 seconds') - 'id' AS output;
SELECT what FROM wftest.log WHERE workflow = :'fork99' ORDER BY n;
-- the original is untouched
SELECT count(*) AS wf_1_effects FROM wftest.log WHERE workflow = 'wf-1';
SELECT count(*) AS wf_1_steps FROM eventic.workflow_steps WHERE workflow_id = 'wf-1';

------------------------------------------------------------------------------------------
-- start_child / await_workflow: children are named <parent>/<position>
SELECT eventic.start_workflow('wftest.parent(jsonb)', '{}', 'wf-parent');
SELECT eventic.wait_workflow('wf-parent', '120 seconds');
SELECT workflow_id, name, status, input, parent_id, queue_name
  FROM eventic.workflows WHERE workflow_id LIKE 'wf-parent%' ORDER BY workflow_id;
SELECT position, name, kind, output
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-parent' ORDER BY position;
SELECT workflow, what, count(*) FROM wftest.log WHERE workflow LIKE 'wf-parent%'
 GROUP BY workflow, what ORDER BY workflow, min(n);
-- a failing child fails its parent
SELECT eventic.start_workflow('wftest.bad_parent(jsonb)', '{}', 'wf-bad-parent');
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-bad-parent', '120 seconds')$$);
SELECT workflow_id, status, error, parent_id
  FROM eventic.workflows WHERE workflow_id LIKE 'wf-bad-parent%' ORDER BY workflow_id;
SELECT position, name, kind, output, error
  FROM eventic.workflow_steps WHERE workflow_id = 'wf-bad-parent' ORDER BY position;
-- awaiting a workflow that does not exist
SELECT eventic.start_workflow('wftest.await_unknown(jsonb)', '{}', 'wf-await-unknown');
SELECT code, message FROM pg_temp.try($$SELECT eventic.wait_workflow('wf-await-unknown', '60 seconds')$$);

------------------------------------------------------------------------------------------
-- security: a workflow runs as the role that started it; only that role or a superuser
-- cancels, resumes or forks it; the workflow tables are not writable directly
CREATE ROLE eventic_regress_wf_alice;
CREATE ROLE eventic_regress_wf_bob;
GRANT USAGE ON SCHEMA wftest TO eventic_regress_wf_alice, eventic_regress_wf_bob;
GRANT SELECT, INSERT ON wftest.log TO eventic_regress_wf_alice, eventic_regress_wf_bob;
GRANT USAGE ON SEQUENCE wftest.log_n_seq TO eventic_regress_wf_alice, eventic_regress_wf_bob;
SET ROLE eventic_regress_wf_alice;
SELECT eventic.start_workflow('wftest.three_steps(jsonb)', '{"n": 5}', 'wf-alice');
SELECT eventic.wait_workflow('wf-alice', '60 seconds') - 'id' AS output;
SELECT code, hint FROM pg_temp.try($$SELECT eventic.start_workflow('wftest.secret(jsonb)', '{}', 'wf-secret')$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.workflow_runs SET status = 'SUCCESS'$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.workflow_records$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.workflow_messages (workflow_id, topic) VALUES ('wf-1', 'x')$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.workflow_events$$);
RESET ROLE;
SELECT workflow_id, status, started_by FROM eventic.workflows WHERE workflow_id = 'wf-alice';
SELECT what, who FROM wftest.log WHERE workflow = 'wf-alice' ORDER BY n;
SET ROLE eventic_regress_wf_bob;
SELECT code, message, hint FROM pg_temp.try($$SELECT eventic.cancel_workflow('wf-alice')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.resume_workflow('wf-alice')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.fork_workflow('wf-alice', 0)$$);
SELECT eventic.workflow_status('wf-alice');
RESET ROLE;
SELECT count(*) AS alice_workflows FROM eventic.workflows WHERE started_by = 'eventic_regress_wf_alice'::regrole;

------------------------------------------------------------------------------------------
-- every workflow of this file, at the end
SELECT workflow_id, name, status FROM eventic.workflows
 WHERE workflow_id LIKE 'wf-%' ORDER BY workflow_id;

SET client_min_messages = warning;
DROP SCHEMA wftest CASCADE;
DROP OWNED BY eventic_regress_wf_alice, eventic_regress_wf_bob;
DROP ROLE eventic_regress_wf_alice;
DROP ROLE eventic_regress_wf_bob;
RESET client_min_messages;
