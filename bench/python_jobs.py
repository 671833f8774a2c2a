#!/usr/bin/env python3
"""Python no-op jobs/s through eventic's Python worker, next to two plain-SQL floors measured
in the same run on the same throwaway cluster:

  sql_worker       no-op SQL jobs (`noop()`) drained by the extension's background worker
  sql_consumer     the external consumer API driven from Python with no job code at all:
                   dequeue(queue, 512) + one ack statement per batch, on as many connections as
                   the Python worker has threads (the floor of what a Python worker can reach)
  python_worker    no-op `@Eventic.job()` functions run by eventic.worker (Eventic.launch
                   threads: batch dequeue, run in one transaction, ack in it)

Each round enqueues JOBS jobs while the queue is paused/unworked (enqueue_batch, not timed),
then times the drain; rounds are interleaved and the median is reported.

  .venv/bin/python bench/python_jobs.py [--jobs 20000] [--rounds 3] [--threads 2]
      [--dir /tmp/eventic-bench-py] [--port 5610]   (starts and stops its own cluster)
  .venv/bin/python bench/python_jobs.py --dsn URL    (uses an existing database with eventic)
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
from eventic.worker import Workers  # noqa: E402

MARKER = "pg_catalog.jsonb_typeof(jsonb)"


@Eventic.job("bench:noop")
def noop() -> None:
    pass


def enqueue(conn, queue, fn, args, n):
    for start in range(0, n, 10_000):
        k = min(10_000, n - start)
        conn.execute(f"SELECT count(*) FROM eventic.enqueue_batch(%s, %s::regprocedure, array_fill(%s::jsonb, ARRAY[{k}]))",
                     (queue, fn, args))


def wait_empty(conn, queue, timeout=600):
    deadline = time.monotonic() + timeout
    while conn.execute(f"SELECT EXISTS (SELECT 1 FROM eventic.queue_{queue})").fetchone()[0]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"queue {queue} not drained")
        time.sleep(0.01)


def sql_worker(conn, url, n, threads):
    conn.execute("SELECT eventic.alter_queue('bench_sql', paused => true)")
    enqueue(conn, "bench_sql", "noop()", "[]", n)
    start = time.monotonic()
    conn.execute("SELECT eventic.alter_queue('bench_sql', paused => false)")
    wait_empty(conn, "bench_sql")
    return n / (time.monotonic() - start)


def sql_consumer(conn, url, n, threads):
    enqueue(conn, "bench_ext", MARKER, '{"job": "bench:noop"}', n)

    def consume():
        with psycopg.connect(url, autocommit=True) as c:
            while True:
                ids = [r[0] for r in c.execute("SELECT job_id FROM eventic.dequeue('bench_ext', 512, '30 s')")]
                if not ids:
                    return
                with c.transaction():
                    c.execute("SELECT eventic.ack('bench_ext', j) FROM unnest(%s::bigint[]) j", (ids,))

    start = time.monotonic()
    ts = [threading.Thread(target=consume) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return n / (time.monotonic() - start)


def python_worker(conn, url, n, threads):
    enqueue(conn, "bench_py", MARKER, '{"job": "bench:noop"}', n)
    start = time.monotonic()
    workers = Workers(url, ["bench_py"], threads=threads, poll=0.01, workflows=False).start()
    while workers.done < n:
        time.sleep(0.005)
    rate = n / (time.monotonic() - start)
    workers.stop()
    return rate


BENCHES = {"sql_worker": sql_worker, "sql_consumer": sql_consumer, "python_worker": python_worker}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dsn")
    parser.add_argument("--dir", default="/tmp/eventic-bench-py")
    parser.add_argument("--port", type=int, default=5610)
    args = parser.parse_args()
    with pybench.database(args.dsn, args.dir, args.port) as url, psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS eventic")
        conn.execute("CREATE OR REPLACE FUNCTION noop() RETURNS void LANGUAGE sql AS ''")
        conn.execute("SELECT eventic.create_queue('bench_sql')")
        conn.execute("SELECT eventic.alter_queue('bench_sql', concurrency => %s)", (args.threads,))
        conn.execute("SELECT eventic.create_queue('bench_ext', worker => false)")
        conn.execute("SELECT eventic.create_queue('bench_py', worker => false)")
        results, load_before, load_after = pybench.rounds(
            conn, BENCHES, args.rounds, lambda name, bench, r: bench(conn, url, args.jobs, args.threads))
    print(f"{args.jobs} no-op jobs per round, {args.rounds} rounds, {args.threads} threads/connections/workers, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after")
    pybench.print_table(results, "sql_consumer", "jobs/s")


if __name__ == "__main__":
    main()
