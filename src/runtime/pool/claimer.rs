//! The claimer task of a pool: keeps a short buffer of claimed jobs ahead of the workers,
//! sized by the rate at which they start jobs ([`WorkRate`], [`claim_size`]), claiming
//! after the last job it claimed with a full pass now and then ([`ClaimCursor`]), which
//! runs beside the keyset claims once there is a position ([`FullPass`]); marks
//! the pool idle when the queue is empty and then waits for a notification, a job of its
//! own that comes due, an owed full pass, or the poll interval.
//!
//! Must never claim more than the room the pool has left (every claimed job keeps its
//! unit of room until its outcome is written, a full pass running beside takes its room
//! when it starts), never claim after the pool was told to stop claiming, and never end
//! while a full pass it started still runs (its jobs must be held before the pool
//! releases what it holds). Must never wait for jobs without its idle mark written (inserts
//! would not NOTIFY it), nor pass over an empty queue again without waiting (an idle pool
//! once claimed thousands of times a second).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::cursor::{ClaimCursor, Pass};
use super::idle::{IdleMark, MarkAction};
use super::{PoolSettings, Shared};
use crate::queue::{self, ClaimRequest, ClaimedJob};

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
/// when the queue is empty (see [`IdleMark`]), and waits for a notification or the poll
/// interval.
pub(super) async fn claimer(shared: Arc<Shared>) {
    let mut idle = IdleMark::default();
    let mut failures: u32 = 0;
    let mut rate = WorkRate::new();
    let mut cursor = ClaimCursor::new();
    let mut beside: Option<FullPass> = None;
    // the last claim in line found nothing (the queue looked empty after the position)
    let mut found_none = false;
    loop {
        if beside.as_ref().is_some_and(FullPass::is_finished)
            && let Some(pass) = beside.take()
        {
            let found = pass.finish(&shared, &mut cursor, &mut idle).await;
            if found == 0 && found_none {
                // Neither the claims in line nor the full pass beside found a job: the
                // queue is empty. Wait as an empty claim in line does, rather than pass
                // again at once (a cheap pass is spaced by nothing).
                if wait_for_jobs(&shared, &mut idle, cursor.owed_full_pass_at(), None)
                    .await
                    .is_break()
                {
                    break;
                }
                continue;
            }
        }
        if shared.stop_claiming.is_cancelled() {
            break;
        }
        let counted = beside.as_ref().and_then(FullPass::counted);
        let Some(size) = next_claim_size(&shared, &mut rate, counted.map_or(0, |(n, _)| n)) else {
            let ended = beside.as_ref().map(|p| &*p.ended);
            if wait_for_signal(&shared, counted.map(|(_, until)| until), ended)
                .await
                .is_break()
            {
                break;
            }
            continue;
        };
        // only this task takes room, and `claim_size` stayed within what is free
        let Ok(room) = shared.room.try_acquire_many(size as u32) else {
            tokio::task::yield_now().await;
            continue;
        };
        if cursor.next_pass(Instant::now()) == Pass::Full && cursor.may_run_beside() {
            // each job it claims keeps its unit of room; the rest comes back when it ends
            room.forget();
            cursor.full_pass_started();
            beside = Some(FullPass::start(&shared, size));
            continue;
        }
        let claim = shared.new_claim();
        let claimed = match claim_next(&shared, size, claim, &mut cursor, &mut failures).await {
            Ok(c) => c,
            Err(pause) => {
                drop(room);
                tokio::select! {
                    () = tokio::time::sleep(pause) => continue,
                    () = shared.stop_claiming.cancelled() => break,
                }
            }
        };
        found_none = claimed.is_empty();
        if claimed.is_empty() {
            drop(room);
            let owed = cursor.owed_full_pass_at();
            if owed.is_some_and(|at| at <= Instant::now()) {
                continue;
            }
            let ended = beside.as_ref().map(|p| &*p.ended);
            if wait_for_jobs(&shared, &mut idle, owed, ended)
                .await
                .is_break()
            {
                break;
            }
            continue;
        }
        if idle.on_jobs(Instant::now()) == MarkAction::Clear {
            shared.clear_idle_mark().await;
        }
        // each claimed job keeps its unit of room until its outcome is written
        room.forget();
        take_claimed(&shared, size, claimed, claim);
    }
    if let Some(pass) = beside.take() {
        pass.finish(&shared, &mut cursor, &mut idle).await;
    }
}

/// Hands `claimed` (from claim number `claim`, which took `size` units of room) to the
/// worker: holds them, buffers them, and gives back the room of the jobs not found.
fn take_claimed(shared: &Shared, size: usize, claimed: Vec<ClaimedJob>, claim: i64) {
    shared.room.add_permits(size - claimed.len());
    shared.hold(claim, claimed.iter().map(|j| j.id));
    shared.push_claimed(claimed);
}

