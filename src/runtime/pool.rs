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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use apalis::prelude::WorkerBuilderExt;
use apalis_core::error::BoxDynError;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::ext::event_listener::EventListenerExt;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::backend::{JobTask, PgBackend};
use super::retry::outcome_of;
use super::supervisor::{DbHealth, Supervisor, panic_message, spawn_supervised};
use crate::error_class::ErrorClass;
use crate::jobs::{JobContext, JobError, Registry};
use crate::queue::{self, ClaimedJob, DeadReason, ErrorEntry, Outcome};

/// How far ahead of its workers a pool claims, for jobs taking `job` on average: the
/// jobs the workers will start within this time. 10 ms for jobs of 5 ms or more (a claimed
/// job waits at most that long for a worker), up to 50 ms for jobs under a millisecond
/// (where the wait is nothing next to the backlog it drains, and claims of a whole batch
/// cost the database least per job).
pub fn prefetch_horizon(job: Duration) -> Duration {
    const SLOW: f64 = 0.005;
    const FAST: f64 = 0.001;
    let d = job.as_secs_f64();
    let fastness = ((SLOW - d) / (SLOW - FAST)).clamp(0.0, 1.0);
    Duration::from_secs_f64(0.010 + 0.040 * fastness)
}

/// A job that has run this long gets its start recorded (jobs that end sooner carry
/// their start time in their outcome).
const START_MARK_AFTER: Duration = Duration::from_millis(10);

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

/// Messages to the flusher.
pub enum FlushMsg {
    /// A job's outcome and when its handler started.
    Outcome(i64, Outcome, Option<DateTime<Utc>>),
    /// Everything sent before this is written when the sender is answered.
    Barrier(oneshot::Sender<()>),
}

/// One outcome on its way to the database.
struct Pending {
    id: i64,
    outcome: Outcome,
    started: Option<DateTime<Utc>>,
}

/// A claimed job waiting for a worker, ordered as claims are: priority, run_at, id.
struct Prefetched {
    key: (i16, DateTime<Utc>, i64),
    job: ClaimedJob,
}

impl PartialEq for Prefetched {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Prefetched {}
impl PartialOrd for Prefetched {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Prefetched {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// Claimed jobs not yet started; the backend pops the most urgent first.
#[derive(Default)]
struct Buffer {
    heap: BinaryHeap<Reverse<Prefetched>>,
    waker: Option<Waker>,
    closed: bool,
}

/// When a running job's handler started, and whether that start is recorded.
struct Start {
    at: DateTime<Utc>,
    since: Instant,
    marked: bool,
}

/// State shared by a pool's tasks.
pub struct Shared {
    pub queue: String,
    /// Our `leased_by` identity.
    pub worker: String,
    pub settings: PoolSettings,
    conns: Connections,
    health: Arc<DbHealth>,
    /// Claimed and not yet written back or released.
    held: Mutex<HashSet<i64>>,
    /// Bounds `held`: the claimer takes a permit per job it claims, the flusher gives it
    /// back once the outcome is written. Without it, claims outrun write-back, leases pile
    /// up unflushed, heartbeats grow to whole-table updates and leases expire.
    room: Semaphore,
    buffer: Mutex<Buffer>,
    /// Jobs handed to the worker whose outcome is not produced yet.
    running: AtomicUsize,
    /// Jobs handed to the worker since the pool started (the claimer's rate estimate).
    started_total: AtomicU64,
    /// Jobs whose handler ended since the pool started, and the time they took together
    /// (the claimer's estimate of a job's duration).
    ended_total: AtomicU64,
    busy_micros: AtomicU64,
    /// Rung when the claimer may want to claim more: the buffer fell to `low_water`, a job
    /// ended with the buffer empty (a worker is free), or outcomes were written (room
    /// freed). Not rung on every start and end: at tens of thousands of jobs a second, a
    /// wake-up of the claimer per job costs the cores PostgreSQL needs.
    claim_signal: Notify,
    /// Buffer level at or below which a start rings `claim_signal` (set by the claimer).
    low_water: AtomicUsize,
    /// Jobs in the buffer (kept with it, readable without its lock).
    buffered_len: AtomicUsize,
    starts: Mutex<HashMap<i64, Start>>,
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
        self.claim_signal.notify_one();
    }

