//! The handlers of `/v1` on the admin listener: one per route, each a call into `queue/`,
//! `credentials/` or `scheduler` and its answer as JSON. Lists are newest first, `limit`
//! (default 50, at most 1000) per page, and `before` (the `next_before` of the page before)
//! for the next one.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::stats::QueueSummary;
use super::{Actor, AdminState};
use crate::credentials::AlertRow;
use crate::health;
use crate::http::ApiError;
use crate::http::error::ErrorBody;
use crate::queue::integrations::Integration;
use crate::queue::{self, DeadLetter, Job, QueuePause, Replayed};
use crate::scheduler::ScheduleRow;

/// Rows per page when `limit` is not given.
pub const DEFAULT_PAGE: i64 = 50;
/// The most rows a page may ask for.
pub const MAX_PAGE: i64 = 1000;
/// The most dead letters one `POST /v1/dead-letters/replay` replays (default 1000); the
/// answer says when more are left.
pub const MAX_REPLAY: usize = 10_000;

/// The `/v1` routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(stats))
        .routes(routes!(list_queues))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(list_jobs))
        .routes(routes!(show_job))
        .routes(routes!(cancel_job))
        .routes(routes!(retry_job))
        .routes(routes!(list_dead_letters, purge_dead_letters))
        .routes(routes!(replay_dead_letters))
        .routes(routes!(show_dead_letter))
        .routes(routes!(replay_dead_letter))
        .routes(routes!(list_integrations))
        .routes(routes!(history))
        .routes(routes!(list_alerts))
        .routes(routes!(acknowledge_alert))
        .routes(routes!(list_schedules))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<Job>,
    /// Pass as `before` for the next page; null on the last one.
    pub next_before: Option<i64>,
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    /// Pass as `before` for the next page; null on the last one.
    pub next_before: Option<i64>,
}

/// A page of alerts.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertPage {
    pub items: Vec<AlertRow>,
    /// Pass as `before` for the next page; null on the last one.
    pub next_before: Option<i64>,
}

/// Totals over every queue.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Totals {
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retryable: i64,
    pub dead_letters: i64,
}

/// `GET /v1/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsAnswer {
    pub taken_at: chrono::DateTime<chrono::Utc>,
    /// How long reading the counts took (milliseconds).
    pub took_ms: f64,
    pub totals: Totals,
    pub queues: Vec<QueueSummary>,
}

/// `GET /v1/queues`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    pub items: Vec<QueueSummary>,
    pub paused: Vec<QueuePause>,
}

/// A queue paused or resumed.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSwitched {
    pub queue: String,
    pub paused: bool,
    /// False when it already was.
    pub changed: bool,
}

/// `POST /v1/dead-letters/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayAnswer {
    pub replayed: Vec<Replayed>,
    pub count: usize,
    /// More matching letters are left: call again.
    pub more: bool,
}

/// `DELETE /v1/dead-letters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Purged {
    pub deleted: u64,
}

/// `GET /v1/integrations`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationList {
    pub summary: health::Summary,
    pub items: Vec<health::IntegrationHealth>,
}

/// `GET /v1/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<ScheduleRow>,
}

/// A schedule paused or resumed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleSwitched {
    pub name: String,
    pub enabled: bool,
}

/// An alert acknowledged.
#[derive(Debug, Serialize, ToSchema)]
pub struct Acknowledged {
    pub id: i64,
    pub acknowledged: bool,
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

/// The `before` of the page after `items` (`None` on the last one).
fn next_before<T>(items: &[T], limit: i64, key: impl Fn(&T) -> i64) -> Option<i64> {
    (items.len() as i64 >= limit)
        .then(|| items.last().map(&key))
        .flatten()
}

/// The responses every `/v1` route may give besides its own (documentation only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Refusals {
    /// No valid admin token (or none configured).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The database is unavailable, or did not answer within `[admin]
    /// statement_timeout`; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Every queue's depth per live state, dead letters not replayed, the oldest due job's
/// age, and totals; at most `[admin] stats_interval` old.
#[utoipa::path(get, path = "/v1/stats", tag = "queues", security(("admin_token" = [])),
    responses((status = 200, body = StatsAnswer), Refusals))]
async fn stats(State(state): State<AdminState>) -> Result<Json<StatsAnswer>, ApiError> {
    let snapshot = state.stats.snapshot().await?;
    let mut totals = Totals::default();
    for q in &snapshot.queues {
        totals.available += q.available;
        totals.scheduled += q.scheduled;
        totals.running += q.running;
        totals.retryable += q.retryable;
        totals.dead_letters += q.dead_letters;
    }
    Ok(Json(StatsAnswer {
        taken_at: snapshot.taken_at,
        took_ms: snapshot.took_ms,
        totals,
        queues: snapshot.queues.clone(),
    }))
}

