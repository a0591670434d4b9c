//! Pruning: deletes finished jobs and dead letters past their retention, in bounded
//! batches (one short statement each) so a prune never holds locks for long.
//!
//! Must never touch a live job: only `completed` and `cancelled` rows are pruned.

use std::time::Duration;

use sqlx::PgPool;

use super::Error;

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
    let mut pruned = Pruned::default();
    loop {
        let n = sqlx::query(
            "delete from penguin.jobs where id in (
                 select id from penguin.jobs
                  where state in ('completed', 'cancelled')
                    and finished_at < now() - make_interval(secs => $1)
                  order by id
                  limit $2
                  for update skip locked)",
        )
        .bind(jobs_older_than.as_secs_f64())
        .bind(batch)
        .execute(pool)
        .await?
        .rows_affected();
        pruned.jobs += n;
        if n < batch as u64 {
            break;
        }
    }
    if let Some(age) = dead_letters_older_than {
        loop {
            let n = sqlx::query(
                "delete from penguin.dead_letters where id in (
                     select id from penguin.dead_letters
                      where dead_at < now() - make_interval(secs => $1)
                      order by dead_at
                      limit $2
                      for update skip locked)",
            )
            .bind(age.as_secs_f64())
            .bind(batch)
            .execute(pool)
            .await?
            .rows_affected();
            pruned.dead_letters += n;
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(pruned)
}
