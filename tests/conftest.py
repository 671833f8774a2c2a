"""Integration tests: a real server (throwaway cluster, eventic preloaded) driven by real
clients from outside. The cluster is started once per test session by scripts/cluster."""

import os
import pathlib
import subprocess
import time

import psycopg
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "scripts" / "cluster"


def wait_until(predicate, timeout=30.0, interval=0.05):
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False; it is asked
    once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Cluster:
    def __init__(self, directory: str, port: int):
        self.directory = directory
        self.port = port

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.directory} port={self.port} dbname={dbname} user={user}"

    def connect(self, autocommit: bool = True, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.dsn(**kwargs), autocommit=autocommit)

    def run(self, *args: str) -> None:
        subprocess.run([str(CLUSTER), *args], check=True)


@pytest.fixture(scope="session")
def cluster():
    directory = os.environ.get("EVENTIC_IT_DIR", "/tmp/eventic-it")
    port = int(os.environ.get("EVENTIC_IT_PORT", "5800"))
    c = Cluster(directory, port)
    # pg_stat_statements: test_plans counts the blocks the worker's statements read;
    # prepared transactions: test_record_heads rolls one back
    c.run("start", directory, str(port), "max_connections = 200", "max_prepared_transactions = 4",
          "shared_preload_libraries = 'eventic,pg_stat_statements'", "pg_stat_statements.track = all")
    try:
        yield c
    finally:
        c.run("stop", directory)


@pytest.fixture()
def db(cluster):
    """A fresh database with the extension created, dropped after the test."""
    name = "it_" + os.urandom(4).hex()
    with cluster.connect() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with cluster.connect(dbname=name) as conn:
        conn.execute("CREATE EXTENSION eventic")
    yield name
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
