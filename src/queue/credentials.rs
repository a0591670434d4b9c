//! The credential tables: `penguin.oauth_connections`, `penguin.oauth_states`,
//! `penguin.api_keys`, `penguin.audit_log` and `penguin.alerts`.
//!
//! Secret columns (`*_enc`) hold ciphertexts of [`crate::secrets`] and are opaque here:
//! this module stores and compares them, and must never see a plaintext or a key. Every
//! state change of a credential takes a compare-and-set `update` (status, claim id or old
//! ciphertext in its `where`), so two daemons never both act on one credential.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{Error, NewJob, enqueue};

/// Who caused a credential event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Cli,
    Schedule,
    Api,
}

impl Actor {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Schedule => "schedule",
            Actor::Api => "api",
        }
    }

    /// Parses the stored string (job payloads carry it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cli" => Some(Actor::Cli),
            "schedule" => Some(Actor::Schedule),
            "api" => Some(Actor::Api),
            _ => None,
        }
    }
}

/// One audit log row to append. Never put a secret in `detail`.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub event: &'a str,
    pub actor: Actor,
    pub subject_type: &'a str,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<&'a str>,
    pub ok: bool,
    pub detail: serde_json::Value,
}

/// Appends one event to `penguin.audit_log` (on the caller's transaction, so the event
/// exists iff the change it records does).
pub async fn audit<'e>(executor: impl PgExecutor<'e>, e: &AuditEvent<'_>) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.audit_log
             (event, actor, subject_type, subject_id, tenant_id, provider, outcome, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.event)
    .bind(e.actor.as_str())
    .bind(e.subject_type)
    .bind(&e.subject_id)
    .bind(e.tenant_id)
    .bind(e.provider)
    .bind(if e.ok { "ok" } else { "failed" })
    .bind(&e.detail)
    .execute(executor)
    .await?;
    Ok(())
}

/// One audit log row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub actor: String,
    pub subject_type: String,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<String>,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// The newest audit rows first, optionally of one subject id.
pub async fn list_audit(
    pool: &PgPool,
    subject_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, event, actor, subject_type, subject_id, tenant_id, provider, outcome, detail
           from penguin.audit_log
          where $1::text is null or subject_id = $1
          order by id desc limit $2",
    )
    .bind(subject_id)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?)
}

/// An alert for operators.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    pub kind: &'a str,
    pub subject_type: &'a str,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<&'a str>,
    pub message: String,
}

/// Raises an alert (a row in `penguin.alerts`).
pub async fn raise_alert<'e>(executor: impl PgExecutor<'e>, a: &NewAlert<'_>) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.alerts (kind, subject_type, subject_id, tenant_id, provider, message)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.kind)
    .bind(a.subject_type)
    .bind(&a.subject_id)
    .bind(a.tenant_id)
    .bind(a.provider)
    .bind(&a.message)
    .execute(executor)
    .await?;
    Ok(())
}

/// One alert row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AlertRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub subject_type: String,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<String>,
    pub message: String,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// Acknowledges alert `id`; `false` if there is no such open alert.
pub async fn acknowledge_alert(pool: &PgPool, id: i64) -> Result<bool, Error> {
    let done = sqlx::query(
        "update penguin.alerts set acknowledged_at = now() where id = $1 and acknowledged_at is null",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Alerts not acknowledged yet, newest first.
pub async fn open_alerts(pool: &PgPool) -> Result<Vec<AlertRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, kind, subject_type, subject_id, tenant_id, provider, message, acknowledged_at
           from penguin.alerts where acknowledged_at is null order by id desc",
    )
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------- OAuth states

/// A new authorization state (`oauth authorize`).
#[derive(Debug, Clone)]
pub struct NewState<'a> {
    pub id: Uuid,
    pub state_hash: &'a str,
    pub provider: &'a str,
    pub tenant_id: Uuid,
    pub redirect_uri: &'a str,
    pub code_verifier_enc: &'a str,
    pub ttl: Duration,
}

