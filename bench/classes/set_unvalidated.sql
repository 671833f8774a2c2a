-- Baseline: append a version of one of 1000 records of class Unvalidated (registered without
-- a JSON Schema) with its title changed.
\set n random(1, 1000)
\set r random(1, 1000000000)
SELECT eventic.set_field((SELECT id FROM bench_unvalidated WHERE n = :n), 'title', to_jsonb('title ' || :r::text));
