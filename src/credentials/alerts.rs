//! Alerts for operators, `penguin.alerts`.

use super::*;

/// An alert for operators.
#[derive(Debug, Clone)]
pub struct NewAlert<'a> {
    pub kind: AlertKind,
    pub subject_type: Subject,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<&'a str>,
    pub message: String,
}

/// Raises an alert (a row in `penguin.alerts`).
pub async fn raise_alert<'e>(executor: impl PgExecutor<'e>, a: &NewAlert<'_>) -> Result<(), Error> {
    with_alert(
        "insert into penguin.alerts (kind, subject_type, subject_id, tenant_id, provider, message, severity)
         values ($1, $2, $3, $4, $5, $6, $7)",
        a,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Raises `a` unless an open (unacknowledged, unresolved) alert of the same kind about
/// the same provider and subject exists: one alert per condition, not one per attempt,
/// however many daemons see it. `true` when raised.
pub async fn raise_alert_once(pool: &PgPool, a: &NewAlert<'_>) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let condition = format!(
        "penguin.alert:{}:{}:{}",
        a.kind.as_str(),
        a.provider.unwrap_or(""),
        a.subject_id.as_deref().unwrap_or("")
    );
    sqlx::query("select pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(condition)
        .execute(&mut *tx)
        .await?;
    let raised = with_alert(
        "insert into penguin.alerts (kind, subject_type, subject_id, tenant_id, provider, message, severity)
         select $1, $2, $3, $4, $5, $6, $7
          where not exists (
                select 1 from penguin.alerts
                 where kind = $1 and provider is not distinct from $5
                   and subject_id is not distinct from $3
                   and acknowledged_at is null and resolved_at is null)",
        a,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    tx.commit().await?;
    Ok(raised)
}

/// `sql` with the alert's kind, subject type, subject id, tenant, provider and message
/// bound as `$1`..`$6`.
fn with_alert<'q>(
    sql: &'q str,
    a: &'q NewAlert<'q>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(a.kind.as_str())
        .bind(a.subject_type.as_str())
        .bind(&a.subject_id)
        .bind(a.tenant_id)
        .bind(a.provider)
        .bind(&a.message)
        .bind(severity_of(a.kind))
}

/// How bad a job-raised alert is.
fn severity_of(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::OauthClientRefused => "critical",
        AlertKind::OauthReauthRequired
        | AlertKind::ApikeyRotationFailed
        | AlertKind::ApikeyTestFailed => "high",
        AlertKind::ApikeyRotationBlocked => "medium",
    }
}

/// One alert row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AlertRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    /// low, medium, high or critical.
    pub severity: String,
    /// What an evaluated alert is about (`error_rate:mailgun`); none for alerts raised by
    /// a job (reauthorisation, key tests), which [`resolve_raised_alerts`] clears.
    pub condition: Option<String>,
    /// When the condition cleared.
    pub resolved_at: Option<DateTime<Utc>>,
    pub subject_type: String,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<String>,
    pub message: String,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// Acknowledges alert `id`; `false` if there is no such open alert.
pub async fn acknowledge_alert(pool: &PgPool, id: i64) -> Result<bool, Error> {
    let done = sqlx::query(
        "update penguin.alerts set acknowledged_at = now() where id = $1 and acknowledged_at is null",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How many alerts are open (neither acknowledged nor resolved) per provider.
pub async fn open_alerts_per_provider(pool: &PgPool) -> Result<Vec<(String, i64)>, Error> {
    Ok(sqlx::query_as(
        "select provider, count(*) from penguin.alerts
          where acknowledged_at is null and resolved_at is null and provider is not null
          group by provider",
    )
    .fetch_all(pool)
    .await?)
}

/// Alerts not acknowledged yet, newest first.
pub async fn open_alerts(pool: &PgPool) -> Result<Vec<AlertRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, kind, severity, condition, resolved_at, subject_type, subject_id, tenant_id,
                provider, message, acknowledged_at
           from penguin.alerts where acknowledged_at is null and resolved_at is null
          order by id desc",
    )
    .fetch_all(pool)
    .await?)
}

/// Alerts newest first: open ones only (`open_only`), or all; `before` an id (the last of
/// the page before).
pub async fn list_alerts(
    pool: &PgPool,
    open_only: bool,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<AlertRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, kind, severity, condition, resolved_at, subject_type, subject_id,
                tenant_id, provider, message, acknowledged_at
           from penguin.alerts
          where (not $1 or (acknowledged_at is null and resolved_at is null))
            and ($2::bigint is null or id < $2)
          order by id desc limit $3",
    )
    .bind(open_only)
    .bind(before)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?)
}

/// An alert about a condition the daemons evaluate (integration health, dead letters,
/// stalled queues): at most one unresolved alert per `condition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionAlert {
    /// `KIND:SUBJECT` (`error_rate:mailgun`, `queue_stalled:email`).
    pub condition: String,
    pub kind: &'static str,
    pub severity: &'static str,
    /// `integration`, `queue` or `dead_letters`.
    pub subject_type: &'static str,
    pub subject_id: Option<String>,
    pub provider: Option<String>,
    pub message: String,
}

