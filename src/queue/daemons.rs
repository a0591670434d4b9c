//! Which daemons are alive and which kinds they handle (`penguin.daemons`), and what
//! becomes of jobs whose kind none of them handles: they wait (a rolling deploy is under
//! way, or a newer daemon is down for a moment), and only after a grace period go to the
//! dead letters with reason `unknown_kind`.
//!
//! Must never dead-letter a job whose kind a live daemon handles, and never decide from a
//! daemon row that stopped being refreshed.

use std::time::Duration;

use sqlx::PgPool;

use super::Error;
use super::outcome::bury_dead_sql;
use super::state::claimable_states;

/// A daemon row not refreshed for this long belongs to a daemon that died.
pub fn liveness_window(refresh_every: Duration) -> Duration {
    (refresh_every * 4).max(Duration::from_secs(60))
}

/// Records (or refreshes) that daemon `id` is alive and handles `kinds` in `queues`.
pub async fn register_daemon(
    pool: &PgPool,
    id: &str,
    kinds: &[String],
    queues: &[String],
) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.daemons (id, kinds, queues) values ($1, $2, $3)
         on conflict (id) do update
            set kinds = excluded.kinds, queues = excluded.queues, seen_at = now()",
    )
    .bind(id)
    .bind(kinds)
    .bind(queues)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets daemon `id` (it stopped), and rows of daemons not seen within `window`.
pub async fn unregister_daemon(pool: &PgPool, id: &str, window: Duration) -> Result<(), Error> {
    sqlx::query(
        "delete from penguin.daemons
          where id = $1 or seen_at < now() - make_interval(secs => $2)",
    )
    .bind(id)
    .bind(window.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}

/// Jobs of one kind that no live daemon handles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WaitingKind {
    pub kind: String,
    /// Live jobs of the kind that are due (or will be) and that nobody claims.
    pub jobs: i64,
    /// Seconds the longest-waiting of them has been due.
    pub oldest_due_secs: i64,
}

/// Kinds listed in `penguin.kinds` (so enqueueable) that no daemon seen within `window`
/// handles, with their waiting jobs. Cheap when there are none: the job table is only read
/// for such kinds, through the claim index.
pub async fn waiting_kinds(pool: &PgPool, window: Duration) -> Result<Vec<WaitingKind>, Error> {
    let orphans: Vec<String> = sqlx::query_scalar(
        "select k.kind from penguin.kinds k
          where not exists (select 1 from penguin.daemons d
                             where d.seen_at >= now() - make_interval(secs => $1)
                               and k.kind = any(d.kinds))
          order by k.kind",
    )
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    if orphans.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(concat!(
        "select kind, count(*), coalesce(extract(epoch from now() - min(run_at))::bigint, 0)
           from penguin.jobs
          where kind = any($1) and finished_at is null and state in ",
        claimable_states!(),
        "
          group by kind
          order by kind"
    ))
    .bind(&orphans)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, jobs, oldest)| WaitingKind {
            kind,
            jobs,
            oldest_due_secs: oldest.max(0),
        })
        .collect())
}

/// A queue named in `penguin.kinds` or holding live jobs that no live daemon runs a
/// pool for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnservedQueue {
    pub queue: String,
    /// Whether live jobs wait in it (else only `penguin.kinds` names it).
    pub has_jobs: bool,
}

/// The queues of `penguin.kinds` and of live jobs (found by a skip scan of the claim
/// index: one probe per queue, however many jobs) that no daemon seen within `window`
/// serves.
pub async fn unserved_queues(pool: &PgPool, window: Duration) -> Result<Vec<UnservedQueue>, Error> {
    let rows: Vec<(String, bool)> = sqlx::query_as(&format!(
        "{},
         named as (
             select queue, true as has_jobs from live where queue is not null
             union all
             select queue, false from penguin.kinds
         )
         select queue, bool_or(has_jobs) from named
          where not exists (select 1 from penguin.daemons d
                             where d.seen_at >= now() - make_interval(secs => $1)
                               and named.queue = any(d.queues))
          group by queue
          order by queue",
        super::queues::LIVE_QUEUES
    ))
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(queue, has_jobs)| UnservedQueue { queue, has_jobs })
        .collect())
}

/// Moves up to `limit` jobs of `kinds` that have been due for longer than `grace` to the
/// dead letters with reason `unknown_kind`, re-checking in the same statement that no
/// daemon seen within `window` handles their kind. Returns how many moved.
pub async fn bury_unhandled(
    pool: &PgPool,
    kinds: &[String],
    grace: Duration,
    window: Duration,
    limit: i64,
) -> Result<u64, Error> {
    if kinds.is_empty() {
        return Ok(0);
    }
    // `id = any(array(..))`, not a join: see migration 0015 (a generic plan guesses the
    // limit at a tenth of the table and would hash a sequential scan of it)
    let buried: i64 = sqlx::query_scalar(&format!(
        concat!(
            "with dead as (
             delete from penguin.jobs j
              where j.id = any(array(
                        select d.id from penguin.jobs d
                         where d.kind = any($1)
                           and d.finished_at is null
                           and d.state in ",
            claimable_states!(),
            "
                           and d.run_at < now() - make_interval(secs => $2)
                           and not exists (select 1 from penguin.daemons p
                                            where p.seen_at >= now() - make_interval(secs => $3)
                                              and d.kind = any(p.kinds))
                         limit $4
                         for update skip locked))
             returning j.*,
                       jsonb_build_object(
                           'at', now(), 'attempt', j.attempt, 'class', 'unknown_kind',
                           'message', 'no running daemon handles kind ' || j.kind
                                      || ' (waited longer than ' || $5
                                      || ', [daemon] unknown_kind_grace)') as last_error,
                       'unknown_kind'::text as dead_reason
         ),
         {}
         select count(*) from buried"
        ),
        bury_dead_sql!()
    ))
    .bind(kinds)
    .bind(grace.as_secs_f64())
    .bind(window.as_secs_f64())
    .bind(limit)
    .bind(humantime::format_duration(grace).to_string())
    .fetch_one(pool)
    .await?;
    Ok(buried as u64)
}
