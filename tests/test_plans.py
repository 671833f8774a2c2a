"""The worker keeps its statement plans for its life, while the tables they read grow. These
tests make the worker plan against small or unanalyzed tables, grow the tables under it, and
count what its statements then read (blocks from pg_stat_statements, preloaded in the test
cluster; rows from the table statistics): a plan that scans or sorts the whole table reads
all of it on every call. Counts, not times: they do not depend on the machine's speed."""

from test_queues import wait_until

NOOP = "CREATE FUNCTION noop(n int) RETURNS void LANGUAGE sql AS 'SELECT'"

TEN_STEPS = """
CREATE FUNCTION touch(n int) RETURNS int LANGUAGE sql AS 'SELECT n';
CREATE FUNCTION ten_steps(input jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE total int := 0;
BEGIN
    FOR i IN 1..10 LOOP
        total := total + eventic.step('step ' || i, 'touch(int)', jsonb_build_array(i))::int;
    END LOOP;
    RETURN jsonb_build_object('total', total);
END $$;
"""


def blocks_read(conn, query_like):
    """(calls, shared blocks hit + read) of this database's statements whose text matches."""
    return conn.execute(
        """SELECT coalesce(sum(calls), 0)::int, coalesce(sum(shared_blks_hit + shared_blks_read), 0)::int
             FROM pg_stat_statements
            WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND query LIKE %s""",
        (query_like,),
    ).fetchone()


def pages(conn, table):
    return conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", (table,)).fetchone()[0]


def run_workflows(conn, prefix, count):
    for i in range(count):
        conn.execute("SELECT eventic.start_workflow('ten_steps(jsonb)', '{}', %s)", (f"{prefix}-{i}",))
        (output,) = conn.execute("SELECT eventic.wait_workflow(%s, '30 seconds')", (f"{prefix}-{i}",)).fetchone()
        assert output == {"total": 55}


def test_the_step_records_of_a_run_are_read_by_index_after_the_table_grew(cluster, db):
    with cluster.connect(dbname=db) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        conn.execute(TEN_STEPS)
        run_workflows(conn, "first", 1)  # makes the queue workflows
        # statistics of a small table, as an early autovacuum or a nightly VACUUM leaves them
        conn.execute("VACUUM ANALYZE eventic.workflow_records")
        # one worker at a time, so the worker that planned against the small table runs on
        conn.execute("SELECT eventic.alter_queue('workflows', concurrency => 1)")
        # the worker's plans are made (and chosen generic after 5 runs) while the table is small
        run_workflows(conn, "small", 20)
        # 100,000 step records of finished workflows, written behind the worker's back
        conn.execute("""
            INSERT INTO eventic.workflow_runs (workflow_id, fn, input, status, queue_name, started_by)
            SELECT 'filler-' || g, 'ten_steps(jsonb)', '{}', 'SUCCESS', 'workflows', 10
              FROM generate_series(1, 10000) g""")
        conn.execute("""
            INSERT INTO eventic.workflow_records (workflow_id, position, name, kind, output)
            SELECT 'filler-' || g, p, 'step ' || p, 'step', to_jsonb(p)
              FROM generate_series(1, 10000) g, generate_series(0, 9) p""")
        table_pages = pages(conn, "eventic.workflow_records")
        assert table_pages > 1000
        conn.execute("SELECT pg_stat_statements_reset()")
        run_workflows(conn, "large", 20)
        calls, blocks = blocks_read(conn, "SELECT name, kind, output, error, attempts FROM eventic.workflow_records%")
        assert calls >= 20
        # an index read is a few blocks per run; one whole-table scan alone reads table_pages
        assert blocks < table_pages, f"{blocks} blocks in {calls} reads of a {table_pages}-page table"


def test_a_queue_filled_in_one_transaction_is_claimed_in_index_order(cluster, db):
    jobs = 50000
    with cluster.connect(dbname=db) as conn:
        conn.execute(NOOP)
        conn.execute("SELECT eventic.create_queue('bulk')")
        conn.execute("SELECT eventic.alter_queue('bulk', paused => true)")
        # a new, never analyzed queue table, filled in one transaction: the planner knows
        # nothing of its size when the worker plans its claims
        conn.execute(
            "SELECT count(eventic.enqueue('bulk', 'noop(int)', jsonb_build_array(g))) FROM generate_series(1, %s) g",
            (jobs,),
        )
        conn.execute("SELECT eventic.alter_queue('bulk', paused => false)")

        def scanned():
            return conn.execute(
                """SELECT n_tup_del, seq_tup_read + (SELECT sum(idx_tup_read) FROM pg_stat_user_indexes i
                                                      WHERE i.relid = t.relid)
                     FROM pg_stat_user_tables t WHERE relid = 'eventic.queue_bulk'::regclass"""
            ).fetchone()

        # the table statistics (which the worker reports about once a second) count every
        # drained job: then they also count every row its claims read
        assert wait_until(lambda: scanned()[0] == jobs, timeout=120)
        rows_read = scanned()[1]
        # in index order a job's entry is read a few times (claimed, then stepped over until
        # it is marked dead): 3.5 rows per job measured; a claim that sorts or bitmap-scans
        # the queue reads all that is left, each time: 104 rows per job measured
        assert rows_read < 20 * jobs, f"the claims read {rows_read} rows to take {jobs} jobs"
