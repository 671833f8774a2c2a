-- Classes (DESIGN.md §2): registration, queues, JSON Schema validation on every write path,
-- typed updatable views, schema evolution, drop_class.
\getenv helpers EVENTIC_REGRESS_HELPERS
\i :helpers
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS app CASCADE;
CREATE SCHEMA app;
RESET client_min_messages;

CREATE FUNCTION pg_temp.versions() RETURNS bigint LANGUAGE sql AS
  $$ SELECT count(*) FROM eventic.records $$;

-- What Pydantic v2 emits for:
--   class Author(BaseModel): name: str
--   class Story(Record): title: str | None = None; words: int = 0; draft: bool = True;
--                        published_at: datetime | None = None; author: Author | None = None
SELECT $$ {
  "$defs": {"Author": {"properties": {"name": {"title": "Name", "type": "string"}},
                       "required": ["name"], "title": "Author", "type": "object"}},
  "properties": {
    "title": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Title"},
    "words": {"default": 0, "minimum": 0, "title": "Words", "type": "integer"},
    "draft": {"default": true, "title": "Draft", "type": "boolean"},
    "published_at": {"anyOf": [{"format": "date-time", "type": "string"}, {"type": "null"}], "default": null},
    "author": {"anyOf": [{"$ref": "#/$defs/Author"}, {"type": "null"}], "default": null}
  },
  "title": "Story", "type": "object"} $$ AS story_schema \gset

------------------------------------------------------------------------------------------
-- register: the class, its queue (snake_case) and, with view_schema, its view
SELECT eventic.register_class('Story', :'story_schema', 'app');
SELECT class_name, queue_name, json_schema IS NOT NULL AS has_schema, view_schema, view_name,
       owner = current_user::regrole AS owned_by_me
  FROM eventic.classes;
SELECT queue_name, table_name, class_name FROM eventic.queues;
SELECT to_regclass('eventic.queue_story') IS NOT NULL AS queue_table_exists;
-- idempotent
SELECT eventic.register_class('Story', :'story_schema', 'app');
SELECT count(*) AS classes FROM eventic.classes;
-- snake_case of longer names; a class is registered on first use (no schema, no view)
SELECT eventic.register_class('StoryDraft');
SELECT eventic.create('HTTPServerLog', '{}', '00000000-0000-7000-8000-0000000000c1') IS NOT NULL AS created;
SELECT class_name, queue_name, json_schema IS NULL AS no_schema, view_name IS NULL AS no_view
  FROM eventic.classes ORDER BY class_name;

------------------------------------------------------------------------------------------
-- validation: good documents pass, bad ones get 23514 with the JSON pointer; nothing written
SELECT eventic.create('Story', '{"title": "Hare", "words": 3, "author": {"name": "Aesop"}}',
                      '00000000-0000-7000-8000-000000000001') IS NOT NULL AS created;
SELECT pg_temp.versions() AS versions_before \gset
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.create('Story', '{"words": "many"}', '00000000-0000-7000-8000-0000000000e1')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.create('Story', '{"words": -1}', '00000000-0000-7000-8000-0000000000e2')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'author', '{"name": 7}')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'author', '{}')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.set_fields('00000000-0000-7000-8000-000000000001', '{"published_at": "yesterday"}')$$);
SELECT code, message, detail FROM pg_temp.try($$UPDATE eventic.records SET data = data || '{"draft": "yes"}' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message, detail FROM pg_temp.try($$UPDATE eventic.latest SET data = data || '{"words": 1.5}' WHERE id = '00000000-0000-7000-8000-000000000001'$$);
SELECT code, message, detail FROM pg_temp.try($$INSERT INTO app.story (id, words) VALUES ('00000000-0000-7000-8000-0000000000e3', -5)$$);
SELECT pg_temp.versions() = :versions_before AS nothing_written;
-- valid changes still work
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'published_at', '"2026-11-26T10:00:00Z"');
SELECT eventic.add_property('00000000-0000-7000-8000-000000000001', 'featured');

------------------------------------------------------------------------------------------
-- the typed view
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'app.story'::regclass AND attnum > 0 ORDER BY attnum;
SELECT id, version, title, words, draft, published_at AT TIME ZONE 'UTC' AS published_utc,
       author, properties
  FROM app.story;
