-- no-transaction
-- HOT claims, second of two releases (docs/storage.md, section 3.7), 1/10: the claim index
-- again, with its predicate on finished_at instead of state. A claim writes state, so an
-- index whose predicate names state makes every claim a new version with new entries in
-- every index; finished_at is written only when a job completes or is cancelled. Running
-- jobs stay in this index: keyset claims are past them, full passes filter them on state.
-- Built beside the old index without blocking writers; 0029 drops the old one, 0033 takes
-- its name. One statement per file: CREATE INDEX CONCURRENTLY cannot run in a transaction.
create index concurrently if not exists jobs_claim_live_idx on penguin.jobs
    (queue, priority, run_at, id) where finished_at is null;
