//! Rescue: jobs whose lease expired (their worker died without a word) go back to
//! `retryable` with an error entry of class `lease_expired`, or to the dead letters when
//! that was their last attempt. Safe to run from any number of daemons at once.
//!
//! Must never touch a job whose lease is still valid: a live worker heartbeats its leases.

use sqlx::PgPool;

use super::Error;

/// What one rescue pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueCounts {
    pub requeued: u64,
    pub dead: u64,
}

/// Rescues up to `limit` expired leases in one statement.
#[tracing::instrument(skip_all)]
pub async fn rescue_expired(pool: &PgPool, limit: i64) -> Result<RescueCounts, Error> {
    let (requeued, dead): (i64, i64) = sqlx::query_as(
        "with expired as (
             select id from penguin.jobs
              where state = 'running' and lease_expires_at < now()
              order by lease_expires_at
              limit $1
              for update skip locked
         ),
         entry as (
             select j.id, jsonb_build_object(
                        'at', now(), 'attempt', j.attempt, 'class', 'lease_expired',
                        'message', 'lease held by ' || coalesce(j.leased_by, 'unknown worker')
                                   || ' expired: the worker stopped heartbeating (killed or crashed)') as error,
                    j.attempt >= j.max_attempts as last
               from penguin.jobs j join expired e on e.id = j.id
         ),
         requeued as (
             update penguin.jobs j
                set state = 'retryable', run_at = now(), errors = j.errors || jsonb_build_array(entry.error),
                    leased_by = null, lease_expires_at = null
               from entry
              where j.id = entry.id and not entry.last
             returning j.id
         ),
         dead as (
             delete from penguin.jobs j using entry
              where j.id = entry.id and entry.last
             returning j.*, entry.error as last_error
         ),
         buried as (
             insert into penguin.dead_letters
                 (job_id, queue, kind, payload, priority, attempt, max_attempts, unique_key,
                  tenant_id, errors, created_at, reason)
             select id, queue, kind, payload, priority, attempt, max_attempts, unique_key, tenant_id,
                    errors || jsonb_build_array(last_error), created_at, 'attempts_exhausted'
               from dead
             returning job_id
         )
         select (select count(*) from requeued), (select count(*) from buried)",
    )
    .bind(limit)
    .fetch_one(pool)
    .await?;
    if requeued + dead > 0 {
        tracing::warn!(
            requeued,
            dead,
            "rescued jobs whose worker stopped heartbeating"
        );
    }
    Ok(RescueCounts {
        requeued: requeued as u64,
        dead: dead as u64,
    })
}
