//! One worker pool per queue: an apalis worker over [`PgBackend`], fed by a claimer task
//! that keeps up to two claim batches prefetched, drained by a flusher task that writes
//! outcomes back in batches, and a heartbeat task that extends the leases of every job
//! the pool holds. Claim, run and ack never happen in lockstep.
//!
//! Must never call a provider itself, and never lose track of a claimed job: every
//! claimed id stays in `held` until its outcome is written or it is released.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::ext::event_listener::EventListenerExt;
use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::backend::{JobTask, PgBackend};
use super::retry::outcome_of;
use crate::jobs::{ErrorClass, JobContext, JobError, Registry};
use crate::queue::{self, ClaimedJob, DeadReason, ErrorEntry, Outcome};

/// Settings of one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub queue: String,
    pub concurrency: usize,
    pub batch: usize,
    pub lease: Duration,
    pub poll_interval: Duration,
    pub flush_batch: usize,
    pub shutdown_grace: Duration,
    /// `[retention] completed = "0s"`: delete jobs at completion.
    pub delete_completed: bool,
}

impl PoolSettings {
    /// Most jobs claimed and not yet written back: two batches buffered, one batch
    /// running and one awaiting write-back.
    pub fn max_held(&self) -> usize {
        self.batch * 4
    }
}

/// Messages to the flusher.
pub enum FlushMsg {
    Outcome(i64, Outcome),
    /// Everything sent before this is written when the sender is answered.
    Barrier(oneshot::Sender<()>),
}

/// State shared by a pool's tasks.
pub struct Shared {
    pub queue: String,
    /// Our `leased_by` identity.
    pub worker: String,
    pub settings: PoolSettings,
    pool: PgPool,
    flush_pool: PgPool,
    /// Claimed and not yet written back or released.
    held: Mutex<HashSet<i64>>,
    /// Bounds `held`: the claimer takes a permit per job it may claim, the flusher gives
    /// it back once the outcome is written. Without it, claims outrun write-back, leases
    /// pile up unflushed, heartbeats grow to whole-table updates and leases expire.
    room: Semaphore,
    /// Rung by the LISTEN task when jobs arrive in this queue.
    pub wake: Arc<Notify>,
    /// The earliest `run_at` this pool wrote back (a snooze or a quick retry) that comes
    /// before the next poll: an idle claimer wakes for it instead of waiting a whole poll
    /// interval (NOTIFY only announces inserts).
    due: Mutex<Option<tokio::time::Instant>>,
    stop_claiming: CancellationToken,
    stop_background: CancellationToken,
    claimer: Mutex<Option<JoinHandle<()>>>,
    finished: tokio::sync::Mutex<bool>,
}

impl Shared {
    fn hold(&self, ids: impl IntoIterator<Item = i64>) {
        self.held.lock().expect("held lock").extend(ids);
    }

    fn unhold(&self, ids: impl IntoIterator<Item = i64>) {
        let mut removed = 0;
        {
            let mut held = self.held.lock().expect("held lock");
            for id in ids {
                removed += usize::from(held.remove(&id));
            }
        }
        self.room.add_permits(removed);
    }

    fn held_ids(&self) -> Vec<i64> {
        self.held
            .lock()
            .expect("held lock")
            .iter()
            .copied()
            .collect()
    }

