//! Group commit for the shim: concurrent requests share one transaction. Handlers submit
//! their work (a job to enqueue, or verified webhook events to store) and wait; writer
//! tasks take whatever is waiting, write it with one multi-row statement per table, commit,
//! and only then answer each request. A batch that fails is retried one request at a time,
//! so one bad request never fails its neighbours.
//!
//! Must never answer a request before its rows are committed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::queue::{self, Enqueued, NewInboundEvent, NewJob, ReplayToken};

/// Most requests written in one transaction.
const MAX_BATCH: usize = 512;

/// What a request asks to write.
pub enum Work {
    Job(NewJob),
    /// A delivery's events, with the token it must not share with an earlier delivery.
    Events(Vec<NewInboundEvent>, Option<ReplayToken>),
}

/// What was written for it.
#[derive(Debug)]
pub enum Done {
    Job(Enqueued),
    /// Per event: the new row's id, or `None` for a redelivery.
    Events(Vec<Option<i64>>),
    /// The delivery's token was seen before: nothing was written.
    Replayed,
}

/// Why a request could not be written.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The database is unreachable: the client (or provider) should retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Our own SQL refused the request (unknown kind, bad value).
    #[error("{0}")]
    Rejected(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<queue::Error> for IngestError {
    fn from(e: queue::Error) -> Self {
        if let Some(message) = e.user_message() {
            return IngestError::Rejected(message);
        }
        match e {
            queue::Error::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_),
            ) => IngestError::Unavailable(e.to_string()),
            queue::Error::Database(sqlx::Error::Database(ref db))
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("57") || c.starts_with("08")) =>
            {
                IngestError::Unavailable(e.to_string())
            }
            // a value the database cannot store (data exception, or a program limit such as
            // an index entry too large): the request's fault, whatever the shim's checks
            // missed; its SQLSTATE only (the message may quote the value)
            queue::Error::Database(sqlx::Error::Database(ref db))
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("22") || c.starts_with("54")) =>
            {
                let code = db.code().unwrap_or_default();
                tracing::info!(sqlstate = %code, "the database refused a request's value");
                IngestError::Rejected(format!(
                    "the database cannot store a value of this request (SQLSTATE {code})"
                ))
            }
            other => IngestError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for IngestError {
    fn from(e: sqlx::Error) -> Self {
        queue::Error::from(e).into()
    }
}

struct Request {
    work: Work,
    reply: oneshot::Sender<Result<Done, IngestError>>,
}

/// Handle to the writers.
#[derive(Clone)]
pub struct Ingest {
    requests: mpsc::Sender<Request>,
}

impl Ingest {
    /// Starts `writers` writer tasks on `pool`; they stop when every handle is dropped.
    pub fn start(pool: PgPool, writers: usize) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 8);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(pool.clone(), rx.clone()));
        }
        Self { requests: tx }
    }

    /// Writes `work` in the next batch; returns once it is committed.
    pub async fn submit(&self, work: Work) -> Result<Done, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { work, reply })
            .await
            .map_err(|_| IngestError::Unavailable("the shim is shutting down".into()))?;
        answer
            .await
            .map_err(|_| IngestError::Internal("the writer stopped".into()))?
    }
}

async fn writer(pool: PgPool, requests: Arc<Mutex<mpsc::Receiver<Request>>>) {
    loop {
        let batch = {
            let mut rx = requests.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            drain(&mut rx, &mut batch);
            if batch.len() < MAX_BATCH {
                // requests already on their way get one more chance to join: a yield,
                // not a timer, so a lone request waits microseconds, not a millisecond
                tokio::task::yield_now().await;
                drain(&mut rx, &mut batch);
            }
            batch
        };
        let works: Vec<&Work> = batch.iter().map(|r| &r.work).collect();
        match write(&pool, &works).await {
            Ok(done) => {
                for (request, done) in batch.into_iter().zip(done) {
                    let _ = request.reply.send(Ok(done));
                }
            }
            Err(e) if batch.len() > 1 && !matches!(e, IngestError::Unavailable(_)) => {
                tracing::warn!(requests = batch.len(), error = %e, "group commit failed; writing its requests one by one");
                for request in batch {
                    let result = write(&pool, &[&request.work])
                        .await
                        .map(|mut d| d.remove(0));
                    let _ = request.reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for request in batch {
                    let _ = request.reply.send(Err(match &e {
                        IngestError::Unavailable(_) => IngestError::Unavailable(message.clone()),
                        IngestError::Rejected(_) => IngestError::Rejected(message.clone()),
                        IngestError::Internal(_) => IngestError::Internal(message.clone()),
                    }));
                }
            }
        }
    }
}

fn drain(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

/// One transaction: every job in one statement, the deliveries' replay tokens in
/// another, every event (and its job) of a delivery whose token is new in a third.
async fn write(pool: &PgPool, works: &[&Work]) -> Result<Vec<Done>, IngestError> {
    let mut tx = tokio::time::timeout(Duration::from_secs(5), pool.begin())
        .await
        .map_err(|_| {
            IngestError::Unavailable("timed out waiting for a database connection".into())
        })??;
    let tokens: Vec<&ReplayToken> = works
        .iter()
        .filter_map(|w| match w {
            Work::Events(_, token) => token.as_ref(),
            Work::Job(_) => None,
        })
        .collect();
    let mut fresh = queue::remember_replay_tokens(&mut tx, &tokens).await?;
    // the first delivery of a token in this batch takes it; a second one is a replay
    let taken: Vec<bool> = works
        .iter()
        .map(|w| match w {
            Work::Events(_, Some(token)) => fresh.remove(token),
            _ => true,
        })
        .collect();
    let mut jobs = Vec::new();
    let mut events = Vec::new();
    for (work, taken) in works.iter().zip(&taken) {
        match work {
            Work::Job(job) => jobs.push(job.clone()),
            Work::Events(evs, _) if *taken => events.extend(evs.iter().cloned()),
            Work::Events(..) => {}
        }
    }
    let enqueued = queue::enqueue_many_reporting(&mut tx, &jobs).await?;
    let stored = queue::store_inbound(&mut tx, &events).await?;
    tx.commit().await?;

    let mut enqueued = enqueued.into_iter();
    let mut stored = stored.into_iter();
    Ok(works
        .iter()
        .zip(taken)
        .map(|(work, taken)| match work {
            Work::Job(_) => Done::Job(enqueued.next().expect("one result per job")),
            Work::Events(evs, _) if taken => {
                Done::Events(stored.by_ref().take(evs.len()).collect())
            }
            Work::Events(..) => Done::Replayed,
        })
        .collect())
}
