//! Outbound provider benchmark: `cargo bench --bench providers` (`-- --runs N --jobs N
//! --only sink_instant`).
//!
//! Starts its own durable PostgreSQL cluster under /tmp, a local Mailgun sink in this
//! process, and the real `penguin-jobs run --no-http` binary with one pool of concurrency
//! 256. Each run enqueues `mailgun.send` jobs (one recipient, ~300 bytes of message) and
//! lets the daemon drain them, in three settings:
//!
//! - `sink_200ms`: the sink answers after 200 ms (latency-bound: the rate shows whether
//!   concurrency is lost to the queue; 256 in flight allow at most 1,280/s);
//! - `sink_instant`: the sink answers at once;
//! - `rate_limited`: instant sink, `[providers.mailgun.rate_limit] per_second = 2000,
//!   burst = 100`: the rate the sink sees must stay under the limit.
//!
//! Rates come from the database's timestamps (jobs / (last finished_at - first
//! attempted_at)); the job duration is finished_at - attempted_at (claim to outcome
//! written, so it includes the time a job waits claimed ahead of the pool and the batched
//! write-back), and the provider call's own mean latency comes from
//! `penguin.integration_metrics`. For the rate limit, the sink records
//! each call's arrival: the steady rate after the first second, and the most calls in any
//! one-second window (bounded by per_second + burst). Prints JSON with every run and the
//! medians.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Daemon, arg, fresh_database, median};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use penguin_jobs::embedded_pg::EmbeddedPostgres;
use penguin_jobs::queue::{self, NewJob};
use serde_json::json;

const CONCURRENCY: usize = 256;

