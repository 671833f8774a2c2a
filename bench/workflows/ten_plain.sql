-- The floor of the workflows group: the 10 steps of a workflow as plain calls, one transaction.
\set r random(1, 1000000000)
SELECT wf_ten_plain('plain-' || :r);
