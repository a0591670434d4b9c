//! Held-horizon mode of the queue benchmark (`--horizon`; `--waves N`, default 5, and
//! `--wave-jobs N`, default 200,000, a multiple of 1,000): what one long transaction
//! elsewhere in the queue's database does to the queue (issue 16).
//!
//! First the daemon drains one wave of the same size with nothing held (`free_wave`, the
//! baseline of issue 16's goal). Then a separate connection opens a repeatable-read
//! transaction, takes an xid and a snapshot, and holds both for the rest of the
//! experiment, so no vacuum may remove any row version the held waves leave behind. Each
//! wave enqueues no-op jobs and drains them with the real daemon (the bench's own drain
//! helpers, rates from the database's timestamps); after each the mode prints the rate,
//! the table's dead and live tuples, the sizes of the table and of each of its indexes,
//! and the age of the held transaction's xmin. Then it commits the held transaction and
//! times how long autovacuum takes to bring the dead tuples back under 10% of their peak
//! (polled every 5 s, given up after 5 minutes), and reads the sizes again: whether the
//! space comes back without `VACUUM FULL`. Last, one more wave with nothing held
//! (`wave_after_recovery`): its rate over the free wave's, and how much the files grew to
//! hold it (`files_growth` near 1: the freed space is reused, the table does not stay
//! bloated). The report gives the last held wave over the
//! first (`last_to_first_rate_ratio`) and over the free wave (`last_held_to_free_ratio`,
//! the goal's figure: >= 0.8).
//!
//! `--long` (see `long.rs`) is the goal's other half, a steady run under a held horizon:
//! a producer enqueues `--long-rate N` (5,000) jobs/s for `--long-minutes N` (10) while the
//! daemon works them, with enqueue-to-start lag percentiles per minute, then the same
//! recovery. It runs on its own or after the waves (with `--horizon`).
//!
//! It is slow by design: on a 2-core machine the default 5 x 200k fell to a few hundred
//! jobs/s by the fourth wave (over 8 minutes for that wave alone), so each wave may take
//! up to an hour (WAVE_LIMIT); `--waves 3 --wave-jobs 50000` takes about two minutes
//! (plus about 20 s for the free wave).
//!
//! Tuple counts come from `pg_stat_user_tables`, which PostgreSQL 15 updates from each
//! backend's pending counts at most once a second (idle backends within ~10 s);
//! `pg_stat_force_next_flush()` only flushes the calling backend, not the daemon's, so
//! the mode waits 2 s after each wave and reads what is there. It never runs VACUUM
//! itself: that would measure the bench, not autovacuum.

use std::path::Path;
use std::time::{Duration, Instant};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection, PgPool};

use super::{Daemon, ENQUEUE_CHUNK, drain_jobs, fresh_database, wait_idle};

pub mod long;

/// How long autovacuum gets, after the release, to bring the dead tuples down.
const RECOVERY_LIMIT: Duration = Duration::from_secs(300);
/// How often the dead tuples are read while waiting for autovacuum.
const RECOVERY_POLL: Duration = Duration::from_secs(5);
/// Recovered: dead tuples under this share of their peak.
const RECOVERED_SHARE: f64 = 0.1;
/// How long one wave's drain may take: under a held horizon the later waves of 200k jobs
/// ran at under 1,000 jobs/s on a 2-core machine, past the bench's usual 10 minutes.
const WAVE_LIMIT: Duration = Duration::from_secs(3600);

/// The mode's settings, from the command line.
pub struct HorizonOptions {
    /// Waves of enqueue-then-drain under the held transaction.
    pub waves: usize,
    /// Jobs each wave enqueues and drains.
    pub jobs_per_wave: usize,
    /// The daemon's `queues.default.concurrency`, for the report.
    pub concurrency: usize,
    /// The daemon's `queues.default.batch` (None: its default), for the report.
    pub batch: Option<usize>,
}

