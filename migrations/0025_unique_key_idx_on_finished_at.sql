-- no-transaction
-- HOT claims 2/10: the unique-key index with its predicate on finished_at (see 0024). Live
-- jobs are exactly those with finished_at null (check constraint of 0022, validated by
-- 0023), so it holds the same keys as jobs_unique_key_idx; the daemons of the release
-- before already insert with a target-less `on conflict do nothing` (0022).
create unique index concurrently if not exists jobs_unique_live_key_idx on penguin.jobs
    (kind, coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), unique_key)
    where unique_key is not null and finished_at is null;