/// The local Mailgun: answers `POST /v3/{domain}/messages` after `delay`, recording when
/// each call arrived.
struct Sink {
    url: String,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

async fn start_sink(delay: Duration) -> Sink {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
    let counter = Arc::new(AtomicU64::new(0));
    let recorded = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let (recorded, counter) = (recorded.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (recorded, counter) = (recorded.clone(), counter.clone());
                    async move {
                        recorded.lock().unwrap().push(Instant::now());
                        let _ = req.into_body().collect().await;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let body = format!(
                            "{{\"id\":\"<bench.{n}@mg.example.com>\",\"message\":\"Queued. Thank you.\"}}"
                        );
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Sink { url, arrivals }
}

struct RunResult {
    jobs_per_s: f64,
    call_mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    steady_calls_per_s: f64,
    max_calls_in_1s: usize,
}

async fn run_once(
    cluster: &EmbeddedPostgres,
    dir: &std::path::Path,
    sink_delay: Duration,
    rate_limit: Option<&str>,
    jobs: usize,
) -> RunResult {
    let sink = start_sink(sink_delay).await;
    let (pool, url) = fresh_database(cluster, "bench_providers", 2).await;
    let config = dir.join("jobs.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nmax_connections = 12\n[maintenance]\nprune = false\n\
             [oauth]\nrefresh = false\n[api_keys]\nrotation = false\n[health]\nchecks = false\n\
             [queues.default]\nconcurrency = {CONCURRENCY}\nbatch = {CONCURRENCY}\n\
             [providers.mailgun]\napi_key = \"file:{}\"\ndomain = \"mg.example.com\"\nbase_url = \"{}\"\n{}",
            dir.join("key").display(),
            sink.url,
            rate_limit.unwrap_or("")
        ),
    )
    .unwrap();
    let command = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_penguin-jobs"));
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("DATABASE_URL", &url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        c
    };
    let migrated = command(&["migrate"]).output().unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let batch: Vec<NewJob> = (0..jobs)
        .map(|i| {
            NewJob::new(
                "mailgun.send",
                json!({"from": "News <news@mg.example.com>", "to": [format!("user{i}@example.com")],
                       "subject": "Our November news", "text": "Hello! Here is what happened this month.",
                       "html": "<p>Hello! Here is what happened this month.</p>",
                       "campaign_id": "cmp_bench", "recipient_id": format!("rcp_{i}"), "tags": ["bench"]}),
            )
        })
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    for chunk in batch.chunks(1000) {
        queue::enqueue_many(&mut conn, chunk).await.unwrap();
    }
    drop(conn);
    sqlx::query("checkpoint").execute(&pool).await.unwrap();

    let daemon = Daemon(
        command(&["run", "--no-http"])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar(
            "select count(*) from penguin.jobs where state = 'completed' and kind = 'mailgun.send'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if done as usize == jobs {
            break;
        }
        let dead: i64 = sqlx::query_scalar("select count(*) from penguin.dead_letters")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(dead, 0, "sends were dead-lettered");
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "drain took over 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(daemon);
    let (rate, p50, p99): (f64, f64, f64) = sqlx::query_as(
        "select count(*) / extract(epoch from max(finished_at) - min(attempted_at))::float8,
                1000 * extract(epoch from percentile_cont(0.5) within group (order by finished_at - attempted_at))::float8,
                1000 * extract(epoch from percentile_cont(0.99) within group (order by finished_at - attempted_at))::float8
           from penguin.jobs where state = 'completed' and kind = 'mailgun.send'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let sent: i64 = sqlx::query_scalar(
        "select count(*) from penguin.email_status where campaign_id = 'cmp_bench' and status = 'sent'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(sent as usize, jobs, "every send recorded as sent");
    // the provider call alone, as the daemon measured it (metrics of its last 2 s may be
    // unwritten at shutdown)
    let call_ms: f64 = sqlx::query_scalar(
        "select coalesce(sum(total_ms) / nullif(sum(calls), 0), 0)::float8
           from penguin.integration_metrics where provider = 'mailgun'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;

    let mut arrivals = sink.arrivals.lock().unwrap().clone();
    arrivals.sort();
    assert!(
        arrivals.len() >= jobs,
        "the sink saw {} calls",
        arrivals.len()
    );
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    let after_first_second = arrivals
        .iter()
        .filter(|t| **t >= first + Duration::from_secs(1))
        .count();
    let steady = after_first_second as f64
        / (last - first - Duration::from_secs(1))
            .as_secs_f64()
            .max(0.001);
    let mut max_in_1s = 0;
    let mut j = 0;
    for i in 0..arrivals.len() {
        while arrivals[i] - arrivals[j] >= Duration::from_secs(1) {
            j += 1;
        }
        max_in_1s = max_in_1s.max(i - j + 1);
    }
    RunResult {
        jobs_per_s: rate,
        call_mean_ms: call_ms,
        p50_ms: p50,
        p99_ms: p99,
        steady_calls_per_s: steady,
        max_calls_in_1s: max_in_1s,
    }
}

#[tokio::main]
async fn main() {
    let runs: usize = arg("--runs").unwrap_or(3);
    let jobs: usize = arg("--jobs").unwrap_or(40_000);
    let dir = PathBuf::from(format!(
        "/tmp/penguin-jobs-providers-bench-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "key-bench-0123456789").unwrap();
    let cluster = EmbeddedPostgres::start(&dir.join("postgres"))
        .await
        .expect("start PostgreSQL");

    let settings: [(&str, Duration, Option<&str>, usize); 3] = [
        (
            "sink_200ms",
            Duration::from_millis(200),
            None,
            (jobs / 4).max(1000),
        ),
        ("sink_instant", Duration::ZERO, None, jobs),
        (
            "rate_limited",
            Duration::ZERO,
            Some("[providers.mailgun.rate_limit]\nper_second = 2000\nburst = 100\n"),
            (jobs / 4).max(1000),
        ),
    ];
    let only: Option<String> = arg("--only");
    let mut results = serde_json::Map::new();
    for (name, delay, limit, n) in settings {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut rates = vec![];
        let mut p50s = vec![];
        let mut p99s = vec![];
        let mut calls = vec![];
        let mut steady = vec![];
        let mut windows = vec![];
        for run in 1..=runs {
            let r = run_once(&cluster, &dir, delay, limit, n).await;
            eprintln!(
                "{name}, run {run}: {n} jobs, {:.0} jobs/s, claim-to-outcome p50 {:.1} ms p99 {:.1} ms, \
                 provider call mean {:.1} ms, sink: steady {:.0} calls/s, at most {} in one second",
                r.jobs_per_s,
                r.p50_ms,
                r.p99_ms,
                r.call_mean_ms,
                r.steady_calls_per_s,
                r.max_calls_in_1s
            );
            rates.push(r.jobs_per_s);
            p50s.push(r.p50_ms);
            p99s.push(r.p99_ms);
            calls.push(r.call_mean_ms);
            steady.push(r.steady_calls_per_s);
            windows.push(r.max_calls_in_1s as f64);
        }
        results.insert(
            name.into(),
            json!({
                "jobs": n,
                "jobs_per_s": { "median": median(&rates), "runs": rates },
                "job_duration_p50_ms": { "median": median(&p50s), "runs": p50s },
                "job_duration_p99_ms": { "median": median(&p99s), "runs": p99s },
                "provider_call_mean_ms": { "median": median(&calls), "runs": calls },
                "sink_steady_calls_per_s": { "median": median(&steady), "runs": steady },
                "sink_max_calls_in_one_second": { "max": windows.iter().cloned().fold(0.0, f64::max), "runs": windows },
            }),
        );
    }
    results.insert("concurrency".into(), json!(CONCURRENCY));
    results.insert(
        "postgres".into(),
        json!("embedded, fsync=on, synchronous_commit=on, same machine"),
    );
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    let _ = cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
