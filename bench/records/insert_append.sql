-- The append-only floor: what set_field does, written as one plain INSERT ... SELECT into an
-- ordinary table shaped like eventic.records (same columns and indexes, no triggers,
-- no lock, no function): read the latest version of the record, append it with the title
-- changed. The version comes from a sequence so that concurrent clients never collide.
\set n random(1, 1000)
\set r random(1, 1000000000)
INSERT INTO bench_append (version_id, id, version, class_type, data, created_at, created_by, deleted)
SELECT gen_random_uuid(), i.id, nextval('bench_append_version'), 'Story',
       jsonb_set(l.data, '{title}', to_jsonb('title ' || :r::text)), clock_timestamp(), current_user, false
  FROM bench_ids i,
       LATERAL (SELECT a.data FROM bench_append a WHERE a.id = i.id ORDER BY a.version DESC LIMIT 1) l
 WHERE i.n = :n;