    /// Stops claiming, writes every pending outcome, releases whatever is still held
    /// (claimed but not started, or still running after the grace period) without
    /// spending an attempt. Idempotent.
    pub async fn finish(&self, outcomes: &mpsc::UnboundedSender<FlushMsg>) {
        let mut finished = self.finished.lock().await;
        if *finished {
            return;
        }
        self.stop_claiming.cancel();
        let claimer = self.claimer.lock().expect("claimer lock").take();
        if let Some(claimer) = claimer {
            let _ = claimer.await;
        }
        let (tx, rx) = oneshot::channel();
        if outcomes.send(FlushMsg::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
        let rest = self.held_ids();
        match queue::release(&self.pool, &self.queue, &self.worker, &rest).await {
            Ok(n) => {
                self.unhold(rest);
                if n > 0 {
                    tracing::info!(queue = %self.queue, released = n, "released unfinished jobs without spending an attempt");
                }
            }
            Err(e) => tracing::error!(
                queue = %self.queue, jobs = rest.len(), error = %e,
                "could not release held jobs; they will be rescued when their lease expires"
            ),
        }
        if let Err(e) = queue::mark_busy(&self.pool, &self.worker).await {
            tracing::debug!(error = %e, "could not clear the idle mark");
        }
        self.stop_background.cancel();
        *finished = true;
    }
}

/// A running pool.
pub struct PoolHandle {
    pub shared: Arc<Shared>,
    pub task: JoinHandle<()>,
}

/// Starts the pool for `settings.queue`; it stops when `shutdown` is cancelled.
pub fn start(
    settings: PoolSettings,
    pool: PgPool,
    flush_pool: PgPool,
    registry: Arc<Registry>,
    worker_id: String,
    shutdown: CancellationToken,
) -> PoolHandle {
    let shared = Arc::new(Shared {
        queue: settings.queue.clone(),
        worker: worker_id,
        settings: settings.clone(),
        pool,
        flush_pool,
        held: Mutex::new(HashSet::new()),
        room: Semaphore::new(settings.max_held()),
        wake: Arc::new(Notify::new()),
        due: Mutex::new(None),
        stop_claiming: CancellationToken::new(),
        stop_background: CancellationToken::new(),
        claimer: Mutex::new(None),
        finished: tokio::sync::Mutex::new(false),
    });
    let (job_tx, job_rx) = mpsc::channel(settings.batch * 2);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    *shared.claimer.lock().expect("claimer lock") =
        Some(tokio::spawn(claimer(shared.clone(), job_tx)));
    tokio::spawn(flusher(shared.clone(), out_rx));
    tokio::spawn(heartbeat(shared.clone()));

    let backend = PgBackend {
        jobs: job_rx,
        outcomes: out_tx.clone(),
        shared: shared.clone(),
        closing: None,
        warned_closed: false,
    };
    let dispatcher = Dispatcher {
        registry,
        delete_completed: settings.delete_completed,
    };
    let worker = WorkerBuilder::new(format!("{}:{}", settings.queue, shared.worker))
        .backend(backend)
        // the default listener formats every event at debug level: measurable per task
        .on_event(|_, _| {})
        .concurrency(settings.concurrency)
        .build(dispatcher);

    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        let stop = shutdown.clone();
        let run = worker
            .run_with_ctx(move |ctx| {
                let stop = stop.clone();
                async move {
                    stop.cancelled().await;
                    let _ = ctx.stop();
                    Ok(())
                }
            })
            .boxed();
        let grace = async {
            shutdown.cancelled().await;
            task_shared.stop_claiming.cancel();
            tokio::time::sleep(task_shared.settings.shutdown_grace).await;
        };
        tokio::select! {
            result = run => {
                if let Err(e) = result {
                    tracing::error!(queue = %task_shared.queue, error = %e, "worker stopped with an error");
                }
            }
            () = grace => {
                tracing::warn!(
                    queue = %task_shared.queue,
                    grace = %humantime::format_duration(task_shared.settings.shutdown_grace),
                    "shutdown grace elapsed with jobs still running; releasing them"
                );
            }
        }
        task_shared.finish(&out_tx).await;
    });
    PoolHandle { shared, task }
}

