//! OAuth connections, `penguin.oauth_connections`: tokens sealed, refreshed under a claim.

use super::*;

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
