//! Claims, leases and release: the only SQL that moves jobs into and out of `running`
//! on behalf of a live worker.
//!
//! A claim is one short statement (`FOR UPDATE SKIP LOCKED`, committed at once); the job is
//! then protected by a lease, not a held lock. The claim records itself in
//! `penguin.claims` (worker, the claim's number, its ids) in the same statement: rescue
//! finds running jobs only there. Must never keep a transaction open while a job runs, and
//! never move a job to `running` without that row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{Error, NOTIFY_CHANNEL};

/// A job claimed for a worker: everything a handler and the outcome writer need.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: serde_json::Value,
    /// This attempt's number, starting at 1.
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub tenant_id: Option<uuid::Uuid>,
    pub created_at: DateTime<Utc>,
}

/// The claim statement of the daemons before `penguin.claims` (migration 0027), kept for
/// them: $1 queue, $2 limit, $3 worker, $4 lease in seconds, $5 kinds; a full pass. The
/// claim is recorded in `penguin.claims` under a number of `penguin.claims_legacy_seq`,
/// and only a rescue pass deletes that row (once none of its jobs runs under the worker).
pub const CLAIM_SQL: &str = "select * from penguin.claim($1, $2, $3, $4, $5)";

/// The claim: $1 queue, $2 limit, $3 worker, $4 lease in seconds, $5 kinds, then the
/// position to start after, $6 priority, $7 run_at, $8 id, and $9 the claim's number for
/// its row in `penguin.claims` (`penguin.claim_batch`, migration 0027). Planned with
/// sorting disabled (migration 0015), so a claim always walks the claim index in order and
/// stops after the batch, whatever the table's statistics say.
/// A full pass is the claim after the smallest position there is: $6, $7 and $8 null.
pub const CLAIM_BATCH_SQL: &str = "select * from penguin.claim_batch($1, $2, $3, $4, $5,
    coalesce($6, (-32768)::smallint), coalesce($7, '-infinity'::timestamptz),
    coalesce($8, (-9223372036854775808)::bigint), $9)";

/// A place in a queue's claim order, (priority, run_at, id): where a claim stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimPosition {
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub id: i64,
}

impl ClaimPosition {
    /// The position of a claimed job.
    pub fn of(job: &ClaimedJob) -> Self {
        Self {
            priority: job.priority,
            run_at: job.run_at,
            id: job.id,
        }
    }

    /// The same priority, `by` earlier in `run_at` and before any id there: a keyset claim
    /// starting here also finds the jobs that committed up to `by` after later ones.
    pub fn earlier_by(self, by: Duration) -> Self {
        let run_at = chrono::TimeDelta::from_std(by)
            .ok()
            .and_then(|by| self.run_at.checked_sub_signed(by))
            .unwrap_or(self.run_at);
        Self {
            priority: self.priority,
            run_at,
            id: i64::MIN,
        }
    }
}

/// What one claim asks for: the queue, the kinds the claiming daemon has a handler for,
/// how many, for which worker and lease, and the claim's number: the worker's claims rows
/// in `penguin.claims` are (worker, claim), and the worker deletes each once the last of
/// its jobs is written back ([`forget_claims`]).
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub queue: &'a str,
    pub kinds: &'a [String],
    pub limit: i64,
    pub worker: &'a str,
    pub lease: Duration,
    pub claim: i64,
}

