//! The worker runtime: apalis workers over our own PostgreSQL backend, one pool per
//! queue, a LISTEN task that wakes idle pools, the rescuer of expired leases, and the
//! graceful shutdown that ties them together.
//!
//! It runs what the `jobs/` registry offers and stores through `queue/`. It must never
//! call a provider directly, and never sleep in memory in place of a persisted retry.

pub mod backend;
pub mod pool;
pub mod retry;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jobs::Registry;
use crate::queue;

pub use pool::{PoolSettings, run_attempt};

/// Runtime errors at start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The queues this daemon works: every queue a kind is routed to, plus every
/// `[queues.NAME]` table.
pub fn queues(config: &Config, registry: &Registry) -> BTreeSet<String> {
    let mut queues = registry.queues();
    queues.extend(config.queues.keys().cloned());
    queues
}

/// An identity for `leased_by`: host, pid and a random suffix, unique per start.
pub fn daemon_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Runs every pool until `shutdown` is cancelled, then drains them: each pool stops
/// claiming, lets in-flight jobs finish within `shutdown_grace`, writes outcomes and
/// releases the rest without spending an attempt. Returns when all is written back.
pub async fn run(
    config: &Config,
    pool: PgPool,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let id = daemon_id();
    // Outcome writes get their own connections with generic plans: their statements
    // probe the primary key whatever the statistics say (custom plans of an ack over a
    // table whose `leased_by` was all NULL at ANALYZE time flipped to seq scans).
    let flush_options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    let flush_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(flush_options)
        .await?;

    let d = &config.daemon;
    let mut pools = Vec::new();
    let mut wakers: HashMap<String, Arc<Notify>> = HashMap::new();
    for queue_name in queues(config, &registry) {
        let q = config.queue(&queue_name);
        let settings = PoolSettings {
            queue: queue_name.clone(),
            concurrency: q.concurrency,
            batch: q.batch_size(),
            lease: d.lease,
            poll_interval: d.poll_interval,
            flush_batch: d.flush_batch,
            shutdown_grace: d.shutdown_grace,
            delete_completed: config.retention.completed.is_zero(),
        };
        let handle = pool::start(
            settings,
            pool.clone(),
            flush_pool.clone(),
            registry.clone(),
            format!("{id}/{queue_name}"),
            shutdown.clone(),
        );
        wakers.insert(queue_name, handle.shared.wake.clone());
        pools.push(handle);
    }
    tracing::info!(
        worker = %id,
        queues = ?wakers.keys().collect::<BTreeSet<_>>(),
        "worker pools started"
    );

    let background = CancellationToken::new();
    let listener = tokio::spawn(listen(pool.clone(), wakers, background.clone()));
    let maintenance = tokio::spawn(maintain(
        pool.clone(),
        d.rescue_interval,
        d.poll_interval,
        background.clone(),
    ));

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new claims; waiting for running jobs");
    for handle in pools {
        let _ = handle.task.await;
    }
    background.cancel();
    let _ = listener.await;
    let _ = maintenance.await;
    flush_pool.close().await;
    tracing::info!("all pools drained");
    Ok(())
}

/// LISTENs on a dedicated connection and rings the pools named in each notification.
/// A notification is only a hint: after a reconnect every pool is woken, since
/// notifications sent meanwhile are lost; polling covers the rest.
async fn listen(pool: PgPool, wakers: HashMap<String, Arc<Notify>>, stop: CancellationToken) {
    let wake_all = || wakers.values().for_each(|w| w.notify_one());
    let mut failures: u32 = 0;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "LISTEN connection failed; relying on polling meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(5)))) => continue,
                    () = stop.cancelled() => return,
                }
            }
        };
        if let Err(e) = listener.listen(queue::NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed");
            continue;
        }
        failures = 0;
        wake_all();
        loop {
            tokio::select! {
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => {
                        for q in n.payload().split(',') {
                            if let Some(w) = wakers.get(q) {
                                w.notify_one();
                            }
                        }
                    }
                    // connection lost; the next try_recv reconnects
                    Ok(None) => wake_all(),
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection broke; reconnecting");
                        break;
                    }
                },
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Rescues expired leases every `every`, and forgets idle marks of workers that stopped
/// refreshing them (crashed daemons), so inserts stop paying NOTIFY on their account.
async fn maintain(pool: PgPool, every: Duration, poll_interval: Duration, stop: CancellationToken) {
    const RESCUE_BATCH: i64 = 1000;
    let stale = (poll_interval * 3).max(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        loop {
            match queue::rescue_expired(&pool, RESCUE_BATCH).await {
                Ok(c) if c.requeued + c.dead == RESCUE_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rescue failed");
                    break;
                }
            }
        }
        if let Err(e) = queue::forget_stale_idle_marks(&pool, stale).await {
            tracing::debug!(error = %e, "could not clean idle marks");
        }
    }
}
