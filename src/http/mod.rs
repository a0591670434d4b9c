//! The HTTP shim: authenticate, persist, answer. `POST /v1/jobs` enqueues for the backend
//! (bearer token; with `"wait"` it answers when the job has finished, with its result) and
//! `GET /v1/jobs/{id}` tells where a job is; `POST /webhooks/{mailgun,sendgrid,stripe}` verifies the provider's
//! signature at the edge, stores each event raw with its processing job, and answers 200
//! only after the commit (group commit: see [`ingest`]).
//!
//! Must never call a provider or run a job handler, never answer 2xx before the rows are
//! committed, and never echo a secret or a request body in an error. Input it cannot
//! store (a NUL in a job's text, a value out of PostgreSQL's range) is refused with 422
//! before it reaches the database, never answered 500; a verified webhook is always
//! stored (its parsed copy made storable by [`webhooks`]). Every refusal of a JSON route
//! is an [`ApiError`], answered as `{"error": ..}`; kinds are checked through
//! [`EnqueueCheck`], which the daemon implements with its registry, so the shim imports
//! nothing from `jobs`. Connections are accepted and served by [`serve`] (hyper, not
//! `axum::serve`) under the `[http]` limits: header, body and idle timeouts, and
//! `max_connections`, so slow clients cannot starve the others.

mod connection;
pub mod error;
pub mod filters;
pub mod ingest;
pub mod oauth;
pub mod openapi;
pub mod serve;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, HttpConfig, SecretRef, WebhookFilter};
use crate::kind_names;
use crate::queue::{NewInboundEvent, NewJob, ReplayToken};
use crate::webhooks::{self, Rejection};
pub use error::ApiError;
use ingest::{Done, Ingest, IngestError, Work};

/// Errors at start (bad keys).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Key(String),
}

/// Webhook keys, resolved and parsed once at start, and each provider's filters.
struct Keys {
    mailgun: Option<SecretString>,
    sendgrid: Option<webhooks::sendgrid::PublicKey>,
    stripe: Option<SecretString>,
    filters: HashMap<WebhookProvider, Vec<WebhookFilter>>,
}

