//! The worker runtime: apalis workers over our own PostgreSQL backend, one pool per
//! queue, a LISTEN task that wakes idle pools, the rescuer of expired leases, and the
//! graceful shutdown that ties them together.
//!
//! It runs what the `jobs/` registry offers and stores through `queue/`. It must never
//! call a provider directly, and never sleep in memory in place of a persisted retry.

pub mod backend;
pub mod pool;
pub mod retry;
pub mod supervisor;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::jobs::Registry;
use crate::metrics::Metrics;
use crate::queue;
use crate::queue::daemons::WaitingKind;

pub use pool::{PoolSettings, run_attempt};
use supervisor::{DbHealth, Supervisor};

/// Runtime errors.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A pool's task died; every pool was drained and held jobs released.
    #[error("{0}; every pool was drained and its held jobs released")]
    PoolFailed(String),
}

/// After a database failure, how long this daemon waits before it rescues expired
/// leases: its own outcome writes and heartbeats get the first chance.
const RESCUE_SETTLE: Duration = Duration::from_secs(5);

/// The queues this daemon works: every queue a kind is routed to, plus every
/// `[queues.NAME]` table.
pub fn queues(config: &Config, registry: &Registry) -> BTreeSet<String> {
    let mut queues = registry.queues();
    queues.extend(config.queues.keys().cloned());
    queues
}

