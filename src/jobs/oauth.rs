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

use futures::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Attempt, Handler, JobContext, JobError, KindPolicy};
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
    pub pool: Option<PgPool>,
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

    fn pool(&self) -> Result<PgPool, JobError> {
        self.pool
            .clone()
            .ok_or_else(|| config_error("no database pool given to the OAuth kinds"))
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

/// The `oauth.exchange` kind.
#[derive(Clone)]
pub struct Exchange(pub OAuthDeps);

impl Handler for Exchange {
    fn kind(&self) -> &'static str {
        EXCHANGE
    }

    fn default_policy(&self) -> KindPolicy {
        // codes expire within minutes: a few quick tries
        policy(5, Duration::from_secs(60))
    }

    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        uuid_field(payload, "state_id").map(|_| ())
    }

    fn run(&self, _ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let deps = self.0.clone();
        Box::pin(async move {
            let state_id = uuid_field(&payload, "state_id").map_err(JobError::bad_payload)?;
            let pool = deps.pool()?;
            let state = creds::get_state(&pool, state_id)
                .await?
                .ok_or_else(|| JobError::bad_payload(format!("no oauth state {state_id}")))?;
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
            let fail = |message: String, class: ErrorClass| {
                let pool = pool.clone();
                let state = state.clone();
                async move {
                    let mut tx = pool.begin().await?;
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
                    Err::<Option<serde_json::Value>, _>(JobError::Fatal {
                        class,
                        message,
                        status: None,
                    })
                }
            };
            let provider = match deps.providers.get(&state.provider) {
                Ok(p) => p,
                Err(e) => return fail(e.to_string(), ErrorClass::Configuration).await,
            };
            // without the verifier the code can never be redeemed: end here, code forgotten
            let keyring = match deps.keyring() {
                Ok(k) => k,
                Err(_) => {
                    return fail(
                        SecretsError::NoMasterKey.to_string(),
                        ErrorClass::Configuration,
                    )
                    .await;
                }
            };
            let verifier = match keyring.decrypt(
                &state.code_verifier_enc,
                &sealed_aad("oauth_states", "code_verifier_enc", state.id),
            ) {
                Ok(v) => v,
                Err(e) => return fail(e.to_string(), ErrorClass::Configuration).await,
            };
            let code = match keyring
                .decrypt(&code_enc, &sealed_aad("oauth_states", "code_enc", state.id))
            {
                Ok(c) => c,
                Err(e) => return fail(e.to_string(), ErrorClass::Configuration).await,
            };
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
                Err(TokenError::Call(c)) if c.retryable => return Err(c.into()),
                Err(TokenError::Call(c)) => return fail(c.message, c.class).await,
                Err(TokenError::Reauthorize { message }) => {
                    return fail(message, ErrorClass::Authentication).await;
                }
            };
            // the code is spent: userinfo gets a few tries here rather than a job retry
            let mut tries = 0;
            let account = loop {
                tries += 1;
                match oauth::userinfo(&deps.http, &provider, &tokens.access_token).await {
                    Ok(a) => break a,
                    Err(e) if e.retryable && tries < 3 => {
                        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    }
                    Err(e) => {
                        return fail(
                            format!("tokens received but {}; authorize again", e.message),
                            e.class,
                        )
                        .await;
                    }
                }
            };
            let account = account.unwrap_or(oauth::Account {
                id: format!("{}:{}", state.provider, state.tenant_id),
                email: None,
            });
            let scopes = tokens
                .scopes
                .clone()
                .unwrap_or_else(|| provider.scopes.clone());
            let id = store_connection(
                &pool,
                &keyring,
                &NewConnection {
                    tenant_id: state.tenant_id,
                    provider: &state.provider,
                    account_id: &account.id,
                    account_email: account.email.as_deref(),
                    scopes: &scopes,
                    access_token: &tokens.access_token,
                    refresh_token: tokens.refresh_token.as_ref(),
                    expires_at: tokens.expires_at,
                },
                "exchanged",
                Actor::Api,
            )
            .await
            .map_err(|e| match e {
                StoreError::Secrets(s) => JobError::from(s),
                StoreError::Queue(q) => JobError::from(q),
            })?;
            creds::finish_state(&pool, state.id, Some(id)).await?;
            tracing::info!(provider = %state.provider, connection = %id, "oauth connection stored");
            Ok(Some(serde_json::json!({ "connection_id": id })))
        })
    }
}

// ---------------------------------------------------------------- oauth.refresh

/// The `oauth.refresh` kind.
#[derive(Clone)]
pub struct Refresh(pub OAuthDeps);

impl Handler for Refresh {
    fn kind(&self) -> &'static str {
        REFRESH
    }

    fn default_policy(&self) -> KindPolicy {
        policy(8, Duration::from_secs(60))
    }

    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        uuid_field(payload, "connection_id").map(|_| ())
    }

    fn run(&self, _ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let deps = self.0.clone();
        Box::pin(async move {
            let id = uuid_field(&payload, "connection_id").map_err(JobError::bad_payload)?;
            let actor = actor_of(&payload, Actor::Schedule);
            let pool = deps.pool()?;
            let keyring = deps.keyring()?;
            let Some(claim) =
                creds::claim_refresh(&pool, id, deps.refresh_ahead, STALE_REFRESH).await?
            else {
                return Ok(Some(
                    serde_json::json!({ "connection_id": id, "skipped": "not due" }),
                ));
            };
            let ended = Ended {
                pool: &pool,
                id,
                claim: &claim,
                actor,
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
            let mut tx = pool.begin().await?;
            let stored = creds::store_refresh(
                &mut tx,
                id,
                claim.claim,
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
                    actor,
                    subject_type: "oauth_connection",
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
            tracing::info!(provider = %claim.provider, connection = %id, rotated = rotated.is_some(), "oauth tokens refreshed");
            Ok(Some(serde_json::json!({
                "connection_id": id,
                "expires_at": tokens.expires_at,
                "refresh_token_rotated": rotated.is_some(),
            })))
        })
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

/// The `oauth.refresh_sweep` kind.
#[derive(Clone)]
pub struct Sweep(pub OAuthDeps);

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

impl Handler for Sweep {
    fn kind(&self) -> &'static str {
        SWEEP
    }

    fn default_policy(&self) -> KindPolicy {
        policy(3, Duration::from_secs(60))
    }

    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        match payload.as_object() {
            Some(o) if o.is_empty() => Ok(()),
            _ => Err("takes no payload (use {})".into()),
        }
    }

    fn run(&self, _ctx: JobContext, _payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let deps = self.0.clone();
        Box::pin(async move {
            let pool = deps.pool()?;
            let n = sweep(&pool, deps.refresh_ahead).await?;
            Ok(Some(serde_json::json!({ "enqueued": n })))
        })
    }
}

/// The OAuth kinds of the registry.
pub fn handlers(
    config: &Config,
    deps: &super::Deps,
) -> Result<Vec<Arc<dyn Handler>>, super::RegistryError> {
    let d = OAuthDeps::new(config, deps)?;
    Ok(vec![
        Arc::new(Exchange(d.clone())),
        Arc::new(Refresh(d.clone())),
        Arc::new(Sweep(d)),
    ])
}
