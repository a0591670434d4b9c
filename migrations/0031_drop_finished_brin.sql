-- no-transaction
-- HOT claims: jobs_finished_brin named state, which every claim writes; replaced by 0024-0026 (HOT claims 6-8/10).
drop index concurrently if exists penguin.jobs_finished_brin;
