//! Pruning: deletes finished jobs, dead letters and stored webhooks past their retention,
//! in bounded batches (one short statement each) so a prune never holds locks for long.
//!
//! Must never touch a live job: only `completed` and `cancelled` rows are pruned.

use std::time::Duration;

use sqlx::PgPool;

use super::Error;
use super::state::finished_states;

/// What one prune pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub jobs: u64,
    pub dead_letters: u64,
}

/// Deletes `completed` and `cancelled` jobs that finished more than `jobs_older_than`
/// ago, and dead letters older than `dead_letters_older_than` (`None` keeps them), at
/// most `batch` rows per statement, until none is left.
pub async fn prune(
    pool: &PgPool,
    jobs_older_than: Duration,
    dead_letters_older_than: Option<Duration>,
    batch: i64,
) -> Result<Pruned, Error> {
    let jobs = delete_in_batches(
        pool,
        concat!(
            "delete from penguin.jobs where id in (
             select id from penguin.jobs
              where state in ",
            finished_states!(),
            "
                and finished_at < now() - make_interval(secs => $1)
              order by id
              limit $2
              for update skip locked)"
        ),
        jobs_older_than,
        batch,
    )
    .await?;
    let dead_letters = match dead_letters_older_than {
        Some(age) => {
            delete_in_batches(
                pool,
                "delete from penguin.dead_letters where id in (
                     select id from penguin.dead_letters
                      where dead_at < now() - make_interval(secs => $1)
                      order by dead_at
                      limit $2
                      for update skip locked)",
                age,
                batch,
            )
            .await?
        }
        None => 0,
    };
    Ok(Pruned { jobs, dead_letters })
}

/// Deletes stored webhooks (`penguin.inbound_events`) received more than `older_than` ago,
/// at most `batch` per statement, until none is left; returns how many. Email events and
/// suppressions that came from them keep their data (their reference becomes null).
pub async fn prune_inbound_events(
    pool: &PgPool,
    older_than: Duration,
    batch: i64,
) -> Result<u64, Error> {
    delete_in_batches(
        pool,
        "delete from penguin.inbound_events where id in (
             select id from penguin.inbound_events
              where received_at < now() - make_interval(secs => $1)
              limit $2
              for update skip locked)",
        older_than,
        batch,
    )
    .await
}

/// Forgets webhook replay tokens seen more than `older_than` ago (a delivery that old is
/// refused by its timestamp anyway); returns how many.
pub async fn prune_replay_tokens(
    pool: &PgPool,
    older_than: Duration,
    batch: i64,
) -> Result<u64, Error> {
    delete_in_batches(
        pool,
        "delete from penguin.webhook_replay_tokens where (provider, token) in (
             select provider, token from penguin.webhook_replay_tokens
              where seen_at < now() - make_interval(secs => $1)
              limit $2
              for update skip locked)",
        older_than,
        batch,
    )
    .await
}

/// Runs `sql` (`$1` an age in seconds, `$2` the batch size) until a statement deletes
/// fewer than `batch` rows; returns how many were deleted in all.
async fn delete_in_batches(
    pool: &PgPool,
    sql: &str,
    age: Duration,
    batch: i64,
) -> Result<u64, Error> {
    let mut deleted = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(age.as_secs_f64())
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
        deleted += n;
        if n < batch as u64 {
            return Ok(deleted);
        }
    }
}
