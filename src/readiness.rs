//! Liveness and readiness, as both listeners answer them: `/healthz` says the process
//! runs (it touches nothing), `/readyz` that this daemon can do its work now: the database
//! answers, its schema is the one this binary expects, the worker pools have started (when
//! this daemon runs any), and it is not shutting down.
//!
//! Must never hold a connection longer than one probe, and never block a probe longer
//! than [`PROBE_TIMEOUT`]: a load balancer that waits marks the daemon down anyway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;

/// The longest a readiness probe waits for the database.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks; shared by the shim, the admin listener and the runtime.
#[derive(Clone)]
pub struct Readiness {
    pool: PgPool,
    inner: Arc<Flags>,
}

struct Flags {
    /// Whether this daemon runs worker pools (else they are not waited for).
    expects_pools: bool,
    pools_started: AtomicBool,
    stopping: AtomicBool,
    /// Rung when the pools start.
    started: tokio::sync::Notify,
}

impl Readiness {
    /// Readiness of a daemon working on `pool`; `expects_pools` when it runs workers.
    pub fn new(pool: PgPool, expects_pools: bool) -> Self {
        Self {
            pool,
            inner: Arc::new(Flags {
                expects_pools,
                pools_started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                started: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The worker pools have started.
    pub fn pools_started(&self) {
        self.inner.pools_started.store(true, Ordering::Relaxed);
        self.inner.started.notify_waiters();
    }

    /// Returns once the pools have started (at once for a daemon without pools).
    pub async fn wait_started(&self) {
        loop {
            let notified = self.inner.started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.inner.expects_pools || self.inner.pools_started.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Shutdown began: not ready any more (load balancers move traffic away while the
    /// daemon drains).
    pub fn stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not (a sentence for the operator; never a secret: the
    /// database error is classified, not echoed).
    pub async fn check(&self) -> Result<(), String> {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.inner.expects_pools && !self.inner.pools_started.load(Ordering::Relaxed) {
            return Err("worker pools not started yet".into());
        }
        match tokio::time::timeout(PROBE_TIMEOUT, crate::queue::check_migrated(&self.pool)).await {
            Err(_) => Err(format!(
                "the database did not answer within {}",
                humantime::format_duration(PROBE_TIMEOUT)
            )),
            Ok(Err(e)) if e.is_transient() => Err("the database is unreachable".into()),
            Ok(Err(e @ crate::queue::Error::Invalid(_))) => Err(e.to_string()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness check failed");
                Err("the schema could not be checked (see the daemon's log)".into())
            }
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// The answer of `/healthz` and `/readyz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Probe {
    /// `ok` (`/healthz`), `ready` or `not_ready` (`/readyz`).
    pub status: &'static str,
    /// Why not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The process runs (no token; touches nothing).
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "the process runs", body = Probe)))]
pub async fn healthz() -> axum::Json<Probe> {
    axum::Json(Probe {
        status: "ok",
        reason: None,
    })
}

/// Whether this daemon can work now: the database answers, the schema is current, the
/// pools run and no shutdown began (no token).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, description = "ready", body = Probe),
        (status = 503, description = "not ready, and why", body = Probe)))]
pub async fn readyz(
    axum::extract::State(ready): axum::extract::State<Readiness>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match ready.check().await {
        Ok(()) => axum::Json(Probe {
            status: "ready",
            reason: None,
        })
        .into_response(),
        Err(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(Probe {
                status: "not_ready",
                reason: Some(reason),
            }),
        )
            .into_response(),
    }
}
