-- Baseline (issue 13): the same UPDATE as update_plain on an ordinary table of the same 1000
-- documents with the audit trigger (AFTER UPDATE FOR EACH ROW: INSERT INTO audit_history ...
-- to_jsonb(NEW)), what a user writes instead of eventic.
\set n random(1, 1000)
\set r random(1, 1000000000)
UPDATE bench_audit SET data = jsonb_set(data, '{title}', to_jsonb('title ' || :r::text)) WHERE n = :n;
