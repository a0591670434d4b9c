//! [`TestApp`]: one test's whole setup (a fresh database with the kinds registered, a
//! scratch directory, and optionally a fake provider, the HTTP shim in-process and the
//! worker runtime), with typed reads of the queue (`job`, `dead_letter`) and waits on a
//! condition (`wait_for_state`, `wait_for_dead_letter`, `drain`, ...) instead of sleeps.
//!
//! ```text
//! let app = TestApp::builder().config(FAST).runtime().build().await;
//! let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
//! app.wait_for_state(id, JobState::Completed).await;
//! app.stop().await;
//! assert_eq!(app.job(id).await.attempt, 1);
//! ```

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use penguin_jobs::config::Config;
use penguin_jobs::http::{AppState, serve_on};
use penguin_jobs::jobs::{Deps, Registry};
use penguin_jobs::metrics::Metrics;
use penguin_jobs::queue::{self, DeadLetter, JobState, NewJob};
use penguin_jobs::secrets::Keyring;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::TempDir;
use super::daemon::{RunningRuntime, config, spawn_daemon, start_runtime_counting, wait_for};
use super::fake_provider::FakeProvider;

/// How long the typed waits (`wait_for_state`, `wait_for_dead_letter`, ...) wait at most.
pub const WAIT: Duration = Duration::from_secs(30);

/// The app's config as a file in its scratch directory, for the binary.
pub const CONFIG_FILE: &str = "jobs.toml";

/// How long [`TestApp::drain`] waits at most.
pub const DRAIN: Duration = Duration::from_secs(60);

/// A job row as tests read it: `queue::Job` with its state typed.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub leased_by: Option<String>,
    pub unique_key: Option<String>,
    pub errors: Value,
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<queue::Job> for JobRow {
    fn from(job: queue::Job) -> Self {
        Self {
            state: job
                .state
                .parse()
                .unwrap_or_else(|e| panic!("job {}: {e}", job.id)),
            id: job.id,
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            priority: job.priority,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            leased_by: job.leased_by,
            unique_key: job.unique_key,
            errors: job.errors,
            result: job.result,
            created_at: job.created_at,
            finished_at: job.finished_at,
        }
    }
}

/// Asserts that the last error of `dead` is of `class` and says `words`; returns it.
pub fn assert_last_error(dead: &DeadLetter, class: &str, words: &str) -> Value {
    let last = dead.errors.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["class"], class, "{last}");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.contains(words), "{words:?} not in {last}");
    last
}

/// The HTTP shim served in-process on a free local port.
pub struct Shim {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub client: reqwest::Client,
    _stop: DropGuard,
}

