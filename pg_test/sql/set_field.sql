-- eventic.set_field / eventic.set_fields (DESIGN.md §1): copy-on-write versions, no-op when
-- nothing changes, optimistic concurrency with expected_version.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

SELECT eventic.create('Story', '{"title": "draft", "words": 10, "tags": ["a"]}',
                      '00000000-0000-7000-8000-000000000001');

-- each call appends one version built from the latest one and returns its number
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"first"');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '25');
-- a new field, and JSON values of every kind
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'summary', '"short"');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'meta', '{"lang": "en", "pages": [1, 2]}');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'published', 'false');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'summary', 'null');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
-- old versions are untouched, versions are contiguous
SELECT version, data FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' ORDER BY version;

-- setting a field to the value it has writes nothing and returns the current version
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"first"');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'summary', 'null');
-- equal as jsonb: key order and number formatting do not matter
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'meta', '{"pages": [1, 2], "lang": "en"}');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '25.0');
SELECT count(*) AS versions, max(version) AS latest
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- set_fields: several fields in one version
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "second", "words": 30, "rating": 4}');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
SELECT version, changed_fields FROM eventic.history('00000000-0000-7000-8000-000000000001')
 WHERE version = 7;
-- only the fields that differ count; all unchanged or empty: no version
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "second", "words": 31}');
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "second", "words": 31}');
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{}');
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', patch => '{"rating": 4}');
SELECT count(*) AS versions, max(version) AS latest
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- properties can be replaced as a whole with an object
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'properties', '{"featured": true}');
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000001');

-- expected_version: the write happens only when the record is at that version
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"third"', 9);
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"fourth"', expected_version => 10);
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"words": 40}', 11);
-- stale (older) or future expected_version: 40001, nothing written
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"stale"', 11)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "stale"}', 0)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "stale"}', 13)$$);
-- a no-op with the right expected_version returns it; with a stale one it is still 40001
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '40', 12);
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '40', 11)$$);
SELECT count(*) AS versions, max(version) AS latest, max(data ->> 'title') FILTER (WHERE version = 12) AS title
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- created_by is the role that wrote each version
SET client_min_messages = warning;
DROP ROLE IF EXISTS eventic_regress_writer;
RESET client_min_messages;
CREATE ROLE eventic_regress_writer;
-- (another role writes a class's records once granted on its view; see tests/test_security.py)
SELECT eventic.register_class('Story', NULL, 'public');
GRANT SELECT, UPDATE ON public.story TO eventic_regress_writer;
SET ROLE eventic_regress_writer;
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"by writer"');
RESET ROLE;
SELECT version, created_by FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' AND version >= 12 ORDER BY version;

-- writes in one transaction stay contiguous; a rolled-back write leaves no trace
BEGIN;
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '50');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '51');
COMMIT;
BEGIN;
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '99');
ROLLBACK;
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '52');
SELECT array_agg(version ORDER BY version) = array(SELECT generate_series(0, max(version)))
       AS contiguous, max(version) AS latest
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- records do not affect each other
SELECT eventic.create('Story', '{"title": "other"}', '00000000-0000-7000-8000-000000000002');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000002', 'title', '"other v1"');
SELECT id, max(version) AS latest FROM eventic.records GROUP BY id ORDER BY id;

DROP OWNED BY eventic_regress_writer;
DROP ROLE eventic_regress_writer;
