//! Operator reads and writes: list, show, cancel and retry jobs; list, show, replay and
//! purge dead letters; counts per queue and state. The CLI and the admin API call these
//! and write no SQL of their own.
//!
//! Must never change a job a worker currently holds except to cancel it (the worker's
//! outcome is then dropped, because the lease is cleared).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::state::{finished_states, live_states, same_tenant};
use super::{DeadLetter, Error, Job, JobState};

/// Filters of `jobs list` and `GET /v1/jobs`: newest first, `before` an id (the last id of
/// the page before) for the next page.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// A job state, or `dead` (the jobs in the dead letters).
    pub state: Option<String>,
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub tenant: Option<uuid::Uuid>,
    /// Only jobs with a smaller id.
    pub before: Option<i64>,
    pub limit: i64,
}

/// The state filter's value for jobs in the dead letters.
pub const DEAD: &str = "dead";

/// A dead letter as a job row: state `dead`, `finished_at` (and `run_at`) its `dead_at`,
/// `dead_letter` its id.
const DEAD_AS_JOB: &str = "select job_id as id, queue, kind, payload, 'dead' as state, priority,
        attempt, max_attempts, dead_at as run_at, null::text as leased_by,
        null::timestamptz as lease_expires_at, unique_key, tenant_id, errors, null::jsonb as result,
        created_at, null::timestamptz as attempted_at, dead_at as finished_at, id as dead_letter,
        reason as dead_reason
   from penguin.dead_letters";

