//! Steady run under a held horizon (`--long`; `--long-minutes N`, default 10, and
//! `--long-rate N` jobs/s, default 5,000): issue 16's "steady 10-minute run (producer
//! enqueuing 5,000 jobs/s in batches, one daemon working them) keeps enqueue-to-start lag
//! p99 under 1 s from first minute to last, with the horizon held".
//!
//! In a fresh database the daemon starts and goes idle, then the held transaction opens
//! (see the parent module), then a producer enqueues no-op jobs due at once, BATCH per
//! `enqueue_many` statement on one connection, on a fixed schedule (a tokio interval that
//! bursts to catch up after a late statement) until the minutes are up, whatever it
//! managed to enqueue by then (the rate it achieved is reported). At each minute boundary
//! a task on a connection of its own reads the table's statistics and sizes, and nothing
//! else: a `count(*)` over `penguin.jobs` under a held horizon walks every dead version,
//! and would cost the daemon the CPU it is measured on.
//!
//! Nothing reads `penguin.jobs` while the producer runs. When it stops, the mode waits for
//! the backlog through the primary key (`wait_completed`), stops the daemon, and computes
//! from the table, for the jobs created in each minute, the enqueue-to-start lag
//! (`attempted_at - created_at`: no-op jobs due at once start when they are claimed)
//! p50/p90/p99/max, with the jobs created and completed in each minute. Then it releases
//! the held transaction, times the recovery as the waves do (`await_recovery`), and reads
//! the sizes once more a minute later.
//!
//! It takes the minutes of production, the backlog (seconds while the daemon keeps up),
//! the recovery (45 s on a 2-core machine after 10 minutes, given up after 5 minutes) and
//! one more minute: 12 to 17 minutes at the defaults, plus the quick part's minute or two.

use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use penguin_jobs::embedded_pg::EmbeddedPostgres;
use penguin_jobs::queue::{self, NewJob};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::time::{Instant, MissedTickBehavior};

use super::{HeldTransaction, TableState, autovacuum_settings, await_recovery, xmin_age};
use crate::{Daemon, fresh_database, wait_completed, wait_idle};

/// Jobs per `enqueue_many` statement.
const BATCH: usize = 100;
const MINUTE: Duration = Duration::from_secs(60);
/// How long the backlog left when the producer stops may take to drain.
const BACKLOG_LIMIT: Duration = Duration::from_secs(3600);
/// How long after the recovery (or giving up on it) the sizes are read once more.
const SETTLE: Duration = Duration::from_secs(60);
/// Issue 16's goal for every minute's p99.
const GOAL_P99_MS: f64 = 1000.0;

/// Per minute of production (minute 0 starts with the first statement), by `created_at`:
/// jobs created, their lag percentiles (ms) and the slowest; and by `finished_at`: jobs
/// completed. A minute after production appears when the backlog finished in it.
const PER_MINUTE_SQL: &str = "
    with j as (
        select floor(extract(epoch from created_at - $3) / 60)::int as created_minute,
               floor(extract(epoch from finished_at - $3) / 60)::int as finished_minute,
               extract(epoch from attempted_at - created_at)::float8 * 1000 as lag_ms
          from penguin.jobs where id between $1 and $2),
    by_created as (
        select created_minute as minute, count(*) as created,
               percentile_cont(array[0.5, 0.9, 0.99]) within group (order by lag_ms) as lags,
               max(lag_ms) as max_ms
          from j group by 1),
    by_finished as (
        select finished_minute as minute, count(*) as completed
          from j where finished_minute is not null group by 1)
    select minute, coalesce(created, 0), lags, max_ms, coalesce(completed, 0)
      from by_created full join by_finished using (minute) order by minute";

