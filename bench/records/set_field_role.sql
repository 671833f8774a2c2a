-- eventic, as an ordinary role (bench_app) that owns the class: the same append as set_field,
-- under the row-level security of eventic.records (superusers bypass it).
\set n random(1, 1000)
\set r random(1, 1000000000)
SELECT eventic.set_field((SELECT id FROM bench_app_ids WHERE n = :n), 'title', to_jsonb('title ' || :r::text));
