-- Baseline for enqueue: the row alone, inserted into a table shaped like a queue table
-- (same columns, defaults, identity and indexes; bench/queues.sh).
INSERT INTO plain_q (fn, args, enqueued_by)
VALUES ('noop(int)', '[1]', current_user::text::regrole) RETURNING job_id;
