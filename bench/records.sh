# Benchmark group `records` (sourced by bench/run): the write path (set_field) against an
# in-place UPDATE and a plain append-only INSERT, and hydrate latency against history length.

RECORDS_N=1000

records_prepare() {
    bench_sql < "$BENCH_HOME/audit.sql"
    bench_sql -v n="$RECORDS_N" <<'SQL'
-- 1000 Story records with a few fields; bench_ids maps a dense n to each record id.
CREATE TABLE bench_ids (n int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_ids
SELECT n, eventic.create('Story', jsonb_build_object(
           'title', 'Story ' || n,
           'body', repeat('A paragraph of story text. ', 8),
           'status', 'draft',
           'priority', n % 5,
           'points', n % 13,
           'tags', jsonb_build_array('bench', 'story', 'tag' || n % 10)))
  FROM generate_series(1, :n) n;

-- The UPDATE baseline: an ordinary table with the very same 1000 documents.
CREATE TABLE bench_plain (n int PRIMARY KEY, data jsonb NOT NULL);
INSERT INTO bench_plain
SELECT i.n, r.data FROM bench_ids i JOIN eventic.records r ON r.id = i.id AND r.version = 0;
-- The audit-trigger baseline (issue 13): the same table and documents, with the audit trigger.
CREATE TABLE bench_audit (LIKE bench_plain INCLUDING ALL);
INSERT INTO bench_audit SELECT * FROM bench_plain;
CREATE TRIGGER t_history AFTER UPDATE ON bench_audit FOR EACH ROW EXECUTE FUNCTION audit_row();

-- The append-only floor: shaped exactly like eventic.records (columns, defaults, primary key,
-- partial index; no CHECK constraints, as eventic.records has none), without its triggers,
-- starting from the same 1000 version-0 rows.
CREATE TABLE bench_append (
    version_id  uuid        NOT NULL,
    id          uuid        NOT NULL,
    version     integer     NOT NULL,
    class_type  text        NOT NULL,
    data        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_by  name        NOT NULL DEFAULT current_user,
    deleted     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (id, version)
);
CREATE INDEX ON bench_append (class_type, id) WHERE version = 0;
CREATE SEQUENCE bench_append_version START 1;
INSERT INTO bench_append SELECT * FROM eventic.records;
-- the floor is only a floor if it stays shaped like eventic.records: compare them
DO $$
DECLARE differences text;
BEGIN
    WITH shape AS (
        SELECT c.oid AS rel, 'column ' || a.attnum || ': ' || a.attname || ' '
               || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '') AS item
          FROM pg_class c
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        UNION ALL
        SELECT conrelid, 'constraint ' || pg_get_constraintdef(oid) FROM pg_constraint
        UNION ALL
        SELECT indrelid, 'index ' || regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '')
          FROM pg_index
    ), floor AS (SELECT item FROM shape WHERE rel = 'bench_append'::regclass),
       real AS (SELECT item FROM shape WHERE rel = 'eventic.records'::regclass)
    SELECT string_agg(item, '; ') INTO differences FROM (
        (SELECT 'bench_append only: ' || item AS item FROM (TABLE floor EXCEPT TABLE real) x)
        UNION ALL
        (SELECT 'eventic.records only: ' || item FROM (TABLE real EXCEPT TABLE floor) y)) z;
    IF differences IS NOT NULL THEN
        RAISE EXCEPTION 'bench_append is not shaped like eventic.records: %', differences
            USING HINT = 'Update bench_append in bench/records.sh to match sql/records.sql.';
    END IF;
END
$$;

-- set_field_role: the same 1000 documents in class AppStory, owned by the ordinary role
-- bench_app (where the row-level security of eventic.records applies; superusers bypass it)
DROP ROLE IF EXISTS bench_app;
CREATE ROLE bench_app LOGIN;
CREATE TABLE bench_app_ids (n int PRIMARY KEY, id uuid, data jsonb NOT NULL);
INSERT INTO bench_app_ids
SELECT i.n, NULL, r.data - 'properties' FROM bench_ids i JOIN eventic.records r ON r.id = i.id AND r.version = 0;
GRANT SELECT, UPDATE ON bench_app_ids TO bench_app;
SET ROLE bench_app;
UPDATE bench_app_ids SET id = eventic.create('AppStory', data);
RESET ROLE;

