//! The admin listener (`[admin] listen`, default 127.0.0.1:8081): the operators' JSON API
//! under `/v1` (jobs, dead letters, queues, schedules, alerts, integrations, stats), and
//! `/metrics` (Prometheus), `/healthz` and `/readyz`. It is never mounted on the public shim, and its bearer tokens
//! (`[admin] tokens`) are its own: a shim token opens nothing here.
//!
//! Every read and write goes through `queue/`, `credentials/` and `scheduler` (no SQL of
//! its own), on a small pool of its own with a statement timeout, so that a heavy page
//! never takes a connection a claim needs. Queue counts come from [`stats::StatsCache`]
//! (at most one reading per `[admin] stats_interval`). Connections are served by the
//! shim's accept loop ([`crate::http::serve`]) under the `[http]` timeouts.
//!
//! Must never answer `/v1` without a valid admin token, never log a token, and never
//! answer 5xx for a request's own fault (bad filter, unknown id: 4xx with a message).

mod api;
mod dashboard;
mod prometheus;
pub mod stats;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::ApiError;
use crate::http::tokens::{bearer, resolve, token_matches};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Connections of the admin listener's own pool.
pub const ADMIN_CONNECTIONS: u32 = 3;

/// The 401 of `/v1` on the admin listener when no admin token is configured.
pub const NO_ADMIN_TOKEN: &str = "no admin token is configured, so the admin API accepts no \
    request: set [admin] tokens = [\"env:NAME\"] and restart";

/// Who did an operator action, for the log: `admin:tokens[N]`.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pool: PgPool,
    tokens: Arc<Vec<(String, SecretString)>>,
    stats: Arc<stats::StatsCache>,
    ready: Readiness,
    metrics: Arc<Metrics>,
    health: Arc<HealthSettings>,
}

/// What the integrations' health is judged by: `[health]`, and the providers the config
/// names (listed even before their first call).
#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub thresholds: crate::config::HealthConfig,
    pub configured: Vec<String>,
}

impl HealthSettings {
    /// From the config: `[providers.*]` and `[oauth.providers.*]`.
    pub fn from_config(config: &Config) -> Self {
        let mut configured: Vec<String> = config
            .providers
            .configured()
            .into_iter()
            .map(String::from)
            .collect();
        configured.extend(config.oauth.providers.keys().cloned());
        Self {
            thresholds: config.health.clone(),
            configured,
        }
    }
}

impl AdminState {
    /// Resolves the admin tokens (each at least 43 characters) and opens the admin pool
    /// (lazily: a listener whose database is away still answers `/healthz`).
    /// `served_here`: the queues this daemon runs pools for.
    pub fn new(
        config: &Config,
        pool: &PgPool,
        ready: Readiness,
        served_here: BTreeSet<String>,
    ) -> Result<Self, crate::http::HttpError> {
        let tokens = config
            .admin
            .tokens
            .iter()
            .enumerate()
            .map(|(n, r)| Ok((format!("admin:tokens[{n}]"), resolve(r)?)))
            .collect::<Result<Vec<_>, crate::http::HttpError>>()?;
        let options = (*pool.connect_options()).clone().options([(
            "statement_timeout",
            format!("{}ms", config.admin.statement_timeout.as_millis()),
        )]);
        let admin_pool = PgPoolOptions::new()
            .max_connections(ADMIN_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self {
            stats: Arc::new(stats::StatsCache::new(
                admin_pool.clone(),
                config.admin.stats_interval,
                served_here,
            )),
            pool: admin_pool,
            tokens: Arc::new(tokens),
            ready,
            metrics: Metrics::new(),
            health: Arc::new(HealthSettings::from_config(config)),
        })
    }

    /// The same state rendering the daemon's `metrics` at `/metrics`.
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        Self { metrics, ..self }
    }

    /// Closes the admin pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl axum::extract::FromRef<AdminState> for Readiness {
    fn from_ref(state: &AdminState) -> Readiness {
        state.ready.clone()
    }
}

/// The security scheme of the bearer tokens.
const ADMIN_TOKEN_SCHEME: crate::http::openapi::BearerScheme =
    crate::http::openapi::BearerScheme("admin_token");

/// The admin API's OpenAPI document, before the routes add their operations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "penguin-jobs admin API",
        description = "Operators' API of a penguin-jobs daemon (the admin listener, \
            [admin] listen). Every /v1 route but /v1/openapi.json needs an admin token \
            ([admin] tokens) as a bearer token.",
    ),
    modifiers(&ADMIN_TOKEN_SCHEME),
    tags(
        (name = "queues", description = "Depth, pause and resume"),
        (name = "jobs", description = "Search, cancel, retry"),
        (name = "dead letters", description = "Browse, replay, purge"),
        (name = "schedules"), (name = "alerts"), (name = "integrations"),
        (name = "probes", description = "Liveness, readiness, metrics: no token"),
    )
)]
struct AdminDoc;

/// The routes without a token, each with its OpenAPI operation.
fn probes() -> utoipa_axum::router::OpenApiRouter<AdminState> {
    utoipa_axum::router::OpenApiRouter::with_openapi(<AdminDoc as utoipa::OpenApi>::openapi())
        .routes(utoipa_axum::routes!(crate::readiness::healthz))
        .routes(utoipa_axum::routes!(crate::readiness::readyz))
        .routes(utoipa_axum::routes!(prometheus::metrics))
}

/// Every admin route, the `/v1` ones behind the token.
fn api(state: &AdminState) -> utoipa_axum::router::OpenApiRouter<AdminState> {
    probes().merge(api::routes().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_token,
    )))
}

/// The admin API's OpenAPI document (`penguin-jobs openapi --admin` prints it; the admin
/// listener serves it at `/v1/openapi.json`, without a token).
pub fn document() -> serde_json::Value {
    let doc = probes().merge(api::routes()).into_openapi();
    crate::http::openapi::finish(doc, env!("CARGO_PKG_VERSION"))
}

/// The admin listener's routes.
pub fn router(state: AdminState) -> Router {
    let doc = Arc::new(document());
    api(&state)
        .with_state(state)
        .split_for_parts()
        .0
        .route(
            crate::http::openapi::PATH,
            get(move || crate::http::openapi::serve(doc.clone())),
        )
        .merge(dashboard::routes())
}

/// Serves the admin routes on `listener` until `shutdown` (the `[http]` connection limits
/// and timeouts apply).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AdminState,
    limits: &crate::config::HttpConfig,
    shutdown: CancellationToken,
) {
    crate::http::serve::serve(listener, router(state.clone()), limits, shutdown).await;
    state.close().await;
}

/// Lets a request with a valid admin token through, naming its holder ([`Actor`]).
async fn require_token(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.tokens.is_empty() {
        return Err(ApiError::NoTokenConfigured(NO_ADMIN_TOKEN));
    }
    let given = bearer(request.headers()).ok_or(ApiError::Unauthorized)?;
    let mut holder = None;
    for (name, secret) in state.tokens.iter() {
        if token_matches(secret, given) {
            holder = Some(name.clone());
        }
    }
    let holder = holder.ok_or(ApiError::Unauthorized)?;
    request.extensions_mut().insert(Actor(holder));
    Ok(next.run(request).await)
}
