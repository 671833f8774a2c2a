#!/usr/bin/env python3
"""10-step Python durable workflows/s (eventic.workflows), next to plain-SQL floors measured in
the same run on the same throwaway cluster:

  sql_floor          the 10 steps as plain calls of wf_effect (one INSERT each) in one
                     transaction per workflow, from Python on THREADS connections: tx/s
  sql_workflows      10-step SQL workflows (eventic.transaction steps) run by the extension's
                     background worker (2 workers): workflows/s
  python_tx          10-step Python workflows of @Eventic.transaction steps (each the same
                     INSERT, committed with its step record), run by a WorkflowRunner of
                     THREADS threads: workflows/s
  python_step        the same with @Eventic.step steps (may act outside the database: each
                     recorded right after it returns; the step itself a no-op)

Each round starts WORKFLOWS workflows in one transaction (not timed), then times until all of
them succeeded; rounds are interleaved and the median is reported.

  .venv/bin/python bench/python_workflows.py [--workflows 1000] [--rounds 3] [--threads 4]
      [--dir /tmp/eventic-bench-pywf] [--port 5612]   (starts and stops its own cluster)
  .venv/bin/python bench/python_workflows.py --dsn URL  (an existing database with eventic)
"""

import argparse
import os
import pathlib
import sys
import threading
import time

import psycopg

import pybench  # bench/pybench.py (the script's directory is on sys.path)

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "clients" / "python"))

from eventic import Eventic  # noqa: E402
from eventic import workflows  # noqa: E402


@Eventic.transaction(name="bench.effect")
def effect(workflow: str, n: int) -> int:
    with Eventic.connection() as conn:
        conn.execute("SELECT wf_effect(%s, %s)", (workflow, n))
    return n


@Eventic.step(name="bench.noop")
def noop(n: int) -> int:
    return n


@Eventic.workflow(name="bench.ten_tx")
def ten_tx() -> dict:
    wid = workflows.workflow_id()
    return {"total": sum(effect(wid, i) for i in range(1, 11))}


@Eventic.workflow(name="bench.ten_step")
def ten_step() -> dict:
    return {"total": sum(noop(i) for i in range(1, 11))}


PREPARE = """
CREATE TABLE IF NOT EXISTS wf_effects (workflow text, step int);
CREATE OR REPLACE FUNCTION wf_effect(workflow text, step int) RETURNS int LANGUAGE sql
    AS $$ INSERT INTO wf_effects VALUES (workflow, step) RETURNING step $$;
CREATE OR REPLACE FUNCTION wf_ten(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + eventic.transaction('s' || i, 'wf_effect(text,int)',
                                             jsonb_build_array(eventic.workflow_id(), i))::int;
    END LOOP;
    RETURN jsonb_build_object('total', total);
END $$;
CREATE OR REPLACE FUNCTION wf_ten_plain(id text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + wf_effect(id, i);
    END LOOP;
    RETURN total;
END $$;
"""


def wait_done(conn, tag, n, timeout=600):
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM eventic.workflow_runs WHERE workflow_id LIKE %s AND status = 'SUCCESS'",
                       (tag + "%",)).fetchone()[0] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workflows {tag} not done")
        time.sleep(0.01)


def sql_floor(conn, url, n, threads, tag):
    per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def run(k, i):
        with psycopg.connect(url, autocommit=True) as c:
            for j in range(k):
                c.execute("SELECT wf_ten_plain(%s)", (f"{tag}{i}-{j}",))

    start = time.monotonic()
    ts = [threading.Thread(target=run, args=(k, i)) for i, k in enumerate(per)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.monotonic() - start)


def sql_workflows(conn, url, n, threads, tag):
    conn.execute("SELECT eventic.alter_queue('workflows', paused => true)")
    conn.execute("SELECT count(eventic.start_workflow('wf_ten(jsonb)', '{}', %s || g)) FROM generate_series(1, %s) g",
                 (tag, n))
    start = time.monotonic()
    conn.execute("SELECT eventic.alter_queue('workflows', paused => false)")
    wait_done(conn, tag, n)
    return n / (time.monotonic() - start)


def python(body):
    def bench(conn, url, n, threads, tag):
        conn.execute("SELECT count(eventic.start_external_workflow(%s, '{}', %s || g)) FROM generate_series(1, %s) g",
                     (body, tag, n))
        start = time.monotonic()
        runner = workflows.WorkflowRunner(Eventic.pool(), threads=threads, poll=0.05).start()
        try:
            wait_done(conn, tag, n)
        finally:
            runner.stop()
        return n / (time.monotonic() - start)
    return bench


BENCHES = {"sql_floor": sql_floor, "sql_workflows": sql_workflows,
           "python_tx": python("bench.ten_tx"), "python_step": python("bench.ten_step")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--dsn")
    parser.add_argument("--dir", default="/tmp/eventic-bench-pywf")
    parser.add_argument("--port", type=int, default=5612)
    args = parser.parse_args()
    with pybench.database(args.dsn, args.dir, args.port) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS eventic")
        conn.execute(PREPARE)
        conn.execute("SELECT eventic.start_workflow('wf_ten(jsonb)', '{}', 'warm-up')")  # makes the queue
        conn.execute("SELECT eventic.wait_workflow('warm-up')")
        Eventic.init("bench", url, pool_size=args.threads + 4)
        results, load_before, load_after = pybench.rounds(
            conn, BENCHES, args.rounds,
            lambda name, bench, r: bench(conn, url, args.workflows, args.threads, f"{name}-{r}-"))
        Eventic.close()
    print(f"{args.workflows} workflows of 10 steps per round, {args.rounds} rounds, {args.threads} "
          f"threads/connections, {os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after")
    pybench.print_table(results, "sql_floor", "wf/s")


if __name__ == "__main__":
    main()
