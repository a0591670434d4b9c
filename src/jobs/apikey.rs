//! API key kinds: `apikey.rotate` (one provider and environment), `apikey.revoke` (a
//! retired key, once its overlap is over) and `apikey.rotation_sweep` (run daily by the
//! built-in `apikey-rotation` schedule: rotations due, revocations due), plus the library
//! calls the CLI and the provider jobs use: [`set_key`], [`stage_key`], [`active_key`].
//!
//! Rotation follows the seed: obtain the new key (the provider's key API where it has one,
//! otherwise the key an operator staged), test it with a cheap authenticated call,
//! activate it, keep the old one `retiring` for `[api_keys] overlap` while in-flight work
//! drains, then revoke it. A failed test leaves the old key active, revokes the candidate
//! and raises an alert. Payloads carry provider names and key ids, never a key.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::oauth::{StoreError, fatal};
use super::{Attempt, JobContext, JobError, Kind, KindPolicy, NoPayload};
use crate::config::{ApiKeysConfig, BackoffConfig, BackoffStrategy, Config};
use crate::error_class::ErrorClass;
use crate::providers::keys::{self, KeyHooks};
use crate::queue::credentials::{
    self as creds, Actor, AuditEvent, NewAlert, NewApiKey, api_key_aad,
};
use crate::queue::{self, NewJob};
use crate::secrets::{Keyring, SecretsError};

/// Kind names.
pub const ROTATE: &str = "apikey.rotate";
pub const REVOKE: &str = "apikey.revoke";
pub const SWEEP: &str = "apikey.rotation_sweep";

/// Rotation schedules.
pub const SCHEDULES: [&str; 3] = ["monthly", "quarterly", "never"];

/// The environment used when none is given.
pub const DEFAULT_ENVIRONMENT: &str = "production";

/// A decrypted key, read at call time.
pub struct ActiveKey {
    pub id: Uuid,
    pub version: i32,
    pub key: SecretString,
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
    let Some(sealed) = creds::active_api_key(pool, provider, environment).await? else {
        return Ok(None);
    };
    let key = keyring.decrypt(&sealed.key_enc, &api_key_aad(sealed.id))?;
    Ok(Some(ActiveKey {
        id: sealed.id,
        version: sealed.version,
        key,
    }))
}

