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
//! stored (its parsed copy made storable by [`webhooks`]).

pub mod filters;
pub mod ingest;
pub mod oauth;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, WebhookFilter, resolve_secret_ref};
use crate::jobs::Registry;
use crate::queue::{NewInboundEvent, NewJob};
use crate::webhooks::{self, Rejection};
use ingest::{Done, Ingest, IngestError, Work};

/// Errors at start (bad keys, address in use).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Key(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Webhook keys, resolved and parsed once at start, and each provider's filters.
struct Keys {
    mailgun: Option<SecretString>,
    sendgrid: Option<webhooks::sendgrid::PublicKey>,
    stripe: Option<SecretString>,
    filters: HashMap<&'static str, Vec<WebhookFilter>>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    registry: Arc<Registry>,
    /// For `wait`, `GET /v1/jobs/{id}` (reads) and the OAuth callback's single statement
    /// (state check and enqueue); webhook and job writes go through `ingest`.
    pool: PgPool,
    tokens: Arc<Vec<SecretString>>,
    keys: Arc<Keys>,
    ingest: Ingest,
    /// Mailgun tokens seen in the last replay window, with their timestamps.
    mailgun_tokens: Arc<Mutex<SeenTokens>>,
    /// Unix seconds now; a function so tests can move the clock.
    clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Seals the OAuth callback's authorization code; `None` without a master key.
    keyring: Option<Arc<crate::secrets::Keyring>>,
}

impl AppState {
    /// Resolves the tokens and keys of `config` and starts the group-commit writers.
    pub fn new(config: &Config, pool: PgPool, registry: Arc<Registry>) -> Result<Self, HttpError> {
        let tokens = config
            .http
            .api_tokens
            .iter()
            .map(|t| resolve_secret_ref("http.api_tokens", t))
            .collect::<Result<Vec<_>, _>>()?;
        let p = &config.providers;
        let secret =
            |key: &str, r: Option<&String>| r.map(|r| resolve_secret_ref(key, r)).transpose();
        let sendgrid = match secret(
            "providers.sendgrid.webhook_public_key",
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
                "providers.mailgun.webhook_signing_key",
                p.mailgun
                    .as_ref()
                    .and_then(|m| m.webhook_signing_key.as_ref()),
            )?,
            sendgrid,
            stripe: secret(
                "providers.stripe.webhook_secret",
                p.stripe.as_ref().and_then(|s| s.webhook_secret.as_ref()),
            )?,
            filters: HashMap::from([
                (
                    "mailgun",
                    p.mailgun
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
                (
                    "sendgrid",
                    p.sendgrid
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
                (
                    "stripe",
                    p.stripe
                        .as_ref()
                        .map(|m| m.filters.clone())
                        .unwrap_or_default(),
                ),
            ]),
        };
        Ok(Self {
            registry,
            tokens: Arc::new(tokens),
            keys: Arc::new(keys),
            ingest: Ingest::start(pool.clone(), 6),
            pool,
            mailgun_tokens: Arc::new(Mutex::new(SeenTokens::default())),
            clock: Arc::new(|| chrono::Utc::now().timestamp()),
            keyring: crate::secrets::Keyring::from_config(config)
                .map_err(|e| HttpError::Key(e.to_string()))?
                .map(Arc::new),
        })
    }

    /// The same state with another clock (tests).
    pub fn with_clock(self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Self {
            clock: Arc::new(clock),
            ..self
        }
    }
}

/// The shim's routes.
pub fn router(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/jobs", post(create_job))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/webhooks/{provider}", post(webhook))
        .route("/oauth/callback/{provider}", get(oauth::callback))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Serves the shim on `config.http.listen` until `shutdown`.
pub async fn serve(
    config: &Config,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    let addr = &config.http.listen;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(listen = %addr, "HTTP shim listening");
    serve_on(listener, state, config.http.max_body, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    max_body: usize,
    shutdown: CancellationToken,
) -> Result<(), HttpError> {
    use axum::serve::ListenerExt;
    let app = router(state, max_body).into_make_service_with_connect_info::<SocketAddr>();
    // answers are small: send them at once instead of waiting for Nagle's algorithm
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| HttpError::Bind {
            addr: "listener".into(),
            source,
        })
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn ingest_error(e: IngestError) -> Response {
    match e {
        IngestError::Unavailable(m) => {
            tracing::warn!(error = %m, "database unavailable; answering 503");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable, retry later",
            )
        }
        IngestError::Rejected(m) => error(StatusCode::UNPROCESSABLE_ENTITY, m),
        IngestError::Internal(m) => {
            tracing::error!(error = %m, "ingest failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

fn bearer_ok(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // compare against every token, in constant time per token
    let mut ok = subtle::Choice::from(0);
    for t in state.tokens.iter() {
        let expected = t.expose_secret().as_bytes();
        if expected.len() == token.len() {
            ok |= expected.ct_eq(token.as_bytes());
        }
    }
    ok.into()
}

/// Longest `"wait"` a request may ask for.
pub const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `POST /v1/jobs`: 202 `{"id"}` for a new job, 200 `{"id"}` for the live job holding the
/// same unique key, 401 without a valid token, 422 for an unknown kind or a bad payload.
/// With `"wait": "10s"` (at most 60 s), the answer comes once the job is final: 200 with
/// its state and result; or at the timeout: 202 with its id and current state, to poll at
/// `GET /v1/jobs/{id}`.
async fn create_job(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !bearer_ok(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let mut value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid job: {e}"),
            );
        }
    };
    let wait = match value.as_object_mut().and_then(|o| o.remove("wait")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => match humantime::parse_duration(&text) {
            Ok(d) if d <= MAX_WAIT => Some(d),
            Ok(_) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "wait: at most 60s; poll GET /v1/jobs/{id} for longer",
                );
            }
            Err(e) => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("wait: {text:?} is not a duration like \"10s\": {e}"),
                );
            }
        },
        Some(_) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "wait: give a duration like \"10s\"",
            );
        }
    };
    let job: NewJob = match serde_json::from_value(value) {
        Ok(job) => job,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("invalid job: {e}"),
            );
        }
    };
    // names the field at fault, NUL and lengths the database would refuse included
    if let Err(e) = job.validate() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    }
    if let Err(e) = state.registry.check(&job) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    }
    let enqueued = match state.ingest.submit(Work::Job(job)).await {
        Ok(Done::Job(e)) => e,
        Ok(Done::Events(_)) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        Err(e) => return ingest_error(e),
    };
    let Some(wait) = wait else {
        let status = if enqueued.created {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        };
        return (status, axum::Json(json!({ "id": enqueued.id }))).into_response();
    };
    match crate::queue::wait_for_job(&state.pool, enqueued.id, wait).await {
        Ok(Some(s)) if s.is_final() => {
            (StatusCode::OK, axum::Json(status_json(&s))).into_response()
        }
        Ok(Some(s)) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "id": s.id, "state": s.state })),
        )
            .into_response(),
        // completed and deleted at once (`[retention] completed = "0s"`): no result kept
        Ok(None) => (
            StatusCode::OK,
            axum::Json(json!({ "id": enqueued.id, "state": "completed", "result": null })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(job.id = enqueued.id, error = %e, "could not read the job while waiting");
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "id": enqueued.id })),
            )
                .into_response()
        }
    }
}

