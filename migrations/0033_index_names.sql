-- HOT claims 10/10: the indexes built by 0024-0026 take the names of those they replaced, so
-- that operators' queries and dashboards keep working.
alter index penguin.jobs_claim_live_idx rename to jobs_claim_idx;
alter index penguin.jobs_unique_live_key_idx rename to jobs_unique_key_idx;
alter index penguin.jobs_finished_at_brin rename to jobs_finished_brin;
