//! The handlers of `/v1` on the admin listener: one per route, each a call into `queue/`,
//! `credentials/` or `scheduler` and its answer as JSON. Lists are newest first, `limit`
//! (default 50, at most 1000) per page, and `before` (the `next_before` of the page before)
//! for the next one.

use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Actor, AdminState};
use crate::http::ApiError;
use crate::queue;

/// Rows per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;
/// The most rows a page may ask for.
pub const MAX_PAGE: i64 = 1000;
/// The most dead letters one `POST /v1/dead-letters/replay` replays (default 1000); the
/// answer says when more are left.
pub const MAX_REPLAY: usize = 10_000;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/queues", get(list_queues))
        .route("/v1/queues/{queue}/pause", post(pause_queue))
        .route("/v1/queues/{queue}/resume", post(resume_queue))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route(
            "/v1/dead-letters",
            get(list_dead_letters).delete(purge_dead_letters),
        )
        .route("/v1/dead-letters/replay", post(replay_dead_letters))
        .route("/v1/dead-letters/{id}", get(show_dead_letter))
        .route("/v1/dead-letters/{id}/replay", post(replay_dead_letter))
        .route("/v1/integrations", get(list_integrations))
        .route("/v1/alerts", get(list_alerts))
        .route("/v1/alerts/{id}/acknowledge", post(acknowledge_alert))
        .route("/v1/schedules", get(list_schedules))
        .route("/v1/schedules/{name}/pause", post(pause_schedule))
        .route("/v1/schedules/{name}/resume", post(resume_schedule))
}

/// The query string as `T`; a bad one is 422 naming the parameter.
fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::Invalid(e.body_text()))
}

/// A path id: a positive integer, else 404 (no row has that id).
fn id_of(what: &str, text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("no {what} {text:?}: ids are positive integers")))
}

/// `limit` checked: 1..=[`MAX_PAGE`], default [`DEFAULT_PAGE`].
fn page(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::Invalid(format!(
            "limit: {n} is not between 1 and {MAX_PAGE}"
        ))),
    }
}

/// A page of `items` and the `before` of the next page (`None` on the last one).
fn page_of<T: serde::Serialize>(items: Vec<T>, limit: i64, key: impl Fn(&T) -> i64) -> Response {
    let next = (items.len() as i64 >= limit)
        .then(|| items.last().map(&key))
        .flatten();
    Json(json!({ "items": items, "next_before": next })).into_response()
}

/// `GET /v1/stats`: every queue's depth per live state, dead letters not replayed, the
/// oldest due job's age, and totals; at most `[admin] stats_interval` old.
async fn stats(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let snapshot = state.stats.snapshot().await?;
    let mut totals = json!({});
    for field in [
        "available",
        "scheduled",
        "running",
        "retryable",
        "dead_letters",
    ] {
        let sum: i64 = snapshot
            .queues
            .iter()
            .map(|q| match field {
                "available" => q.available,
                "scheduled" => q.scheduled,
                "running" => q.running,
                "retryable" => q.retryable,
                _ => q.dead_letters,
            })
            .sum();
        totals[field] = json!(sum);
    }
    Ok(Json(json!({
        "taken_at": snapshot.taken_at,
        "took_ms": snapshot.took_ms,
        "totals": totals,
        "queues": snapshot.queues,
    }))
    .into_response())
}

/// `GET /v1/queues`: each queue's depth and whether it is paused.
async fn list_queues(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let snapshot = state.stats.snapshot().await?;
    let paused = queue::paused_queues(&state.pool).await?;
    Ok(Json(json!({ "items": snapshot.queues, "paused": paused })).into_response())
}

/// `POST /v1/queues/{queue}/pause`: no daemon claims from it until resumed (jobs already
/// claimed finish). 200 `{"queue", "paused": true, "changed"}`.
async fn pause_queue(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let changed = queue::pause_queue(&state.pool, &name, &actor.0).await?;
    if changed {
        tracing::info!(queue = %name, by = %actor.0, "queue paused");
    }
    Ok(Json(json!({ "queue": name, "paused": true, "changed": changed })).into_response())
}