impl HorizonOptions {
    /// `Some` when `--horizon` is on the command line.
    pub fn from_args(concurrency: usize, batch: Option<usize>) -> Option<Self> {
        if !std::env::args().any(|a| a == "--horizon") {
            return None;
        }
        let waves: usize = super::common::arg("--waves").unwrap_or(5);
        let jobs_per_wave: usize = super::common::arg("--wave-jobs").unwrap_or(200_000);
        assert!(waves >= 1, "--waves must be >= 1");
        assert!(
            jobs_per_wave >= ENQUEUE_CHUNK && jobs_per_wave % ENQUEUE_CHUNK == 0,
            "--wave-jobs must be a positive multiple of {ENQUEUE_CHUNK}"
        );
        Some(Self {
            waves,
            jobs_per_wave,
            concurrency,
            batch,
        })
    }
}

/// A repeatable-read transaction with an xid and a snapshot, held on its own connection.
struct HeldTransaction {
    conn: PgConnection,
    pid: i32,
    txid: i64,
}

impl HeldTransaction {
    async fn open(url: &str) -> Self {
        let mut conn = PgConnection::connect(url).await.unwrap();
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        sqlx::query("begin isolation level repeatable read")
            .execute(&mut conn)
            .await
            .unwrap();
        let txid: i64 = sqlx::query_scalar("select txid_current()")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        // the snapshot itself, not only the xid: repeatable read keeps the first one
        sqlx::query("select 1 from penguin.jobs limit 1")
            .fetch_optional(&mut conn)
            .await
            .unwrap();
        Self { conn, pid, txid }
    }

    /// `age(backend_xmin)` of the held backend, as pg_stat_activity shows it.
    async fn xmin_age(&self, pool: &PgPool) -> Option<i32> {
        xmin_age(pool, self.pid).await
    }

    async fn release(mut self) {
        sqlx::query("commit").execute(&mut self.conn).await.unwrap();
        self.conn.close().await.unwrap();
    }
}

/// `age(backend_xmin)` of backend `pid`, as pg_stat_activity shows it.
async fn xmin_age(pool: &PgPool, pid: i32) -> Option<i32> {
    sqlx::query_scalar("select age(backend_xmin) from pg_stat_activity where pid = $1")
        .bind(pid)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `penguin.jobs` as the statistics and the storage show it at one moment.
struct TableState {
    dead: i64,
    live: i64,
    autovacuums: i64,
    heap_mb: f64,
    total_mb: f64,
    index_mb: serde_json::Map<String, Value>,
}

impl TableState {
    async fn read(pool: &PgPool) -> Self {
        let (dead, live, autovacuums, heap, total): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "select n_dead_tup, n_live_tup, autovacuum_count,
                    pg_relation_size('penguin.jobs'), pg_total_relation_size('penguin.jobs')
               from pg_stat_user_tables where relid = 'penguin.jobs'::regclass",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let indexes: Vec<(String, i64)> = sqlx::query_as(
            "select c.relname::text, pg_relation_size(c.oid) from pg_index i
               join pg_class c on c.oid = i.indexrelid
              where i.indrelid = 'penguin.jobs'::regclass order by c.relname",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        Self {
            dead,
            live,
            autovacuums,
            heap_mb: megabytes(heap),
            total_mb: megabytes(total),
            index_mb: indexes
                .into_iter()
                .map(|(name, bytes)| (name, megabytes(bytes).into()))
                .collect(),
        }
    }

    /// The state on one line, for stderr.
    fn summary(&self) -> String {
        format!(
            "dead {} live {}, heap {} MB, indexes {} MB, total {} MB",
            self.dead,
            self.live,
            self.heap_mb,
            Value::from(self.index_mb.clone()),
            self.total_mb
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "n_dead_tup": self.dead, "n_live_tup": self.live, "autovacuum_count": self.autovacuums,
            "heap_mb": self.heap_mb, "total_mb": self.total_mb, "index_mb": self.index_mb,
        })
    }
}

fn megabytes(bytes: i64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0
}

