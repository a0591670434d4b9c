-- The claim statement lives in a function so that it can plan with sorting disabled.
--
-- A claim must walk jobs_claim_idx in (priority, run_at, id) order and stop after the
-- batch. When the table's statistics are missing or stale (a new database, a burst after an
-- idle spell, rows that changed state since the last ANALYZE) the planner estimates one
-- claimable row, and then a bitmap scan of every due row plus a sort costs it about the
-- same as the ordered index scan: measured at 20k due rows, 91 ms per claim instead of 2 ms,
-- and a 200k-job drain at 3k jobs/s instead of 28k. With enable_sort off the sort is priced
-- out and the ordered index scan is the only plan left.
--
-- `id = any(array(..))` rather than a join with the picked rows: a generic plan guesses
-- `limit p_limit` at a tenth of the table and would hash a sequential scan of it for the
-- join; an array parameter is always fetched through the primary key.
--
-- PL/pgSQL rather than SQL: it keeps the plan between calls (0.02 ms a call against 0.19 ms
-- for an SQL function, which plans its body every time).
create function penguin.claim(
    p_queue text, p_limit bigint, p_worker text, p_lease_secs float8, p_kinds text[]
) returns table (
    id bigint, kind text, payload jsonb, attempt int, max_attempts int, priority smallint,
    run_at timestamptz, tenant_id uuid, created_at timestamptz
)
language plpgsql volatile
set enable_sort = off
set enable_incremental_sort = off
as $$
begin
    return query
    update penguin.jobs j
       set state = 'running', attempt = j.attempt + 1, leased_by = p_worker,
           lease_expires_at = now() + make_interval(secs => p_lease_secs), attempted_at = now(),
           started_at = null
     where j.id = any(array(
               select c.id from penguin.jobs c
                where c.queue = p_queue
                  and c.state in ('available', 'scheduled', 'retryable')
                  and c.run_at <= now()
                  and c.kind = any(p_kinds)
                order by c.priority, c.run_at, c.id
                limit p_limit
                for update skip locked))
    returning j.id, j.kind, j.payload, j.attempt, j.max_attempts, j.priority, j.run_at,
              j.tenant_id, j.created_at;
end
$$;