/// `POST /v1/queues/{queue}/resume`.
async fn resume_queue(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let changed = queue::resume_queue(&state.pool, &name).await?;
    if changed {
        tracing::info!(queue = %name, by = %actor.0, "queue resumed");
    }
    Ok(Json(json!({ "queue": name, "paused": false, "changed": changed })).into_response())
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    /// available, scheduled, running, retryable, completed, cancelled or dead.
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/jobs`: newest first; `state=dead` lists the jobs in the dead letters.
async fn list_jobs(State(state): State<AdminState>, uri: Uri) -> Result<Response, ApiError> {
    let q: JobsQuery = query(&uri)?;
    let limit = page(q.limit)?;
    let filter = queue::JobFilter {
        state: q.state,
        kind: q.kind,
        queue: q.queue,
        tenant: q.tenant,
        before: q.before,
        limit,
    };
    let jobs = queue::list_jobs(&state.pool, &filter).await?;
    Ok(page_of(jobs, limit, |j| j.id))
}

/// `GET /v1/jobs/{id}`: the whole row; a dead job (state `dead`) from its dead letter.
async fn show_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("job", &id)?;
    Ok(Json(queue::get_job(&state.pool, id).await?).into_response())
}

/// `POST /v1/jobs/{id}/cancel`: 200 with the cancelled job; 409 when it is not live.
async fn cancel_job(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("job", &id)?;
    let job = queue::cancel_job(&state.pool, id).await?;
    tracing::info!(job.id = id, by = %actor.0, "job cancelled");
    Ok(Json(job).into_response())
}

/// `POST /v1/jobs/{id}/retry`: 200 with the job, available now; a dead job is replayed
/// from its dead letter (the answer is the new job); 409 for a running job.
async fn retry_job(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("job", &id)?;
    let job = queue::retry_job(&state.pool, id).await?;
    tracing::info!(job.id = id, new_job.id = job.id, by = %actor.0, "job retried");
    Ok(Json(job).into_response())
}

/// Filters of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLettersQuery {
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    /// `false`: only those not replayed yet.
    replayed: Option<bool>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/dead-letters`: newest first.
async fn list_dead_letters(
    State(state): State<AdminState>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: DeadLettersQuery = query(&uri)?;
    let limit = page(q.limit)?;
    let filter = queue::DeadLetterFilter {
        kind: q.kind,
        queue: q.queue,
        tenant: q.tenant,
        replayed: q.replayed,
        before: q.before,
        limit,
    };
    let letters = queue::list_dead_letters(&state.pool, &filter).await?;
    Ok(page_of(letters, limit, |d| d.id))
}

/// `GET /v1/dead-letters/{id}`: the job's snapshot and its whole error history.
async fn show_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("dead letter", &id)?;
    Ok(Json(queue::get_dead_letter(&state.pool, id).await?).into_response())
}

/// `POST /v1/dead-letters/{id}/replay`: 201 `{"dead_letter", "job"}`; 409 when replayed
/// already.
async fn replay_dead_letter(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("dead letter", &id)?;
    let replayed = queue::replay_dead_letters(&state.pool, Some(&[id]), None).await?;
    let Some(r) = replayed.first() else {
        return Err(ApiError::Conflict(format!(
            "dead letter {id} could not be replayed"
        )));
    };
    tracing::info!(dead_letter = id, job.id = r.job, by = %actor.0, "dead letter replayed");
    Ok((StatusCode::CREATED, Json(r)).into_response())
}

/// Body of `POST /v1/dead-letters/replay`: which letters (not replayed yet) to replay.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReplayFilter {
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    /// The most to replay in this request (default 1000, at most 10000).
    limit: Option<usize>,
}

/// `POST /v1/dead-letters/replay`: replays the matching letters not replayed yet, oldest
/// first, in transactions of 500; `{"replayed": [..], "count", "more"}` (`more`: call
/// again for the rest).
async fn replay_dead_letters(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let filter: ReplayFilter = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayFilter::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Invalid(format!("invalid replay filter: {e}")))?
    };
    let max = match filter.limit {
        None => 1000,
        Some(n) if (1..=MAX_REPLAY).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::Invalid(format!(
                "limit: {n} is not between 1 and {MAX_REPLAY}"
            )));
        }
    };
    let matching = queue::DeadLetterFilter {
        kind: filter.kind,
        queue: filter.queue,
        tenant: filter.tenant,
        ..queue::DeadLetterFilter::default()
    };
    let (replayed, more) = queue::replay_dead_letters_matching(&state.pool, &matching, max).await?;
    tracing::info!(count = replayed.len(), more, by = %actor.0, "dead letters replayed");
    Ok(
        Json(json!({ "replayed": replayed, "count": replayed.len(), "more": more }))
            .into_response(),
    )
}