/// Stores a state with its audit row, in one transaction.
pub async fn insert_state(pool: &PgPool, s: &NewState<'_>, actor: Actor) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "insert into penguin.oauth_states
             (id, state_hash, provider, tenant_id, redirect_uri, code_verifier_enc, expires_at)
         values ($1, $2, $3, $4, $5, $6, now() + $7::interval)",
    )
    .bind(s.id)
    .bind(s.state_hash)
    .bind(s.provider)
    .bind(s.tenant_id)
    .bind(s.redirect_uri)
    .bind(s.code_verifier_enc)
    .bind(format!("{} milliseconds", s.ttl.as_millis()))
    .execute(&mut *tx)
    .await?;
    audit(
        &mut *tx,
        &AuditEvent {
            event: "authorization_started",
            actor,
            subject_type: "oauth_state",
            subject_id: Some(s.id.to_string()),
            tenant_id: Some(s.tenant_id),
            provider: Some(s.provider),
            ok: true,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Uses up the state whose hash is `state_hash` for `provider` (unused, unexpired), keeps
/// the code `seal_code(state id)` returns (a ciphertext; `None` when there is no code), and
/// enqueues `job(state id, tenant)` in the same transaction. `Ok(None)`: no such usable
/// state, and nothing was changed or enqueued; an error from `seal_code` changes nothing.
pub async fn consume_state(
    pool: &PgPool,
    provider: &str,
    state_hash: &str,
    seal_code: impl FnOnce(Uuid) -> Result<Option<String>, String>,
    job: impl FnOnce(Uuid, Uuid) -> Option<NewJob>,
) -> Result<Option<Option<i64>>, Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, Uuid)> = sqlx::query_as(
        "update penguin.oauth_states set used_at = now()
          where state_hash = $1 and provider = $2 and used_at is null and expires_at > now()
         returning id, tenant_id",
    )
    .bind(state_hash)
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, tenant)) = row else {
        return Ok(None);
    };
    if let Some(sealed) = seal_code(id).map_err(Error::Invalid)? {
        sqlx::query("update penguin.oauth_states set code_enc = $2 where id = $1")
            .bind(id)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
    }
    let job_id = match job(id, tenant) {
        Some(j) => Some(enqueue(&mut *tx, &j).await?),
        None => None,
    };
    tx.commit().await?;
    Ok(Some(job_id))
}

/// A used state, as the exchange job reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StateRow {
    pub id: Uuid,
    pub provider: String,
    pub tenant_id: Uuid,
    pub redirect_uri: String,
    pub code_verifier_enc: String,
    /// The authorization code, encrypted; cleared once exchanged or failed.
    pub code_enc: Option<String>,
    pub connection_id: Option<Uuid>,
}

