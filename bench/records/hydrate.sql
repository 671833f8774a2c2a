-- eventic: the latest version of one record as a model dump. -D versions=1|100|10000 picks
-- the record with that many versions.
SELECT eventic.hydrate((SELECT id FROM bench_hydrate WHERE versions = :versions));
