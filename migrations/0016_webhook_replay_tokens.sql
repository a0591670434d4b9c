-- Webhook tokens seen within the replay window (Mailgun signs only its timestamp and token,
-- not event-data, so a captured token must not be accepted twice). Recorded in the
-- transaction that stores the delivery's events, so a delivery whose storing failed (and
-- was answered 503) can be redelivered; shared by every shim on this database. Rows older
-- than a day are pruned by maintenance.prune (the replay window is minutes).
create table penguin.webhook_replay_tokens (
    provider text not null,
    token text not null,
    seen_at timestamptz not null default now(),
    primary key (provider, token)
);

create index webhook_replay_tokens_seen_idx on penguin.webhook_replay_tokens (seen_at);
