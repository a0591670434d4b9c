-- Cron schedules. One row per schedule name; a daemon that fires a schedule locks its row,
-- enqueues the fire's job and moves last_fire_at in one transaction, so any number of
-- daemons enqueue each fire exactly once.
create table penguin.schedules (
    name         text primary key,
    cron         text not null,
    timezone     text not null,
    kind         text not null,
    enabled      boolean not null default true,
    next_fire_at timestamptz,
    last_fire_at timestamptz,
    last_job_id  bigint,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);
