# Benchmark group `classes` (sourced by bench/run): the price of two class features, each
# against the same operation without the feature, in the same run:
#   - JSON Schema validation: set_field on records of a class registered with a
#     Pydantic-style schema (every new version is validated) vs a class without a schema;
#   - tracked tables: an UPDATE of an ordinary table made versioned by eventic.track
#     (an AFTER trigger appends a version per row change) vs the same UPDATE untracked.

CLASSES_N=1000

classes_prepare() {
    bench_sql -v n="$CLASSES_N" <<'SQL'
-- What Pydantic v2 emits for
--   class Status(str, Enum): draft = 'draft'; review = 'review'; published = 'published'
--   class Validated(BaseModel):
--       title: Optional[str] = None; body: str; status: Status
--       priority: int = Field(ge=0); points: int; tags: list[str]
-- (Validated.model_json_schema(): the enum as a $defs entry behind a $ref, Optional as anyOf)
SELECT eventic.register_class('Validated', $schema$
{
  "$defs": {
    "Status": {"enum": ["draft", "review", "published"], "title": "Status", "type": "string"}
  },
  "properties": {
    "title": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "Title"},
    "body": {"title": "Body", "type": "string"},
    "status": {"$ref": "#/$defs/Status"},
    "priority": {"minimum": 0, "title": "Priority", "type": "integer"},
    "points": {"title": "Points", "type": "integer"},
    "tags": {"items": {"type": "string"}, "title": "Tags", "type": "array"}
  },
  "required": ["body", "status", "priority", "points", "tags"],
  "title": "Validated",
  "type": "object"
}
$schema$) \g /dev/null
SELECT eventic.register_class('Unvalidated') \g /dev/null

-- 1000 identical documents in each class; bench_validated / bench_unvalidated map n to ids.
CREATE TABLE bench_docs (n int PRIMARY KEY, doc jsonb NOT NULL);
INSERT INTO bench_docs
SELECT n, jsonb_build_object(
           'title', 'Story ' || n,
           'body', repeat('A paragraph of story text. ', 8),
           'status', 'draft',
           'priority', n % 5,
           'points', n % 13,
           'tags', jsonb_build_array('bench', 'story', 'tag' || n % 10))
  FROM generate_series(1, :n) n;
CREATE TABLE bench_validated (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_validated SELECT n, eventic.create('Validated', doc) FROM bench_docs ORDER BY n;
CREATE TABLE bench_unvalidated (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_unvalidated SELECT n, eventic.create('Unvalidated', doc) FROM bench_docs ORDER BY n;

-- Two identical ordinary tables of the same 1000 rows (the same ids: only one is tracked,
-- so its records never meet the other's rows); bench_rows maps n to the id.
CREATE TABLE bench_rows (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_rows SELECT n, gen_random_uuid() FROM generate_series(1, :n) n;
CREATE TABLE bench_tracked (
    id       uuid PRIMARY KEY,
    title    text,
    body     text,
    status   text,
    priority int,
    points   int
);
CREATE TABLE bench_untracked (LIKE bench_tracked INCLUDING ALL);
INSERT INTO bench_tracked
SELECT r.id, d.doc ->> 'title', d.doc ->> 'body', d.doc ->> 'status',
       (d.doc ->> 'priority')::int, (d.doc ->> 'points')::int
  FROM bench_rows r JOIN bench_docs d USING (n);
INSERT INTO bench_untracked SELECT * FROM bench_tracked;
SELECT eventic.track('bench_tracked') \g /dev/null

DO $$
DECLARE bad text;
BEGIN
    SELECT string_agg(problem, '; ') INTO bad FROM (
        SELECT format('class %s has %s live records, not 1000', c, count(l.id)) AS problem
          FROM unnest(ARRAY['Validated', 'Unvalidated', 'public.bench_tracked']) c
          LEFT JOIN eventic.latest l ON l.class_type = c
         GROUP BY c HAVING count(l.id) <> 1000
        UNION ALL
        SELECT format('class %s: json_schema %s', class_name,
                      CASE WHEN json_schema IS NULL THEN 'missing' ELSE 'present' END)
          FROM eventic.classes
         WHERE (class_name = 'Validated' AND json_schema IS NULL)
            OR (class_name IN ('Unvalidated', 'public.bench_tracked') AND json_schema IS NOT NULL)
        UNION ALL
        SELECT format('%s has triggers %s', tgrelid::regclass, string_agg(tgname, ', '))
          FROM pg_trigger
         WHERE tgrelid IN ('bench_tracked'::regclass, 'bench_untracked'::regclass)
         GROUP BY tgrelid
        HAVING tgrelid = 'bench_untracked'::regclass
            OR array_agg(tgname::text) <> ARRAY['eventic_track']
    ) p;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'bench_tracked'::regclass) THEN
        bad := concat_ws('; ', bad, 'bench_tracked has no trigger');
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'classes benchmark data not built as wanted: %', bad;
    END IF;
END
$$;
-- the schema really is enforced (a wrong document is refused), the other class takes it
DO $$
BEGIN
    PERFORM eventic.set_field((SELECT id FROM bench_validated WHERE n = 1), 'priority', '-1');
    RAISE EXCEPTION 'a version breaking the schema of Validated was accepted';
EXCEPTION WHEN check_violation THEN
    NULL;
END
$$;

VACUUM ANALYZE;
SQL
}

classes_run() {
    local g=classes
    bench_declare $g set_unvalidated set_unvalidated tps \
        "SELECT eventic.set_field(id of random Unvalidated record 1..1000, 'title', ...) (class without schema)"
    bench_declare $g set_validated set_unvalidated tps \
        "the same set_field on a Validated record (class with a JSON Schema: each version validated)"
    bench_declare $g update_untracked update_untracked tps \
        "UPDATE bench_untracked SET title = ... WHERE id = random row 1..1000 (ordinary table)"
    bench_declare $g update_tracked update_untracked tps \
        "the same UPDATE on bench_tracked (eventic.track: the AFTER trigger appends a version)"

    # interleaved, order reversed every other round (as in records)
    local benches=(set_unvalidated set_validated update_untracked update_tracked) c round b
    for c in $BENCH_CLIENTS; do
        for round in $(seq 1 "$BENCH_ROUNDS"); do
            local order=("${benches[@]}")
            [ $((round % 2)) = 0 ] && order=(update_tracked update_untracked set_validated set_unvalidated)
            for b in "${order[@]}"; do
                bench_pgbench $g "$b" "$c" "$round" "classes/$b.sql"
            done
        done
    done
}