    fn held_ids(&self) -> Vec<i64> {
        self.held
            .lock()
            .expect("held lock")
            .iter()
            .copied()
            .collect()
    }

    fn buffered(&self) -> usize {
        self.buffered_len.load(Ordering::Relaxed)
    }

    /// Puts claimed jobs in the buffer and wakes the worker.
    fn push_claimed(&self, jobs: Vec<ClaimedJob>) {
        let waker = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            for job in jobs {
                let key = (job.priority, job.run_at, job.id);
                buffer.heap.push(Reverse(Prefetched { key, job }));
            }
            self.buffered_len
                .store(buffer.heap.len(), Ordering::Relaxed);
            buffer.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The most urgent buffered job, as a task for the worker; `Pending` (with the waker
    /// kept) when there is none.
    pub(super) fn poll_next_job(&self, cx: &mut Context<'_>) -> Poll<JobTask> {
        let (job, left) = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            match buffer.heap.pop() {
                Some(Reverse(p)) => {
                    let left = buffer.heap.len();
                    self.buffered_len.store(left, Ordering::Relaxed);
                    (p.job, left)
                }
                None => {
                    buffer.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        self.running.fetch_add(1, Ordering::Relaxed);
        self.started_total.fetch_add(1, Ordering::Relaxed);
        if left <= self.low_water.load(Ordering::Relaxed) {
            self.claim_signal.notify_one();
        }
        let id = job.id as u64;
        Poll::Ready(TaskBuilder::new(job).task_id(TaskId::from_int(id)).build())
    }

    /// Empties the buffer for good (shutdown): its jobs stay held, and `finish` releases
    /// them without spending an attempt.
    pub(super) fn close_buffer(&self) {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        buffer.closed = true;
        buffer.heap.clear();
        self.buffered_len.store(0, Ordering::Relaxed);
    }

    /// A job's handler starts now.
    pub(super) fn started(&self, id: i64) {
        self.starts.lock().expect("starts lock").insert(
            id,
            Start {
                at: Utc::now(),
                since: Instant::now(),
                marked: false,
            },
        );
    }

    /// A job's outcome is produced: returns when its handler started.
    pub(super) fn ended(&self, id: i64) -> Option<DateTime<Utc>> {
        self.running.fetch_sub(1, Ordering::Relaxed);
        if self.buffered() == 0 {
            // a worker is free and nothing is buffered for it
            self.claim_signal.notify_one();
        }
        let start = self.starts.lock().expect("starts lock").remove(&id)?;
        let took = start.since.elapsed().as_micros() as u64;
        self.busy_micros.fetch_add(took, Ordering::Relaxed);
        self.ended_total.fetch_add(1, Ordering::Relaxed);
        Some(start.at)
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
        self.close_buffer();
        let (tx, rx) = oneshot::channel();
        if outcomes.send(FlushMsg::Barrier(tx)).is_ok() {
            let _ = rx.await;
        }
        let rest = self.held_ids();
        match queue::release(&self.conns.main, &self.queue, &self.worker, &rest).await {
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
        if let Err(e) = queue::mark_busy(&self.conns.main, &self.worker).await {
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

/// Starts the pool for `settings.queue`; it stops when `shutdown` is cancelled. A task of
/// the pool that dies fails `supervisor`.
pub fn start(
    settings: PoolSettings,
    conns: Connections,
    registry: Arc<Registry>,
    worker_id: String,
    shutdown: CancellationToken,
    supervisor: Arc<Supervisor>,
    health: Arc<DbHealth>,
) -> PoolHandle {
    let shared = Arc::new(Shared {
        queue: settings.queue.clone(),
        worker: worker_id,
        settings: settings.clone(),
        conns,
        health,
        held: Mutex::new(HashSet::new()),
        room: Semaphore::new(settings.max_held()),
        buffer: Mutex::new(Buffer::default()),
        running: AtomicUsize::new(0),
        started_total: AtomicU64::new(0),
        ended_total: AtomicU64::new(0),
        busy_micros: AtomicU64::new(0),
        claim_signal: Notify::new(),
        low_water: AtomicUsize::new(0),
        buffered_len: AtomicUsize::new(0),
        starts: Mutex::new(HashMap::new()),
        wake: Arc::new(Notify::new()),
        due: Mutex::new(None),
        stop_claiming: CancellationToken::new(),
        stop_background: CancellationToken::new(),
        claimer: Mutex::new(None),
        finished: tokio::sync::Mutex::new(false),
    });
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let q = &settings.queue;
    let claimer_task = spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "claimer",
        shared.stop_claiming.clone(),
        claimer(shared.clone()),
    );
    *shared.claimer.lock().expect("claimer lock") = Some(claimer_task);
    let background = shared.stop_background.clone();
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "flusher",
        background.clone(),
        flusher(shared.clone(), out_rx),
    );
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "heartbeat",
        background.clone(),
        heartbeat(shared.clone()),
    );
    spawn_supervised(
        supervisor.clone(),
        q.clone(),
        "start marker",
        background,
        start_marker(shared.clone()),
    );

    let backend = PgBackend {
        outcomes: out_tx.clone(),
        shared: shared.clone(),
        closing: None,
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
        let run = AssertUnwindSafe(worker.run_with_ctx(move |ctx| {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                let _ = ctx.stop();
                Ok(())
            }
        }))
        .catch_unwind()
        .boxed();
        let grace = async {
            shutdown.cancelled().await;
            task_shared.stop_claiming.cancel();
            tokio::time::sleep(task_shared.settings.shutdown_grace).await;
        };
        let q = &task_shared.queue;
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
                    grace = %humantime::format_duration(task_shared.settings.shutdown_grace),
                    "shutdown grace elapsed with jobs still running; releasing them"
                );
            }
        }
        task_shared.finish(&out_tx).await;
    });
    PoolHandle { shared, task }
}

/// The claimer's estimate of how fast the workers start jobs and how long a job takes.
struct WorkRate {
    per_sec: f64,
    job_secs: f64,
    last: (u64, u64, u64),
    last_at: Instant,
}

impl WorkRate {
    fn new() -> Self {
        Self {
            per_sec: 0.0,
            // until measured, as if jobs were slow: claim only what the workers take
            job_secs: 1.0,
            last: (0, 0, 0),
            last_at: Instant::now(),
        }
    }