-- hydrate: one record with 1 version, one with 100, one with 10,000.
CREATE TABLE bench_hydrate (versions int PRIMARY KEY, id uuid NOT NULL);
INSERT INTO bench_hydrate
SELECT v, eventic.create('Story', jsonb_build_object(
           'title', 'history of ' || v, 'body', repeat('A paragraph of story text. ', 8),
           'status', 'draft', 'priority', 1, 'points', 3, 'tags', jsonb_build_array('bench')))
  FROM unnest(ARRAY[1, 100, 10000]) v;
SELECT count(eventic.set_field(h.id, 'title', to_jsonb('title ' || g)))
  FROM bench_hydrate h CROSS JOIN LATERAL generate_series(1, h.versions - 1) g \g /dev/null
DO $$
DECLARE bad text;
BEGIN
    SELECT string_agg(format('%s versions wanted, %s built', h.versions, n), '; ') INTO bad
      FROM bench_hydrate h,
           LATERAL (SELECT count(*) AS n, max(version) AS top FROM eventic.records r WHERE r.id = h.id) c
     WHERE c.n <> h.versions OR c.top <> h.versions - 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'hydrate records not built as wanted: %', bad;
    END IF;
END
$$;

VACUUM ANALYZE;
SQL
}

records_run() {
    local g=records
    bench_declare $g update_plain update_plain tps \
        "UPDATE bench_plain SET data = jsonb_set(data, '{title}', ...) WHERE n = random 1..1000 (in place)"
    bench_declare $g update_audit update_plain tps \
        "the same UPDATE on bench_audit, with the audit trigger of issue 13 (INSERT to_jsonb(NEW) into audit_history)"
    bench_declare $g set_field update_audit tps \
        "SELECT eventic.set_field(id of random record 1..1000, 'title', ...) (appends a version)"
    bench_declare $g set_field_role update_audit tps \
        "set_field as an ordinary role that owns the class (row-level security applies)"
    bench_declare $g insert_append update_plain tps \
        "INSERT INTO bench_append SELECT latest version with the title changed (plain append-only floor)"
    bench_declare $g latest_sql latest_sql latency \
        "SELECT data FROM eventic.records WHERE id = ... ORDER BY version DESC LIMIT 1 (1 version)"
    bench_declare $g hydrate_v1 latest_sql latency \
        "SELECT eventic.hydrate(id) of a record with 1 version"
    bench_declare $g hydrate_v100 hydrate_v1 latency \
        "SELECT eventic.hydrate(id) of a record with 100 versions"
    bench_declare $g hydrate_v10000 hydrate_v1 latency \
        "SELECT eventic.hydrate(id) of a record with 10,000 versions"

    # writes: the three interleaved, order reversed every other round, so that table growth
    # and machine state weigh on each alike
    local writes=(update_plain update_audit set_field set_field_role insert_append) c round b
    for c in $BENCH_CLIENTS; do
        for round in $(seq 1 "$BENCH_ROUNDS"); do
            local order=("${writes[@]}")
            [ $((round % 2)) = 0 ] && order=(insert_append set_field_role set_field update_audit update_plain)
            for b in "${order[@]}"; do
                if [ "$b" = set_field_role ]; then
                    PGBENCH_USER=bench_app bench_pgbench $g "$b" "$c" "$round" "records/$b.sql"
                else
                    bench_pgbench $g "$b" "$c" "$round" "records/$b.sql"
                fi
            done
        done
    done

    # reads: one client, latency
    local reads=(latest_sql:1 hydrate_v1:1 hydrate_v100:100 hydrate_v10000:10000) item
    for round in $(seq 1 "$BENCH_ROUNDS"); do
        local order=("${reads[@]}")
        if [ $((round % 2)) = 0 ]; then
            order=(hydrate_v10000:10000 hydrate_v100:100 hydrate_v1:1 latest_sql:1)
        fi
        for item in "${order[@]}"; do
            b=${item%%:*}
            local script=records/hydrate.sql
            [ "$b" = latest_sql ] && script=records/latest_sql.sql
            bench_pgbench $g "$b" 1 "$round" "$script" -D "versions=${item#*:}"
        done
    done
}

records_report() {
    echo "issue 13 goals (records):"
    bench_goal records set_field records update_audit 1.0 "set_field / audit-trigger UPDATE"
    bench_goal records set_field records insert_append 0.9 "set_field / append-only floor"
    bench_goal records set_field_role records update_audit - "set_field as bench_app / audit-trigger UPDATE"
}
