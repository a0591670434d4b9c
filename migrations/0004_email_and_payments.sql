-- What processed provider webhooks leave behind: email events, the status of each campaign
-- recipient, suppressed addresses, Stripe payments, invoices and connected accounts, and
-- counters of events that were not processed (unknown types, filtered at the edge).
--
-- Written by the `mailgun.event`, `sendgrid.event` and `stripe.event` jobs (src/queue/email.rs,
-- src/queue/payments.rs), one transaction per event. Every write is idempotent: the same
-- inbound event processed twice changes nothing the second time, and events arriving out of
-- order never let older news overwrite newer.

-- One row per processed email event (Mailgun or SendGrid), append-only.
create table penguin.email_events (
    id                  bigint generated always as identity primary key,
    -- mailgun | sendgrid
    provider            text not null check (provider in ('mailgun', 'sendgrid')),
    -- the provider's own event name (Mailgun `failed`, SendGrid `bounce`, ...)
    event_type          text not null,
    -- what it means for the recipient (see penguin.email_status_rank); null when nothing
    status              text,
    -- our ids, sent as Mailgun user-variables / SendGrid custom args; null when absent
    campaign_id         text,
    recipient_id        text,
    -- the recipient's address, lowercased
    recipient           text not null,
    -- Mailgun Message-Id without angle brackets; SendGrid X-Message-Id (sg_message_id
    -- without its `.filter...` suffix)
    provider_message_id text,
    provider_event_id   text,
    -- when the provider says it happened
    occurred_at         timestamptz not null,
    -- the stored webhook it came from; unique: processing an event twice inserts nothing
    inbound_event_id    bigint unique references penguin.inbound_events (id) on delete set null,
    created_at          timestamptz not null default now()
);

create index email_events_campaign_idx on penguin.email_events (campaign_id, recipient)
    where campaign_id is not null;
create index email_events_message_idx on penguin.email_events (provider_message_id)
    where provider_message_id is not null;

-- Precedence of a recipient's status in a campaign: a status replaces the current one only
-- when its rank is higher, or equal with a later occurred_at. So a late `delivered` never
-- overwrites `bounced`, and an `opened` arriving before its `delivered` stays `opened`.
--   1 processed     accepted by the provider (Mailgun accepted, SendGrid processed)
--   2 deferred      temporary trouble, the provider retries (SendGrid deferred)
--   2 soft_bounced  temporary rejection (Mailgun failed/temporary, SendGrid bounce/blocked):
--                   rank 2, below delivered, because a later step of the campaign to the
--                   same recipient can still be delivered
--   3 delivered
--   4 opened
--   5 clicked
--   9 bounced, failed, dropped, complained, unsubscribed: final for this recipient in this
--     campaign (between these, the later event wins)
create function penguin.email_status_rank(status text) returns smallint
    language sql immutable parallel safe
as $$
    select case status
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

-- The current status of each campaign recipient. Events without a campaign id cannot be
-- keyed here: they are kept in email_events only.
create table penguin.email_status (
    campaign_id         text not null,
    -- lowercased address
    recipient           text not null,
    recipient_id        text,
    status              text not null check (penguin.email_status_rank(status) is not null),
    -- provider, message and time of the event that set the status
    provider            text not null,
    provider_message_id text,
    occurred_at         timestamptz not null,
    email_event_id      bigint not null,
    updated_at          timestamptz not null default now(),
    primary key (campaign_id, recipient)
);

-- Addresses we must not send to again. Never deleted by the daemon; the first reason wins.
create table penguin.suppressions (
    -- lowercased address
    address          text primary key,
    reason           text not null check (reason in ('hard_bounce', 'complaint', 'unsubscribe')),
    provider         text not null,
    inbound_event_id bigint references penguin.inbound_events (id) on delete set null,
    created_at       timestamptz not null default now()
);

-- Stripe payment intents, from payment_intent.succeeded / payment_intent.payment_failed.
-- An event older (smaller `created`) than the one stored never overwrites it; at the same
-- second a success beats a failure.
create table penguin.payments (
    -- pi_...
    id              text primary key,
    status          text not null check (status in ('succeeded', 'failed')),
    -- in the currency's smallest unit
    amount          bigint,
    currency        text,
    customer        text,
    -- the connected account (the event's `account`, else on_behalf_of, else the transfer
    -- destination); null for payments on the platform itself
    account         text,
    -- last_payment_error.message and .code/.decline_code: never card data
    last_error      text,
    last_error_code text,
    last_event_id   text not null,
    event_created   timestamptz not null,
    updated_at      timestamptz not null default now()
);

-- Stripe invoices, from invoice.payment_succeeded / invoice.payment_failed. The subscription
-- status is derived from the event (succeeded -> active, failed -> past_due), not read from
-- Stripe: customer.subscription.* events are not processed here.
create table penguin.invoices (
    -- in_...
    id                  text primary key,
    -- Stripe's invoice status (paid, open, ...)
    status              text,
    paid                boolean not null,
    subscription_id     text,
    subscription_status text check (subscription_status in ('active', 'past_due')),
    amount_due          bigint,
    amount_paid         bigint,
    currency            text,
    customer            text,
    account             text,
    last_event_id       text not null,
    event_created       timestamptz not null,
    updated_at          timestamptz not null default now()
);

create index invoices_subscription_idx on penguin.invoices (subscription_id)
    where subscription_id is not null;

-- Stripe connected accounts, from account.updated (the whole account) and capability.updated
-- (one capability).
create table penguin.connect_accounts (
    -- acct_...
    id                   text primary key,
    -- filled when the account is created for a tenant (never written by the webhook jobs)
    tenant_id            uuid,
    -- null until an account.updated arrived
    charges_enabled      boolean,
    payouts_enabled      boolean,
    details_submitted    boolean,
    -- capability name -> status, as in Stripe's account.capabilities
    capabilities         jsonb not null default '{}'::jsonb,
    -- capability name -> `created` (unix seconds) of the event that set it: each capability
    -- is ordered on its own, so an older event about one never hides a newer one
    capabilities_created jsonb not null default '{}'::jsonb,
    -- the account.updated that set the three flags; null until one arrived
    last_event_id        text,
    event_created        timestamptz,
    updated_at           timestamptz not null default now()
);

create index connect_accounts_tenant_idx on penguin.connect_accounts (tenant_id)
    where tenant_id is not null;

-- Webhook events that were not processed, by why: `unknown_type:<type>` from the jobs, and
-- whatever the edge filters. Counted at least once (a retried job may count twice).
create table penguin.webhook_counters (
    provider   text not null,
    reason     text not null,
    count      bigint not null default 0,
    updated_at timestamptz not null default now(),
    primary key (provider, reason)
);