/// An identity for `leased_by`: host, pid and a random suffix, unique per start.
pub fn daemon_id() -> String {
    let host = host_name().unwrap_or_else(|| "localhost".into());
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// The host's name, from the kernel (not `/proc/sys`, which the unit's `ProcSubset=pid`
/// hides).
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// Runs every pool until `shutdown` is cancelled, then drains them: each pool stops
/// claiming, lets in-flight jobs finish within `shutdown_grace`, writes outcomes and
/// releases the rest without spending an attempt. Returns when all is written back.
/// If a pool's task dies meanwhile, every pool is drained the same way and the error says
/// which task died and why (the daemon must then exit non-zero to be restarted).
pub async fn run(
    config: &Config,
    pool: PgPool,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    run_reporting(config, pool, registry, shutdown, None, Metrics::new()).await
}

/// [`run`], telling `ready` when the pools have started, and counting into `metrics`.
pub async fn run_reporting(
    config: &Config,
    pool: PgPool,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    ready: Option<&crate::readiness::Readiness>,
    metrics: Arc<Metrics>,
) -> Result<(), RuntimeError> {
    let id = daemon_id();
    let conns = connect(&pool).await?;

    let d = &config.daemon;
    let kinds: Arc<[String]> = registry.kinds().iter().map(|k| k.to_string()).collect();
    let supervisor = Arc::new(Supervisor::default());
    let health = Arc::new(DbHealth::default());
    let watchers = pool::Watchers {
        supervisor: supervisor.clone(),
        health: health.clone(),
        metrics,
    };
    // pools stop on a signal, or when one of them failed
    let stop_pools = shutdown.child_token();
    let mut pools = Vec::new();
    let mut wakers: HashMap<String, Arc<Notify>> = HashMap::new();
    for queue_name in queues(config, &registry) {
        let handle = pool::start(
            pool_settings(config, &queue_name, kinds.clone()),
            conns.clone(),
            registry.clone(),
            format!("{id}/{queue_name}"),
            stop_pools.clone(),
            &watchers,
        );
        wakers.insert(queue_name, handle.shared.wake.clone());
        pools.push(handle);
    }
    let queue_names: Vec<String> = wakers.keys().cloned().collect();
    tracing::info!(
        worker = %id,
        queues = ?wakers.keys().collect::<BTreeSet<_>>(),
        "worker pools started"
    );
    // recorded as alive before anyone hears the pools started: the alert evaluator and
    // the unserved-queue warning must not find these queues unserved while they are served
    if let Err(e) = queue::register_daemon(&pool, &id, &kinds, &queue_names).await {
        tracing::debug!(error = %e, "could not record this daemon as alive yet; maintenance retries");
    }
    if let Some(ready) = ready {
        ready.pools_started();
    }

    let background = CancellationToken::new();
    let listener = tokio::spawn(listen(pool.clone(), wakers, background.clone()));
    let reporter = tokio::spawn(report_finished(
        pool.clone(),
        pools.iter().map(|p| p.shared.clone()).collect(),
        background.clone(),
    ));
    let maintenance = tokio::spawn(maintain(
        Maintenance {
            pool: pool.clone(),
            daemon: id.clone(),
            kinds: kinds.to_vec(),
            queues: queue_names,
            every: d.rescue_interval,
            poll_interval: d.poll_interval,
            unknown_kind_grace: d.unknown_kind_grace,
            horizon_warn: d.horizon_warn,
            health,
        },
        background.clone(),
    ));

    wait_for_stop(&shutdown, &supervisor).await;
    stop_pools.cancel();
    for handle in pools {
        let _ = handle.task.await;
    }
    background.cancel();
    let _ = listener.await;
    let _ = reporter.await;
    let _ = maintenance.await;
    conns.flush.close().await;
    conns.lease.close().await;
    if let Some(reason) = supervisor.reason() {
        return Err(RuntimeError::PoolFailed(reason));
    }
    tracing::info!("all pools drained");
    Ok(())
}

/// The connections of every pool: `pool` for claims and releases, plus two pools of
/// their own, for outcome writes and for leases.
/// The session settings of the connections that write outcomes, heartbeats and start
/// marks. Generic plans: their statements probe the primary key whatever the statistics
/// say (custom plans of an ack over a table whose `leased_by` was all NULL at ANALYZE time
/// flipped to seq scans). No sequential scans: with statistics taken while the table was
/// empty (a fresh install before its first burst) the planner believed it tiny and read all
/// of it for every ack (tests/plans.rs). Every statement on them is a key lookup.
pub const KEYED_WRITE_SESSION: &[(&str, &str)] = &[
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
];

async fn connect(pool: &PgPool) -> Result<pool::Connections, RuntimeError> {
    // outcome writes get their own connections, so that claims never wait for them
    let keyed = (*pool.connect_options())
        .clone()
        .options(KEYED_WRITE_SESSION.iter().copied());
    let flush_pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(keyed.clone())
        .await?;
    // Heartbeats and start marks get their own two connections: handlers, the shim and
    // OAuth share the main pool, and a starved heartbeat lets a live job be rescued.
    let lease_pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(keyed)
        .await?;
    Ok(pool::Connections {
        main: pool.clone(),
        flush: flush_pool,
        lease: lease_pool,
    })
}

/// The settings of the pool of `queue_name`, from `[daemon]`, `[queues.NAME]` and
/// `[retention]`.
fn pool_settings(config: &Config, queue_name: &str, kinds: Arc<[String]>) -> PoolSettings {
    let d = &config.daemon;
    let q = config.queue(queue_name);
    PoolSettings {
        queue: queue_name.to_string(),
        concurrency: q.concurrency,
        batch: q.batch_size(),
        lease: d.lease,
        poll_interval: d.poll_interval,
        flush_batch: d.flush_batch,
        shutdown_grace: d.shutdown_grace,
        delete_completed: config.retention.completed.is_zero(),
        kinds,
    }
}

/// Waits for a shutdown signal or for a pool to fail, and says which.
async fn wait_for_stop(shutdown: &CancellationToken, supervisor: &Supervisor) {
    tokio::select! {
        () = shutdown.cancelled() => {
            tracing::info!("shutting down: no new claims; waiting for running jobs");
        }
        () = supervisor.failed().cancelled() => {
            tracing::error!("a pool failed: draining every pool before exiting");
        }
    }
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
            failures += 1;
            tracing::warn!(error = %e, "LISTEN failed; relying on polling meanwhile");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(failures.min(5)))) => continue,
                () = stop.cancelled() => return,
            }
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

/// How often each daemon adds its pools' finished jobs to `penguin.queue_minutes`.
const REPORT_FINISHED_EVERY: Duration = Duration::from_secs(5);

/// Every [`REPORT_FINISHED_EVERY`] (and once more at the end), adds the jobs each pool
/// finished to this minute's row of its queue; counts that cannot be written are kept for
/// the next report.
async fn report_finished(pool: PgPool, pools: Vec<Arc<pool::Shared>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REPORT_FINISHED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        let taken: Vec<[u64; 3]> = pools.iter().map(|p| p.take_finished()).collect();
        let counts: Vec<queue::FinishedCounts> = pools
            .iter()
            .zip(&taken)
            .filter(|(_, t)| t.iter().any(|n| *n > 0))
            .map(|(p, t)| queue::FinishedCounts {
                queue: p.queue.clone(),
                completed: t[0] as i64,
                retried: t[1] as i64,
                dead_lettered: t[2] as i64,
            })
            .collect();
        if let Err(e) = queue::add_finished(&pool, &counts).await {
            tracing::debug!(error = %e, "could not record finished jobs per minute; kept for the next report");
            for (p, t) in pools.iter().zip(taken) {
                p.restore_finished(t);
            }
        }
        if last {
            return;
        }
    }
}

