#!/usr/bin/env bash
# bench/citus.sh: eventic through a Citus coordinator (2 workers) against a single node, in
# the same run on the same machine. One machine: this measures what distribution costs per
# call (the extra hop and Citus's planning), not what more machines add; the README's
# "Scale-out" section turns the figures into an estimate for N real nodes.
#
#   BENCH_SECONDS (10), BENCH_CLIENTS ("1 4"), BENCH_ROUNDS (2, median reported),
#   BENCH_CITUS_DIR (/tmp/eventic-bench-citus), BENCH_CITUS_PORT (5610: coordinator,
#   +1 +2 workers, +3 the single node). Needs Citus (../shared/citus/install.sh).
source "$(dirname "$0")/../scripts/lib.sh"
BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 4"}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
dir=${BENCH_CITUS_DIR:-/tmp/eventic-bench-citus}
port=${BENCH_CITUS_PORT:-5610}
single=$((port + 3))
scripts=$ROOT/bench/citus

cleanup() { "$ROOT/scripts/citus" stop "$dir"; stop_cluster "$dir-single"; }
trap cleanup EXIT
log "starting a coordinator + 2 workers ($port-$((port + 2))) and a single node ($single)"
"$ROOT/scripts/citus" start "$dir" "$port" bench
start_cluster "$dir-single" "$single"
cluster_psql "$dir-single" "$single" -q -c "CREATE DATABASE bench" -c '\c bench' -c "CREATE EXTENSION eventic"
cluster_psql "$dir-coord" "$port" -q -d bench -c "SELECT eventic.distribute()" >/dev/null

prepare="SELECT eventic.register_class('Story');
SELECT count(eventic.create('Story', jsonb_build_object('title', 'Story ' || n,
    'body', repeat('A paragraph of story text. ', 8), 'points', n % 13), md5('bench' || n)::uuid))
  FROM generate_series(1, 1000) n;"
cluster_psql "$dir-single" "$single" -q -d bench -c "$prepare" >/dev/null
cluster_psql "$dir-coord" "$port" -q -d bench -c "$prepare" >/dev/null

tps() { # tps HOST PORT SCRIPT CLIENTS
    run_as_postgres "$PG_BIN/pgbench" -n -h "$1" -p "$2" -U postgres -f "$scripts/$3" -c "$4" -j "$4" \
        -T "$BENCH_SECONDS" -M prepared bench 2>/dev/null | awk '/^tps/ {printf "%.0f", $3}'
}
median() { tr ' ' '\n' | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

# CPU time (ms) the server processes of cluster DIR used so far: the postmaster with its
# exited children (cutime, cstime: pgbench's backends exit at the end of a run) and the
# children still running (Citus's cached connections)
cpu_ms() {
    local pid tick total
    pid=$(head -1 "$1/data/postmaster.pid")
    tick=$(getconf CLK_TCK)
    total=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat")
    for p in $(pgrep -P "$pid"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo $((total * 1000 / tick))
}

printf '\n%-12s %8s %12s %12s %8s\n' benchmark clients single citus ratio
for script in set_field.sql hydrate.sql; do
    for c in $BENCH_CLIENTS; do
        s=(); d=()
        for _ in $(seq "$BENCH_ROUNDS"); do   # interleaved, so drifting load hits both alike
            s+=("$(tps "$dir-single" "$single" "$script" "$c")")
            d+=("$(tps "$dir-coord" "$port" "$script" "$c")")
        done
        sm=$(echo "${s[*]}" | median); dm=$(echo "${d[*]}" | median)
        printf '%-12s %8s %12s %12s %8s\n' "${script%.sql}" "$c" "$sm" "$dm" \
            "$(awk -v a="$dm" -v b="$sm" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')"
    done
done
echo "(tps, medians of $BENCH_ROUNDS interleaved ${BENCH_SECONDS}s runs; one $(nproc)-core machine running all four servers)"

# where a distributed write spends its CPU: one more run of set_field at the largest client
# count, the server processes' CPU time per transaction on each node
c=${BENCH_CLIENTS##* }
before=(); for n in single coord w1 w2; do before+=("$(cpu_ms "$dir-$n")"); done
out=$(run_as_postgres "$PG_BIN/pgbench" -n -h "$dir-coord" -p "$port" -U postgres -f "$scripts/set_field.sql" \
    -c "$c" -j "$c" -T "$BENCH_SECONDS" -M prepared bench 2>/dev/null)
txns=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}')
after=(); for n in single coord w1 w2; do after+=("$(cpu_ms "$dir-$n")"); done
echo
echo "set_field through the coordinator, $c clients, $txns transactions: server CPU per write"
for i in 1 2 3; do
    printf '  %-6s %6.3f ms\n' "$(echo coord w1 w2 | cut -d' ' -f$i)" \
        "$(awk -v a="${after[$i]}" -v b="${before[$i]}" -v t="$txns" 'BEGIN {print (a - b) / t}')"
done
single_txns=$(run_as_postgres "$PG_BIN/pgbench" -n -h "$dir-single" -p "$single" -U postgres -f "$scripts/set_field.sql" \
    -c "$c" -j "$c" -T "$BENCH_SECONDS" -M prepared bench 2>/dev/null | awk '/number of transactions actually processed/ {print $NF}')
s_after=$(cpu_ms "$dir-single")
printf '  %-6s %6.3f ms (the single node, %s transactions)\n' single \
    "$(awk -v a="$s_after" -v b="${after[0]}" -v t="$single_txns" 'BEGIN {print (a - b) / t}')" "$single_txns"
