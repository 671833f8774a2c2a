-- eventic: enqueue one job on a queue without worker (only the enqueue is measured: the
-- function is looked up, its arguments checked, the row inserted, the worker woken at commit).
SELECT eventic.enqueue('enq', 'noop(int)', '[1]');
