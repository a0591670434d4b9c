//! The audit log, `penguin.audit_log`: appended in the caller's transaction, never rewritten.

use super::*;

/// One audit log row to append. Never put a secret in `detail`.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub event: AuditAction,
    pub actor: Actor,
    pub subject_type: Subject,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<&'a str>,
    pub ok: bool,
    pub detail: serde_json::Value,
}

/// Appends one event to `penguin.audit_log` (on the caller's transaction, so the event
/// exists iff the change it records does).
pub async fn audit<'e>(executor: impl PgExecutor<'e>, e: &AuditEvent<'_>) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.audit_log
             (event, actor, subject_type, subject_id, tenant_id, provider, outcome, detail)
         values ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.event.as_str())
    .bind(e.actor.as_str())
    .bind(e.subject_type.as_str())
    .bind(&e.subject_id)
    .bind(e.tenant_id)
    .bind(e.provider)
    .bind(if e.ok { "ok" } else { "failed" })
    .bind(&e.detail)
    .execute(executor)
    .await?;
    Ok(())
}

/// One audit log row.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub actor: String,
    pub subject_type: String,
    pub subject_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub provider: Option<String>,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// The newest audit rows first, optionally of one subject id.
pub async fn list_audit(
    pool: &PgPool,
    subject_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditRow>, Error> {
    Ok(sqlx::query_as(
        "select id, at, event, actor, subject_type, subject_id, tenant_id, provider, outcome, detail
           from penguin.audit_log
          where $1::text is null or subject_id = $1
          order by id desc limit $2",
    )
    .bind(subject_id)
    .bind(limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?)
}
