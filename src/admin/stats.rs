//! The queue counts every admin reader shares (`/v1/stats`, `/v1/queues`, `/metrics`, the
//! dashboard): read from the database at most once per `[admin] stats_interval`, however
//! many ask, one reading at a time, and never more than [`COST_SHARE`] of the time: a
//! reading that took T is reused for at least T / COST_SHARE. The count walks the live
//! rows, so a large backlog makes it slow (measured: 470 ms at 1M live rows here); without
//! this bound, a scrape every second cost a 1M-job drain a tenth of its rate.
//!
//! Must never count finished rows (the depth reads live rows only: see `queue::queues`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::queue;

/// One queue right now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueueSummary {
    pub queue: String,
    /// Paused: no daemon claims from it.
    pub paused: bool,
    pub available: i64,
    pub scheduled: i64,
    pub running: i64,
    pub retryable: i64,
    /// Dead letters not replayed yet.
    pub dead_letters: i64,
    /// How long the oldest job due now has waited (seconds); `None` when none is due.
    pub oldest_due_age_seconds: Option<f64>,
    /// This daemon runs a pool for it.
    pub served_here: bool,
}

/// Every queue at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// How long reading it took (milliseconds).
    pub took_ms: f64,
    pub queues: Vec<QueueSummary>,
}

/// The largest share of the time the readings may take (2%: a 470 ms count is reused for
/// 23.5 s).
pub const COST_SHARE: f64 = 0.02;

/// The latest snapshot, read again when older than the interval.
pub struct StatsCache {
    pool: PgPool,
    interval: Duration,
    served_here: BTreeSet<String>,
    latest: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl StatsCache {
    /// Counts read on `pool` at most every `interval`; `served_here` the queues this
    /// daemon has pools for (listed even when empty).
    pub fn new(pool: PgPool, interval: Duration, served_here: BTreeSet<String>) -> Self {
        Self {
            pool,
            interval,
            served_here,
            latest: Mutex::new(None),
        }
    }

    /// The counts, at most `interval` old, or older when reading them is slow (see
    /// [`COST_SHARE`]).
    pub async fn snapshot(&self) -> Result<Arc<Snapshot>, queue::Error> {
        let mut latest = self.latest.lock().await;
        if let Some((at, snapshot)) = &*latest
            && at.elapsed() < reuse_for(self.interval, snapshot.took_ms)
        {
            return Ok(snapshot.clone());
        }
        let started = Instant::now();
        let snapshot = Arc::new(self.read().await?);
        *latest = Some((started, snapshot.clone()));
        Ok(snapshot)
    }

    async fn read(&self) -> Result<Snapshot, queue::Error> {
        let started = Instant::now();
        let depths = queue::queue_depths(&self.pool).await?;
        let dead = queue::open_dead_letters(&self.pool).await?;
        let paused = queue::paused_queues(&self.pool).await?;
        let taken_at = Utc::now();
        let mut queues: BTreeMap<String, QueueSummary> = BTreeMap::new();
        fn entry<'a>(
            queues: &'a mut BTreeMap<String, QueueSummary>,
            name: &str,
        ) -> &'a mut QueueSummary {
            queues
                .entry(name.to_string())
                .or_insert_with(|| QueueSummary {
                    queue: name.to_string(),
                    ..QueueSummary::default()
                })
        }
        for name in &self.served_here {
            entry(&mut queues, name).served_here = true;
        }
        for d in depths {
            let q = entry(&mut queues, &d.queue);
            match d.state.as_str() {
                "available" => q.available = d.jobs,
                "scheduled" => q.scheduled = d.jobs,
                "running" => q.running = d.jobs,
                "retryable" => q.retryable = d.jobs,
                _ => {}
            }
            if let Some(due) = d.oldest_due {
                let age = (taken_at - due).num_milliseconds().max(0) as f64 / 1000.0;
                q.oldest_due_age_seconds =
                    Some(q.oldest_due_age_seconds.map_or(age, |a| a.max(age)));
            }
        }
        for d in dead {
            entry(&mut queues, &d.queue).dead_letters = d.dead_letters;
        }
        for p in paused {
            entry(&mut queues, &p.queue).paused = true;
        }
        Ok(Snapshot {
            taken_at,
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            queues: queues.into_values().collect(),
        })
    }
}

/// How long a reading that took `took_ms` is reused: `interval`, or longer so that
/// readings take at most [`COST_SHARE`] of the time.
pub fn reuse_for(interval: Duration, took_ms: f64) -> Duration {
    let secs = if took_ms.is_finite() {
        (took_ms / 1000.0).clamp(0.0, 3600.0)
    } else {
        0.0
    };
    let took = Duration::from_secs_f64(secs);
    interval.max(took.div_f64(COST_SHARE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_reading_is_reused_longer_than_the_interval() {
        let five = Duration::from_secs(5);
        assert_eq!(reuse_for(five, 10.0), five);
        assert_eq!(reuse_for(five, 470.0), Duration::from_millis(23_500));
        assert_eq!(
            reuse_for(Duration::from_millis(1), 0.5),
            Duration::from_millis(25)
        );
        assert_eq!(reuse_for(five, f64::NAN), five);
    }
}
