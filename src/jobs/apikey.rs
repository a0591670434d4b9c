//! API key kinds: `apikey.rotate` (one provider and environment), `apikey.revoke` (a
//! retired key, once its overlap is over) and `apikey.rotation_sweep` (run daily by the
//! built-in `apikey-rotation` schedule: rotations due, revocations due). Storing, sealing
//! and auditing keys is [`crate::credentials::keys`]' business; these kinds make the
//! provider calls.
//!
//! Rotation follows the seed: obtain the new key (the provider's key API where it has one,
//! otherwise the key an operator staged), test it with a cheap authenticated call,
//! activate it, keep the old one `retiring` for `[api_keys] overlap` while in-flight work
//! drains, then revoke it. A failed test leaves the old key active, revokes the candidate
//! and raises an alert. Payloads carry provider names and key ids, never a key.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::oauth::fatal;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy, NoPayload};
use crate::config::{ApiKeysConfig, BackoffConfig, BackoffStrategy, Config};
use crate::credentials::keys::{
    self, ActiveKey, DEFAULT_ENVIRONMENT, KeyError, REVOKE, ROTATE, active_key, check_names,
    rotation_job,
};
use crate::credentials::{self as creds, Actor, AlertKind, NewAlert, Subject};
use crate::error_class::ErrorClass;
use crate::providers::keys::{self as providers_keys, KeyHooks};
use crate::queue::{self, NewJob};
use crate::secrets::{Keyring, SecretsError};

/// The sweep's kind name.
pub const SWEEP: &str = "apikey.rotation_sweep";

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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    key_id: Uuid,
    #[serde(default)]
    actor: Option<String>,
}

fn actor(a: &Option<String>) -> Result<Actor, String> {
    Actor::from_field(a.as_deref(), Actor::Schedule)
}

impl Kind for Rotate {
    const KIND: &'static str = ROTATE;
    const INTERNAL: bool = true;
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
        let Some(active) = active_key(&deps.pool, &keyring, provider, env).await? else {
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

/// A key waiting to become the active one.
type Candidate = ActiveKey;

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
    async fn alert(&self, kind: AlertKind, subject: Uuid, message: String) -> Result<(), JobError> {
        creds::raise_alert(
            &self.deps.pool,
            &NewAlert {
                kind,
                subject_type: Subject::ApiKey,
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
        if let Some(k) = keys::pending_key(&self.deps.pool, self.keyring, provider, env).await? {
            return Ok(k);
        }
        let replaced = providers_keys::Replaced {
            key: &self.active.key,
            provider_key_id: self.active.provider_key_id.as_deref(),
            version: self.active.version,
        };
        match providers_keys::create_key(&self.deps.http, self.hooks, &replaced).await {
            Ok(Some((key, provider_key_id))) => self.stage(key, provider_key_id).await,
            Ok(None) => {
                let message = format!(
                    "the {provider} key in {env} is due for rotation but no new key is staged \
                     and {provider} has no key API: stage one with `penguin-jobs keys stage {provider} --environment {env}`"
                );
                self.alert(
                    AlertKind::ApikeyRotationBlocked,
                    self.active.id,
                    message.clone(),
                )
                .await?;
                Err(fatal(ErrorClass::Configuration, &message))
            }
            Err(e) if e.retryable => Err(e.into()),
            Err(e) => {
                let message = format!("creating the next {provider} key failed: {}", e.message);
                self.alert(
                    AlertKind::ApikeyRotationFailed,
                    self.active.id,
                    message.clone(),
                )
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
        let (id, version) = keys::stage_created_key(
            &self.deps.pool,
            self.keyring,
            self.provider,
            self.env,
            &key,
            provider_key_id.as_deref(),
            self.actor.clone(),
        )
        .await?;
        Ok(ActiveKey {
            id,
            version,
            key,
            provider_key_id,
        })
    }

    /// The candidate's test call. A refusal fails the candidate, raises an alert and ends
    /// the rotation with the current key still active.
    async fn test(&self, candidate: &Candidate) -> Result<(), JobError> {
        let (new_id, new_version) = (candidate.id, candidate.version);
        let Err(e) = providers_keys::test_key(&self.deps.http, self.hooks, &candidate.key).await
        else {
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
        keys::reject_candidate(
            &self.deps.pool,
            candidate,
            provider,
            env,
            &e.message,
            self.actor.clone(),
        )
        .await?;
        self.alert(AlertKind::ApikeyTestFailed, new_id, message.clone())
            .await?;
        tracing::warn!(provider, environment = env, key = %new_id, "new API key failed its test; rotation abandoned");
        Err(fatal(e.class, &message))
    }

    /// Activates the candidate; the old key retires for the overlap, then is revoked.
    async fn activate(&self, candidate: &Candidate) -> Attempt {
        let (provider, env) = (self.provider, self.env);
        let (new_id, new_version) = (candidate.id, candidate.version);
        let old = keys::activate(
            &self.deps.pool,
            new_id,
            new_version,
            provider,
            env,
            self.deps.config.overlap,
            self.actor.clone(),
        )
        .await?;
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
    const INTERNAL: bool = true;
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
        if !keys::revoke_retired(&deps.pool, &key, at_provider, actor).await? {
            return Ok(Some(
                serde_json::json!({ "key_id": key.id, "skipped": "not retiring" }),
            ));
        }
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
    Ok(providers_keys::revoke_key(
        &deps.http,
        &hooks,
        &active.key,
        key.provider_key_id.as_deref(),
    )
    .await?)
}

/// The `apikey.rotation_sweep` kind (no payload).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
                unique_key: Some(crate::queue::reserved_key(format!("{REVOKE}:{id}"))),
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
    const INTERNAL: bool = true;
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
