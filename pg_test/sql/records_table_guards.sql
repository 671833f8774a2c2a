-- Triggers of eventic.records (DESIGN.md §1, §6): UPDATE from any client appends exactly one
-- version built from the latest row and changes no row; DELETE, TRUNCATE and direct INSERT
-- are refused (42501).
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers
SET client_min_messages = warning;
DROP ROLE IF EXISTS eventic_regress_client;
RESET client_min_messages;
CREATE ROLE eventic_regress_client;
-- the client may read and write the records of Story (granted on its view)
SELECT eventic.register_class('Story', NULL, 'public');
GRANT SELECT, INSERT, UPDATE, DELETE ON public.story TO eventic_regress_client;

SELECT eventic.create('Story', '{"title": "a", "words": 1}', '00000000-0000-7000-8000-000000000001');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"b"');
SELECT eventic.create('Story', '{"title": "other"}', '00000000-0000-7000-8000-000000000002');

-- every version row as it is now, to show that none is ever modified
CREATE TEMP TABLE before_rows AS SELECT * FROM eventic.records;
CREATE FUNCTION pg_temp.rows_unchanged() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT * FROM before_rows EXCEPT SELECT * FROM eventic.records)
$$;

------------------------------------------------------------------------------------------
-- UPDATE ... WHERE id = ...: every version row of the id matches, exactly one version is
-- appended, built from the latest row (old rows unchanged)
UPDATE eventic.records SET data = data || '{"words": 2}'
 WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT version, data, deleted FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' ORDER BY version;
SELECT pg_temp.rows_unchanged();
-- a whole replacement of data: fields missing from it are removed in the new version
UPDATE eventic.records SET data = '{"title": "c", "properties": {}}'
 WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT version, data FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' ORDER BY version;
-- an UPDATE that changes nothing appends nothing
UPDATE eventic.records SET data = data WHERE id = '00000000-0000-7000-8000-000000000001';
UPDATE eventic.records SET created_by = 'someone_else' WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT count(*) AS versions, bool_and(created_by = 'postgres') AS created_by_kept
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';
-- one statement over two records: one new version for each
UPDATE eventic.records SET data = data || '{"reviewed": true}'
 WHERE id IN ('00000000-0000-7000-8000-000000000001', '00000000-0000-7000-8000-000000000002');
SELECT id, max(version) AS latest, count(*) AS versions,
       bool_and(data ? 'reviewed') FILTER (WHERE version = (SELECT max(version) FROM eventic.records r2 WHERE r2.id = r.id)) AS latest_reviewed
  FROM eventic.records r GROUP BY id ORDER BY id;
SELECT pg_temp.rows_unchanged();
-- the new versions are ordinary versions: written by the updating role, in history and diff
SELECT version, changed_fields FROM eventic.history('00000000-0000-7000-8000-000000000001');
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 1, 2);

-- any role may UPDATE; created_by is that role
SET ROLE eventic_regress_client;
UPDATE eventic.records SET data = data || '{"by_client": true}'
 WHERE id = '00000000-0000-7000-8000-000000000002';
RESET ROLE;
SELECT version, created_by, data ->> 'by_client' AS by_client FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000002' ORDER BY version;

-- setting deleted = true appends a tombstone; a tombstone cannot be undone
SELECT eventic.create('Story', '{}', '00000000-0000-7000-8000-000000000003');
UPDATE eventic.records SET deleted = true WHERE id = '00000000-0000-7000-8000-000000000003';
SELECT version, deleted FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000003' ORDER BY version;
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET deleted = false WHERE id = '00000000-0000-7000-8000-000000000003'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET data = '{"x": 1}' WHERE id = '00000000-0000-7000-8000-000000000003'$$);
SELECT count(*) AS versions FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000003';

-- the identity of a version row cannot be changed (42501); a bad document is 22023
DROP TABLE before_rows;
CREATE TEMP TABLE before_rows AS SELECT * FROM eventic.records;
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET version = version + 10 WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET id = '00000000-0000-7000-8000-000000000009' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET class_type = 'Other' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET created_at = now() WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET version_id = '00000000-0000-7000-8000-000000000009' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET data = '[]' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$UPDATE eventic.records SET data = data || '{"version": 0}' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT (SELECT count(*) FROM eventic.records) = (SELECT count(*) FROM before_rows) AS same_count,
       pg_temp.rows_unchanged();

------------------------------------------------------------------------------------------
-- DELETE is refused with 42501 and a message that names eventic.delete / eventic.purge
\set VERBOSITY default
DELETE FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.records WHERE version = 0$$);
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.records$$);
-- TRUNCATE is refused as well
SELECT code, message FROM pg_temp.try($$TRUNCATE eventic.records$$);
-- and for a role that is not superuser: the guard answers, not the privilege check
SET ROLE eventic_regress_client;
SELECT code, message FROM pg_temp.try($$DELETE FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message FROM pg_temp.try($$TRUNCATE eventic.records$$);
RESET ROLE;

-- direct INSERT by a role that is not superuser: 42501
SET ROLE eventic_regress_client;
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.records (version_id, id, version, class_type, data) VALUES ('00000000-0000-7000-8000-0000000000f1', '00000000-0000-7000-8000-000000000001', 99, 'Story', '{}')$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.records (version_id, id, version, class_type, data) VALUES ('00000000-0000-7000-8000-0000000000f2', '00000000-0000-7000-8000-000000000010', 0, 'Story', '{}')$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.records SELECT '00000000-0000-7000-8000-0000000000f3', id, 50, class_type, data, created_at, created_by, deleted FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001' AND version = 0$$);
SELECT code, message FROM pg_temp.try($$INSERT INTO eventic.records (version_id, id, version, class_type, data) VALUES ('00000000-0000-7000-8000-0000000000f4', '00000000-0000-7000-8000-000000000001', 0, 'Story', '{"forged": true}') ON CONFLICT (id, version) DO UPDATE SET data = excluded.data$$);
COPY eventic.records (version_id, id, version, class_type, data) FROM stdin;
00000000-0000-7000-8000-0000000000f5	00000000-0000-7000-8000-000000000001	98	Story	{}
\.
-- ... but the functions and the view work for it
SELECT eventic.create('Story', '{"by": "client"}', '00000000-0000-7000-8000-000000000011');
RESET ROLE;

-- nothing was removed or changed by the refused statements
SELECT (SELECT count(*) FROM eventic.records) AS version_rows,
       (SELECT count(*) FROM before_rows) AS rows_before,
       pg_temp.rows_unchanged();
SELECT count(*) AS forged FROM eventic.records
 WHERE version_id::text LIKE '00000000-0000-7000-8000-0000000000f_' OR data ? 'forged';
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records GROUP BY id ORDER BY id;

DROP OWNED BY eventic_regress_client;
DROP ROLE eventic_regress_client;
