-- no-transaction
-- Prune deletes finished jobs by finished_at; without an index it scans the whole table.
-- Built CONCURRENTLY (outside a transaction) so a big live table keeps taking writes.
create index concurrently if not exists jobs_finished_idx on penguin.jobs (finished_at)
    where state in ('completed', 'cancelled');
