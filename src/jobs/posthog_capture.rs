//! `posthog.capture`: one analytics event per job; the daemon's capture jobs that are
//! ready together share one `POST /batch/` of up to 100 events.
//!
//! Each attempt hands its event to a collector task and waits for the answer of the call
//! that carried it. The collector takes what is waiting (up to 100, gathering for at most
//! a few milliseconds after the first) and sends each batch from its own task, so batches
//! overlap. Every job of a batch gets that call's outcome: a failed batch retries each of
//! its jobs, and PostHog drops the events it already has by their `uuid` (derived from the
//! job id). A batch PostHog refuses as a bad request (a 4xx other than 401/403/429) is
//! sent again event by event, so one bad event does not dead-letter the other 99. Must
//! never log event properties or the key.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{OnceCell, mpsc, oneshot};

use super::outbound::Outbound;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::error_class::ErrorClass;
use crate::providers::posthog::{CaptureEvent, MAX_BATCH, Posthog};

/// How long the collector waits for more events after the first of a batch.
const GATHER: Duration = Duration::from_millis(5);

type Submission = (serde_json::Value, oneshot::Sender<Result<(), JobError>>);

/// The `posthog.capture` kind: one event.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct Capture(CaptureEvent);

/// What `posthog.capture` needs: the collector task that batches events (started by the
/// first capture).
pub struct Collector {
    posthog: Arc<Posthog>,
    http: reqwest::Client,
    outbound: Arc<Outbound>,
    collector: Arc<OnceCell<mpsc::Sender<Submission>>>,
}

impl Collector {
    pub fn new(posthog: Posthog, http: reqwest::Client, outbound: Arc<Outbound>) -> Self {
        Self {
            posthog: Arc::new(posthog),
            http,
            outbound,
            collector: Arc::new(OnceCell::new()),
        }
    }

    async fn submit(&self, item: serde_json::Value, timeout: Duration) -> Result<(), JobError> {
        let sender = self
            .collector
            .get_or_init(|| async {
                let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
                tokio::spawn(collect(
                    rx,
                    self.posthog.clone(),
                    self.http.clone(),
                    self.outbound.clone(),
                    timeout,
                ));
                tx
            })
            .await;
        let (reply, answer) = oneshot::channel();
        sender.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> JobError {
    JobError::Retryable {
        class: crate::error_class::ErrorClass::Api,
        message: "the PostHog batch sender stopped".into(),
        status: None,
        not_before: None,
    }
}

async fn collect(
    mut rx: mpsc::Receiver<Submission>,
    posthog: Arc<Posthog>,
    http: reqwest::Client,
    outbound: Arc<Outbound>,
    timeout: Duration,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + GATHER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let (posthog, http, outbound) = (posthog.clone(), http.clone(), outbound.clone());
        tokio::spawn(async move {
            let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let send = |items: Vec<serde_json::Value>| {
                let (posthog, http, outbound) = (posthog.clone(), http.clone(), outbound.clone());
                async move {
                    outbound
                        .call(
                            "posthog",
                            "posthog.capture",
                            posthog.configured_key(),
                            async |key| posthog.capture_batch(&http, key, items, timeout).await,
                        )
                        .await
                }
            };
            let several = items.len() > 1;
            let result = send(items.clone()).await;
            if several
                && matches!(
                    result,
                    Err(JobError::Fatal {
                        class: ErrorClass::Data,
                        ..
                    })
                )
            {
                // PostHog refused the request itself (a 4xx other than auth): one bad event
                // fails its whole batch. Send each alone, so only the bad one fails.
                let alone = futures::future::join_all(items.into_iter().map(|i| send(vec![i])));
                for (reply, result) in replies.into_iter().zip(alone.await) {
                    let _ = reply.send(result);
                }
                return;
            }
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        });
    }
}

impl Kind for Capture {
    const KIND: &'static str = "posthog.capture";
    type Deps = Collector;

    fn policy() -> KindPolicy {
        KindPolicy {
            queue: "default".into(),
            timeout: Duration::from_secs(30),
            ..KindPolicy::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        self.0.check()
    }

    async fn run(self, ctx: &JobContext, collector: &Collector) -> Attempt {
        let item = self.0.to_batch_item(event_uuid(ctx.id), Utc::now());
        let timeout = ctx
            .timeout
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_secs(1));
        collector.submit(item, timeout).await?;
        Ok(Some(serde_json::json!({ "outcome": "captured" })))
    }
}

/// A stable event uuid per job, so a batch sent again is deduplicated by PostHog.
fn event_uuid(job_id: i64) -> uuid::Uuid {
    // "penguinj" in the high half, the job id in the low half
    uuid::Uuid::from_u64_pair(0x7065_6e67_7569_6e6a, job_id as u64)
}
