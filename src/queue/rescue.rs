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
//! A rescue finds running jobs through `penguin.claims` (one row per claim in flight,
//! migration 0027), not through an index on running jobs: such an index names `state`,
//! which every claim writes, and would keep claims from being HOT updates (docs/storage.md,
//! section 3.7). The claims table holds only what is in flight, so a pass reads little
//! even while a long transaction elsewhere holds the xmin horizon.
//!
//! Must never touch a job whose lease is still valid: a live worker heartbeats its leases.

use std::time::Duration;

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

/// How old a claims row must be before a rescue pass checks whether any of its jobs still
/// runs under its worker (and deletes it if none does). A pool deletes its own rows within
/// a fraction of a second of its claims' last outcomes; the rows left are those of claims
/// with jobs still running, of daemons that died, and of daemons of the release before
/// migration 0027 (which never delete theirs).
pub const CLAIMS_CHECKED_AFTER: Duration = Duration::from_secs(10);

/// The rescue statement: $1 the most jobs to rescue, $2 [`MAX_UNSTARTED_RESCUES`].
/// Candidates are the ids of the claims rows, probed by primary key.
pub fn rescue_sql() -> String {
    format!(
        "with expired as (
             select id from penguin.jobs
              where id = any(array(select distinct u.id
                                     from penguin.claims c cross join unnest(c.ids) as u(id)))
                and state = 'running' and lease_expires_at < now()
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
    )
}

/// Rescues up to `limit` expired leases in one statement, among the jobs of the claims
/// in `penguin.claims` (probed by primary key).
#[tracing::instrument(skip_all)]
pub async fn rescue_expired(pool: &PgPool, limit: i64) -> Result<RescueCounts, Error> {
    let (requeued, dead, refunded): (i64, i64, i64) = sqlx::query_as(&rescue_sql())
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

/// The statement that deletes claims rows none of whose jobs still runs under the row's
/// worker: $1 how old a row must be, in seconds; $2 only this worker's rows (null: every
/// worker's). Each row's jobs are probed by primary key: `offset 0` keeps the `exists` a
/// subplan run per row; as an anti-join, with statistics taken while nothing ran, the
/// planner read the whole table.
pub const FORGET_FINISHED_CLAIMS_SQL: &str = "delete from penguin.claims c
  where c.claimed_at < now() - make_interval(secs => $1)
    and ($2::text is null or c.worker = $2)
    and not exists (select 1 from penguin.jobs j
                     where j.id = any(c.ids) and j.state = 'running'
                       and j.leased_by = c.worker
                    offset 0)";

/// Deletes the claims rows older than `older_than` none of whose jobs still runs under
/// the row's worker: claims of daemons that died (once their jobs were rescued) and of
/// daemons of the release before migration 0027. Returns how many were deleted.
pub async fn forget_finished_claims(pool: &PgPool, older_than: Duration) -> Result<u64, Error> {
    let done = sqlx::query(FORGET_FINISHED_CLAIMS_SQL)
        .bind(older_than.as_secs_f64())
        .bind(None::<&str>)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