fn status_json(s: &crate::queue::JobStatus) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or_else(|_| json!({ "id": s.id, "state": s.state }))
}

/// `GET /v1/jobs/{id}`: the job's state, result and errors (`dead` once dead-lettered);
/// 404 when no job or dead letter has this id.
async fn show_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&state, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
    }
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "job ids are integers");
    };
    match crate::queue::job_status(&state.pool, id).await {
        Ok(Some(s)) => (StatusCode::OK, axum::Json(status_json(&s))).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no job {id}")),
        Err(e) => ingest_error(e.into()),
    }
}

fn rejection(provider: &str, r: Rejection) -> Response {
    tracing::info!(provider, reason = %r, "webhook refused");
    match r {
        Rejection::Malformed(m) => error(StatusCode::BAD_REQUEST, format!("malformed body: {m}")),
        other => error(StatusCode::UNAUTHORIZED, other.to_string()),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/{provider}`: verify, store each event with its job, answer after commit.
async fn webhook(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let now = (state.clock)();
    let (provider, kind, kept_headers, verdict): (
        &'static str,
        &'static str,
        Vec<&str>,
        Result<(), Rejection>,
    ) = match provider.as_str() {
        "stripe" => {
            let Some(secret) = &state.keys.stripe else {
                return error(StatusCode::NOT_FOUND, "stripe webhooks are not configured");
            };
            let v = webhooks::stripe::verify(
                &body,
                header(&headers, "stripe-signature"),
                secret.expose_secret().as_bytes(),
                now,
            );
            ("stripe", "stripe.event", vec!["stripe-signature"], v)
        }
        "sendgrid" => {
            let Some(key) = &state.keys.sendgrid else {
                return error(
                    StatusCode::NOT_FOUND,
                    "sendgrid webhooks are not configured",
                );
            };
            let v = webhooks::sendgrid::verify(
                &body,
                header(&headers, "x-twilio-email-event-webhook-signature"),
                header(&headers, "x-twilio-email-event-webhook-timestamp"),
                key,
                now,
            );
            (
                "sendgrid",
                "sendgrid.event",
                vec![
                    "x-twilio-email-event-webhook-signature",
                    "x-twilio-email-event-webhook-timestamp",
                ],
                v,
            )
        }
        "mailgun" => {
            let Some(key) = &state.keys.mailgun else {
                return error(StatusCode::NOT_FOUND, "mailgun webhooks are not configured");
            };
            let v = webhooks::mailgun::verify(&body, key.expose_secret().as_bytes(), now).and_then(
                |token| remember_mailgun_token(&state, token.token, token.timestamp, now),
            );
            ("mailgun", "mailgun.event", vec![], v)
        }
        _ => return error(StatusCode::NOT_FOUND, "unknown provider"),
    };
    if let Err(r) = verdict {
        return rejection(provider, r);
    }
    let events = match provider {
        "stripe" => webhooks::stripe::events(&body),
        "sendgrid" => webhooks::sendgrid::events(&body),
        _ => webhooks::mailgun::events(&body),
    };
    let events = match events {
        Ok(events) if !events.is_empty() => events,
        Ok(_) => return error(StatusCode::BAD_REQUEST, "malformed body: no events"),
        Err(r) => return rejection(provider, r),
    };
    let kept: serde_json::Map<String, serde_json::Value> = kept_headers
        .into_iter()
        .filter_map(|name| header(&headers, name).map(|v| (name.to_string(), json!(v))))
        .collect();
    let kept = serde_json::Value::Object(kept);
    let filters = state
        .keys
        .filters
        .get(provider)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let raws = raw_per_event(&body, events.len());
    // Stripe's body is its event; Mailgun's carries the event-data and the signature:
    // only a body that is exactly the event can stand in for the parsed payload
    let raw_is_event = provider == "stripe";
    let rows: Vec<NewInboundEvent> = events
        .into_iter()
        .zip(raws)
        .map(|(e, raw)| NewInboundEvent {
            provider,
            job_kind: filters::wanted(filters, e.event_type.as_deref(), &e.payload).then_some(kind),
            event_id: e.event_id,
            event_type: e.event_type,
            headers: kept.clone(),
            // a cleaned payload is the only storable copy of the event
            payload: (!raw_is_event || e.payload_cleaned).then_some(e.payload),
            raw,
        })
        .collect();
    match state.ingest.submit(Work::Events(rows)).await {
        Ok(Done::Events(stored)) => {
            let new = stored.iter().filter(|s| s.is_some()).count();
            (
                StatusCode::OK,
                axum::Json(json!({ "stored": new, "duplicates": stored.len() - new })),
            )
                .into_response()
        }
        Ok(Done::Job(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        Err(e) => ingest_error(e),
    }
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

/// Refuses a Mailgun token already seen within the replay window (the signature covers
/// timestamp and token only, so a captured request could otherwise be replayed).
fn remember_mailgun_token(
    state: &AppState,
    token: String,
    timestamp: i64,
    now: i64,
) -> Result<(), Rejection> {
    let mut seen = state.mailgun_tokens.lock().expect("token cache lock");
    seen.forget_older_than(now - webhooks::REPLAY_WINDOW_SECS);
    if seen.by_token.contains_key(&token) {
        return Err(Rejection::Replayed);
    }
    seen.by_token.insert(token.clone(), timestamp);
    seen.in_order.push_back((timestamp, token));
    Ok(())
}

/// Mailgun tokens seen within the replay window: a map to look them up, and a queue in
/// arrival order to forget the old ones without scanning the map on every request.
#[derive(Default)]
struct SeenTokens {
    by_token: HashMap<String, i64>,
    in_order: std::collections::VecDeque<(i64, String)>,
}

impl SeenTokens {
    fn forget_older_than(&mut self, cutoff: i64) {
        while self.in_order.front().is_some_and(|(ts, _)| *ts < cutoff) {
            if let Some((_, token)) = self.in_order.pop_front() {
                self.by_token.remove(&token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_tokens_are_forgotten_once_out_of_the_window() {
        let mut seen = SeenTokens::default();
        for (ts, token) in [(100, "a"), (200, "b"), (300, "c")] {
            seen.by_token.insert(token.into(), ts);
            seen.in_order.push_back((ts, token.into()));
        }
        seen.forget_older_than(200);
        assert!(!seen.by_token.contains_key("a"));
        assert!(seen.by_token.contains_key("b") && seen.by_token.contains_key("c"));
        assert_eq!(seen.in_order.len(), 2);
    }
}
