"""What the Python benchmarks (python_jobs.py, python_workflows.py) share: the database to
measure, interleaved rounds with the load average around them, and the table of medians."""

import contextlib
import os
import pathlib
import statistics
import subprocess

import psycopg

ROOT = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def database(dsn, directory, port):
    """Yields a URL: `dsn` as given, or a throwaway cluster (scripts/cluster, eventic
    preloaded, CPU-bound settings) in `directory` on `port`, stopped afterwards."""
    if dsn is not None:
        yield dsn
        return
    cluster = str(ROOT / "scripts" / "cluster")
    subprocess.run([cluster, "start", directory, str(port), "synchronous_commit = off",
                    "full_page_writes = off", "shared_buffers = '256MB'"], check=True)
    try:
        yield f"postgresql://postgres@/postgres?host={directory}&port={port}"
    finally:
        subprocess.run([cluster, "stop", directory], check=True)


def rounds(conn: psycopg.Connection, benches: dict, count: int, run) -> tuple[dict, float, float]:
    """Runs every bench once per round, interleaved, after a CHECKPOINT each: `run(name,
    bench, round)` returns its rate. Returns {name: [rates]} and the load average before/after."""
    load_before = os.getloadavg()[0]
    results = {name: [] for name in benches}
    for r in range(count):
        for name, bench in benches.items():
            conn.execute("CHECKPOINT")
            results[name].append(run(name, bench, r))
    return results, load_before, os.getloadavg()[0]


def print_table(results: dict, floor: str, unit: str) -> None:
    """Median, every round, and the ratio to the `floor` bench's median."""
    base = statistics.median(results[floor])
    print(f"{'bench':<15} {unit + ' (median)':>16} {'rounds':>28} {'vs ' + floor:>16}")
    for name, rates in results.items():
        median = statistics.median(rates)
        print(f"{name:<15} {median:>16,.0f} {' '.join(f'{r:,.0f}' for r in rates):>28} {median / base:>16.2f}")
