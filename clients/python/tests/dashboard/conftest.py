"""Fixtures of the dashboard tests (cluster, dashboards, browser, output_dir): see
dashboard_harness.py, a module of its own name so that these tests import it unambiguously
when pytest also loads other conftest.py files (tests/, clients/python/tests/)."""

from dashboard_harness import browser, dash_cluster, dashboards, output_dir  # noqa: F401 (fixtures)