-- INSERT → create (NULL columns are absent fields); RETURNING shows the stored row
INSERT INTO app.story (id, title, words)
VALUES ('00000000-0000-7000-8000-000000000002', 'Tortoise', 5)
RETURNING id, version, title, words, draft, properties;
\echo INSERT rows: :ROW_COUNT
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000002');
-- UPDATE → one version with the changed columns
UPDATE app.story SET words = words + 1, draft = false
 WHERE id = '00000000-0000-7000-8000-000000000002'
RETURNING version, words, draft;
\echo UPDATE rows: :ROW_COUNT
SELECT version, changed_fields FROM eventic.history('00000000-0000-7000-8000-000000000002');
-- setting a column to NULL stores a JSON null
UPDATE app.story SET title = NULL WHERE id = '00000000-0000-7000-8000-000000000002' RETURNING version, title;
SELECT eventic.hydrate('00000000-0000-7000-8000-000000000002') -> 'title' AS title_json;
-- an UPDATE that changes nothing writes nothing
UPDATE app.story SET words = words WHERE id = '00000000-0000-7000-8000-000000000002' RETURNING version;
-- DELETE → tombstone; the row leaves the view, history stays
DELETE FROM app.story WHERE id = '00000000-0000-7000-8000-000000000002';
\echo DELETE rows: :ROW_COUNT
SELECT count(*) AS rows_left FROM app.story;
SELECT version, deleted FROM eventic.history('00000000-0000-7000-8000-000000000002');
-- the view shows only its class
SELECT count(*) AS story_rows FROM app.story;
SELECT count(*) AS live_records FROM eventic.latest;

------------------------------------------------------------------------------------------
-- evolving the schema: old versions stay as written, new ones use the new schema, the view
-- is rebuilt with the new columns
SELECT eventic.register_class('Story', jsonb_set(:'story_schema'::jsonb, '{properties,rating}',
                                                  '{"type": "number", "maximum": 5}'));
SELECT attname FROM pg_attribute
 WHERE attrelid = 'app.story'::regclass AND attnum > 0 ORDER BY attnum;
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'rating', '9')$$);
SELECT eventic.set_field('00000000-0000-7000-8000-000000000001', 'rating', '4.5');
SELECT title, rating FROM app.story;

------------------------------------------------------------------------------------------
-- bad inputs: 22023, nothing registered
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Story Draft')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('1Story')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class(repeat('A', 58))$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Bad', '{"type": "strnig"}')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Bad', '[1, 2]')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Bad', '{"properties": {"a b": {"type": "string"}}}')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Bad', NULL, 'no_such_schema')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.drop_class('NeverRegistered')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.prune('NeverRegistered', keep_last => 1)$$);
SELECT count(*) AS classes FROM eventic.classes WHERE class_name = 'Bad';

------------------------------------------------------------------------------------------
-- only the owner (or a superuser) may change or drop a class
CREATE ROLE eventic_regress_other;
GRANT USAGE, CREATE ON SCHEMA app TO eventic_regress_other;
SET ROLE eventic_regress_other;
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.register_class('Story', '{}')$$);
SELECT code, message, detail FROM pg_temp.try($$SELECT eventic.drop_class('Story')$$);
SELECT code, message, detail FROM pg_temp.try($$INSERT INTO eventic.classes (class_name, queue_name) VALUES ('X', 'story')$$);
-- any role can register its own class and use it through the view
SELECT eventic.register_class('Memo', '{"properties": {"text": {"type": "string"}}, "required": ["text"]}', 'app');
INSERT INTO app.memo (text) VALUES ('hello') RETURNING version, text;
SELECT code, message, detail FROM pg_temp.try($$INSERT INTO app.memo (id, text) VALUES ('00000000-0000-7000-8000-0000000000e4', NULL)$$);
RESET ROLE;
SELECT class_name, owner FROM eventic.classes WHERE class_name = 'Memo';

------------------------------------------------------------------------------------------
-- drop_class: view and queue go, records stay
SELECT eventic.drop_class('Story');
SELECT to_regclass('app.story') IS NULL AS view_gone, to_regclass('eventic.queue_story') IS NULL AS queue_gone;
SELECT count(*) AS story_versions_kept FROM eventic.records WHERE class_type = 'Story';
SELECT eventic.drop_class('Memo');
DROP OWNED BY eventic_regress_other;
DROP ROLE eventic_regress_other;
