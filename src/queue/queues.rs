//! Queues as operators see them: paused or not (`penguin.queue_pauses`, which the claim
//! itself reads, so a pause holds across every daemon), and how deep each is right now.
//!
//! The depth is read from the live rows only (`finished_at is null`, the claim index's
//! predicate), never from the retained finished rows, and the callers (the admin listener)
//! cache it: a scrape must never cost a count over the whole table.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{Error, NOTIFY_CHANNEL};

/// A paused queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueuePause {
    pub queue: String,
    pub paused_at: DateTime<Utc>,
    /// Who paused it (`admin:tokens[N]`, `cli`).
    pub paused_by: String,
}

/// Longest queue name accepted by pause (queue names are short words).
const MAX_QUEUE_NAME: usize = 200;

fn check_queue_name(queue: &str) -> Result<(), Error> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_NAME || queue.contains('\0') {
        return Err(Error::Invalid(format!(
            "a queue name is 1 to {MAX_QUEUE_NAME} bytes without NUL"
        )));
    }
    Ok(())
}

/// Pauses `queue` for every daemon from their next claim on (jobs already claimed
/// finish). `false` if it was paused already.
pub async fn pause_queue(pool: &PgPool, queue: &str, by: &str) -> Result<bool, Error> {
    check_queue_name(queue)?;
    let done = sqlx::query(
        "insert into penguin.queue_pauses (queue, paused_by) values ($1, $2)
         on conflict (queue) do nothing",
    )
    .bind(queue)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Resumes `queue` and wakes the idle pools serving it. `false` if it was not paused.
pub async fn resume_queue(pool: &PgPool, queue: &str) -> Result<bool, Error> {
    check_queue_name(queue)?;
    let resumed: bool = sqlx::query_scalar(
        "with gone as (delete from penguin.queue_pauses where queue = $1 returning queue)
         select exists (select 1 from gone)",
    )
    .bind(queue)
    .fetch_one(pool)
    .await?;
    if resumed {
        sqlx::query("select pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(queue)
            .execute(pool)
            .await?;
    }
    Ok(resumed)
}

/// Every paused queue, by name.
pub async fn paused_queues(pool: &PgPool) -> Result<Vec<QueuePause>, Error> {
    Ok(sqlx::query_as(
        "select queue, paused_at, paused_by from penguin.queue_pauses order by queue",
    )
    .fetch_all(pool)
    .await?)
}

/// Live jobs of one queue in one state, and the oldest claimable one's due time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueDepth {
    pub queue: String,
    pub state: String,
    pub jobs: i64,
    /// For claimable states: the earliest `run_at` among those due now.
    pub oldest_due: Option<DateTime<Utc>>,
}

/// Dead letters of one queue not replayed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct QueueDeadLetters {
    pub queue: String,
    pub dead_letters: i64,
}

/// The depth of every queue with live jobs: counts per queue and live state (available,
/// scheduled, running, retryable), read from the live rows only.
pub async fn queue_depths(pool: &PgPool) -> Result<Vec<QueueDepth>, Error> {
    Ok(sqlx::query_as(
        "select queue, state, count(*) as jobs,
                min(run_at) filter (where state <> 'running' and run_at <= now()) as oldest_due
           from penguin.jobs
          where finished_at is null
          group by queue, state
          order by queue, state",
    )
    .fetch_all(pool)
    .await?)
}

/// Dead letters not replayed yet, per queue.
pub async fn open_dead_letters(pool: &PgPool) -> Result<Vec<QueueDeadLetters>, Error> {
    Ok(sqlx::query_as(
        "select queue, count(*) as dead_letters from penguin.dead_letters
          where replayed_at is null group by queue order by queue",
    )
    .fetch_all(pool)
    .await?)
}

/// The queues holding live jobs, as a CTE `live(queue)` (the last row is NULL): a skip
/// scan of the claim index, one probe per queue however many jobs wait.
pub(super) const LIVE_QUEUES: &str = "with recursive live(queue) as (
             (select queue from penguin.jobs where finished_at is null order by queue limit 1)
             union all
             select (select j.queue from penguin.jobs j
                      where j.finished_at is null and j.queue > live.queue
                      order by j.queue limit 1)
               from live where live.queue is not null
         )";

/// How long one queue's longest-waiting job has been due.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueueWait {
    pub queue: String,
    /// When the oldest job due now (of any priority) became due; `None` when nothing is
    /// due.
    pub due_since: Option<DateTime<Utc>>,
}

