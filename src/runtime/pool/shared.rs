//! What a pool's tasks share ([`Shared`]): the jobs the pool holds, the priority-ordered
//! buffer of claimed jobs the worker pops from, the counters the claimer estimates its
//! rate from, the start times of running jobs, and the shutdown step ([`Shared::finish`])
//! that writes back and releases whatever is still held.
//!
//! Must never lose track of a claimed job: an id leaves `held` only once its outcome is
//! written or it is released, and its unit of room goes back with it. Must never report a
//! claim finished (its row in `penguin.claims` may then be deleted) while one of its jobs
//! is still held: rescue finds a dead daemon's jobs only through those rows. Never does
//! I/O except in `finish`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::TaskId;
use chrono::{DateTime, Utc};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Connections, FlushMsg, PoolSettings};
use crate::metrics::{KindMetrics, Metrics};
use crate::queue::{self, ClaimedJob, Outcome};
use crate::runtime::backend::JobTask;
use crate::runtime::supervisor::DbHealth;

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
pub(super) struct Start {
    pub(super) at: DateTime<Utc>,
    pub(super) since: Instant,
    pub(super) marked: bool,
}

/// The jobs a pool holds, by the claim that brought them (its number in `penguin.claims`),
/// and the claims all of whose jobs were written back or released.
#[derive(Default)]
struct Held {
    /// Job id -> claim number.
    jobs: HashMap<i64, i64>,
    /// Claim number -> its jobs still held.
    claims: HashMap<i64, usize>,
    /// Claims none of whose jobs is held any more, whose rows are not deleted yet.
    finished: Vec<i64>,
    /// Claims with a job let go of without its outcome written (see [`Shared::abandon`]):
    /// their rows stay for rescue, which deletes them once their jobs are rescued.
    kept: HashSet<i64>,
}

impl Held {
    fn hold(&mut self, claim: i64, ids: impl IntoIterator<Item = i64>) {
        let mut count = 0;
        for id in ids {
            if self.jobs.insert(id, claim).is_none() {
                count += 1;
            }
        }
        if count > 0 {
            *self.claims.entry(claim).or_default() += count;
        }
    }

    /// Lets go of `ids`; returns how many were held. `written`: their outcomes are in the
    /// database (or they were released); if not, their claims' rows must stay.
    fn unhold(&mut self, ids: impl IntoIterator<Item = i64>, written: bool) -> usize {
        let mut removed = 0;
        for id in ids {
            let Some(claim) = self.jobs.remove(&id) else {
                continue;
            };
            removed += 1;
            if !written {
                self.kept.insert(claim);
            }
            if let Some(left) = self.claims.get_mut(&claim) {
                *left -= 1;
                if *left == 0 {
                    self.claims.remove(&claim);
                    if !self.kept.remove(&claim) {
                        self.finished.push(claim);
                    }
                }
            }
        }
        removed
    }
}

/// State shared by a pool's tasks.
pub struct Shared {
    pub queue: String,
    /// Our `leased_by` identity.
    pub worker: String,
    pub settings: PoolSettings,
    pub(super) conns: Connections,
    pub(super) health: Arc<DbHealth>,
    /// Claimed and not yet written back or released.
    held: Mutex<Held>,
    /// The number of this pool's next claim (its row in `penguin.claims` is (worker, number)).
    next_claim: AtomicI64,
    /// Bounds `held`: the claimer takes a permit per job it claims, the flusher gives it
    /// back once the outcome is written. Without it, claims outrun write-back, leases pile
    /// up unflushed, heartbeats grow to whole-table updates and leases expire.
    pub(super) room: Semaphore,
    buffer: Mutex<Buffer>,
    /// Jobs handed to the worker whose outcome is not produced yet.
    pub(super) running: AtomicUsize,
    /// Jobs handed to the worker since the pool started (the claimer's rate estimate).
    pub(super) started_total: AtomicU64,
    /// Jobs whose handler ended since the pool started, and the time they took together
    /// (the claimer's estimate of a job's duration).
    pub(super) ended_total: AtomicU64,
    pub(super) busy_micros: AtomicU64,
    /// Rung when the claimer may want to claim more: the buffer fell to `low_water`, a job
    /// ended with the buffer empty (a worker is free), or outcomes were written (room
    /// freed). Not rung on every start and end: at tens of thousands of jobs a second, a
    /// wake-up of the claimer per job costs the cores PostgreSQL needs.
    pub(super) claim_signal: Notify,
    /// Buffer level at or below which a start rings `claim_signal` (set by the claimer).
    pub(super) low_water: AtomicUsize,
    /// Jobs in the buffer (kept with it, readable without its lock).
    buffered_len: AtomicUsize,
    pub(super) starts: Mutex<HashMap<i64, Start>>,
    /// Rung by the LISTEN task when jobs arrive in this queue.
    pub wake: Arc<Notify>,
    /// The earliest `run_at` this pool wrote back (a snooze or a quick retry) that comes
    /// before the next poll: an idle claimer wakes for it instead of waiting a whole poll
    /// interval (NOTIFY only announces inserts).
    pub(super) due: Mutex<Option<tokio::time::Instant>>,
    pub(super) stop_claiming: CancellationToken,
    pub(super) stop_background: CancellationToken,
    pub(super) claimer: Mutex<Option<JoinHandle<()>>>,
    finished: tokio::sync::Mutex<bool>,
    /// The counters of each kind this pool runs, and its running jobs as a gauge.
    kind_metrics: HashMap<String, KindMetrics>,
    running_gauge: Gauge,
    /// Jobs finished since the last report to `penguin.queue_minutes`: completed, retried,
    /// dead-lettered.
    finished_since_report: [AtomicU64; 3],
}

