-- no-transaction
-- Replaced by jobs_running_since_idx (0019): one index entry per claim, not two.
drop index concurrently if exists penguin.jobs_running_idx;
