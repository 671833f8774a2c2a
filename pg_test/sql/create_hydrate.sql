-- eventic.create, eventic.hydrate (latest and a given version), eventic.hydrate_as_of
-- (DESIGN.md §1). Ids are fixed; version ids and timestamps are never printed.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

-- runs a statement, catches its error and shows SQLSTATE and message (timestamps masked)
DROP FUNCTION pg_temp.try(text);
CREATE FUNCTION pg_temp.try(sql text, OUT code text, OUT message text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    code := '00000';
    message := 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
    message := regexp_replace(message, '(did not exist yet at ).*$', '\1<timestamp>');
END
$$;

-- create with a given id returns that id and writes version 0
SELECT eventic.create('Story', '{"title": "Once upon a time", "words": 120}',
                      '00000000-0000-7000-8000-000000000001');
SELECT id, version, class_type, data, deleted,
       created_by = current_user AS created_by_me,
       created_at <= clock_timestamp() AS created_in_the_past,
       version_id <> id AS own_version_id,
       substr(version_id::text, 15, 1) = '7' AS version_id_is_v7
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- the model dump: the document plus id, version and class_type; properties always present
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 0);

-- create without an id makes a time-ordered UUIDv7; data defaults to '{}'
SELECT eventic.create('Story') AS generated_id \gset
SELECT substr(:'generated_id', 15, 1) = '7' AS is_uuid_v7,
       substr(:'generated_id', 20, 1) IN ('8', '9', 'a', 'b') AS rfc4122_variant;
SELECT eventic.hydrate(:'generated_id') - 'id' AS dump_without_id,
       eventic.hydrate(:'generated_id') ->> 'id' = :'generated_id' AS dump_has_the_id;
SELECT eventic.create('Story') <> eventic.create('Story') AS ids_are_unique;

-- a properties bag given at creation is kept; a schema-qualified class name is accepted
SELECT eventic.create('public.orders', '{"total": 9.5, "properties": {"vip": true}}',
                      '00000000-0000-7000-8000-000000000002');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000002');
SELECT eventic.create('_Draft2', '{"nested": {"a": [1, 2, {"b": null}]}}',
                      '00000000-0000-7000-8000-000000000003');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000003');

-- a second create with the same id is refused; the first record is untouched
SELECT * FROM pg_temp.try($$SELECT eventic.create('Story', '{"title": "dup"}', '00000000-0000-7000-8000-000000000001')$$);
SELECT count(*) AS versions, min(data ->> 'title') AS title
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- hydrate: latest by default, any earlier version on request
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"Twice upon a time"');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'words', '250');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', NULL::int);
SELECT v, eventic.hydrate('00000000-0000-7000-8000-000000000001', v)
  FROM generate_series(0, 2) AS v;
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 3)$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000099')$$);

-- hydrate_as_of: the version current at a time read from the table
SELECT eventic.create('Story', '{"title": "v0"}', '00000000-0000-7000-8000-000000000004');
SELECT pg_sleep(0.01);
SELECT eventic.set_field('00000000-0000-7000-8000-000000000004', 'title', '"v1"');
SELECT pg_sleep(0.01);
SELECT eventic.set_field('00000000-0000-7000-8000-000000000004', 'title', '"v2"');
SELECT version, created_at > lag(created_at) OVER (ORDER BY version) AS later_than_previous
  FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000004' ORDER BY version;

SELECT created_at AS t0 FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000004' AND version = 0 \gset
SELECT created_at AS t1 FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000004' AND version = 1 \gset
SELECT created_at AS t2 FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000004' AND version = 2 \gset

SELECT label, eventic.hydrate_as_of('00000000-0000-7000-8000-000000000004', at)
  FROM (VALUES ('at t0', :'t0'::timestamptz),
               ('just before t1', :'t1'::timestamptz - interval '1 microsecond'),
               ('at t1', :'t1'::timestamptz),
               ('between t1 and t2', :'t1'::timestamptz + (:'t2'::timestamptz - :'t1'::timestamptz) / 2),
               ('at t2', :'t2'::timestamptz),
               ('now', now()),
               ('infinity', 'infinity'::timestamptz)) AS a(label, at);

-- before the record existed, or for an unknown id: P0002
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000004', '$$ || (:'t0'::timestamptz - interval '1 microsecond') || $$')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000004', '-infinity')$$);
SELECT * FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000099', now())$$);

-- reading writes nothing
SELECT count(*) AS version_rows FROM eventic.records;