/// Keeps the job channel filled: claims a batch whenever a batch worth of room is free,
/// marks the pool idle (so inserts NOTIFY) when the queue is empty, and waits for a
/// notification or the poll interval.
async fn claimer(shared: Arc<Shared>, jobs: mpsc::Sender<JobTask>) {
    let s = &shared.settings;
    let mut idle = false;
    let mut failures: u32 = 0;
    loop {
        let room = tokio::select! {
            room = shared.room.acquire_many(s.batch as u32) => match room {
                Ok(r) => r,
                Err(_) => break,
            },
            () = shared.stop_claiming.cancelled() => break,
        };
        let permits = tokio::select! {
            permits = jobs.reserve_many(s.batch) => match permits {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shared.stop_claiming.cancelled() => break,
        };
        let claimed = queue::claim(
            &shared.pool,
            &s.queue,
            s.batch as i64,
            &shared.worker,
            s.lease,
        )
        .await;
        let claimed = match claimed {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                failures += 1;
                let pause =
                    Duration::from_millis(100 * 2u64.pow(failures.min(6))).min(s.poll_interval * 5);
                tracing::warn!(queue = %s.queue, error = %e, retry_in = ?pause, "claim failed");
                drop((permits, room));
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = shared.stop_claiming.cancelled() => break,
                }
            }
        };
        if claimed.is_empty() {
            drop((permits, room));
            if !idle {
                // Mark first, then claim once more: a job inserted between the empty claim
                // and the mark is caught by that claim instead of waiting a poll interval.
                match queue::mark_idle(&shared.pool, &shared.worker, &s.queue).await {
                    Ok(()) => idle = true,
                    Err(e) => tracing::debug!(error = %e, "could not mark the pool idle"),
                }
                continue;
            }
            let now = tokio::time::Instant::now();
            let poll = now + s.poll_interval;
            let due = {
                let mut due = shared.due.lock().expect("due lock");
                if due.is_some_and(|d| d <= now) {
                    *due = None;
                }
                *due
            };
            tokio::select! {
                () = shared.wake.notified() => {}
                () = tokio::time::sleep_until(due.map_or(poll, |d| d.min(poll))) => {
                    if due.is_none_or(|d| d >= poll) {
                        // refresh the mark, so maintenance can tell live idle workers from dead ones
                        let _ = queue::mark_idle(&shared.pool, &shared.worker, &s.queue).await;
                    }
                }
                () = shared.stop_claiming.cancelled() => break,
            }
            continue;
        }
        if idle {
            idle = false;
            if let Err(e) = queue::mark_busy(&shared.pool, &shared.worker).await {
                tracing::debug!(error = %e, "could not clear the idle mark");
            }
        }
        // each claimed job keeps its unit of room until its outcome is written
        room.forget();
        shared.room.add_permits(s.batch - claimed.len());
        shared.hold(claimed.iter().map(|j| j.id));
        for (permit, job) in permits.zip(claimed) {
            let id = job.id as u64;
            permit.send(TaskBuilder::new(job).task_id(TaskId::from_int(id)).build());
        }
    }
}

/// Writes outcomes back, as many as have accumulated (up to `flush_batch`) per statement.
async fn flusher(shared: Arc<Shared>, mut outcomes: mpsc::UnboundedReceiver<FlushMsg>) {
    let max = shared.settings.flush_batch;
    let mut batch: Vec<(i64, Outcome)> = Vec::with_capacity(max);
    let mut barriers: Vec<oneshot::Sender<()>> = Vec::new();
    loop {
        let first = tokio::select! {
            msg = outcomes.recv() => msg,
            () = shared.stop_background.cancelled() => None,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                FlushMsg::Outcome(id, o) => batch.push((id, o)),
                FlushMsg::Barrier(tx) => barriers.push(tx),
            }
            if batch.len() >= max {
                break;
            }
            next = outcomes.try_recv().ok();
        }
        if !batch.is_empty() {
            // one lock order for every writer of these rows
            batch.sort_unstable_by_key(|(id, _)| *id);
            write_with_retries(&shared, &batch).await;
            shared.unhold(batch.iter().map(|(id, _)| *id));
            note_soon_due(&shared, &batch);
            batch.clear();
        }
        // every outcome sent before a barrier was received before it, so is written now
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

/// Remembers the earliest snooze or retry of `batch` due before the next poll, and wakes
/// the claimer so it sleeps until then rather than a whole poll interval.
fn note_soon_due(shared: &Shared, batch: &[(i64, Outcome)]) {
    let now = Utc::now();
    let earliest = batch
        .iter()
        .filter_map(|(_, o)| match o {
            Outcome::Retry { run_at, .. } | Outcome::Snooze { run_at } => Some(*run_at),
            _ => None,
        })
        .min();
    let Some(run_at) = earliest else { return };
    let wait = (run_at - now).to_std().unwrap_or_default();
    if wait >= shared.settings.poll_interval {
        return;
    }
    // a few milliseconds late rather than early: claim only finds jobs whose run_at passed
    let at = tokio::time::Instant::now() + wait + Duration::from_millis(5);
    {
        // a due time already passed is spent: it must not hide this later one
        let mut due = shared.due.lock().expect("due lock");
        *due = Some(match *due {
            Some(d) if d > tokio::time::Instant::now() => d.min(at),
            _ => at,
        });
    }
    shared.wake.notify_one();
}

async fn write_with_retries(shared: &Shared, batch: &[(i64, Outcome)]) {
    let mut failures: u32 = 0;
    loop {
        match queue::write_outcomes(&shared.flush_pool, &shared.worker, batch).await {
            Ok(counts) => {
                if counts.dropped > 0 {
                    tracing::warn!(
                        queue = %shared.queue, dropped = counts.dropped,
                        "outcomes dropped: those jobs' leases were lost (rescued or cancelled meanwhile)"
                    );
                }
                return;
            }
            Err(e) => {
                failures += 1;
                let stopping = shared.stop_claiming.is_cancelled();
                if stopping && failures >= 10 {
                    tracing::error!(
                        queue = %shared.queue, outcomes = batch.len(), error = %e,
                        "giving up writing outcomes at shutdown; the jobs will be rescued and run again"
                    );
                    return;
                }
                let pause = Duration::from_millis(50 * 2u64.pow(failures.min(7)));
                tracing::warn!(queue = %shared.queue, error = %e, retry_in = ?pause, "writing outcomes failed");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Extends the leases of every held job every `lease / 3`, so a long job is never
/// rescued while its worker lives.
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.settings.lease / 3;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.stop_background.cancelled() => return,
        }
        let ids = shared.held_ids();
        if ids.is_empty() {
            continue;
        }
        match queue::extend_leases(&shared.pool, &shared.worker, &ids, shared.settings.lease).await
        {
            Ok(n) => tracing::trace!(queue = %shared.queue, extended = n, "leases extended"),
            Err(e) => tracing::warn!(queue = %shared.queue, error = %e, "could not extend leases"),
        }
    }
}

/// The apalis service: runs one attempt through the registry, with the kind's timeout,
/// catching panics, and turns the answer into an [`Outcome`]. Never fails.
#[derive(Clone)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    delete_completed: bool,
}

impl Service<JobTask> for Dispatcher {
    type Response = Outcome;
    type Error = BoxDynError;
    type Future = BoxFuture<'static, Result<Outcome, BoxDynError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: JobTask) -> Self::Future {
        let registry = self.registry.clone();
        let delete = self.delete_completed;
        Box::pin(async move { Ok(run_attempt(&registry, task.args, delete).await) })
    }
}

