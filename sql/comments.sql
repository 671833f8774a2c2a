-- COMMENT ON every function (DESIGN.md §7); the functions written in Rust get theirs here.

-- records
COMMENT ON FUNCTION eventic."create"(text, jsonb, uuid) IS 'Create a record of a class (version 0); returns its id';
COMMENT ON FUNCTION eventic.set_field(uuid, text, jsonb, integer) IS 'Append a version with one field changed; returns the new version (the current one if nothing changed)';
COMMENT ON FUNCTION eventic.set_fields(uuid, jsonb, integer) IS 'Append one version with every field of patch set';
COMMENT ON FUNCTION eventic.hydrate(uuid, integer) IS 'The model dump (fields, properties, id, version, class_type) of the latest or a given version';
COMMENT ON FUNCTION eventic.hydrate_as_of(uuid, timestamptz) IS 'The model dump of the version current at a time';
COMMENT ON FUNCTION eventic.history(uuid) IS 'Every version of a record, oldest first, with the fields each changed';
COMMENT ON FUNCTION eventic.diff(uuid, integer, integer) IS '{"field": {"old": …, "new": …}} for each field that differs between two versions';
COMMENT ON FUNCTION eventic.add_property(uuid, text, jsonb) IS 'Set a key of the property bag (a new version)';
COMMENT ON FUNCTION eventic.remove_property(uuid, text) IS 'Remove a key from the property bag (a new version)';
COMMENT ON FUNCTION eventic.list_properties(uuid) IS 'The property bag of the latest version';
COMMENT ON FUNCTION eventic.delete(uuid) IS 'Append a tombstone; history stays readable';
COMMENT ON FUNCTION eventic.purge(uuid) IS 'Remove every version of a record (owner or superuser only)';
COMMENT ON FUNCTION eventic.prune(text, integer, interval) IS 'Remove old versions of a class''s records, keeping version 0 and the latest (owner or superuser only)';
COMMENT ON FUNCTION eventic.apply_change(uuid, jsonb, jsonb) IS 'Append one version with the fields that differ between old_data and new_data (set, added, removed), built on the latest version (what UPDATE of eventic.latest and of class views does)';
COMMENT ON FUNCTION eventic.may_read_class(text) IS 'Whether the current role may read the records of a class (its owner, SELECT on its view or tracked table, superusers)';
COMMENT ON FUNCTION eventic.may_write_class(text) IS 'Whether the current role may write records of a class (its owner, INSERT/UPDATE/DELETE on its view or tracked table, superusers)';
COMMENT ON FUNCTION eventic.records_guard_insert() IS 'Trigger: only eventic appends versions; validates them and enqueues outbox events';
COMMENT ON FUNCTION eventic.records_redirect_update() IS 'Trigger: UPDATE of eventic.records appends one version, changes no row';
COMMENT ON FUNCTION eventic.records_guard_delete() IS 'Trigger: DELETE/TRUNCATE of eventic.records are refused';

-- classes
COMMENT ON FUNCTION eventic.register_class(text, jsonb, text) IS 'Register a class: its queue, an optional JSON Schema, an optional typed view';
COMMENT ON FUNCTION eventic.drop_class(text) IS 'Drop a class''s view, queue and registration; its records stay';
COMMENT ON FUNCTION eventic.track(regclass, text) IS 'Version an ordinary table: every row change appends a version';
COMMENT ON FUNCTION eventic.untrack(regclass) IS 'Stop versioning a table; history stays';
COMMENT ON FUNCTION eventic.tracked_id(regclass, text) IS 'The record id of a tracked row, from its key';
COMMENT ON FUNCTION eventic.tracked_write() IS 'Trigger of tracked tables: each row change appends a version (see eventic.track)';
COMMENT ON FUNCTION eventic._subscribe(text, oid) IS 'Internal: eventic.subscribe';
COMMENT ON FUNCTION eventic._unsubscribe(text, oid) IS 'Internal: eventic.unsubscribe';
COMMENT ON FUNCTION eventic.catalog_changed() IS 'Trigger: a change of eventic.classes or eventic.queues empties every backend''s cache of them';

-- queues
COMMENT ON FUNCTION eventic.create_queue(text, boolean) IS 'Create a queue (table eventic.queue_<name>); idempotent';
COMMENT ON FUNCTION eventic.alter_queue(text, integer, boolean, boolean, integer, interval) IS 'Change a queue''s concurrency, paused and worker flags, and its rate limit (rate_limit jobs start per rate_period at most; 0 removes it)';
COMMENT ON FUNCTION eventic.drop_queue(text) IS 'Drop a queue and its jobs';
COMMENT ON FUNCTION eventic._enqueue(text, oid, jsonb, timestamptz, integer, text, integer, oid) IS 'Internal: eventic.enqueue';
COMMENT ON FUNCTION eventic.run_pending(text, integer) IS 'Run ready jobs in this session (each as its enqueuer); returns how many ran';
COMMENT ON FUNCTION eventic._dequeue(text, integer, interval) IS 'Internal: eventic.dequeue';
COMMENT ON FUNCTION eventic.ack(text, bigint) IS 'External consumers: a dequeued job is done';
COMMENT ON FUNCTION eventic.nack(text, bigint, text) IS 'External consumers: a dequeued job failed; retried with backoff';
COMMENT ON FUNCTION eventic.extend_lease(text, bigint, interval) IS 'External consumers: keep a dequeued job longer';
COMMENT ON FUNCTION eventic.retry_job(text, bigint) IS 'Revive a dead job';
COMMENT ON FUNCTION eventic.queue_counts(text) IS 'The counts of eventic.queue_stats for one queue, of the jobs the caller may see';

