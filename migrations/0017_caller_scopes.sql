-- Unique keys are scoped by kind and tenant: a live job holds its key against jobs of the same
-- kind and tenant only, so no caller can hold back another kind's (or another tenant's) job by
-- taking its key first. The daemon's own keys (schedule fires, key rotations and revocations,
-- token refreshes, OAuth exchanges) move under the prefix "penguin:", which the HTTP API and
-- the CLI's enqueue refuse in a caller's key.
drop index penguin.jobs_unique_key_idx;
create unique index jobs_unique_key_idx on penguin.jobs
    (kind, coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), unique_key)
    where unique_key is not null and state in ('available', 'scheduled', 'running', 'retryable');

update penguin.jobs set unique_key = 'penguin:' || unique_key
where unique_key is not null
  and state in ('available', 'scheduled', 'running', 'retryable')
  and (unique_key like 'schedule:%'
       or (kind like 'apikey.%' and unique_key like 'apikey.%')
       or (kind like 'oauth.%' and unique_key like 'oauth.%'));

-- Enqueue one job; works inside the caller's transaction (rollback = no job).
-- NULL queue, priority and max_attempts take the kind's defaults from penguin.kinds.
-- With a live job of the same kind and tenant under the same unique_key, returns that job's id.
create or replace function penguin.enqueue(
    kind         text,
    payload      jsonb,
    queue        text default null,
    run_at       timestamptz default now(),
    priority     int default null,
    max_attempts int default null,
    unique_key   text default null,
    tenant_id    uuid default null
) returns bigint
language plpgsql as $$
#variable_conflict use_column
declare
    defaults penguin.kinds%rowtype;
    new_id   bigint;
    start_at timestamptz := coalesce(enqueue.run_at, now());
begin
    select * into defaults from penguin.kinds k where k.kind = enqueue.kind;
    if not found then
        perform penguin.unknown_kind(enqueue.kind);
    end if;
    if enqueue.payload is null then
        raise exception 'penguin.enqueue: payload must not be null (use ''{}'')' using errcode = '22004';
    end if;
    if enqueue.max_attempts is not null and enqueue.max_attempts < 1 then
        raise exception 'penguin.enqueue: max_attempts must be at least 1, got %', enqueue.max_attempts
            using errcode = '22023';
    end if;
    if enqueue.priority is not null and enqueue.priority not between -32768 and 32767 then
        raise exception 'penguin.enqueue: priority must fit a smallint, got %', enqueue.priority
            using errcode = '22023';
    end if;
    loop
        insert into penguin.jobs as j (queue, kind, payload, state, priority, max_attempts, run_at, unique_key, tenant_id)
        values (
            coalesce(enqueue.queue, defaults.queue),
            enqueue.kind,
            enqueue.payload,
            case when start_at > now() then 'scheduled' else 'available' end,
            coalesce(enqueue.priority, defaults.priority),
            coalesce(enqueue.max_attempts, defaults.max_attempts),
            start_at,
            enqueue.unique_key,
            enqueue.tenant_id
        )
        on conflict (kind, coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), unique_key)
            where unique_key is not null and state in ('available', 'scheduled', 'running', 'retryable')
            do nothing
        returning j.id into new_id;
        if new_id is not null then
            return new_id;
        end if;
        -- a live job of this kind and tenant holds the key: return it (it may finish between the two statements; then insert again)
        select j.id into new_id from penguin.jobs j
        where j.kind = enqueue.kind
          and coalesce(j.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) = coalesce(enqueue.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)
          and j.unique_key = enqueue.unique_key
          and j.state in ('available', 'scheduled', 'running', 'retryable');
        if new_id is not null then
            return new_id;
        end if;
    end loop;
end;
$$;
-- The audit log names the bearer token behind a job enqueued over HTTP: actor "api:NAME".
alter table penguin.audit_log drop constraint audit_log_actor_check;
alter table penguin.audit_log add constraint audit_log_actor_check
    check (actor in ('cli', 'schedule', 'api') or actor ~ '^api:[A-Za-z0-9_.\[\]-]{1,80}$');
