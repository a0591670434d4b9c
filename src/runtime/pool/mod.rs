//! One worker pool per queue: an apalis worker over [`PgBackend`], fed by a claimer task
//! that keeps a short, priority-ordered buffer of claimed jobs ahead of the workers,
//! drained by a flusher task that writes outcomes back in batches, a heartbeat task that
//! extends the leases of every job the pool holds, and a marker task that records when
//! long-running jobs started. Claim, run and ack never happen in lockstep.
//!
//! Claiming ahead is bounded by what the workers will start within a short horizon at the
//! rate they are starting jobs ([`prefetch_horizon`]: 10 ms for jobs of 5 ms or more, up
//! to 50 ms for jobs under a millisecond): a fast queue claims whole batches, a slow one a
//! job or two as workers free up, so a claimed job never waits long in the buffer and an
//! urgent job enqueued meanwhile is not queued behind hundreds.
//!
//! Must never call a provider itself, and never lose track of a claimed job: every
//! claimed id stays in `held` until its outcome is written or it is released. One outcome
//! the database refuses must never hold back the others.

mod attempt;
mod claimer;
mod cursor;
mod flusher;
mod idle;
mod lease;
mod shared;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::WorkerBuilderExt;
use apalis_core::error::WorkerError;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::ext::event_listener::EventListenerExt;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backend::PgBackend;
use super::supervisor::{DbHealth, Supervisor, panic_message, spawn_supervised};
use crate::jobs::Registry;

pub use attempt::{Dispatcher, run_attempt};
pub use claimer::prefetch_horizon;
pub use flusher::FlushMsg;
pub use shared::Shared;

/// Settings of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub queue: String,
    pub concurrency: usize,
    /// Most jobs claimed per statement.
    pub batch: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub flush_batch: usize,
    pub shutdown_grace: Duration,
    /// `[retention] completed = "0s"`: delete jobs at completion.
    pub delete_completed: bool,
    /// Kinds this daemon has a handler for: the only ones it claims.
    pub kinds: Arc<[String]>,
}

impl PoolSettings {
    /// Most jobs claimed and not yet written back: the running ones, up to two batches
    /// buffered and two awaiting write-back.
    pub fn max_held(&self) -> usize {
        self.concurrency + self.batch * 4
    }
}

/// The database connections a pool uses, each set for one purpose so that none starves
/// another: claims and releases, outcome writes, and leases (heartbeats and start marks).
#[derive(Debug, Clone)]
pub struct Connections {
    pub main: PgPool,
    pub flush: PgPool,
    pub lease: PgPool,
}

/// A running pool.
pub struct PoolHandle {
    pub shared: Arc<Shared>,
    pub task: JoinHandle<()>,
}

/// What every pool of a daemon shares: the supervisor its dying tasks fail, the database
/// health its writers report to, and the metrics it counts into.
#[derive(Clone)]
pub struct Watchers {
    pub supervisor: Arc<Supervisor>,
    pub health: Arc<DbHealth>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Starts the pool for `settings.queue`; it stops when `shutdown` is cancelled. A task of
/// the pool that dies fails the supervisor of `watchers`.
pub fn start(
    settings: PoolSettings,
    conns: Connections,
    registry: Arc<Registry>,
    worker_id: String,
    shutdown: CancellationToken,
    watchers: &Watchers,
) -> PoolHandle {
    let supervisor = watchers.supervisor.clone();
    let shared = Arc::new(Shared::new(
        settings,
        conns,
        worker_id,
        watchers.health.clone(),
        &watchers.metrics,
    ));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    spawn_tasks(&shared, &supervisor, out_rx);
    let run = worker_run(&shared, registry, out_tx.clone(), shutdown.clone());
    let task = tokio::spawn(supervise_worker(
        run,
        shared.clone(),
        shutdown,
        supervisor,
        out_tx,
    ));
    PoolHandle { shared, task }
}

/// Spawns the pool's claimer, flusher, heartbeat and start marker tasks, each failing
/// `supervisor` if it dies.
fn spawn_tasks(
    shared: &Arc<Shared>,
    supervisor: &Arc<Supervisor>,
    outcomes: mpsc::UnboundedReceiver<FlushMsg>,
) {
    let q = &shared.queue;
    let claimer_task = spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "claimer",
        shared.stop_claiming.clone(),
        claimer::claimer(shared.clone()),
    );
    *shared.claimer.lock().expect("claimer lock") = Some(claimer_task);
    let background = shared.stop_background.clone();
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "flusher",
        background.clone(),
        flusher::flusher(shared.clone(), outcomes),
    );
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "heartbeat",
        background.clone(),
        lease::heartbeat(shared.clone()),
    );
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "start marker",
        background,
        lease::start_marker(shared.clone()),
    );
}

/// How a pool's apalis worker stopped, or its panic.
type WorkerRun = BoxFuture<'static, std::thread::Result<Result<(), WorkerError>>>;

/// Builds the pool's apalis worker over [`PgBackend`] and returns its run (which starts
/// when first polled), stopping the worker once `shutdown` is cancelled.
fn worker_run(
    shared: &Arc<Shared>,
    registry: Arc<Registry>,
    outcomes: mpsc::UnboundedSender<FlushMsg>,
    shutdown: CancellationToken,
) -> WorkerRun {
    let backend = PgBackend {
        outcomes,
        shared: shared.clone(),
        closing: None,
    };
    let dispatcher = Dispatcher {
        registry,
        delete_completed: shared.settings.delete_completed,
    };
    let worker = WorkerBuilder::new(format!("{}:{}", shared.settings.queue, shared.worker))
        .backend(backend)
        // the default listener formats every event at debug level: measurable per task
        .on_event(|_, _| {})
        .concurrency(shared.settings.concurrency)
        .build(dispatcher);
    AssertUnwindSafe(worker.run_with_ctx(move |ctx| {
        let stop = shutdown.clone();
        async move {
            stop.cancelled().await;
            let _ = ctx.stop();
            Ok(())
        }
    }))
    .catch_unwind()
    .boxed()
}

/// Drives the worker's `run`: a worker that stops before `shutdown` fails `supervisor`;
/// after `shutdown`, it gets the shutdown grace to finish its running jobs. Then finishes
/// the pool (see [`Shared::finish`]).
async fn supervise_worker(
    run: WorkerRun,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    supervisor: Arc<Supervisor>,
    outcomes: mpsc::UnboundedSender<FlushMsg>,
) {
    let grace = async {
        shutdown.cancelled().await;
        shared.stop_claiming.cancel();
        tokio::time::sleep(shared.settings.shutdown_grace).await;
    };
    let q = &shared.queue;
    tokio::select! {
        result = run => match result {
            Ok(Ok(())) if shutdown.is_cancelled() => {}
            Ok(Ok(())) => supervisor.fail(format!("pool {q}: its worker stopped while the pool was running")),
            Ok(Err(e)) => supervisor.fail(format!("pool {q}: its worker stopped with an error: {e}")),
            Err(panic) => supervisor.fail(format!("pool {q}: its worker panicked: {}", panic_message(panic.as_ref()))),
        },
        () = grace => {
            tracing::warn!(
                queue = %q,
                grace = %humantime::format_duration(shared.settings.shutdown_grace),
                "shutdown grace elapsed with jobs still running; releasing them"
            );
        }
    }
    shared.finish(&outcomes).await;
}
