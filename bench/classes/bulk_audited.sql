-- Baseline (issue 13): the same 30,000-row UPDATE on an identical table with the audit trigger.
\set r random(1, 1000000000)
UPDATE bench_bulk_audited SET title = 'title ' || :r::text || n;