/// How long the jobs a full pass running beside may bring count as buffered. A quick pass
/// counts (a slow queue must not claim the same free worker's job twice over, and leave
/// one waiting in the buffer); a slow one stops counting: under a held horizon a pass walks
/// dead entries for up to a second, and counted all along, its room kept the keyset claims
/// from feeding the workers for as long (the steady run's p99 grew to 850 ms).
pub const BESIDE_COUNTED_FOR: Duration = Duration::from_millis(20);

/// A full pass running beside the keyset claims, on a connection of its own, holding
/// `size` units of room (forgotten when it started).
struct FullPass {
    size: usize,
    claim: i64,
    started: Instant,
    task: JoinHandle<(Result<Vec<ClaimedJob>, queue::Error>, Duration)>,
    /// Rung when the pass ends: the claimer's waits listen to it while the pass runs. Its
    /// own, not the pool's `wake`: a wake-up left stored there by a pass that ended while
    /// the claimer was not waiting on it cut the next idle wait short, and an idle pool
    /// passed over its empty queue thousands of times a second.
    ended: Arc<tokio::sync::Notify>,
}

impl FullPass {
    /// Starts a full pass claiming up to `size` jobs; it rings `ended` when it ends.
    fn start(shared: &Arc<Shared>, size: usize) -> Self {
        let claim = shared.new_claim();
        let shared = shared.clone();
        let ended = Arc::new(tokio::sync::Notify::new());
        let ring = ended.clone();
        let task = tokio::spawn(async move {
            let request = claim_request(&shared, size, claim);
            let began = Instant::now();
            let claimed = queue::claim::claim_from(&shared.conns.main, &request, None).await;
            let took = began.elapsed();
            ring.notify_one();
            (claimed, took)
        });
        Self {
            size,
            claim,
            started: Instant::now(),
            task,
            ended,
        }
    }

    /// The jobs it may bring, counted as buffered, and until when (`None`: no longer).
    fn counted(&self) -> Option<(usize, Instant)> {
        let until = self.started + BESIDE_COUNTED_FOR;
        (Instant::now() < until).then_some((self.size, until))
    }

    fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the pass, records it in `cursor` and hands its jobs to the worker: how
    /// many it claimed. A failed pass gives its room back and is retried after its
    /// spacing and a pause.
    async fn finish(self, shared: &Shared, cursor: &mut ClaimCursor, idle: &mut IdleMark) -> usize {
        let s = &shared.settings;
        match self.task.await {
            Ok((Ok(claimed), took)) => {
                let now = Instant::now();
                cursor.record(Pass::Full, self.size, &claimed, took, now);
                if !claimed.is_empty() && idle.on_jobs(now) == MarkAction::Clear {
                    shared.clear_idle_mark().await;
                }
                let found = claimed.len();
                take_claimed(shared, self.size, claimed, self.claim);
                found
            }
            Ok((Err(e), _)) => {
                if e.is_transient() {
                    shared.health.failed();
                }
                cursor.full_pass_failed(Instant::now());
                shared.room.add_permits(self.size);
                tracing::warn!(queue = %s.queue, error = %e, "full claim pass failed");
                0
            }
            Err(e) => {
                // a claim that panicked: whatever it claimed is rescued when its lease expires
                cursor.full_pass_failed(Instant::now());
                shared.room.add_permits(self.size);
                tracing::error!(queue = %s.queue, error = %e, "full claim pass died");
                0
            }
        }
    }
}

/// Samples the work rate and returns how many jobs to claim now (see [`claim_size`]),
/// setting the buffer level at which a start wakes the claimer.
/// `in_flight`: the jobs a full pass running beside may bring, counted as buffered only
/// for its first [`BESIDE_COUNTED_FOR`] (see there).
fn next_claim_size(shared: &Shared, rate: &mut WorkRate, in_flight: usize) -> Option<usize> {
    rate.sample((
        shared.started_total.load(Ordering::Relaxed),
        shared.ended_total.load(Ordering::Relaxed),
        shared.busy_micros.load(Ordering::Relaxed),
    ));
    let (size, low_water) = claim_size(
        &shared.settings,
        shared.running.load(Ordering::Relaxed),
        shared.buffered() + in_flight,
        shared.room.available_permits(),
        rate.ahead(),
    );
    shared.low_water.store(low_water, Ordering::Relaxed);
    size
}

/// Waits until the claimer may want to claim more (or 50 ms, or `counted`: when a full
/// pass beside stops counting as buffered, or `pass_ended` rings); `Break` when claiming
/// stops.
async fn wait_for_signal(
    shared: &Shared,
    counted: Option<Instant>,
    pass_ended: Option<&tokio::sync::Notify>,
) -> ControlFlow<()> {
    let poll = Instant::now() + Duration::from_millis(50);
    let until = counted.map_or(poll, |c| c.min(poll));
    tokio::select! {
        () = shared.claim_signal.notified() => {}
        () = rung(pass_ended) => {}
        () = tokio::time::sleep_until(until.into()) => {}
        () = shared.stop_claiming.cancelled() => return ControlFlow::Break(()),
    }
    ControlFlow::Continue(())
}

