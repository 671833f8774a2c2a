# Benchmark group `queues` (sourced by bench/run): eventic's job queues against a hand-rolled
# queue table, in the same run:
#   - drain rate: N no-op jobs run by the background worker, and by run_pending in one session,
#     vs the floor: a plain table of N rows drained by DELETE ... FOR UPDATE SKIP LOCKED;
#   - enqueue rate: eventic.enqueue vs a plain INSERT into a table shaped like a queue table;
#   - latency from the commit of an enqueue to the start of its job, at light load;
#   - growth (only with BENCH_LONG=1): many batches through the worker, size and rate per batch.
# Every figure except the latency is a ratio to its floor. Nothing here asserts a time.
#
#   BENCH_QUEUE_JOBS            jobs (rows) per drain measurement and per growth batch (100000)
#   BENCH_QUEUE_FLOOR_CLIENTS   pgbench clients draining the floor table (4)
#   BENCH_QUEUE_CONCURRENCY     alter_queue(concurrency => ...) of the drained queues (1)
#   BENCH_QUEUE_LATENCY_JOBS    jobs enqueued one at a time for the latency figures (500)
#   BENCH_QUEUE_LATENCY_SLEEP_MS  pause between two of those enqueues (20)
#   BENCH_LONG                  1 = also the growth series
#   BENCH_QUEUE_GROWTH_BATCHES  batches of BENCH_QUEUE_JOBS in the growth series (10)
#   BENCH_QUEUE_TIMEOUT         seconds to wait for one drain before giving up (1800)

QUEUE_JOBS=${BENCH_QUEUE_JOBS:-100000}
QUEUE_FLOOR_CLIENTS=${BENCH_QUEUE_FLOOR_CLIENTS:-4}
QUEUE_CONCURRENCY=${BENCH_QUEUE_CONCURRENCY:-1}
QUEUE_LATENCY_JOBS=${BENCH_QUEUE_LATENCY_JOBS:-500}
QUEUE_LATENCY_SLEEP_MS=${BENCH_QUEUE_LATENCY_SLEEP_MS:-20}
QUEUE_LONG=${BENCH_LONG:-0}
QUEUE_GROWTH_BATCHES=${BENCH_QUEUE_GROWTH_BATCHES:-10}
QUEUE_TIMEOUT=${BENCH_QUEUE_TIMEOUT:-1800}
QUEUE_GROWTH=$BENCH_DIR/queues_growth.tsv   # one line per growth batch: rate, sizes, statistics

queues_prepare() {
    rm -f "$QUEUE_GROWTH"
    bench_sql <<'SQL'
-- The jobs: one that does nothing, one that notes when it started.
CREATE FUNCTION noop(n int) RETURNS void LANGUAGE sql AS 'select';
CREATE TABLE bench_marks (enqueued timestamptz NOT NULL, started timestamptz NOT NULL);
CREATE FUNCTION mark(t timestamptz) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO bench_marks (enqueued, started) VALUES (t, clock_timestamp()) $$;

-- The drain floor: a hand-rolled queue table, drained by DELETE ... FOR UPDATE SKIP LOCKED
-- (bench/queues/drain_floor.sql); no job runs.
CREATE TABLE bench_q (id bigserial PRIMARY KEY, payload jsonb NOT NULL);

-- The enqueue floor: a table shaped exactly like a queue table (LIKE ... INCLUDING ALL copies
-- the columns with their identity and defaults, the CHECK, the primary key, the partial
-- ready and dedup indexes), so it follows sql/queues.sql by construction.
SELECT eventic.create_queue('enq', worker => false) \g /dev/null
CREATE TABLE plain_q (LIKE eventic.queue_enq INCLUDING ALL);

-- When a timed step began (the commit that starts a drain).
CREATE TABLE bench_t0 (what text PRIMARY KEY, t timestamptz NOT NULL);

-- run_pending timed inside the server.
CREATE FUNCTION bench_timed_run_pending(q text, n int, OUT ran bigint, OUT seconds float8)
LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    ran := eventic.run_pending(q, n);
    seconds := extract(epoch FROM clock_timestamp() - t0);
END
$$;

DO $$
DECLARE missing text;
BEGIN
    SELECT string_agg(i, ', ') INTO missing
      FROM (SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') AS i
              FROM pg_index WHERE indrelid = 'eventic.queue_enq'::regclass
            EXCEPT
            SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '')
              FROM pg_index WHERE indrelid = 'plain_q'::regclass) x;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'plain_q lacks indexes of the queue table: %', missing;
    END IF;
