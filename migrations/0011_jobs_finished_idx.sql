-- no-transaction
-- Prune deletes finished jobs by finished_at; without an index it scans the whole table.
-- A BRIN index: finished rows are written roughly in finished_at order, and a BRIN entry
-- costs a completion almost nothing, where a btree on finished_at made every completion
-- insert one more index entry (measured: a slower no-op drain). Built CONCURRENTLY
-- (outside a transaction) so a big live table keeps taking writes.
create index concurrently if not exists jobs_finished_brin on penguin.jobs
    using brin (finished_at) where state in ('completed', 'cancelled');
