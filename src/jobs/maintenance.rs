//! `maintenance.prune`: deletes completed and cancelled jobs past `[retention] completed`,
//! dead letters past `[retention] dead_letters`, stored webhooks past
//! `[retention] inbound_events`, in bounded batches, and per-minute call rollups past
//! `[retention] metrics`. Enqueued by the built-in
//! `maintenance.prune` schedule.
//!
//! Must never delete a live job or a dead letter younger than its retention.

use std::time::Duration;

use sqlx::PgPool;

use super::{Attempt, JobContext, Kind, KindPolicy, NoPayload};
use crate::config::{BackoffConfig, BackoffStrategy, Config};
use crate::queue;

/// The `maintenance.prune` kind (no payload).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Prune(NoPayload);

/// What `maintenance.prune` needs: the database and the retention settings.
#[derive(Debug, Clone)]
pub struct Retention {
    pool: PgPool,
    completed: Duration,
    dead_letters: Option<Duration>,
    inbound_events: Option<Duration>,
    metrics: Option<Duration>,
    batch: i64,
}

impl Retention {
    pub fn new(config: &Config, pool: PgPool) -> Self {
        let dead = config.retention.dead_letters;
        Self {
            pool,
            completed: config.retention.completed,
            dead_letters: (!dead.is_zero()).then_some(dead),
            inbound_events: Some(config.retention.inbound_events).filter(|d| !d.is_zero()),
            metrics: Some(config.retention.metrics).filter(|d| !d.is_zero()),
            batch: i64::from(config.maintenance.prune_batch),
        }
    }
}

impl Kind for Prune {
    const KIND: &'static str = crate::scheduler::PRUNE;
    const INTERNAL: bool = true;
    type Deps = Retention;

    fn policy() -> KindPolicy {
        KindPolicy {
            max_attempts: 3,
            timeout: Duration::from_secs(600),
            backoff: BackoffConfig {
                strategy: BackoffStrategy::Fixed,
                base: Duration::from_secs(30),
                max: Duration::from_secs(30),
                jitter: true,
            },
            ..KindPolicy::default()
        }
    }

    async fn run(self, _ctx: &JobContext, r: &Retention) -> Attempt {
        let pruned = queue::prune(&r.pool, r.completed, r.dead_letters, r.batch).await?;
        let inbound = match r.inbound_events {
            Some(age) => queue::prune_inbound_events(&r.pool, age, r.batch).await?,
            None => 0,
        };
        // a delivery a day old is refused by its timestamp long before: its token may go
        let tokens =
            queue::prune_replay_tokens(&r.pool, Duration::from_secs(86_400), r.batch).await?;
        if tokens > 0 {
            tracing::debug!(replay_tokens = tokens, "pruned");
        }
        let metrics = match r.metrics {
            Some(age) => {
                queue::integrations::prune_metrics(&r.pool, age).await?
                    + queue::prune_queue_minutes(&r.pool, age).await?
            }
            None => 0,
        };
        if pruned.jobs + pruned.dead_letters + inbound > 0 {
            tracing::info!(
                jobs = pruned.jobs,
                dead_letters = pruned.dead_letters,
                inbound_events = inbound,
                "pruned"
            );
        }
        Ok(Some(serde_json::json!({
            "jobs": pruned.jobs,
            "dead_letters": pruned.dead_letters,
            "inbound_events": inbound,
            "metrics_rows": metrics,
        })))
    }
}