/// The longest pauses between consecutive claims and between consecutive enqueues of the
/// run's jobs (by `attempted_at` and `created_at`; $1, $2 the ids): a minute whose p99 is
/// seconds says whether the daemon stopped claiming while the producer went on (a pause
/// in claims only) or everything waited (the database, the disk: pauses in both).
const PAUSES_SQL: &str = "
    with t as (select distinct attempted_at as claimed, null::timestamptz as created
                 from penguin.jobs where id between $1 and $2
               union all
               select distinct null::timestamptz, created_at from penguin.jobs where id between $1 and $2),
    gaps as (
        select 'claims' as what, claimed as at, claimed - lag(claimed) over (order by claimed) as gap
          from t where claimed is not null
        union all
        select 'enqueues', created, created - lag(created) over (order by created)
          from t where created is not null)
    select what, extract(epoch from at - $3)::float8, extract(epoch from gap)::float8 * 1000
      from gaps where gap > interval '250 milliseconds'
     order by gap desc limit 10";

/// A row of PER_MINUTE_SQL: minute, created, [p50, p90, p99] and max lag (none when no
/// job was created in the minute), completed.
type MinuteRow = (i32, i64, Option<Vec<f64>>, Option<f64>, i64);

/// The mode's settings, from the command line.
pub struct LongOptions {
    /// Minutes of production.
    pub minutes: u32,
    /// Jobs the producer enqueues per second.
    pub rate: usize,
    /// The daemon's `queues.default.concurrency`, for the report.
    pub concurrency: usize,
    /// The daemon's `queues.default.batch` (None: its default), for the report.
    pub batch: Option<usize>,
}

impl LongOptions {
    /// `Some` when `--long` is on the command line.
    pub fn from_args(concurrency: usize, batch: Option<usize>) -> Option<Self> {
        if !std::env::args().any(|a| a == "--long") {
            return None;
        }
        let minutes: u32 = crate::common::arg("--long-minutes").unwrap_or(10);
        let rate: usize = crate::common::arg("--long-rate").unwrap_or(5_000);
        assert!(minutes >= 1, "--long-minutes must be >= 1");
        assert!(rate >= 1, "--long-rate must be >= 1");
        Some(Self {
            minutes,
            rate,
            concurrency,
            batch,
        })
    }

    /// The producer's schedule: one statement every BATCH / rate seconds.
    fn period(&self) -> Duration {
        Duration::from_secs_f64(BATCH as f64 / self.rate as f64)
    }
}

/// What the producer did.
struct Production {
    /// When it started, on the clock the database's timestamps use (the same machine's).
    started: DateTime<Utc>,
    /// When its last statement returned.
    ended: Instant,
    secs: f64,
    ids: RangeInclusive<i64>,
    jobs: usize,
}

/// Runs the producer for the minutes asked under the held transaction, measures each
/// minute once the backlog is done, then times the recovery after the release.
pub async fn run(cluster: &EmbeddedPostgres, dir: &Path, options: &LongOptions) -> Value {
    let (pool, url) = fresh_database(cluster, "bench_long").await;
    let settings = autovacuum_settings(&pool).await;
    let daemon = Daemon::start(dir, &url);
    wait_idle(&pool).await;
    let held = HeldTransaction::open(&url).await;
    eprintln!(
        "long: holding txid {} (backend {}); enqueuing {} jobs/s in statements of {BATCH} for {} min",
        held.txid, held.pid, options.rate, options.minutes
    );
    let enqueued = Arc::new(AtomicUsize::new(0));
    let (start, started) = (Instant::now(), Utc::now());
    let snapshots = tokio::spawn(snapshots(
        url.clone(),
        held.pid,
        start,
        options.minutes,
        enqueued.clone(),
    ));
    let production = produce(&pool, options, (start, started), &enqueued).await;
    let achieved = production.jobs as f64 / production.secs;
    eprintln!(
        "long: enqueued {} jobs in {:.1} s ({achieved:.0}/s); waiting for the backlog",
        production.jobs, production.secs
    );
    let snapshots = snapshots.await.unwrap();
    let (ids, jobs) = (production.ids.clone(), production.jobs);
    wait_completed(&pool, &daemon, ids, jobs, BACKLOG_LIMIT).await;
    let backlog_secs = production.ended.elapsed().as_secs_f64();
    daemon.stop();
    eprintln!("long: every job completed {backlog_secs:.1} s after the producer stopped");
    let (per_minute, worst_p99) = per_minute(&pool, &production, &snapshots).await;
    let pauses = pauses(&pool, &production).await;
    let held_xmin_age_at_release = held.xmin_age(&pool).await;
    held.release().await;
    let dead = snapshots.iter().filter_map(|s| s["n_dead_tup"].as_i64());
    let mut recovery = await_recovery(&pool, dead.max().unwrap_or(0)).await;
    recovery["settled"] = settle(&pool).await;
    pool.close().await;
    json!({
        "minutes": options.minutes,
        "rate_target_jobs_per_s": options.rate,
        "rate_achieved_jobs_per_s": achieved.round(),
        "jobs": jobs,
        "enqueue_batch": BATCH,
        "concurrency": options.concurrency,
        "daemon_batch": options.batch.map_or(json!("daemon default"), |b| json!(b)),
        "daemon_config": std::fs::read_to_string(dir.join("jobs.toml")).unwrap(),
        "autovacuum_settings": settings,
        "lag_note": "enqueue-to-start = attempted_at - created_at of the jobs created in each \
                     minute, computed from the table after every job completed",
        "backlog_done_s_after_production": (backlog_secs * 10.0).round() / 10.0,
        "table_at_start": snapshots[0],
        "per_minute": per_minute,
        "worst_minute_p99_ms": worst_p99,
        "longest_pauses_over_250ms": pauses,
        "goal_p99_ms": GOAL_P99_MS,
        "held_xmin_age_at_release": held_xmin_age_at_release,
        "after_release": recovery,
    })
}