fn check_names(provider: &str, environment: &str) -> Result<(), String> {
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
    let version = creds::lock_keys(tx, provider, environment).await?;
    let active = creds::active_api_key(&mut *tx, provider, environment).await?;
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
    creds::insert_api_key(
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
    event: &'a str,
    actor: Actor,
    id: Uuid,
    provider: &'a str,
    ok: bool,
    detail: serde_json::Value,
) -> AuditEvent<'a> {
    AuditEvent {
        event,
        actor,
        subject_type: "api_key",
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
    let old = creds::activate_key(tx, id, overlap).await?;
    creds::audit(
        &mut *tx,
        &key_event(
            "key_activated",
            actor,
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
                unique_key: Some(format!("{REVOKE}:{old}")),
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
    creds::lock_keys(&mut tx, provider, environment).await?;
    creds::drop_pending_key(&mut tx, provider, environment, "replaced by keys set").await?;
    let (id, version) =
        insert_sealed(&mut tx, keyring, provider, environment, key, None, meta).await?;
    creds::audit(
        &mut *tx,
        &key_event(
            "stored",
            actor,
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
    creds::lock_keys(&mut tx, provider, environment).await?;
    creds::drop_pending_key(
        &mut tx,
        provider,
        environment,
        "replaced by a newer staged key",
    )
    .await?;
    let (id, version) =
        insert_sealed(&mut tx, keyring, provider, environment, key, None, meta).await?;
    creds::audit(
        &mut *tx,
        &key_event(
            "key_staged",
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
        unique_key: Some(format!("{ROTATE}:{provider}:{environment}")),
        ..NewJob::new(
            ROTATE,
            serde_json::json!({ "provider": provider, "environment": environment, "actor": actor.as_str() }),
        )
    }
}

// ---------------------------------------------------------------- the kinds

/// What the API key kinds share.
#[derive(Clone)]
pub struct KeyDeps {
    pub pool: PgPool,
    pub keyring: Option<Arc<Keyring>>,
    pub http: reqwest::Client,
    pub config: Arc<ApiKeysConfig>,
}

impl KeyDeps {
    /// From the config and the daemon's shared dependencies.
    pub fn new(config: &Config, deps: &super::Deps) -> Self {
        Self {
            pool: deps.pool.clone(),
            keyring: deps.keyring.clone(),
            http: deps.http.clone(),
            config: Arc::new(config.api_keys.clone()),
        }
    }

    fn keyring(&self) -> Result<Arc<Keyring>, JobError> {
        self.keyring.clone().ok_or_else(|| {
            fatal(
                ErrorClass::Configuration,
                &SecretsError::NoMasterKey.to_string(),
            )
        })
    }
}

/// A database failure is retried; an invalid key or a sealing failure is our
/// configuration's.
impl From<KeyError> for JobError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Queue(q) => q.into(),
            other => fatal(ErrorClass::Configuration, &other.to_string()),
        }
    }
}

fn policy() -> KindPolicy {
    KindPolicy {
        queue: "credentials".into(),
        max_attempts: 8,
        timeout: Duration::from_secs(120),
        backoff: BackoffConfig {
            strategy: BackoffStrategy::Exponential,
            base: Duration::from_secs(10),
            max: Duration::from_secs(1800),
            jitter: true,
        },
        ..KindPolicy::default()
    }
}

/// The `apikey.rotate` kind: rotate the key of one provider in one environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    provider: String,
    #[serde(default = "default_environment")]
    environment: String,
    #[serde(default)]
    actor: Option<String>,
}

fn default_environment() -> String {
    DEFAULT_ENVIRONMENT.into()
}

/// The `apikey.revoke` kind: revoke a retired key once its overlap is over.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    key_id: Uuid,
    #[serde(default)]
    actor: Option<String>,
}

fn actor(a: &Option<String>) -> Result<Actor, String> {
    match a {
        None => Ok(Actor::Schedule),
        Some(a) => {
            Actor::parse(a).ok_or_else(|| format!("actor: {a:?} is not cli, schedule or api"))
        }
    }
}

impl Kind for Rotate {
    const KIND: &'static str = ROTATE;
    type Deps = KeyDeps;

    fn policy() -> KindPolicy {
        policy()
    }

    fn validate(&self) -> Result<(), String> {
        check_names(&self.provider, &self.environment)?;
        actor(&self.actor).map(drop)
    }

    async fn run(self, _ctx: &JobContext, deps: &KeyDeps) -> Attempt {
        let actor = actor(&self.actor).map_err(JobError::bad_payload)?;
        let (provider, env) = (self.provider.as_str(), self.environment.as_str());
        let keyring = deps.keyring()?;
        let hooks = KeyHooks::for_provider(&deps.config, provider)
            .map_err(|e| fatal(ErrorClass::Configuration, &e.to_string()))?;
        let Some(active) = active_key(&deps.pool, &keyring, provider, env)
            .await
            .map_err(|e| match e {
                StoreError::Queue(q) => JobError::from(q),
                StoreError::Secrets(s) => fatal(ErrorClass::Configuration, &s.to_string()),
            })?
        else {
            return Err(fatal(
                ErrorClass::Configuration,
                &format!(
                    "no active {provider} key in {env}: set one with `penguin-jobs keys set {provider}`"
                ),
            ));
        };
        let rotation = Rotation {
            deps,
            keyring: &keyring,
            hooks: &hooks,
            provider,
            env,
            actor,
            active: &active,
        };
        // 1. the candidate, 2. its test, 3. its activation
        let candidate = rotation.candidate().await?;
        rotation.test(&candidate).await?;
        rotation.activate(&candidate).await
    }
}

/// A key waiting to become the active one: id, version, the key.
type Candidate = (Uuid, i32, SecretString);

/// One rotation of one provider's key in one environment.
struct Rotation<'a> {
    deps: &'a KeyDeps,
    keyring: &'a Keyring,
    hooks: &'a KeyHooks,
    provider: &'a str,
    env: &'a str,
    actor: Actor,
    active: &'a ActiveKey,
}

