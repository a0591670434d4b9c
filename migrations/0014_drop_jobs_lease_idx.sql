-- no-transaction
-- Replaced by jobs_running_idx (0013): an index on lease_expires_at made every heartbeat a
-- non-HOT update.
drop index concurrently if exists penguin.jobs_lease_idx;
