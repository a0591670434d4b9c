//! The API key operations: sealing a key, storing it with its audit entry in one
//! transaction, activating it (the old key retires and its revocation is scheduled in the
//! same transaction), and reading the active key back, decrypted, at call time.
//!
//! Must never call a provider (the kinds in `jobs::apikey` do) or log a key.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::connections::StoreError;
use super::*;
use crate::queue;
use crate::secrets::{Keyring, SecretsError};

/// The kinds that rotate a key and revoke a retired one (`jobs::apikey` runs them; a
/// rotation schedules the revocation in its own transaction).
pub const ROTATE: &str = "apikey.rotate";
pub const REVOKE: &str = "apikey.revoke";

/// Rotation schedules.
pub const SCHEDULES: [&str; 3] = ["monthly", "quarterly", "never"];

/// The environment used when none is given.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// A decrypted key, read at call time.
pub struct ActiveKey {
    pub id: Uuid,
    pub version: i32,
    pub key: SecretString,
    /// The key's id at the provider, when its key API created it.
    pub provider_key_id: Option<String>,
}

impl std::fmt::Debug for ActiveKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveKey")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The active key of `provider` in `environment`, decrypted: what a provider job calls
/// just before it sends, so a rotation takes effect on the next call.
pub async fn active_key(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
) -> Result<Option<ActiveKey>, StoreError> {
    let sealed = active_api_key(pool, provider, environment).await?;
    Ok(sealed.map(|k| open_key(keyring, k)).transpose()?)
}

/// A stored key, decrypted.
fn open_key(keyring: &Keyring, sealed: SealedApiKey) -> Result<ActiveKey, SecretsError> {
    let key = keyring.decrypt(&sealed.key_enc, &api_key_aad(sealed.id))?;
    Ok(ActiveKey {
        id: sealed.id,
        version: sealed.version,
        key,
        provider_key_id: sealed.provider_key_id,
    })
}

pub fn check_names(provider: &str, environment: &str) -> Result<(), String> {
    for (what, v) in [("provider", provider), ("environment", environment)] {
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!(
                "{what} {v:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.'"
            ));
        }
    }
    Ok(())
}

/// Why storing a key failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Queue(#[from] queue::Error),
}

impl From<sqlx::Error> for KeyError {
    fn from(e: sqlx::Error) -> Self {
        KeyError::Queue(e.into())
    }
}

fn check_key(key: &SecretString) -> Result<(), KeyError> {
    let k = key.expose_secret();
    if k.trim().is_empty() {
        return Err(KeyError::Invalid("the key is empty".into()));
    }
    if k.chars().any(|c| c.is_control()) {
        return Err(KeyError::Invalid(
            "the key contains control characters (one key, on one line)".into(),
        ));
    }
    Ok(())
}