impl Rotation<'_> {
    /// Raises an alert about key `subject`.
    async fn alert(
        &self,
        kind: &'static str,
        subject: Uuid,
        message: String,
    ) -> Result<(), JobError> {
        creds::raise_alert(
            &self.deps.pool,
            &NewAlert {
                kind,
                subject_type: "api_key",
                subject_id: Some(subject.to_string()),
                tenant_id: None,
                provider: Some(self.provider),
                message,
            },
        )
        .await
        .map_err(JobError::from)
    }

    /// A pending key (staged, or created by an earlier attempt), else a new one from the
    /// provider's key API.
    async fn candidate(&self) -> Result<Candidate, JobError> {
        let (provider, env) = (self.provider, self.env);
        if let Some(k) = creds::pending_api_key(&self.deps.pool, provider, env).await? {
            let key = self
                .keyring
                .decrypt(&k.key_enc, &api_key_aad(k.id))
                .map_err(|e| fatal(ErrorClass::Configuration, &e.to_string()))?;
            return Ok((k.id, k.version, key));
        }
        match keys::create_key(&self.deps.http, self.hooks, &self.active.key).await {
            Ok(Some((key, provider_key_id))) => self.stage(key, provider_key_id).await,
            Ok(None) => {
                let message = format!(
                    "the {provider} key in {env} is due for rotation but no new key is staged \
                     and {provider} has no key API: stage one with `penguin-jobs keys stage {provider} --environment {env}`"
                );
                self.alert("apikey_rotation_blocked", self.active.id, message.clone())
                    .await?;
                Err(fatal(ErrorClass::Configuration, &message))
            }
            Err(e) if e.retryable => Err(e.into()),
            Err(e) => {
                let message = format!("creating the next {provider} key failed: {}", e.message);
                self.alert("apikey_rotation_failed", self.active.id, message.clone())
                    .await?;
                Err(fatal(e.class, &message))
            }
        }
    }

    /// Stores a key the provider's key API created as pending, with its audit row.
    async fn stage(
        &self,
        key: SecretString,
        provider_key_id: Option<String>,
    ) -> Result<Candidate, JobError> {
        let mut tx = self.deps.pool.begin().await?;
        let (id, version) = insert_sealed(
            &mut tx,
            self.keyring,
            self.provider,
            self.env,
            &key,
            provider_key_id.as_deref(),
            &KeyMeta::default(),
        )
        .await?;
        creds::audit(
            &mut *tx,
            &key_event(
                "key_staged",
                self.actor,
                id,
                self.provider,
                true,
                serde_json::json!({ "environment": self.env, "version": version, "source": "key_api" }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok((id, version, key))
    }

    /// The candidate's test call. A refusal fails the candidate, raises an alert and ends
    /// the rotation with the current key still active.
    async fn test(&self, (new_id, new_version, new_key): &Candidate) -> Result<(), JobError> {
        let Err(e) = keys::test_key(&self.deps.http, self.hooks, new_key).await else {
            return Ok(());
        };
        if e.retryable {
            return Err(e.into());
        }
        let (provider, env) = (self.provider, self.env);
        let message = format!(
            "the new {provider} key (version {new_version}) failed its test call ({}); the current key stays active",
            e.message
        );
        let mut tx = self.deps.pool.begin().await?;
        creds::fail_key(&mut tx, *new_id, &e.message, true).await?;
        creds::audit(
            &mut *tx,
            &key_event(
                "key_test_failed",
                self.actor,
                *new_id,
                provider,
                false,
                serde_json::json!({ "environment": env, "version": new_version, "error": e.message }),
            ),
        )
        .await?;
        tx.commit().await?;
        self.alert("apikey_test_failed", *new_id, message.clone())
            .await?;
        tracing::warn!(provider, environment = env, key = %new_id, "new API key failed its test; rotation abandoned");
        Err(fatal(e.class, &message))
    }

    /// Activates the candidate; the old key retires for the overlap, then is revoked.
    async fn activate(&self, (new_id, new_version, _): &Candidate) -> Attempt {
        let (provider, env) = (self.provider, self.env);
        let mut tx = self.deps.pool.begin().await?;
        creds::lock_keys(&mut tx, provider, env).await?;
        let old = activate_in(
            &mut tx,
            *new_id,
            *new_version,
            provider,
            env,
            self.deps.config.overlap,
            self.actor,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(provider, environment = env, key = %new_id, version = new_version, "API key rotated");
        Ok(Some(serde_json::json!({
            "activated": new_id,
            "version": new_version,
            "retiring": old,
        })))
    }
}

impl Kind for Revoke {
    const KIND: &'static str = REVOKE;
    type Deps = KeyDeps;

    fn policy() -> KindPolicy {
        policy()
    }

    fn validate(&self) -> Result<(), String> {
        actor(&self.actor).map(drop)
    }

    async fn run(self, _ctx: &JobContext, deps: &KeyDeps) -> Attempt {
        let actor = actor(&self.actor).map_err(JobError::bad_payload)?;
        let Some(key) = creds::get_api_key(&deps.pool, self.key_id).await? else {
            return Err(JobError::bad_payload(format!("no api key {}", self.key_id)));
        };
        if key.status != "retiring" {
            return Ok(Some(
                serde_json::json!({ "key_id": key.id, "skipped": key.status }),
            ));
        }
        if let Some(at) = key.retire_at
            && let Ok(wait) = (at - chrono::Utc::now()).to_std()
            && !wait.is_zero()
        {
            // still in its overlap (a retry brought the job early)
            return Err(JobError::Snooze { delay: wait });
        }
        // at the provider first (retryable), then here
        let at_provider = revoke_at_provider(deps, &key).await?;
        let mut tx = deps.pool.begin().await?;
        if creds::revoke_retiring_key(&mut tx, key.id).await?.is_none() {
            return Ok(Some(
                serde_json::json!({ "key_id": key.id, "skipped": "not retiring" }),
            ));
        }
        creds::audit(
            &mut *tx,
            &key_event(
                "key_revoked",
                actor,
                key.id,
                &key.provider,
                true,
                serde_json::json!({
                    "environment": key.environment,
                    "version": key.version,
                    "revoked_at_provider": at_provider,
                }),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(
            serde_json::json!({ "key_id": key.id, "revoked_at_provider": at_provider }),
        ))
    }
}

/// Revokes `key` through the provider's key API when it has one and knows the key's id;
/// `true` when the provider revoked it.
async fn revoke_at_provider(deps: &KeyDeps, key: &creds::ApiKeyInfo) -> Result<bool, JobError> {
    let hooks = KeyHooks::for_provider(&deps.config, &key.provider)
        .map_err(|e| fatal(ErrorClass::Configuration, &e.to_string()))?;
    if hooks.revoke_url.is_none() || key.provider_key_id.is_none() {
        return Ok(false);
    }
    let keyring = deps.keyring()?;
    let active = active_key(&deps.pool, &keyring, &key.provider, &key.environment)
        .await
        .map_err(|e| fatal(ErrorClass::Configuration, &e.to_string()))?;
    let Some(active) = active else {
        return Ok(false);
    };
    Ok(keys::revoke_key(
        &deps.http,
        &hooks,
        &active.key,
        key.provider_key_id.as_deref(),
    )
    .await?)
}

/// The `apikey.rotation_sweep` kind (no payload).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Sweep(NoPayload);

/// Enqueues the rotations and revocations that are due; returns how many jobs it created.
pub async fn sweep(pool: &PgPool) -> Result<usize, queue::Error> {
    let mut jobs: Vec<NewJob> = creds::due_rotations(pool)
        .await?
        .into_iter()
        .map(|(p, e)| rotation_job(&p, &e, Actor::Schedule))
        .collect();
    jobs.extend(
        creds::due_revocations(pool)
            .await?
            .into_iter()
            .map(|(id, _)| NewJob {
                unique_key: Some(format!("{REVOKE}:{id}")),
                ..NewJob::new(REVOKE, serde_json::json!({ "key_id": id }))
            }),
    );
    if jobs.is_empty() {
        return Ok(0);
    }
    let mut conn = pool.acquire().await?;
    let done = queue::enqueue_many_reporting(&mut conn, &jobs).await?;
    Ok(done.iter().filter(|e| e.created).count())
}

impl Kind for Sweep {
    const KIND: &'static str = SWEEP;
    type Deps = KeyDeps;

    fn policy() -> KindPolicy {
        KindPolicy {
            max_attempts: 3,
            ..policy()
        }
    }

    async fn run(self, _ctx: &JobContext, deps: &KeyDeps) -> Attempt {
        let n = sweep(&deps.pool).await?;
        Ok(Some(serde_json::json!({ "enqueued": n })))
    }
}
