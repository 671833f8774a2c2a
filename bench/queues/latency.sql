-- One job per transaction, passed the time of its enqueue (clock_timestamp() just before
-- the COMMIT: the enqueue is the transaction's only statement), then a pause: light load.
SELECT eventic.enqueue('lat', 'mark(timestamptz)', jsonb_build_array(clock_timestamp()));
\sleep :sleep_ms ms