    /// Folds in the starts and ends since the last sample (samples closer than 10 ms are
    /// skipped; a sample weighs its share of 100 ms, so a burst of starts does not read as
    /// a rate). `now` is (started, ended, busy µs) so far.
    fn sample(&mut self, now: (u64, u64, u64)) {
        let elapsed = self.last_at.elapsed();
        if elapsed < Duration::from_millis(10) {
            return;
        }
        let weight = (elapsed.as_secs_f64() / 0.1).min(1.0);
        let started = (now.0 - self.last.0) as f64 / elapsed.as_secs_f64();
        self.per_sec += (started - self.per_sec) * weight;
        let ended = now.1 - self.last.1;
        if ended > 0 {
            let job = (now.2 - self.last.2) as f64 / 1e6 / ended as f64;
            self.job_secs += (job - self.job_secs) * weight;
        }
        self.last = now;
        self.last_at = Instant::now();
    }

    /// Jobs the workers will start within the horizon for jobs of this length.
    fn ahead(&self) -> usize {
        (self.per_sec * prefetch_horizon(Duration::from_secs_f64(self.job_secs)).as_secs_f64())
            as usize
    }
}

/// How many jobs to claim now, given the free workers, the buffer and `ahead` (what the
/// workers will start within the horizon): enough for every free worker plus `ahead`,
/// with `ahead` at most two batches and a claim at most one batch and the room left;
/// `None` while that is less than half of `ahead` (claiming in dribbles at a high rate
/// would cost a statement per job or two). Also returns that half: the buffer level at
/// which a start should wake the claimer.
fn claim_size(
    settings: &PoolSettings,
    running: usize,
    buffered: usize,
    room: usize,
    ahead: usize,
) -> (Option<usize>, usize) {
    let ahead = ahead.min(settings.batch * 2);
    let free = settings.concurrency.saturating_sub(running);
    let want = (free + ahead)
        .saturating_sub(buffered)
        .min(settings.batch)
        .min(room);
    let low_water = ahead / 2;
    (
        (want > 0 && want >= low_water.clamp(1, settings.batch)).then_some(want),
        low_water,
    )
}

/// Keeps the buffer filled (see [`claim_size`]), marks the pool idle (so inserts NOTIFY)
/// when the queue is empty, and waits for a notification or the poll interval.
async fn claimer(shared: Arc<Shared>) {
    let s = &shared.settings;
    let mut idle = false;
    let mut failures: u32 = 0;
    let mut rate = WorkRate::new();
    loop {
        if shared.stop_claiming.is_cancelled() {
            break;
        }
        rate.sample((
            shared.started_total.load(Ordering::Relaxed),
            shared.ended_total.load(Ordering::Relaxed),
            shared.busy_micros.load(Ordering::Relaxed),
        ));
        let (size, low_water) = claim_size(
            s,
            shared.running.load(Ordering::Relaxed),
            shared.buffered(),
            shared.room.available_permits(),
            rate.ahead(),
        );
        shared.low_water.store(low_water, Ordering::Relaxed);
        let Some(size) = size else {
            tokio::select! {
                () = shared.claim_signal.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = shared.stop_claiming.cancelled() => break,
            }
            continue;
        };
        // only this task takes room, and `claim_size` stayed within what is free
        let Ok(room) = shared.room.try_acquire_many(size as u32) else {
            tokio::task::yield_now().await;
            continue;
        };
        let claimed = queue::claim(
            &shared.conns.main,
            &s.queue,
            &s.kinds,
            size as i64,
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
                if e.is_transient() {
                    shared.health.failed();
                }
                let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)))
                    .min(s.poll_interval * 5)
                    .max(Duration::from_millis(100));
                tracing::warn!(queue = %s.queue, error = %e, retry_in = ?pause, "claim failed");
                drop(room);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = shared.stop_claiming.cancelled() => break,
                }
            }
        };
        if claimed.is_empty() {
            drop(room);
            if !idle {
                // Mark first, then claim once more: a job inserted between the empty claim
                // and the mark is caught by that claim instead of waiting a poll interval.
                match queue::mark_idle(&shared.conns.main, &shared.worker, &s.queue).await {
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
                        // refresh the mark, so maintenance can tell live idle workers from
                        // dead ones, and so it is back after a database restart (the table
                        // is unlogged)
                        let _ = queue::mark_idle(&shared.conns.main, &shared.worker, &s.queue).await;
                    }
                }
                () = shared.stop_claiming.cancelled() => break,
            }
            continue;
        }
        if idle {
            idle = false;
            if let Err(e) = queue::mark_busy(&shared.conns.main, &shared.worker).await {
                tracing::debug!(error = %e, "could not clear the idle mark");
            }
        }
        // each claimed job keeps its unit of room until its outcome is written
        room.forget();
        shared.room.add_permits(size - claimed.len());
        shared.hold(claimed.iter().map(|j| j.id));
        shared.push_claimed(claimed);
    }
}

