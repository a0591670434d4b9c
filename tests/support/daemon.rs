//! The pieces below [`super::app::TestApp`]: test configs, the built-in kinds registered,
//! the worker runtime in-process, a wait on a SQL condition, and the daemon as a process
//! (spawned, stopped with SIGTERM).

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use penguin_jobs::config::Config;
use penguin_jobs::jobs::{Deps, Registry};
use penguin_jobs::metrics::Metrics;
use penguin_jobs::{queue, runtime};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Parses and validates a test config.
pub fn config(toml: &str) -> Config {
    let config = Config::from_toml(toml, Path::new("test.toml")).expect("test config parses");
    config.validate().expect("test config is valid");
    config
}

/// The built-in registry under `config`, with its kinds written to `penguin.kinds`.
pub async fn register_kinds(pool: &PgPool, config: &Config) -> Arc<Registry> {
    let deps = Deps::new(pool.clone()).unwrap();
    let registry = Registry::builtin(config, &deps).expect("registry");
    queue::sync_kinds(pool, &registry.kind_defaults())
        .await
        .expect("sync kinds");
    Arc::new(registry)
}

/// A runtime running in this test's tokio runtime.
pub struct RunningRuntime {
    pub token: CancellationToken,
    pub task: JoinHandle<()>,
}

impl RunningRuntime {
    /// Graceful stop, as on SIGTERM; returns when everything is written back.
    pub async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("runtime stops within 60s")
            .expect("runtime task did not panic");
    }
}

/// Starts the runtime with `config` and an already registered `registry`. Most tests
/// let [`super::app::TestApp`] do this; here for two runtimes side by side, or one with
/// other dependencies than the app's.
pub fn start_runtime(pool: &PgPool, config: Config, registry: Arc<Registry>) -> RunningRuntime {
    start_runtime_counting(pool, config, registry, Metrics::new())
}

/// [`start_runtime`], counting into `metrics`.
pub fn start_runtime_counting(
    pool: &PgPool,
    config: Config,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) -> RunningRuntime {
    let token = CancellationToken::new();
    let pool = pool.clone();
    let stop = token.clone();
    let task = tokio::spawn(async move {
        runtime::run_reporting(&config, pool, registry, stop, None, metrics)
            .await
            .expect("runtime runs");
    });
    RunningRuntime { token, task }
}

/// Waits until `sql` (a boolean query) is true; panics with `what` after `limit`.
/// Returns how long it waited.
pub async fn wait_for(pool: &PgPool, sql: &str, limit: Duration, what: &str) -> Duration {
    super::poll_until(limit, async || {
        sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("wait query runs")
    })
    .await
    .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for: {what}"))
}

/// Counts rows of a query returning one bigint.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query runs")
}

/// A spawned daemon that is killed when dropped still running, so that a test failing
/// half-way leaves no daemon behind working its database. Derefs to the process.
pub struct DaemonProcess(pub std::process::Child);

impl std::ops::Deref for DaemonProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for DaemonProcess {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns `penguin-jobs run --no-http` with `config_path`, logging to `log_path`.
pub fn spawn_daemon(config_path: &Path, url: &str, log_path: &Path) -> DaemonProcess {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
        .arg("--config")
        .arg(config_path)
        .args(["run", "--no-http"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_path).unwrap())
        .spawn()
        .unwrap();
    DaemonProcess(child)
}

/// Runs the `penguin-jobs` binary with `config` against `database_url`, writing `stdin`
/// (if any) to its standard input; the master key comes from the config only.
pub fn cli(config: &Path, database_url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("PENGUIN_JOBS_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // a CLI that fails before it reads its input closes the pipe: its stderr, in the
        // output returned, says why (a panic here said nothing)
        if let Err(e) = input.write_all(text.as_bytes()) {
            eprintln!("writing the CLI's standard input: {e}");
        }
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// SIGTERM, then waits: the daemon must exit cleanly.
pub fn stop_daemon(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Claims up to `limit` jobs of every known kind from the `default` queue as `worker`.
pub async fn claim_default(
    pool: &PgPool,
    worker: &str,
    limit: i64,
    lease: std::time::Duration,
) -> Vec<penguin_jobs::queue::ClaimedJob> {
    penguin_jobs::queue::claim(
        pool,
        "default",
        &known_kinds(pool).await,
        limit,
        worker,
        lease,
    )
    .await
    .expect("claim")
}

/// Every kind listed in `penguin.kinds`: what a daemon with the built-in registry claims.
pub async fn known_kinds(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select coalesce(array_agg(kind order by kind), '{}') from penguin.kinds")
        .fetch_one(pool)
        .await
        .expect("read penguin.kinds")
}

/// Moves `id` to the dead letters the way a worker would.
pub async fn bury(pool: &sqlx::PgPool, id: i64) {
    let claimed = queue::claim(
        pool,
        "default",
        &known_kinds(pool).await,
        100,
        "w",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(claimed.iter().any(|j| j.id == id));
    let outcomes: Vec<(i64, queue::Outcome)> = claimed
        .iter()
        .map(|j| {
            let outcome = if j.id == id {
                queue::Outcome::Dead {
                    reason: queue::DeadReason::PermanentError,
                    error: None,
                }
            } else {
                queue::Outcome::Snooze {
                    run_at: chrono::Utc::now(),
                }
            };
            (j.id, outcome)
        })
        .collect();
    queue::write_outcomes(pool, "w", &outcomes).await.unwrap();
}