/// How the shim checks a job before enqueuing it (its kind exists, its payload is
/// valid). The daemon passes its job registry in; the shim itself knows no kind.
pub trait EnqueueCheck: Send + Sync {
    /// `Err` names what is wrong; it is answered 422.
    fn check(&self, job: &NewJob) -> Result<(), String>;
    /// `Some(true)` for a kind only the daemon enqueues unless a token names it,
    /// `Some(false)` for a public kind, `None` for an unknown kind.
    fn internal(&self, kind: &str) -> Option<bool>;
    /// Every kind's payload schema, for the OpenAPI document (none by default).
    fn payload_schemas(&self) -> Vec<openapi::KindSchema> {
        Vec::new()
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    kinds: Arc<dyn EnqueueCheck>,
    /// For `wait`, `GET /v1/jobs/{id}` (reads) and the OAuth callback's single statement
    /// (state check and enqueue); webhook and job writes go through `ingest`.
    pool: PgPool,
    tokens: Arc<tokens::Tokens>,
    keys: Arc<Keys>,
    ingest: Ingest,
    /// Unix seconds now; a function so tests can move the clock.
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Seals the OAuth callback's authorization code; `None` without a master key.
    keyring: Option<Arc<crate::secrets::Keyring>>,
    /// What `/readyz` checks.
    ready: crate::readiness::Readiness,
    /// The daemon's Prometheus metrics (enqueues, webhooks).
    metrics: Arc<crate::metrics::Metrics>,
}

impl AppState {
    /// Resolves the tokens and keys of `config` and starts the group-commit writers.
    pub fn new(
        config: &Config,
        pool: PgPool,
        kinds: Arc<dyn EnqueueCheck>,
    ) -> Result<Self, HttpError> {
        let tokens = tokens::Tokens::from_config(config, &*kinds)?;
        let p = &config.providers;
        let secret = |r: Option<&SecretRef>| r.map(SecretRef::resolve).transpose();
        let sendgrid = match secret(
            p.sendgrid
                .as_ref()
                .and_then(|s| s.webhook_public_key.as_ref()),
        )? {
            Some(key) => Some(
                webhooks::sendgrid::PublicKey::parse(key.expose_secret()).map_err(|e| {
                    HttpError::Key(format!("providers.sendgrid.webhook_public_key: {e}"))
                })?,
            ),
            None => None,
        };
        let keys = Keys {
            mailgun: secret(
                p.mailgun
                    .as_ref()
                    .and_then(|m| m.webhook_signing_key.as_ref()),
            )?,
            sendgrid,
            stripe: secret(p.stripe.as_ref().and_then(|s| s.webhook_secret.as_ref()))?,
            filters: HashMap::from([
                (
                    WebhookProvider::Mailgun,
                    p.mailgun
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
                (
                    WebhookProvider::Sendgrid,
                    p.sendgrid
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
                (
                    WebhookProvider::Stripe,
                    p.stripe
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
            ]),
        };
        Ok(Self {
            kinds,
            tokens: Arc::new(tokens),
            keys: Arc::new(keys),
            ingest: Ingest::start(pool.clone(), 6),
            ready: crate::readiness::Readiness::new(pool.clone(), false),
            metrics: crate::metrics::Metrics::new(),
            pool,
            clock: Arc::new(|| chrono::Utc::now().timestamp()),
            keyring: crate::secrets::Keyring::from_config(config)
                .map_err(|e| HttpError::Key(e.to_string()))?
                .map(Arc::new),
        })
    }

    /// The same state answering `/readyz` with the daemon's readiness (by default: the
    /// database answers and the schema is current).
    pub fn with_readiness(self, ready: crate::readiness::Readiness) -> Self {
        Self { ready, ..self }
    }

    /// The same state counting into the daemon's `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics, ..self }
    }

    /// Whether no bearer token is configured (`POST /v1/jobs` then refuses everyone).
    pub fn has_no_tokens(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The same state with another clock (tests).
    pub fn with_clock(self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            ..self
        }
    }
}

impl axum::extract::FromRef<AppState> for crate::readiness::Readiness {
    fn from_ref(state: &AppState) -> Self {
        state.ready.clone()
    }
}

/// The security scheme of the bearer tokens.
const API_TOKEN_SCHEME: crate::http::openapi::BearerScheme =
    crate::http::openapi::BearerScheme("api_token");

/// The shim's OpenAPI document, before the routes add their operations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "penguin-jobs shim",
        description = "The public HTTP shim of a penguin-jobs daemon ([http] listen): enqueue \
            jobs (bearer token of [http] api_tokens or [http.tokens.NAME]), read their status, \
            and receive provider webhooks (verified by signature, no token)."
    ),
    modifiers(&API_TOKEN_SCHEME),
    tags((name = "jobs"), (name = "webhooks"), (name = "oauth"), (name = "probes"))
)]
struct ShimDoc;

/// The shim's routes, each with its OpenAPI operation.
fn api(max_body: usize) -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::with_openapi(<ShimDoc as utoipa::OpenApi>::openapi())
        .routes(utoipa_axum::routes!(crate::readiness::healthz))
        .routes(utoipa_axum::routes!(crate::readiness::readyz))
        .routes(utoipa_axum::routes!(create_job))
        .routes(utoipa_axum::routes!(show_job))
        .routes(utoipa_axum::routes!(webhook))
        .routes(utoipa_axum::routes!(oauth::callback))
        .layer(DefaultBodyLimit::max(max_body))
}

/// The shim's OpenAPI document, with `kinds`' payload schemas (`penguin-jobs openapi`
/// prints it; the shim serves it at [`openapi::PATH`]).
pub fn document(kinds: &dyn EnqueueCheck) -> serde_json::Value {
    let mut doc = openapi::finish(api(0).into_openapi(), env!("CARGO_PKG_VERSION"));
    openapi::add_job_kinds(&mut doc, &kinds.payload_schemas(), "NewJob");
    doc
}

/// The shim's routes, its document at [`openapi::PATH`].
pub fn routes(state: AppState, max_body: usize) -> Router {
    let doc = Arc::new(document(&*state.kinds));
    api(max_body)
        .with_state(state)
        .split_for_parts()
        .0
        .route(openapi::PATH, get(move || openapi::serve(doc.clone())))
}

