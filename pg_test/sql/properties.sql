-- eventic.add_property / remove_property / list_properties (DESIGN.md §1): the free-form
-- property bag inside data, each change a new version.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers

SELECT eventic.create('Story', '{"title": "t"}', '00000000-0000-7000-8000-000000000001');
-- every record starts with an empty bag
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000001');

-- add: the value defaults to true; any JSON value is allowed
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'featured');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'score', '7');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'reviewers', '["ann", "bob"]');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'note', 'null');
-- keys are free-form (not field names)
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'seo:slug', '"once-upon"');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', key => 'x y', value => '{"a": 1}');
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000001');
-- the bag is part of the document: the other fields are untouched
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001');

-- the same value again: no new version; a new value: a new version
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'featured');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'score', '7');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'score', '8');
SELECT count(*) AS versions FROM eventic.records WHERE id = '00000000-0000-7000-8000-000000000001';

-- remove: a new version; removing a key that is absent writes nothing
SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', 'featured');
SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', 'featured');
SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', 'never-there');
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000001');
SELECT version, data -> 'properties' AS properties, changed_fields
  FROM eventic.history('00000000-0000-7000-8000-000000000001');

-- earlier versions keep their bag
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000001', 1) -> 'properties' AS v1_properties;

-- a bag given at creation is kept and extended
SELECT eventic.create('Story', '{"properties": {"lang": "en"}}', '00000000-0000-7000-8000-000000000002');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000002', 'draft');
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000002');

-- set_field on another field keeps the bag
SELECT eventic.set_field('00000000-0000-7000-8000-000000000002', 'title', '"x"');
SELECT eventic.list_properties('00000000-0000-7000-8000-000000000002');

-- errors: empty key (22023), unknown record (P0002); nothing written
SELECT count(*) AS version_rows FROM eventic.records;
SELECT code, message FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', '')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000001', '')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000099', 'k')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000099', 'k')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.list_properties('00000000-0000-7000-8000-000000000099')$$);
SELECT count(*) AS version_rows FROM eventic.records;

-- after delete, the bag can be neither read nor changed (P0002)
SELECT eventic.delete('00000000-0000-7000-8000-000000000002');
SELECT code, message FROM pg_temp.try($$SELECT eventic.list_properties('00000000-0000-7000-8000-000000000002')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.add_property('00000000-0000-7000-8000-000000000002', 'k')$$);
SELECT code, message FROM pg_temp.try($$SELECT eventic.remove_property('00000000-0000-7000-8000-000000000002', 'draft')$$);
SELECT count(*) AS version_rows FROM eventic.records;
