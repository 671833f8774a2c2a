-- Baseline (issue 13): the same UPDATE as update_tracked on an identical table with the audit
-- trigger (AFTER UPDATE FOR EACH ROW: INSERT INTO audit_history ... to_jsonb(NEW)).
\set n random(1, 1000)
\set r random(1, 1000000000)
UPDATE bench_audited SET title = 'title ' || :r::text WHERE id = (SELECT id FROM bench_rows WHERE n = :n);
