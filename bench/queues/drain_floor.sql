-- The drain floor: a hand-rolled queue drained by concurrent consumers, 100 rows per
-- transaction, no job run. Each client takes the first 100 rows nobody else holds.
-- (= ANY (ARRAY(...)) rather than IN (...): the same rows, but always the primary key probe;
-- IN can get a hash semi-join over a sequential scan, quadratic as the table empties.)
DELETE FROM bench_q WHERE id = ANY (ARRAY(SELECT id FROM bench_q ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED));