/// Each queue's depth and whether it is paused.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", security(("admin_token" = [])),
    responses((status = 200, body = QueueList), Refusals))]
async fn list_queues(State(state): State<AdminState>) -> Result<Json<QueueList>, ApiError> {
    let snapshot = state.stats.snapshot().await?;
    let paused = queue::paused_queues(&state.pool).await?;
    Ok(Json(QueueList {
        items: snapshot.queues.clone(),
        paused,
    }))
}

/// Pauses a queue: no daemon claims from it until resumed (jobs already claimed finish).
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "queues",
    security(("admin_token" = [])), params(("queue" = String, Path, description = "queue name")),
    responses((status = 200, body = QueueSwitched),
        (status = 422, description = "not a queue name", body = ErrorBody), Refusals))]
async fn pause_queue(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<QueueSwitched>, ApiError> {
    let changed = queue::pause_queue(&state.pool, &name, &actor.0).await?;
    if changed {
        tracing::info!(queue = %name, by = %actor.0, "queue paused");
    }
    Ok(Json(QueueSwitched {
        queue: name,
        paused: true,
        changed,
    }))
}

/// Resumes a paused queue and wakes the pools serving it.
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "queues",
    security(("admin_token" = [])), params(("queue" = String, Path, description = "queue name")),
    responses((status = 200, body = QueueSwitched),
        (status = 422, description = "not a queue name", body = ErrorBody), Refusals))]
async fn resume_queue(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<QueueSwitched>, ApiError> {
    let changed = queue::resume_queue(&state.pool, &name).await?;
    if changed {
        tracing::info!(queue = %name, by = %actor.0, "queue resumed");
    }
    Ok(Json(QueueSwitched {
        queue: name,
        paused: false,
        changed,
    }))
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobsQuery {
    /// available, scheduled, running, retryable, completed, cancelled or dead (the jobs in
    /// the dead letters).
    state: Option<String>,
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    /// The `next_before` of the page before.
    before: Option<i64>,
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Jobs, newest first; `state=dead` lists the jobs in the dead letters.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", security(("admin_token" = [])),
    params(JobsQuery),
    responses((status = 200, body = JobPage),
        (status = 422, description = "a filter is invalid", body = ErrorBody), Refusals))]
async fn list_jobs(State(state): State<AdminState>, uri: Uri) -> Result<Json<JobPage>, ApiError> {
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
    let items = queue::list_jobs(&state.pool, &filter).await?;
    let next_before = next_before(&items, limit, |j| j.id);
    Ok(Json(JobPage { items, next_before }))
}

/// One job, the whole row; a dead job (state `dead`) from its dead letter.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", security(("admin_token" = [])),
    params(("id" = i64, Path, description = "job id")),
    responses((status = 200, body = Job),
        (status = 404, description = "no such job", body = ErrorBody), Refusals))]
async fn show_job(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = id_of("job", &id)?;
    Ok(Json(queue::get_job(&state.pool, id).await?))
}

/// Cancels a live job (a running one's outcome is then dropped).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    security(("admin_token" = [])), params(("id" = i64, Path, description = "job id")),
    responses((status = 200, description = "the cancelled job", body = Job),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "the job is not live", body = ErrorBody), Refusals))]
async fn cancel_job(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = id_of("job", &id)?;
    let job = queue::cancel_job(&state.pool, id).await?;
    tracing::info!(job.id = id, by = %actor.0, "job cancelled");
    Ok(Json(job))
}

/// Runs a job again now; a dead job is replayed from its dead letter (the answer is the
/// new job).
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    security(("admin_token" = [])), params(("id" = i64, Path, description = "job id")),
    responses((status = 200, description = "the job, available now", body = Job),
        (status = 404, description = "no such job", body = ErrorBody),
        (status = 409, description = "running, replayed already, or its unique key is taken",
            body = ErrorBody), Refusals))]
async fn retry_job(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = id_of("job", &id)?;
    let job = queue::retry_job(&state.pool, id).await?;
    tracing::info!(job.id = id, new_job.id = job.id, by = %actor.0, "job retried");
    Ok(Json(job))
}

/// Filters of `GET /v1/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeadLettersQuery {
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    /// `false`: only those not replayed yet; `true`: only replayed ones.
    replayed: Option<bool>,
    /// The `next_before` of the page before.
    before: Option<i64>,
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Dead letters, newest first.
#[utoipa::path(get, path = "/v1/dead-letters", tag = "dead letters",
    security(("admin_token" = [])), params(DeadLettersQuery),
    responses((status = 200, body = DeadLetterPage),
        (status = 422, description = "a filter is invalid", body = ErrorBody), Refusals))]