/// The autovacuum settings the figures depend on: the server's (SHOW) and the table's own.
async fn autovacuum_settings(pool: &PgPool) -> Value {
    let mut out = super::common::show_settings(
        pool,
        &[
            "autovacuum",
            "autovacuum_naptime",
            "autovacuum_max_workers",
            "autovacuum_vacuum_scale_factor",
            "autovacuum_vacuum_threshold",
            "autovacuum_vacuum_cost_delay",
            "autovacuum_vacuum_cost_limit",
            "old_snapshot_threshold",
        ],
    )
    .await;
    let table: Option<Vec<String>> =
        sqlx::query_scalar("select reloptions from pg_class where oid = 'penguin.jobs'::regclass")
            .fetch_one(pool)
            .await
            .unwrap();
    out.insert("penguin.jobs reloptions".into(), json!(table));
    out.into()
}

/// Drains one wave with nothing held, then runs the waves under the held transaction, then
/// times the recovery after its release.
pub async fn run(cluster: &EmbeddedPostgres, dir: &Path, options: &HorizonOptions) -> Value {
    let (pool, url) = fresh_database(cluster, "bench_horizon").await;
    let settings = autovacuum_settings(&pool).await;
    let daemon = Daemon::start(dir, &url);
    wait_idle(&pool).await;
    let (free_rate, free_enqueue_rate, free_state) =
        drain_wave(&pool, &daemon, options.jobs_per_wave).await;
    eprintln!(
        "horizon free wave (nothing held): {free_rate:.0} jobs/s (enqueue {free_enqueue_rate:.0}/s), {}",
        free_state.summary()
    );
    let held = HeldTransaction::open(&url).await;
    eprintln!(
        "horizon: holding txid {} (backend {}) over {} waves of {} jobs",
        held.txid, held.pid, options.waves, options.jobs_per_wave
    );
    let (waves, rates, peak_dead) = run_waves(&pool, &daemon, &held, options).await;
    daemon.stop();
    let ratio = rates[rates.len() - 1] / rates[0];
    let free_ratio = rates[rates.len() - 1] / free_rate;
    eprintln!("horizon: last wave / first wave = {ratio:.2} (issue 16 wants >= 0.8)");
    eprintln!("horizon: last held wave / free wave = {free_ratio:.2} (issue 16 wants >= 0.8)");
    let held_xmin_age_at_release = held.xmin_age(&pool).await;
    held.release().await;
    let recovery = await_recovery(&pool, peak_dead).await;
    let reuse = reuse_wave(&pool, dir, &url, options.jobs_per_wave, free_rate).await;
    pool.close().await;
    json!({
        "waves": options.waves, "jobs_per_wave": options.jobs_per_wave,
        "concurrency": options.concurrency,
        "batch": options.batch.map_or(json!("daemon default"), |b| json!(b)),
        "autovacuum_settings": settings,
        "stats_note": "n_dead_tup/n_live_tup read from pg_stat_user_tables 2 s after each wave, \
                       without forcing a flush (PostgreSQL 15 flushes each backend's counts lazily)",
        "free_wave": wave_json(&free_state, free_rate, free_enqueue_rate),
        "per_wave": waves,
        "last_to_first_rate_ratio": round2(ratio),
        "last_held_to_free_ratio": round2(free_ratio),
        "ratio_goal": 0.8,
        "held_xmin_age_at_release": held_xmin_age_at_release,
        "after_release": recovery,
        "wave_after_recovery": reuse,
    })
}

