-- Paused queues (admin API `POST /v1/queues/{q}/pause`): no daemon claims from a queue
-- that has a row here. The claim itself checks it (one primary-key probe of a table of a
-- few rows per claim), so a pause holds across every daemon, older ones included
-- (penguin.claim_after wraps penguin.claim_batch). Jobs already claimed finish.
create table penguin.queue_pauses (
    queue     text primary key,
    paused_at timestamptz not null default now(),
    paused_by text not null
);

-- 0027's penguin.claim_batch, returning nothing for a paused queue; the settings of 0027
-- and 0034 restated (create or replace replaces them).
create or replace function penguin.claim_batch(
    p_queue text, p_limit bigint, p_worker text, p_lease_secs float8, p_kinds text[],
    p_priority smallint, p_run_at timestamptz, p_id bigint, p_claim bigint
) returns table (
    id bigint, kind text, payload jsonb, attempt int, max_attempts int, priority smallint,
    run_at timestamptz, tenant_id uuid, created_at timestamptz
)
language plpgsql volatile
set enable_sort = off
set enable_incremental_sort = off
set enable_seqscan = off
as $$
begin
    if exists (select 1 from penguin.queue_pauses qp where qp.queue = p_queue) then
        return;
    end if;
    return query
    with claimed as (
        update penguin.jobs j
           set state = 'running', attempt = j.attempt + 1, leased_by = p_worker,
               lease_expires_at = now() + make_interval(secs => p_lease_secs), attempted_at = now(),
               started_at = null
         where j.id = any(array(
                   select c.id from penguin.jobs c
                    where c.queue = p_queue
                      and c.finished_at is null
                      and c.state in ('available', 'scheduled', 'retryable')
                      and (c.priority, c.run_at, c.id) > (p_priority, p_run_at, p_id)
                      and c.run_at <= now()
                      and c.kind = any(p_kinds)
                    order by c.priority, c.run_at, c.id
                    limit p_limit
                    for update skip locked))
        returning j.id, j.kind, j.payload, j.attempt, j.max_attempts, j.priority, j.run_at,
                  j.tenant_id, j.created_at
    ),
    noted as (
        insert into penguin.claims (worker, claim, ids)
        select p_worker, p_claim, array_agg(claimed.id) from claimed having count(*) > 0
    )
    select * from claimed;
end
$$;
