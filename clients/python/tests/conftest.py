"""Fixtures of the Python package tests: see pyclient_harness.py."""

from pyclient_harness import cluster, db_url, ev, sql  # noqa: F401 (fixtures)
