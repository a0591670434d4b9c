-- no-transaction
-- Rescue finds running jobs through an index on leased_by, a column a heartbeat never
-- changes, so lease extensions stay HOT updates (no index entry per heartbeat). The
-- running set is small (at most the claimed-ahead jobs of live daemons), so the rescuer
-- filters lease_expires_at on the heap.
create index concurrently if not exists jobs_running_idx on penguin.jobs (leased_by)
    where state = 'running';