/// The pool's claim number `claim`, of up to `size` jobs.
fn claim_request(shared: &Shared, size: usize, claim: i64) -> ClaimRequest<'_> {
    let s = &shared.settings;
    ClaimRequest {
        queue: &s.queue,
        kinds: &s.kinds,
        limit: size as i64,
        worker: &shared.worker,
        lease: s.lease,
        claim,
    }
}

/// Claims up to `size` jobs as claim number `claim`, after the cursor's position or in a
/// full pass as the cursor says, and moves the cursor. On failure, counts it in `failures`
/// and returns how long to pause before the next claim.
async fn claim_next(
    shared: &Shared,
    size: usize,
    claim: i64,
    cursor: &mut ClaimCursor,
    failures: &mut u32,
) -> Result<Vec<ClaimedJob>, Duration> {
    let s = &shared.settings;
    let request = claim_request(shared, size, claim);
    let began = Instant::now();
    let pass = cursor.next_pass(began);
    let after = match pass {
        Pass::Full => None,
        Pass::After(position) => Some(position),
    };
    let claimed = queue::claim::claim_from(&shared.conns.main, &request, after).await;
    match claimed {
        Ok(c) => {
            *failures = 0;
            cursor.record(pass, size, &c, began.elapsed(), Instant::now());
            Ok(c)
        }
        Err(e) => {
            *failures += 1;
            if e.is_transient() {
                shared.health.failed();
            }
            let pause = Duration::from_millis(100 * 2u64.pow((*failures).min(6)))
                .min(s.poll_interval * 5)
                .max(Duration::from_millis(100));
            tracing::warn!(queue = %s.queue, error = %e, retry_in = ?pause, "claim failed");
            Err(pause)
        }
    }
}

/// The queue was found empty: writes the idle mark if it is absent or due for a refresh
/// (so inserts NOTIFY this pool); `true` when it was written afresh, and the pool must
/// claim once more before it waits (a job inserted between the empty claim and the mark
/// sent no NOTIFY, and would wait a poll).
async fn settle_idle(shared: &Shared, idle: &mut IdleMark) -> bool {
    let now = Instant::now();
    if let MarkAction::Write { fresh } = idle.on_empty(now) {
        let written = mark_idle(shared).await;
        idle.written(written, now);
        return written && fresh;
    }
    false
}

/// Marks the pool idle, so inserts into its queue NOTIFY; whether that worked.
async fn mark_idle(shared: &Shared) -> bool {
    match queue::mark_idle(&shared.conns.main, &shared.worker, &shared.settings.queue).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "could not mark the pool idle");
            false
        }
    }
}

/// The queue was found empty: first marks the pool idle if the mark is absent or due for
/// a refresh (see [`settle_idle`]; a mark written afresh returns at once, to claim once
/// more), then waits for a notification, for a job this pool wrote back to come due, for
/// the owed full pass (`full_pass`), for the full pass running beside to end
/// (`pass_ended`), or for the poll interval; `Break` when claiming stops. Every wait for
/// jobs goes through here, so a pool never sleeps unmarked (inserts would not NOTIFY it,
/// and their jobs would wait a poll).
async fn wait_for_jobs(
    shared: &Shared,
    idle: &mut IdleMark,
    full_pass: Option<Instant>,
    pass_ended: Option<&tokio::sync::Notify>,
) -> ControlFlow<()> {
    if settle_idle(shared, idle).await {
        return ControlFlow::Continue(());
    }
    let s = &shared.settings;
    let now = tokio::time::Instant::now();
    let poll = now + s.poll_interval;
    let due = {
        let mut due = shared.due.lock().expect("due lock");
        if due.is_some_and(|d| d <= now) {
            *due = None;
        }
        *due
    };
    let due = match (due, full_pass.map(tokio::time::Instant::from_std)) {
        (Some(d), Some(f)) => Some(d.min(f)),
        (d, f) => d.or(f),
    };
    tokio::select! {
        () = shared.wake.notified() => {}
        () = rung(pass_ended) => {}
        () = tokio::time::sleep_until(due.map_or(poll, |d| d.min(poll))) => {}
        () = shared.stop_claiming.cancelled() => return ControlFlow::Break(()),
    }
    ControlFlow::Continue(())
}

/// Returns when `bell` rings; never without one.
async fn rung(bell: Option<&tokio::sync::Notify>) {
    match bell {
        Some(bell) => bell.notified().await,
        None => std::future::pending().await,
    }
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
}
