//! Running one attempt: the apalis service a pool's worker calls ([`Dispatcher`]) and
//! [`run_attempt`], which runs a job's handler with its kind's timeout, catches its
//! panics, and turns its answer into the [`Outcome`] to store.
//!
//! Must never fail or let a panic out (a panic here would end the pool's worker, not one
//! attempt), and never write to the database: the flusher stores the outcome.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use apalis_core::error::BoxDynError;
use chrono::Utc;
use futures::FutureExt;
use futures::future::BoxFuture;
use tower::Service;

use crate::error_class::ErrorClass;
use crate::jobs::{Attempt, Handler, JobContext, JobError, KindPolicy, Registry};
use crate::queue::{ClaimedJob, DeadReason, ErrorEntry, Outcome};
use crate::runtime::backend::JobTask;
use crate::runtime::retry::outcome_of;
use crate::runtime::supervisor::panic_message;

/// The apalis service: runs one attempt through the registry, with the kind's timeout,
/// catching panics, and turns the answer into an [`Outcome`]. Never fails.
#[derive(Clone)]
pub struct Dispatcher {
    pub(super) registry: Arc<Registry>,
    pub(super) delete_completed: bool,
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
        return unknown_kind(registry, &job, now);
    };
    let attempt = run_handler(handler, policy, &job).await;
    if let Err(e) = &attempt {
        log_failure(&job, e);
    }
    outcome_or_retry(&job, policy, attempt, delete_completed)
}

/// The outcome of a job whose kind this daemon has no handler for: the dead letters.
fn unknown_kind(registry: &Registry, job: &ClaimedJob, now: chrono::DateTime<Utc>) -> Outcome {
    tracing::error!(job.id = job.id, job.kind = %job.kind, "no handler for this kind: dead-lettered");
    Outcome::Dead {
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
    }
}

/// Runs `handler` on `job` within the kind's timeout; a panic or the timeout is a
/// retryable error.
async fn run_handler(handler: &Arc<dyn Handler>, policy: &KindPolicy, job: &ClaimedJob) -> Attempt {
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
    match tokio::time::timeout(policy.timeout, run).await {
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
    }
}

/// Logs a failed attempt (snoozes and cancellations are not failures).
fn log_failure(job: &ClaimedJob, e: &JobError) {
    if let Some((class, message, status)) = e.failure() {
        tracing::warn!(
            job.id = job.id, job.kind = %job.kind, job.attempt = job.attempt,
            class = %class, status = ?status, error = %message, "attempt failed"
        );
    }
}

/// The outcome the kind's policy gives `attempt`; if computing it panics, a retry in a
/// minute.
fn outcome_or_retry(
    job: &ClaimedJob,
    policy: &KindPolicy,
    attempt: Attempt,
    delete_completed: bool,
) -> Outcome {
    // The policy math must not take the worker down whatever a handler returned: a panic
    // here would end the pool's worker, not one attempt.
    let now = Utc::now();
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        outcome_of(job, policy, attempt, now, delete_completed)
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