async fn list_dead_letters(
    State(state): State<AdminState>,
    uri: Uri,
) -> Result<Json<DeadLetterPage>, ApiError> {
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
    let items = queue::list_dead_letters(&state.pool, &filter).await?;
    let next_before = next_before(&items, limit, |d| d.id);
    Ok(Json(DeadLetterPage { items, next_before }))
}

/// One dead letter: the job's snapshot and its whole error history.
#[utoipa::path(get, path = "/v1/dead-letters/{id}", tag = "dead letters",
    security(("admin_token" = [])), params(("id" = i64, Path, description = "dead letter id")),
    responses((status = 200, body = DeadLetter),
        (status = 404, description = "no such dead letter", body = ErrorBody), Refusals))]
async fn show_dead_letter(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetter>, ApiError> {
    let id = id_of("dead letter", &id)?;
    Ok(Json(queue::get_dead_letter(&state.pool, id).await?))
}

/// Replays one dead letter as a new job (fresh attempts).
#[utoipa::path(post, path = "/v1/dead-letters/{id}/replay", tag = "dead letters",
    security(("admin_token" = [])), params(("id" = i64, Path, description = "dead letter id")),
    responses((status = 201, description = "the dead letter and its new job", body = Replayed),
        (status = 404, description = "no such dead letter", body = ErrorBody),
        (status = 409, description = "replayed already", body = ErrorBody), Refusals))]
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
    Ok((StatusCode::CREATED, Json(*r)).into_response())
}

/// Which dead letters (not replayed yet) to replay; an empty body replays all.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayFilter {
    kind: Option<String>,
    queue: Option<String>,
    tenant: Option<uuid::Uuid>,
    /// The most to replay in this request (default 1000).
    #[schema(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// Replays the matching dead letters not replayed yet, oldest first, in transactions of
/// 500; `more` says to call again for the rest.
#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "dead letters",
    security(("admin_token" = [])),
    request_body(content = Option<ReplayFilter>, content_type = "application/json"),
    responses((status = 200, body = ReplayAnswer),
        (status = 422, description = "the filter is invalid", body = ErrorBody), Refusals))]
async fn replay_dead_letters(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    body: axum::body::Bytes,
) -> Result<Json<ReplayAnswer>, ApiError> {
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
    Ok(Json(ReplayAnswer {
        count: replayed.len(),
        replayed,
        more,
    }))
}

/// Query of `DELETE /v1/dead-letters`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PurgeQuery {
    /// A duration such as `7d`: dead letters older than it are deleted.
    older_than: String,
}

/// Deletes the dead letters older than `older_than`.
#[utoipa::path(delete, path = "/v1/dead-letters", tag = "dead letters",
    security(("admin_token" = [])), params(PurgeQuery),
    responses((status = 200, body = Purged),
        (status = 422, description = "older_than is missing or not a duration", body = ErrorBody),
        Refusals))]
async fn purge_dead_letters(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    uri: Uri,
) -> Result<Json<Purged>, ApiError> {
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
    Ok(Json(Purged { deleted }))
}

/// Each integration's health (status healthy, degraded or unhealthy under `[health]`,
/// response time, error rate, requests, latency, uptime over 24 h, circuit, credentials,
/// open alerts) and a summary: every configured provider, and every provider called.
#[utoipa::path(get, path = "/v1/integrations", tag = "integrations",
    security(("admin_token" = [])),
    responses((status = 200, body = IntegrationList), Refusals))]
async fn list_integrations(
    State(state): State<AdminState>,
) -> Result<Json<IntegrationList>, ApiError> {
    Ok(Json(integrations_health(&state).await?))
}

/// The health of every integration the config names or the metrics saw.
pub(super) async fn integrations_health(
    state: &AdminState,
) -> Result<IntegrationList, queue::Error> {
    let t = &state.health.thresholds;
    let window = queue::integrations::provider_calls(&state.pool, t.window).await?;
    let day =
        queue::integrations::provider_calls(&state.pool, std::time::Duration::from_secs(86_400))
            .await?;
    let rows: Vec<Integration> = queue::integrations::list_integrations(&state.pool).await?;
    let open = crate::credentials::open_alerts_per_provider(&state.pool).await?;
    let mut names: Vec<String> = state.health.configured.clone();
    names.extend(day.iter().map(|d| d.provider.clone()));
    names.extend(rows.iter().map(|r| r.provider.clone()));
    names.sort_unstable();
    names.dedup();
    let items: Vec<health::IntegrationHealth> = names
        .iter()
        .map(|name| {
            let alerts = open
                .iter()
                .find(|(provider, _)| provider == name)
                .map_or(0, |(_, n)| *n);
            health::assess(
                name,
                window.iter().find(|w| &w.provider == name),
                day.iter().find(|d| &d.provider == name),
                rows.iter().find(|r| &r.provider == name),
                alerts,
                t,
            )
        })
        .collect();
    Ok(IntegrationList {
        summary: health::summarize(&items),
        items,
    })
}

