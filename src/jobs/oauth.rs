//! OAuth kinds: `oauth.exchange` (authorization code → tokens, userinfo, connection
//! stored), `oauth.refresh` (one connection's tokens renewed) and `oauth.refresh_sweep`
//! (enqueues `oauth.refresh` for connections expiring within `[oauth] refresh_ahead`,
//! unique per connection; run by the built-in `oauth-refresh-sweep` schedule).
//!
//! Payloads carry ids only (`state_id`, `connection_id`), never a token. A refresh takes
//! the connection by compare-and-set (`active` → `refreshing` with a claim id), calls the
//! token endpoint with no lock held, then stores the new access token and any rotated
//! refresh token in one transaction with its audit row, so however many daemons sweep, a
//! connection is refreshed once. A revoked grant (`invalid_grant`) or any other permanent
//! refusal sets `reauth_required`, raises an alert and dead-letters the job; outages retry.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Attempt, JobContext, JobError, Kind, KindPolicy, NoPayload};
use crate::config::{BackoffConfig, BackoffStrategy, Config};
use crate::error_class::ErrorClass;
use crate::providers::oauth::{self, Providers, TokenError};
use crate::queue::credentials::{
    self as creds, Actor, AuditEvent, ConnectionWrite, NewAlert, sealed_aad,
};
use crate::queue::{self, NewJob};
use crate::secrets::{Keyring, SecretsError};

/// Kind names.
pub const EXCHANGE: &str = "oauth.exchange";
pub const REFRESH: &str = "oauth.refresh";
pub const SWEEP: &str = "oauth.refresh_sweep";

/// A refresh that has held a connection this long without finishing died; another may
/// take over.
pub const STALE_REFRESH: Duration = Duration::from_secs(300);

/// What the OAuth kinds share.
#[derive(Clone)]
pub struct OAuthDeps {
    pub pool: PgPool,
    pub keyring: Option<Arc<Keyring>>,
    pub http: reqwest::Client,
    pub providers: Arc<Providers>,
    pub refresh_ahead: Duration,
}

impl OAuthDeps {
    /// From the config and the daemon's shared dependencies.
    pub fn new(config: &Config, deps: &super::Deps) -> Result<Self, super::RegistryError> {
        Ok(Self {
            pool: deps.pool.clone(),
            keyring: deps.keyring.clone(),
            http: deps.http.clone(),
            providers: Arc::new(
                Providers::from_config(config).map_err(|e| super::RegistryError(e.to_string()))?,
            ),
            refresh_ahead: config.oauth.refresh_ahead,
        })
    }

    fn keyring(&self) -> Result<Arc<Keyring>, JobError> {
        self.keyring
            .clone()
            .ok_or_else(|| config_error(&SecretsError::NoMasterKey.to_string()))
    }
}

/// A permanent failure of `class`.
pub(super) fn fatal(class: ErrorClass, message: &str) -> JobError {
    JobError::Fatal {
        class,
        message: message.into(),
        status: None,
    }
}

fn config_error(message: &str) -> JobError {
    fatal(ErrorClass::Configuration, message)
}

fn policy(max_attempts: i32, timeout: Duration) -> KindPolicy {
    KindPolicy {
        queue: "credentials".into(),
        max_attempts,
        timeout,
        backoff: BackoffConfig {
            strategy: BackoffStrategy::Exponential,
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
            jitter: true,
        },
        ..KindPolicy::default()
    }
}

fn uuid_field(payload: &serde_json::Value, field: &str) -> Result<Uuid, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default)]
        state_id: Option<Uuid>,
        #[serde(default)]
        connection_id: Option<Uuid>,
        #[serde(default)]
        actor: Option<String>,
    }
    let p: P = serde_json::from_value(payload.clone()).map_err(|e| e.to_string())?;
    if let Some(a) = &p.actor
        && Actor::parse(a).is_none()
    {
        return Err(format!("actor: {a:?} is not cli, schedule or api"));
    }
    match field {
        "state_id" => p.state_id,
        _ => p.connection_id,
    }
    .ok_or_else(|| format!("missing field `{field}`"))
}