/// One attempt of `job`, as the outcome to store.
pub async fn run_attempt(registry: &Registry, job: ClaimedJob, delete_completed: bool) -> Outcome {
    let now = Utc::now();
    let Some((handler, policy)) = registry.get(&job.kind) else {
        tracing::error!(job.id = job.id, job.kind = %job.kind, "no handler for this kind: dead-lettered");
        return Outcome::Dead {
            reason: DeadReason::UnknownKind,
            error: Some(ErrorEntry {
                at: now,
                attempt: job.attempt,
                class: ErrorClass::UnknownKind.as_str().into(),
                message: format!(
                    "no handler for kind {:?} in this daemon (known kinds: {})",
                    job.kind,
                    registry.kinds().join(", ")
                ),
                status: None,
            }),
        };
    };
    let ctx = JobContext {
        id: job.id,
        kind: job.kind.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        tenant_id: job.tenant_id,
        timeout: policy.timeout,
    };
    let run = AssertUnwindSafe(handler.run(ctx, job.payload.clone())).catch_unwind();
    let attempt = match tokio::time::timeout(policy.timeout, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            Err(JobError::Retryable {
                class: ErrorClass::Panic,
                message: format!("handler panicked: {message}"),
                status: None,
                not_before: None,
            })
        }
        Err(_) => Err(JobError::Retryable {
            class: ErrorClass::Timeout,
            message: format!(
                "attempt exceeded the kind's timeout of {}",
                humantime::format_duration(policy.timeout)
            ),
            status: None,
            not_before: None,
        }),
    };
    if let Err(e) = &attempt {
        match e {
            JobError::Retryable {
                class,
                message,
                status,
                ..
            }
            | JobError::Fatal {
                class,
                message,
                status,
            } => {
                tracing::warn!(
                    job.id = job.id, job.kind = %job.kind, job.attempt = job.attempt,
                    class = %class, status = ?status, error = %message, "attempt failed"
                );
            }
            JobError::Snooze { .. } | JobError::Cancel { .. } => {}
        }
    }
    outcome_of(&job, policy, attempt, Utc::now(), delete_completed)
}
