-- Every error path of the records functions (DESIGN.md §5): a specific SQLSTATE, a message
-- that names the thing, a HINT that names the fix, and nothing written.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

-- a fingerprint of every version row
CREATE FUNCTION pg_temp.fingerprint() RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(md5(string_agg(version_id::text || id || version || class_type || data::text
                                   || created_at || created_by || deleted, ',' ORDER BY id, version)), '')
      FROM eventic.records
$$;

-- runs a statement, catches its error and shows SQLSTATE, message and hint, and whether
-- the table is exactly as it was before the statement
DROP FUNCTION pg_temp.try(text);
CREATE FUNCTION pg_temp.try(sql text, OUT code text, OUT message text, OUT hint text,
                            OUT nothing_written boolean)
LANGUAGE plpgsql AS $$
DECLARE
    before text := pg_temp.fingerprint();
BEGIN
    BEGIN
        EXECUTE sql;
        code := '00000';
        message := 'no error';
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    END;
    nothing_written := pg_temp.fingerprint() = before;
END
$$;

SELECT eventic.create('Story', '{"title": "a"}', '00000000-0000-7000-8000-000000000001');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"b"');
SELECT eventic.create('Story', '{"title": "gone"}', '00000000-0000-7000-8000-000000000002');
SELECT eventic.delete('00000000-0000-7000-8000-000000000002');

-- the table as it is before all the errors below
SELECT pg_temp.fingerprint() AS fingerprint, count(*) AS version_rows FROM eventic.records \gset

-- the SQLSTATE also reaches psql, with DETAIL and HINT
\set VERBOSITY default
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"c"', 0);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 5);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

\x on
------------------------------------------------------------------------------------------
-- P0002: unknown record id, for every function
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000099')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000099', 0)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000099', now())$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000099', 'title', '"x"')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000099', 'title', '"x"', 0)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000099', '{"title": "x"}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000099', 'k')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000099', 'k')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.list_properties('00000000-0000-7000-8000-000000000099')$$);
SELECT * FROM pg_temp.try($$SELECT * FROM eventic.history('00000000-0000-7000-8000-000000000099')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000099', 0, 1)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.delete('00000000-0000-7000-8000-000000000099')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.purge('00000000-0000-7000-8000-000000000099')$$);
-- P0002: a version that does not exist
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 2)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', -1)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 0, 7)$$);
-- P0002: a deleted record, naming the version of its tombstone
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000002')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000002', 'title', '"x"')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000002', '{"title": "x"}', 1)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.list_properties('00000000-0000-7000-8000-000000000002')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.delete('00000000-0000-7000-8000-000000000002')$$);

------------------------------------------------------------------------------------------
-- 40001: stale expected_version
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"x"', 0)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "x"}', 0)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "x"}', 2)$$);
-- also when the write would change nothing
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"b"', 0)$$);

------------------------------------------------------------------------------------------
-- 22023: bad field names (the HINT, which names eventic.strict_field_names in newer builds,
-- is left out here)
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', '', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', '9lives', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'two words', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'semi;colon', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'dash-ed', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'é', '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', repeat('x', 64), '1')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"ok": 1, "not ok": 2}')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.create('Story', '{"a.b": 1}')$$);
-- 22023: reserved fields
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'id', '"x"')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'version', '3')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'class_type', '"Other"')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "x", "version": 9}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '{"id": "00000000-0000-7000-8000-000000000005"}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '{"class_type": "Other"}')$$);
-- 22023: properties must stay an object
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'properties', '[1]')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"properties": "x"}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '{"properties": null}')$$);
-- 22023: a patch or document that is not a JSON object
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '[{"title": "x"}]')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '"title"')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '42')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', 'true')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', 'null')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '[]')$$);
-- 22023: bad class names
SELECT * FROM pg_temp.try($$SELECT eventic.create('', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('1Story', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story Draft', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story-1', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('a.b.c', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('x"; DROP TABLE eventic.records; --', '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create(repeat('S', 64), '{}')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.prune('bad name', keep_last => 1)$$);
-- 22023: bad arguments of prune and of the property functions
SELECT * FROM pg_temp.try($$SELECT eventic.prune('Story')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.prune('Story', keep_last => 0)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.prune('Story', older_than => '-5 minutes')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', '')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', '')$$);

------------------------------------------------------------------------------------------
-- 23505: create with an id that is taken (also a deleted record's id)
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '{}', '00000000-0000-7000-8000-000000000001')$$);
SELECT code, message, nothing_written FROM pg_temp.try($$SELECT eventic.create('Story', '{}', '00000000-0000-7000-8000-000000000002')$$);
\x off

-- SQL NULL for a required argument: 22023 naming the argument, nothing written
SELECT * FROM pg_temp.try($$SELECT eventic.create(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000001', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000001', NULL, 1)$$);
SELECT * FROM pg_temp.try($$SELECT * FROM eventic.history(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.list_properties(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'k', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.delete(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.purge(NULL)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.prune(NULL, 1)$$);
SELECT * FROM pg_temp.try($$INSERT INTO eventic.latest (data) VALUES ('{}')$$);
SELECT * FROM pg_temp.try($$UPDATE eventic.latest SET data = NULL WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT * FROM pg_temp.try($$UPDATE eventic.records SET data = NULL WHERE id = '00000000-0000-7000-8000-000000000001'$$);

-- nothing at all was written by any of the errors
SELECT pg_temp.fingerprint() = :'fingerprint' AS nothing_written,
       (SELECT count(*) FROM eventic.records) = :version_rows AS same_count;
-- and the records still work; a statement that does write is seen by the check
SELECT * FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"c"', 1)$$);
-- (a name of 63 characters is the longest allowed)
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', repeat('x', 63), '1');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001') ? repeat('x', 63) AS long_name_stored,
       eventic.hydrate('00000000-0000-7000-8000-000000000001') ->> 'title' AS title;
