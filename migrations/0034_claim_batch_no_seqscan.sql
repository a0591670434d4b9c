-- penguin.claim_batch updates the rows it picked by `id = any(array(...))`. With statistics
-- taken while penguin.jobs was empty (a fresh install analyzed before its first burst),
-- the planner believed the table tiny and read all of it for every claim instead of
-- probing the primary key: measured, a claim of 300 jobs took 40-100 ms after 60k jobs,
-- and a steady 5,000 jobs/s fell seconds behind until autovacuum analyzed the table again.
-- Sequential scans are never the right plan for a claim.
alter function penguin.claim_batch(text, bigint, text, float8, text[], smallint, timestamptz, bigint, bigint)
    set enable_seqscan = off;