/// The shim's routes.
pub fn router(state: AppState, max_body: usize) -> Router {
    routes(state, max_body)
}

/// What `POST /v1/jobs` and `GET /v1/jobs/{id}` answer: the job's id, and with `wait` or
/// on a read its status (documentation of [`crate::queue::JobStatus`] and the id-only
/// answers).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct JobAnswer {
    id: i64,
    kind: Option<String>,
    /// A job state, or `dead` (in the dead letters).
    state: Option<String>,
    attempt: Option<i32>,
    max_attempts: Option<i32>,
    result: Option<serde_json::Value>,
    errors: Option<serde_json::Value>,
    dead_reason: Option<String>,
    created_at: Option<chrono::DateTime<chrono::Utc>>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    tenant_id: Option<uuid::Uuid>,
}

/// What a webhook request stored (documentation).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct WebhookAnswer {
    /// Events new to the queue.
    stored: usize,
    /// Events stored by an earlier delivery.
    duplicates: usize,
}

/// Serves on an already bound listener (tests bind port 0) under the connection limits
/// of `config` (timeouts, `max_connections`: see [`serve`]) until `shutdown`; returns once
/// every connection has ended (in-flight requests finish, idle connections close).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    config: &HttpConfig,
    shutdown: CancellationToken,
) {
    serve::serve(listener, router(state, config.max_body), config, shutdown).await;
}

/// A body declared as anything but JSON (`application/json`, `application/*+json`) is
/// refused with 415; a body without a `Content-Type` is read as JSON.
fn json_or_undeclared(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(declared) = headers.get(axum::http::header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = declared
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType(
        "send the job as JSON (Content-Type: application/json)".into(),
    ))
}

/// Longest `"wait"` a request may ask for.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", security(("api_token" = [])),
    request_body(content = NewJob, content_type = "application/json"),
    responses(
        (status = 202, description = "enqueued (or, with wait, not final yet)", body = JobAnswer),
        (status = 200, description = "the live job holding the same unique key, or with wait the final job", body = JobAnswer),
        (status = 401, description = "no valid token (or none configured)", body = error::ErrorBody),
        (status = 403, description = "a kind or tenant outside the token's scope", body = error::ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = error::ErrorBody),
        (status = 413, description = "the body is over [http] max_body", body = error::ErrorBody),
        (status = 415, description = "a body declared as something else than JSON", body = error::ErrorBody),
        (status = 422, description = "an unknown kind, a bad payload or field", body = error::ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = error::ErrorBody)))]
/// `POST /v1/jobs`: 202 `{"id"}` for a new job, 200 `{"id"}` for the live job holding the
/// same unique key, 401 without a valid token, 403 for a kind or tenant outside the token's
/// scope ([`tokens`]), 422 for an unknown kind, a bad payload or a reserved unique key.
/// With `"wait": "10s"` (at most 60 s), the answer comes once the job is final: 200 with
/// its state and result; or at the timeout: 202 with its id and current state, to poll at
/// `GET /v1/jobs/{id}`.
async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let token = state.tokens.require(&headers)?;
    json_or_undeclared(&headers)?;
    let body = body?;
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Invalid(format!("invalid job: {e}")))?;
    let wait = take_wait(&mut value)?;
    let mut job: NewJob = serde_json::from_value(value)
        .map_err(|e| ApiError::Invalid(format!("invalid job: {e}")))?;
    // names the field at fault, NUL and lengths the database would refuse included
    job.validate()
        .map_err(|e| ApiError::Invalid(e.to_string()))?;
    token.scope(&*state.kinds, &mut job)?;
    if state.kinds.internal(&job.kind) == Some(true) {
        set_actor(&mut job, token)?;
    }
    state.kinds.check(&job).map_err(ApiError::Invalid)?;
    let kind = job.kind.clone();
    let Done::Job(enqueued) = state.ingest.submit(Work::Job(job)).await? else {
        return Err(ApiError::Internal);
    };
    if enqueued.created {
        state.metrics.enqueued(&kind, "http");
    }
    let Some(wait) = wait else {
        let status = if enqueued.created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return Ok((status, Json(json!({ "id": enqueued.id }))).into_response());
    };
    Ok(
        match crate::queue::wait_for_job(&state.pool, enqueued.id, wait).await {
            Ok(Some(s)) if s.is_final() => (StatusCode::OK, Json(status_json(&s))).into_response(),
            Ok(Some(s)) => (
                StatusCode::ACCEPTED,
                Json(json!({ "id": s.id, "state": s.state })),
            )
                .into_response(),
            // completed and deleted at once (`[retention] completed = "0s"`): no result kept
            Ok(None) => (
                StatusCode::OK,
                Json(json!({ "id": enqueued.id, "state": "completed", "result": null })),
            )
                .into_response(),
            Err(e) => {
                tracing::warn!(job.id = enqueued.id, error = %e, "could not read the job while waiting");
                (StatusCode::ACCEPTED, Json(json!({ "id": enqueued.id }))).into_response()
            }
        },
    )
}

