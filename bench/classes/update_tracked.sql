-- eventic: the same UPDATE on an identical table made versioned by eventic.track: its AFTER
-- row trigger appends a version of the row's record (the whole row as the document).
\set n random(1, 1000)
\set r random(1, 1000000000)
UPDATE bench_tracked SET title = 'title ' || :r::text WHERE id = (SELECT id FROM bench_rows WHERE n = :n);