/// Enqueues `options.rate` no-op jobs a second, BATCH per statement on one connection, on
/// a schedule from `start` (`started` on the wall clock) that bursts to catch up, until
/// `options.minutes` have passed.
async fn produce(
    pool: &PgPool,
    options: &LongOptions,
    (start, started): (Instant, DateTime<Utc>),
    enqueued: &AtomicUsize,
) -> Production {
    let jobs: Vec<NewJob> = (0..BATCH)
        .map(|i| NewJob::new("noop", json!({ "n": i })))
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    let mut tick = tokio::time::interval_at(start, options.period());
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let deadline = start + MINUTE * options.minutes;
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    loop {
        tick.tick().await;
        // a late producer bursts to catch up, but stops with the minutes all the same
        // (a missed tick returns at once, with the instant it was due)
        if Instant::now() >= deadline {
            break;
        }
        let ids = queue::enqueue_many(&mut conn, &jobs).await.unwrap();
        first = first.min(ids[0]);
        last = last.max(ids[ids.len() - 1]);
        enqueued.fetch_add(ids.len(), Ordering::Relaxed);
    }
    Production {
        started,
        ended: Instant::now(),
        secs: start.elapsed().as_secs_f64(),
        ids: first..=last,
        jobs: enqueued.load(Ordering::Relaxed),
    }
}

/// At each minute boundary from `start` (0 to `minutes`), on a connection of its own: the
/// table's statistics and sizes, the held xmin's age and the jobs enqueued so far.
async fn snapshots(
    url: String,
    held_pid: i32,
    start: Instant,
    minutes: u32,
    enqueued: Arc<AtomicUsize>,
) -> Vec<Value> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let mut tick = tokio::time::interval_at(start, MINUTE);
    let (mut out, mut before) = (vec![], 0);
    for minute in 0..=minutes {
        tick.tick().await;
        let jobs = enqueued.load(Ordering::Relaxed);
        let state = TableState::read(&pool).await;
        let age = xmin_age(&pool, held_pid).await;
        eprintln!(
            "long {minute} min: enqueued {jobs} ({} in the last minute), {}, held xmin age {age:?}",
            jobs - before,
            state.summary()
        );
        let mut snapshot = state.to_json();
        snapshot["minute"] = json!(minute);
        snapshot["enqueued_so_far"] = json!(jobs);
        snapshot["held_xmin_age"] = json!(age);
        out.push(snapshot);
        before = jobs;
    }
    pool.close().await;
    out
}

