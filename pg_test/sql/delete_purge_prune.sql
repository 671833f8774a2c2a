-- eventic.delete (tombstones), eventic.purge and eventic.prune (DESIGN.md §1, §6): history
-- stays after delete; only the owner or a superuser can remove history.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers
SET client_min_messages = warning;
DROP ROLE IF EXISTS eventic_regress_user;
RESET client_min_messages;
CREATE ROLE eventic_regress_user;

------------------------------------------------------------------------------------------
-- delete: appends a tombstone version
SELECT eventic.create('Story', '{"title": "a"}', '00000000-0000-7000-8000-000000000001');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"b"');
SELECT created_at AS before_delete FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' AND version = 1 \gset
SELECT eventic.delete('00000000-0000-7000-8000-000000000001');
-- the tombstone carries the last data; the earlier rows are unchanged
SELECT version, data, deleted, created_by FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000001' ORDER BY version;

-- hydrate raises P0002 naming the version of the tombstone, with DETAIL and HINT
\set VERBOSITY default
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');
SELECT code, message FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 2)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000001', now())$$);
-- every write raises the same error and writes nothing
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'title', '"c"')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"title": "c"}', 2)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'k')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.delete('00000000-0000-7000-8000-000000000001')$$);
SELECT count(*) AS versions FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- earlier versions and the history stay readable
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 0);
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 1);
SELECT eventic.hydrate_as_of('00000000-0000-7000-8000-000000000001', :'before_delete');
SELECT version, changed_fields, deleted FROM eventic.history('00000000-0000-7000-8000-000000000001');
-- a deleted record leaves eventic.latest
SELECT count(*) AS in_latest FROM eventic.latest WHERE id = '00000000-0000-7000-8000-000000000001';
-- an unknown id: P0002
SELECT code, message FROM pg_temp.try($$SELECT eventic.delete('00000000-0000-7000-8000-000000000099')$$);

-- a role granted DELETE on the class's view may delete (it only appends); created_by says who
SELECT eventic.create('Story', '{}', '00000000-0000-7000-8000-000000000002');
SELECT eventic.register_class('Story', NULL, 'public');
GRANT SELECT, DELETE ON public.story TO eventic_regress_user;
SET ROLE eventic_regress_user;
SELECT eventic.delete('00000000-0000-7000-8000-000000000002');
RESET ROLE;
SELECT version, deleted, created_by FROM eventic.records
 WHERE id = '00000000-0000-7000-8000-000000000002' ORDER BY version;

------------------------------------------------------------------------------------------
-- purge and prune are refused to a role that neither owns eventic.records nor is superuser
SELECT eventic.create('Story', '{"n": 0}', '00000000-0000-7000-8000-000000000003');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000003', 'n', '1');
SELECT count(*) AS version_rows FROM eventic.records;
SET ROLE eventic_regress_user;
SELECT code, message FROM pg_temp.try($$SELECT eventic.purge('00000000-0000-7000-8000-000000000003')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.purge('00000000-0000-7000-8000-000000000001')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Story', keep_last => 1)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Story', older_than => '0 seconds')$$);
RESET ROLE;
SELECT count(*) AS version_rows FROM eventic.records;

------------------------------------------------------------------------------------------
-- purge (owner / superuser): every version of one record is gone, others stay
SELECT eventic.purge('00000000-0000-7000-8000-000000000001');
SELECT count(*) AS left_of_purged FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';
SELECT id, count(*) AS versions FROM eventic.records GROUP BY id ORDER BY id;
SELECT code, message FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 0)$$);
SELECT code, message FROM pg_temp.try($$SELECT * FROM eventic.history('00000000-0000-7000-8000-000000000001')$$);
-- purging again, or an unknown id: P0002
SELECT code, message FROM pg_temp.try($$SELECT eventic.purge('00000000-0000-7000-8000-000000000001')$$);
-- the id can be used again after a purge
SELECT eventic.create('Story', '{"reborn": true}', '00000000-0000-7000-8000-000000000001');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');

------------------------------------------------------------------------------------------
-- prune (owner / superuser): old versions of one class; version 0 and the latest always stay
SELECT eventic.create('Chapter', '{"n": 0}', '00000000-0000-7000-8000-000000000010');
SELECT eventic.create('Chapter', '{"n": 0}', '00000000-0000-7000-8000-000000000011');
SELECT eventic.set_field('00000000-0000-7000-8000-000000000010', 'n', to_jsonb(n))
  FROM generate_series(1, 6) AS n;
SELECT eventic.set_field('00000000-0000-7000-8000-000000000011', 'n', '1');
SELECT eventic.delete('00000000-0000-7000-8000-000000000011');
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records
 WHERE class_type = 'Chapter' GROUP BY id ORDER BY id;

-- nothing is older than an hour, so nothing goes
SELECT eventic.prune('Chapter', older_than => '1 hour');
-- keep_last => 3: versions beyond the newest three go, except version 0
SELECT eventic.prune('Chapter', keep_last => 3);
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records
 WHERE class_type = 'Chapter' GROUP BY id ORDER BY id;
-- both limits: a version goes only when beyond keep_last and older than older_than
SELECT eventic.prune('Chapter', keep_last => 2, older_than => '1 hour');
SELECT eventic.prune('Chapter', keep_last => 2, older_than => '0 seconds');
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records
 WHERE class_type = 'Chapter' GROUP BY id ORDER BY id;
-- older_than alone: all but version 0 and the latest (the tombstone of a deleted record)
SELECT eventic.prune('Chapter', older_than => '0 seconds');
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records
 WHERE class_type = 'Chapter' GROUP BY id ORDER BY id;
SELECT eventic.prune('Chapter', keep_last => 1);
-- other classes are untouched
SELECT id, array_agg(version ORDER BY version) AS versions FROM eventic.records
 WHERE class_type <> 'Chapter' GROUP BY id ORDER BY id;

-- what is left reads as before; pruned versions are P0002
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000010');
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000010', 0);
SELECT code, message FROM pg_temp.try($$SELECT eventic.hydrate('00000000-0000-7000-8000-000000000010', 3)$$);
SELECT version, data FROM eventic.history('00000000-0000-7000-8000-000000000010');
-- the next version follows the latest
SELECT eventic.set_field('00000000-0000-7000-8000-000000000010', 'n', '7');

-- bad arguments: 22023, nothing removed
SELECT count(*) AS version_rows FROM eventic.records;
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Chapter')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Chapter', keep_last => 0)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Chapter', keep_last => -5)$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('Chapter', older_than => '-1 day')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.prune('no such;class', keep_last => 1)$$);
SELECT count(*) AS version_rows FROM eventic.records;

DROP OWNED BY eventic_regress_user;
DROP ROLE eventic_regress_user;
