-- Outbound provider calls: each provider's health (credentials refused, circuit breaker),
-- shared rate-limit buckets, per-minute call metrics, and the sends recorded against the
-- email tables of 0004.
--
-- Written by src/queue/integrations.rs (health, buckets, metrics) and src/queue/email.rs
-- (sends). Every daemon on the database shares these rows: a breaker opened by one daemon
-- stops all of them, and a rate limit holds for their sum.

-- One row per provider that has been called.
create table penguin.integrations (
    -- mailgun | sendgrid | stripe | posthog | ...
    provider          text primary key,
    -- 'error': the provider refused our credentials (401/403); operators fix the key. Back
    -- to 'ok' at the next successful call.
    status            text not null default 'ok' check (status in ('ok', 'error')),
    -- closed: calls flow. open: nobody calls until opened_at + recovery_timeout. half_open:
    -- one daemon is making the probe call (since probe_started_at).
    breaker           text not null default 'closed'
                      check (breaker in ('closed', 'open', 'half_open')),
    -- failures (5xx, timeouts, network) since window_started_at, within the monitoring period
    failures          integer not null default 0,
    window_started_at timestamptz,
    opened_at         timestamptz,
    probe_started_at  timestamptz,
    -- the last failure: class (see DESIGN.md), message (the provider's own words, never a
    -- secret) and when
    last_error_class  text,
    last_error        text,
    last_error_at     timestamptz,
    last_success_at   timestamptz,
    updated_at        timestamptz not null default now()
);

-- Token buckets, one per provider and window (second, minute, hour). A daemon takes a few
-- tokens at a time (one statement) and spends them within a second; `capacity` and
-- `refill_per_second` follow the configuration of the daemon that wrote last.
create table penguin.rate_limits (
    provider          text not null,
    "window"          text not null check ("window" in ('second', 'minute', 'hour')),
    capacity          double precision not null check (capacity >= 1),
    refill_per_second double precision not null check (refill_per_second > 0),
    tokens            double precision not null,
    updated_at        timestamptz not null default clock_timestamp(),
    primary key (provider, "window")
);

-- Outbound calls per minute, provider, kind and status class (2xx, 4xx, 5xx, timeout,
-- network, ...). Flushed by each daemon every few seconds; a crash loses at most those
-- seconds of counts, never a job.
create table penguin.integration_metrics (
    minute       timestamptz not null,
    provider     text not null,
    kind         text not null,
    status_class text not null,
    calls        bigint not null,
    total_ms     double precision not null,
    max_ms       double precision not null,
    primary key (minute, provider, kind, status_class)
);

-- A send job records its accepted message as an email event of type `sent`, keyed by the
-- job: a retried job that finds its row knows the provider already has the message and
-- does not send it twice.
alter table penguin.email_events add column send_job_id bigint;
create unique index email_events_send_job_idx on penguin.email_events (send_job_id, recipient)
    where send_job_id is not null;

-- `sent` ranks below every webhook status: our own record of the send never hides what
-- the provider reported, whichever commits first.
create or replace function penguin.email_status_rank(status text) returns smallint
    language sql immutable parallel safe
as $$
    select case status
        when 'sent' then 0
        when 'processed' then 1
        when 'deferred' then 2
        when 'soft_bounced' then 2
        when 'delivered' then 3
        when 'opened' then 4
        when 'clicked' then 5
        when 'bounced' then 9
        when 'failed' then 9
        when 'dropped' then 9
        when 'complained' then 9
        when 'unsubscribed' then 9
    end::smallint
$$;
