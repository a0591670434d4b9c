//! Queue-core benchmark: `cargo bench --bench queue` (add `-- --runs 5` for more runs,
//! `--concurrency N` (default 64), `--batch N` and `--flush-batch N` (default: the
//! daemon's own defaults) for the pool, `--quick` to skip the big-table and churn parts).
//!
//! Starts its own durable PostgreSQL cluster (fsync and synchronous_commit on, read back
//! with SHOW and printed) under /tmp, drives the real `penguin-jobs run` binary as a
//! separate process and prints JSON with the median and every run of:
//! - batch enqueue rate (`enqueue_many`, 1,000 jobs per statement),
//! - end-to-end no-op drain of 200k jobs on an empty table, measured from the first
//!   claim, and measured from the daemon's start (jobs enqueued before it starts),
//! - against a local sink answering in 200 ms: claim-to-start and claim-to-outcome of
//!   2,000 `http.request` jobs, and enqueue-to-start of priority -100 jobs enqueued while
//!   that backlog drains,
//! - the same drain on a table already holding 1M completed rows and 200k rows scheduled
//!   an hour ahead (and the ratio to the empty-table rate),
//! - enqueue-to-start latency p50/p99 at a steady 500 jobs/s (single-row enqueues) on a
//!   fresh database with the daemon idle (the goal's figure), and the same right after the
//!   200k drain, in its database, before autovacuum has cleaned up after it (with each
//!   second's p50/p99 on stderr),
//! - the daemon's idle RSS and its peak RSS during the drain,
//! - the daemon idle after that work: its CPU and its database's commits per second,
//! - sustained churn (5 drains of 200k in a row over 1M completed rows) with the
//!   migration's per-table autovacuum settings and with PostgreSQL's defaults: the rate of
//!   each round, dead tuples left and the sizes of the table and its indexes.
//!
//! `--horizon` (never by default, nor in CI) adds the held-horizon mode (see
//! `horizon/mod.rs`): a repeatable-read transaction held open on a separate connection
//! while `--waves N` (5) waves of `--wave-jobs N` (200,000) no-op jobs are enqueued and
//! drained, with each wave's rate, dead and live tuples, table and index sizes and the held
//! xmin's age; then how long autovacuum takes, once it is released, to bring the dead
//! tuples under 10% of their peak, and the sizes then. Before the hold, one wave of the
//! same size drains with nothing held (`free_wave`, and `last_held_to_free_ratio`). A quick
//! run: `cargo bench --bench queue -- --runs 1 --quick --horizon --waves 2 --wave-jobs 20000`.
//! `--long` (also off by default, on its own or after `--horizon`) is the steady run under
//! a held horizon (see `horizon/long.rs`): a producer enqueues `--long-rate N` (5,000)
//! no-op jobs/s in statements of 100 for `--long-minutes N` (10) while the daemon works
//! them; it reports the enqueue-to-start lag p50/p90/p99/max of the jobs created in each
//! minute, the table's dead tuples and sizes at each minute, then the recovery after the
//! release. 12 to 17 minutes at the defaults:
//! `cargo bench --bench queue -- --runs 1 --quick --long`.
//!
//! `PENGUIN_JOBS_BENCH_BIN=PATH` drives another build's `penguin-jobs` (an A/B of two
//! versions on the same harness); the binary used is printed first.
//!
//! `--observed` (on its own; never by default) compares the no-op drain of 1M jobs with a
//! Prometheus scrape every second and the dashboard open in headless Chromium against the
//! same drain unwatched (see `observed/mod.rs`): `cargo bench --bench queue -- --observed
//! --runs 3` (`--observers metrics|dashboard` keeps one of the two).
//!
//! `--peer` (off by default; CI never benches) also drives graphile_worker-rs 0.14 in the same
//! run (see `peer/mod.rs`): it builds `tools/graphile-bench` once (`cargo build --release
//! --manifest-path tools/graphile-bench/Cargo.toml`, printed; a failed build ends the bench),
//! then in each run, in a fresh database on the same cluster, has it drain the same 200k
//! no-op jobs (the same `--concurrency`, a local queue of 500, batched completions) and
//! reports its rate from the worker's start (`peer_graphile_worker_rs`) and
//! `ratio_from_daemon_start_vs_peer`: our median drain from the daemon's start over the
//! peer's median. `cargo bench --bench queue -- --runs 1 --quick --peer`.
//!
//! `BENCH_DIAGNOSE=1` also samples what the cluster's backends wait on during each drain
//! (with the table's statistics) and logs the plan of every statement slower than 30 ms
//! (auto_explain); the cluster's log is kept in the temp directory. It costs the drain a
//! little, so its figures are not for quoting.
//!
//! Drain rates are computed from the database's own timestamps: jobs / (last finished_at
//! − first attempted_at), so process start-up and polling do not count.

