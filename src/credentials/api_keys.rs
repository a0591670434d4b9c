//! Provider API keys, `penguin.api_keys`: versions, staging, rotation and retirement.

use super::*;

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
/// [`api_key_aad`], or use `credentials::keys::active_key`).
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
