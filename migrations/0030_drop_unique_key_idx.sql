-- no-transaction
-- HOT claims: jobs_unique_key_idx named state, which every claim writes; replaced by 0024-0026 (HOT claims 6-8/10).
drop index concurrently if exists penguin.jobs_unique_key_idx;
