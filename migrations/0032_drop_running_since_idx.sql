-- no-transaction
-- HOT claims: jobs_running_since_idx (attempted_at where state = running) is replaced by penguin.claims (0027-0028; HOT claims 9/10).
drop index concurrently if exists penguin.jobs_running_since_idx;