/// Opens an alert for each of `alerts` whose condition has no unresolved alert yet (one
/// statement; concurrent daemons meet on the unique index): the ids opened.
pub async fn open_conditions(pool: &PgPool, alerts: &[ConditionAlert]) -> Result<Vec<i64>, Error> {
    if alerts.is_empty() {
        return Ok(Vec::new());
    }
    let column = |f: fn(&ConditionAlert) -> Option<String>| -> Vec<Option<String>> {
        alerts.iter().map(f).collect()
    };
    Ok(sqlx::query_scalar(
        "insert into penguin.alerts (condition, kind, severity, subject_type, subject_id, provider, message)
         select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
         on conflict (condition) where resolved_at is null and condition is not null do nothing
         returning id",
    )
    .bind(column(|a| Some(a.condition.clone())))
    .bind(column(|a| Some(a.kind.to_string())))
    .bind(column(|a| Some(a.severity.to_string())))
    .bind(column(|a| Some(a.subject_type.to_string())))
    .bind(column(|a| a.subject_id.clone()))
    .bind(column(|a| a.provider.clone()))
    .bind(column(|a| Some(a.message.clone())))
    .fetch_all(pool)
    .await?)
}

/// Marks the unresolved condition alerts of `active` as seen now, and resolves those whose
/// condition is not in `active` and was last seen at least `clear_after` ago: the ids
/// resolved.
pub async fn resolve_conditions(
    pool: &PgPool,
    active: &[String],
    clear_after: std::time::Duration,
) -> Result<Vec<i64>, Error> {
    Ok(sqlx::query_scalar(
        "with seen as (
             update penguin.alerts set last_seen_at = now()
              where resolved_at is null and condition = any($1)
         )
         update penguin.alerts set resolved_at = now()
          where resolved_at is null and condition is not null and not (condition = any($1))
            and coalesce(last_seen_at, at) <= now() - make_interval(secs => $2)
         returning id",
    )
    .bind(active)
    .bind(clear_after.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// Resolves the unresolved alerts raised by jobs whose cause is gone (acknowledged or
/// not): the ids resolved.
/// - `reauth_required`: the connection is no longer waiting for consent (authorised
///   again, revoked or deleted);
/// - `oauth_client_refused`: one of the provider's connections refreshed, or a new one
///   was authorised, since the alert;
/// - `key_test_failed`, `apikey_rotation_failed`, `apikey_rotation_blocked`: a key of
///   the same provider and environment was activated since the alert.
///
/// The names from before migration 0038 are matched too (an older daemon of a rolling
/// deploy may still raise them). Cheap: each test is a probe per open alert.
pub async fn resolve_raised_alerts(pool: &PgPool) -> Result<Vec<i64>, Error> {
    Ok(sqlx::query_scalar(
        "update penguin.alerts a set resolved_at = now()
          where a.resolved_at is null and a.condition is null
            and case
                when a.kind in ('reauth_required', 'oauth_reauth_required') then not exists (
                     select 1 from penguin.oauth_connections c
                      where c.id = penguin.uuid_or_null(a.subject_id)
                        and c.status = 'reauth_required')
                when a.kind = 'oauth_client_refused' then exists (
                     select 1 from penguin.oauth_connections c
                      where c.provider = a.provider
                        and (c.last_refreshed_at > a.at or c.created_at > a.at))
                when a.kind in ('key_test_failed', 'apikey_test_failed',
                                'apikey_rotation_failed', 'apikey_rotation_blocked') then exists (
                     select 1 from penguin.api_keys subject
                       join penguin.api_keys k
                         on k.provider = subject.provider and k.environment = subject.environment
                      where subject.id = penguin.uuid_or_null(a.subject_id)
                        and k.activated_at > a.at)
                else false
                end
         returning a.id",
    )
    .fetch_all(pool)
    .await?)
}

/// An alert whose opening or clearing is not notified yet.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unnotified {
    #[sqlx(flatten)]
    pub alert: AlertRow,
    /// `true`: its clearing (else its opening) is to be notified.
    pub cleared: bool,
}

/// Up to `limit` alerts whose opening or clearing is not notified yet, locked in `tx`
/// (skipping those another daemon is notifying). [`mark_notified`] them in the same
/// transaction as the notifications' jobs.
pub async fn claim_unnotified(tx: &mut PgConnection, limit: i64) -> Result<Vec<Unnotified>, Error> {
    Ok(sqlx::query_as(
        "select id, at, kind, severity, condition, resolved_at, subject_type, subject_id,
                tenant_id, provider, message, acknowledged_at,
                notified_at is not null as cleared
           from penguin.alerts
          where notified_at is null or (resolved_at is not null and resolve_notified_at is null)
          order by id
          limit $1
          for update skip locked",
    )
    .bind(limit)
    .fetch_all(tx)
    .await?)
}

/// Records that alert `id`'s opening (and, if cleared, its clearing) was notified.
pub async fn mark_notified(tx: &mut PgConnection, id: i64) -> Result<(), Error> {
    sqlx::query(
        "update penguin.alerts
            set notified_at = coalesce(notified_at, now()),
                resolve_notified_at = case when resolved_at is not null then now() end
          where id = $1",
    )
    .bind(id)
    .execute(tx)
    .await?;
    Ok(())
}
