-- eventic.metrics: one row per metric and label set, for monitoring (Prometheus through
-- postgres_exporter: contrib/postgres_exporter/queries.yaml). Built on eventic.queue_stats and
-- eventic.workflows, so each role counts only the jobs and workflows it may see there.
CREATE VIEW eventic.metrics AS
WITH queues AS MATERIALIZED (SELECT * FROM eventic.queue_stats)
SELECT m.name, pg_catalog.jsonb_build_object('queue', q.queue_name) AS labels, m.value
  FROM queues q,
       LATERAL (VALUES
           ('eventic_queue_ready', q.ready::float8),
           ('eventic_queue_scheduled', q.scheduled::float8),
           ('eventic_queue_running', q.running::float8),
           ('eventic_queue_dead', q.dead::float8),
           ('eventic_queue_done_last_minute', q.done_last_minute::float8),
           ('eventic_queue_oldest_ready_seconds',
            coalesce(extract(epoch FROM q.oldest_ready_age), 0)::float8),
           ('eventic_queue_paused', CASE WHEN q.paused THEN 1 ELSE 0 END::float8),
           ('eventic_queue_concurrency', q.concurrency::float8)) AS m(name, value)
UNION ALL
SELECT 'eventic_workflows_count', pg_catalog.jsonb_build_object('status', s.status),
       count(w.status)::float8
  FROM (VALUES ('ENQUEUED'), ('RUNNING'), ('SLEEPING'), ('WAITING'),
               ('SUCCESS'), ('ERROR'), ('CANCELLED')) AS s(status)
  LEFT JOIN eventic.workflows w ON w.status = s.status
 GROUP BY s.status
UNION ALL
-- from the workers' shared board: pg_stat_activity hides other roles' backend types
SELECT v.name, '{}'::jsonb, v.value
  FROM eventic.worker_liveness() l,
       LATERAL (VALUES ('eventic_workers', l.workers::float8),
                       ('eventic_launcher_up', CASE WHEN l.launcher_up THEN 1 ELSE 0 END::float8)) AS v(name, value);
COMMENT ON VIEW eventic.metrics IS
  'Monitoring metrics (name, labels, value): queue depths and rates, dead jobs, workflows by status, workers running';
GRANT SELECT ON eventic.metrics TO PUBLIC;
