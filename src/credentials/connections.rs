//! The OAuth operations: sealing tokens, codes and PKCE verifiers under the master key
//! (bound to their row by the additional data), storing a connection or refreshed tokens
//! with their audit entry in one transaction, and ending a refresh or an exchange that
//! failed, with its audit entries and alert.
//!
//! Must never call a provider (the kinds in `jobs::oauth` do) or log a token or a code.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use uuid::Uuid;

use super::*;
use crate::providers::oauth;
use crate::queue;
use crate::secrets::{Keyring, SecretsError};

/// A connection to store directly (an import, or tests), tokens in plaintext here only.
pub struct NewConnection<'a> {
    pub tenant_id: Uuid,
    pub provider: &'a str,
    pub account_id: &'a str,
    pub account_email: Option<&'a str>,
    pub scopes: &'a [String],
    pub access_token: &'a SecretString,
    pub refresh_token: Option<&'a SecretString>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Encrypts and stores a connection (insert, or replace the tokens of the same tenant,
/// provider and account) with its audit row (`event`), in one transaction; returns its id.
pub async fn store_connection(
    pool: &PgPool,
    keyring: &Keyring,
    c: &NewConnection<'_>,
    event: AuditAction,
    actor: Actor,
) -> Result<Uuid, StoreError> {
    let mut tx = pool.begin().await?;
    let id = lock_connection_of(&mut tx, c.tenant_id, c.provider, c.account_id)
        .await?
        .unwrap_or_else(Uuid::new_v4);
    let access = keyring.encrypt(
        c.access_token.expose_secret(),
        &sealed_aad("oauth_connections", "access_token_enc", id),
    )?;
    let refresh = c
        .refresh_token
        .map(|r| {
            keyring.encrypt(
                r.expose_secret(),
                &sealed_aad("oauth_connections", "refresh_token_enc", id),
            )
        })
        .transpose()?;
    upsert_connection(
        &mut tx,
        &ConnectionWrite {
            id,
            tenant_id: c.tenant_id,
            provider: c.provider,
            account_id: c.account_id,
            account_email: c.account_email,
            scopes: c.scopes,
            access_token_enc: &access,
            refresh_token_enc: refresh.as_deref(),
            expires_at: c.expires_at,
        },
    )
    .await?;
    audit(
        &mut *tx,
        &AuditEvent {
            event,
            actor,
            subject_type: Subject::OauthConnection,
            subject_id: Some(id.to_string()),
            tenant_id: Some(c.tenant_id),
            provider: Some(c.provider),
            ok: true,
            detail: serde_json::json!({
                "account_id": c.account_id,
                "scopes": c.scopes,
                "expires_at": c.expires_at,
                "refresh_token": c.refresh_token.is_some(),
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Why storing or opening a credential failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Queue(#[from] queue::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Queue(e.into())
    }
}

/// The decrypted access token of a live connection, for jobs calling the provider's API.
pub async fn access_token(
    pool: &PgPool,
    keyring: &Keyring,
    connection_id: Uuid,
) -> Result<Option<SecretString>, StoreError> {
    let Some(enc) = access_token_enc(pool, connection_id).await? else {
        return Ok(None);
    };
    Ok(Some(keyring.decrypt(
        &enc,
        &sealed_aad("oauth_connections", "access_token_enc", connection_id),
    )?))
}

/// Marks a connection `revoked` (the tenant disconnected it) with its audit row; the
/// sweep no longer refreshes it. `false`: no such live connection.
pub async fn disconnect(pool: &PgPool, id: Uuid, actor: Actor) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    if !revoke_connection(&mut tx, id).await? {
        return Ok(false);
    }
    let info = get_connection_in(&mut tx, id).await?;
    audit(
        &mut *tx,
        &AuditEvent {
            event: AuditAction::ConnectionRevoked,
            actor,
            subject_type: Subject::OauthConnection,
            subject_id: Some(id.to_string()),
            tenant_id: info.as_ref().map(|c| c.tenant_id),
            provider: info.as_ref().map(|c| c.provider.as_str()),
            ok: true,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// How long an authorization link (its `state`) stays usable.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// Starts a connection: stores a single-use state (hashed; usable for [`STATE_TTL`]) with
/// its encrypted PKCE verifier, and returns the URL to send the user to.
pub async fn begin_authorization(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &oauth::Provider,
    tenant_id: Uuid,
    redirect_uri: &str,
    actor: Actor,
) -> Result<reqwest::Url, StoreError> {
    let parsed = reqwest::Url::parse(redirect_uri).map_err(|e| {
        StoreError::Queue(queue::Error::Invalid(format!(
            "redirect URI {redirect_uri:?} is not a URL: {e}"
        )))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(StoreError::Queue(queue::Error::Invalid(format!(
            "redirect URI {redirect_uri:?} must be http(s)"
        ))));
    }
    let state = crate::secrets::random_token(32);
    let verifier = crate::secrets::random_token(48);
    let id = Uuid::new_v4();
    let verifier_enc = keyring.encrypt(
        verifier.expose_secret(),
        &sealed_aad("oauth_states", "code_verifier_enc", id),
    )?;
    let hash = crate::secrets::sha256_hex(state.expose_secret());
    insert_state(
        pool,
        &NewState {
            id,
            state_hash: &hash,
            provider: &provider.name,
            tenant_id,
            redirect_uri,
            code_verifier_enc: &verifier_enc,
            ttl: STATE_TTL,
        },
        actor,
    )
    .await?;
    Ok(provider.authorization_url(
        redirect_uri,
        &state,
        &crate::secrets::pkce_challenge(&verifier),
    ))
}

/// Seals the authorization code a callback received, bound to its state's row.
pub fn seal_code(keyring: &Keyring, state_id: Uuid, code: &str) -> Result<String, SecretsError> {
    keyring.encrypt(code, &sealed_aad("oauth_states", "code_enc", state_id))
}

/// The PKCE verifier and the code of an authorization, decrypted for the exchange.
pub fn open_authorization(
    keyring: &Keyring,
    state: &StateRow,
    code_enc: &str,
) -> Result<(SecretString, SecretString), SecretsError> {
    let open = |sealed: &str, column: &str| {
        keyring.decrypt(sealed, &sealed_aad("oauth_states", column, state.id))
    };
    Ok((
        open(&state.code_verifier_enc, "code_verifier_enc")?,
        open(code_enc, "code_enc")?,
    ))
}

/// An exchange that cannot succeed: the state forgets its code, with an audit entry.
pub async fn fail_exchange(
    pool: &PgPool,
    state: &StateRow,
    message: &str,
) -> Result<(), queue::Error> {
    let mut tx = pool.begin().await?;
    finish_state(&mut *tx, state.id, None).await?;
    audit(
        &mut *tx,
        &AuditEvent {
            event: AuditAction::ExchangeFailed,
            actor: Actor::Api(None),
            subject_type: Subject::OauthState,
            subject_id: Some(state.id.to_string()),
            tenant_id: Some(state.tenant_id),
            provider: Some(&state.provider),
            ok: false,
            detail: serde_json::json!({ "error": message }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The refresh token of a claimed connection, decrypted; `None`: it has none.
pub fn refresh_token(
    keyring: &Keyring,
    claim: &RefreshClaim,
    connection_id: Uuid,
) -> Result<Option<SecretString>, SecretsError> {
    claim
        .refresh_token_enc
        .as_deref()
        .map(|enc| {
            keyring.decrypt(
                enc,
                &sealed_aad("oauth_connections", "refresh_token_enc", connection_id),
            )
        })
        .transpose()
}

/// What a token endpoint answered to a refresh.
pub struct RefreshedTokens<'a> {
    pub access_token: &'a SecretString,
    pub refresh_token: Option<&'a SecretString>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub scopes: Option<&'a [String]>,
}

/// Seals and stores refreshed tokens with their audit entry, if `claim` still holds the
/// connection; `false`: another refresh took over.
pub async fn store_refreshed(
    pool: &PgPool,
    keyring: &Keyring,
    connection_id: Uuid,
    claim: &RefreshClaim,
    tokens: &RefreshedTokens<'_>,
    actor: Actor,
) -> Result<bool, StoreError> {
    let id = connection_id;
    let seal = |value: &SecretString, column: &str| {
        keyring.encrypt(
            value.expose_secret(),
            &sealed_aad("oauth_connections", column, id),
        )
    };
    let access = seal(tokens.access_token, "access_token_enc")?;
    let rotated = tokens
        .refresh_token
        .map(|r| seal(r, "refresh_token_enc"))
        .transpose()?;
    let mut tx = pool.begin().await?;
    let stored = store_refresh(
        &mut tx,
        id,
        claim.claim,
        &access,
        rotated.as_deref(),
        tokens.expires_at,
        tokens.scopes,
    )
    .await?;
    if !stored {
        return Ok(false);
    }
    audit(
        &mut *tx,
        &AuditEvent {
            event: AuditAction::Refreshed,
            actor,
            subject_type: Subject::OauthConnection,
            subject_id: Some(id.to_string()),
            tenant_id: Some(claim.tenant_id),
            provider: Some(&claim.provider),
            ok: true,
            detail: serde_json::json!({
                "expires_at": tokens.expires_at,
                "refresh_token_rotated": rotated.is_some(),
            }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// A refresh that stored nothing, ended: the connection goes back to `active` (a retry
/// follows) or to `reauth_required` (only the tenant can fix it: an audit entry and an
/// alert say so).
pub async fn end_failed_refresh(
    pool: &PgPool,
    connection_id: Uuid,
    claim: &RefreshClaim,
    actor: Actor,
    message: &str,
    reauthorize: bool,
) -> Result<(), queue::Error> {
    let id = connection_id;
    let entry = |event| AuditEvent {
        event,
        actor: actor.clone(),
        subject_type: Subject::OauthConnection,
        subject_id: Some(id.to_string()),
        tenant_id: Some(claim.tenant_id),
        provider: Some(&claim.provider),
        ok: false,
        detail: serde_json::json!({ "error": message, "will_retry": !reauthorize }),
    };
    let mut tx = pool.begin().await?;
    let status = if reauthorize {
        "reauth_required"
    } else {
        "active"
    };
    end_refresh(&mut tx, id, claim.claim, status, message).await?;
    audit(&mut *tx, &entry(AuditAction::RefreshFailed)).await?;
    if reauthorize {
        audit(&mut *tx, &entry(AuditAction::ReauthRequired)).await?;
        raise_alert(
            &mut *tx,
            &NewAlert {
                kind: AlertKind::OauthReauthRequired,
                subject_type: Subject::OauthConnection,
                subject_id: Some(id.to_string()),
                tenant_id: Some(claim.tenant_id),
                provider: Some(&claim.provider),
                message: format!(
                    "the {} connection {id} must be authorized again: {message}",
                    claim.provider
                ),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The provider refused our OAuth client (`invalid_client`, `unauthorized_client`): one
/// open alert for the operators, however many refreshes and exchanges see it. Nothing
/// happens to the connections: their grants are still good.
pub async fn client_refused(
    pool: &PgPool,
    provider: &str,
    message: &str,
) -> Result<(), queue::Error> {
    let raised = raise_alert_once(
        pool,
        &NewAlert {
            kind: AlertKind::OauthClientRefused,
            subject_type: Subject::OauthClient,
            subject_id: Some(provider.to_string()),
            tenant_id: None,
            provider: Some(provider),
            message: format!(
                "{provider} refuses our OAuth client ({message}): check [oauth.providers.{provider}] client_id and client_secret; connections stay active and their refreshes are retried"
            ),
        },
    )
    .await?;
    if raised {
        tracing::error!(provider, error = %message, "the provider refuses our OAuth client: check its client_id and client_secret");
    }
    Ok(())
}