END
$$;
VACUUM ANALYZE;
SQL
    # the preloaded launcher starts this database's worker within ~10 s of CREATE EXTENSION
    local waited=0
    until [ "$(bench_sql -At -c "SELECT count(*) > 0 FROM pg_stat_activity
                 WHERE backend_type = 'eventic worker' AND datname = current_database()")" = t ]; do
        if [ $waited -ge 60 ]; then
            echo "no eventic worker for database $BENCH_DB after 60 s: is eventic preloaded?" \
                 "(see $BENCH_DIR/server.log)" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
}

# queues_wait_drained QUEUE: until QUEUE holds no live job (the worker ran them all). Gives
# up (returns 1) after BENCH_QUEUE_TIMEOUT s, or when no job has finished for 60 s (a stuck
# worker).
queues_wait_drained() {
    local queue=$1 start last now left count previous=-1 still_since
    start=$(date +%s) last=$start still_since=$start
    while :; do
        left=$(bench_sql -At -c "SELECT EXISTS (SELECT 1 FROM eventic.queue_$queue WHERE dead_at IS NULL)")
        [ "$left" = t ] || break
        now=$(date +%s)
        if [ $((now - last)) -ge 15 ]; then
            count=$(bench_sql -At -c "SELECT count(*) FROM eventic.queue_$queue WHERE dead_at IS NULL")
            log "queues: $count jobs left in $queue after $((now - start)) s"
            [ "$count" = "$previous" ] || still_since=$now
            previous=$count last=$now
        fi
        if [ $((now - start)) -ge "$QUEUE_TIMEOUT" ] || [ $((now - still_since)) -ge 60 ]; then
            echo "queue $queue not drained after $((now - start)) s (no progress for $((now - still_since)) s," \
                 "timeout BENCH_QUEUE_TIMEOUT = $QUEUE_TIMEOUT s); the server log's last errors:" >&2
            grep -A2 'ERROR' "$BENCH_DIR/server.log" | tail -n 12 >&2 || true
            return 1
        fi
        sleep 0.2
    done
}

# queues_check_ran QUEUE N: all N jobs finished, none dead or waiting.
queues_check_ran() {
    bench_sql -v q="$1" -v n="$2" <<'SQL'
SELECT count(*) AS finished FROM eventic.finished_jobs WHERE queue_name = :'q' \gset
SELECT format('SELECT count(*) AS waiting, coalesce(min(last_error), ''none'') AS error FROM eventic.%I',
              'queue_' || :'q') AS counting \gset
:counting \gset
SELECT :finished = :n AND :waiting = 0 AS ok \gset
\if :ok
\else
\echo queue :q: :finished jobs finished, :n wanted, :waiting left (last error: :error)
SELECT 1/0 AS queue_jobs_not_all_run;
\endif
SQL
}

# queues_new QUEUE WORKER [CONCURRENCY]: a new empty queue, concurrency CONCURRENCY (default
# BENCH_QUEUE_CONCURRENCY), with the archive emptied first. (A queue created again restarts its job ids at 1: jobs of its
# previous life still in eventic.finished_jobs would collide with the new ones there.)
queues_new() {
    bench_sql -v q="$1" -v worker="$2" -v conc="${3:-$QUEUE_CONCURRENCY}" <<'SQL'
SELECT eventic.drop_queue(queue_name) FROM eventic.queues WHERE queue_name = :'q' \g /dev/null
TRUNCATE eventic.finished_batches;
SELECT eventic.create_queue(:'q', worker => :worker) \g /dev/null
SELECT eventic.alter_queue(:'q', concurrency => :conc) \g /dev/null
SQL
}

# A fresh queue of N no-op jobs, not run yet (worker => false), vacuumed, the archive empty.
queues_fill() {
    local queue=$1 jobs=$2
    queues_new "$queue" false "${3:-}"
    bench_sql -v q="$queue" -v n="$jobs" <<'SQL'
SELECT count(*) FROM eventic.enqueue_batch(:'q', 'noop(int)',
       ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, :n) g)) \g /dev/null
