-- Classes (DESIGN.md §2): a JSON Schema per class, its queue, its typed view.

CREATE TABLE eventic.classes (
    class_name   text        PRIMARY KEY,
    queue_name   text        NOT NULL UNIQUE REFERENCES eventic.queues (queue_name),
    json_schema  jsonb,
    view_schema  name,
    view_name    name,
    owner        regrole     NOT NULL,
    -- (functions and roles by name in a dump: a restore elsewhere maps them to its own oids)
    subscribers  regprocedure[] NOT NULL DEFAULT '{}',  -- handler(event jsonb) functions (eventic.subscribe)
    subscriber_roles regrole[]  NOT NULL DEFAULT '{}',  -- who subscribed each handler (it runs as that role)
    tracked_table regclass,                          -- the table of a class made by eventic.track
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE eventic.classes IS
  'Registered record classes: queue, optional JSON Schema (validated on every new version), optional typed view';
COMMENT ON COLUMN eventic.classes.owner IS 'The role that registered the class (an oid): it owns the class''s records and may change or drop it';
SELECT pg_catalog.pg_extension_config_dump('eventic.classes', '');
GRANT SELECT ON eventic.classes TO PUBLIC;

-- Each backend caches classes (compiled validators) and queues; any change to either table
-- empties those caches (src/catalog_cache.rs).
CREATE TRIGGER classes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventic.classes
    FOR EACH STATEMENT EXECUTE FUNCTION eventic.catalog_changed();
CREATE TRIGGER queues_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventic.queues
    FOR EACH STATEMENT EXECUTE FUNCTION eventic.catalog_changed();

-- INSTEAD OF trigger of every class view: TG_ARGV[0] is the class, the rest its field columns.
-- INSERT → eventic.create, UPDATE → one version with the changed columns, DELETE → tombstone.
CREATE FUNCTION eventic.class_view_write() RETURNS trigger
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

CREATE FUNCTION eventic.subscribe(class_name text, handler regprocedure) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'subscribe_wrapper';
COMMENT ON FUNCTION eventic.subscribe(text, regprocedure) IS
  'Transactional outbox: every new version of the class enqueues handler(event jsonb) on the class queue, in the same transaction; it runs as the role that subscribed';
CREATE FUNCTION eventic.unsubscribe(class_name text, handler regprocedure) RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'unsubscribe_wrapper';
COMMENT ON FUNCTION eventic.unsubscribe(text, regprocedure) IS 'Stop enqueueing handler for new versions of the class';
