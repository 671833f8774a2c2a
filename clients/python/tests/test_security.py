"""Cross-role: Python jobs run as the worker's role, so a worker refuses jobs that a role it
cannot act as put into its queue (any role may enqueue into any queue)."""

import psycopg
import pytest

from pyclient_harness import wait_until
from eventic import Eventic

DONE: list = []


@Eventic.job()
def privileged(what: str) -> None:
    """A job that does something only the queue's owner should decide to do."""
    DONE.append(what)


@pytest.fixture()
def roles(sql):
    """Two login roles (cluster-wide, so named after the test database), dropped afterwards."""
    suffix = sql.info.dbname[3:]
    alice, mallory = f"alice_{suffix}", f"mallory_{suffix}"
    for role in (alice, mallory):
        sql.execute(f"CREATE ROLE {role} LOGIN")
    yield alice, mallory
    sql.execute(f"DROP OWNED BY {alice}, {mallory} CASCADE")
    sql.execute(f"DROP ROLE {alice}, {mallory}")


def test_a_worker_refuses_jobs_of_roles_it_cannot_act_as(sql, roles, cluster):
    alice, mallory = roles
    DONE.clear()
    alice_url = cluster.url(sql.info.dbname, user=alice)
    Eventic.init("alice", alice_url)
    try:
        q = Eventic.queue("chores")
        q.enqueue(privileged, "by alice")
        # mallory enqueues a registered job with her own arguments into alice's Python queue
        with psycopg.connect(cluster.url(sql.info.dbname, user=mallory), autocommit=True) as m:
            m.execute("""SELECT eventic.enqueue('chores_py', 'pg_catalog.jsonb_typeof(jsonb)',
                         jsonb_build_object('job', %s::text, 'args', '["by mallory"]'::jsonb), max_attempts => 1)""",
                      (privileged.__eventic_job__,))
        Eventic.launch(threads=1, queues=["chores"], workflows=False)
        refused = "SELECT last_error FROM eventic.queue_chores_py WHERE dead_at IS NOT NULL"
        assert wait_until(lambda: sql.execute(refused).fetchone() is not None)
        assert wait_until(lambda: DONE == ["by alice"])
        assert f"enqueued by role {mallory}" in sql.execute(refused).fetchone()[0]
        assert DONE == ["by alice"]
    finally:
        Eventic.close()