/// What is stored with a key besides the key itself.
#[derive(Debug, Clone, Default)]
pub struct KeyMeta {
    /// `monthly`, `quarterly` or `never`; `None`: the active key's schedule (or monthly).
    pub schedule: Option<String>,
    /// What the key may do at the provider (for operators; the provider enforces it).
    /// Empty: the active key's.
    pub permissions: Vec<String>,
    /// When the provider expires the key; its rotation is due a day before.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl KeyMeta {
    fn check(&self) -> Result<(), KeyError> {
        match &self.schedule {
            Some(s) if !SCHEDULES.contains(&s.as_str()) => Err(KeyError::Invalid(format!(
                "schedule {s:?} is not monthly, quarterly or never"
            ))),
            _ => Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_sealed(
    tx: &mut PgConnection,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
    key: &SecretString,
    provider_key_id: Option<&str>,
    meta: &KeyMeta,
) -> Result<(Uuid, i32), KeyError> {
    let version = lock_keys(tx, provider, environment).await?;
    let active = active_api_key(&mut *tx, provider, environment).await?;
    let schedule = meta
        .schedule
        .clone()
        .or_else(|| active.as_ref().map(|k| k.rotation_schedule.clone()))
        .unwrap_or_else(|| "monthly".into());
    let permissions = if meta.permissions.is_empty() {
        active.map(|k| k.permissions).unwrap_or_default()
    } else {
        meta.permissions.clone()
    };
    let id = Uuid::new_v4();
    let sealed = keyring.encrypt(key.expose_secret(), &api_key_aad(id))?;
    insert_api_key(
        tx,
        &NewApiKey {
            id,
            provider,
            environment,
            version,
            key_enc: &sealed,
            provider_key_id,
            permissions: &permissions,
            status: "pending",
            rotation_schedule: &schedule,
            expires_at: meta.expires_at,
        },
    )
    .await?;
    Ok((id, version))
}

fn key_event<'a>(
    event: AuditAction,
    actor: Actor,
    id: Uuid,
    provider: &'a str,
    ok: bool,
    detail: serde_json::Value,
) -> AuditEvent<'a> {
    AuditEvent {
        event,
        actor,
        subject_type: Subject::ApiKey,
        subject_id: Some(id.to_string()),
        tenant_id: None,
        provider: Some(provider),
        ok,
        detail,
    }
}

/// Activates pending key `id` in `tx` (the active one starts retiring) and schedules the
/// old key's revocation after `overlap`; returns the old key's id.
async fn activate_in(
    tx: &mut PgConnection,
    id: Uuid,
    version: i32,
    provider: &str,
    environment: &str,
    overlap: Duration,
    actor: Actor,
) -> Result<Option<Uuid>, queue::Error> {
    let old = activate_key(tx, id, overlap).await?;
    audit(
        &mut *tx,
        &key_event(
            AuditAction::KeyActivated,
            actor.clone(),
            id,
            provider,
            true,
            serde_json::json!({ "environment": environment, "version": version, "replaces": old }),
        ),
    )
    .await?;
    if let Some(old) = old {
        let at = chrono::Utc::now() + chrono::Duration::from_std(overlap).unwrap_or_default();
        queue::enqueue(
            &mut *tx,
            &NewJob {
                run_at: Some(at),
                unique_key: Some(crate::queue::reserved_key(format!("{REVOKE}:{old}"))),
                ..NewJob::new(
                    REVOKE,
                    serde_json::json!({ "key_id": old, "actor": actor.as_str() }),
                )
            },
        )
        .await?;
    }
    Ok(old)
}

/// `keys set`: stores `key` as the active key of `provider` in `environment` at once
/// (the previous one retires for `overlap`); returns its id and version.
#[allow(clippy::too_many_arguments)]
pub async fn set_key(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
    key: &SecretString,
    meta: &KeyMeta,
    overlap: Duration,
    actor: Actor,
) -> Result<(Uuid, i32), KeyError> {
    check_names(provider, environment).map_err(KeyError::Invalid)?;
    check_key(key)?;
    meta.check()?;
    let mut tx = pool.begin().await?;
    lock_keys(&mut tx, provider, environment).await?;
    drop_pending_key(&mut tx, provider, environment, "replaced by keys set").await?;
    let (id, version) =
        insert_sealed(&mut tx, keyring, provider, environment, key, None, meta).await?;
    audit(
        &mut *tx,
        &key_event(
            AuditAction::Stored,
            actor.clone(),
            id,
            provider,
            true,
            serde_json::json!({ "environment": environment, "version": version, "schedule": meta.schedule }),
        ),
    )
    .await?;
    activate_in(&mut tx, id, version, provider, environment, overlap, actor).await?;
    tx.commit().await?;
    Ok((id, version))
}

/// `keys stage`: stores `key` as the next key of `provider` in `environment` (replacing
/// any key staged before), to be tested and activated by the next rotation.
pub async fn stage_key(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
    key: &SecretString,
    meta: &KeyMeta,
    actor: Actor,
) -> Result<(Uuid, i32), KeyError> {
    check_names(provider, environment).map_err(KeyError::Invalid)?;
    check_key(key)?;
    meta.check()?;
    let mut tx = pool.begin().await?;
    lock_keys(&mut tx, provider, environment).await?;
    drop_pending_key(
        &mut tx,
        provider,
        environment,
        "replaced by a newer staged key",
    )
    .await?;
    let (id, version) =
        insert_sealed(&mut tx, keyring, provider, environment, key, None, meta).await?;
    audit(
        &mut *tx,
        &key_event(
            AuditAction::KeyStaged,
            actor,
            id,
            provider,
            true,
            serde_json::json!({ "environment": environment, "version": version }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((id, version))
}

/// The job that rotates `provider`'s key in `environment` now (unique per pair).
pub fn rotation_job(provider: &str, environment: &str, actor: Actor) -> NewJob {
    NewJob {
        unique_key: Some(crate::queue::reserved_key(format!(
            "{ROTATE}:{provider}:{environment}"
        ))),
        ..NewJob::new(
            ROTATE,
            serde_json::json!({ "provider": provider, "environment": environment, "actor": actor.as_str() }),
        )
    }
}

/// A pending key (staged, or created by an earlier attempt of a rotation), decrypted.
pub async fn pending_key(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
) -> Result<Option<ActiveKey>, StoreError> {
    let sealed = pending_api_key(pool, provider, environment).await?;
    Ok(sealed.map(|k| open_key(keyring, k)).transpose()?)
}

/// Stores a key the provider's key API created as the pending key of `provider` in
/// `environment`, with its audit entry; returns its id and version.
pub async fn stage_created_key(
    pool: &PgPool,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
    key: &SecretString,
    provider_key_id: Option<&str>,
    actor: Actor,
) -> Result<(Uuid, i32), KeyError> {
    let mut tx = pool.begin().await?;
    let (id, version) = insert_sealed(
        &mut tx,
        keyring,
        provider,
        environment,
        key,
        provider_key_id,
        &KeyMeta::default(),
    )
    .await?;
    audit(
        &mut *tx,
        &key_event(
            AuditAction::KeyStaged,
            actor,
            id,
            provider,
            true,
            serde_json::json!({ "environment": environment, "version": version, "source": "key_api" }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok((id, version))
}

/// A candidate key that failed its test call: failed (and to be revoked), with its audit
/// entry.
pub async fn reject_candidate(
    pool: &PgPool,
    candidate: &ActiveKey,
    provider: &str,
    environment: &str,
    error: &str,
    actor: Actor,
) -> Result<(), queue::Error> {
    let mut tx = pool.begin().await?;
    fail_key(&mut tx, candidate.id, error, true).await?;
    audit(
        &mut *tx,
        &key_event(
            AuditAction::KeyTestFailed,
            actor,
            candidate.id,
            provider,
            false,
            serde_json::json!({ "environment": environment, "version": candidate.version, "error": error }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Activates the pending key `id` of `provider` in `environment`: the active one retires
/// for `overlap`, then is revoked. Returns the old key's id.
pub async fn activate(
    pool: &PgPool,
    id: Uuid,
    version: i32,
    provider: &str,
    environment: &str,
    overlap: Duration,
    actor: Actor,
) -> Result<Option<Uuid>, queue::Error> {
    let mut tx = pool.begin().await?;
    lock_keys(&mut tx, provider, environment).await?;
    let old = activate_in(&mut tx, id, version, provider, environment, overlap, actor).await?;
    tx.commit().await?;
    Ok(old)
}

/// Marks retiring key `key` revoked, with its audit entry; `false` when it is no longer
/// retiring (revoked meanwhile).
pub async fn revoke_retired(
    pool: &PgPool,
    key: &ApiKeyInfo,
    revoked_at_provider: bool,
    actor: Actor,
) -> Result<bool, queue::Error> {
    let mut tx = pool.begin().await?;
    if revoke_retiring_key(&mut tx, key.id).await?.is_none() {
        return Ok(false);
    }
    audit(
        &mut *tx,
        &key_event(
            AuditAction::KeyRevoked,
            actor,
            key.id,
            &key.provider,
            true,
            serde_json::json!({
                "environment": key.environment,
                "version": key.version,
                "revoked_at_provider": revoked_at_provider,
            }),
        ),
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}
