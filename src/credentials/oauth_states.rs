//! OAuth authorization states, `penguin.oauth_states`: created by `oauth authorize`, used up once by the callback.

use super::*;

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
            event: AuditAction::AuthorizationStarted,
            actor,
            subject_type: Subject::OauthState,
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
