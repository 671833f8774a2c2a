-- Baseline for hydrate: the same backward probe of the (id, version) primary key that
-- hydrate does, as plain SQL (no function call, no model dump).
SELECT data FROM eventic.records
 WHERE id = (SELECT id FROM bench_hydrate WHERE versions = :versions)
 ORDER BY version DESC LIMIT 1;