/// What the maintenance task needs.
struct Maintenance {
    pool: PgPool,
    daemon: String,
    kinds: Vec<String>,
    queues: Vec<String>,
    every: Duration,
    poll_interval: Duration,
    unknown_kind_grace: Duration,
    horizon_warn: Duration,
    health: Arc<DbHealth>,
}

/// Every `every`: says this daemon is alive and which kinds it handles; rescues expired
/// leases (once this daemon's own writes settled after a database failure); forgets idle
/// marks of workers that stopped refreshing them (crashed daemons), so inserts stop paying
/// NOTIFY on their account; reports jobs whose kind no live daemon handles, and
/// dead-letters those that waited longer than `unknown_kind_grace`; warns about a
/// transaction holding the xmin horizon longer than `horizon_warn`.
async fn maintain(m: Maintenance, stop: CancellationToken) {
    let stale = (m.poll_interval * 3).max(Duration::from_secs(60));
    let window = queue::daemons::liveness_window(m.every);
    let mut reported: HashMap<String, (i64, Instant)> = HashMap::new();
    let mut unserved_reported: Option<(Vec<queue::UnservedQueue>, Instant)> = None;
    let mut horizon_watch = HorizonWatch::default();
    let mut first = true;
    match queue::horizon::blind_spot(&m.pool).await {
        Ok(Some(role)) => tracing::warn!("{}", queue::horizon::blind_spot_advice(&role)),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not tell whether the horizon warning sees every role")
        }
    }
    loop {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(m.every) => {}
                () = stop.cancelled() => break,
            }
        }
        first = false;
        if let Err(e) = queue::register_daemon(&m.pool, &m.daemon, &m.kinds, &m.queues).await {
            if e.is_transient() {
                m.health.failed();
            }
            tracing::warn!(error = %e, "could not record this daemon as alive");
            continue;
        }
        rescue(&m).await;
        if let Err(e) = queue::forget_stale_idle_marks(&m.pool, stale).await {
            tracing::debug!(error = %e, "could not clean idle marks");
        }
        match queue::waiting_kinds(&m.pool, window).await {
            Ok(waiting) => {
                report_waiting(&m, &waiting, &mut reported);
                bury_overdue(&m, &waiting, window).await;
            }
            Err(e) => tracing::debug!(error = %e, "could not look for jobs of unhandled kinds"),
        }
        warn_of_held_horizon(&m, &mut horizon_watch).await;
        warn_of_unserved_queues(&m, window, &mut unserved_reported).await;
    }
    if let Err(e) = queue::unregister_daemon(&m.pool, &m.daemon, window).await {
        tracing::debug!(error = %e, "could not remove this daemon's row");
    }
}

/// When the maintenance loop last warned of a held horizon, and last reported failing to
/// read it: each at most once per `horizon_warn`.
#[derive(Default)]
struct HorizonWatch {
    warned_at: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Warns, at most once per `horizon_warn`, when a transaction has held the xmin horizon
/// longer than `horizon_warn`: VACUUM cannot clean the queue behind it, and claims slow
/// down as dead row versions pile up.
async fn warn_of_held_horizon(m: &Maintenance, watch: &mut HorizonWatch) {
    if watch
        .warned_at
        .is_some_and(|at| at.elapsed() < m.horizon_warn)
    {
        return;
    }
    match queue::horizon::oldest_holder(&m.pool).await {
        Ok(Some(holder)) if holder.held_longer_than(m.horizon_warn) => {
            tracing::warn!(
                holder = %holder.describe(),
                "a transaction holds the xmin horizon: VACUUM cannot remove the queue's dead \
                 row versions until it ends, and claims slow down; end it, or see `penguin-jobs stats`"
            );
            watch.warned_at = Some(Instant::now());
        }
        Ok(_) => {}
        Err(e)
            if watch
                .failed_at
                .is_none_or(|at| at.elapsed() >= m.horizon_warn) =>
        {
            tracing::warn!(
                error = %e,
                "could not read the xmin horizon (retried every maintenance tick, reported once per \
                 daemon.horizon_warn)"
            );
            watch.failed_at = Some(Instant::now());
        }
        Err(_) => {}
    }
}

/// Rescues expired leases, a batch at a time until none is left, then deletes the claims
/// rows no job runs under any more, unless this daemon had database failures in the last
/// seconds (its own writes get the first chance).
async fn rescue(m: &Maintenance) {
    const RESCUE_BATCH: i64 = 1000;
    if m.health.settled(RESCUE_SETTLE) {
        loop {
            match queue::rescue_expired(&m.pool, RESCUE_BATCH).await {
                Ok(c) if c.requeued + c.dead == RESCUE_BATCH as u64 => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "rescue failed");
                    break;
                }
            }
        }
        match queue::forget_finished_claims(&m.pool, queue::CLAIMS_CHECKED_AFTER).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(claims = n, "forgot claims none of whose jobs still runs"),
            Err(e) => tracing::debug!(error = %e, "could not forget finished claims"),
        }
    } else {
        tracing::info!(
            "database failures in the last seconds: rescue waits until this daemon's own writes are through"
        );
    }
}

