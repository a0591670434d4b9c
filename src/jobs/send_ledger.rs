//! Group statements for the send kinds' bookkeeping: the check before a send (already
//! accepted? recipients suppressed?) and the record after it. Hundreds of sends run at
//! once; one statement (and one commit) per send would make the database connections, not
//! the provider, the limit. A collector task takes whatever requests are waiting (a yield,
//! not a timer, so a lone send is not delayed), runs one statement for all of them and
//! answers each. A failed batch is retried one request at a time, so one bad row never
//! fails its neighbours.
//!
//! A record is answered only after its commit: a job never completes before its `sent`
//! rows exist. Must never hold requests across more than one statement.

use sqlx::PgPool;
use tokio::sync::{OnceCell, mpsc, oneshot};

use crate::queue::email::{AcceptedSend, SendCheck, check_sends, record_sends};

/// Most requests in one statement.
const MAX_BATCH: usize = 500;

type Reply<T> = oneshot::Sender<Result<T, String>>;

/// A job id and its recipients, to check.
type CheckRequest = (i64, Vec<String>);

/// The two collectors of one daemon, started on first use.
#[derive(Debug, Default)]
pub struct SendLedger {
    checks: OnceCell<mpsc::Sender<(CheckRequest, Reply<SendCheck>)>>,
    records: OnceCell<mpsc::Sender<(AcceptedSend, Reply<()>)>>,
}

impl SendLedger {
    /// [`crate::queue::email::check_sends`] for one job, batched with concurrent checks.
    pub async fn check(
        &self,
        pool: &PgPool,
        job_id: i64,
        recipients: Vec<String>,
    ) -> Result<SendCheck, String> {
        let sender = self
            .checks
            .get_or_init(|| async {
                let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
                let pool = pool.clone();
                tokio::spawn(collect(rx, move |batch: Vec<CheckRequest>| {
                    let pool = pool.clone();
                    async move { check_sends(&pool, &batch).await.map_err(|e| e.to_string()) }
                }));
                tx
            })
            .await;
        ask(sender, (job_id, recipients)).await
    }

    /// [`crate::queue::email::record_send`], batched with concurrent records; returns after
    /// the commit.
    pub async fn record(&self, pool: &PgPool, send: AcceptedSend) -> Result<(), String> {
        let sender = self
            .records
            .get_or_init(|| async {
                let (tx, rx) = mpsc::channel(MAX_BATCH * 2);
                let pool = pool.clone();
                tokio::spawn(collect(rx, move |batch: Vec<AcceptedSend>| {
                    let pool = pool.clone();
                    async move {
                        let n = batch.len();
                        record_sends(&pool, &batch)
                            .await
                            .map(|()| vec![(); n])
                            .map_err(|e| e.to_string())
                    }
                }));
                tx
            })
            .await;
        ask(sender, send).await
    }
}

async fn ask<I, T>(sender: &mpsc::Sender<(I, Reply<T>)>, item: I) -> Result<T, String> {
    let (reply, answer) = oneshot::channel();
    sender
        .send((item, reply))
        .await
        .map_err(|_| "the send ledger stopped".to_string())?;
    answer
        .await
        .map_err(|_| "the send ledger dropped the request".to_string())?
}

/// Runs `run` on batches of what is waiting; `run` answers one result per item, in order.
async fn collect<I, T, F, Fut>(mut rx: mpsc::Receiver<(I, Reply<T>)>, run: F)
where
    I: Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(Vec<I>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<T>, String>> + Send,
{
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        drain(&mut rx, &mut batch);
        if batch.len() < MAX_BATCH {
            tokio::task::yield_now().await;
            drain(&mut rx, &mut batch);
        }
        let (items, replies): (Vec<I>, Vec<Reply<T>>) = batch.into_iter().unzip();
        match run(items.clone()).await {
            Ok(results) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err("one answer per request expected".into()));
                }
            }
            Err(e) if items.len() > 1 => {
                tracing::warn!(requests = items.len(), error = %e, "send ledger batch failed; retrying its requests one by one");
                for (item, reply) in items.into_iter().zip(replies) {
                    let result = run(vec![item])
                        .await
                        .and_then(|mut r| r.pop().ok_or_else(|| "no answer".to_string()));
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn drain<I, T>(rx: &mut mpsc::Receiver<(I, Reply<T>)>, batch: &mut Vec<(I, Reply<T>)>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}
