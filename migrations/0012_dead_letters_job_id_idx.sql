-- no-transaction
-- Dead letters are looked up by the job they came from (jobs show, replay checks).
create index concurrently if not exists dead_letters_job_id_idx on penguin.dead_letters (job_id);
