-- no-transaction
-- Rescue finds running jobs through a partial index on id, a column a heartbeat never
-- changes, so lease extensions can stay HOT updates (no index entry per heartbeat); the
-- running set is small (the jobs live daemons hold), so the rescuer checks
-- lease_expires_at on the heap.
create index concurrently if not exists jobs_running_idx on penguin.jobs (id)
    where state = 'running';
