-- eventic: one UPDATE of all 30,000 rows of a tracked table (a version appended per row).
\set r random(1, 1000000000)
UPDATE bench_bulk_tracked SET title = 'title ' || :r::text || n;
