//! `maintenance.prune`: deletes completed and cancelled jobs past `[retention] completed`,
//! dead letters past `[retention] dead_letters` and stored webhooks past
//! `[retention] inbound_events`, in bounded batches. Enqueued by the built-in
//! `maintenance.prune` schedule.
//!
//! Must never delete a live job or a dead letter younger than its retention.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{Attempt, Handler, JobContext, JobError, KindPolicy};
use crate::config::{BackoffConfig, BackoffStrategy, Config};
use crate::error_class::ErrorClass;
use crate::queue;

/// The `maintenance.prune` kind.
#[derive(Debug, Clone)]
pub struct Prune {
    pool: Option<PgPool>,
    completed: Duration,
    dead_letters: Option<Duration>,
    inbound_events: Option<Duration>,
    batch: i64,
}

impl Prune {
    pub fn new(config: &Config, pool: Option<PgPool>) -> Self {
        let dead = config.retention.dead_letters;
        Self {
            pool,
            completed: config.retention.completed,
            dead_letters: (!dead.is_zero()).then_some(dead),
            inbound_events: Some(config.retention.inbound_events).filter(|d| !d.is_zero()),
            batch: i64::from(config.maintenance.prune_batch),
        }
    }
}

impl Handler for Prune {
    fn kind(&self) -> &'static str {
        crate::scheduler::PRUNE
    }

    fn default_policy(&self) -> KindPolicy {
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

    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        match payload.as_object() {
            Some(o) if o.is_empty() => Ok(()),
            _ => Err("takes no payload (use {})".into()),
        }
    }

    fn run(&self, _ctx: JobContext, _payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let this = self.clone();
        Box::pin(async move {
            let Some(pool) = this.pool else {
                return Err(JobError::Fatal {
                    class: ErrorClass::Configuration,
                    message: "no database pool given to the prune handler".into(),
                    status: None,
                });
            };
            let pruned = queue::prune(&pool, this.completed, this.dead_letters, this.batch).await?;
            let inbound = match this.inbound_events {
                Some(age) => queue::prune_inbound_events(&pool, age, this.batch).await?,
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
            })))
        })
    }
}