/// The state `id`.
pub async fn get_state(pool: &PgPool, id: Uuid) -> Result<Option<StateRow>, Error> {
    Ok(sqlx::query_as(
        "select id, provider, tenant_id, redirect_uri, code_verifier_enc, code_enc, connection_id
           from penguin.oauth_states where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Forgets the code of state `id` (exchanged, or failed for good), noting the connection.
pub async fn finish_state<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    connection_id: Option<Uuid>,
) -> Result<(), Error> {
    sqlx::query(
        "update penguin.oauth_states set code_enc = null, connection_id = coalesce($2, connection_id)
          where id = $1",
    )
    .bind(id)
    .bind(connection_id)
    .execute(executor)
    .await?;
    Ok(())
}

/// Deletes states that expired more than `grace` ago (used or not): returns how many.
pub async fn prune_states(pool: &PgPool, grace: Duration) -> Result<u64, Error> {
    let done =
        sqlx::query("delete from penguin.oauth_states where expires_at < now() - $1::interval")
            .bind(interval(grace))
            .execute(pool)
            .await?;
    Ok(done.rows_affected())
}

// ---------------------------------------------------------------- OAuth connections

/// The id of the connection of `(tenant, provider, account)`, locked for the caller's
/// transaction, if it exists.
pub async fn lock_connection_of(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    provider: &str,
    account_id: &str,
) -> Result<Option<Uuid>, Error> {
    Ok(sqlx::query_scalar(
        "select id from penguin.oauth_connections
          where tenant_id = $1 and provider = $2 and account_id = $3 for update",
    )
    .bind(tenant_id)
    .bind(provider)
    .bind(account_id)
    .fetch_optional(conn)
    .await?)
}

/// A connection to write (new, or re-authorized: the same tenant, provider and account).
#[derive(Debug, Clone)]
pub struct ConnectionWrite<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: &'a str,
    pub account_id: &'a str,
    pub account_email: Option<&'a str>,
    pub scopes: &'a [String],
    pub access_token_enc: &'a str,
    pub refresh_token_enc: Option<&'a str>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts or replaces a connection's tokens; it becomes `active`. A re-authorization
/// without a refresh token keeps the stored one.
pub async fn upsert_connection(
    conn: &mut PgConnection,
    c: &ConnectionWrite<'_>,
) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.oauth_connections
             (id, tenant_id, provider, account_id, account_email, scopes, access_token_enc,
              refresh_token_enc, expires_at, status)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active')
         on conflict (id) do update
            set account_email = coalesce(excluded.account_email, penguin.oauth_connections.account_email),
                scopes = excluded.scopes,
                access_token_enc = excluded.access_token_enc,
                refresh_token_enc = coalesce(excluded.refresh_token_enc,
                                             penguin.oauth_connections.refresh_token_enc),
                expires_at = excluded.expires_at, status = 'active', refresh_claim = null,
                last_error = null, updated_at = now()",
    )
    .bind(c.id)
    .bind(c.tenant_id)
    .bind(c.provider)
    .bind(c.account_id)
    .bind(c.account_email)
    .bind(c.scopes)
    .bind(c.access_token_enc)
    .bind(c.refresh_token_enc)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A connection as operators see it: no token material.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ConnectionInfo {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub account_id: String,
    pub account_email: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub last_error: Option<String>,
    pub last_refreshed_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every connection (of one tenant), newest first.
pub async fn list_connections(
    pool: &PgPool,
    tenant_id: Option<Uuid>,
) -> Result<Vec<ConnectionInfo>, Error> {
    Ok(sqlx::query_as(
        "select id, tenant_id, provider, account_id, account_email, scopes, expires_at, status,
                last_error, last_refreshed_at, created_at, updated_at
           from penguin.oauth_connections
          where $1::uuid is null or tenant_id = $1
          order by created_at desc",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?)
}

/// One connection without token material.
pub async fn get_connection(pool: &PgPool, id: Uuid) -> Result<Option<ConnectionInfo>, Error> {
    get_connection_in(&mut *pool.acquire().await?, id).await
}

/// One connection without token material, on the caller's transaction.
pub async fn get_connection_in(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<ConnectionInfo>, Error> {
    Ok(sqlx::query_as(
        "select id, tenant_id, provider, account_id, account_email, scopes, expires_at, status,
                last_error, last_refreshed_at, created_at, updated_at
           from penguin.oauth_connections where id = $1",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The encrypted access token of an active connection (for jobs calling the provider's API).
pub async fn access_token_enc(pool: &PgPool, id: Uuid) -> Result<Option<String>, Error> {
    Ok(sqlx::query_scalar(
        "select access_token_enc from penguin.oauth_connections
          where id = $1 and status in ('active', 'refreshing')",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Live connections whose access token expires within `ahead` (or whose refresh died
/// more than `stale` ago), with their tenants: what the refresh sweep enqueues.
pub async fn due_connections(
    pool: &PgPool,
    ahead: Duration,
    stale: Duration,
) -> Result<Vec<(Uuid, Uuid)>, Error> {
    Ok(sqlx::query_as(
        "select id, tenant_id from penguin.oauth_connections
          where (status = 'active' and expires_at < now() + $1::interval)
             or (status = 'refreshing' and refresh_started_at < now() - $2::interval)
          order by expires_at",
    )
    .bind(interval(ahead))
    .bind(interval(stale))
    .fetch_all(pool)
    .await?)
}

fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

/// A connection held for one refresh.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshClaim {
    pub claim: Uuid,
    pub tenant_id: Uuid,
    pub provider: String,
    pub refresh_token_enc: Option<String>,
}

/// Takes connection `id` for a refresh if it is due (active and expiring within `ahead`,
/// or `refreshing` by a refresh older than `stale`): compare-and-set, so of two workers at
/// most one gets it. `None`: not due (already refreshed, or not live).
pub async fn claim_refresh(
    pool: &PgPool,
    id: Uuid,
    ahead: Duration,
    stale: Duration,
) -> Result<Option<RefreshClaim>, Error> {
    Ok(sqlx::query_as(
        "update penguin.oauth_connections
            set status = 'refreshing', refresh_claim = gen_random_uuid(),
                refresh_started_at = now(), updated_at = now()
          where id = $1
            and ((status = 'active' and expires_at < now() + $2::interval)
              or (status = 'refreshing' and refresh_started_at < now() - $3::interval))
         returning refresh_claim as claim, tenant_id, provider, refresh_token_enc",
    )
    .bind(id)
    .bind(interval(ahead))
    .bind(interval(stale))
    .fetch_optional(pool)
    .await?)
}

/// Stores a refresh's tokens if `claim` still holds the connection: the new access token
/// and (when the provider rotated it) the new refresh token in one statement; `false` if
/// the claim was lost.
pub async fn store_refresh(
    conn: &mut PgConnection,
    id: Uuid,
    claim: Uuid,
    access_token_enc: &str,
    refresh_token_enc: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
    scopes: Option<&[String]>,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "update penguin.oauth_connections
            set access_token_enc = $3,
                refresh_token_enc = coalesce($4, refresh_token_enc),
                expires_at = $5, scopes = coalesce($6, scopes), status = 'active',
                refresh_claim = null, refresh_started_at = null, last_error = null,
                last_refreshed_at = now(), updated_at = now()
          where id = $1 and refresh_claim = $2 and status = 'refreshing'",
    )
    .bind(id)
    .bind(claim)
    .bind(access_token_enc)
    .bind(refresh_token_enc)
    .bind(expires_at)
    .bind(scopes)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a refresh that did not store tokens: back to `active` (to be retried) or to
/// `reauth_required`, with the error. `false` if the claim was lost.
pub async fn end_refresh(
    conn: &mut PgConnection,
    id: Uuid,
    claim: Uuid,
    status: &str,
    error: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "update penguin.oauth_connections
            set status = $3, last_error = $4, refresh_claim = null, refresh_started_at = null,
                updated_at = now()
          where id = $1 and refresh_claim = $2 and status = 'refreshing'",
    )
    .bind(id)
    .bind(claim)
    .bind(status)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks a connection `revoked` (the tenant disconnected); `false` if it does not exist.
pub async fn revoke_connection(conn: &mut PgConnection, id: Uuid) -> Result<bool, Error> {
    let done = sqlx::query(
        "update penguin.oauth_connections
            set status = 'revoked', refresh_claim = null, updated_at = now()
          where id = $1 and status <> 'revoked'",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

// ---------------------------------------------------------------- API keys

/// An API key as operators see it: no key material.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub provider: String,
    pub environment: String,
    pub version: i32,
    pub provider_key_id: Option<String>,
    pub permissions: Vec<String>,
    pub status: String,
    pub rotation_schedule: String,
    pub created_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub rotate_after: Option<DateTime<Utc>>,
    pub retire_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Keys (of one provider), by provider, environment and newest version first.
pub async fn list_api_keys(
    pool: &PgPool,
    provider: Option<&str>,
) -> Result<Vec<ApiKeyInfo>, Error> {
    Ok(sqlx::query_as(
        "select id, provider, environment, version, provider_key_id, permissions, status,
                rotation_schedule, created_at, activated_at, rotate_after, retire_at, revoked_at,
                expires_at, last_error
           from penguin.api_keys
          where $1::text is null or provider = $1
          order by provider, environment, version desc",
    )
    .bind(provider)
    .fetch_all(pool)
    .await?)
}

/// One key without key material.
pub async fn get_api_key(pool: &PgPool, id: Uuid) -> Result<Option<ApiKeyInfo>, Error> {
    Ok(sqlx::query_as(
        "select id, provider, environment, version, provider_key_id, permissions, status,
                rotation_schedule, created_at, activated_at, rotate_after, retire_at, revoked_at,
                expires_at, last_error
           from penguin.api_keys where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// One key's id, version and ciphertext.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedApiKey {
    pub id: Uuid,
    pub version: i32,
    pub key_enc: String,
    pub provider_key_id: Option<String>,
    pub rotation_schedule: String,
    pub permissions: Vec<String>,
}

/// The active key of `provider` in `environment`, read at call time by provider jobs
/// (decrypt it with [`crate::secrets::Keyring::decrypt`] and
/// [`api_key_aad`], or use `jobs::apikey::active_key`).
pub async fn active_api_key<'e>(
    executor: impl PgExecutor<'e>,
    provider: &str,
    environment: &str,
) -> Result<Option<SealedApiKey>, Error> {
    key_in_status(executor, provider, environment, "active").await
}

/// The staged (pending) key of `provider` in `environment`.
pub async fn pending_api_key<'e>(
    executor: impl PgExecutor<'e>,
    provider: &str,
    environment: &str,
) -> Result<Option<SealedApiKey>, Error> {
    key_in_status(executor, provider, environment, "pending").await
}

async fn key_in_status<'e>(
    executor: impl PgExecutor<'e>,
    provider: &str,
    environment: &str,
    status: &str,
) -> Result<Option<SealedApiKey>, Error> {
    Ok(sqlx::query_as(
        "select id, version, key_enc, provider_key_id, rotation_schedule, permissions
           from penguin.api_keys where provider = $1 and environment = $2 and status = $3",
    )
    .bind(provider)
    .bind(environment)
    .bind(status)
    .fetch_optional(executor)
    .await?)
}

/// The additional authenticated data of a key's ciphertext.
pub fn api_key_aad(id: Uuid) -> String {
    format!("api_keys.key_enc:{id}")
}

/// Serialises every change to the keys of `(provider, environment)` for the caller's
/// transaction, and returns the next free version.
pub async fn lock_keys(
    conn: &mut PgConnection,
    provider: &str,
    environment: &str,
) -> Result<i32, Error> {
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended('penguin.api_keys:' || $1 || ':' || $2, 0))",
    )
    .bind(provider)
    .bind(environment)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_scalar(
        "select coalesce(max(version), 0) + 1 from penguin.api_keys
          where provider = $1 and environment = $2",
    )
    .bind(provider)
    .bind(environment)
    .fetch_one(conn)
    .await?)
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct NewApiKey<'a> {
    pub id: Uuid,
    pub provider: &'a str,
    pub environment: &'a str,
    pub version: i32,
    pub key_enc: &'a str,
    pub provider_key_id: Option<&'a str>,
    pub permissions: &'a [String],
    pub status: &'a str,
    pub rotation_schedule: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Inserts a key (after [`lock_keys`] on the same transaction).
pub async fn insert_api_key(conn: &mut PgConnection, k: &NewApiKey<'_>) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.api_keys
             (id, provider, environment, version, key_enc, provider_key_id, permissions, status,
              rotation_schedule, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(k.id)
    .bind(k.provider)
    .bind(k.environment)
    .bind(k.version)
    .bind(k.key_enc)
    .bind(k.provider_key_id)
    .bind(k.permissions)
    .bind(k.status)
    .bind(k.rotation_schedule)
    .bind(k.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes the pending key of `(provider, environment)`, if any, returning its id.
pub async fn drop_pending_key(
    conn: &mut PgConnection,
    provider: &str,
    environment: &str,
    reason: &str,
) -> Result<Option<Uuid>, Error> {
    Ok(sqlx::query_scalar(
        "update penguin.api_keys set status = 'revoked', revoked_at = now(), last_error = $3
          where provider = $1 and environment = $2 and status = 'pending'
         returning id",
    )
    .bind(provider)
    .bind(environment)
    .bind(reason)
    .fetch_optional(conn)
    .await?)
}

/// Makes key `id` the active one: the previous active key becomes `retiring` until
/// `now + overlap`. Returns the previous key's id. Fails if `id` is not pending.
pub async fn activate_key(
    conn: &mut PgConnection,
    id: Uuid,
    overlap: Duration,
) -> Result<Option<Uuid>, Error> {
    let old: Option<Uuid> = sqlx::query_scalar(
        "update penguin.api_keys o
            set status = 'retiring', retire_at = now() + $2::interval
           from penguin.api_keys n
          where n.id = $1 and o.provider = n.provider and o.environment = n.environment
            and o.status = 'active' and o.id <> n.id
         returning o.id",
    )
    .bind(id)
    .bind(interval(overlap))
    .fetch_optional(&mut *conn)
    .await?;
    let done = sqlx::query(
        "update penguin.api_keys
            set status = 'active', activated_at = now(), last_error = null,
                rotate_after = case rotation_schedule
                                 when 'monthly' then now() + interval '1 month'
                                 when 'quarterly' then now() + interval '3 months'
                               end
          where id = $1 and status = 'pending'",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(Error::Conflict(format!("api key {id} is not pending")));
    }
    Ok(old)
}

/// Records why a key failed (its test call, its creation) and revokes it if `revoke`.
pub async fn fail_key(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    revoke: bool,
) -> Result<(), Error> {
    sqlx::query(
        "update penguin.api_keys
            set last_error = $2,
                status = case when $3 then 'revoked' else status end,
                revoked_at = case when $3 then now() else revoked_at end
          where id = $1 and status <> 'revoked'",
    )
    .bind(id)
    .bind(error)
    .bind(revoke)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes a retiring key whose overlap is over (or any retiring key if `now`): returns
/// its provider, environment and provider key id, or `None` if it was not retiring.
pub async fn revoke_retiring_key(
    conn: &mut PgConnection,
    id: Uuid,
) -> Result<Option<(String, String, Option<String>)>, Error> {
    Ok(sqlx::query_as(
        "update penguin.api_keys set status = 'revoked', revoked_at = now()
          where id = $1 and status = 'retiring'
         returning provider, environment, provider_key_id",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Active keys due for rotation (their schedule's time came, or they expire within a
/// day): `(provider, environment)`.
pub async fn due_rotations(pool: &PgPool) -> Result<Vec<(String, String)>, Error> {
    Ok(sqlx::query_as(
        "select provider, environment from penguin.api_keys
          where status = 'active'
            and ((rotation_schedule <> 'never' and rotate_after <= now())
              or expires_at <= now() + interval '1 day')
          order by provider, environment",
    )
    .fetch_all(pool)
    .await?)
}

/// Retiring keys whose overlap is over, with their retire time.
pub async fn due_revocations(pool: &PgPool) -> Result<Vec<(Uuid, DateTime<Utc>)>, Error> {
    Ok(sqlx::query_as(
        "select id, retire_at from penguin.api_keys
          where status = 'retiring' and retire_at <= now() order by retire_at",
    )
    .fetch_all(pool)
    .await?)
}

// ---------------------------------------------------------------- master key rotation

/// Every secret column: `(table, column)`. Each ciphertext's additional data is
/// `"<table>.<column>:<row id>"` (see [`sealed_aad`]).
pub const SEALED_COLUMNS: [(&str, &str); 5] = [
    ("oauth_connections", "access_token_enc"),
    ("oauth_connections", "refresh_token_enc"),
    ("oauth_states", "code_verifier_enc"),
    ("oauth_states", "code_enc"),
    ("api_keys", "key_enc"),
];

/// The additional authenticated data of the ciphertext in `table.column` of row `id`.
pub fn sealed_aad(table: &str, column: &str, id: Uuid) -> String {
    format!("{table}.{column}:{id}")
}

/// One stored ciphertext.
#[derive(Debug, Clone)]
pub struct Sealed {
    pub table: &'static str,
    pub column: &'static str,
    pub id: Uuid,
    pub value: String,
}

/// Up to `limit` ciphertexts of `table.column` not written under master key `key_id`.
pub async fn sealed_not_under(
    pool: &PgPool,
    table: &'static str,
    column: &'static str,
    key_id: &str,
    limit: i64,
) -> Result<Vec<Sealed>, Error> {
    if !SEALED_COLUMNS.contains(&(table, column)) {
        return Err(Error::Invalid(format!(
            "{table}.{column} is not a secret column"
        )));
    }
    let rows: Vec<(Uuid, String)> = sqlx::query_as(&format!(
        "select id, {column} from penguin.{table}
          where {column} is not null and {column} not like $1 order by id limit $2"
    ))
    .bind(format!("pj1.{key_id}.%"))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, value)| Sealed {
            table,
            column,
            id,
            value,
        })
        .collect())
}

/// Replaces one ciphertext if it is still `old.value` (a refresh may have written a new
/// one meanwhile): `false` if it changed.
pub async fn replace_sealed(pool: &PgPool, old: &Sealed, new_value: &str) -> Result<bool, Error> {
    if !SEALED_COLUMNS.contains(&(old.table, old.column)) {
        return Err(Error::Invalid(format!(
            "{}.{} is not a secret column",
            old.table, old.column
        )));
    }
    let done = sqlx::query(&format!(
        "update penguin.{} set {} = $3 where id = $1 and {} = $2",
        old.table, old.column, old.column
    ))
    .bind(old.id)
    .bind(&old.value)
    .bind(new_value)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many ciphertexts each master key id wraps, over every secret column.
pub async fn sealed_key_ids(pool: &PgPool) -> Result<Vec<(String, i64)>, Error> {
    let parts: Vec<String> = SEALED_COLUMNS
        .iter()
        .map(|(t, c)| {
            format!("select split_part({c}, '.', 2) as k from penguin.{t} where {c} is not null")
        })
        .collect();
    Ok(sqlx::query_as(&format!(
        "select k, count(*) from ({}) s group by k order by k",
        parts.join(" union all ")
    ))
    .fetch_all(pool)
    .await?)
}
