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
//! A rescue reads the running jobs claimed since a floor ([`RescueFloor`]): while a long
//! transaction elsewhere holds the xmin horizon, every job claimed since left an entry in
//! the running index that VACUUM may not remove, and reading them all every pass walks
//! millions. Every [`FULL_RESCUE_EVERY`] passes one reads them all anyway.
//!
//! Must never touch a job whose lease is still valid: a live worker heartbeats its leases.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::Error;
use super::outcome::bury_dead_sql;

/// Refunds granted to one job for rescues before its start was recorded; past this, a
/// rescue charges the attempt whatever the start mark says.
pub const MAX_UNSTARTED_RESCUES: i32 = 3;

/// How far back a floor reaches before the pass that set it: a claim whose statement
/// began before the pass and committed after it is not seen by it, and its attempted_at is
/// its statement's start.
pub const FLOOR_SLACK: Duration = Duration::from_secs(10);
/// Every this many passes, a rescue reads every running job, whatever the floor.
pub const FULL_RESCUE_EVERY: u32 = 20;

/// What one rescue pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RescueCounts {
    pub requeued: u64,
    pub dead: u64,
    /// Of `requeued`, jobs that had not started: their attempt was refunded.
    pub refunded: u64,
    /// The earliest claim time of the jobs running when the pass looked (at or after its
    /// floor), and the pass's own start: where the next pass may start.
    pub oldest_running: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// Where a daemon's next rescue pass starts reading running jobs: the earliest claim
/// still running at the last pass, or that pass's start less [`FLOOR_SLACK`], whichever
/// is earlier (a job claimed later has a later attempted_at); `None` (everything) at
/// first and every [`FULL_RESCUE_EVERY`] passes.
#[derive(Debug, Default)]
pub struct RescueFloor {
    since: Option<DateTime<Utc>>,
    passes: u32,
}

impl RescueFloor {
    /// The floor for the next pass.
    pub fn next(&self) -> Option<DateTime<Utc>> {
        if self.passes % FULL_RESCUE_EVERY == 0 {
            return None;
        }
        self.since
    }

    /// Moves the floor after a pass (all its statements) that ended with `last`.
    pub fn passed(&mut self, last: &RescueCounts) {
        let slack = chrono::Duration::from_std(FLOOR_SLACK).expect("slack fits");
        let reach = last.at - slack;
        self.since = Some(last.oldest_running.map_or(reach, |o| o.min(reach)));
        self.passes = self.passes.wrapping_add(1);
    }

    /// Forgets the floor: the next pass reads everything.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// Rescues up to `limit` expired leases in one statement, among the jobs claimed at or
/// after `since` (all of them when `None`).
#[tracing::instrument(skip_all)]
pub async fn rescue_expired(
    pool: &PgPool,
    limit: i64,
    since: Option<DateTime<Utc>>,
) -> Result<RescueCounts, Error> {
    let (requeued, dead, refunded, oldest_running, at): (
        i64,
        i64,
        i64,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
    ) = sqlx::query_as(&format!(
        "with expired as (
             select id from penguin.jobs
              where state = 'running' and lease_expires_at < now()
                and attempted_at >= coalesce($3, '-infinity'::timestamptz)
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
                (select count(*) from requeued where unstarted),
                (select min(attempted_at) from penguin.jobs
                  where state = 'running'
                    and attempted_at >= coalesce($3, '-infinity'::timestamptz)),
                now()",
        bury_dead_sql!()
    ))
    .bind(limit)
    .bind(MAX_UNSTARTED_RESCUES)
    .bind(since)
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
        oldest_running,
        at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn pass(oldest_running: Option<DateTime<Utc>>, at: DateTime<Utc>) -> RescueCounts {
        RescueCounts {
            oldest_running,
            at,
            ..RescueCounts::default()
        }
    }

    #[test]
    fn the_floor_is_the_oldest_running_claim_or_the_pass_less_the_slack() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let mut floor = RescueFloor::default();
        assert_eq!(floor.next(), None, "the first pass reads everything");
        floor.passed(&pass(None, at));
        assert_eq!(floor.next(), Some(at - chrono::Duration::seconds(10)));
        let long_job = at - chrono::Duration::hours(2);
        floor.passed(&pass(Some(long_job), at));
        assert_eq!(floor.next(), Some(long_job));
        let recent = at - chrono::Duration::seconds(3);
        floor.passed(&pass(Some(recent), at));
        assert_eq!(floor.next(), Some(at - chrono::Duration::seconds(10)));
    }

    #[test]
    fn every_twentieth_pass_reads_everything() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        let mut floor = RescueFloor::default();
        let mut full = 0;
        for _ in 0..40 {
            if floor.next().is_none() {
                full += 1;
            }
            floor.passed(&pass(None, at));
        }
        assert_eq!(full, 2);
        floor.reset();
        assert_eq!(floor.next(), None);
    }
}