/// Warns about each kind whose jobs wait for a daemon that handles it: again when their
/// number changed or five minutes after the last warning. `reported` remembers the last
/// warning of each kind still waiting.
fn report_waiting(
    m: &Maintenance,
    waiting: &[WaitingKind],
    reported: &mut HashMap<String, (i64, Instant)>,
) {
    reported.retain(|k, _| waiting.iter().any(|w| &w.kind == k));
    for w in waiting {
        let again = reported
            .get(&w.kind)
            .is_none_or(|(n, at)| *n != w.jobs || at.elapsed() >= Duration::from_secs(300));
        if again {
            tracing::warn!(
                kind = %w.kind, jobs = w.jobs, oldest_due_secs = w.oldest_due_secs,
                grace = %humantime::format_duration(m.unknown_kind_grace),
                "{} jobs of kind {} wait for a daemon that handles it; they are dead-lettered as unknown_kind after the grace",
                w.jobs, w.kind
            );
            reported.insert(w.kind.clone(), (w.jobs, Instant::now()));
        }
    }
}

/// Warns about queues that hold jobs, or that `penguin.kinds` routes kinds to, with no pool
/// in any live daemon (a `[queues.NAME]` table missing, a typo in a job's queue): again
/// when the set changed or ten minutes after the last warning.
async fn warn_of_unserved_queues(
    m: &Maintenance,
    window: Duration,
    reported: &mut Option<(Vec<queue::UnservedQueue>, Instant)>,
) {
    let unserved = match queue::unserved_queues(&m.pool, window).await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "could not look for queues without a pool");
            return;
        }
    };
    let again = reported
        .as_ref()
        .is_none_or(|(last, at)| *last != unserved || at.elapsed() >= Duration::from_secs(600));
    if !again {
        return;
    }
    for u in &unserved {
        if u.has_jobs {
            tracing::warn!(
                queue = %u.queue,
                "queue {:?} holds jobs but no running daemon has a pool for it: they wait until \
                 one does (add [queues.{}] to a daemon's config, or enqueue to a served queue)",
                u.queue, u.queue
            );
        } else {
            tracing::warn!(
                queue = %u.queue,
                "penguin.kinds routes kinds to queue {:?}, which no running daemon serves: their \
                 jobs will wait (a daemon of another release registered them?)",
                u.queue
            );
        }
    }
    *reported = Some((unserved, Instant::now()));
}

/// Dead-letters, a batch at a time, the jobs of the waiting kinds that waited longer than
/// `unknown_kind_grace`.
async fn bury_overdue(m: &Maintenance, waiting: &[WaitingKind], window: Duration) {
    const BURY_BATCH: i64 = 1000;
    let overdue: Vec<String> = waiting
        .iter()
        .filter(|w| w.oldest_due_secs as u64 >= m.unknown_kind_grace.as_secs())
        .map(|w| w.kind.clone())
        .collect();
    loop {
        match queue::daemons::bury_unhandled(
            &m.pool,
            &overdue,
            m.unknown_kind_grace,
            window,
            BURY_BATCH,
        )
        .await
        {
            Ok(n) => {
                if n > 0 {
                    tracing::error!(
                        jobs = n, kinds = ?overdue,
                        "jobs whose kind no daemon handled for longer than unknown_kind_grace moved to the dead letters"
                    );
                }
                if n < BURY_BATCH as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not dead-letter jobs of unhandled kinds");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_id_starts_with_the_kernels_host_name() {
        let proc = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(host_name().as_deref(), Some(proc.trim()));
        assert!(daemon_id().starts_with(&format!("{}:{}:", proc.trim(), std::process::id())));
    }
}
