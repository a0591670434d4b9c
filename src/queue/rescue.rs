//! Rescue: jobs whose lease expired (their worker died without a word) go back to
//! `retryable` with an error entry of class `lease_expired`, or to the dead letters when
//! that was their last attempt. Safe to run from any number of daemons at once.
//!
//! A job whose handler never started (`started_at` NULL: it waited in the dead daemon's
//! prefetch buffer) gets its attempt back and an entry of class `lease_expired_unstarted`.
//! Start marks are written shortly after a start, so a job that kills its daemon at once
//! may look unstarted: after [`MAX_UNSTARTED_RESCUES`] such refunds it is charged like any
//! other, so a poison job still reaches the dead letters.
//!
//! Must never touch a job whose lease is still valid: a live worker heartbeats its leases.

use sqlx::PgPool;

use super::Error;
use super::outcome::bury_dead_sql;

/// Refunds granted to one job for rescues before its start was recorded; past this, a
/// rescue charges the attempt whatever the start mark says.
pub const MAX_UNSTARTED_RESCUES: i32 = 3;

/// What one rescue pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueCounts {
    pub requeued: u64,
    pub dead: u64,
    /// Of `requeued`, jobs that had not started: their attempt was refunded.
    pub refunded: u64,
}

/// Rescues up to `limit` expired leases in one statement.
#[tracing::instrument(skip_all)]
pub async fn rescue_expired(pool: &PgPool, limit: i64) -> Result<RescueCounts, Error> {
    let (requeued, dead, refunded): (i64, i64, i64) = sqlx::query_as(&format!(
        "with expired as (
             select id from penguin.jobs
              where state = 'running' and lease_expires_at < now()
              limit $1
              for update skip locked
         ),
         seen as (
             select j.id, j.started_at is null
                          and (select count(*) from jsonb_array_elements(j.errors) e
                                where e->>'class' = 'lease_expired_unstarted') < $2 as unstarted
               from penguin.jobs j join expired e on e.id = j.id
         ),
         entry as (
             select j.id, s.unstarted, jsonb_build_object(
                        'at', now(), 'attempt', j.attempt,
                        'class', case when s.unstarted then 'lease_expired_unstarted' else 'lease_expired' end,
                        'message', 'lease held by ' || coalesce(j.leased_by, 'unknown worker')
                                   || case when s.unstarted
                                      then ' expired before the job started (the worker stopped heartbeating): attempt not charged'
                                      else ' expired: the worker stopped heartbeating (killed or crashed)' end) as error,
                    not s.unstarted and j.attempt >= j.max_attempts as last
               from penguin.jobs j join seen s on s.id = j.id
         ),
         requeued as (
             update penguin.jobs j
                set state = 'retryable', run_at = now(), errors = j.errors || jsonb_build_array(entry.error),
                    attempt = case when entry.unstarted then greatest(j.attempt - 1, 0) else j.attempt end,
                    leased_by = null, lease_expires_at = null
               from entry
              where j.id = entry.id and not entry.last
             returning entry.unstarted
         ),
         dead as (
             delete from penguin.jobs j using entry
              where j.id = entry.id and entry.last
             returning j.*, entry.error as last_error, 'attempts_exhausted'::text as dead_reason
         ),
         {}
         select (select count(*) from requeued), (select count(*) from buried),
                (select count(*) from requeued where unstarted)",
        bury_dead_sql!()
    ))
    .bind(limit)
    .bind(MAX_UNSTARTED_RESCUES)
    .fetch_one(pool)
    .await?;
    if requeued + dead > 0 {
        tracing::warn!(
            requeued,
            dead,
            not_charged = refunded,
            "rescued jobs whose worker stopped heartbeating"
        );
    }
    Ok(RescueCounts {
        requeued: requeued as u64,
        dead: dead as u64,
        refunded: refunded as u64,
    })
}
