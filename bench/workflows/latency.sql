-- One 10-step workflow at a time from one connection (as a pooled client would): start it
-- (autocommit: it must commit to run), then wait for its output. pgbench's per-transaction
-- log gives start -> output for each.
\set r random(1, 2000000000)
SELECT eventic.start_workflow('wf_ten(jsonb)', '{}', 'lat-' || :r);
SELECT eventic.wait_workflow('lat-' || :r, '60 seconds') IS NOT NULL;
