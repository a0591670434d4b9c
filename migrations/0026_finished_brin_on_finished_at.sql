-- no-transaction
-- HOT claims 3/10: the BRIN index that prune reads, with its predicate on finished_at (see
-- 0024). PostgreSQL 15 counts a BRIN index's predicate columns against HOT like any other.
create index concurrently if not exists jobs_finished_at_brin on penguin.jobs
    using brin (finished_at) where finished_at is not null;