impl Shared {
    /// The state of a new pool for `settings.queue` that claims as `worker`: nothing held,
    /// buffered or running yet.
    pub(super) fn new(
        settings: PoolSettings,
        conns: Connections,
        worker: String,
        health: Arc<DbHealth>,
        metrics: &Metrics,
    ) -> Self {
        let kind_metrics = settings
            .kinds
            .iter()
            .map(|k| (k.clone(), metrics.kind(k)))
            .collect();
        let running_gauge = metrics.pool(&settings.queue, settings.concurrency);
        Self {
            kind_metrics,
            running_gauge,
            finished_since_report: Default::default(),
            queue: settings.queue.clone(),
            worker,
            room: Semaphore::new(settings.max_held()),
            settings,
            conns,
            health,
            held: Mutex::new(Held::default()),
            next_claim: AtomicI64::new(1),
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
        }
    }

    /// A number for the pool's next claim.
    pub(super) fn new_claim(&self) -> i64 {
        self.next_claim.fetch_add(1, Ordering::Relaxed)
    }

    /// Holds the jobs `ids` brought by claim number `claim`.
    pub(super) fn hold(&self, claim: i64, ids: impl IntoIterator<Item = i64>) {
        self.held.lock().expect("held lock").hold(claim, ids);
    }

    /// Lets go of `ids` (written back or released): their room goes back, and a claim none
    /// of whose jobs is held any more is noted as finished.
    pub(super) fn unhold(&self, ids: impl IntoIterator<Item = i64>) {
        let removed = self.held.lock().expect("held lock").unhold(ids, true);
        self.room.add_permits(removed);
        self.claim_signal.notify_one();
    }

    /// Lets go of `ids` whose outcome could not be written (nor the job dead-lettered):
    /// they still run in the database under this worker, so their claims' rows stay and
    /// rescue frees them once their leases, no longer extended, expire.
    pub(super) fn abandon(&self, ids: Vec<i64>) {
        let removed = self.held.lock().expect("held lock").unhold(ids, false);
        self.room.add_permits(removed);
        self.claim_signal.notify_one();
    }

    /// Whether a claim finished since the last [`Self::take_finished_claims`].
    pub(super) fn has_finished_claims(&self) -> bool {
        !self.held.lock().expect("held lock").finished.is_empty()
    }

    /// The claims finished since the last call (their rows may be deleted now).
    pub(super) fn take_finished_claims(&self) -> Vec<i64> {
        std::mem::take(&mut self.held.lock().expect("held lock").finished)
    }

    pub(super) fn held_ids(&self) -> Vec<i64> {
        self.held
            .lock()
            .expect("held lock")
            .jobs
            .keys()
            .copied()
            .collect()
    }

    pub(super) fn buffered(&self) -> usize {
        self.buffered_len.load(Ordering::Relaxed)
    }

