# Benchmark group `classes` (sourced by bench/run): the price of two class features, each
# against the same operation without the feature, in the same run:
#   - JSON Schema validation: set_field on records of a class registered with a
#     Pydantic-style schema (every new version is validated) vs a class without a schema;
#   - tracked tables: an UPDATE of an ordinary table made versioned by eventic.track
#     (an AFTER trigger appends a version per row change) vs the same UPDATE untracked.

CLASSES_N=1000

CLASSES_BULK=30000

classes_prepare() {
    bench_sql < "$BENCH_HOME/audit.sql"
    bench_sql -v n="$CLASSES_N" -v bulk="$CLASSES_BULK" <<'SQL'
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
-- the audit-trigger baseline (issue 13): the same rows, the audit trigger of the issue
CREATE TABLE bench_audited (LIKE bench_tracked INCLUDING ALL);
INSERT INTO bench_audited SELECT * FROM bench_tracked;
CREATE TRIGGER t_history AFTER UPDATE ON bench_audited FOR EACH ROW EXECUTE FUNCTION audit_row();
SELECT eventic.track('bench_tracked') \g /dev/null

-- the bulk path: 30,000 rows (the same documents, repeated) updated by one statement, tracked
-- and audit-triggered
CREATE TABLE bench_bulk_tracked (LIKE bench_tracked INCLUDING ALL);
ALTER TABLE bench_bulk_tracked ADD COLUMN n int NOT NULL;
INSERT INTO bench_bulk_tracked
SELECT gen_random_uuid(), t.title, t.body, t.status, t.priority, t.points, g
  FROM generate_series(1, :bulk) g JOIN bench_rows r ON r.n = 1 + g % 1000
  JOIN bench_tracked t ON t.id = r.id;
CREATE TABLE bench_bulk_audited (LIKE bench_bulk_tracked INCLUDING ALL);
INSERT INTO bench_bulk_audited SELECT * FROM bench_bulk_tracked;
CREATE TRIGGER t_history AFTER UPDATE ON bench_bulk_audited FOR EACH ROW EXECUTE FUNCTION audit_row();
SELECT eventic.track('bench_bulk_tracked') \g /dev/null

DO $$
DECLARE bad text;
BEGIN
    SELECT string_agg(problem, '; ') INTO bad FROM (
        SELECT format('class %s has %s live records, not %s', c, count(l.id), want) AS problem
          FROM (VALUES ('Validated', 1000), ('Unvalidated', 1000), ('public.bench_tracked', 1000),
                       ('public.bench_bulk_tracked', 30000)) w(c, want)
          LEFT JOIN eventic.latest l ON l.class_type = w.c
         GROUP BY c, want HAVING count(l.id) <> want
        UNION ALL
        SELECT format('class %s: json_schema %s', class_name,
                      CASE WHEN json_schema IS NULL THEN 'missing' ELSE 'present' END)
          FROM eventic.classes
         WHERE (class_name = 'Validated' AND json_schema IS NULL)
            OR (class_name IN ('Unvalidated', 'public.bench_tracked') AND json_schema IS NOT NULL)
        UNION ALL
        SELECT format('%s has triggers %s', tgrelid::regclass, string_agg(tgname, ', '))
          FROM pg_trigger
         WHERE tgrelid IN ('bench_tracked'::regclass, 'bench_untracked'::regclass,
                           'bench_bulk_tracked'::regclass)
         GROUP BY tgrelid
        HAVING tgrelid = 'bench_untracked'::regclass
            OR array_agg(tgname::text) <> ARRAY['eventic_track']
    ) p;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'bench_tracked'::regclass)
       OR NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'bench_bulk_tracked'::regclass) THEN
        bad := concat_ws('; ', bad, 'a tracked table has no trigger');
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
    bench_declare $g update_audited update_untracked tps \
        "the same UPDATE on bench_audited, with the audit trigger of issue 13"
    bench_declare $g update_tracked update_audited tps \
        "the same UPDATE on bench_tracked (eventic.track: the AFTER trigger appends a version)"
    bench_declare $g bulk_audited bulk_audited latency \
        "UPDATE bench_bulk_audited SET title = ... (all 30,000 rows, one statement, audit trigger)"
    bench_declare $g bulk_tracked bulk_audited latency \
        "the same 30,000-row UPDATE of a tracked table (30,000 versions appended)"

    # interleaved, order reversed every other round (as in records)
    local benches=(set_unvalidated set_validated update_untracked update_audited update_tracked) c round b
    for c in $BENCH_CLIENTS; do
        for round in $(seq 1 "$BENCH_ROUNDS"); do
            local order=("${benches[@]}")
            [ $((round % 2)) = 0 ] && order=(update_tracked update_audited update_untracked set_validated set_unvalidated)
            for b in "${order[@]}"; do
                bench_pgbench $g "$b" "$c" "$round" "classes/$b.sql"
            done
        done
    done

    # bulk: one client, each run a fixed number of 30,000-row statements (mean latency)
    for round in $(seq 1 "$BENCH_ROUNDS"); do
        local order=(bulk_audited bulk_tracked)
        [ $((round % 2)) = 0 ] && order=(bulk_tracked bulk_audited)
        for b in "${order[@]}"; do
            bench_pgbench_count $g "$b" 1 "$round" "classes/$b.sql" "${BENCH_BULK_STATEMENTS:-3}"
        done
    done
}

classes_report() {
    echo "issue 13 goals (classes):"
    bench_goal classes update_tracked classes update_audited 0.9 "tracked UPDATE / audit-trigger UPDATE"
    bench_goal classes bulk_tracked classes bulk_audited 0.8 "30,000-row tracked UPDATE / audit-trigger UPDATE (speed: audit ms / tracked ms)"
    bench_goal classes update_tracked classes update_untracked - "tracked UPDATE / plain UPDATE"
}