/// Each minute's figures (PER_MINUTE_SQL, with the snapshot taken at its end), printed as
/// they are read, and the worst p99 of the minutes that created jobs.
async fn per_minute(
    pool: &PgPool,
    production: &Production,
    snapshots: &[Value],
) -> (Vec<Value>, f64) {
    let rows: Vec<MinuteRow> = sqlx::query_as(PER_MINUTE_SQL)
        .bind(production.ids.start())
        .bind(production.ids.end())
        .bind(production.started)
        .fetch_all(pool)
        .await
        .unwrap();
    let round = |ms: f64| (ms * 10.0).round() / 10.0;
    let (mut out, mut worst) = (vec![], 0.0f64);
    for (minute, created, lags, max_ms, completed) in rows {
        let lag_ms = match (lags.as_deref(), max_ms) {
            (Some(&[p50, p90, p99]), Some(max)) => {
                worst = worst.max(p99);
                eprintln!(
                    "long minute {minute}: created {created}, completed {completed}, enqueue-to-start \
                     p50 {p50:.1} ms, p90 {p90:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
                );
                json!({ "p50": round(p50), "p90": round(p90), "p99": round(p99), "max": round(max) })
            }
            _ => {
                eprintln!("long minute {minute}: created none, completed {completed}");
                Value::Null
            }
        };
        let table_at_end = snapshots.get(minute as usize + 1).cloned();
        out.push(json!({
            "minute": minute, "created": created, "completed": completed,
            "enqueue_to_start_ms": lag_ms, "table_at_end": table_at_end,
        }));
    }
    (out, round(worst))
}

/// The jobs that waited over a second: how many, first and last enqueue and claim
/// (seconds into the run), the highest attempt, how many carry errors.
type LateJobs = (
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<i32>,
    i64,
);

/// [`PAUSES_SQL`]'s pauses, printed and as JSON: what paused (claims or enqueues), when
/// it ended (seconds after production started) and how long it was (ms).
async fn pauses(pool: &PgPool, production: &Production) -> Vec<Value> {
    let rows: Vec<(String, f64, f64)> = sqlx::query_as(PAUSES_SQL)
        .bind(production.ids.start())
        .bind(production.ids.end())
        .bind(production.started)
        .fetch_all(pool)
        .await
        .unwrap();
    let mut out: Vec<Value> = rows
        .into_iter()
        .map(|(what, at, ms)| {
            eprintln!("long: no {what} for {ms:.0} ms, until {at:.1} s into the run");
            json!({ "what": what, "ended_s": (at * 10.0).round() / 10.0, "ms": ms.round() })
        })
        .collect();
    // the jobs that waited over a second: when they were enqueued and claimed, and how
    let late: LateJobs = sqlx::query_as(
        "select count(*), min(extract(epoch from created_at - $3))::float8,
                    max(extract(epoch from created_at - $3))::float8,
                    min(extract(epoch from attempted_at - $3))::float8,
                    max(extract(epoch from attempted_at - $3))::float8,
                    max(attempt), count(*) filter (where errors <> '[]')
               from penguin.jobs
              where id between $1 and $2 and attempted_at - created_at > interval '1 second'",
    )
    .bind(production.ids.start())
    .bind(production.ids.end())
    .bind(production.started)
    .fetch_one(pool)
    .await
    .unwrap();
    if late.0 > 0 {
        eprintln!(
            "long: {} jobs waited over 1 s: enqueued {:.1}-{:.1} s, claimed {:.1}-{:.1} s into the \
             run, at most attempt {:?}, {} with errors",
            late.0,
            late.1.unwrap_or(0.0),
            late.2.unwrap_or(0.0),
            late.3.unwrap_or(0.0),
            late.4.unwrap_or(0.0),
            late.5,
            late.6
        );
        out.push(json!({
            "what": "jobs waiting over 1 s", "jobs": late.0,
            "enqueued_s": [late.1, late.2], "claimed_s": [late.3, late.4],
            "max_attempt": late.5, "with_errors": late.6,
        }));
    }
    out
}

/// The table SETTLE after the recovery (or after it gave up).
async fn settle(pool: &PgPool) -> Value {
    tokio::time::sleep(SETTLE).await;
    let state = TableState::read(pool).await;
    eprintln!(
        "long: {} s after the recovery: {}",
        SETTLE.as_secs(),
        state.summary()
    );
    let mut out = state.to_json();
    out["seconds_after_recovery"] = json!(SETTLE.as_secs());
    out
}
