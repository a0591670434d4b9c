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

use secrecy::SecretString;
use serde::Deserialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Attempt, JobContext, JobError, Kind, KindPolicy, NoPayload};
use crate::config::{BackoffConfig, BackoffStrategy, Config};
use crate::credentials::connections::{self, NewConnection};
use crate::credentials::{self as creds, Actor, AuditAction};
use crate::error_class::ErrorClass;
use crate::providers::oauth::{self, Providers, TokenError};
use crate::queue::{self, NewJob};
use crate::secrets::{Keyring, SecretsError};

/// Kind names.
pub const EXCHANGE: &str = crate::kind_names::OAUTH_EXCHANGE;
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
    /// Token calls are counted in its metrics (provider: the OAuth provider's name).
    pub outbound: Option<Arc<super::outbound::Outbound>>,
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
            outbound: None,
        })
    }

    /// The same, counting token calls in `outbound`'s metrics.
    pub fn counting(self, outbound: Arc<super::outbound::Outbound>) -> Self {
        Self {
            outbound: Some(outbound),
            ..self
        }
    }

    /// Counts a token call to `provider` that ended in `result` after `elapsed`.
    fn count<T>(
        &self,
        provider: &str,
        kind: &'static str,
        result: &Result<T, TokenError>,
        elapsed: Duration,
    ) {
        let Some(outbound) = &self.outbound else {
            return;
        };
        let answer = match result {
            Ok(_) => Ok(200),
            // invalid_grant and friends: the provider answered 400
            Err(TokenError::Reauthorize { .. }) => Ok(400),
            Err(TokenError::Call(c)) => c.status.ok_or(c.class),
        };
        outbound.record_answer(provider, kind, answer, elapsed);
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
    Actor::from_field(p.actor.as_deref(), Actor::Schedule)?;
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

// ---------------------------------------------------------------- oauth.exchange

/// The `oauth.exchange` kind: redeem the code stored with an authorization's state.
#[derive(Debug, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct Exchange {
    state_id: Uuid,
}

impl schemars::JsonSchema for Exchange {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OauthExchange".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                "state_id": { "type": "string", "format": "uuid" },
                "actor": { "type": "string" }
            },
            "required": ["state_id"],
            "additionalProperties": false
        })
    }
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
    const INTERNAL: bool = true;
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
        let (verifier, code) = connections::open_authorization(&keyring, state, code_enc)
            .map_err(|e| Redeem::Spent(e.to_string(), ErrorClass::Configuration))?;
        let started = std::time::Instant::now();
        let exchanged =
            oauth::exchange_code(&deps.http, &provider, &code, &state.redirect_uri, &verifier)
                .await;
        deps.count(&state.provider, EXCHANGE, &exchanged, started.elapsed());
        let tokens = match exchanged {
            Ok(t) => t,
            Err(TokenError::Call(c)) if c.class == ErrorClass::Configuration => {
                connections::client_refused(&deps.pool, &state.provider, &c.message)
                    .await
                    .map_err(|e| Redeem::Retry(e.into()))?;
                return Err(Redeem::Retry(c.into()));
            }
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
        connections::store_connection(
            &deps.pool,
            &keyring,
            &connection,
            AuditAction::Exchanged,
            Actor::Api(None),
        )
        .await
        .map_err(|e| Redeem::Retry(e.into()))
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
        connections::fail_exchange(&self.deps.pool, self.state, &message).await?;
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

impl schemars::JsonSchema for Refresh {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OauthRefresh".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "properties": {
                "connection_id": { "type": "string", "format": "uuid" },
                "actor": { "type": "string" }
            },
            "required": ["connection_id"],
            "additionalProperties": false
        })
    }
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
    const INTERNAL: bool = true;
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
        let refresh_token = match connections::refresh_token(&keyring, &claim, id) {
            Ok(Some(t)) => t,
            Ok(None) => {
                return ended
                    .permanent(
                        "the connection has no refresh token".into(),
                        ErrorClass::Authentication,
                    )
                    .await;
            }
            Err(e) => return ended.retry(JobError::from(e)).await,
        };
        let started = std::time::Instant::now();
        let refreshed = oauth::refresh(&deps.http, &provider, &refresh_token).await;
        deps.count(&claim.provider, REFRESH, &refreshed, started.elapsed());
        let tokens = match refreshed {
            Ok(t) => t,
            Err(TokenError::Reauthorize { message }) => {
                return ended.permanent(message, ErrorClass::Authentication).await;
            }
            Err(TokenError::Call(c)) if c.class == ErrorClass::Configuration => {
                connections::client_refused(pool, &claim.provider, &c.message).await?;
                return ended.retry(c.into()).await;
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
        let refreshed = connections::RefreshedTokens {
            access_token: &tokens.access_token,
            refresh_token: tokens.refresh_token.as_ref(),
            expires_at: tokens.expires_at,
            scopes: tokens.scopes.as_deref(),
        };
        if !connections::store_refreshed(
            self.pool,
            keyring,
            id,
            self.claim,
            &refreshed,
            self.actor.clone(),
        )
        .await?
        {
            // another refresh took over after ours was considered dead
            return Ok(Some(
                serde_json::json!({ "connection_id": id, "skipped": "claim lost" }),
            ));
        }
        let rotated = tokens.refresh_token.is_some();
        tracing::info!(provider = %self.claim.provider, connection = %id, rotated, "oauth tokens refreshed");
        Ok(Some(serde_json::json!({
            "connection_id": id,
            "expires_at": tokens.expires_at,
            "refresh_token_rotated": rotated,
        })))
    }

    /// Ends the refresh with `message`: back to `active`, or `reauth_required` with an
    /// alert when `reauthorize`.
    async fn end_refresh(&self, message: &str, reauthorize: bool) -> Result<(), JobError> {
        let actor = self.actor.clone();
        connections::end_failed_refresh(
            self.pool,
            self.id,
            self.claim,
            actor,
            message,
            reauthorize,
        )
        .await?;
        Ok(())
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
        self.end_refresh(&message, false).await?;
        Err(error)
    }

    /// `reauth_required`, an alert, and a dead letter: only the tenant can fix this.
    async fn permanent(&self, message: String, class: ErrorClass) -> Attempt {
        self.end_refresh(&message, true).await?;
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
}

// ---------------------------------------------------------------- oauth.refresh_sweep

/// The `oauth.refresh_sweep` kind (no payload).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
            unique_key: Some(crate::queue::reserved_key(format!("{REFRESH}:{id}"))),
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
    const INTERNAL: bool = true;
    type Deps = OAuthDeps;

    fn policy() -> KindPolicy {
        policy(3, Duration::from_secs(60))
    }

    async fn run(self, _ctx: &JobContext, deps: &OAuthDeps) -> Attempt {
        let n = sweep(&deps.pool, deps.refresh_ahead).await?;
        Ok(Some(serde_json::json!({ "enqueued": n })))
    }
}
