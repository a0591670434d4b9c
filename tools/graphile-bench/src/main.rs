//! graphile-bench: the peer in `cargo bench --bench queue -- --peer`. It drains no-op jobs
//! with graphile_worker-rs on a database the bench hands it, the way the bench drains ours
//! from the daemon's start, and prints one JSON line.
//!
//! ```text
//! graphile-bench --url <postgres url> [--jobs N (200000)] [--concurrency N (64)] [--local-queue N (500)]
//! ```
//!
//! 1. A first worker's `init` installs graphile_worker's schema (`graphile_worker`) and its
//!    utils enqueue the jobs through `add_jobs` (the `graphile_worker.add_jobs` SQL function),
//!    1,000 per statement; then a `checkpoint`, as the bench does before our drain.
//! 2. The clock starts; a second worker is built (`WorkerOptions::init`: connect, migration
//!    check, task registration) and run with `--concurrency`, a local queue of
//!    `--local-queue` jobs and batched completions (`complete_job_batch_delay`, 5 ms, the
//!    value of graphile_worker-rs's own 200k-job benchmark).
//! 3. The no-op handler counts its runs; once it has run every job, the table is probed until
//!    it is empty (graphile deletes a job when it completes): the drain ends at the start of
//!    the first probe that finds no row, i.e. once the last completion batch has committed.
//!
//! It never panics on bad arguments: it says what is wrong and exits 2; any other failure
//! exits 1 with the error.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, LocalQueueConfig, TaskHandler, WorkerContext, WorkerOptions,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

/// The `graphile_worker` version Cargo.toml pins (`=`), printed in the report.
const GRAPHILE_WORKER_VERSION: &str = "0.14.1";
/// Jobs per `add_jobs` call: the batch size of the bench's own enqueue.
const ENQUEUE_CHUNK: usize = 1_000;
/// How long completions gather before one `delete ... where id = any($1)` writes them.
const COMPLETE_BATCH_DELAY: Duration = Duration::from_millis(5);
/// The worker's pool: graphile_worker's default for `database_url`.
const MAX_PG_CONN: u32 = 20;
/// How long the drain may take before the tool gives up (the bench's own limit).
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// How often the jobs table is probed once the handler has run every job.
const PROBE_EVERY: Duration = Duration::from_millis(5);

const USAGE: &str = "usage: graphile-bench --url <postgres url> [--jobs N (200000)] \
                     [--concurrency N (64)] [--local-queue N (500)]";

#[derive(Debug)]
struct Options {
    url: String,
    jobs: usize,
    concurrency: usize,
    local_queue: usize,
}

impl Options {
    /// The options from the command line (without the program name), or what is wrong.
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            url: String::new(),
            jobs: 200_000,
            concurrency: 64,
            local_queue: 500,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => options.url = value()?,
                "--jobs" => options.jobs = positive(&flag, &value()?)?,
                "--concurrency" => options.concurrency = positive(&flag, &value()?)?,
                "--local-queue" => options.local_queue = positive(&flag, &value()?)?,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        if options.url.is_empty() {
            return Err("--url is required".into());
        }
        if options.local_queue > i32::MAX as usize {
            return Err(format!("--local-queue must be at most {}", i32::MAX));
        }
        Ok(options)
    }
}

fn positive(flag: &str, value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} must be a whole number > 0, not {value:?}")),
    }
}

/// The no-op job; `n` only tells the jobs apart, as in the bench's own payloads.
#[derive(Clone, Deserialize, Serialize)]
struct Noop {
    n: usize,
}

/// Runs of the handler, shared with it as a worker extension; `all` fires at the `target`th.
#[derive(Clone, Debug)]
struct Runs {
    count: Arc<AtomicUsize>,
    target: usize,
    all: Arc<Notify>,
}

impl TaskHandler for Noop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(self, ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        if let Some(runs) = ctx.get_ext::<Runs>()
            && runs.count.fetch_add(1, Ordering::Relaxed) + 1 == runs.target
        {
            runs.all.notify_one();
        }
    }
}

