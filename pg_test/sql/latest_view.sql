-- eventic.latest (DESIGN.md §1): one row per live record; INSERT creates, UPDATE appends a
-- version and reports its row count, DELETE appends a tombstone; RETURNING works.
-- Row counts are what psql reports in :ROW_COUNT (the command tag an ORM checks).
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

-- the view's columns
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'eventic.latest'::regclass AND attnum > 0 ORDER BY attnum;

------------------------------------------------------------------------------------------
-- INSERT creates version 0; RETURNING shows the stored row
INSERT INTO eventic.latest (id, class_type, data)
VALUES ('00000000-0000-7000-8000-000000000001', 'Note', '{"text": "hello"}')
RETURNING id, class_type, version, data, updated_by, created_at = updated_at AS created_is_updated;
\echo INSERT rows: :ROW_COUNT
-- several rows at once; without an id a UUIDv7 is generated; data defaults to {}
INSERT INTO eventic.latest (class_type, data)
VALUES ('Note', '{"text": "a"}'), ('Note', '{"text": "b"}'), ('Note', NULL)
RETURNING class_type, version, data, substr(id::text, 15, 1) = '7' AS uuid_v7;
\echo INSERT rows: :ROW_COUNT
INSERT INTO eventic.latest (id, class_type)
VALUES ('00000000-0000-7000-8000-000000000002', 'Note');
\echo INSERT rows: :ROW_COUNT
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000002');
-- the rows are ordinary versions
SELECT id, version, class_type, data, deleted FROM eventic.records
 WHERE id IN ('00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002')
 ORDER BY id, version;
-- a taken id (23505) or a bad document (22023) is refused
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.latest (id, class_type, data) VALUES ('00000000-0000-7000-8000-000000000001', 'Note', '{}')$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.latest (class_type, data) VALUES ('Note', '[1, 2]')$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.latest (class_type, data) VALUES ('Note', '{"version": 3}')$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.latest (class_type, data) VALUES ('bad class', '{}')$$);
SELECT count(*) AS records FROM eventic.latest;

------------------------------------------------------------------------------------------
-- UPDATE appends a version: UPDATE 1, RETURNING the new version
UPDATE eventic.latest SET data = data || '{"text": "hello again"}'
 WHERE id = '00000000-0000-7000-8000-000000000001'
RETURNING id, version, data, updated_at >= created_at AS updated_after_created;
\echo UPDATE rows: :ROW_COUNT
UPDATE eventic.latest SET data = jsonb_set(data, '{tags}', '["x"]')
 WHERE id = '00000000-0000-7000-8000-000000000001';
\echo UPDATE rows: :ROW_COUNT
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
-- a field left out of the new data is removed in the new version
UPDATE eventic.latest SET data = data - 'tags'
 WHERE id = '00000000-0000-7000-8000-000000000001'
RETURNING version, data;
\echo UPDATE rows: :ROW_COUNT
-- an UPDATE that changes nothing still matches the row (UPDATE 1) but writes no version
UPDATE eventic.latest SET data = data WHERE id = '00000000-0000-7000-8000-000000000001'
RETURNING version;
\echo UPDATE rows: :ROW_COUNT
SELECT version, data, changed_fields FROM eventic.history('00000000-0000-7000-8000-000000000001');
-- the change is applied to the latest version: fields written by others stay
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'author', '"ann"');
UPDATE eventic.latest SET data = data || '{"text": "third"}'
 WHERE id = '00000000-0000-7000-8000-000000000001'
RETURNING version, data;
-- several rows: one new version each
UPDATE eventic.latest SET data = data || '{"seen": true}' WHERE class_type = 'Note';
\echo UPDATE rows: :ROW_COUNT
SELECT count(*) AS notes, bool_and((data -> 'seen')::boolean) AS all_seen,
       sum(version) AS sum_of_versions
  FROM eventic.latest WHERE class_type = 'Note';
-- no matching row: UPDATE 0
UPDATE eventic.latest SET data = '{}' WHERE id = '00000000-0000-7000-8000-000000000099';
\echo UPDATE rows: :ROW_COUNT
-- id and class_type cannot change; data must stay a valid document; nothing is written
SELECT count(*) AS version_rows FROM eventic.records;
SELECT code, message FROM pg_temp.try($$UPDATE eventic.latest SET class_type = 'Other' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.latest SET id = '00000000-0000-7000-8000-000000000098' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.latest SET data = '"text"' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.latest SET data = '{"class_type": "X"}' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.latest SET data = '{"bad key": 1}' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT count(*) AS version_rows FROM eventic.records;

------------------------------------------------------------------------------------------
-- DELETE appends a tombstone: DELETE 1, RETURNING the row as it was
DELETE FROM eventic.latest WHERE id = '00000000-0000-7000-8000-000000000002'
RETURNING id, version, data;
\echo DELETE rows: :ROW_COUNT
SELECT version, deleted, data FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000002' ORDER BY version;
-- the record has left the view; deleting or updating it again matches nothing
DELETE FROM eventic.latest WHERE id = '00000000-0000-7000-8000-000000000002';
\echo DELETE rows: :ROW_COUNT
UPDATE eventic.latest SET data = '{}' WHERE id = '00000000-0000-7000-8000-000000000002';
\echo UPDATE rows: :ROW_COUNT
-- the other records are still there
DELETE FROM eventic.latest WHERE class_type = 'Note' AND data ->> 'text' IN ('a', 'b');
\echo DELETE rows: :ROW_COUNT
SELECT count(*) AS live_notes FROM eventic.latest WHERE class_type = 'Note';

-- one row per live record, with its latest version
SELECT id, class_type, version, data FROM eventic.latest
 WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT (SELECT count(*) FROM eventic.latest) AS in_view,
       (SELECT count(DISTINCT id) FROM eventic.records) AS records,
       (SELECT count(*) FROM eventic.records WHERE deleted) AS tombstones;
SELECT bool_and(l.version = (SELECT max(version) FROM eventic.records r WHERE r.id = l.id))
       AS view_shows_latest
  FROM eventic.latest l;

-- a role that is not superuser uses the view the same way
SET client_min_messages = warning;
DROP ROLE IF EXISTS eventic_regress_orm;
RESET client_min_messages;
CREATE ROLE eventic_regress_orm;
-- granted on the class's view, it may write the class's records through eventic.latest too
SELECT eventic.register_class('Note', NULL, 'public');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.note TO eventic_regress_orm;
SET ROLE eventic_regress_orm;
INSERT INTO eventic.latest (id, class_type, data)
VALUES ('00000000-0000-7000-8000-000000000003', 'Note', '{"by": "orm"}') RETURNING version;
UPDATE eventic.latest SET data = data || '{"edited": true}'
 WHERE id = '00000000-0000-7000-8000-000000000003' RETURNING version, updated_by;
\echo UPDATE rows: :ROW_COUNT
DELETE FROM eventic.latest WHERE id = '00000000-0000-7000-8000-000000000003';
\echo DELETE rows: :ROW_COUNT
RESET ROLE;
SELECT version, deleted, created_by FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000003' ORDER BY version;
DROP OWNED BY eventic_regress_orm;
DROP ROLE eventic_regress_orm;
