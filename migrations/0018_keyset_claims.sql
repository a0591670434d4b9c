-- Keyset claims (issue 16, docs/storage.md section 3.1).
--
-- penguin.claim walks jobs_claim_idx from the start of the queue's range. While a long
-- transaction elsewhere holds the xmin horizon, every job claimed since then left its
-- entry at the front of that range, pointing at a version VACUUM may not remove and the
-- index scan may not mark dead: each claim walked all of them again, and a drain slowed
-- with the square of the jobs churned under the snapshot.
--
-- penguin.claim_after starts strictly after the last (priority, run_at, id) its caller
-- claimed: a row comparison on the index's own column order is a range start for the scan,
-- so the entries behind it, dead or alive, are never read. What lands behind the position
-- (a more urgent priority, a retry or a rescue due earlier, a transaction that committed
-- late) is caught by the caller's next full pass through penguin.claim.
--
-- Same body as penguin.claim otherwise (see migration 0015 for why it is PL/pgSQL with
-- sorting disabled).
create function penguin.claim_after(
    p_queue text, p_limit bigint, p_worker text, p_lease_secs float8, p_kinds text[],
    p_priority smallint, p_run_at timestamptz, p_id bigint
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
                  and (c.priority, c.run_at, c.id) > (p_priority, p_run_at, p_id)
                  and c.run_at <= now()
                  and c.kind = any(p_kinds)
                order by c.priority, c.run_at, c.id
                limit p_limit
                for update skip locked))
    returning j.id, j.kind, j.payload, j.attempt, j.max_attempts, j.priority, j.run_at,
              j.tenant_id, j.created_at;
end
$$;