fn actor_of(payload: &serde_json::Value, default: Actor) -> Actor {
    payload
        .get("actor")
        .and_then(|a| a.as_str())
        .and_then(Actor::parse)
        .unwrap_or(default)
}

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
    event: &str,
    actor: Actor,
) -> Result<Uuid, StoreError> {
    let mut tx = pool.begin().await.map_err(queue::Error::from)?;
    let id = creds::lock_connection_of(&mut tx, c.tenant_id, c.provider, c.account_id)
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
    creds::upsert_connection(
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
    creds::audit(
        &mut *tx,
        &AuditEvent {
            event,
            actor,
            subject_type: "oauth_connection",
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
    tx.commit().await.map_err(queue::Error::from)?;
    Ok(id)
}

/// Why [`store_connection`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Queue(#[from] queue::Error),
}

/// The decrypted access token of a live connection, for jobs calling the provider's API.
pub async fn access_token(
    pool: &PgPool,
    keyring: &Keyring,
    connection_id: Uuid,
) -> Result<Option<SecretString>, StoreError> {
    let Some(enc) = creds::access_token_enc(pool, connection_id).await? else {
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
    let mut tx = pool.begin().await.map_err(queue::Error::from)?;
    if !creds::revoke_connection(&mut tx, id).await? {
        return Ok(false);
    }
    let info = creds::get_connection_in(&mut tx, id).await?;
    creds::audit(
        &mut *tx,
        &AuditEvent {
            event: "connection_revoked",
            actor,
            subject_type: "oauth_connection",
            subject_id: Some(id.to_string()),
            tenant_id: info.as_ref().map(|c| c.tenant_id),
            provider: info.as_ref().map(|c| c.provider.as_str()),
            ok: true,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    tx.commit().await.map_err(queue::Error::from)?;
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
    creds::insert_state(
        pool,
        &creds::NewState {
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

// ---------------------------------------------------------------- oauth.exchange

/// The `oauth.exchange` kind: redeem the code stored with an authorization's state.
#[derive(Debug, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Exchange {
    state_id: Uuid,
}

impl TryFrom<serde_json::Value> for Exchange {
    type Error = String;
    fn try_from(payload: serde_json::Value) -> Result<Self, String> {
        Ok(Self {
            state_id: uuid_field(&payload, "state_id")?,
        })
    }
}

impl Kind for Exchange {
    const KIND: &'static str = EXCHANGE;
    type Deps = OAuthDeps;

    fn policy() -> KindPolicy {
        // codes expire within minutes: a few quick tries
        policy(5, Duration::from_secs(60))
    }

    async fn run(self, _ctx: &JobContext, deps: &OAuthDeps) -> Attempt {
        let state = creds::get_state(&deps.pool, self.state_id)
            .await?
            .ok_or_else(|| JobError::bad_payload(format!("no oauth state {}", self.state_id)))?;
        let Some(code_enc) = state.code_enc.clone() else {
            return match state.connection_id {
                Some(c) => Ok(Some(
                    serde_json::json!({ "connection_id": c, "already": true }),
                )),
                None => Err(JobError::bad_payload(
                    "this authorization has no code left to exchange",
                )),
            };
        };
        let exchange = Exchanging {
            deps,
            state: &state,
        };
        match exchange.redeem(&code_enc).await {
            Ok(id) => {
                creds::finish_state(&deps.pool, state.id, Some(id)).await?;
                tracing::info!(provider = %state.provider, connection = %id, "oauth connection stored");
                Ok(Some(serde_json::json!({ "connection_id": id })))
            }
            Err(Redeem::Retry(e)) => Err(e),
            Err(Redeem::Spent(message, class)) => exchange.fail(message, class).await,
        }
    }
}

/// How redeeming a code failed.
enum Redeem {
    /// Try again (the provider was unreachable, or our database failed).
    Retry(JobError),
    /// The code cannot be redeemed: forget it and dead-letter the job.
    Spent(String, ErrorClass),
}

impl From<JobError> for Redeem {
    fn from(e: JobError) -> Self {
        Redeem::Retry(e)
    }
}

/// One authorization's code being redeemed.
struct Exchanging<'a> {
    deps: &'a OAuthDeps,
    state: &'a creds::StateRow,
}

impl Exchanging<'_> {
    /// Code → tokens → userinfo → stored connection; returns the connection's id.
    async fn redeem(&self, code_enc: &str) -> Result<Uuid, Redeem> {
        let (deps, state) = (self.deps, self.state);
        let provider = deps
            .providers
            .get(&state.provider)
            .map_err(|e| Redeem::Spent(e.to_string(), ErrorClass::Configuration))?;
        // without the verifier the code can never be redeemed: end here, code forgotten
        let keyring = deps.keyring().map_err(|_| {
            Redeem::Spent(
                SecretsError::NoMasterKey.to_string(),
                ErrorClass::Configuration,
            )
        })?;
        let open = |sealed: &str, column: &str| {
            keyring
                .decrypt(sealed, &sealed_aad("oauth_states", column, state.id))
                .map_err(|e| Redeem::Spent(e.to_string(), ErrorClass::Configuration))
        };
        let verifier = open(&state.code_verifier_enc, "code_verifier_enc")?;
        let code = open(code_enc, "code_enc")?;
        let tokens = match oauth::exchange_code(
            &deps.http,
            &provider,
            &code,
            &state.redirect_uri,
            &verifier,
        )
        .await
        {
            Ok(t) => t,
            Err(TokenError::Call(c)) if c.retryable => return Err(Redeem::Retry(c.into())),
            Err(TokenError::Call(c)) => return Err(Redeem::Spent(c.message, c.class)),
            Err(TokenError::Reauthorize { message }) => {
                return Err(Redeem::Spent(message, ErrorClass::Authentication));
            }
        };
        let account = self.account(&provider, &tokens.access_token).await?;
        let scopes = tokens
            .scopes
            .clone()
            .unwrap_or_else(|| provider.scopes.clone());
        let connection = NewConnection {
            tenant_id: state.tenant_id,
            provider: &state.provider,
            account_id: &account.id,
            account_email: account.email.as_deref(),
            scopes: &scopes,
            access_token: &tokens.access_token,
            refresh_token: tokens.refresh_token.as_ref(),
            expires_at: tokens.expires_at,
        };
        store_connection(&deps.pool, &keyring, &connection, "exchanged", Actor::Api)
            .await
            .map_err(|e| {
                Redeem::Retry(match e {
                    StoreError::Secrets(s) => JobError::from(s),
                    StoreError::Queue(q) => JobError::from(q),
                })
            })
    }

    /// The account the tokens belong to. The code is spent: userinfo gets a few tries
    /// here rather than a job retry.
    async fn account(
        &self,
        provider: &oauth::Provider,
        access_token: &SecretString,
    ) -> Result<oauth::Account, Redeem> {
        let mut tries = 0;
        let account = loop {
            tries += 1;
            match oauth::userinfo(&self.deps.http, provider, access_token).await {
                Ok(a) => break a,
                Err(e) if e.retryable && tries < 3 => {
                    tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                }
                Err(e) => {
                    return Err(Redeem::Spent(
                        format!("tokens received but {}; authorize again", e.message),
                        e.class,
                    ));
                }
            }
        };
        Ok(account.unwrap_or(oauth::Account {
            id: format!("{}:{}", self.state.provider, self.state.tenant_id),
            email: None,
        }))
    }

    /// Forgets the code, audits the failure, and dead-letters the job.
    async fn fail(&self, message: String, class: ErrorClass) -> Attempt {
        let state = self.state;
        let mut tx = self.deps.pool.begin().await?;
        creds::finish_state(&mut *tx, state.id, None).await?;
        creds::audit(
            &mut *tx,
            &AuditEvent {
                event: "exchange_failed",
                actor: Actor::Api,
                subject_type: "oauth_state",
                subject_id: Some(state.id.to_string()),
                tenant_id: Some(state.tenant_id),
                provider: Some(&state.provider),
                ok: false,
                detail: serde_json::json!({ "error": message }),
            },
        )
        .await?;
        tx.commit().await?;
        Err(JobError::Fatal {
            class,
            message,
            status: None,
        })
    }
}

// ---------------------------------------------------------------- oauth.refresh

/// The `oauth.refresh` kind: renew one connection's tokens.
#[derive(Debug, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Refresh {
    connection_id: Uuid,
    actor: Actor,
}

impl TryFrom<serde_json::Value> for Refresh {
    type Error = String;
    fn try_from(payload: serde_json::Value) -> Result<Self, String> {
        Ok(Self {
            connection_id: uuid_field(&payload, "connection_id")?,
            actor: actor_of(&payload, Actor::Schedule),
        })
    }
}

impl Kind for Refresh {
    const KIND: &'static str = REFRESH;
    type Deps = OAuthDeps;

    fn policy() -> KindPolicy {
        policy(8, Duration::from_secs(60))
    }

    async fn run(self, _ctx: &JobContext, deps: &OAuthDeps) -> Attempt {
        let (id, pool) = (self.connection_id, &deps.pool);
        let keyring = deps.keyring()?;
        let Some(claim) = creds::claim_refresh(pool, id, deps.refresh_ahead, STALE_REFRESH).await?
        else {
            return Ok(Some(
                serde_json::json!({ "connection_id": id, "skipped": "not due" }),
            ));
        };
        let ended = Ended {
            pool,
            id,
            claim: &claim,
            actor: self.actor,
        };
        let provider = match deps.providers.get(&claim.provider) {
            Ok(p) => p,
            Err(e) => {
                return ended
                    .permanent(e.to_string(), ErrorClass::Configuration)
                    .await;
            }
        };
        let Some(refresh_enc) = &claim.refresh_token_enc else {
            return ended
                .permanent(
                    "the connection has no refresh token".into(),
                    ErrorClass::Authentication,
                )
                .await;
        };
        let refresh_token = match keyring.decrypt(
            refresh_enc,
            &sealed_aad("oauth_connections", "refresh_token_enc", id),
        ) {
            Ok(t) => t,
            Err(e) => return ended.retry(JobError::from(e)).await,
        };
        let tokens = match oauth::refresh(&deps.http, &provider, &refresh_token).await {
            Ok(t) => t,
            Err(TokenError::Reauthorize { message }) => {
                return ended.permanent(message, ErrorClass::Authentication).await;
            }
            Err(TokenError::Call(c)) if c.retryable => {
                return ended.retry(c.into()).await;
            }
            Err(TokenError::Call(c)) => return ended.permanent(c.message, c.class).await,
        };
        ended.store(&keyring, &tokens).await
    }
}

/// How a refresh that stored nothing ends.
struct Ended<'a> {
    pool: &'a PgPool,
    id: Uuid,
    claim: &'a creds::RefreshClaim,
    actor: Actor,
}

impl Ended<'_> {
    /// Stores the new tokens (and a rotated refresh token) with their audit row, if the
    /// claim still holds.
    async fn store(&self, keyring: &Keyring, tokens: &oauth::Tokens) -> Attempt {
        let id = self.id;
        let seal = |value: &SecretString, column: &str| {
            keyring.encrypt(
                value.expose_secret(),
                &sealed_aad("oauth_connections", column, id),
            )
        };
        let access = seal(&tokens.access_token, "access_token_enc")?;
        let rotated = tokens
            .refresh_token
            .as_ref()
            .map(|r| seal(r, "refresh_token_enc"))
            .transpose()?;
        let mut tx = self.pool.begin().await?;
        let stored = creds::store_refresh(
            &mut tx,
            id,
            self.claim.claim,
            &access,
            rotated.as_deref(),
            tokens.expires_at,
            tokens.scopes.as_deref(),
        )
        .await?;
        if !stored {
            // another refresh took over after ours was considered dead
            return Ok(Some(
                serde_json::json!({ "connection_id": id, "skipped": "claim lost" }),
            ));
        }
        creds::audit(
            &mut *tx,
            &AuditEvent {
                event: "refreshed",
                actor: self.actor,
                subject_type: "oauth_connection",
                subject_id: Some(id.to_string()),
                tenant_id: Some(self.claim.tenant_id),
                provider: Some(&self.claim.provider),
                ok: true,
                detail: serde_json::json!({
                    "expires_at": tokens.expires_at,
                    "refresh_token_rotated": rotated.is_some(),
                }),
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(provider = %self.claim.provider, connection = %id, rotated = rotated.is_some(), "oauth tokens refreshed");
        Ok(Some(serde_json::json!({
            "connection_id": id,
            "expires_at": tokens.expires_at,
            "refresh_token_rotated": rotated.is_some(),
        })))
    }

    /// Back to `active` with the error; the job retries (or dead-letters, if `error` is fatal).
    async fn retry(&self, error: JobError) -> Attempt {
        let message = match &error {
            JobError::Retryable { message, .. } | JobError::Fatal { message, .. } => {
                message.clone()
            }
            JobError::Cancel { message } => message.clone(),
            JobError::Snooze { .. } => String::new(),
        };
        let mut tx = self.pool.begin().await?;
        creds::end_refresh(&mut tx, self.id, self.claim.claim, "active", &message).await?;
        self.audit(&mut tx, "refresh_failed", &message, true)
            .await?;
        tx.commit().await?;
        Err(error)
    }

    /// `reauth_required`, an alert, and a dead letter: only the tenant can fix this.
    async fn permanent(&self, message: String, class: ErrorClass) -> Attempt {
        let mut tx = self.pool.begin().await?;
        creds::end_refresh(
            &mut tx,
            self.id,
            self.claim.claim,
            "reauth_required",
            &message,
        )
        .await?;
        self.audit(&mut tx, "refresh_failed", &message, false)
            .await?;
        self.audit(&mut tx, "reauth_required", &message, false)
            .await?;
        creds::raise_alert(
            &mut *tx,
            &NewAlert {
                kind: "oauth_reauth_required",
                subject_type: "oauth_connection",
                subject_id: Some(self.id.to_string()),
                tenant_id: Some(self.claim.tenant_id),
                provider: Some(&self.claim.provider),
                message: format!(
                    "the {} connection {} must be authorized again: {message}",
                    self.claim.provider, self.id
                ),
            },
        )
        .await?;
        tx.commit().await?;
        tracing::warn!(
            provider = %self.claim.provider, connection = %self.id, error = %message,
            "oauth grant unusable: connection needs re-authorization"
        );
        Err(JobError::Fatal {
            class,
            message,
            status: None,
        })
    }

    async fn audit(
        &self,
        tx: &mut sqlx::PgConnection,
        event: &str,
        message: &str,
        retry: bool,
    ) -> Result<(), JobError> {
        creds::audit(
            tx,
            &AuditEvent {
                event,
                actor: self.actor,
                subject_type: "oauth_connection",
                subject_id: Some(self.id.to_string()),
                tenant_id: Some(self.claim.tenant_id),
                provider: Some(&self.claim.provider),
                ok: false,
                detail: serde_json::json!({ "error": message, "will_retry": retry }),
            },
        )
        .await
        .map_err(JobError::from)
    }
}

// ---------------------------------------------------------------- oauth.refresh_sweep

/// The `oauth.refresh_sweep` kind (no payload).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Sweep(NoPayload);

/// Enqueues `oauth.refresh` for every connection due within `ahead` (unique per
/// connection); returns how many jobs were created (not deduplicated).
pub async fn sweep(pool: &PgPool, ahead: Duration) -> Result<usize, queue::Error> {
    // states are single-use and short-lived: forget them a day after they expired
    creds::prune_states(pool, Duration::from_secs(86_400)).await?;
    let due = creds::due_connections(pool, ahead, STALE_REFRESH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<NewJob> = due
        .into_iter()
        .map(|(id, tenant)| NewJob {
            unique_key: Some(format!("{REFRESH}:{id}")),
            tenant_id: Some(tenant),
            ..NewJob::new(REFRESH, serde_json::json!({ "connection_id": id }))
        })
        .collect();
    let mut conn = pool.acquire().await?;
    let done = queue::enqueue_many_reporting(&mut conn, &jobs).await?;
    Ok(done.iter().filter(|e| e.created).count())
}

impl Kind for Sweep {
    const KIND: &'static str = SWEEP;
    type Deps = OAuthDeps;

    fn policy() -> KindPolicy {
        policy(3, Duration::from_secs(60))
    }

    async fn run(self, _ctx: &JobContext, deps: &OAuthDeps) -> Attempt {
        let n = sweep(&deps.pool, deps.refresh_ahead).await?;
        Ok(Some(serde_json::json!({ "enqueued": n })))
    }
}