mod common;
mod horizon;
mod observed;
mod peer;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use penguin_jobs::queue::{self, KindDefaults, NewJob};
use serde_json::json;
use sqlx::PgPool;

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");

/// The daemon the bench drives: this build's, or `PENGUIN_JOBS_BENCH_BIN` (another
/// build's binary, for an A/B of two versions over the same harness and cluster).
fn daemon_binary() -> String {
    std::env::var("PENGUIN_JOBS_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}
const DRAIN_JOBS: usize = 200_000;
const ENQUEUE_CHUNK: usize = 1_000;
const CHURN_ROUNDS: usize = 5;
/// How long a drain may take before the bench gives up on it.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// The daemon's config: defaults but for the pool (`--concurrency`, `--batch`) and the
/// built-in schedules (they would add their own jobs to the counts).
fn daemon_config(
    concurrency: usize,
    batch: Option<usize>,
    flush_batch: Option<usize>,
    admin: &str,
) -> String {
    let batch = batch.map(|b| format!("batch = {b}\n")).unwrap_or_default();
    let flush = flush_batch
        .map(|b| format!("flush_batch = {b}\n"))
        .unwrap_or_default();
    format!(
        "[egress]\nallow = [\"127.0.0.1\"]\n[database]\nmax_connections = 8\n[daemon]\npoll_interval = \"200ms\"\n{flush}\
         [queues.default]\nconcurrency = {concurrency}\n{batch}\
         [oauth]\nrefresh = false\n[api_keys]\nrotation = false\n[maintenance]\nprune = false\n{admin}"
    )
}

fn median(values: &mut [f64]) -> f64 {
    common::median(values)
}

/// How long the daemon is left alone before its idle cost is measured: longer than the 10 s
/// after which PostgreSQL flushes an idle backend's statistics, so the work before does
/// not land in the window.
const IDLE_SETTLE: Duration = Duration::from_secs(11);
/// How long the idle cost is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// The daemon idle after work (its queues empty, nobody calling): its CPU in percent of
/// one core, and the transactions its database commits per second (claims, heartbeats,
/// maintenance), over [`IDLE_WINDOW`] after [`IDLE_SETTLE`]. An idle pool that claims in
/// a loop shows here (it once made ~6,400 a second).
async fn idle_cost(pool: &PgPool, pid: u32) -> (f64, f64) {
    let commits = async || -> i64 {
        sqlx::query_scalar(
            "select xact_commit from pg_stat_database where datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    tokio::time::sleep(IDLE_SETTLE).await;
    let (ticks0, commits0) = (cpu_ticks(pid), commits().await);
    tokio::time::sleep(IDLE_WINDOW).await;
    let (ticks1, commits1) = (cpu_ticks(pid), commits().await);
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let window = IDLE_WINDOW.as_secs_f64();
    (
        (ticks1 - ticks0) as f64 / per_second / window * 100.0,
        (commits1 - commits0) as f64 / window,
    )
}

/// The CPU time (user + system, in clock ticks) process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // after the command's closing parenthesis: state is field 3, utime 14, stime 15
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Daemon {
    child: Child,
}

impl Daemon {
    fn start(workdir: &Path, url: &str) -> Self {
        let child = Command::new(daemon_binary())
            .arg("--config")
            .arg(workdir.join("jobs.toml"))
            .args(["run", "--no-http"])
            .env("DATABASE_URL", url)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_DAEMON_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the daemon");
        Self { child }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    /// A failed run must not leave the daemon behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn wait_idle(pool: &PgPool) {
    for _ in 0..300 {
        let idle: bool = sqlx::query_scalar("select exists (select 1 from penguin.idle_workers)")
            .fetch_one(pool)
            .await
            .unwrap();
        if idle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("daemon did not become idle");
}

/// Enqueues `n` no-op jobs (a multiple of ENQUEUE_CHUNK) due at `run_at`; returns the
/// rate and the first and last id enqueued.
async fn enqueue_batch(
    pool: &PgPool,
    n: usize,
    run_at: Option<chrono::DateTime<chrono::Utc>>,
) -> (f64, RangeInclusive<i64>) {
    let jobs: Vec<NewJob> = (0..ENQUEUE_CHUNK)
        .map(|i| NewJob {
            run_at,
            ..NewJob::new("noop", json!({ "n": i }))
        })
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    let start = Instant::now();
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for _ in 0..n / ENQUEUE_CHUNK {
        let ids = queue::enqueue_many(&mut conn, &jobs).await.unwrap();
        first = first.min(ids[0]);
        last = last.max(ids[ids.len() - 1]);
    }
    (n as f64 / start.elapsed().as_secs_f64(), first..=last)
}

/// Enqueues DRAIN_JOBS due in a few seconds, lets the running daemon drain them, and
/// returns (jobs/s, enqueue jobs/s).
async fn drain(pool: &PgPool, daemon: &Daemon) -> (f64, f64) {
    drain_jobs(
        pool,
        daemon,
        DRAIN_JOBS,
        Duration::from_secs(10),
        DRAIN_LIMIT,
    )
    .await
}

/// Enqueues `jobs` (a multiple of ENQUEUE_CHUNK) due after `head_start`, lets the running
/// daemon drain them (failing if that takes longer than `limit`), and returns (jobs/s,
/// enqueue jobs/s).
async fn drain_jobs(
    pool: &PgPool,
    daemon: &Daemon,
    jobs: usize,
    head_start: Duration,
    limit: Duration,
) -> (f64, f64) {
    let due = chrono::Utc::now() + chrono::Duration::from_std(head_start).unwrap();
    let (enqueue_rate, ids) = enqueue_batch(pool, jobs, Some(due)).await;
    // start both drains from the same place: no checkpoint of earlier bulk writes pending
    sqlx::query("checkpoint").execute(pool).await.unwrap();
    assert!(
        chrono::Utc::now() < due,
        "enqueue and checkpoint took longer than the head start"
    );
    let maintenance_before = table_maintenance(pool).await;
    let sampler = diagnose().then(|| tokio::spawn(sample_waits(pool.clone())));
    wait_completed(pool, daemon, ids, jobs, limit).await;
    if let Some(s) = sampler {
        s.abort();
    }
    let maintenance_after = table_maintenance(pool).await;
    let secs: f64 = sqlx::query_scalar(
        "select extract(epoch from max(finished_at) - min(attempted_at))::float8
           from penguin.jobs where state = 'completed' and run_at = $1",
    )
    .bind(due)
    .fetch_one(pool)
    .await
    .unwrap();
    let done: i64 = sqlx::query_scalar(
        "select count(*) from penguin.jobs where state = 'completed' and run_at = $1",
    )
    .bind(due)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(done as usize, jobs, "every job completed");
    // one claim statement stamps its rows with one attempted_at
    let (claims, mean_claim): (i64, f64) = sqlx::query_as(
        "select count(*), avg(n)::float8 from (select count(*) n from penguin.jobs
          where state = 'completed' and run_at = $1 group by attempted_at) t",
    )
    .bind(due)
    .fetch_one(pool)
    .await
    .unwrap();
    eprintln!(
        "  drain: {claims} claims of {mean_claim:.0} jobs on average in {secs:.2} s; \
         autovacuums, autoanalyzes of penguin.jobs meanwhile: {:?}",
        (
            maintenance_after.0 - maintenance_before.0,
            maintenance_after.1 - maintenance_before.1
        )
    );
    (jobs as f64 / secs, enqueue_rate)
}

/// Waits until the `jobs` jobs enqueued as `ids` are all completed (failing after
/// `limit`), reading through the primary key only: the last id's state every 250 ms, then
/// counts over the id range. Jobs of one run_at are claimed in id order, so the last id
/// finishes in the last batch. A probe of the claim or running index would, under a held
/// horizon, walk every entry earlier claims left there, as a claim's full pass does, and
/// cost the drain it measures a good share of a core.
async fn wait_completed(
    pool: &PgPool,
    daemon: &Daemon,
    ids: RangeInclusive<i64>,
    jobs: usize,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let mut last_done = false;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !last_done {
            last_done =
                sqlx::query_scalar("select state = 'completed' from penguin.jobs where id = $1")
                    .bind(ids.end())
                    .fetch_one(pool)
                    .await
                    .unwrap();
        }
        if last_done {
            let done: i64 = sqlx::query_scalar(
                "select count(*) from penguin.jobs
                  where id between $1 and $2 and state = 'completed'",
            )
            .bind(ids.start())
            .bind(ids.end())
            .fetch_one(pool)
            .await
            .unwrap();
            if done as usize == jobs {
                return;
            }
        }
        assert!(Instant::now() < deadline, "drain did not finish");
        assert!(rss_kb(daemon.child.id(), "VmRSS:") > 0, "daemon died");
    }
}

/// `BENCH_DIAGNOSE=1`: sample what the cluster's backends wait on during each drain.
fn diagnose() -> bool {
    std::env::var("BENCH_DIAGNOSE").is_ok_and(|v| v == "1")
}

/// Every 100 ms, counts the active backends by (wait event, query start); prints the
/// tally every 2 s. Only with `BENCH_DIAGNOSE=1`: it costs the drain a little.
async fn sample_waits(pool: PgPool) {
    let mut tally: std::collections::BTreeMap<String, u64> = Default::default();
    let mut last = Instant::now();
    loop {
        let rows: Vec<(String,)> = sqlx::query_as(
            "select coalesce(wait_event_type || ':' || wait_event, 'cpu') || ' ' || backend_type || ' ' ||
                    left(regexp_replace(query, '\\s+', ' ', 'g'), 60)
               from pg_stat_activity where state = 'active' and pid <> pg_backend_pid()",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        for (r,) in rows {
            *tally.entry(r).or_default() += 1;
        }
        if last.elapsed() > Duration::from_secs(2) {
            let mut top: Vec<_> = tally.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1));
            eprintln!("  waits: {:?}", &top[..top.len().min(6)]);
            let stats: Vec<(String,)> = sqlx::query_as(
                "select format('%s reltuples %s relpages %s', relname, reltuples, relpages) from pg_class
                  where relname in ('jobs', 'jobs_claim_idx')
                 union all
                 select format('last autoanalyze %s', last_autoanalyze) from pg_stat_user_tables where relname = 'jobs'
                 union all
                 select format('%s: mcv %s %s hist %s', attname, most_common_vals, most_common_freqs, histogram_bounds)
                   from pg_stats where tablename = 'jobs' and attname in ('state', 'run_at', 'queue', 'kind')",
            )
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
            eprintln!(
                "  stats: {:?}",
                stats
                    .iter()
                    .map(|s| s.0.chars().take(300).collect::<String>())
                    .collect::<Vec<_>>()
            );
            tally.clear();
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (autovacuum_count, autoanalyze_count) of `penguin.jobs`.
async fn table_maintenance(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "select autovacuum_count, autoanalyze_count from pg_stat_user_tables
          where relid = 'penguin.jobs'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Waits until no job is due or running. Two index probes every 250 ms: a `count(*)`
/// over the claim index every 100 ms cost the drain it measured a good share of a core.
async fn wait_drained(pool: &PgPool, daemon: &Daemon) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let busy: bool = sqlx::query_scalar(
            // the claim index holds every live job, running ones included
            "select exists (select 1 from penguin.jobs
                             where queue = 'default' and finished_at is null
                               and run_at <= now() + interval '1 minute')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if !busy {
            return;
        }
        assert!(Instant::now() < deadline, "drain did not finish");
        assert!(rss_kb(daemon.child.id(), "VmRSS:") > 0, "daemon died");
    }
}

/// Enqueue-to-start at 500 jobs/s (ms): from the enqueuing transaction's start
/// (`created_at`, so the enqueue's own commit counts) and from the moment the enqueue call
/// returned (the job committed); and the enqueue calls' own duration.
struct Latency {
    p50: f64,
    p99: f64,
    from_return_p50: f64,
    from_return_p99: f64,
    call_p99: f64,
}

/// The value at `q` (0..1) of `sorted`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// Enqueue-to-start of 5,000 jobs enqueued one per statement at 500/s; prints each
/// second's p50/p99 (from the transaction's start and from the call's return) and the
/// enqueue calls' p99, labelled `label`: a second where the calls themselves were slow is
/// one where commits were slow (a checkpoint's writes, autovacuum), not the daemon.
async fn latency(pool: &PgPool, daemon: &Daemon, label: &str) -> Latency {
    // the producer's connections open (and load penguin.enqueue) before the clock runs:
    // cold, the first second's calls took 100-250 ms and counted as the daemon's
    let warm: Vec<_> = (0..64)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                queue::enqueue(&pool, &NewJob::new("noop", json!({ "warm-up": i })))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for w in warm {
        w.await.unwrap();
    }
    wait_drained(pool, daemon).await;
    let marker = rand::random::<u32>() as i64;
    let every = Duration::from_micros(2_000);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = 5_000;
    let mut enqueues = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let pool = pool.clone();
        enqueues.push(tokio::spawn(async move {
            let called = Instant::now();
            let id = queue::enqueue(
                &pool,
                &NewJob::new("noop", json!({ "latency": marker, "i": i })),
            )
            .await
            .unwrap();
            (id, called.elapsed(), chrono::Utc::now())
        }));
    }
    let mut returned = std::collections::HashMap::with_capacity(total);
    for e in enqueues {
        let (id, took, at) = e.await.unwrap();
        returned.insert(id, (took, at));
    }
    wait_drained(pool, daemon).await;
    type Row = (
        i64,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select id, created_at, attempted_at from penguin.jobs
          where payload @> jsonb_build_object('latency', $1::bigint) order by created_at",
    )
    .bind(marker)
    .fetch_all(pool)
    .await
    .unwrap();
    let ms = |d: chrono::TimeDelta| d.num_microseconds().unwrap() as f64 / 1000.0;
    /// One job's figures (ms), and the second since the first enqueue it was enqueued in.
    struct Sample {
        second: i64,
        from_start: f64,
        from_return: f64,
        call: f64,
    }
    let samples: Vec<Sample> = rows
        .iter()
        .map(|(id, created, attempted)| {
            let (took, at) = returned[id];
            Sample {
                second: (*created - rows[0].1).num_seconds(),
                from_start: ms(*attempted - *created),
                from_return: ms(*attempted - at),
                call: took.as_secs_f64() * 1000.0,
            }
        })
        .collect();
    let column = |f: fn(&Sample) -> f64, second: Option<i64>| {
        sorted(
            samples
                .iter()
                .filter(|x| second.is_none_or(|s| x.second == s))
                .map(f)
                .collect(),
        )
    };
    let last_second = samples.last().map_or(0, |f| f.second);
    let seconds: Vec<String> = (0..=last_second)
        .map(|s| {
            let start = column(|x| x.from_start, Some(s));
            let ret = column(|x| x.from_return, Some(s));
            let call = column(|x| x.call, Some(s));
            if start.is_empty() {
                return "-".into();
            }
            format!(
                "{:.1}/{:.0} ({:.1}/{:.0}; call {:.0})",
                quantile(&start, 0.5),
                quantile(&start, 0.99),
                quantile(&ret, 0.5),
                quantile(&ret, 0.99),
                quantile(&call, 0.99)
            )
        })
        .collect();
    let (start, ret, call) = (
        column(|x| x.from_start, None),
        column(|x| x.from_return, None),
        column(|x| x.call, None),
    );
    let figures = Latency {
        p50: quantile(&start, 0.5),
        p99: quantile(&start, 0.99),
        from_return_p50: quantile(&ret, 0.5),
        from_return_p99: quantile(&ret, 0.99),
        call_p99: quantile(&call, 0.99),
    };
    eprintln!(
        "  500 jobs/s {label}: p50 {:.2} ms, p99 {:.2} ms from the transaction's start; from the call's return \
         p50 {:.2} ms, p99 {:.2} ms; enqueue calls p99 {:.1} ms. Each second, p50/p99 from start (from return; \
         call p99): {}",
        figures.p50,
        figures.p99,
        figures.from_return_p50,
        figures.from_return_p99,
        figures.call_p99,
        seconds.join(" ")
    );
    figures
}

/// Enqueues DRAIN_JOBS due now with no daemon running, then starts one and returns the
/// jobs/s from the daemon's spawn to the last outcome written (start-up, migration check
/// and the first claims included).
async fn drain_from_start(pool: &PgPool, dir: &Path, url: &str) -> f64 {
    enqueue_batch(pool, DRAIN_JOBS, None).await;
    sqlx::query("checkpoint").execute(pool).await.unwrap();
    let spawned: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(pool)
        .await
        .unwrap();
    let daemon = Daemon::start(dir, url);
    wait_drained(pool, &daemon).await;
    let secs: f64 = sqlx::query_scalar(
        "select extract(epoch from max(finished_at) - $1)::float8 from penguin.jobs where state = 'completed'",
    )
    .bind(spawned)
    .fetch_one(pool)
    .await
    .unwrap();
    daemon.stop();
    DRAIN_JOBS as f64 / secs
}

/// A local HTTP server answering every request after 200 ms.
async fn slow_sink() -> String {
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        "ok"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Figures of jobs calling a 200 ms sink (ms): claim-to-start p50/p99, claim-to-outcome
/// p50, and enqueue-to-start p50 of priority -100 jobs enqueued while the backlog drains.
struct SinkFigures {
    claim_to_start_p50: f64,
    claim_to_start_p99: f64,
    claim_to_outcome_p50: f64,
    urgent_enqueue_to_start_p50: f64,
}

async fn sink_latency(pool: &PgPool, daemon: &Daemon, sink: &str) -> SinkFigures {
    let jobs: Vec<NewJob> = (0..2000)
        .map(|i| {
            NewJob::new(
                "http.request",
                json!({"method": "POST", "url": format!("{sink}/{i}")}),
            )
        })
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    // once the backlog flows, urgent jobs arrive one by one
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..20 {
        queue::enqueue(
            &mut *conn,
            &NewJob {
                priority: Some(-100),
                ..NewJob::new(
                    "http.request",
                    json!({"method": "POST", "url": format!("{sink}/urgent/{i}")}),
                )
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(conn);
    wait_drained(pool, daemon).await;
    let (start_p50, start_p99, outcome_p50): (f64, f64, f64) = sqlx::query_as(
        "select percentile_cont(0.5) within group (order by s), percentile_cont(0.99) within group (order by s),
                percentile_cont(0.5) within group (order by o)
           from (select extract(epoch from started_at - attempted_at) * 1000 as s,
                        extract(epoch from finished_at - attempted_at) * 1000 as o
                   from penguin.jobs where kind = 'http.request' and priority = 0) t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let urgent: f64 = sqlx::query_scalar(
        "select percentile_cont(0.5) within group (order by extract(epoch from started_at - created_at) * 1000)
           from penguin.jobs where kind = 'http.request' and priority = -100",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    SinkFigures {
        claim_to_start_p50: start_p50,
        claim_to_start_p99: start_p99,
        claim_to_outcome_p50: outcome_p50,
        urgent_enqueue_to_start_p50: urgent,
    }
}

/// The autovacuum settings the migration puts on `penguin.jobs`.
const QUEUE_AUTOVACUUM: &str = "autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold, \
     autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold, \
     autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay";

async fn load_completed(pool: &PgPool, rows: i64) {
    sqlx::query(
        "insert into penguin.jobs (queue, kind, payload, state, max_attempts, attempt, run_at, attempted_at, finished_at)
         select 'default', 'noop', jsonb_build_object('n', g), 'completed', 25, 1, now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour'
           from generate_series(1, $1) g",
    )
    .bind(rows)
    .execute(pool)
    .await
    .unwrap();
}

/// Sustained churn on a table holding 1M completed rows: CHURN_ROUNDS drains of 200k in a
/// row, with the migration's autovacuum settings or with PostgreSQL's defaults. Returns
/// the rate of each round and the table's dead tuples and sizes at the end.
async fn churn(
    cluster: &EmbeddedPostgres,
    dir: &Path,
    postgres_defaults: bool,
) -> serde_json::Value {
    let (pool, url) = fresh_database(cluster, "bench_churn").await;
    load_completed(&pool, 1_000_000).await;
    if postgres_defaults {
        sqlx::query(&format!(
            "alter table penguin.jobs reset ({QUEUE_AUTOVACUUM})"
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("vacuum analyze penguin.jobs")
        .execute(&pool)
        .await
        .unwrap();
    let daemon = Daemon::start(dir, &url);
    wait_idle(&pool).await;
    let mut rates = Vec::new();
    for _ in 0..CHURN_ROUNDS {
        rates.push(drain(&pool, &daemon).await.0.round());
    }
    daemon.stop();
    // let the statistics collector catch up before reading it
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (dead, vacuums, heap_mb, claim_idx_mb, pkey_mb): (i64, i64, f64, f64, f64) =
        sqlx::query_as(
            "select n_dead_tup, autovacuum_count,
                pg_relation_size('penguin.jobs') / 1048576.0::float8,
                pg_relation_size('penguin.jobs_claim_idx') / 1048576.0::float8,
                pg_relation_size('penguin.jobs_pkey') / 1048576.0::float8
           from pg_stat_user_tables where relid = 'penguin.jobs'::regclass",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    json!({
        "round_rates": rates, "dead_tuples_after": dead, "autovacuums": vacuums,
        "heap_mb": heap_mb.round(), "claim_index_mb": (claim_idx_mb * 10.0).round() / 10.0,
        "pkey_mb": pkey_mb.round(),
    })
}

async fn fresh_database(cluster: &EmbeddedPostgres, name: &str) -> (PgPool, String) {
    let (pool, url) = common::fresh_database(cluster, name, 32).await;
    queue::migrate(&pool).await.unwrap();
    queue::sync_kinds(
        &pool,
        &[
            KindDefaults {
                kind: "noop".into(),
                queue: "default".into(),
                max_attempts: 25,
                priority: 0,
            },
            KindDefaults {
                kind: "http.request".into(),
                queue: "default".into(),
                max_attempts: 25,
                priority: 0,
            },
        ],
    )
    .await
    .unwrap();
    (pool, url)
}

#[tokio::main]
async fn main() {
    let runs: usize = common::arg("--runs").unwrap_or(3);
    eprintln!("daemon binary: {}", daemon_binary());
    let concurrency: usize = common::arg("--concurrency").unwrap_or(64);
    let batch: Option<usize> = common::arg("--batch");
    let flush_batch: Option<usize> = common::arg("--flush-batch");
    let quick = std::env::args().any(|a| a == "--quick");
    let horizon = horizon::HorizonOptions::from_args(concurrency, batch);
    let long = horizon::long::LongOptions::from_args(concurrency, batch);
    let peer = peer::Peer::from_args();
    let dir = PathBuf::from(format!("/tmp/penguin-jobs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // the admin listener as users get it, on a free port, with a token for the dashboard
    let admin = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let token = format!("bench-admin-token-{:032x}", rand::random::<u128>());
        std::fs::write(dir.join("admin.token"), &token).unwrap();
        observed::Admin {
            base: format!("http://127.0.0.1:{port}"),
            token,
        }
    };
    // the other modes keep the default listener (127.0.0.1:8081, passed over when taken)
    let observing = std::env::args().any(|a| a == "--observed");
    let Some(observers) = observed::Observers::from_args() else {
        eprintln!("--observers takes metrics, dashboard or both");
        std::process::exit(2);
    };
    let admin_toml = if observing {
        format!(
            "[admin]\nlisten = \"{}\"\ntokens = [\"file:{}\"]\n",
            admin.base.trim_start_matches("http://"),
            dir.join("admin.token").display()
        )
    } else {
        String::new()
    };
    let config = daemon_config(concurrency, batch, flush_batch, &admin_toml);
    std::fs::write(dir.join("jobs.toml"), &config).unwrap();
    let cluster = EmbeddedPostgres::start(&dir.join("postgres"))
        .await
        .expect("start PostgreSQL");
    let settings = common::server_settings(&cluster).await;
    if diagnose() {
        explain_slow_statements(&cluster).await;
    }
    if observing {
        let report = json!({
            "postgres_settings": settings,
            "daemon_config": config,
            "observed": observed::run(&cluster, &dir, &admin, runs, observers).await,
        });
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        let _ = cluster.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let sink = slow_sink().await;

    let (mut empty_rates, mut loaded_rates, mut enqueue_rates) = (vec![], vec![], vec![]);
    let (mut from_start_rates, mut peer_reports) = (vec![], vec![]);
    let (mut p50s, mut p99s, mut idle_rss, mut peak_rss) = (vec![], vec![], vec![], vec![]);
    let (mut idle_cpu, mut idle_commits) = (vec![], vec![]);
    let (mut after_drain_p50s, mut after_drain_p99s) = (vec![], vec![]);
    let (mut from_return_p50s, mut from_return_p99s, mut call_p99s) = (vec![], vec![], vec![]);
    let (mut c2s_p50, mut c2s_p99, mut c2o_p50, mut urgent_p50) = (vec![], vec![], vec![], vec![]);
    let (mut churn_queue, mut churn_defaults) = (vec![], vec![]);
    for run in 0..runs {
        // empty table
        let (pool, url) = fresh_database(&cluster, "bench_empty").await;
        let daemon = Daemon::start(&dir, &url);
        wait_idle(&pool).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle_rss.push(rss_kb(daemon.child.id(), "VmRSS:") as f64 / 1024.0);
        let (rate, enq) = drain(&pool, &daemon).await;
        peak_rss.push(rss_kb(daemon.child.id(), "VmHWM:") as f64 / 1024.0);
        empty_rates.push(rate);
        enqueue_rates.push(enq);
        let after_drain = latency(&pool, &daemon, "right after the drain").await;
        after_drain_p50s.push(after_drain.p50);
        after_drain_p99s.push(after_drain.p99);
        let sink_figures = sink_latency(&pool, &daemon, &sink).await;
        let (cpu, commits) = idle_cost(&pool, daemon.child.id()).await;
        eprintln!(
            "  idle after work: daemon {cpu:.1}% of a core, {commits:.1} commits/s in its database"
        );
        idle_cpu.push(cpu);
        idle_commits.push(commits);
        c2s_p50.push(sink_figures.claim_to_start_p50);
        c2s_p99.push(sink_figures.claim_to_start_p99);
        c2o_p50.push(sink_figures.claim_to_outcome_p50);
        urgent_p50.push(sink_figures.urgent_enqueue_to_start_p50);
        daemon.stop();
        pool.close().await;

        // 500 jobs/s on a fresh database, the daemon idle, no autovacuum running
        let (pool, url) = fresh_database(&cluster, "bench_latency").await;
        common::wait_for_autovacuum(&pool).await;
        let daemon = Daemon::start(&dir, &url);
        wait_idle(&pool).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let steady = latency(&pool, &daemon, "steady").await;
        p50s.push(steady.p50);
        p99s.push(steady.p99);
        from_return_p50s.push(steady.from_return_p50);
        from_return_p99s.push(steady.from_return_p99);
        call_p99s.push(steady.call_p99);
        daemon.stop();
        pool.close().await;

        // from the daemon's start; ours and the peer's each on a quiet cluster (see
        // `quiet_cluster`)
        let (pool, url) = fresh_database(&cluster, "bench_from_start").await;
        common::quiet_cluster(&cluster).await;
        from_start_rates.push(drain_from_start(&pool, &dir, &url).await);
        pool.close().await;
        if let Some(peer) = &peer {
            common::quiet_cluster(&cluster).await;
            peer_reports.push(peer.drain(&cluster, DRAIN_JOBS, concurrency).await);
        }

        if !quick {
            // 1M completed + 200k scheduled an hour ahead
            let (pool, url) = fresh_database(&cluster, "bench_loaded").await;
            load_completed(&pool, 1_000_000).await;
            sqlx::query(
                "insert into penguin.jobs (queue, kind, payload, state, max_attempts, run_at)
                 select 'default', 'noop', jsonb_build_object('n', g), 'scheduled', 25, now() + interval '1 hour'
                   from generate_series(1, 200000) g",
            )
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query("vacuum analyze penguin.jobs")
                .execute(&pool)
                .await
                .unwrap();
            let daemon = Daemon::start(&dir, &url);
            wait_idle(&pool).await;
            let (rate, _) = drain(&pool, &daemon).await;
            loaded_rates.push(rate);
            daemon.stop();
            pool.close().await;

            churn_queue.push(churn(&cluster, &dir, false).await);
            churn_defaults.push(churn(&cluster, &dir, true).await);
        }
        eprintln!(
            "run {}: drain {:.0}/s, from start {:.0}/s, enqueue {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, \
             200 ms sink: claim-to-start p50 {:.2} ms p99 {:.2} ms, claim-to-outcome p50 {:.0} ms, urgent start p50 {:.1} ms, \
             idle {:.1} MB, peak {:.1} MB",
            run + 1,
            empty_rates[run],
            from_start_rates[run],
            enqueue_rates[run],
            p50s[run],
            p99s[run],
            c2s_p50[run],
            c2s_p99[run],
            c2o_p50[run],
            urgent_p50[run],
            idle_rss[run],
            peak_rss[run]
        );
    }
    let m = |v: &Vec<f64>| median(&mut v.clone());
    let mut report = json!({
        "runs": runs,
        "drain_jobs": DRAIN_JOBS,
        "postgres": "embedded, same machine",
        "postgres_settings": settings,
        "daemon_config": config,
        "noop_drain_jobs_per_s": { "median": m(&empty_rates), "runs": empty_rates },
        "noop_drain_from_daemon_start_jobs_per_s": { "median": m(&from_start_rates), "runs": from_start_rates },
        "batch_enqueue_jobs_per_s": { "median": m(&enqueue_rates), "runs": enqueue_rates },
        "enqueue_to_start_ms_at_500_per_s": {
            "note": "fresh database, daemon idle, no autovacuum running cluster-wide when it starts; \
                     from created_at (the enqueuing transaction's start: its own commit counts)",
            "p50_median": m(&p50s), "p99_median": m(&p99s),
            "p50_runs": p50s, "p99_runs": p99s,
            "from_the_enqueue_call_returning": {
                "p50_median": m(&from_return_p50s), "p99_median": m(&from_return_p99s),
                "p50_runs": from_return_p50s, "p99_runs": from_return_p99s,
            },
            "enqueue_call_p99_ms": { "median": m(&call_p99s), "runs": call_p99s },
        },
        "enqueue_to_start_ms_at_500_per_s_right_after_a_200k_drain": {
            "note": "same database and daemon as the drain, before autovacuum has visited it",
            "p50_median": m(&after_drain_p50s), "p99_median": m(&after_drain_p99s),
            "p50_runs": after_drain_p50s, "p99_runs": after_drain_p99s
        },
        "sink_200ms_2000_jobs": {
            "claim_to_start_ms_p50_median": m(&c2s_p50), "claim_to_start_ms_p99_median": m(&c2s_p99),
            "claim_to_outcome_ms_p50_median": m(&c2o_p50),
            "priority_minus_100_enqueue_to_start_ms_p50_median": m(&urgent_p50),
            "claim_to_start_p50_runs": c2s_p50, "claim_to_outcome_p50_runs": c2o_p50, "urgent_runs": urgent_p50,
        },
        "daemon_idle_rss_mb": { "median": m(&idle_rss), "runs": idle_rss },
        "idle_after_work": {
            "note": "queues empty after the drain and the sink phase, 11 s settled, 10 s measured",
            "daemon_cpu_percent_of_a_core": { "median": m(&idle_cpu), "runs": idle_cpu },
            "commits_per_s": { "median": m(&idle_commits), "runs": idle_commits },
        },
        "daemon_peak_rss_mb": { "median": m(&peak_rss), "runs": peak_rss },
    });
    if !quick {
        report["noop_drain_over_1m_completed_200k_future_jobs_per_s"] =
            json!({ "median": m(&loaded_rates), "runs": loaded_rates });
        report["loaded_vs_empty_ratio"] = json!(m(&loaded_rates) / m(&empty_rates));
        report["churn_5x200k_over_1m_completed"] = json!({
            "note": format!("autovacuum_naptime = {} on the bench cluster (read back)", settings["autovacuum_naptime"]),
            "queue_autovacuum_settings": churn_queue,
            "postgres_default_autovacuum": churn_defaults,
        });
    }
    if peer.is_some() {
        peer::add_to_report(&mut report, &peer_reports, m(&from_start_rates));
    }
    if let Some(options) = &horizon {
        report["horizon"] = horizon::run(&cluster, &dir, options).await;
    }
    if let Some(options) = &long {
        report["long"] = horizon::long::run(&cluster, &dir, options).await;
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = cluster.stop().await;
    if diagnose() {
        let kept = std::env::temp_dir().join("penguin-jobs-bench-postgres.log");
        let _ = std::fs::copy(dir.join("postgres").join("postgres.log"), &kept);
        eprintln!(
            "the cluster's log (slow plans included): {}",
            kept.display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `BENCH_DIAGNOSE=1`: every statement slower than 30 ms logs its plan (auto_explain) in
/// the cluster's log, which is kept after the run.
async fn explain_slow_statements(cluster: &EmbeddedPostgres) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    for statement in [
        "load 'auto_explain'",
        "alter system set session_preload_libraries = 'auto_explain'",
        "alter system set auto_explain.log_min_duration = '30ms'",
        "alter system set auto_explain.log_analyze = on",
        "select pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    pool.close().await;
}