    /// Puts claimed jobs in the buffer and wakes the worker.
    pub(super) fn push_claimed(&self, jobs: Vec<ClaimedJob>) {
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
    pub(in crate::runtime) fn poll_next_job(&self, cx: &mut Context<'_>) -> Poll<JobTask> {
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
        self.running_gauge.inc();
        self.started_total.fetch_add(1, Ordering::Relaxed);
        if left <= self.low_water.load(Ordering::Relaxed) {
            self.claim_signal.notify_one();
        }
        let id = job.id as u64;
        Poll::Ready(TaskBuilder::new(job).task_id(TaskId::from_int(id)).build())
    }

    /// Empties the buffer for good (shutdown): its jobs stay held, and `finish` releases
    /// them without spending an attempt.
    pub(in crate::runtime) fn close_buffer(&self) {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        buffer.closed = true;
        buffer.heap.clear();
        self.buffered_len.store(0, Ordering::Relaxed);
    }

    /// A job's handler starts now.
    pub(in crate::runtime) fn started(&self, id: i64) {
        self.starts.lock().expect("starts lock").insert(
            id,
            Start {
                at: Utc::now(),
                since: Instant::now(),
                marked: false,
            },
        );
    }

    /// Counts an attempt of `kind` that took `seconds` and ended in `outcome`.
    pub(in crate::runtime) fn count_attempt(&self, kind: &str, outcome: &Outcome, seconds: f64) {
        if let Some(m) = self.kind_metrics.get(kind) {
            m.attempt(outcome, seconds);
        }
        let slot = match outcome {
            Outcome::Completed { .. } => 0,
            Outcome::Retry { .. } => 1,
            Outcome::Dead { .. } => 2,
            Outcome::Snooze { .. } | Outcome::Cancel { .. } => return,
        };
        self.finished_since_report[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// The jobs finished since the last call (completed, retried, dead-lettered), reset.
    pub(in crate::runtime) fn take_finished(&self) -> [u64; 3] {
        self.finished_since_report
            .each_ref()
            .map(|n| n.swap(0, Ordering::Relaxed))
    }

    /// Gives back counts [`Shared::take_finished`] took that could not be reported.
    pub(in crate::runtime) fn restore_finished(&self, counts: [u64; 3]) {
        for (n, c) in self.finished_since_report.iter().zip(counts) {
            n.fetch_add(c, Ordering::Relaxed);
        }
    }

    /// A job's outcome is produced: returns when its handler started.
    pub(in crate::runtime) fn ended(&self, id: i64) -> Option<DateTime<Utc>> {
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.running_gauge.dec();
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

    /// Clears this pool's idle mark (inserts into its queue stop paying NOTIFY for it).
    pub(super) async fn clear_idle_mark(&self) {
        if let Err(e) = queue::mark_busy(&self.conns.main, &self.worker).await {
            tracing::debug!(error = %e, "could not clear the idle mark");
        }
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
                // the rows of claims none of whose jobs runs any more (an abandoned outcome's
                // job still runs, and its row stays for rescue)
                if let Err(e) = queue::forget_idle_claims(&self.conns.main, &self.worker).await {
                    tracing::debug!(queue = %self.queue, error = %e, "could not delete this pool's claims; a rescue pass will");
                }
            }
            Err(e) => tracing::error!(
                queue = %self.queue, jobs = rest.len(), error = %e,
                "could not release held jobs; they will be rescued when their lease expires"
            ),
        }
        self.clear_idle_mark().await;
        self.stop_background.cancel();
        *finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_finished_once_none_of_its_jobs_is_held() {
        let mut held = Held::default();
        held.hold(7, [1, 2]);
        held.hold(8, [3]);
        assert_eq!(held.unhold([1, 99], true), 1, "99 was never held");
        assert!(held.finished.is_empty(), "job 2 of claim 7 is still held");
        assert_eq!(held.unhold([3, 1], true), 1, "1 was let go already");
        assert_eq!(held.unhold([2], true), 1);
        assert_eq!(held.finished, [8, 7]);
        assert!(held.claims.is_empty() && held.jobs.is_empty());
    }

    #[test]
    fn a_claim_with_an_abandoned_job_keeps_its_row() {
        let mut held = Held::default();
        held.hold(1, [10, 11]);
        held.hold(2, [12]);
        assert_eq!(held.unhold([10], false), 1);
        assert_eq!(held.unhold([11, 12], true), 2);
        assert_eq!(held.finished, [2], "claim 1's row stays for rescue");
        assert!(held.kept.is_empty() && held.claims.is_empty());
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