/// Turns an error into a message naming what failed.
fn at<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Installs the schema with a first worker and enqueues the jobs; returns jobs/s.
async fn install_and_enqueue(options: &Options) -> Result<f64, String> {
    let installer = WorkerOptions::default()
        .database_url(&options.url)
        .max_pg_conn(2)
        .define_job::<Noop>()
        .init()
        .await
        .map_err(at("install graphile_worker's schema"))?;
    let utils = installer.create_utils();
    let spec = JobSpec::default();
    let started = Instant::now();
    for first in (0..options.jobs).step_by(ENQUEUE_CHUNK) {
        let chunk: Vec<(Noop, &JobSpec)> = (first..options.jobs.min(first + ENQUEUE_CHUNK))
            .map(|n| (Noop { n }, &spec))
            .collect();
        utils.add_jobs(&chunk).await.map_err(at("add_jobs"))?;
    }
    let rate = options.jobs as f64 / started.elapsed().as_secs_f64();
    installer.request_shutdown();
    Ok(rate)
}

/// Waits for the handler to have run every job, then for the table to be empty; returns
/// the time from `started` to the start of the first probe that found it empty.
async fn wait_drained(pool: &PgPool, runs: &Runs, started: Instant) -> Result<Duration, String> {
    let deadline = started + DRAIN_LIMIT;
    tokio::time::timeout_at(deadline.into(), runs.all.notified())
        .await
        .map_err(|_| {
            let ran = runs.count.load(Ordering::Relaxed);
            format!(
                "only {ran} of {} jobs ran within {DRAIN_LIMIT:?}",
                runs.target
            )
        })?;
    loop {
        let probed_at = started.elapsed();
        let left: bool =
            sqlx::query_scalar("select exists (select 1 from graphile_worker._private_jobs)")
                .fetch_one(pool)
                .await
                .map_err(at("probe graphile_worker._private_jobs"))?;
        if !left {
            return Ok(probed_at);
        }
        if Instant::now() > deadline {
            return Err("every job ran, but their completions were not all written".into());
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// The measured worker: the options the report names.
fn measured_worker(options: &Options, runs: &Runs) -> WorkerOptions {
    WorkerOptions::default()
        .database_url(&options.url)
        .max_pg_conn(MAX_PG_CONN)
        .concurrency(options.concurrency)
        .define_job::<Noop>()
        .add_extension(runs.clone())
        .local_queue(LocalQueueConfig::default().with_size(options.local_queue))
        .complete_job_batch_delay(COMPLETE_BATCH_DELAY)
}

async fn run(options: &Options) -> Result<serde_json::Value, String> {
    let probe = PgPoolOptions::new()
        .max_connections(1)
        .connect(&options.url)
        .await
        .map_err(at("connect"))?;
    let enqueue_rate = install_and_enqueue(options).await?;
    sqlx::query("checkpoint")
        .execute(&probe)
        .await
        .map_err(at("checkpoint"))?;
    let runs = Runs {
        count: Arc::new(AtomicUsize::new(0)),
        target: options.jobs,
        all: Arc::new(Notify::new()),
    };
    let started = Instant::now();
    let worker = measured_worker(options, &runs)
        .init()
        .await
        .map_err(at("start the worker"))?;
    let worker = Arc::new(worker);
    let running = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });
    let drained = wait_drained(&probe, &runs, started).await;
    worker.request_shutdown();
    let stopped = running.await.map_err(at("the worker's task"))?;
    let secs = drained?.as_secs_f64();
    stopped.map_err(at("the worker"))?;
    let ran = runs.count.load(Ordering::Relaxed);
    if ran != options.jobs {
        return Err(format!(
            "the handler ran {ran} times for {} jobs",
            options.jobs
        ));
    }
    Ok(json!({
        "peer": "graphile_worker-rs",
        "version": GRAPHILE_WORKER_VERSION,
        "jobs": options.jobs,
        "concurrency": options.concurrency,
        "local_queue": options.local_queue,
        "batched_completions": format!("complete_job_batch_delay = {COMPLETE_BATCH_DELAY:?}"),
        "pool_connections": MAX_PG_CONN,
        "enqueue_jobs_per_s": enqueue_rate.round(),
        "drain_from_worker_start_jobs_per_s": (options.jobs as f64 / secs).round(),
        "drain_seconds": (secs * 1000.0).round() / 1000.0,
    }))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match Options::parse(args.into_iter()) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("graphile-bench: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&options).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("graphile-bench: {message}");
            ExitCode::FAILURE
        }
    }
}
