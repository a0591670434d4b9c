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
        "insert into penguin.alerts (kind, subject_type, subject_id, tenant_id, provider, message)
         values ($1, $2, $3, $4, $5, $6)",
        a,
    )
    .execute(executor)
    .await?;
    Ok(())
}

/// Raises `a` unless an open (unacknowledged) alert of the same kind about the same
/// provider and subject exists: one alert per condition, not one per attempt, however
/// many daemons see it. `true` when raised.
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
        "insert into penguin.alerts (kind, subject_type, subject_id, tenant_id, provider, message)
         select $1, $2, $3, $4, $5, $6
          where not exists (
                select 1 from penguin.alerts
                 where kind = $1 and provider is not distinct from $5
                   and subject_id is not distinct from $3 and acknowledged_at is null)",
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
}

/// One alert row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AlertRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
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

/// Alerts not acknowledged yet, newest first.
pub async fn open_alerts(pool: &PgPool) -> Result<Vec<AlertRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, kind, subject_type, subject_id, tenant_id, provider, message, acknowledged_at
           from penguin.alerts where acknowledged_at is null order by id desc",
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
        "select id, at, kind, subject_type, subject_id, tenant_id, provider, message, acknowledged_at
           from penguin.alerts
          where (not $1 or acknowledged_at is null) and ($2::bigint is null or id < $2)
          order by id desc limit $3",
    )
    .bind(open_only)
    .bind(before)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?)
}
