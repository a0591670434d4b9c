//! Runs the worker runtime in-process against a test database, and waits on database
//! conditions without sleeping blindly.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use penguin_jobs::config::Config;
use penguin_jobs::jobs::{Deps, Registry};
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

/// Starts the runtime with `toml` as its config.
pub async fn start_runtime(pool: &PgPool, toml: &str) -> RunningRuntime {
    let config = config(toml);
    let registry = register_kinds(pool, &config).await;
    start_runtime_with(pool, config, registry)
}

/// Starts the runtime with `config` and an already registered `registry`.
pub fn start_runtime_with(
    pool: &PgPool,
    config: Config,
    registry: Arc<Registry>,
) -> RunningRuntime {
    let token = CancellationToken::new();
    let pool = pool.clone();
    let stop = token.clone();
    let task = tokio::spawn(async move {
        runtime::run(&config, pool, registry, stop)
            .await
            .expect("runtime runs");
    });
    RunningRuntime { token, task }
}

/// Waits until `sql` (a boolean query) is true; panics with `what` after `limit`.
pub async fn wait_for(pool: &PgPool, sql: &str, limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let done: bool = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .expect("wait query runs");
        if done {
            return start.elapsed();
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until job `id` is in `state`; panics after 20 s with the job's status.
pub async fn wait_for_state(pool: &PgPool, id: i64, state: queue::JobState) {
    let start = Instant::now();
    loop {
        let status = queue::job_status(pool, id).await.unwrap();
        if status.as_ref().is_some_and(|s| s.state == state.as_str()) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "job {id} is not {state} after 20 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until job `id` is dead-lettered (20 s at most) and returns its dead letter.
pub async fn wait_for_dead_letter(pool: &PgPool, id: i64) -> queue::DeadLetter {
    wait_for(
        pool,
        &format!("select exists (select 1 from penguin.dead_letters where job_id = {id})"),
        Duration::from_secs(20),
        &format!("job {id} dead-lettered"),
    )
    .await;
    sqlx::query_as("select * from penguin.dead_letters where job_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until job `id` finished: completed, or dead-lettered.
pub async fn wait_for_finished(pool: &PgPool, id: i64, limit: Duration) {
    wait_for(
        pool,
        &format!(
            "select exists (select 1 from penguin.jobs where id = {id} and state = 'completed')
                 or exists (select 1 from penguin.dead_letters where job_id = {id})"
        ),
        limit,
        &format!("job {id} finished"),
    )
    .await;
}

/// Waits until at least `n` jobs of `kind` finished: completed, cancelled or dead-lettered.
pub async fn wait_for_kind_finished(pool: &PgPool, kind: &str, n: i64, limit: Duration) {
    wait_for(
        pool,
        &format!(
            "select (select count(*) from penguin.jobs where kind = '{kind}' and state in ('completed', 'cancelled'))
                  + (select count(*) from penguin.dead_letters where kind = '{kind}') >= {n}"
        ),
        limit,
        &format!("{n} {kind} job(s) finished"),
    )
    .await;
}

/// Counts rows of a query returning one bigint.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count query runs")
}

/// Spawns `penguin-jobs run --no-http` with `config_path`, logging to `log_path`.
pub fn spawn_daemon(config_path: &Path, url: &str, log_path: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
        .arg("--config")
        .arg(config_path)
        .args(["run", "--no-http"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log_path).unwrap())
        .spawn()
        .unwrap()
}

/// SIGTERM, then waits: the daemon must exit cleanly.
pub fn stop_daemon(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Every kind listed in `penguin.kinds`: what a daemon with the built-in registry claims.
pub async fn known_kinds(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("select coalesce(array_agg(kind order by kind), '{}') from penguin.kinds")
        .fetch_one(pool)
        .await
        .expect("read penguin.kinds")
}
