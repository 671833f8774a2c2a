-- Baseline: change one column of one of 1000 rows of an ordinary table (HOT update by
-- primary key).
\set n random(1, 1000)
\set r random(1, 1000000000)
UPDATE bench_untracked SET title = 'title ' || :r::text WHERE id = (SELECT id FROM bench_rows WHERE n = :n);