/// An internal kind's payload names who asked for it (the audit log records it): over
/// HTTP that is the token, `api:NAME`, and a payload that names someone is refused.
fn set_actor(job: &mut NewJob, token: &tokens::ApiToken) -> Result<(), ApiError> {
    let Some(fields) = job.payload.as_object_mut() else {
        return Ok(());
    };
    if fields.contains_key("actor") {
        return Err(ApiError::Invalid(
            "payload.actor: set by the daemon from the bearer token, not by the caller".into(),
        ));
    }
    fields.insert("actor".into(), token.actor().into());
    Ok(())
}

/// Removes `"wait"` from a job request: `None` when absent or null, else a duration of at
/// most [`MAX_WAIT`].
fn take_wait(value: &mut serde_json::Value) -> Result<Option<std::time::Duration>, ApiError> {
    match value.as_object_mut().and_then(|o| o.remove("wait")) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => match humantime::parse_duration(&text) {
            Ok(d) if d <= MAX_WAIT => Ok(Some(d)),
            Ok(_) => Err(ApiError::Invalid(
                "wait: at most 60s; poll GET /v1/jobs/{id} for longer".into(),
            )),
            Err(e) => Err(ApiError::Invalid(format!(
                "wait: {text:?} is not a duration like \"10s\": {e}"
            ))),
        },
        Some(_) => Err(ApiError::Invalid(
            "wait: give a duration like \"10s\"".into(),
        )),
    }
}

fn status_json(s: &crate::queue::JobStatus) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({ "id": s.id, "state": s.state }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("api_token" = [])),
    params(("id" = i64, Path, description = "job id")),
    responses(
        (status = 200, description = "the job's state, result and errors", body = JobAnswer),
        (status = 401, description = "no valid token (or none configured)", body = error::ErrorBody),
        (status = 404, description = "no such job for this token", body = error::ErrorBody),
        (status = 503, description = "the database is unavailable; retry", body = error::ErrorBody)))]
/// `GET /v1/jobs/{id}`: the job's state, result and errors (`dead` once dead-lettered);
/// 404 when no job or dead letter has this id, or when the job is outside the token's
/// scope (another tenant's, a kind the token may not use).
async fn show_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = state.tokens.require(&headers)?;
    let Ok(id) = id.parse::<i64>() else {
        return Err(ApiError::NotFound("job ids are integers".into()));
    };
    match crate::queue::job_status(&state.pool, id).await {
        // another tenant's job, or a kind the token may not use, does not exist for it
        Ok(Some(s)) if token.may_read(&*state.kinds, &s.kind, s.tenant_id) => {
            Ok((StatusCode::OK, Json(status_json(&s))).into_response())
        }
        Ok(_) => Err(ApiError::NotFound(format!("no job {id}"))),
        Err(e) => Err(IngestError::from(e).into()),
    }
}

