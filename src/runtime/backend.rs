//! Our PostgreSQL backend for apalis: the [`Backend`] a pool's worker pulls claimed jobs
//! from, and the [`OutcomeLayer`] through which every finished task's outcome reaches the
//! flusher.
//!
//! The backend never does I/O inside a poll: claims happen in the pool's claimer task,
//! which fills a priority-ordered buffer that `poll_next` pops (most urgent first);
//! outcomes go to the flusher task over a channel, with the time each handler started.
//! `poll_next` never returns `None` (that would end the worker): it returns `Pending`
//! until the claimer pushes work.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::error::BoxDynError;
use apalis_core::task::Task;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use chrono::Utc;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tower::{Layer, Service};

use super::pool::{FlushMsg, Shared};
use crate::queue::{ClaimedJob, ErrorEntry, Outcome};

/// The apalis task our workers process.
pub type JobTask = Task<ClaimedJob>;

/// Backend errors (none are produced today: DB errors are retried inside the tasks).
#[derive(Debug, thiserror::Error)]
#[error("backend closed")]
pub struct BackendError;

/// A pool's view of the claimed-job buffer.
pub struct PgBackend {
    pub(super) outcomes: mpsc::UnboundedSender<FlushMsg>,
    pub(super) shared: Arc<Shared>,
    pub(super) closing: Option<BoxFuture<'static, ()>>,
}

impl Backend for PgBackend {
    type Task = JobTask;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        _: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        // after the buffer is closed (shutdown) it stays empty: Pending until the worker stops
        self.shared.poll_next_job(cx).map(|task| Some(Ok(task)))
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            // Claimed but never started: they stay in `held` and are released by `finish`.
            self.shared.close_buffer();
            let shared = self.shared.clone();
            let outcomes = self.outcomes.clone();
            self.closing = Some(Box::pin(async move { shared.finish(&outcomes).await }));
        }
        match self.closing.as_mut().map(|f| f.as_mut().poll(cx)) {
            Some(Poll::Ready(())) | None => Poll::Ready(Ok(())),
            Some(Poll::Pending) => Poll::Pending,
        }
    }
}

impl BackendConfig for PgBackend {
    type Args = ClaimedJob;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = OutcomeLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        OutcomeLayer {
            outcomes: self.outcomes.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Sits outside the user layers, so it sees every task's final result and hands
/// `(job id, outcome)` to the flusher, which writes them back in batches.
#[derive(Clone)]
pub struct OutcomeLayer {
    outcomes: mpsc::UnboundedSender<FlushMsg>,
    shared: Arc<Shared>,
}

impl<S> Layer<S> for OutcomeLayer {
    type Service = OutcomeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OutcomeService {
            inner,
            outcomes: self.outcomes.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// See [`OutcomeLayer`].
#[derive(Clone)]
pub struct OutcomeService<S> {
    inner: S,
    outcomes: mpsc::UnboundedSender<FlushMsg>,
    shared: Arc<Shared>,
}

impl<S> Service<JobTask> for OutcomeService<S>
where
    S: Service<JobTask, Response = Outcome>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, task: JobTask) -> Self::Future {
        let id = task.args.id;
        let attempt = task.args.attempt;
        let kind = task.args.kind.clone();
        let since = std::time::Instant::now();
        self.shared.started(id);
        let fut = self.inner.call(task);
        let outcomes = self.outcomes.clone();
        let shared = self.shared.clone();
        Box::pin(async move {
            let outcome = match fut.await {
                Ok(outcome) => outcome,
                // The dispatcher never fails; a layer in between might. Retry soon.
                Err(e) => {
                    let e: BoxDynError = e.into();
                    tracing::error!(job.id = id, error = %e, "worker layer failed the job");
                    Outcome::Retry {
                        run_at: Utc::now() + chrono::Duration::seconds(30),
                        error: ErrorEntry {
                            at: Utc::now(),
                            attempt,
                            class: "internal".into(),
                            message: e.to_string(),
                            status: None,
                        },
                    }
                }
            };
            // Only fails when the flusher is gone (shutdown after the grace period): the
            // job is then released or rescued.
            shared.count_attempt(&kind, &outcome, since.elapsed().as_secs_f64());
            let started = shared.ended(id);
            let _ = outcomes.send(FlushMsg::Outcome(id, outcome, started));
            Ok(())
        })
    }
}
