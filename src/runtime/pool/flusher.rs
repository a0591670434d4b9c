//! The flusher task of a pool: writes the outcomes its worker produces back to the
//! database in batches (up to `flush_batch` per statement), gives the room of written jobs
//! back to the claimer, wakes the claimer for a snooze or retry that comes due before
//! the next poll, and deletes the rows in `penguin.claims` of the claims all of whose jobs
//! are written back (a statement every [`FORGET_CLAIMS_EVERY`] at most).
//!
//! One outcome the database refuses must never hold back the others: a refused batch is
//! written row by row, and a row still refused goes to the dead letters. Never gives up
//! on a batch while the pool runs; at shutdown, only after 10 failures to reach the
//! database (the jobs are then rescued).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::queue::{self, Outcome};

/// How long finished claims wait to be deleted together: at tens of thousands of jobs a
/// second a claim finishes every few milliseconds, and a statement for each would cost
/// the database as much as a tenth of the outcome writes.
pub const FORGET_CLAIMS_EVERY: Duration = Duration::from_millis(250);

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

/// Writes outcomes back, as many as have accumulated (up to `flush_batch`) per statement.
pub(super) async fn flusher(shared: Arc<Shared>, mut outcomes: mpsc::UnboundedReceiver<FlushMsg>) {
    let max = shared.settings.flush_batch;
    let mut batch: Vec<Pending> = Vec::with_capacity(max);
    let mut barriers: Vec<oneshot::Sender<()>> = Vec::new();
    // when finished claims are next deleted (None: none is waiting)
    let mut forget_at: Option<tokio::time::Instant> = None;
    loop {
        let first = tokio::select! {
            msg = outcomes.recv() => msg,
            () = sleep_until(forget_at) => {
                forget_at = None;
                forget_finished_claims(&shared).await;
                continue;
            }
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
            let abandoned = write_batch(&shared, &batch).await;
            if abandoned.is_empty() {
                shared.unhold(batch.iter().map(|p| p.id));
            } else {
                shared.unhold(
                    batch
                        .iter()
                        .map(|p| p.id)
                        .filter(|id| !abandoned.contains(id)),
                );
                shared.abandon(abandoned);
            }
            note_soon_due(&shared, &batch);
            batch.clear();
            let now = tokio::time::Instant::now();
            match forget_at {
                Some(at) if at <= now => {
                    forget_at = None;
                    forget_finished_claims(&shared).await;
                }
                Some(_) => {}
                None if shared.has_finished_claims() => forget_at = Some(now + FORGET_CLAIMS_EVERY),
                None => {}
            }
        }
        // every outcome sent before a barrier was received before it, so is written now
        for b in barriers.drain(..) {
            let _ = b.send(());
        }
    }
}

/// Sleeps until `at`; forever when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Deletes the rows of the claims all of whose jobs were written back. A failure leaves
/// them to a rescue pass ([`queue::forget_finished_claims`]), which deletes them when it
/// finds none of their jobs running.
async fn forget_finished_claims(shared: &Shared) {
    let claims = shared.take_finished_claims();
    if claims.is_empty() {
        return;
    }
    if let Err(e) = queue::forget_claims(&shared.conns.flush, &shared.worker, &claims).await {
        tracing::debug!(queue = %shared.queue, claims = claims.len(), error = %e,
            "could not delete finished claims; a rescue pass will");
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
/// database's message ([`queue::bury_unwritable`]). Returns the ids whose outcome was
/// neither written nor dead-lettered (given up at shutdown, or not even dead-lettered):
/// they still run in the database under this worker, and only a rescue can free them.
async fn write_batch(shared: &Shared, batch: &[Pending]) -> Vec<i64> {
    match write_with_retries(shared, batch).await {
        Ok(Written::Stored) => Vec::new(),
        Ok(Written::GaveUp) => batch.iter().map(|p| p.id).collect(),
        Err(e) => {
            tracing::warn!(
                queue = %shared.queue, outcomes = batch.len(), error = %e,
                "the database refused a batch of outcomes; writing them one by one"
            );
            let mut abandoned = Vec::new();
            for one in batch {
                match write_with_retries(shared, std::slice::from_ref(one)).await {
                    Ok(Written::Stored) => {}
                    Ok(Written::GaveUp) => abandoned.push(one.id),
                    Err(e) => {
                        if !bury(shared, one.id, &e).await {
                            abandoned.push(one.id);
                        }
                    }
                }
            }
            abandoned
        }
    }
}

/// What became of a batch of outcomes the database did not refuse.
enum Written {
    Stored,
    /// Not written: the database could not be reached 10 times at shutdown.
    GaveUp,
}

/// Writes `batch`, retrying while the database cannot be reached; returns the first error
/// that is not about reaching it. Gives up after 10 failures at shutdown.
async fn write_with_retries(shared: &Shared, batch: &[Pending]) -> Result<Written, queue::Error> {
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
                break Ok(Written::Stored);
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
                    break Ok(Written::GaveUp);
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

/// Moves a job whose outcome the database refused to the dead letters; whether it did.
async fn bury(shared: &Shared, id: i64, refused: &queue::Error) -> bool {
    let message = format!("the outcome of this attempt could not be stored: {refused}");
    let mut failures: u32 = 0;
    loop {
        match queue::bury_unwritable(&shared.conns.flush, &shared.worker, id, &message).await {
            Ok(buried) => {
                tracing::error!(
                    queue = %shared.queue, job.id = id, buried, error = %refused,
                    "outcome refused by the database; job moved to the dead letters (class internal)"
                );
                return true;
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
                return false;
            }
        }
    }
}