/// Newest jobs first, filtered; state `dead` lists the dead letters' jobs.
pub async fn list_jobs(pool: &PgPool, filter: &JobFilter) -> Result<Vec<Job>, Error> {
    for text in [&filter.state, &filter.kind, &filter.queue]
        .into_iter()
        .flatten()
    {
        no_nul(text)?;
    }
    if let Some(state) = &filter.state
        && state != DEAD
    {
        state
            .parse::<JobState>()
            .map_err(|e| Error::Invalid(format!("{e}, or dead (the jobs in the dead letters)")))?;
    }
    let limit = filter.limit.clamp(1, 10_000);
    let sql = if filter.state.as_deref() == Some(DEAD) {
        format!(
            "{DEAD_AS_JOB}
              where $1::text = 'dead'
                and ($2::text is null or kind = $2)
                and ($3::text is null or queue = $3)
                and ($4::uuid is null or tenant_id = $4)
                and ($5::bigint is null or job_id < $5)
              order by job_id desc
              limit $6"
        )
    } else {
        "select *, null::bigint as dead_letter, null::text as dead_reason from penguin.jobs
          where ($1::text is null or state = $1)
            and ($2::text is null or kind = $2)
            and ($3::text is null or queue = $3)
            and ($4::uuid is null or tenant_id = $4)
            and ($5::bigint is null or id < $5)
          order by id desc
          limit $6"
            .to_string()
    };
    Ok(sqlx::query_as(&sql)
        .bind(&filter.state)
        .bind(&filter.kind)
        .bind(&filter.queue)
        .bind(filter.tenant)
        .bind(filter.before)
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// Text PostgreSQL cannot store (a NUL) is refused before it reaches a statement.
fn no_nul(text: &str) -> Result<(), Error> {
    if text.contains('\0') {
        return Err(Error::Invalid(
            "a filter contains a NUL character (\\u0000), which no name holds".into(),
        ));
    }
    Ok(())
}

/// One job by id: from `penguin.jobs`, else the job of its latest dead letter (state
/// `dead`, with `dead_letter` set).
pub async fn get_job(pool: &PgPool, id: i64) -> Result<Job, Error> {
    if let Some(job) = sqlx::query_as(
        "select *, null::bigint as dead_letter, null::text as dead_reason
           from penguin.jobs where id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    {
        return Ok(job);
    }
    sqlx::query_as(&format!(
        "{DEAD_AS_JOB} where job_id = $1 order by dead_at desc, id desc limit 1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(Error::NotFound { what: "job", id })
}

/// Where a job is, as its enqueuer sees it: its state (`dead` once dead-lettered) and
/// what it left (result, or the errors of its attempts).
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobStatus {
    pub id: i64,
    pub kind: String,
    /// A job state, or `dead` (in the dead letters).
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub result: Option<serde_json::Value>,
    pub errors: serde_json::Value,
    /// Why it was dead-lettered.
    pub dead_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<uuid::Uuid>,
}

impl JobStatus {
    /// Finished for good: completed, cancelled or dead.
    pub fn is_final(&self) -> bool {
        matches!(self.state.as_str(), "completed" | "cancelled" | "dead")
    }
}

/// The status of job `id` from `penguin.jobs`, else from its latest dead letter. `None`
/// when neither has it (never existed, or completed and deleted at once with
/// `[retention] completed = "0s"`, or pruned).
pub async fn job_status(pool: &PgPool, id: i64) -> Result<Option<JobStatus>, Error> {
    Ok(sqlx::query_as(
        "(select id, kind, state, attempt, max_attempts, result, errors,
                 null::text as dead_reason, created_at, finished_at, tenant_id
            from penguin.jobs where id = $1)
         union all
         (select job_id, kind, 'dead', attempt, max_attempts, null::jsonb, errors, reason,
                 created_at, dead_at, tenant_id
            from penguin.dead_letters where job_id = $1
           order by dead_at desc limit 1)
         limit 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Enqueues `job` and waits up to `wait` for it to be final (the Rust side of `POST
/// /v1/jobs` with `"wait"`): its id, and its last status.
pub async fn enqueue_and_wait(
    pool: &PgPool,
    job: &super::NewJob,
    wait: Duration,
) -> Result<(i64, Option<JobStatus>), Error> {
    let id = super::enqueue(pool, job).await?;
    Ok((id, wait_for_job(pool, id, wait).await?))
}

/// Waits until job `id` is final or `timeout` has passed, polling every few milliseconds
/// at first and every 100 ms later; returns its last status.
pub async fn wait_for_job(
    pool: &PgPool,
    id: i64,
    timeout: Duration,
) -> Result<Option<JobStatus>, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let status = job_status(pool, id).await?;
        let done = status.as_ref().is_none_or(JobStatus::is_final);
        if done || tokio::time::Instant::now() + pause > deadline {
            return Ok(status);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Cancels a live job. A running job's worker loses its lease, so its outcome is dropped.
pub async fn cancel_job(pool: &PgPool, id: i64) -> Result<Job, Error> {
    let job: Option<Job> = sqlx::query_as(concat!(
        "update penguin.jobs
            set state = 'cancelled', finished_at = now(), leased_by = null, lease_expires_at = null,
                errors = errors || jsonb_build_array(jsonb_build_object(
                    'at', now(), 'attempt', attempt, 'class', 'cancelled',
                    'message', 'cancelled by an operator'))
          where id = $1 and state in ",
        live_states!(),
        "
         returning *"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match job {
        Some(job) => Ok(job),
        None => {
            let job = get_job(pool, id).await?;
            Err(Error::Conflict(format!(
                "job {id} is {}: only available, scheduled, running or retryable jobs can be cancelled",
                job.state
            )))
        }
    }
}

/// Runs a job again now: a waiting job (scheduled, retryable) is made available at once;
/// a finished one (completed, cancelled) is made available with its attempts reset; a dead
/// one is replayed from its dead letter, and the job returned is the replay (a new id).
pub async fn retry_job(pool: &PgPool, id: i64) -> Result<Job, Error> {
    let result = sqlx::query_as(
        concat!("update penguin.jobs
            set state = 'available', run_at = now(), finished_at = null,
                attempt = case when state in ", finished_states!(), " then 0 else attempt end
          where id = $1 and state in ('scheduled', 'retryable', 'completed', 'cancelled', 'available')
         returning *"),
    )
    .bind(id)
    .fetch_optional(pool)
    .await;
    match result {
        Ok(Some(job)) => Ok(job),
        Ok(None) => {
            let job = get_job(pool, id).await?;
            match job.dead_letter {
                Some(letter) => {
                    let replayed = replay_dead_letters(pool, Some(&[letter]), None).await?;
                    let replay = replayed.first().map(|r| r.job).ok_or_else(|| {
                        Error::Conflict(format!("dead letter {letter} could not be replayed"))
                    })?;
                    get_job(pool, replay).await
                }
                None => Err(Error::Conflict(format!(
                    "job {id} is {}: a running job cannot be retried (cancel it first)",
                    job.state
                ))),
            }
        }
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(Error::Conflict(
            format!("job {id} cannot run again: another live job holds its unique key"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Filters of `dlq list`, `GET /v1/dead-letters` and replay by filter.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub kind: Option<String>,
    pub queue: Option<String>,
    pub tenant: Option<uuid::Uuid>,
    /// `Some(false)`: only those not replayed yet; `Some(true)`: only replayed ones.
    pub replayed: Option<bool>,
    /// Only dead letters with a smaller id (the last id of the page before).
    pub before: Option<i64>,
    pub limit: i64,
}

impl DeadLetterFilter {
    fn check(&self) -> Result<(), Error> {
        [&self.kind, &self.queue]
            .into_iter()
            .flatten()
            .try_for_each(|t| no_nul(t))
    }
}

/// The filter of dead letters on `$1` kind, `$2` queue, `$3` tenant, `$4` replayed.
const DEAD_LETTER_FILTER: &str = "($1::text is null or kind = $1)
    and ($2::text is null or queue = $2)
    and ($3::uuid is null or tenant_id = $3)
    and ($4::bool is null or (replayed_at is not null) = $4)";

/// Newest dead letters first.
pub async fn list_dead_letters(
    pool: &PgPool,
    filter: &DeadLetterFilter,
) -> Result<Vec<DeadLetter>, Error> {
    filter.check()?;
    let rows = sqlx::query_as(&format!(
        "select * from penguin.dead_letters
          where {DEAD_LETTER_FILTER} and ($5::bigint is null or id < $5)
          order by id desc limit $6"
    ))
    .bind(&filter.kind)
    .bind(&filter.queue)
    .bind(filter.tenant)
    .bind(filter.replayed)
    .bind(filter.before)
    .bind(filter.limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// One dead letter by id.
pub async fn get_dead_letter(pool: &PgPool, id: i64) -> Result<DeadLetter, Error> {
    sqlx::query_as("select * from penguin.dead_letters where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(Error::NotFound {
            what: "dead letter",
            id,
        })
}

/// A replayed dead letter and the job that replays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub dead_letter: i64,
    pub job: i64,
}

/// Dead letters replayed per transaction: `dlq replay --all` over a million rows must not
/// hold a million row locks in one transaction.
pub const REPLAY_BATCH: i64 = 500;

/// Replays dead letters not replayed yet: each becomes a new job with the same kind,
/// queue, payload, priority and tenant, and fresh attempts; the dead letter records
/// `replayed_at` and `replayed_as`. `ids = None` replays all (optionally of one kind), in
/// transactions of [`REPLAY_BATCH`]; `ids` naming one already replayed is refused before
/// anything is replayed. A dead letter whose unique key a live job holds is replayed as
/// that job.
pub async fn replay_dead_letters(
    pool: &PgPool,
    ids: Option<&[i64]>,
    kind: Option<&str>,
) -> Result<Vec<Replayed>, Error> {
    if let Some(ids) = ids {
        let open: Vec<i64> = sqlx::query_scalar(
            "select id from penguin.dead_letters where id = any($1) and replayed_at is null",
        )
        .bind(ids)
        .fetch_all(pool)
        .await?;
        for id in ids {
            if !open.contains(id) {
                let letter = get_dead_letter(pool, *id).await?;
                return Err(Error::Conflict(format!(
                    "dead letter {id} was already replayed as job {}",
                    letter.replayed_as.unwrap_or_default()
                )));
            }
        }
    }
    let filter = DeadLetterFilter {
        kind: kind.map(str::to_string),
        ..DeadLetterFilter::default()
    };
    let (replayed, _) = replay_matching(pool, ids, &filter, usize::MAX).await?;
    Ok(replayed)
}

/// Replays at most `max` dead letters matching `filter` (kind, queue, tenant; `replayed`
/// and `before` are ignored: only letters not replayed yet are), oldest first, in
/// transactions of [`REPLAY_BATCH`]. `true` with them when more matching letters remain.
pub async fn replay_dead_letters_matching(
    pool: &PgPool,
    filter: &DeadLetterFilter,
    max: usize,
) -> Result<(Vec<Replayed>, bool), Error> {
    filter.check()?;
    replay_matching(pool, None, filter, max).await
}

async fn replay_matching(
    pool: &PgPool,
    ids: Option<&[i64]>,
    filter: &DeadLetterFilter,
    max: usize,
) -> Result<(Vec<Replayed>, bool), Error> {
    let mut replayed = Vec::new();
    let mut after: i64 = 0;
    loop {
        let room = max.saturating_sub(replayed.len());
        let size = REPLAY_BATCH.min(i64::try_from(room).unwrap_or(i64::MAX));
        let (batch, more) = replay_batch(pool, ids, filter, after, size).await?;
        if let Some(last) = batch.last() {
            after = last.dead_letter;
        }
        replayed.extend(batch);
        if !more || replayed.len() >= max {
            return Ok((replayed, more));
        }
    }
}

/// One transaction of [`replay_matching`]: up to `size` dead letters with an id above
/// `after`, and whether more are left.
async fn replay_batch(
    pool: &PgPool,
    ids: Option<&[i64]>,
    filter: &DeadLetterFilter,
    after: i64,
    size: i64,
) -> Result<(Vec<Replayed>, bool), Error> {
    let mut tx = pool.begin().await?;
    // one more than replayed: whether more are left
    let mut letters: Vec<DeadLetter> = sqlx::query_as(&format!(
        "select * from penguin.dead_letters
          where replayed_at is null and id > $5 and ($6::bigint[] is null or id = any($6))
            and {DEAD_LETTER_FILTER}
          order by id
          limit $7
          for update"
    ))
    .bind(&filter.kind)
    .bind(&filter.queue)
    .bind(filter.tenant)
    .bind(None::<bool>)
    .bind(after)
    .bind(ids)
    .bind(size + 1)
    .fetch_all(&mut *tx)
    .await?;
    let more = letters.len() as i64 > size;
    letters.truncate(usize::try_from(size).unwrap_or(0));
    let mut replayed = Vec::with_capacity(letters.len());
    for letter in &letters {
        replayed.push(Replayed {
            dead_letter: letter.id,
            job: replay_one(&mut tx, letter).await?,
        });
    }
    tx.commit().await?;
    Ok((replayed, more))
}

/// Replays `letter` in `tx`: its new job's id (or the live job holding its unique key).
async fn replay_one(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    letter: &DeadLetter,
) -> Result<i64, Error> {
    // insert directly (not through penguin.enqueue): the kind may have left
    // penguin.kinds, and a replay should still be possible; a job of a kind no daemon
    // handles waits for one (see queue::daemons).
    let inserted: Option<i64> = sqlx::query_scalar(
        "insert into penguin.jobs (queue, kind, payload, state, priority, max_attempts, unique_key, tenant_id)
         values ($1, $2, $3, 'available', $4, $5, $6, $7)
         on conflict do nothing
         returning id",
    )
    .bind(&letter.queue)
    .bind(&letter.kind)
    .bind(&letter.payload)
    .bind(letter.priority)
    .bind(letter.max_attempts)
    .bind(&letter.unique_key)
    .bind(letter.tenant_id)
    .fetch_optional(&mut **tx)
    .await?;
    let job = match inserted {
        Some(id) => id,
        None => {
            sqlx::query_scalar(concat!(
                "select id from penguin.jobs
                 where kind = $1 and ",
                same_tenant!("tenant_id", "$2::uuid"),
                " and unique_key = $3 and finished_at is null and state in ",
                live_states!()
            ))
            .bind(&letter.kind)
            .bind(letter.tenant_id)
            .bind(&letter.unique_key)
            .fetch_one(&mut **tx)
            .await?
        }
    };
    sqlx::query(
        "update penguin.dead_letters set replayed_at = now(), replayed_as = $2 where id = $1",
    )
    .bind(letter.id)
    .bind(job)
    .execute(&mut **tx)
    .await?;
    Ok(job)
}

/// Deletes dead letters older than `older_than`; returns how many.
pub async fn purge_dead_letters(pool: &PgPool, older_than: Duration) -> Result<u64, Error> {
    let done = sqlx::query(
        "delete from penguin.dead_letters where dead_at < now() - make_interval(secs => $1)",
    )
    .bind(older_than.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Job counts of one queue, per state, plus its dead letters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retryable: i64,
    pub completed: i64,
    pub cancelled: i64,
    pub dead_letters: i64,
}

/// Counts per queue and state.
pub async fn stats(pool: &PgPool) -> Result<Vec<QueueStats>, Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select queue, state, count(*) from penguin.jobs group by 1, 2
         union all
         select queue, 'dead_letters', count(*) from penguin.dead_letters group by 1
         order by 1, 2",
    )
    .fetch_all(pool)
    .await?;
    let mut out: Vec<QueueStats> = Vec::new();
    for (queue, state, count) in rows {
        if out.last().is_none_or(|s| s.queue != queue) {
            out.push(QueueStats {
                queue: queue.clone(),
                ..QueueStats::default()
            });
        }
        let s = out.last_mut().expect("pushed above");
        match state.parse::<JobState>() {
            Ok(JobState::Available) => s.available = count,
            Ok(JobState::Scheduled) => s.scheduled = count,
            Ok(JobState::Running) => s.running = count,
            Ok(JobState::Retryable) => s.retryable = count,
            Ok(JobState::Completed) => s.completed = count,
            Ok(JobState::Cancelled) => s.cancelled = count,
            // the second half of the union
            Err(_) => s.dead_letters = count,
        }
    }
    Ok(out)
}