/// Query of `DELETE /v1/dead-letters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeQuery {
    /// A duration such as `7d`: dead letters older than it are deleted.
    older_than: String,
}

/// `DELETE /v1/dead-letters?older_than=7d`: `{"deleted": n}`.
async fn purge_dead_letters(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let q: PurgeQuery = query(&uri)?;
    let older_than = humantime::parse_duration(&q.older_than)
        .ok()
        .filter(|d| *d <= crate::config::YEAR.saturating_mul(100))
        .ok_or_else(|| {
            ApiError::Invalid(format!(
                "older_than: {:?} is not a duration such as 7d or 12h (at most 100y)",
                q.older_than
            ))
        })?;
    let deleted = queue::purge_dead_letters(&state.pool, older_than).await?;
    tracing::info!(deleted, older_than = %q.older_than, by = %actor.0, "dead letters purged");
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

/// `GET /v1/integrations`: each provider's row (credentials, circuit breaker, last error).
async fn list_integrations(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let rows = queue::integrations::list_integrations(&state.pool).await?;
    Ok(Json(json!({ "items": rows })).into_response())
}

/// Filters of `GET /v1/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsQuery {
    /// `open` (default) or `all`.
    state: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/alerts`: open alerts (or all with `state=all`), newest first.
async fn list_alerts(State(state): State<AdminState>, uri: Uri) -> Result<Response, ApiError> {
    let q: AlertsQuery = query(&uri)?;
    let open_only = match q.state.as_deref() {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "state: {other:?} is not open or all"
            )));
        }
    };
    let limit = page(q.limit)?;
    let alerts = crate::credentials::list_alerts(&state.pool, open_only, q.before, limit).await?;
    Ok(page_of(alerts, limit, |a| a.id))
}

/// `POST /v1/alerts/{id}/acknowledge`: 200; 404 when no open alert has this id.
async fn acknowledge_alert(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = id_of("alert", &id)?;
    if !crate::credentials::acknowledge_alert(&state.pool, id).await? {
        return Err(ApiError::NotFound(format!("no open alert {id}")));
    }
    tracing::info!(alert = id, by = %actor.0, "alert acknowledged");
    Ok(Json(json!({ "id": id, "acknowledged": true })).into_response())
}

/// `GET /v1/schedules`: every schedule with its next fire and whether it is enabled.
async fn list_schedules(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let rows = crate::scheduler::list(&state.pool)
        .await
        .map_err(schedule_error)?;
    Ok(Json(json!({ "items": rows })).into_response())
}

/// `POST /v1/schedules/{name}/pause`: fires that come due while paused are passed over.
async fn pause_schedule(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_schedule(&state, &actor, &name, false).await
}

/// `POST /v1/schedules/{name}/resume`.
async fn resume_schedule(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_schedule(&state, &actor, &name, true).await
}

async fn set_schedule(
    state: &AdminState,
    actor: &Actor,
    name: &str,
    enabled: bool,
) -> Result<Response, ApiError> {
    if name.contains('\0') {
        return Err(ApiError::NotFound(
            "no schedule with a NUL in its name".into(),
        ));
    }
    crate::scheduler::set_enabled(&state.pool, name, enabled)
        .await
        .map_err(schedule_error)?;
    tracing::info!(schedule = %name, enabled, by = %actor.0, "schedule switched");
    Ok(Json(json!({ "name": name, "enabled": enabled })).into_response())
}

fn schedule_error(e: crate::scheduler::ScheduleError) -> ApiError {
    use crate::scheduler::ScheduleError as E;
    match e {
        E::NotFound(name) => ApiError::NotFound(format!("no schedule {name:?}")),
        E::Queue(e) => e.into(),
        E::Database(e) => queue::Error::from(e).into(),
        other => {
            tracing::error!(error = %other, "schedule operation failed");
            ApiError::Internal
        }
    }
}
