-- Inbound provider webhooks, stored raw at the edge after their signature was verified,
-- in the same transaction as the processing job they get (one row and one job per event;
-- a SendGrid POST carries many events). A redelivered event id is not stored twice.
create table penguin.inbound_events (
    id          bigint generated always as identity primary key,
    -- mailgun | sendgrid | stripe
    provider    text not null,
    -- the provider's event id: Stripe evt_..., SendGrid sg_event_id, Mailgun event-data.id
    event_id    text not null,
    event_type  text,
    -- the headers that matter (signature, timestamp, content type), never credentials of ours
    headers     jsonb not null default '{}'::jsonb,
    -- the event itself (one element of a SendGrid batch)
    payload     jsonb not null,
    -- the request body exactly as received (what the signature covers)
    raw         bytea not null,
    received_at timestamptz not null default now(),
    -- its processing job (mailgun.event, sendgrid.event, stripe.event) carries
    -- {"inbound_event_id": id}; a filtered event gets none
    unique (provider, event_id)
);
