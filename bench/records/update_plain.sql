-- Baseline: change one field of a jsonb document in place, on an ordinary table of the same
-- 1000 documents (HOT update of one row found by its primary key).
\set n random(1, 1000)
\set r random(1, 1000000000)
UPDATE bench_plain SET data = jsonb_set(data, '{title}', to_jsonb('title ' || :r::text)) WHERE n = :n;
