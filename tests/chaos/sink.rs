//! A local HTTP sink for the experiments: `POST /job/{n}` sleeps 20-200 ms (fixed per
//! `n`), answers 200, and counts every call per `n`, so an experiment can tell lost jobs
//! (never called) from duplicates (called more than once) and see the calls in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;

#[derive(Default)]
pub struct Calls {
    per_job: Mutex<HashMap<u64, u32>>,
    in_flight: AtomicUsize,
}

impl Calls {
    /// Jobs called at least once.
    pub fn called(&self) -> usize {
        self.per_job.lock().unwrap().len()
    }

    /// Calls beyond the first, over all jobs.
    pub fn duplicates(&self) -> u64 {
        self.per_job
            .lock()
            .unwrap()
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    /// Calls received and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// A running sink: its base URL and its counts.
pub struct Sink {
    pub url: String,
    pub calls: Arc<Calls>,
}

/// How long the sink takes to answer job `n`: 20-200 ms, the same for every call.
pub fn delay_of(n: u64) -> Duration {
    Duration::from_millis(20 + (n.wrapping_mul(7919) % 181))
}

/// Starts a sink on a free local port.
pub async fn start() -> Sink {
    let calls = Arc::new(Calls::default());
    let app = axum::Router::new()
        .route("/job/{n}", post(answer))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Sink { url, calls }
}

/// Counts a call in flight until dropped (answered, or cut off by a dying client).
struct InFlight(Arc<Calls>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(State(calls): State<Arc<Calls>>, Path(n): Path<u64>) -> &'static str {
    calls.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(calls.clone());
    *calls.per_job.lock().unwrap().entry(n).or_default() += 1;
    tokio::time::sleep(delay_of(n)).await;
    "ok"
}
