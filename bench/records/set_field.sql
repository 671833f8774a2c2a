-- eventic: append a version of one of 1000 Story records with its title changed.
\set n random(1, 1000)
\set r random(1, 1000000000)
SELECT eventic.set_field((SELECT id FROM bench_ids WHERE n = :n), 'title', to_jsonb('title ' || :r::text));
