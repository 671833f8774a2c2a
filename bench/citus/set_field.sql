-- eventic: append a version of one of 1000 records (spread over the workers on Citus); the
-- id is computed (a constant once the parameter is bound), as a client that knows it sends it.
\set n random(1, 1000)
\set r random(1, 1000000000)
SELECT eventic.set_field(md5('bench' || :n)::uuid, 'title', to_jsonb('title ' || :r::text));
