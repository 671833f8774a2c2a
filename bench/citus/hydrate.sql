-- eventic: read the latest version of one of 1000 records (delegated to its node on Citus).
\set n random(1, 1000)
SELECT eventic.hydrate(md5('bench' || :n)::uuid);