/// Claims up to `limit` due jobs of `queue` whose kind is one of `kinds` (the kinds the
/// claiming daemon has a handler for: a job of a kind only a newer daemon knows waits for
/// it) for `worker`, leased for `lease`, in priority, run_at, id order. The attempt is
/// charged here; `started_at` stays NULL until the handler starts (see [`mark_started`]).
///
/// This is the claim of the daemons before `penguin.claims` ([`CLAIM_SQL`]): a full pass
/// whose claims row nobody but a rescue pass deletes. Pools use [`claim_from`].
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    kinds: &[String],
    limit: i64,
    worker: &str,
    lease: Duration,
) -> Result<Vec<ClaimedJob>, Error> {
    let mut jobs: Vec<ClaimedJob> = sqlx::query_as(CLAIM_SQL)
        .bind(queue)
        .bind(limit)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .bind(kinds)
        .fetch_all(pool)
        .await?;
    // UPDATE ... RETURNING does not keep the subquery's order.
    jobs.sort_unstable_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// Claims up to `request.limit` due jobs strictly after `after` in claim order (the keyset
/// claim: the index entries of the jobs claimed before it are never read again), or from
/// the start of the queue's range when `after` is `None` (the full pass: while a snapshot
/// elsewhere holds the xmin horizon, that start is where every job claimed since left an
/// entry VACUUM may not remove). A job that lands behind `after` (a more urgent priority,
/// a retry or rescue due earlier, a transaction that committed late) waits for the next
/// full pass. The claim is recorded as (worker, `request.claim`) in `penguin.claims` in
/// the same statement, unless nothing was claimed.
#[tracing::instrument(skip_all, fields(queue = %request.queue, batch = request.limit, keyset = after.is_some()))]
pub async fn claim_from(
    pool: &PgPool,
    request: &ClaimRequest<'_>,
    after: Option<ClaimPosition>,
) -> Result<Vec<ClaimedJob>, Error> {
    let mut jobs: Vec<ClaimedJob> = sqlx::query_as(CLAIM_BATCH_SQL)
        .bind(request.queue)
        .bind(request.limit)
        .bind(request.worker)
        .bind(request.lease.as_secs_f64())
        .bind(request.kinds)
        .bind(after.map(|p| p.priority))
        .bind(after.map(|p| p.run_at))
        .bind(after.map(|p| p.id))
        .bind(request.claim)
        .fetch_all(pool)
        .await?;
    // UPDATE ... RETURNING does not keep the subquery's order.
    jobs.sort_unstable_by_key(|j| (j.priority, j.run_at, j.id));
    Ok(jobs)
}

/// Deletes `worker`'s claims rows of numbers `claims`: the pool calls it once every job of
/// those claims is written back or released.
pub async fn forget_claims(pool: &PgPool, worker: &str, claims: &[i64]) -> Result<u64, Error> {
    let done = sqlx::query("delete from penguin.claims where worker = $1 and claim = any($2)")
        .bind(worker)
        .bind(claims)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Deletes `worker`'s claims rows none of whose jobs still runs under it (a pool at
/// shutdown, once it wrote back or released all it could; the rows of jobs it could not
/// stay for rescue): rescue's statement ([`super::rescue::FORGET_FINISHED_CLAIMS_SQL`]),
/// for this worker and rows of any age.
pub async fn forget_idle_claims(pool: &PgPool, worker: &str) -> Result<u64, Error> {
    let done = sqlx::query(super::rescue::FORGET_FINISHED_CLAIMS_SQL)
        .bind(0.0f64)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Extends the leases of the jobs `worker` still holds whose lease has less than five
/// sixths left, i.e. was not renewed in the last sixth of a lease (called every third of
/// a lease, so none runs out while the worker lives, and fresh claims are not rewritten);
/// returns how many were extended. Rows being written back right now are skipped
/// (SKIP LOCKED): waiting on them could deadlock with the outcome writer, and they are
/// leaving `running` anyway.
pub async fn extend_leases(
    pool: &PgPool,
    worker: &str,
    ids: &[i64],
    lease: Duration,
) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "update penguin.jobs j set lease_expires_at = now() + make_interval(secs => $3)
           from (select id from penguin.jobs
                  where id = any($1) and leased_by = $2
                    and lease_expires_at < now() + make_interval(secs => $3 * 5 / 6)
                  order by id
                  for update skip locked) due
          where j.id = due.id",
    )
    .bind(ids)
    .bind(worker)
    .bind(lease.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Records when the handlers of `ids` (held by `worker`) started, so that a rescue after
/// the worker died charges their attempt. Jobs that finish quickly never need it: their
/// outcome carries the start time. Rows being written back right now are skipped (SKIP
/// LOCKED), as by [`extend_leases`]: their outcome carries the start time too.
pub async fn mark_started(
    pool: &PgPool,
    worker: &str,
    ids: &[i64],
    started: &[DateTime<Utc>],
) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "with s as (select * from unnest($1::bigint[], $2::timestamptz[]) as t(id, at)),
              due as (select j.id, s.at from penguin.jobs j join s on s.id = j.id
                       where j.leased_by = $3
                       order by j.id
                       for update of j skip locked)
         update penguin.jobs j set started_at = due.at from due where j.id = due.id",
    )
    .bind(ids)
    .bind(started)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Gives back jobs `worker` claimed but will not finish (shutdown): they become
/// `available` (or `scheduled`) again and the attempt they were charged is refunded.
/// Wakes idle workers of `queue` elsewhere. Returns how many were released.
pub async fn release(pool: &PgPool, queue: &str, worker: &str, ids: &[i64]) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let released = sqlx::query(
        "update penguin.jobs
            set state = case when run_at > now() then 'scheduled' else 'available' end,
                attempt = greatest(attempt - 1, 0),
                leased_by = null, lease_expires_at = null, started_at = null
          where id = any($1) and leased_by = $2",
    )
    .bind(ids)
    .bind(worker)
    .execute(pool)
    .await?
    .rows_affected();
    if released > 0 {
        sqlx::query("select pg_notify($1, $2)::text")
            .bind(NOTIFY_CHANNEL)
            .bind(queue)
            .execute(pool)
            .await?;
    }
    Ok(released)
}

/// Records that `worker` found `queue` empty, so inserts into it send a NOTIFY.
pub async fn mark_idle(pool: &PgPool, worker: &str, queue: &str) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.idle_workers (worker, queue) values ($1, $2)
         on conflict (worker) do update set idle_since = now(), queue = excluded.queue",
    )
    .bind(worker)
    .bind(queue)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that `worker` is busy again: inserts stop paying for NOTIFY on its account.
pub async fn mark_busy(pool: &PgPool, worker: &str) -> Result<(), Error> {
    sqlx::query("delete from penguin.idle_workers where worker = $1")
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes idle marks not refreshed for `older_than` (their daemon died).
pub async fn forget_stale_idle_marks(pool: &PgPool, older_than: Duration) -> Result<u64, Error> {
    let done = sqlx::query(
        "delete from penguin.idle_workers where idle_since < now() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
