-- HOT claims, first of two releases (docs/storage.md, section 3.7).
--
-- The claim will become a HOT update once no index holds a column it writes: the partial
-- indexes' predicates move from `state` to `finished_at` (null while a job lives, set when
-- it completes or is cancelled). This release makes that move safe for a rolling deploy:
-- it ties finished_at to the final states with a check constraint, and every statement
-- that reads a partial index, or names one in `on conflict`, stops depending on the
-- predicate's spelling: readers add `finished_at is null`, which the constraint makes
-- redundant today and the next release's indexes need; inserts use `on conflict do
-- nothing` without a target. The constraint holds for every row written from here on;
-- migration 0023 validates it for the rows before, without blocking writers.

-- rows written before the invariant held (none are expected)
update penguin.jobs set finished_at = coalesce(attempted_at, created_at)
 where state in ('completed', 'cancelled') and finished_at is null;
update penguin.jobs set finished_at = null
 where state not in ('completed', 'cancelled') and finished_at is not null;

alter table penguin.jobs add constraint jobs_finished_only_when_final
    check ((state in ('completed', 'cancelled')) = (finished_at is not null)) not valid;

create or replace function penguin.claim_after(
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
                  and c.finished_at is null
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

-- A full pass is a claim after the smallest position there is: one body to keep in step.
create or replace function penguin.claim(
    p_queue text, p_limit bigint, p_worker text, p_lease_secs float8, p_kinds text[]
) returns table (
    id bigint, kind text, payload jsonb, attempt int, max_attempts int, priority smallint,
    run_at timestamptz, tenant_id uuid, created_at timestamptz
)
language sql volatile
as $$
    select * from penguin.claim_after(p_queue, p_limit, p_worker, p_lease_secs, p_kinds,
                                      (-32768)::smallint, '-infinity'::timestamptz,
                                      (-9223372036854775808)::bigint)
$$;

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
        -- no conflict target: the unique index's predicate moves to finished_at in a later
        -- release, and a target names it (the primary key is generated, so never hit)
        on conflict do nothing
        returning j.id into new_id;
        if new_id is not null then
            return new_id;
        end if;
        -- a live job of this kind and tenant holds the key: return it (it may finish between the two statements; then insert again)
        select j.id into new_id from penguin.jobs j
        where j.kind = enqueue.kind
          and coalesce(j.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid) = coalesce(enqueue.tenant_id, '00000000-0000-0000-0000-000000000000'::uuid)
          and j.unique_key = enqueue.unique_key
          and j.finished_at is null
          and j.state in ('available', 'scheduled', 'running', 'retryable');
        if new_id is not null then
            return new_id;
        end if;
    end loop;
end;
$$;