/// Writes outcomes back, as many as have accumulated (up to `flush_batch`) per statement.
async fn flusher(shared: Arc<Shared>, mut outcomes: mpsc::UnboundedReceiver<FlushMsg>) {
    let max = shared.settings.flush_batch;
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
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
                FlushMsg::Outcome(id, outcome, started) => batch.push(Pending {
                    id,
                    outcome,
                    started,
                }),
                FlushMsg::Barrier(tx) => barriers.push(tx),
            }
            if batch.len() >= max {
                break;
            }
            next = outcomes.try_recv().ok();
        }
        if !batch.is_empty() {
            // one lock order for every writer of these rows
            batch.sort_unstable_by_key(|p| p.id);
            write_batch(&shared, &batch).await;
            shared.unhold(batch.iter().map(|p| p.id));
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
fn note_soon_due(shared: &Shared, batch: &[Pending]) {
    let now = Utc::now();
    let earliest = batch
        .iter()
        .filter_map(|p| match &p.outcome {
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

/// Writes `batch` in one statement. A failure to reach the database is retried as is
/// (forever while running; a bounded number of times at shutdown, after which the jobs
/// are rescued). Any other failure means some row cannot be stored: the batch is written
/// row by row, and a row the database still refuses goes to the dead letters with the
/// database's message ([`queue::bury_unwritable`]).
async fn write_batch(shared: &Shared, batch: &[Pending]) {
    match write_with_retries(shared, batch).await {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(
                queue = %shared.queue, outcomes = batch.len(), error = %e,
                "the database refused a batch of outcomes; writing them one by one"
            );
            for one in batch {
                if let Err(e) = write_with_retries(shared, std::slice::from_ref(one)).await {
                    bury(shared, one.id, &e).await;
                }
            }
        }
    }
}

/// Writes `batch`, retrying while the database cannot be reached; returns the first error
/// that is not about reaching it. Gives up (Ok) after 10 failures at shutdown.
async fn write_with_retries(shared: &Shared, batch: &[Pending]) -> Result<(), queue::Error> {
    let outcomes: Vec<(i64, Outcome)> = batch.iter().map(|p| (p.id, p.outcome.clone())).collect();
    let started: Vec<Option<DateTime<Utc>>> = batch.iter().map(|p| p.started).collect();
    let mut failures: u32 = 0;
    let result = loop {
        let written =
            queue::write_outcomes_started(&shared.conns.flush, &shared.worker, &outcomes, &started)
                .await;
        match written {
            Ok(counts) => {
                if counts.dropped > 0 {
                    tracing::warn!(
                        queue = %shared.queue, dropped = counts.dropped,
                        "outcomes dropped: those jobs' leases were lost (rescued or cancelled meanwhile)"
                    );
                }
                break Ok(());
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                if failures == 1 {
                    shared.health.add_unwritten(batch.len());
                }
                shared.health.failed();
                if shared.stop_claiming.is_cancelled() && failures >= 10 {
                    tracing::error!(
                        queue = %shared.queue, outcomes = batch.len(), error = %e,
                        "giving up writing outcomes at shutdown; the jobs will be rescued and run again"
                    );
                    break Ok(());
                }
                let pause = Duration::from_millis(50 * 2u64.pow(failures.min(4)));
                tracing::warn!(queue = %shared.queue, error = %e, retry_in = ?pause, "writing outcomes failed");
                tokio::time::sleep(pause).await;
            }
            Err(e) => break Err(e),
        }
    };
    if failures > 0 {
        shared.health.sub_unwritten(batch.len());
    }
    result
}

/// Moves a job whose outcome the database refused to the dead letters.
async fn bury(shared: &Shared, id: i64, refused: &queue::Error) {
    let message = format!("the outcome of this attempt could not be stored: {refused}");
    let mut failures: u32 = 0;
    loop {
        match queue::bury_unwritable(&shared.conns.flush, &shared.worker, id, &message).await {
            Ok(buried) => {
                tracing::error!(
                    queue = %shared.queue, job.id = id, buried, error = %refused,
                    "outcome refused by the database; job moved to the dead letters (class internal)"
                );
                return;
            }
            Err(e) if e.is_transient() && failures < 10 => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
            }
            Err(e) => {
                tracing::error!(
                    queue = %shared.queue, job.id = id, error = %e,
                    "could not dead-letter a job whose outcome the database refused; it will be rescued when its lease expires"
                );
                return;
            }
        }
    }
}

/// Extends the leases of every held job every `lease / 3`, so a long job is never
/// rescued while its worker lives; after a failure, tries again within a second, so a
/// database that comes back finds the leases renewed before other daemons rescue them.
async fn heartbeat(shared: Arc<Shared>) {
    let every = shared.settings.lease / 3;
    let mut wait = every;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stop_background.cancelled() => return,
        }
        let ids = shared.held_ids();
        if ids.is_empty() {
            wait = every;
            continue;
        }
        match queue::extend_leases(
            &shared.conns.lease,
            &shared.worker,
            &ids,
            shared.settings.lease,
        )
        .await
        {
            Ok(n) => {
                wait = every;
                tracing::trace!(queue = %shared.queue, extended = n, "leases extended");
            }
            Err(e) => {
                if e.is_transient() {
                    shared.health.failed();
                }
                wait = every.min(Duration::from_secs(1));
                tracing::warn!(queue = %shared.queue, error = %e, "could not extend leases");
            }
        }
    }
}