SQL
    bench_sql -c "VACUUM ANALYZE eventic.queue_$queue" -c "VACUUM ANALYZE eventic.finished_batches" -c CHECKPOINT
}

# floor: BENCH_QUEUE_FLOOR_CLIENTS pgbench clients delete the N rows of bench_q, 100 per
# transaction, each client exactly its share of transactions; rows/s = N / pgbench's time.
queues_drain_floor() {
    local round=$1 c=$QUEUE_FLOOR_CLIENTS
    local per_client=$(( (QUEUE_JOBS + 100 * c - 1) / (100 * c) ))
    bench_sql -v n="$QUEUE_JOBS" <<'SQL'
TRUNCATE bench_q RESTART IDENTITY;
INSERT INTO bench_q (payload) SELECT jsonb_build_array(g) FROM generate_series(1, :n) g;
SQL
    bench_sql -c "VACUUM ANALYZE bench_q" -c CHECKPOINT
    log "queues/drain_floor: $QUEUE_JOBS rows, $c clients x $per_client transactions, round $round"
    local out="$LOGS/queues.drain_floor.c$c.r$round.log"
    pgbench_exec "$out" "$c" queues/drain_floor.sql -t "$per_client"
    local left
    left=$(bench_sql -At -c "SELECT count(*) FROM bench_q")
    if [ "$left" != 0 ]; then
        echo "drain_floor left $left rows in bench_q (see $out)" >&2
        exit 1
    fi
    local rate
    rate=$(awk -v n="$QUEUE_JOBS" -v t=$((per_client * c)) '/^tps = /{printf "%.1f", n / (t / $3); exit}' "$out")
    bench_record queues drain_floor "$c" "$round" "$rate" ""
}

# worker: N-1 jobs waiting in a queue without worker; one transaction turns the worker on
# and enqueues the Nth job (its commit wakes the worker); time from just before that commit
# to the end of the last job (its finished_at in eventic.finished_jobs).
queues_drain_worker() {
    local round=$1 concurrency=${2:-$QUEUE_CONCURRENCY} bench=drain_worker
    [ "$concurrency" = "$QUEUE_CONCURRENCY" ] || bench=drain_worker$concurrency
    queues_fill drain $((QUEUE_JOBS - 1)) "$concurrency"
    log "queues/$bench: $QUEUE_JOBS jobs, concurrency $concurrency, round $round"
    bench_sql -v n="$QUEUE_JOBS" <<'SQL'
BEGIN;
SELECT eventic.alter_queue('drain', worker => true) \g /dev/null
SELECT eventic.enqueue('drain', 'noop(int)', jsonb_build_array(:n)) \g /dev/null
INSERT INTO bench_t0 VALUES ('drain', clock_timestamp())
    ON CONFLICT (what) DO UPDATE SET t = excluded.t;
COMMIT;
SQL
    queues_wait_drained drain || exit 1
    queues_check_ran drain "$QUEUE_JOBS"
    local rate
    rate=$(bench_sql -At -c "
        SELECT round(($QUEUE_JOBS / extract(epoch FROM max(f.finished_at) - t.t))::numeric, 1)
          FROM eventic.finished_batches f, bench_t0 t
         WHERE f.queue_name = 'drain' AND t.what = 'drain' GROUP BY t.t")
    bench_sql -c "SELECT eventic.drop_queue('drain')" >/dev/null
    bench_record queues "$bench" 1 "$round" "$rate" ""
}

# the same with concurrency 2: both of the database's workers drain the queue
queues_drain_worker2() {
    queues_drain_worker "$1" 2
}

# in session: the same N jobs drained by one run_pending call (one transaction).
queues_drain_session() {
    local round=$1
    queues_fill drain2 "$QUEUE_JOBS"
    log "queues/drain_session: $QUEUE_JOBS jobs, run_pending in one session, round $round"
    local row ran seconds
    row=$(bench_sql -At -F' ' -c "SELECT ran, seconds FROM bench_timed_run_pending('drain2', $QUEUE_JOBS)")
    read -r ran seconds <<<"$row"
    queues_check_ran drain2 "$QUEUE_JOBS"
    bench_sql -c "SELECT eventic.drop_queue('drain2')" >/dev/null
    bench_record queues drain_session 1 "$round" "$(awk -v n="$ran" -v s="$seconds" 'BEGIN {printf "%.1f", n / s}')" ""
}

# latency: jobs enqueued one by one (pgbench, 1 client, a pause after each), each job noting
# clock_timestamp() at its start next to the clock_timestamp() its enqueue passed it.
queues_latency() {
    local round=$1
    queues_new lat true
    bench_sql -c "TRUNCATE bench_marks" -c CHECKPOINT
    log "queues/latency: $QUEUE_LATENCY_JOBS jobs one at a time, ${QUEUE_LATENCY_SLEEP_MS} ms apart, round $round"
    pgbench_exec "$LOGS/queues.latency.r$round.log" 1 queues/latency.sql \
        -t "$QUEUE_LATENCY_JOBS" -D "sleep_ms=$QUEUE_LATENCY_SLEEP_MS"
    queues_wait_drained lat || exit 1
    local p50 p99
    read -r p50 p99 <<<"$(bench_sql -At -F' ' -v n="$QUEUE_LATENCY_JOBS" <<'SQL'
SELECT count(*) = :n AS ok FROM bench_marks \gset
\if :ok
\else
SELECT 1/0 AS not_every_latency_job_ran;
\endif
SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 3),
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 3)
  FROM (SELECT extract(epoch FROM started - enqueued) * 1000 AS ms FROM bench_marks) x;
