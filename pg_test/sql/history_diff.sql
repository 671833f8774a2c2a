-- eventic.history and eventic.diff (DESIGN.md §1).
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

SELECT eventic.create('Story', '{"title": "a", "body": "text", "tags": []}',
                      '00000000-0000-7000-8000-000000000001');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"b"');
SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"tags": ["x"], "words": 3}');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'featured');
-- a field removed (through the latest view) counts as changed
UPDATE eventic.latest SET data = data - 'body' WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', 'null');

-- oldest first, with the fields each version changed (version 0: all of its fields)
SELECT version, data, changed_fields, created_by, deleted
  FROM eventic.history('00000000-0000-7000-8000-000000000001');
-- the columns and their types
SELECT pg_get_function_result('eventic.history(uuid)'::regprocedure);
-- version ids and timestamps match the table and increase with the version
SELECT count(*) AS versions,
       bool_and(h.version_id = r.version_id) AS same_version_ids,
       bool_and(h.created_at = r.created_at) AS same_created_at,
       bool_and(h.data = r.data) AS same_data,
       count(DISTINCT h.version_id) AS distinct_version_ids
  FROM eventic.history('00000000-0000-7000-8000-000000000001') h
  JOIN eventic.records r ON r.id = '00000000-0000-7000-8000-000000000001' AND r.version = h.version;
SELECT bool_and(created_at >= prev_at) AS created_at_ascending,
       bool_and(left(version_id::text, 13) >= left(prev_id::text, 13)) AS version_id_time_ascending
  FROM (SELECT version, created_at, version_id,
               lag(created_at) OVER w AS prev_at, lag(version_id) OVER w AS prev_id
          FROM eventic.history('00000000-0000-7000-8000-000000000001')
        WINDOW w AS (ORDER BY version)) s
 WHERE version > 0;

-- a record that never changed has one version; another record's history is separate
SELECT eventic.create('Note', '{}', '00000000-0000-7000-8000-000000000002');
SELECT version, data, changed_fields, deleted
  FROM eventic.history('00000000-0000-7000-8000-000000000002');

-- the tombstone closes the history and changes no field
SELECT eventic.delete('00000000-0000-7000-8000-000000000002');
SELECT version, data, changed_fields, deleted
  FROM eventic.history('00000000-0000-7000-8000-000000000002');

-- unknown id: P0002
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.history('00000000-0000-7000-8000-000000000099')$$);

-- diff: {"field": {"old": ..., "new": ...}} for each field that differs
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 0, 1);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 1, 2);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 2, 3);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 3, 4);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 4, 5);
-- across several versions, backwards, and a version with itself
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 0, 5);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 5, 0);
SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 3, 3);
-- every diff between neighbours names exactly the changed_fields of history
SELECT bool_and(ARRAY(SELECT jsonb_object_keys(eventic.diff(h.id, h.version - 1, h.version)) ORDER BY 1)
                = h.changed_fields) AS diff_matches_history
  FROM (SELECT '00000000-0000-7000-8000-000000000001'::uuid AS id, *
          FROM eventic.history('00000000-0000-7000-8000-000000000001')) h
 WHERE h.version > 0;
-- a tombstone has the data of the version before it
SELECT eventic.diff('00000000-0000-7000-8000-000000000002', 0, 1);

-- versions or records that do not exist: P0002
SELECT code, message FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000001', 0, 6)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000001', -1, 2)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.diff('00000000-0000-7000-8000-000000000099', 0, 0)$$);

-- reading writes nothing
SELECT id, count(*) AS versions FROM eventic.records GROUP BY id ORDER BY id;