/// A webhook that did not verify or parse, logged with its provider.
fn rejection(provider: WebhookProvider, r: Rejection) -> ApiError {
    tracing::info!(provider = provider.name(), reason = %r, "webhook refused");
    match r {
        Rejection::Malformed(m) => ApiError::Malformed(format!("malformed body: {m}")),
        other => ApiError::Forged(other.to_string()),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The providers whose webhooks the shim takes, `POST /webhooks/{provider}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookProvider {
    Mailgun,
    Sendgrid,
    Stripe,
}

impl WebhookProvider {
    /// The provider named in the path, if the shim knows it.
    pub fn from_path(name: &str) -> Option<Self> {
        match name {
            "mailgun" => Some(WebhookProvider::Mailgun),
            "sendgrid" => Some(WebhookProvider::Sendgrid),
            "stripe" => Some(WebhookProvider::Stripe),
            _ => None,
        }
    }

    /// The name in the path, in `penguin.inbound_events.provider` and in `[webhooks.NAME]`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookProvider::Mailgun => "mailgun",
            WebhookProvider::Sendgrid => "sendgrid",
            WebhookProvider::Stripe => "stripe",
        }
    }

    /// The job kind that processes a stored event.
    pub fn job_kind(self) -> &'static str {
        match self {
            WebhookProvider::Mailgun => kind_names::MAILGUN_EVENT,
            WebhookProvider::Sendgrid => kind_names::SENDGRID_EVENT,
            WebhookProvider::Stripe => kind_names::STRIPE_EVENT,
        }
    }

    /// The request headers stored with each event (what the signature was checked with).
    fn signature_headers(self) -> &'static [&'static str] {
        match self {
            // Mailgun signs inside the body
            WebhookProvider::Mailgun => &[],
            WebhookProvider::Sendgrid => &[
                "x-twilio-email-event-webhook-signature",
                "x-twilio-email-event-webhook-timestamp",
            ],
            WebhookProvider::Stripe => &["stripe-signature"],
        }
    }

    /// Whether the body is exactly the (single) event: Stripe's is; Mailgun's carries the
    /// event-data and the signature; SendGrid's is a batch.
    fn body_is_the_event(self) -> bool {
        self == WebhookProvider::Stripe
    }
}

/// Checks the request's signature at `now`; returns the token the delivery must not share
/// with an earlier one (Mailgun's), recorded when its events are stored.
fn verify_webhook(
    state: &AppState,
    provider: WebhookProvider,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<Option<ReplayToken>, ApiError> {
    let not_configured =
        || ApiError::NotFound(format!("{} webhooks are not configured", provider.name()));
    let verdict = match provider {
        WebhookProvider::Stripe => {
            let secret = state.keys.stripe.as_ref().ok_or_else(not_configured)?;
            webhooks::stripe::verify(
                body,
                header(headers, "stripe-signature"),
                secret.expose_secret().as_bytes(),
                now,
            )
            .map(|()| None)
        }
        WebhookProvider::Sendgrid => {
            let key = state.keys.sendgrid.as_ref().ok_or_else(not_configured)?;
            webhooks::sendgrid::verify(
                body,
                header(headers, "x-twilio-email-event-webhook-signature"),
                header(headers, "x-twilio-email-event-webhook-timestamp"),
                key,
                now,
            )
            .map(|()| None)
        }
        WebhookProvider::Mailgun => {
            let key = state.keys.mailgun.as_ref().ok_or_else(not_configured)?;
            webhooks::mailgun::verify(body, key.expose_secret().as_bytes(), now).map(|t| {
                Some(ReplayToken {
                    provider: provider.name(),
                    token: t.token,
                })
            })
        }
    };
    verdict.map_err(|r| rejection(provider, r))
}

/// The verified body's events, as rows to store (each with its job unless filtered out).
fn inbound_rows(
    state: &AppState,
    provider: WebhookProvider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<NewInboundEvent>, ApiError> {
    let events = match provider {
        WebhookProvider::Stripe => webhooks::stripe::events(body),
        WebhookProvider::Sendgrid => webhooks::sendgrid::events(body),
        WebhookProvider::Mailgun => webhooks::mailgun::events(body),
    }
    .map_err(|r| rejection(provider, r))?;
    if events.is_empty() {
        return Err(ApiError::Malformed("malformed body: no events".into()));
    }
    let kept: serde_json::Map<String, serde_json::Value> = provider
        .signature_headers()
        .iter()
        .filter_map(|name| header(headers, name).map(|v| (name.to_string(), json!(v))))
        .collect();
    let kept = serde_json::Value::Object(kept);
    let filters = state
        .keys
        .filters
        .get(&provider)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let raws = raw_per_event(body, events.len());
    Ok(events
        .into_iter()
        .zip(raws)
        .map(|(e, raw)| NewInboundEvent {
            provider: provider.name(),
            job_kind: filters::wanted(filters, e.event_type.as_deref(), &e.payload)
                .then_some(provider.job_kind()),
            event_id: e.event_id,
            event_type: e.event_type,
            headers: kept.clone(),
            // only a body that is exactly the event can stand in for the parsed payload; a
            // cleaned payload is the only storable copy of the event
            payload: (!provider.body_is_the_event() || e.payload_cleaned).then_some(e.payload),
            raw,
        })
        .collect())
}

/// `POST /webhooks/{provider}`: verify, store each event with its job, answer after commit.
#[utoipa::path(post, path = "/webhooks/{provider}", tag = "webhooks",
    params(("provider" = String, Path, description = "mailgun, sendgrid or stripe")),
    request_body(content = serde_json::Value, description = "the provider's event(s), signed as the provider signs them"),
    responses(
        (status = 200, description = "stored (after commit)", body = WebhookAnswer),
        (status = 400, description = "a body that is not the provider's format", body = error::ErrorBody),
        (status = 401, description = "the signature, timestamp or token does not verify", body = error::ErrorBody),
        (status = 404, description = "an unknown provider, or one without its webhook key", body = error::ErrorBody),
        (status = 408, description = "the body did not arrive in time", body = error::ErrorBody),
        (status = 413, description = "the body is over [http] max_body", body = error::ErrorBody),
        (status = 422, description = "an event that cannot be stored", body = error::ErrorBody),
        (status = 503, description = "the database is unavailable; the provider retries", body = error::ErrorBody)))]
async fn webhook(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let provider = WebhookProvider::from_path(&provider)
        .ok_or_else(|| ApiError::NotFound("unknown provider".into()))?;
    let answer = store_webhook(&state, provider, &headers, body).await;
    let result = match &answer {
        Ok((0, _)) => "duplicate",
        Ok(_) => "stored",
        Err(ApiError::Forged(_)) => "refused",
        Err(ApiError::Malformed(_) | ApiError::Invalid(_) | ApiError::Body(..)) => "malformed",
        Err(ApiError::NotFound(_)) => "not_configured",
        Err(ApiError::Unavailable) => "unavailable",
        Err(_) => "error",
    };
    state.metrics.webhook(provider.name(), result);
    let (new, duplicates) = answer?;
    Ok((
        StatusCode::OK,
        Json(json!({ "stored": new, "duplicates": duplicates })),
    )
        .into_response())
}

/// Verifies and stores one webhook request: how many of its events were new, and how
/// many were stored before.
async fn store_webhook(
    state: &AppState,
    provider: WebhookProvider,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(usize, usize), ApiError> {
    let body = body?;
    let token = verify_webhook(state, provider, headers, &body, (state.clock)())?;
    let rows = inbound_rows(state, provider, headers, &body)?;
    let stored = match state.ingest.submit(Work::Events(rows, token)).await? {
        Done::Events(stored) => stored,
        Done::Replayed => return Err(rejection(provider, Rejection::Replayed)),
        Done::Job(_) => return Err(ApiError::Internal),
    };
    let new = stored.iter().filter(|s| s.is_some()).count();
    Ok((new, stored.len() - new))
}

/// The raw bytes stored with each of a request's `n` events: the whole body for a
/// single event, and for a batch (SendGrid posts a JSON array) each element's own bytes
/// exactly as received, so a batch of a thousand events is not stored a thousand times.
fn raw_per_event(body: &[u8], n: usize) -> Vec<Vec<u8>> {
    if n == 1 {
        return vec![body.to_vec()];
    }
    match serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
        Ok(elements) if elements.len() == n => elements
            .into_iter()
            .map(|e| e.get().as_bytes().to_vec())
            .collect(),
        // the parser that found the events disagrees: keep the whole body on each
        _ => vec![body.to_vec(); n],
    }
}
