# Benchmark group `workflows` (sourced by bench/run): durable workflows of 10 trivial database
# steps, run by the background worker, against the floor: the same 10 steps as plain function
# calls in one transaction (pgbench, 1 client). The steps are declared database-only
# (eventic.transaction: the fast path, inline); wf_ext_throughput runs the same body with
# eventic.step, for steps that may act outside the database (each committed before the body
# goes on). Nothing here asserts a time.
#   - throughput: WF_COUNT workflows started in one transaction, time until all succeeded;
#     workflows/s and the wall time per step;
#   - latency: one 10-step workflow at a time, from start_workflow to wait_workflow returning.
#
#   BENCH_WF_COUNT       workflows in the throughput measurement (1000)
#   BENCH_WF_LATENCY_N   workflows timed one at a time for the latency (50)
#   BENCH_WF_EXT_COUNT   workflows of eventic.step steps in their throughput measurement (200)

WF_COUNT=${BENCH_WF_COUNT:-1000}
WF_LATENCY_N=${BENCH_WF_LATENCY_N:-50}
WF_EXT_COUNT=${BENCH_WF_EXT_COUNT:-200}

workflows_prepare() {
    bench_sql <<'SQL'
CREATE TABLE wf_effects (workflow text, step int);
CREATE FUNCTION wf_effect(workflow text, step int) RETURNS int LANGUAGE sql
    AS $$ INSERT INTO wf_effects VALUES (workflow, step) RETURNING step $$;
-- the workflow: 10 steps, each one INSERT (database-only: eventic.transaction)
CREATE FUNCTION wf_ten(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + eventic.transaction('s' || i, 'wf_effect(text,int)',
                                             jsonb_build_array(eventic.workflow_id(), i))::int;
    END LOOP;
    RETURN jsonb_build_object('total', total);
END $$;
-- the same with eventic.step (steps that may act outside the database)
CREATE FUNCTION wf_ten_ext(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + eventic.step('s' || i, 'wf_effect(text,int)',
                                      jsonb_build_array(eventic.workflow_id(), i))::int;
    END LOOP;
    RETURN jsonb_build_object('total', total);
END $$;
-- the floor: the same 10 calls, plainly, in one transaction
CREATE FUNCTION wf_ten_plain(id text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + wf_effect(id, i);
    END LOOP;
    RETURN total;
END $$;
CREATE TABLE wf_t0 (what text PRIMARY KEY, t timestamptz);
SQL
}

workflows_run() {
    local g=workflows round
    bench_declare $g ten_plain ten_plain tps \
        "the 10 steps as plain function calls in one transaction (pgbench, 1 client): the floor"
    bench_declare $g wf_throughput ten_plain rate:wf/s \
        "$WF_COUNT workflows of 10 steps started in one transaction, run by the worker: workflows/s vs floor tx/s"
    bench_declare $g wf_ext_throughput ten_plain rate:wf/s \
        "$WF_EXT_COUNT workflows of 10 eventic.step steps (may act outside the database) started in one transaction: workflows/s vs floor tx/s"
    bench_declare $g wf_step_wall - ms \
        "wall time per workflow step in the throughput run (elapsed / (workflows x 10))"
    bench_declare $g wf_step_overhead - ms \
        "wf_step_wall minus the floor's time per step (ten_plain latency / 10): what eventic adds to a step"
    bench_declare $g wf_latency_p50 - ms \
        "one 10-step workflow at a time from one connection: start_workflow (its commit) to wait_workflow returning, p50 of $WF_LATENCY_N"
    bench_declare $g wf_latency_mean - ms \
        "the same, mean"
    bench_declare $g wf_latency_cold_p50 - ms \
        "the same with a new connection (psql) per workflow: includes connecting and a new server process's empty caches, p50"
    for round in $(seq 1 "$BENCH_ROUNDS"); do
        bench_pgbench $g ten_plain 1 "$round" workflows/ten_plain.sql
        workflows_throughput "$round" wf_ten tp "$WF_COUNT" wf_throughput
        workflows_throughput "$round" wf_ten_ext tx "$WF_EXT_COUNT" wf_ext_throughput
        workflows_latency "$round"
    done
}

# workflows_throughput ROUND BODY PREFIX COUNT METRIC
workflows_throughput() {
    local round=$1 body=$2 tp=$3 WF_COUNT=$4 metric=$5 left start rate step_ms
    bench_sql -c "TRUNCATE wf_effects" >/dev/null
    log "workflows/throughput: $WF_COUNT workflows of $body, round $round"
    bench_sql -v n="$WF_COUNT" -v r="$round" -v body="$body" -v tp="$tp" <<'SQL'
BEGIN;
SELECT count(eventic.start_workflow((:'body' || '(jsonb)')::regprocedure, '{}', :'tp' || '-' || :r || '-' || g))
  FROM generate_series(1, :n) g \g /dev/null
INSERT INTO wf_t0 VALUES ('throughput', clock_timestamp())
    ON CONFLICT (what) DO UPDATE SET t = excluded.t;
COMMIT;
SQL
    start=$(date +%s)
    while :; do
        left=$(bench_sql -At -c "SELECT count(*) FROM eventic.workflow_runs WHERE workflow_id LIKE '$tp-$round-%' AND status <> 'SUCCESS'")
        [ "$left" = 0 ] && break
        if [ $(( $(date +%s) - start )) -gt 1800 ]; then
            echo "workflows not done after 1800 s ($left left)" >&2
            exit 1
        fi
        sleep 0.2
    done
    local effects
    effects=$(bench_sql -At -c "SELECT count(*) = $WF_COUNT * 10 AND count(DISTINCT (workflow, step)) = $WF_COUNT * 10 FROM wf_effects WHERE workflow LIKE '$tp-$round-%'")
    [ "$effects" = t ] || { echo "workflow steps did not each run exactly once" >&2; exit 1; }
    read -r rate step_ms <<<"$(bench_sql -At -F' ' -c "
        SELECT round(($WF_COUNT / s)::numeric, 1), round((s * 1000 / ($WF_COUNT * 10))::numeric, 4)
          FROM (SELECT extract(epoch FROM max(w.updated_at) - t.t) AS s
                  FROM eventic.workflow_runs w, wf_t0 t
                 WHERE w.workflow_id LIKE '$tp-$round-%' AND t.what = 'throughput' GROUP BY t.t) x")"
    bench_record workflows "$metric" 1 "$round" "$rate" ""
    [ "$metric" = wf_throughput ] || return 0
    bench_record workflows wf_step_wall 1 "$round" "" "$step_ms"
    # the floor's time per step: its latency (one transaction of 10 steps) / 10, same round
    local floor_ms
    floor_ms=$(awk '/^latency average = /{print $4; exit}' "$LOGS/workflows.ten_plain.c1.r$round.log")
    bench_record workflows wf_step_overhead 1 "$round" "" \
        "$(awk -v w="$step_ms" -v f="$floor_ms" 'BEGIN {printf "%.4f", w - f / 10}')"
}

workflows_latency() {
    local round=$1 i
    # warm: one connection, pgbench's per-transaction latencies (start_workflow + wait_workflow)
    log "workflows/latency: $WF_LATENCY_N workflows one at a time from one connection, round $round"
    local prefix="$BENCH_DIR/wf_latency.r$round"
    as_root rm -f "$prefix".*
    pgbench_exec "$LOGS/workflows.latency.r$round.log" 1 workflows/latency.sql \
        -t "$WF_LATENCY_N" -l --log-prefix="$prefix"
    local p50 mean
    # the log's third column is the transaction's latency in µs
    read -r p50 mean <<<"$(cat "$prefix".* | awk '{print $3 / 1000}' | sort -n |
        awk '{v[NR] = $1; s += $1} END {printf "%.3f %.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), s / NR}')"
    bench_record workflows wf_latency_p50 1 "$round" "" "$p50"
    bench_record workflows wf_latency_mean 1 "$round" "" "$mean"

    # cold: a new connection (psql) per workflow, so the server process starts with empty caches
    log "workflows/latency: $WF_LATENCY_N workflows one at a time, a new connection each, round $round"
    bench_sql -c "CREATE TABLE IF NOT EXISTS wf_latency (round int, ms float8)" >/dev/null
    for i in $(seq 1 "$WF_LATENCY_N"); do
        # start in its own transaction (it must commit to run), then wait: the time between is
        # what a client sees
        bench_sql -v id="cold-$round-$i" -v r="$round" <<'SQL' >/dev/null
SELECT clock_timestamp() AS t0 \gset
SELECT eventic.start_workflow('wf_ten(jsonb)', '{}', :'id') \g /dev/null
SELECT eventic.wait_workflow(:'id', '60 seconds') IS NOT NULL AS done \gset
INSERT INTO wf_latency VALUES (:r, extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000);
SQL
    done
    read -r p50 mean <<<"$(bench_sql -At -F' ' -c "
        SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3), round(avg(ms)::numeric, 3)
          FROM wf_latency WHERE round = $round")"
    bench_record workflows wf_latency_cold_p50 1 "$round" "" "$p50"
}
