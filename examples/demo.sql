-- The seed's Story, walked through versions (run by scripts/demo against a throwaway cluster).
\set QUIET on
\pset footer off
CREATE EXTENSION IF NOT EXISTS eventic;

\echo '== 0. register the Story class: the JSON Schema Pydantic emits for'
\echo '       class Story(Record): title: str | None = None; body: str | None = None; words: int = 0'
\echo '   and a typed view public.story that any ORM can map like a table'
SELECT eventic.register_class('Story', '{
  "title": "Story", "type": "object",
  "properties": {
    "title": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
    "body":  {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null},
    "words": {"type": "integer", "minimum": 0, "default": 0}
  }}', view_schema => 'public');
SELECT class_name, queue_name, view_schema || '.' || view_name AS view FROM eventic.classes;

\echo '== 1. create a Story (version 0)'
SELECT eventic.create('Story', '{"title": null, "body": null}') AS story_id \gset
\echo story id: :story_id

\echo '== 2. change it: each change appends an immutable version'
SELECT eventic.set_field(:'story_id', 'title', '"The Hare and the Tortoise"') AS version;
SELECT eventic.set_field(:'story_id', 'body', '"Once upon a time …"') AS version;
\echo '   setting a field to the value it already has writes nothing:'
SELECT eventic.set_field(:'story_id', 'body', '"Once upon a time …"') AS version;
SELECT eventic.set_fields(:'story_id', '{"body": "Once upon a time, a hare mocked a tortoise.", "words": 8}') AS version;
SELECT eventic.add_property(:'story_id', 'featured') AS version;
\echo '   any client can also use a plain UPDATE; it appends a version too:'
UPDATE eventic.records SET data = data || '{"words": 9}' WHERE id = :'story_id';

\echo '== 3. history (oldest first)'
SELECT version, changed_fields, data->>'title' AS title, left(data->>'body', 30) AS body, created_by
  FROM eventic.history(:'story_id');

\echo '== 4. what changed between version 1 and the latest'
SELECT jsonb_pretty(eventic.diff(:'story_id', 1, (SELECT max(version) FROM eventic.records WHERE id = :'story_id'))) AS diff;

\echo '== 5. version 1, as it was'
SELECT eventic.hydrate(:'story_id', 1) AS version_1;

\echo '== 6. a stale writer is refused (expected_version 1, the record is further on):'
\set ON_ERROR_STOP off
SELECT eventic.set_field(:'story_id', 'title', '"Overwritten?"', expected_version => 1);
\set ON_ERROR_STOP on

\echo '== 7. a write that breaks the class schema is refused (words must be an integer >= 0):'
\set ON_ERROR_STOP off
SELECT eventic.set_field(:'story_id', 'words', '"many"');
\set ON_ERROR_STOP on

\echo '== 8. the typed view, as an ORM sees it'
SELECT id, version, title, left(body, 30) AS body, words, properties FROM public.story;
UPDATE public.story SET words = 10 WHERE id = :'story_id' RETURNING version, words;

\echo '== 9. queued jobs: the seed enqueued draft and snapshot on the Story queue (queue story);'
\echo '      the background worker inside Postgres runs them, as the role that enqueued them'
CREATE FUNCTION draft(sid uuid, text text) RETURNS integer LANGUAGE sql
    AS $$ SELECT eventic.set_field(sid, 'body', to_jsonb(text)) $$;
CREATE TABLE snapshots (story uuid, version integer, taken_by name DEFAULT current_user);
CREATE FUNCTION snapshot(sid uuid) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO snapshots (story, version) VALUES (sid, (eventic.hydrate(sid) ->> 'version')::int) $$;
SELECT eventic.enqueue('story', 'draft(uuid,text)', jsonb_build_array(:'story_id', 'Once upon a time … (drafted by a job)')) AS draft_job,
       eventic.enqueue('story', 'snapshot(uuid)', jsonb_build_array(:'story_id')) AS snapshot_job;
SELECT pg_sleep(0.5);
SELECT queue_name, job_id, fn, args, attempts FROM eventic.finished_jobs ORDER BY job_id;
SELECT version AS snapshot_saw_version, taken_by FROM snapshots;
SELECT queue_name, ready, running, dead, done_last_minute FROM eventic.queue_stats;

\echo '== 10. the demo_flow of the seed as a durable workflow: each step (database-only: eventic.transaction) recorded in Postgres,'
\echo '       run once by the worker, replayed from its record after a crash'
CREATE FUNCTION create_story() RETURNS uuid LANGUAGE sql
    AS $$ SELECT eventic.create('Story', '{"title": "A durable story"}') $$;
CREATE FUNCTION demo_flow(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    sid uuid;
BEGIN
    sid := (eventic.transaction('create_story', 'create_story()') #>> '{}')::uuid;
    PERFORM eventic.transaction('draft', 'draft(uuid,text)', jsonb_build_array(sid, input ->> 'text'));
    PERFORM eventic.transaction('snapshot', 'snapshot(uuid)', jsonb_build_array(sid));
    RETURN jsonb_build_object('id', sid, 'workflow', eventic.workflow_id());
END
$$;
SELECT eventic.start_workflow('demo_flow(jsonb)', '{"text": "Once upon a time …"}', 'demo-flow-1') AS workflow;
SELECT eventic.wait_workflow('demo-flow-1', '30 seconds') AS output;
SELECT position, name, kind, output FROM eventic.workflow_steps WHERE workflow_id = 'demo-flow-1' ORDER BY position;
SELECT workflow_id, name, status FROM eventic.workflows;

\echo '== 11. the final JSON'
SELECT jsonb_pretty(eventic.hydrate(:'story_id')) AS story;
