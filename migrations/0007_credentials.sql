-- Credentials: OAuth connections and their single-use authorization states, provider API
-- keys, an append-only audit log of every credential event, and alerts for operators.
-- Every secret column holds a ciphertext of src/secrets.rs ("pj1.<key id>...."): never
-- plaintext, and the key id names the master key that wraps it.

create table penguin.oauth_connections (
    id                 uuid primary key,
    tenant_id          uuid not null,
    provider           text not null,
    -- the provider's id of the account that granted access (userinfo `sub`, `id`, ...)
    account_id         text not null,
    account_email      text,
    scopes             text[] not null default '{}',
    access_token_enc   text not null,
    refresh_token_enc  text,
    expires_at         timestamptz,
    status             text not null default 'active'
                       check (status in ('active', 'refreshing', 'reauth_required', 'revoked')),
    -- set while a refresh holds the connection ('refreshing'); a refresh that died is
    -- taken over once refresh_started_at is old
    refresh_claim      uuid,
    refresh_started_at timestamptz,
    last_error         text,
    last_refreshed_at  timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    unique (tenant_id, provider, account_id)
);

-- the refresh sweep looks for live connections by expiry
create index oauth_connections_expiry_idx on penguin.oauth_connections (expires_at)
    where status in ('active', 'refreshing');

-- One row per `oauth authorize`: the state is stored hashed, used once, within ten minutes.
-- The callback stores the code here (useless without the encrypted PKCE verifier and the
-- client secret) and the exchange job clears it.
create table penguin.oauth_states (
    id                uuid primary key,
    state_hash        text not null unique,
    provider          text not null,
    tenant_id         uuid not null,
    redirect_uri      text not null,
    code_verifier_enc text not null,
    code              text,
    created_at        timestamptz not null default now(),
    expires_at        timestamptz not null,
    used_at           timestamptz,
    connection_id     uuid references penguin.oauth_connections (id) on delete set null
);

create table penguin.api_keys (
    id                uuid primary key,
    provider          text not null,
    environment       text not null default 'production',
    version           int not null check (version > 0),
    key_enc           text not null,
    -- the provider's own id of the key (key APIs), to revoke it there
    provider_key_id   text,
    permissions       text[] not null default '{}',
    status            text not null check (status in ('pending', 'active', 'retiring', 'revoked')),
    rotation_schedule text not null default 'monthly'
                      check (rotation_schedule in ('monthly', 'quarterly', 'never')),
    created_at        timestamptz not null default now(),
    activated_at      timestamptz,
    -- when the active key is due for rotation
    rotate_after      timestamptz,
    -- a retiring key is revoked at this time
    retire_at         timestamptz,
    revoked_at        timestamptz,
    expires_at        timestamptz,
    last_error        text,
    unique (provider, environment, version)
);

-- at most one active and one pending key per provider and environment
create unique index api_keys_one_active_idx on penguin.api_keys (provider, environment)
    where status = 'active';
create unique index api_keys_one_pending_idx on penguin.api_keys (provider, environment)
    where status = 'pending';

-- Every credential event, never a secret. Rows are never changed or removed: the trigger
-- below refuses UPDATE, DELETE and TRUNCATE (a superuser can still drop the trigger, and
-- that is itself visible in the schema).
create table penguin.audit_log (
    id           bigint generated always as identity primary key,
    at           timestamptz not null default clock_timestamp(),
    -- stored, exchanged, exchange_failed, refreshed, refresh_failed, reauth_required,
    -- key_staged, key_activated, key_test_failed, key_revoked, master_key_rotated, ...
    event        text not null check (event ~ '^[a-z_]+$'),
    actor        text not null check (actor in ('cli', 'schedule', 'api')),
    subject_type text not null,
    subject_id   text,
    tenant_id    uuid,
    provider     text,
    outcome      text not null check (outcome in ('ok', 'failed')),
    detail       jsonb not null default '{}'::jsonb
);

create index audit_log_subject_idx on penguin.audit_log (subject_type, subject_id, id);

create function penguin.audit_log_immutable() returns trigger
language plpgsql as $$
begin
    raise exception 'penguin.audit_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;

create trigger audit_log_no_update_or_delete
    before update or delete on penguin.audit_log
    for each row execute function penguin.audit_log_immutable();
create trigger audit_log_no_truncate
    before truncate on penguin.audit_log
    for each statement execute function penguin.audit_log_immutable();

-- Conditions an operator must act on (a revoked grant, a key that failed its test).
create table penguin.alerts (
    id              bigint generated always as identity primary key,
    at              timestamptz not null default now(),
    kind            text not null,
    subject_type    text not null,
    subject_id      text,
    tenant_id       uuid,
    provider        text,
    message         text not null,
    acknowledged_at timestamptz
);

create index alerts_open_idx on penguin.alerts (at) where acknowledged_at is null;
