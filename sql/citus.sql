-- Scale-out on Citus (README "Scale-out"): eventic.distribute and the write it ships to the
-- node holding a record.

-- Internal: one write of a record on the node holding it (src/records/shipped.rs). Runs as the calling
-- role with the same checks as eventic.create/set_fields/purge; the router query that calls it
-- is itself a query on a shard, so its own statements are a nested distributed execution
-- (local: the record's shard is on this node).
CREATE FUNCTION eventic._write_on_shard(id uuid, op text, class_type text, fields jsonb,
                                        removed text[], props jsonb, props_removed text[],
                                        tombstone boolean, expected integer, revive boolean)
RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
SET citus.allow_nested_distributed_execution = on
AS 'MODULE_PATHNAME', 'write_on_shard_wrapper';
COMMENT ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) IS
  'Internal (Citus): one write of a record, run on the node holding it; returns its version and outbox event';

CREATE FUNCTION eventic.distribute(shard_count integer DEFAULT NULL) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fn regprocedure;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = current_user AND rolsuper) THEN
        RAISE EXCEPTION 'permission denied to distribute eventic'
            USING ERRCODE = '42501', HINT = 'Run eventic.distribute() as a superuser, on the Citus coordinator.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in database %', pg_catalog.current_database()
            USING ERRCODE = '0A000',
                  HINT = 'Add citus first to shared_preload_libraries (''citus,eventic''), run CREATE EXTENSION citus on every node and add the workers with citus_add_node, then call eventic.distribute() on the coordinator.';
    END IF;
    IF NOT (SELECT pg_catalog.citus_is_coordinator()) THEN
        RAISE EXCEPTION 'eventic.distribute() must run on the Citus coordinator'
            USING ERRCODE = '0A000',
                  HINT = 'Connect to the coordinator (SELECT citus_set_coordinator_host(...) registers it) and run it there.';
    END IF;
    -- The write a coordinator ships to the node holding a record: Citus runs it there as the
    -- calling role, which must be allowed to. Granted only here, on every node, so that a
    -- single server keeps every internal function closed to PUBLIC.
    GRANT EXECUTE ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) TO PUBLIC;
    PERFORM pg_catalog.run_command_on_workers(
        'GRANT EXECUTE ON FUNCTION eventic._write_on_shard(uuid, text, text, jsonb, text[], jsonb, text[], boolean, integer, boolean) TO PUBLIC');
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'eventic.records'::regclass) THEN
        RETURN;  -- done already
    END IF;
    -- the guard and redirect triggers of eventic.records run on its shards
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- Classes on every node: the row-level security of records and the JSON Schema check run
    -- where the record is. Queues stay on the coordinator (its background worker runs them),
    -- so the registry no longer references them.
    ALTER TABLE eventic.classes DROP CONSTRAINT IF EXISTS classes_queue_name_fkey;
    PERFORM pg_catalog.create_reference_table('eventic.classes');
    PERFORM pg_catalog.create_distributed_table('eventic.records', 'id',
                                                shard_count => shard_count);
    -- reads run where the record is (Citus delegates a call made outside a transaction
    -- block); writes are shipped there by eventic itself (eventic._write_on_shard)
    FOREACH fn IN ARRAY ARRAY['eventic.hydrate(uuid,integer)', 'eventic.hydrate_as_of(uuid,timestamptz)',
                              'eventic.history(uuid)', 'eventic.diff(uuid,integer,integer)',
                              'eventic.list_properties(uuid)']::regprocedure[] LOOP
        PERFORM pg_catalog.create_distributed_function(fn, 'id', colocate_with => 'eventic.records');
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION eventic.distribute(integer) FROM PUBLIC;
COMMENT ON FUNCTION eventic.distribute(integer) IS
  'Citus: distribute eventic.records by id over the workers (classes become a reference table; queues and workflows stay on the coordinator)';