/// Records the start of every job that has been running for [`START_MARK_AFTER`], so a
/// rescue after this daemon dies charges its attempt; jobs still in the buffer stay
/// unmarked and are not charged.
async fn start_marker(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(START_MARK_AFTER) => {}
            () = shared.stop_background.cancelled() => return,
        }
        let (ids, ats): (Vec<i64>, Vec<DateTime<Utc>>) = {
            let mut starts = shared.starts.lock().expect("starts lock");
            starts
                .iter_mut()
                .filter(|(_, s)| !s.marked && s.since.elapsed() >= START_MARK_AFTER)
                .map(|(id, s)| {
                    s.marked = true;
                    (*id, s.at)
                })
                .unzip()
        };
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = queue::mark_started(&shared.conns.lease, &shared.worker, &ids, &ats).await {
            if e.is_transient() {
                shared.health.failed();
            }
            tracing::debug!(queue = %shared.queue, error = %e, "could not record job starts; retrying");
            let mut starts = shared.starts.lock().expect("starts lock");
            for id in ids {
                if let Some(s) = starts.get_mut(&id) {
                    s.marked = false;
                }
            }
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
        started: Instant::now(),
    };
    let run = AssertUnwindSafe(handler.run(ctx, job.payload.clone())).catch_unwind();
    let attempt = match tokio::time::timeout(policy.timeout, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let message = panic_message(panic.as_ref());
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
    // The policy math must not take the worker down whatever a handler returned: a panic
    // here would end the pool's worker, not one attempt.
    let now = Utc::now();
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        outcome_of(&job, policy, attempt, now, delete_completed)
    }))
    .unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        tracing::error!(job.id = job.id, job.kind = %job.kind, error = %message, "computing the outcome panicked; retrying in a minute");
        Outcome::Retry {
            run_at: now + chrono::Duration::seconds(60),
            error: ErrorEntry {
                at: now,
                attempt: job.attempt,
                class: "internal".into(),
                message: crate::text::clean(
                    &format!("computing the outcome panicked: {message}"),
                    crate::text::MAX_MESSAGE,
                ),
                status: None,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(concurrency: usize, batch: usize) -> PoolSettings {
        PoolSettings {
            queue: "q".into(),
            concurrency,
            batch,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            flush_batch: 2000,
            shutdown_grace: Duration::from_secs(30),
            delete_completed: false,
            kinds: Arc::from(vec!["noop".to_string()]),
        }
    }

    #[test]
    fn the_horizon_is_short_for_slow_jobs_and_longer_for_fast_ones() {
        assert_eq!(
            prefetch_horizon(Duration::from_millis(200)),
            Duration::from_millis(10)
        );
        assert_eq!(
            prefetch_horizon(Duration::from_millis(5)),
            Duration::from_millis(10)
        );
        assert_eq!(
            prefetch_horizon(Duration::from_micros(50)),
            Duration::from_millis(50)
        );
        let mid = prefetch_horizon(Duration::from_millis(3));
        assert!(mid > Duration::from_millis(10) && mid < Duration::from_millis(50));
    }

    #[test]
    fn a_slow_queue_claims_for_free_workers_only_and_a_fast_one_whole_batches() {
        let s = settings(64, 500);
        // 200 ms jobs at 320/s: 3 ahead; every worker busy, 3 buffered: nothing to claim
        assert_eq!(claim_size(&s, 64, 3, 10_000, 3).0, None);
        // one worker free, nothing buffered: claim it and what 10 ms will start
        assert_eq!(claim_size(&s, 63, 0, 10_000, 3).0, Some(4));
        // no-op jobs at 30k/s: 1,500 ahead, capped at two batches; claims are whole batches
        assert_eq!(claim_size(&s, 64, 400, 10_000, 1500), (Some(500), 500));
        assert_eq!(claim_size(&s, 64, 900, 10_000, 1500).0, None);
        // never more than the room left
        assert_eq!(claim_size(&s, 0, 0, 10, 0).0, Some(10));
        // a cold start claims for the workers it has
        assert_eq!(claim_size(&s, 0, 0, 10_000, 0).0, Some(64));
    }

    #[test]
    fn buffered_jobs_start_most_urgent_first() {
        let now = Utc::now();
        let job = |id, priority| ClaimedJob {
            id,
            kind: "noop".into(),
            payload: serde_json::json!({}),
            attempt: 1,
            max_attempts: 1,
            priority,
            run_at: now,
            tenant_id: None,
            created_at: now,
        };
        let mut heap = BinaryHeap::new();
        for (id, priority) in [(1, 0), (2, 0), (3, -100), (4, 5)] {
            let j: ClaimedJob = job(id, priority);
            heap.push(Reverse(Prefetched {
                key: (j.priority, j.run_at, j.id),
                job: j,
            }));
        }
        let order: Vec<i64> =
            std::iter::from_fn(|| heap.pop().map(|Reverse(p)| p.job.id)).collect();
        assert_eq!(order, [3, 1, 2, 4]);
    }
}