-- workflows
COMMENT ON FUNCTION eventic._start_workflow(oid, jsonb, text, text, interval) IS 'Internal: eventic.start_workflow';
COMMENT ON FUNCTION eventic._step(text, oid, jsonb) IS 'Internal: eventic.step';
COMMENT ON FUNCTION eventic._transaction(text, oid, jsonb) IS 'Internal: eventic.transaction';
COMMENT ON FUNCTION eventic._start_child(oid, jsonb) IS 'Internal: eventic.start_child';
COMMENT ON FUNCTION eventic._fork_workflow(text, integer) IS 'Internal: eventic.fork_workflow';
COMMENT ON FUNCTION eventic._run_workflow(text) IS 'Internal: the job that runs (replays) a workflow';
COMMENT ON FUNCTION eventic.sleep(interval) IS 'Inside a workflow: a durable sleep';
COMMENT ON FUNCTION eventic.recv(text, interval) IS 'Inside a workflow: the next message on a topic, NULL after the timeout';
COMMENT ON FUNCTION eventic.set_event(text, jsonb) IS 'Inside a workflow: publish a value under a key';
COMMENT ON FUNCTION eventic.await_workflow(text) IS 'Inside a workflow: wait for another workflow''s output';
COMMENT ON FUNCTION eventic.now() IS 'Inside a workflow: the time, recorded for replays';
COMMENT ON FUNCTION eventic.random() IS 'Inside a workflow: a random number, recorded for replays';
COMMENT ON FUNCTION eventic.workflow_id() IS 'Inside a workflow: its id';
COMMENT ON FUNCTION eventic.patched(text) IS 'Inside a workflow: true if this run reaches the patch for the first time (recorded), false if it passed this point before the patch existed';
COMMENT ON FUNCTION eventic.set_progress(jsonb) IS 'Inside a job or a workflow step: show progress to other sessions now (eventic.progress), with the time (a heartbeat)';
COMMENT ON FUNCTION eventic.worker_liveness() IS 'How many eventic workers are connected to this database, and whether the launcher runs (for eventic.metrics)';
COMMENT ON FUNCTION eventic.progress_rows() IS 'What eventic.progress shows: the progress of running jobs that run as a role the caller has the privileges of';
COMMENT ON FUNCTION eventic.send(text, text, jsonb) IS 'Send a message to a workflow';
COMMENT ON FUNCTION eventic.get_event(text, text, interval) IS 'A value a workflow published, waiting up to the timeout';
COMMENT ON FUNCTION eventic.wait_workflow(text, interval) IS 'Wait for a workflow''s output (NULL on timeout)';
COMMENT ON FUNCTION eventic.workflow_status(text) IS 'A workflow''s status';
COMMENT ON FUNCTION eventic.cancel_workflow(text) IS 'Cancel a workflow: its later steps never run';
COMMENT ON FUNCTION eventic.resume_workflow(text) IS 'Run a cancelled or failed workflow again from its last recorded step';
COMMENT ON FUNCTION eventic._request_workers() IS 'Internal: ask the launcher to start this database''s workers when the transaction commits';

-- Internal functions (_ names) are eventic's own: ordinary roles call the public ones, which
-- check them first (DESIGN.md §6).
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'eventic'::regnamespace AND p.proname LIKE '\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$;

-- with eventic preloaded, this database gets its workers as soon as CREATE EXTENSION commits
SELECT eventic._request_workers();
COMMENT ON FUNCTION eventic.start_external_workflow(text, jsonb, text, interval) IS 'Start a workflow whose body (by name) runs in an external runner (the Python package); returns its id';
COMMENT ON FUNCTION eventic.claim_workflows(text[], integer, interval, text) IS 'External runners: lease runnable workflows of the current role, with their recorded steps';
COMMENT ON FUNCTION eventic.record_step(text, bigint, integer, text, text, jsonb, text, integer) IS 'External runners: record a step of a held workflow (with its effects, in one transaction)';
COMMENT ON FUNCTION eventic.workflow_sleep(text, bigint, integer, interval) IS 'External runners: a durable sleep; returns the seconds left (0: go on; more: the workflow sleeps, lease released)';
COMMENT ON FUNCTION eventic.workflow_recv(text, bigint, integer, text, interval) IS 'External runners: receive a message, or release the workflow to wait for it';
COMMENT ON FUNCTION eventic.workflow_set_event(text, bigint, integer, text, jsonb) IS 'External runners: publish an event as a step';
COMMENT ON FUNCTION eventic.finish_workflow(text, bigint, jsonb, text) IS 'External runners: end a held workflow with its output or error';
COMMENT ON FUNCTION eventic.extend_workflow_lease(text, bigint, interval) IS 'External runners: keep holding a workflow longer';
COMMENT ON FUNCTION eventic.release_workflow(text, bigint) IS 'External runners: give a held workflow back (runnable again at once)';