/// After the recovery, one more wave with nothing held: whether it drains at the free
/// wave's rate again and fits in the space the release gave back (the files barely grow)
/// rather than leaving the table bloated.
async fn reuse_wave(pool: &PgPool, dir: &Path, url: &str, jobs: usize, free_rate: f64) -> Value {
    let before = TableState::read(pool).await;
    let daemon = Daemon::start(dir, url);
    wait_idle(pool).await;
    let (rate, enqueue_rate, after) = drain_wave(pool, &daemon, jobs).await;
    daemon.stop();
    let growth = after.total_mb / before.total_mb;
    eprintln!(
        "horizon: a wave after the recovery: {rate:.0} jobs/s ({:.2} of the free wave), files {:.0} -> {:.0} MB (x{growth:.2}), {}",
        rate / free_rate,
        before.total_mb,
        after.total_mb,
        after.summary()
    );
    json!({
        "drain_jobs_per_s": rate.round(), "enqueue_jobs_per_s": enqueue_rate.round(),
        "to_free_wave": round2(rate / free_rate),
        "total_mb_before": before.total_mb, "files_growth": round2(growth),
        "after": after.to_json(),
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One wave: enqueues `jobs` no-op jobs, lets the daemon drain them, waits 2 s for the
/// statistics and reads the table: (drain jobs/s, enqueue jobs/s, the table then).
async fn drain_wave(pool: &PgPool, daemon: &Daemon, jobs: usize) -> (f64, f64, TableState) {
    // enqueueing slows down as the table bloats: a generous head start per wave
    let head_start = Duration::from_secs(5 + jobs as u64 / 10_000);
    let (rate, enqueue_rate) = drain_jobs(pool, daemon, jobs, head_start, WAVE_LIMIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (rate, enqueue_rate, TableState::read(pool).await)
}

/// A wave's figures in the report.
fn wave_json(state: &TableState, rate: f64, enqueue_rate: f64) -> Value {
    let mut figures = state.to_json();
    figures["drain_jobs_per_s"] = json!(rate.round());
    figures["enqueue_jobs_per_s"] = json!(enqueue_rate.round());
    figures
}

/// The held waves: (each wave's figures, each wave's rate, the peak of dead tuples seen).
async fn run_waves(
    pool: &PgPool,
    daemon: &Daemon,
    held: &HeldTransaction,
    options: &HorizonOptions,
) -> (Vec<Value>, Vec<f64>, i64) {
    let (mut waves, mut rates, mut peak_dead) = (vec![], vec![], 0);
    for wave in 1..=options.waves {
        let (rate, enqueue_rate, state) = drain_wave(pool, daemon, options.jobs_per_wave).await;
        let xmin_age = held.xmin_age(pool).await;
        eprintln!(
            "horizon wave {wave}: {rate:.0} jobs/s (enqueue {enqueue_rate:.0}/s), {}, held xmin age {xmin_age:?}",
            state.summary()
        );
        peak_dead = peak_dead.max(state.dead);
        rates.push(rate);
        let mut figures = wave_json(&state, rate, enqueue_rate);
        figures["wave"] = json!(wave);
        figures["held_xmin_age"] = json!(xmin_age);
        waves.push(figures);
    }
    (waves, rates, peak_dead)
}

/// After the release: how long until autovacuum brings the dead tuples under
/// RECOVERED_SHARE of their peak (the waves' `peak_dead` or the count read at the
/// release, whichever is higher), and the sizes at that point (or when it gave up).
async fn await_recovery(pool: &PgPool, peak_dead: i64) -> Value {
    let released = Instant::now();
    let before = TableState::read(pool).await;
    // the counts lag the waves a little: the read at the release may be the highest
    let peak_dead = peak_dead.max(before.dead);
    let target = (peak_dead as f64 * RECOVERED_SHARE) as i64;
    let (state, recovered) = loop {
        tokio::time::sleep(RECOVERY_POLL).await;
        let state = TableState::read(pool).await;
        if state.dead < target {
            break (state, true);
        }
        if released.elapsed() >= RECOVERY_LIMIT {
            break (state, false);
        }
    };
    let secs = released.elapsed().as_secs_f64().round();
    if recovered {
        eprintln!("horizon: dead tuples under {target} after {secs} s");
    } else {
        eprintln!(
            "horizon: gave up after {secs} s, dead tuples still {} (target {target})",
            state.dead
        );
    }
    eprintln!(
        "horizon: then {}, autovacuums {} (were {})",
        state.summary(),
        state.autovacuums,
        before.autovacuums
    );
    json!({
        "peak_n_dead_tup": peak_dead, "target_n_dead_tup": target,
        "recovered": recovered,
        "seconds_to_recover": if recovered { json!(secs) } else { Value::Null },
        "gave_up_after_s": if recovered { Value::Null } else { json!(secs) },
        "poll_interval_s": RECOVERY_POLL.as_secs(),
        "at_release": before.to_json(),
        "at_end": state.to_json(),
    })
}