SQL
)"
    bench_sql -c "SELECT eventic.drop_queue('lat')" >/dev/null
    bench_record queues latency_p50 1 "$round" "" "$p50"
    bench_record queues latency_p99 1 "$round" "" "$p99"
}

# growth: batches of N jobs through one worker-enabled queue, with autovacuum on (the
# PostgreSQL default; the rest of the run has it off) and the archive kept (retention as
# configured): after each batch, its drain rate and the sizes. A batch that stalls ends the
# series (noted in the report); its stuck worker is killed so that the run can go on.
queues_growth() {
    log "queues/growth: $QUEUE_GROWTH_BATCHES batches of $QUEUE_JOBS jobs, autovacuum on"
    bench_sql <<'SQL'
ALTER SYSTEM SET autovacuum = on;
SELECT pg_reload_conf() \g /dev/null
SQL
    queues_new growth true
    local b rate row
    for b in $(seq 1 "$QUEUE_GROWTH_BATCHES"); do
        log "queues/growth: batch $b of $QUEUE_GROWTH_BATCHES"
        bench_sql -v n="$QUEUE_JOBS" <<'SQL'
BEGIN;
SELECT count(*) FROM eventic.enqueue_batch('growth', 'noop(int)',
       ARRAY(SELECT jsonb_build_array(g) FROM generate_series(1, :n) g)) \g /dev/null
INSERT INTO bench_t0 VALUES ('growth', clock_timestamp())
    ON CONFLICT (what) DO UPDATE SET t = excluded.t;
COMMIT;
SQL
        if ! queues_wait_drained growth; then
            queues_growth_stalled "$b"
            break
        fi
        queues_check_ran growth $((b * QUEUE_JOBS))
        # rate; total size of the queue table (heap + indexes) just drained, and 2 s later (the
        # worker truncates an emptied queue table when it is idle); its dead tuples and deletes
        # as the statistics know them (what autovacuum goes by), autovacuums of it so far; total
        # size of the archive
        row=$(bench_sql -At -F$'\t' -c "
            SELECT round(($QUEUE_JOBS / extract(epoch FROM
                       (SELECT max(finished_at) FROM eventic.finished_batches WHERE queue_name = 'growth')
                       - (SELECT t FROM bench_t0 WHERE what = 'growth')))::numeric, 1),
                   pg_total_relation_size('eventic.queue_growth')")
        sleep 2
        row+=$'\t'$(bench_sql -At -F$'\t' -c "
            SELECT pg_total_relation_size('eventic.queue_growth'),
                   (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'eventic.queue_growth'::regclass),
                   (SELECT n_tup_del FROM pg_stat_user_tables WHERE relid = 'eventic.queue_growth'::regclass),
                   (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = 'eventic.queue_growth'::regclass),
                   pg_total_relation_size('eventic.finished_batches')")
        rate=${row%%$'\t'*}
        printf '%s\t%s\n' "$b" "$row" | run_as_postgres tee -a "$QUEUE_GROWTH" >/dev/null
        [ "$b" = 1 ] && bench_record queues growth_first 1 1 "$rate" ""
        [ "$b" = "$QUEUE_GROWTH_BATCHES" ] && bench_record queues growth_last 1 1 "$rate" ""
    done
    bench_sql <<'SQL'
SELECT eventic.drop_queue('growth') \g /dev/null
ALTER SYSTEM RESET autovacuum;
SELECT pg_reload_conf() \g /dev/null
SQL
}

# queues_growth_stalled BATCH: note the stall (with the plan the claim gets now), turn the
# queue's worker off and kill the stuck worker (it ignores SIGTERM while in a statement); the
# postmaster restarts the cluster, which the run waits for.
queues_growth_stalled() {
    local b=$1 left pid waited=0
    left=$(bench_sql -At -c "SELECT count(*) FROM eventic.queue_growth WHERE dead_at IS NULL")
    bench_sql -c "SELECT eventic.alter_queue('growth', worker => false)" >/dev/null
    # what a generic plan of the worker's claim statement looks like against the table now
    bench_sql -At >"$BENCH_DIR/queues_growth_stall_plan.txt" 2>&1 <<'SQL' || true
SET plan_cache_mode = force_generic_plan;
PREPARE bench_claim(int8, oid) AS
UPDATE eventic.queue_growth q SET lease_until = clock_timestamp() + interval '5 minutes', attempts = q.attempts + 1
 WHERE q.job_id IN (SELECT job_id FROM eventic.queue_growth
                     WHERE dead_at IS NULL AND run_at <= clock_timestamp()
                       AND (lease_until IS NULL OR lease_until < clock_timestamp())
                       AND ($2::oid IS NULL OR enqueued_by = $2)
                     ORDER BY priority DESC, run_at, job_id LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING q.job_id;
EXPLAIN EXECUTE bench_claim(50, NULL);
SELECT 'pg_class: reltuples ' || reltuples || ', relpages ' || relpages
  FROM pg_class WHERE oid = 'eventic.queue_growth'::regclass;
SELECT 'statistics: ' || row_to_json(s)::text FROM (
    SELECT n_live_tup, n_dead_tup, n_tup_ins, n_tup_del, last_autovacuum, last_autoanalyze,
           autovacuum_count, autoanalyze_count
      FROM pg_stat_user_tables WHERE relid = 'eventic.queue_growth'::regclass) s;
SQL
    printf '%s\tstalled\t%s\n' "$b" "$left" | run_as_postgres tee -a "$QUEUE_GROWTH" >/dev/null
    for pid in $(bench_sql -At -c "SELECT pid FROM pg_stat_activity
                                    WHERE backend_type = 'eventic worker' AND state = 'active'
                                      AND datname = current_database()"); do
        log "queues/growth: killing stuck worker $pid (the cluster restarts)"
        as_root kill -KILL "$pid" || true
    done
    sleep 2
    until bench_sql -At -c "SELECT 1" >/dev/null 2>&1; do
        [ $waited -lt 120 ] || { echo "the cluster did not come back after killing the worker" >&2; exit 1; }
        sleep 1
        waited=$((waited + 1))
    done
}

queues_run() {
    local g=queues
    bench_declare $g drain_floor drain_floor rate:rows/s \
        "$QUEUE_JOBS rows of a plain table (bigserial, jsonb) deleted by $QUEUE_FLOOR_CLIENTS pgbench clients, 100 per DELETE ... FOR UPDATE SKIP LOCKED (floor: runs no job)"
    bench_declare $g drain_worker drain_floor rate:jobs/s \
        "$QUEUE_JOBS no-op SQL jobs run by the background worker: commit that turns it on -> last job finished"
    bench_declare $g drain_worker2 drain_floor rate:jobs/s \
        "the same with alter_queue(concurrency => 2): both of the database's workers (workers_per_database = 2) drain it"
    bench_declare $g drain_session drain_floor rate:jobs/s \
        "the same $QUEUE_JOBS jobs run by SELECT eventic.run_pending(queue, $QUEUE_JOBS) in one session (one transaction)"
    bench_declare $g insert_plain insert_plain tps \
        "INSERT INTO plain_q (fn, args, enqueued_by) VALUES (...) RETURNING job_id (table shaped like a queue table)"
    bench_declare $g enqueue insert_plain tps \
        "SELECT eventic.enqueue('enq', 'noop(int)', '[1]') (queue without worker: nothing runs)"
    bench_declare $g latency_p50 - ms \
        "median ms from an enqueue (its clock_timestamp(), just before COMMIT) to its job's start in the worker; $QUEUE_LATENCY_JOBS jobs ${QUEUE_LATENCY_SLEEP_MS} ms apart (poll_interval: $(bench_sql -At -c 'SHOW eventic.poll_interval'))"
    bench_declare $g latency_p99 - ms \
        "99th percentile of the same"
    if [ "$QUEUE_LONG" = 1 ]; then
        bench_declare $g growth_first growth_first rate:jobs/s \
            "growth series (BENCH_LONG=1): drain rate of batch 1 of $QUEUE_GROWTH_BATCHES x $QUEUE_JOBS jobs through the worker"
        bench_declare $g growth_last growth_first rate:jobs/s \
            "drain rate of the last batch: should stay ~1 (sizes per batch below the table)"
    fi

    # drain: floor, worker, session interleaved, order reversed every other round
    local drains=(floor worker worker2 session) round d c b
    for round in $(seq 1 "$BENCH_ROUNDS"); do
        local order=("${drains[@]}")
        [ $((round % 2)) = 0 ] && order=(session worker2 worker floor)
        for d in "${order[@]}"; do
            "queues_drain_$d" "$round"
        done
    done

    # enqueue against the plain INSERT, interleaved (as in records)
    for c in $BENCH_CLIENTS; do
        for round in $(seq 1 "$BENCH_ROUNDS"); do
            local order=(insert_plain enqueue)
            [ $((round % 2)) = 0 ] && order=(enqueue insert_plain)
            for b in "${order[@]}"; do
                bench_pgbench $g "$b" "$c" "$round" "queues/$b.sql"
            done
        done
    done
    bench_sql -c "SELECT eventic.drop_queue('enq')" -c "TRUNCATE plain_q" >/dev/null

    for round in $(seq 1 "$BENCH_ROUNDS"); do
        queues_latency "$round"
    done

    if [ "$QUEUE_LONG" = 1 ]; then
        queues_growth
    fi
}

queues_report() {
    [ -s "$QUEUE_GROWTH" ] || return 0
    echo "queues growth series: $QUEUE_GROWTH_BATCHES batches of $QUEUE_JOBS jobs enqueued in one transaction and"
    echo "drained by the worker, autovacuum on; after each batch: sizes in MB (the queue table just drained and"
    echo "2 s later), the dead tuples and deletes of the queue table as the statistics know them (what autovacuum"
    echo "goes by), its autovacuums so far:"
    printf '%6s %9s %6s %12s %11s %10s %10s %11s %14s\n' batch "jobs/s" "/ b1" "queue table" "2 s later" \
        "dead(stat)" "del(stat)" autovacuums "finished_jobs"
    awk -F'\t' '$2 == "stalled" {printf "%6s   STALLED: %s jobs still waiting, none finished for 60 s\n", $1, $3; next}
                 {if (NR == 1) first = $2
                  printf "%6s %9.0f %6.2f %12.1f %11.1f %10s %10s %11s %14.1f\n", $1, $2, $2 / first,
                         $3 / 1048576, $4 / 1048576, $5, $6, $7, $8 / 1048576}' "$QUEUE_GROWTH"
    if grep -q stalled "$QUEUE_GROWTH"; then
        echo "the worker stalled (killed, the cluster restarted); a generic plan of its claim statement then,"
        echo "and the queue table's statistics ($BENCH_DIR/queues_growth_stall_plan.txt):"
        sed 's/^/    /' "$BENCH_DIR/queues_growth_stall_plan.txt"
    fi
    echo "wanted: jobs/s stays ~flat and the queue table does not grow from batch to batch: 2 s after a batch"
    echo "the worker has truncated the emptied table (a queue never empty relies on autovacuum instead); del(stat)"
    echo "should be batch x $QUEUE_JOBS (if 0, the worker never reports its table statistics, so autovacuum never"
    echo "sees its deletes); finished_jobs is the archive, kept for eventic.archive_retention" \
         "($(bench_sql -At -c 'SHOW eventic.archive_retention')) by design"
}
