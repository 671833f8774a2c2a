"""Fixtures and helpers of the tests of the Python package (imported by conftest.py, and by
the tests under this module name: the dashboard tests have a conftest.py of their own, and
`from conftest import` would find whichever was loaded last).

A real server: a throwaway cluster (eventic preloaded) started once per session by scripts/cluster, as in the repository's tests/conftest.py, and a
fresh database with the extension per test.

EVENTIC_PY_IT_DIR / EVENTIC_PY_IT_PORT choose the cluster's directory and port (default
/tmp/eventic-py-it, 5850); PG_BIN the PostgreSQL build (scripts/lib.sh)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import psycopg
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CLUSTER = ROOT / "scripts" / "cluster"


def _repo_tests_helper(name):
    """A helper of the repository's tests/conftest.py (one copy for both suites)."""
    spec = importlib.util.spec_from_file_location("eventic_repo_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


wait_until = _repo_tests_helper("wait_until")  # poll a predicate until true or timeout (False)


class Cluster:
    def __init__(self, directory: str, port: int):
        self.directory, self.port = directory, port

    def url(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@/{dbname}?host={self.directory}&port={self.port}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(dbname), autocommit=True)


@pytest.fixture(scope="session")
def cluster():
    directory = os.environ.get("EVENTIC_PY_IT_DIR", "/tmp/eventic-py-it")
    port = int(os.environ.get("EVENTIC_PY_IT_PORT", "5850"))
    subprocess.run([str(CLUSTER), "start", directory, str(port), "max_connections = 200",
                    "shared_preload_libraries = 'eventic'"], check=True)
    try:
        yield Cluster(directory, port)
    finally:
        subprocess.run([str(CLUSTER), "stop", directory], check=True)


@pytest.fixture()
def db_url(cluster):
    """A fresh database with the extension; its URL. Dropped after the test."""
    name = "py_" + os.urandom(4).hex()
    with cluster.connect() as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with cluster.connect(name) as conn:
        conn.execute("CREATE EXTENSION eventic")
    yield cluster.url(name)
    with cluster.connect() as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture()
def sql(db_url):
    """An autocommit connection to the test database, for checks in plain SQL."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture()
def ev(db_url):
    """eventic initialised on the test database; workers and pools closed afterwards."""
    from eventic import Eventic
    Eventic.init("test", db_url)
    yield Eventic
    Eventic.close()


def run_script(path, db_url, *args, timeout=120, env=None):
    """Run a Python file the way a user would, with the database URL in $DBOS_DATABASE_URL."""
    full_env = {**os.environ, "DBOS_DATABASE_URL": db_url, **(env or {})}
    return subprocess.run([sys.executable, str(path), *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
