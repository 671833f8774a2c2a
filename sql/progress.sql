-- Progress of running jobs and workflow steps (eventic.set_progress): read from shared
-- memory, not from a table, so it shows while the job's transaction is still open.
CREATE VIEW eventic.progress AS
SELECT p.detail ->> 'queue_name' AS queue_name,
       (p.detail ->> 'job_id')::bigint AS job_id,
       p.detail ->> 'workflow_id' AS workflow_id,
       (p.detail ->> 'step_position')::integer AS step_position,
       p.detail ->> 'step_name' AS step_name,
       p.detail -> 'progress' AS progress,
       p.role::regrole AS run_as,
       p.pid,
       timestamptz '2000-01-01 00:00:00+00' + p.started_us * interval '1 microsecond' AS started_at,
       timestamptz '2000-01-01 00:00:00+00' + p.updated_us * interval '1 microsecond' AS updated_at
  -- progress_rows shows each role the jobs that run as a role it has the privileges of
  FROM eventic.progress_rows() p;
COMMENT ON VIEW eventic.progress IS
  'Running jobs and workflow steps that called eventic.set_progress: their last progress and when (a heartbeat)';
GRANT SELECT ON eventic.progress TO PUBLIC;