impl Shim {
    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The admin token [`Builder::admin`] configures (43 characters, the shortest accepted).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdefghijk";

/// The admin listener served in-process on a free local port, with [`ADMIN_TOKEN`].
pub struct Admin {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    pub client: reqwest::Client,
    _stop: DropGuard,
}

impl Admin {
    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` with the admin token; the status and the JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// `POST path` (JSON `body`, or none) with the admin token.
    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.post(self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// `DELETE path` with the admin token.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.client.delete(self.url(path))).await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text}"));
        (status, body)
    }
}

type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// What [`TestApp`] sets up; see [`TestApp::builder`].
pub struct Builder {
    dir: TempDir,
    toml: String,
    keyring: Option<Keyring>,
    registry: Option<Registry>,
    fake: Option<FakeProvider>,
    shim: Option<Option<Clock>>,
    runtime: bool,
    /// Lines for the `[admin]` table when the admin listener is served.
    admin: Option<String>,
    database: Option<(PgPool, String)>,
}

impl Builder {
    /// The scratch directory the app will own: write secret files here before `config`.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// The daemon's config (TOML; validated at `build`). Empty by default.
    pub fn config(mut self, toml: &str) -> Self {
        self.toml = toml.to_string();
        self
    }

    /// Master keys for the kinds that need them (credentials, OAuth).
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Handlers of the test's own instead of the built-in registry.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// A fake provider the config points at, kept as long as the app ([`TestApp::fake`]).
    pub fn fake_provider(mut self, fake: FakeProvider) -> Self {
        self.fake = Some(fake);
        self
    }

    /// Serves the HTTP shim in-process ([`TestApp::shim`]).
    pub fn shim(mut self) -> Self {
        self.shim.get_or_insert(None);
        self
    }

    /// Serves the HTTP shim with `clock` (Unix seconds) as its time for webhook signatures.
    pub fn shim_clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.shim = Some(Some(Arc::new(clock)));
        self
    }

    /// Serves the admin listener in-process ([`TestApp::admin`]) with [`ADMIN_TOKEN`] and
    /// queue counts never cached (`stats_interval = "1ms"`); the config must not have an
    /// `[admin]` table of its own.
    pub fn admin(self) -> Self {
        self.admin_settings("")
    }

    /// [`Builder::admin`] with `lines` added to its `[admin]` table.
    pub fn admin_settings(mut self, lines: &str) -> Self {
        self.admin = Some(lines.to_string());
        self
    }

    /// Starts the worker runtime once set up (else [`TestApp::start_runtime`] later).
    pub fn runtime(mut self) -> Self {
        self.runtime = true;
        self
    }

    /// An already migrated database instead of a fresh one from [`super::test_db`].
    pub fn database(mut self, pool: PgPool, url: &str) -> Self {
        self.database = Some((pool, url.to_string()));
        self
    }

    /// The database, the kinds of the registry written to `penguin.kinds`, then the shim
    /// and the runtime if asked for.
    pub async fn build(self) -> TestApp {
        let (pool, url) = match self.database {
            Some(database) => database,
            None => {
                let db = super::test_db().await;
                (db.pool, db.url)
            }
        };
        let mut toml = self.toml;
        if !toml.contains("[health]") {
            // the built-in health checks fire on the wall clock (every 5 minutes): a test
            // crossing the boundary would see calls it did not make; tests of the checks
            // configure `[health]` themselves
            toml.push_str("\n[health]\nchecks = false\n");
        }
        if let Some(lines) = &self.admin {
            let token = self.dir.secret_file("admin-token", ADMIN_TOKEN);
            toml.push_str(&format!(
                "\n[admin]\ntokens = [\"{token}\"]\nstats_interval = \"1ms\"\n{lines}\n"
            ));
        }
        let config = config(&toml);
        std::fs::write(self.dir.path().join(CONFIG_FILE), &toml).unwrap();
        let metrics = Metrics::new();
        let registry = Arc::new(match self.registry {
            Some(registry) => registry,
            None => {
                let deps = Deps::new(pool.clone())
                    .expect("dependencies")
                    .with_keyring(self.keyring.clone())
                    .with_metrics(metrics.clone());
                Registry::builtin(&config, &deps).expect("registry")
            }
        });
        queue::sync_kinds(&pool, &registry.kind_defaults())
            .await
            .expect("sync kinds");
        let shim = match self.shim {
            Some(clock) => Some(serve_shim(&config, &pool, &registry, clock).await),
            None => None,
        };
        let admin = if self.admin.is_some() {
            Some(serve_admin(&config, &pool, &registry, &metrics).await)
        } else {
            None
        };
        let mut app = TestApp {
            pool,
            url,
            dir: self.dir,
            toml,
            config,
            keyring: self.keyring,
            registry,
            fake: self.fake,
            shim,
            admin,
            metrics,
            runtime: None,
        };
        if self.runtime {
            app.start_runtime();
        }
        app
    }
}

async fn serve_shim(
    config: &Config,
    pool: &PgPool,
    registry: &Arc<Registry>,
    clock: Option<Clock>,
) -> Shim {
    let mut state = AppState::new(config, pool.clone(), registry.clone()).expect("shim state");
    if let Some(clock) = clock {
        state = state.with_clock(move || clock());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let http = config.http.clone();
    let serving = stop.clone();
    tokio::spawn(async move { serve_on(listener, state, &http, serving).await });
    Shim {
        base,
        client: reqwest::Client::new(),
        _stop: stop.drop_guard(),
    }
}

async fn serve_admin(
    config: &Config,
    pool: &PgPool,
    registry: &Registry,
    metrics: &Arc<Metrics>,
) -> Admin {
    let ready = penguin_jobs::readiness::Readiness::new(pool.clone(), false);
    let served = penguin_jobs::runtime::queues(config, registry);
    let state = penguin_jobs::admin::AdminState::new(config, pool, ready, served)
        .expect("admin state")
        .with_metrics(metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let http = config.http.clone();
    let serving = stop.clone();
    tokio::spawn(
        async move { penguin_jobs::admin::serve_on(listener, state, &http, serving).await },
    );
    Admin {
        base,
        client: reqwest::Client::new(),
        _stop: stop.drop_guard(),
    }
}

/// One test's database, scratch directory, and what runs against them.
pub struct TestApp {
    pub pool: PgPool,
    /// URL of the database, e.g. for `DATABASE_URL` of a spawned daemon or command.
    pub url: String,
    /// Scratch directory, removed with the app.
    pub dir: TempDir,
    /// The config's text and the config parsed from it.
    pub toml: String,
    pub config: Config,
    pub keyring: Option<Keyring>,
    pub registry: Arc<Registry>,
    fake: Option<FakeProvider>,
    shim: Option<Shim>,
    admin: Option<Admin>,
    /// What the app's runtime, registry and admin listener count.
    pub metrics: Arc<Metrics>,
    runtime: Option<RunningRuntime>,
}

impl TestApp {
    /// Set up piece by piece: `TestApp::builder().config(toml).runtime().build().await`.
    pub fn builder() -> Builder {
        Builder {
            dir: TempDir::new("app"),
            toml: String::new(),
            keyring: None,
            registry: None,
            fake: None,
            shim: None,
            runtime: false,
            admin: None,
            database: None,
        }
    }

    /// A fresh database with the built-in kinds registered under an empty config; nothing
    /// runs.
    pub async fn new() -> Self {
        Self::builder().build().await
    }

    /// A fresh database and the runtime running with `toml`.
    pub async fn running(toml: &str) -> Self {
        Self::builder().config(toml).runtime().build().await
    }

    /// What [`TestApp::metrics`] holds, in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        let mut text = String::new();
        self.metrics.encode(&mut text).unwrap();
        text
    }

    /// The fake provider given to the builder.
    pub fn fake(&self) -> &FakeProvider {
        self.fake.as_ref().expect("the app has no fake provider")
    }

    /// The in-process admin listener asked of the builder.
    pub fn admin(&self) -> &Admin {
        self.admin.as_ref().expect("the app has no admin listener")
    }

    /// The in-process shim asked of the builder.
    pub fn shim(&self) -> &Shim {
        self.shim.as_ref().expect("the app serves no shim")
    }

    /// Starts the worker runtime with the app's config and registry.
    pub fn start_runtime(&mut self) {
        assert!(self.runtime.is_none(), "the runtime is already running");
        self.runtime = Some(start_runtime_counting(
            &self.pool,
            config(&self.toml),
            self.registry.clone(),
            self.metrics.clone(),
        ));
    }

    /// Stops the runtime gracefully, as on SIGTERM: returns once every outcome is written.
    pub async fn stop(&mut self) {
        self.runtime
            .take()
            .expect("the runtime is not running")
            .stop()
            .await;
    }

    /// `jobs.toml` in the scratch directory: the app's config, for the binary.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join(CONFIG_FILE)
    }

    /// Runs the `penguin-jobs` binary with the app's config against its database.
    pub fn cli(&self, args: &[&str]) -> Output {
        super::daemon::cli(&self.config_path(), &self.url, args, None)
    }

    /// Runs the binary like [`Self::cli`], with `stdin` as its standard input.
    pub fn cli_with_input(&self, args: &[&str], stdin: &str) -> Output {
        super::daemon::cli(&self.config_path(), &self.url, args, Some(stdin))
    }

    /// Spawns `penguin-jobs run --no-http` with the app's config against its database,
    /// logging to `log` in the scratch directory ([`Self::log`]).
    pub fn spawn_daemon(&self, log: &str) -> super::daemon::DaemonProcess {
        spawn_daemon(&self.config_path(), &self.url, &self.dir.path().join(log))
    }

    /// What a spawned daemon logged to `log` so far.
    pub fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(log)).unwrap_or_default()
    }

    /// Enqueues `job`: its id.
    pub async fn enqueue(&self, job: &NewJob) -> i64 {
        queue::enqueue(&self.pool, job).await.expect("enqueue")
    }

    /// Enqueues `jobs` in statements of at most 1000 jobs.
    pub async fn enqueue_many(&self, jobs: &[NewJob]) {
        let mut conn = self.pool.acquire().await.unwrap();
        for chunk in jobs.chunks(1000) {
            queue::enqueue_many(&mut conn, chunk)
                .await
                .expect("enqueue many");
        }
    }

    /// Job `id`; panics if there is no such row.
    pub async fn job(&self, id: i64) -> JobRow {
        self.try_job(id)
            .await
            .unwrap_or_else(|| panic!("no job {id} in penguin.jobs"))
    }

    /// Job `id`, if its row exists in `penguin.jobs`.
    pub async fn try_job(&self, id: i64) -> Option<JobRow> {
        match queue::get_job(&self.pool, id).await {
            // a job in the dead letters is no longer in penguin.jobs
            Ok(job) if job.dead_letter.is_some() => None,
            Ok(job) => Some(job.into()),
            Err(queue::Error::NotFound { .. }) => None,
            Err(e) => panic!("read job {id}: {e}"),
        }
    }

    /// The newest dead letter; panics if there is none.
    pub async fn newest_dead_letter(&self) -> DeadLetter {
        let filter = queue::DeadLetterFilter {
            limit: 1,
            ..Default::default()
        };
        let mut newest = queue::list_dead_letters(&self.pool, &filter).await.unwrap();
        newest.pop().expect("a dead letter")
    }

    /// The latest dead letter of job `id`; panics if it has none.
    pub async fn dead_letter(&self, id: i64) -> DeadLetter {
        sqlx::query_as(
            "select * from penguin.dead_letters where job_id = $1 order by dead_at desc limit 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .expect("read dead letter")
        .unwrap_or_else(|| panic!("job {id} has no dead letter"))
    }

    /// Counts with a query returning one bigint.
    pub async fn count(&self, sql: &str) -> i64 {
        super::daemon::count(&self.pool, sql).await
    }

    /// Waits until `sql` (a boolean query) is true; panics naming `what` after `limit`.
    /// Returns how long it waited.
    pub async fn wait_for(&self, sql: &str, limit: Duration, what: &str) -> Duration {
        wait_for(&self.pool, sql, limit, what).await
    }

    /// Waits until job `id` is in `state`; panics with its status after [`WAIT`].
    pub async fn wait_for_state(&self, id: i64, state: JobState) {
        let reached = super::poll_until(WAIT, async || {
            queue::job_status(&self.pool, id)
                .await
                .unwrap()
                .is_some_and(|s| s.state == state.as_str())
        })
        .await;
        if reached.is_none() {
            let status = queue::job_status(&self.pool, id).await.unwrap();
            panic!("job {id} is not {state} after {WAIT:?}: {status:?}");
        }
    }

    /// Waits until job `id` is dead-lettered (at most [`WAIT`]): its dead letter.
    pub async fn wait_for_dead_letter(&self, id: i64) -> DeadLetter {
        self.wait_for(
            &format!("select exists (select 1 from penguin.dead_letters where job_id = {id})"),
            WAIT,
            &format!("job {id} dead-lettered"),
        )
        .await;
        self.dead_letter(id).await
    }

    /// Waits until job `id` is final: completed, cancelled or dead-lettered (at most
    /// `limit`).
    pub async fn wait_for_finished(&self, id: i64, limit: Duration) {
        let finished = super::poll_until(limit, async || {
            queue::job_status(&self.pool, id)
                .await
                .unwrap()
                .is_some_and(|s| s.is_final())
        })
        .await;
        if finished.is_none() {
            let status = queue::job_status(&self.pool, id).await.unwrap();
            panic!("job {id} is not finished after {limit:?}: {status:?}");
        }
    }

    /// Waits until at least `n` jobs of `kind` are final: completed, cancelled or
    /// dead-lettered (at most `limit`).
    pub async fn wait_for_kind_finished(&self, kind: &str, n: i64, limit: Duration) {
        self.wait_for(
            &format!(
                "select (select count(*) from penguin.jobs where kind = '{kind}' and state in ('completed', 'cancelled'))
                      + (select count(*) from penguin.dead_letters where kind = '{kind}') >= {n}"
            ),
            limit,
            &format!("{n} {kind} job(s) finished"),
        )
        .await;
    }

    /// Waits until no live job (available, scheduled, running or retryable) is left; panics
    /// after [`DRAIN`] listing the jobs still live.
    pub async fn drain(&self) {
        let live: Vec<String> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_live())
            .map(|s| format!("'{s}'"))
            .collect();
        let live = format!("from penguin.jobs where state in ({})", live.join(", "));
        let count = format!("select count(*) {live}");
        let drained = super::poll_until(DRAIN, async || self.count(&count).await == 0).await;
        if drained.is_none() {
            let left: Vec<(i64, String, String, i32)> = sqlx::query_as(&format!(
                "select id, kind, state, attempt {live} order by id limit 20"
            ))
            .fetch_all(&self.pool)
            .await
            .unwrap();
            panic!(
                "the queue did not drain within {DRAIN:?}: {} live job(s) left; the first (id, kind, state, attempt): {left:?}",
                self.count(&count).await
            );
        }
    }
}
