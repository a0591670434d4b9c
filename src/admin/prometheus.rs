//! `GET /metrics`: the daemon's own counters ([`crate::metrics::Metrics`]) and the gauges
//! every daemon sees alike, read at scrape time from the shared queue counts (at most one
//! reading per `[admin] stats_interval`) and the providers' rows (a handful): queue depth
//! per state, oldest due job, dead letters, pauses, circuit states, refused credentials.
//!
//! Must never read the database more than those two cheap reads per scrape.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::metrics::{QueueSample, Sampled};
use crate::queue;

/// Prometheus metrics in the text format (no token: keep the admin listener on a private
/// address). A database that does not answer leaves the sampled gauges out (the daemon's
/// own counters are still answered) and sets `penguin_jobs_stats_up 0`.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)))]
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    let mut text = String::with_capacity(16 * 1024);
    let sampled = Sampled::default();
    let mut up = true;
    match state.stats.snapshot().await {
        Ok(snapshot) => {
            for q in &snapshot.queues {
                sampled.queue(&QueueSample {
                    queue: &q.queue,
                    available: q.available,
                    scheduled: q.scheduled,
                    running: q.running,
                    retryable: q.retryable,
                    dead_letters: q.dead_letters,
                    oldest_due_age_seconds: q.oldest_due_age_seconds.unwrap_or(0.0),
                    paused: q.paused,
                });
            }
            let age = (chrono::Utc::now() - snapshot.taken_at).num_milliseconds();
            sampled.age(age.max(0) as f64 / 1000.0);
        }
        Err(e) => {
            up = false;
            tracing::debug!(error = %e, "/metrics: queue counts unavailable");
        }
    }
    match queue::integrations::list_integrations(&state.pool).await {
        Ok(rows) => {
            for r in rows {
                sampled.provider(&r.provider, &r.breaker, r.status == "error");
            }
        }
        Err(e) => {
            up = false;
            tracing::debug!(error = %e, "/metrics: provider rows unavailable");
        }
    }
    let encoded = state
        .metrics
        .encode(&mut text)
        .and_then(|()| sampled.encode(&mut text));
    if encoded.is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    text.push_str(
        "# HELP penguin_jobs_stats_up 1 when the database answered this scrape's reads.\n\
         # TYPE penguin_jobs_stats_up gauge\n",
    );
    text.push_str(if up {
        "penguin_jobs_stats_up 1\n"
    } else {
        "penguin_jobs_stats_up 0\n"
    });
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}
