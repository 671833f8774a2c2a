-- Versioned records (DESIGN.md §1): one append-only table of version rows, the triggers that
-- keep it append-only for every client, and the eventic.latest view (the ORM path).

-- No CHECK constraints: only eventic's write path (and superusers) insert rows, and it
-- guarantees version >= 0 and an object in data; a CHECK would be re-planned on every INSERT.
CREATE TABLE eventic.records (
    version_id  uuid        NOT NULL,
    id          uuid        NOT NULL,
    version     integer     NOT NULL,
    class_type  text        NOT NULL,
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  name        NOT NULL DEFAULT current_user,
    deleted     boolean     NOT NULL DEFAULT false,
    -- every unique key includes id, so the table can be distributed by id (Citus);
    -- the latest version is one backward probe of this index
    CONSTRAINT records_pkey PRIMARY KEY (id, version)
);
-- one entry per record (its version 0): lists records, and records of a class, without
-- touching their history
CREATE INDEX records_by_class ON eventic.records (class_type, id) WHERE version = 0;

COMMENT ON TABLE eventic.records IS
  'Every version of every eventic record. Append-only: UPDATE appends a version, DELETE is refused; see eventic.delete/purge/prune.';
COMMENT ON COLUMN eventic.records.version_id IS 'UUIDv7 of this version row (time-ordered, globally unique)';
COMMENT ON COLUMN eventic.records.id IS 'The stable id of the record';
COMMENT ON COLUMN eventic.records.version IS '0 for the first version, then +1 per change, with no gaps';
COMMENT ON COLUMN eventic.records.class_type IS 'The class of the record (e.g. Story)';
COMMENT ON COLUMN eventic.records.data IS 'The full document, including the properties bag';
COMMENT ON COLUMN eventic.records.created_at IS 'When this version was written (clock time, increasing per record)';
COMMENT ON COLUMN eventic.records.created_by IS 'The role that wrote this version';
COMMENT ON COLUMN eventic.records.deleted IS 'true on a tombstone version (eventic.delete)';

SELECT pg_catalog.pg_extension_config_dump('eventic.records', '');

CREATE TRIGGER records_guard_insert BEFORE INSERT ON eventic.records
    FOR EACH ROW EXECUTE FUNCTION eventic.records_guard_insert();
CREATE TRIGGER records_redirect_update BEFORE UPDATE ON eventic.records
    FOR EACH ROW EXECUTE FUNCTION eventic.records_redirect_update();
CREATE TRIGGER records_guard_delete BEFORE DELETE ON eventic.records
    FOR EACH STATEMENT EXECUTE FUNCTION eventic.records_guard_delete();
CREATE TRIGGER records_guard_truncate BEFORE TRUNCATE ON eventic.records
    FOR EACH STATEMENT EXECUTE FUNCTION eventic.records_guard_delete();

-- The latest, live version of each record: the root (version 0) row gives id and
-- class_type, one backward probe gives the head.
CREATE VIEW eventic.latest WITH (security_barrier) AS
SELECT root.id,
       root.class_type,
       head.version,
       head.version_id,
       head.data,
       root.created_at,
       head.created_at AS updated_at,
       head.created_by AS updated_by
  FROM eventic.records root
 CROSS JOIN LATERAL (
        SELECT r.version, r.version_id, r.data, r.created_at, r.created_by, r.deleted
          FROM eventic.records r
         WHERE r.id = root.id
         ORDER BY r.version DESC
         LIMIT 1) head
 WHERE root.version = 0
   AND NOT head.deleted
   -- the view reads as its owner: each role sees the records it may read (see the policies)
   AND eventic.may_read_class(root.class_type);

COMMENT ON VIEW eventic.latest IS
  'One row per live record (its latest version). INSERT creates, UPDATE of data appends a version, DELETE appends a tombstone.';

CREATE FUNCTION eventic.latest_write() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.id := eventic.create(NEW.class_type, coalesce(NEW.data, '{}'), NEW.id);
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id OR NEW.class_type IS DISTINCT FROM OLD.class_type THEN
            RAISE EXCEPTION 'the id and class_type of record % cannot change', OLD.id
                USING ERRCODE = '22023',
                      HINT = 'Create a new record with INSERT INTO eventic.latest.';
        END IF;
        PERFORM eventic.apply_change(OLD.id, OLD.data, NEW.data);
    ELSE
        PERFORM eventic.delete(OLD.id);
        RETURN OLD;
    END IF;
    SELECT * INTO NEW FROM eventic.latest l WHERE l.id = NEW.id;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION eventic.latest_write() IS
  'INSTEAD OF trigger of eventic.latest: INSERT/UPDATE/DELETE become create/versions/tombstone';

CREATE TRIGGER latest_write INSTEAD OF INSERT OR UPDATE OR DELETE ON eventic.latest
    FOR EACH ROW EXECUTE FUNCTION eventic.latest_write();

-- Access (DESIGN.md §6): the records of a class belong to its owner; other roles read them
-- with SELECT on the class's view (or on the tracked table), and write them with INSERT,
-- UPDATE or DELETE there. Row-level security applies that to every path: eventic's
-- functions run as the calling role, and so do direct SELECT/UPDATE of eventic.records.
-- Superusers and the table's owner (the extension owner) bypass it.
ALTER TABLE eventic.records ENABLE ROW LEVEL SECURITY;
CREATE POLICY records_read ON eventic.records FOR SELECT
    USING (eventic.may_read_class(class_type));
CREATE POLICY records_append ON eventic.records FOR INSERT
    WITH CHECK (eventic.may_write_class(class_type));
-- UPDATE (and the FOR NO KEY UPDATE lock the append takes on the latest version)
CREATE POLICY records_write ON eventic.records FOR UPDATE
    USING (eventic.may_write_class(class_type));

-- Writing goes through the functions and triggers above, which run as the calling role (so
-- created_by is who wrote the version).
GRANT USAGE ON SCHEMA eventic TO PUBLIC;
-- DELETE and TRUNCATE are granted so that the guard triggers, not the privilege check,
-- answer: their message names eventic.delete / eventic.purge.
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON eventic.records TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON eventic.latest TO PUBLIC;