/// Every queue with live jobs, and its oldest due job whatever its priority (a
/// low-priority job starved behind a stream of urgent ones counts). Index probes only: a
/// skip scan over the live `(queue, priority)` pairs of `jobs_claim_live_idx`, then the
/// first due job of each pair; never a count.
pub async fn oldest_due_per_queue(pool: &PgPool) -> Result<Vec<QueueWait>, Error> {
    Ok(sqlx::query_as(
        "with recursive pairs(queue, priority) as (
             (select queue, priority from penguin.jobs
               where finished_at is null order by queue, priority limit 1)
             union all
             select n.queue, n.priority
               from pairs p,
                    lateral (select j.queue, j.priority from penguin.jobs j
                              where j.finished_at is null
                                and (j.queue, j.priority) > (p.queue, p.priority)
                              order by j.queue, j.priority limit 1) n
         )
         select p.queue, min(h.run_at) as due_since
           from pairs p
           left join lateral (
                select c.run_at from penguin.jobs c
                 where c.queue = p.queue and c.priority = p.priority and c.finished_at is null
                   and c.state in ('available', 'scheduled', 'retryable') and c.run_at <= now()
                 order by c.run_at, c.id
                 limit 1) h on true
          group by p.queue
          order by p.queue",
    )
    .fetch_all(pool)
    .await?)
}

/// Jobs dead-lettered within the last `window`.
pub async fn dead_lettered_since(pool: &PgPool, window: std::time::Duration) -> Result<i64, Error> {
    Ok(sqlx::query_scalar(
        "select count(*) from penguin.dead_letters where dead_at >= now() - make_interval(secs => $1)",
    )
    .bind(window.as_secs_f64())
    .fetch_one(pool)
    .await?)
}

/// One queue's minute: jobs finished by outcome (every daemon's together), and its depth
/// when sampled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct QueueMinute {
    pub minute: DateTime<Utc>,
    pub queue: String,
    pub completed: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub available: Option<i64>,
    pub scheduled: Option<i64>,
    pub running: Option<i64>,
    pub retryable: Option<i64>,
}

/// Jobs a daemon's pool finished since its last report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinishedCounts {
    pub queue: String,
    pub completed: i64,
    pub retried: i64,
    pub dead_lettered: i64,
}

/// Adds `counts` to this minute's rows, one statement.
pub async fn add_finished(pool: &PgPool, counts: &[FinishedCounts]) -> Result<(), Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let queues: Vec<&str> = counts.iter().map(|c| c.queue.as_str()).collect();
    let completed: Vec<i64> = counts.iter().map(|c| c.completed).collect();
    let retried: Vec<i64> = counts.iter().map(|c| c.retried).collect();
    let dead: Vec<i64> = counts.iter().map(|c| c.dead_lettered).collect();
    sqlx::query(
        "insert into penguin.queue_minutes as m (minute, queue, completed, retried, dead_lettered)
         select date_trunc('minute', now()), * from unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
         on conflict (minute, queue) do update
            set completed = m.completed + excluded.completed,
                retried = m.retried + excluded.retried,
                dead_lettered = m.dead_lettered + excluded.dead_lettered",
    )
    .bind(&queues)
    .bind(&completed)
    .bind(&retried)
    .bind(&dead)
    .execute(pool)
    .await?;
    Ok(())
}

/// Samples every queue's depth into this minute's rows unless a daemon already did this
/// minute (a count over the live rows, once a minute across daemons). `true` if sampled.
pub async fn sample_depths(pool: &PgPool) -> Result<bool, Error> {
    let done: bool = sqlx::query_scalar(
        "select exists (select 1 from penguin.queue_minutes
                         where minute = date_trunc('minute', now()) and available is not null)",
    )
    .fetch_one(pool)
    .await?;
    if done {
        return Ok(false);
    }
    sqlx::query(
        "insert into penguin.queue_minutes as m (minute, queue, available, scheduled, running, retryable)
         select date_trunc('minute', now()), queue,
                count(*) filter (where state = 'available'), count(*) filter (where state = 'scheduled'),
                count(*) filter (where state = 'running'), count(*) filter (where state = 'retryable')
           from penguin.jobs where finished_at is null group by queue
         on conflict (minute, queue) do update
            set available = excluded.available, scheduled = excluded.scheduled,
                running = excluded.running, retryable = excluded.retryable",
    )
    .execute(pool)
    .await?;
    Ok(true)
}

/// Every queue's minutes over the last `minutes`, oldest first.
pub async fn queue_minutes(pool: &PgPool, minutes: i64) -> Result<Vec<QueueMinute>, Error> {
    Ok(sqlx::query_as(
        "select minute, queue, completed, retried, dead_lettered, available, scheduled, running, retryable
           from penguin.queue_minutes
          where minute >= date_trunc('minute', now()) - make_interval(mins => $1::int)
          order by minute, queue",
    )
    .bind(minutes.clamp(1, 24 * 60))
    .fetch_all(pool)
    .await?)
}

/// Deletes minutes older than `older_than`.
pub async fn prune_queue_minutes(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<u64, Error> {
    Ok(sqlx::query(
        "delete from penguin.queue_minutes where minute < now() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}