/// Query of `GET /v1/history`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// How many minutes back (default 60, at most 1440).
    #[param(minimum = 1, maximum = 1440)]
    minutes: Option<i64>,
}

/// `GET /v1/history`.
#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Per minute and queue, oldest first: jobs finished by outcome (every daemon's) and
    /// the depth sampled that minute.
    pub items: Vec<queue::QueueMinute>,
}

/// Each queue's last minutes: throughput, failures and depth, for the dashboard's charts.
#[utoipa::path(get, path = "/v1/history", tag = "queues", security(("admin_token" = [])),
    params(HistoryQuery),
    responses((status = 200, body = History),
        (status = 422, description = "minutes out of range", body = ErrorBody), Refusals))]
async fn history(State(state): State<AdminState>, uri: Uri) -> Result<Json<History>, ApiError> {
    let q: HistoryQuery = query(&uri)?;
    let minutes = match q.minutes {
        None => 60,
        Some(m) if (1..=1440).contains(&m) => m,
        Some(m) => {
            return Err(ApiError::Invalid(format!(
                "minutes: {m} is not between 1 and 1440"
            )));
        }
    };
    Ok(Json(History {
        items: queue::queue_minutes(&state.pool, minutes).await?,
    }))
}

/// Filters of `GET /v1/alerts`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct AlertsQuery {
    /// `open` (default) or `all`.
    #[param(pattern = "^(open|all)$")]
    state: Option<String>,
    /// The `next_before` of the page before.
    before: Option<i64>,
    /// Rows per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// Open alerts (or all with `state=all`), newest first.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts", security(("admin_token" = [])),
    params(AlertsQuery),
    responses((status = 200, body = AlertPage),
        (status = 422, description = "a filter is invalid", body = ErrorBody), Refusals))]
async fn list_alerts(
    State(state): State<AdminState>,
    uri: Uri,
) -> Result<Json<AlertPage>, ApiError> {
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
    let items = crate::credentials::list_alerts(&state.pool, open_only, q.before, limit).await?;
    let next_before = next_before(&items, limit, |a| a.id);
    Ok(Json(AlertPage { items, next_before }))
}

/// Acknowledges an open alert.
#[utoipa::path(post, path = "/v1/alerts/{id}/acknowledge", tag = "alerts",
    security(("admin_token" = [])), params(("id" = i64, Path, description = "alert id")),
    responses((status = 200, body = Acknowledged),
        (status = 404, description = "no such open alert", body = ErrorBody), Refusals))]
async fn acknowledge_alert(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Acknowledged>, ApiError> {
    let id = id_of("alert", &id)?;
    if !crate::credentials::acknowledge_alert(&state.pool, id).await? {
        return Err(ApiError::NotFound(format!("no open alert {id}")));
    }
    tracing::info!(alert = id, by = %actor.0, "alert acknowledged");
    Ok(Json(Acknowledged {
        id,
        acknowledged: true,
    }))
}

/// Every schedule with its next fire and whether it is enabled.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", security(("admin_token" = [])),
    responses((status = 200, body = ScheduleList), Refusals))]
async fn list_schedules(State(state): State<AdminState>) -> Result<Json<ScheduleList>, ApiError> {
    let items = crate::scheduler::list(&state.pool)
        .await
        .map_err(schedule_error)?;
    Ok(Json(ScheduleList { items }))
}

/// Pauses a schedule: fires that come due while paused are passed over.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules",
    security(("admin_token" = [])), params(("name" = String, Path, description = "schedule name")),
    responses((status = 200, body = ScheduleSwitched),
        (status = 404, description = "no such schedule", body = ErrorBody), Refusals))]
async fn pause_schedule(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleSwitched>, ApiError> {
    set_schedule(&state, &actor, name, false).await
}

/// Resumes a schedule.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules",
    security(("admin_token" = [])), params(("name" = String, Path, description = "schedule name")),
    responses((status = 200, body = ScheduleSwitched),
        (status = 404, description = "no such schedule", body = ErrorBody), Refusals))]
async fn resume_schedule(
    State(state): State<AdminState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<ScheduleSwitched>, ApiError> {
    set_schedule(&state, &actor, name, true).await
}

async fn set_schedule(
    state: &AdminState,
    actor: &Actor,
    name: String,
    enabled: bool,
) -> Result<Json<ScheduleSwitched>, ApiError> {
    if name.contains('\0') {
        return Err(ApiError::NotFound(
            "no schedule with a NUL in its name".into(),
        ));
    }
    crate::scheduler::set_enabled(&state.pool, &name, enabled)
        .await
        .map_err(schedule_error)?;
    tracing::info!(schedule = %name, enabled, by = %actor.0, "schedule switched");
    Ok(Json(ScheduleSwitched { name, enabled }))
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
