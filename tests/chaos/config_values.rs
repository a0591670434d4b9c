//! Experiment f: extreme config values. Every case is a `jobs.toml` given to the real
//! binary (`run --no-http`): either the daemon refuses to start, at once, with an error
//! naming the key (and never a panic), or it starts and works (a `noop` job enqueued with
//! `penguin.enqueue` completes, and SIGTERM ends it with exit 0). The CLI's time arguments
//! get the same treatment (`enqueue --in 1000000y` was a panic, exit 101).
//!
//! The error cases share one database and run all at once (each fails within
//! milliseconds, before any work); each working case gets a fresh database of its own.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support;

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");

/// How long a refused config may take to stop the daemon.
const ERROR_LIMIT: Duration = Duration::from_secs(10);
/// How long a working daemon may take to complete its job, and to stop on SIGTERM.
const WORK_LIMIT: Duration = Duration::from_secs(30);

/// What a config must do.
enum Expect {
    /// Exit non-zero with this text (the key at fault) in stderr.
    Error(&'static str),
    /// Start, run a `noop` job, stop cleanly on SIGTERM.
    Works,
}

struct Case {
    name: &'static str,
    toml: String,
    expect: Expect,
}

fn error(name: &'static str, toml: &str, key: &'static str) -> Case {
    Case {
        name,
        toml: toml.to_string(),
        expect: Expect::Error(key),
    }
}

fn works(name: &'static str, toml: &str) -> Case {
    Case {
        name,
        toml: toml.to_string(),
        expect: Expect::Works,
    }
}

/// 1000000 years: more than `Duration` arithmetic, chrono and PostgreSQL can add to now.
const HUGE: &str = "\"1000000y\"";

fn cases() -> Vec<Case> {
    let huge = |table: &str, key: &str| format!("[{table}]\n{key} = {HUGE}\n");
    Vec::from([
        // every duration key at 1000000y
        error(
            "lease huge",
            &huge("daemon", "lease"),
            "daemon.lease must be between 3s and 1h, got 1000000y",
        ),
        error(
            "poll huge",
            &huge("daemon", "poll_interval"),
            "daemon.poll_interval must be between",
        ),
        error(
            "rescue huge",
            &huge("daemon", "rescue_interval"),
            "daemon.rescue_interval must be between",
        ),
        error(
            "grace huge",
            &huge("daemon", "shutdown_grace"),
            "daemon.shutdown_grace must be between",
        ),
        error(
            "unknown kind grace huge",
            &huge("daemon", "unknown_kind_grace"),
            "daemon.unknown_kind_grace must be between",
        ),
        error(
            "timeout huge",
            &huge("kinds.noop", "timeout"),
            "kinds.\"noop\".timeout must be between",
        ),
        error(
            "fixed backoff huge",
            &format!(
                "[kinds.\"http.request\"]\nbackoff = {{ strategy = \"fixed\", base = {HUGE}, max = {HUGE} }}\n"
            ),
            "kinds.\"http.request\".backoff.base must be between 1ms and 365d, got 1000000y",
        ),
        error(
            "backoff max huge",
            &format!(
                "[kinds.noop]\nbackoff = {{ strategy = \"exponential\", base = \"1s\", max = {HUGE} }}\n"
            ),
            "kinds.\"noop\".backoff.max must be between 1ms and 365d, got 1000000y",
        ),
        error(
            "retention completed huge",
            &huge("retention", "completed"),
            "retention.completed must be between 0s and 100y",
        ),
        error(
            "retention dead letters huge",
            &huge("retention", "dead_letters"),
            "retention.dead_letters must be between",
        ),
        error(
            "retention inbound huge",
            &huge("retention", "inbound_events"),
            "retention.inbound_events must be between",
        ),
        error(
            "breaker recovery huge",
            &huge("providers.stripe.circuit_breaker", "recovery_timeout"),
            "providers.stripe.circuit_breaker.recovery_timeout must be between",
        ),
        error(
            "breaker period huge",
            &huge("providers.sendgrid.circuit_breaker", "monitoring_period"),
            "providers.sendgrid.circuit_breaker.monitoring_period must be between",
        ),
        error(
            "refresh ahead huge",
            &huge("oauth", "refresh_ahead"),
            "oauth.refresh_ahead must be between",
        ),
        error(
            "key overlap huge",
            &huge("api_keys", "overlap"),
            "api_keys.overlap must be between",
        ),
        error(
            "duration beyond humantime",
            "[daemon]\nlease = \"99999999999999999999y\"\n",
            "lease = \"99999999999999999999y\"",
        ),
        // zero where zero makes no sense
        error(
            "lease zero",
            "[daemon]\nlease = \"0s\"\n",
            "daemon.lease must be between",
        ),
        error(
            "poll zero",
            "[daemon]\npoll_interval = \"0s\"\n",
            "daemon.poll_interval must be between",
        ),
        error(
            "timeout zero",
            "[kinds.noop]\ntimeout = \"0s\"\n",
            "kinds.\"noop\".timeout must be between",
        ),
        error(
            "backoff base zero",
            "[kinds.noop]\nbackoff = { strategy = \"linear\", base = \"0s\", max = \"1s\" }\n",
            "kinds.\"noop\".backoff.base must be between",
        ),
        error(
            "breaker recovery zero",
            "[providers.posthog.circuit_breaker]\nrecovery_timeout = \"0s\"\n",
            "recovery_timeout must be between",
        ),
        error(
            "concurrency zero",
            "[queues.default]\nconcurrency = 0\n",
            "queues.default.concurrency must be between",
        ),
        error(
            "flush batch zero",
            "[daemon]\nflush_batch = 0\n",
            "daemon.flush_batch must be between",
        ),
        error(
            "prune batch zero",
            "[maintenance]\nprune_batch = 0\n",
            "maintenance.prune_batch must be between",
        ),
        error(
            "attempts zero",
            "[kinds.noop]\nmax_attempts = 0\n",
            "kinds.\"noop\".max_attempts must be at least 1",
        ),
        error(
            "catch up zero",
            "[schedules.x]\ncron = \"* * * * *\"\nkind = \"noop\"\nmax_catch_up = 0\n",
            "schedules.x.max_catch_up",
        ),
        error(
            "breaker threshold zero",
            "[providers.stripe.circuit_breaker]\nfailure_threshold = 0\n",
            "failure_threshold must be between",
        ),
        // negative numbers and other wrong shapes
        error(
            "negative duration",
            "[daemon]\npoll_interval = \"-1s\"\n",
            "poll_interval = \"-1s\"",
        ),
        error(
            "duration as a number",
            "[daemon]\nlease = 30\n",
            "lease = 30",
        ),
        error(
            "negative batch",
            "[queues.default]\nbatch = -1\n",
            "batch = -1",
        ),
        error(
            "negative attempts",
            "[kinds.noop]\nmax_attempts = -5\n",
            "max_attempts = -5",
        ),
        error(
            "negative rate",
            "[providers.stripe.rate_limit]\nper_second = -1\n",
            "providers.stripe.rate_limit.per_second",
        ),
        error(
            "nan rate",
            "[providers.mailgun.rate_limit]\nper_minute = nan\n",
            "providers.mailgun.rate_limit.per_minute",
        ),
        error(
            "infinite fee",
            "[providers.stripe]\napplication_fee_percent = inf\n",
            "providers.stripe.application_fee_percent",
        ),
        // huge integers
        error(
            "concurrency i64 max",
            "[queues.default]\nconcurrency = 9223372036854775807\n",
            "queues.default.concurrency must be between",
        ),
        error(
            "batch huge",
            "[queues.default]\nbatch = 4294967296\n",
            "queues.default.batch must be between",
        ),
        error(
            "connections u32 max",
            "[database]\nmax_connections = 4294967295\n",
            "database.max_connections must be between",
        ),
        error(
            "connections beyond u32",
            "[database]\nmax_connections = 99999999999\n",
            "max_connections = 99999999999",
        ),
        error(
            "body beyond i64",
            "[http]\nmax_body = 18446744073709551615\n",
            "max_body = 18446744073709551615",
        ),
        error(
            "priority beyond i16",
            "[kinds.noop]\npriority = 99999\n",
            "priority = 99999",
        ),
        error(
            "catch up huge",
            "[schedules.x]\ncron = \"* * * * *\"\nkind = \"noop\"\nmax_catch_up = 4294967295\n",
            "schedules.x.max_catch_up",
        ),
        // empty strings, bad cron, bad names
        error("empty listen", "[http]\nlisten = \"\"\n", "http.listen"),
        error(
            "empty queue",
            "[kinds.noop]\nqueue = \"\"\n",
            "kinds.\"noop\".queue",
        ),
        error(
            "empty kind",
            "[kinds.\"\"]\nmax_attempts = 3\n",
            "kinds.\"\": not a known job kind",
        ),
        error(
            "empty cron",
            "[schedules.x]\ncron = \"\"\nkind = \"noop\"\n",
            "schedules.x.cron",
        ),
        error(
            "bad cron",
            "[schedules.x]\ncron = \"61 * * * *\"\nkind = \"noop\"\n",
            "schedules.x.cron",
        ),
        error(
            "bad prune cron",
            "[maintenance]\nprune_cron = \"every minute\"\n",
            "maintenance.prune_cron",
        ),
        error(
            "empty refresh cron",
            "[oauth]\nrefresh_cron = \"\"\n",
            "oauth.refresh_cron",
        ),
        error(
            "bad timezone",
            "[schedules.x]\ncron = \"* * * * *\"\nkind = \"noop\"\ntimezone = \"Mars/Olympus\"\n",
            "schedules.x.timezone",
        ),
        error(
            "schedule of unknown kind",
            "[schedules.x]\ncron = \"* * * * *\"\nkind = \"no.such.kind\"\n",
            "schedules.x",
        ),
        error(
            "empty base url",
            "[providers.sendgrid]\nbase_url = \"\"\n",
            "providers.sendgrid.base_url",
        ),
        error(
            "long queue name",
            &format!("[queues.{}]\nconcurrency = 1\n", "q".repeat(65)),
            "queues: name",
        ),
        // unknown keys and tables
        error("unknown key", "[daemon]\nleese = \"30s\"\n", "leese"),
        error("unknown table", "[bogus]\nx = 1\n", "bogus"),
        error(
            "unknown backoff key",
            "[kinds.noop]\nbackoff = { strategy = \"fixed\", base = \"1s\", max = \"1s\", cap = \"1s\" }\n",
            "cap",
        ),
        error(
            "unknown strategy",
            "[kinds.noop]\nbackoff = { strategy = \"fibonacci\", base = \"1s\", max = \"1s\" }\n",
            "fibonacci",
        ),
        // NUL
        error(
            "nul in listen",
            "[http]\nlisten = \"127.0.0.1:8080\\u0000\"\n",
            "http.listen: contains a NUL",
        ),
        error(
            "nul in payload",
            "[schedules.probe]\ncron = \"* * * * *\"\nkind = \"noop\"\npayload = { note = \"a\\u0000b\" }\n",
            "schedules.probe.payload.note: contains a NUL",
        ),
        error(
            "nul in cron",
            "[maintenance]\nprune_cron = \"* * * * *\\u0000\"\n",
            "maintenance.prune_cron: contains a NUL",
        ),
        error(
            "raw nul",
            "[http]\nlisten = \"127.0.0.1:8080\0\"\n",
            "line 2: listen: a raw NUL byte",
        ),
        // extreme values the daemon accepts: it must work with them
        works("defaults", ""),
        works(
            "every duration at its maximum",
            "[daemon]\nlease = \"1h\"\npoll_interval = \"1h\"\nrescue_interval = \"1h\"\n\
             shutdown_grace = \"1d\"\nunknown_kind_grace = \"365d\"\n\
             [kinds.noop]\ntimeout = \"1d\"\nbackoff = { strategy = \"fixed\", base = \"365d\", max = \"365d\" }\n\
             [kinds.\"http.request\"]\nbackoff = { strategy = \"exponential\", base = \"365d\", max = \"365d\" }\n\
             [retention]\ncompleted = \"100y\"\ndead_letters = \"100y\"\ninbound_events = \"100y\"\n\
             [providers.stripe.circuit_breaker]\nrecovery_timeout = \"7d\"\nmonitoring_period = \"7d\"\n\
             [oauth]\nrefresh_ahead = \"30d\"\n[api_keys]\noverlap = \"365d\"\n",
        ),
        works(
            "every duration at its minimum",
            "[daemon]\nlease = \"3s\"\npoll_interval = \"1ms\"\nrescue_interval = \"10ms\"\n\
             shutdown_grace = \"0s\"\nunknown_kind_grace = \"0s\"\n\
             [kinds.\"http.request\"]\ntimeout = \"1ms\"\nbackoff = { strategy = \"linear\", base = \"1ms\", max = \"1ms\" }\n\
             [retention]\ncompleted = \"0s\"\ndead_letters = \"0s\"\ninbound_events = \"0s\"\n\
             [providers.stripe.circuit_breaker]\nrecovery_timeout = \"1ms\"\nmonitoring_period = \"1ms\"\n\
             [oauth]\nrefresh_ahead = \"1s\"\n[api_keys]\noverlap = \"1s\"\n",
        ),
        works(
            "largest pool and batches",
            "[queues.default]\nconcurrency = 100000\nbatch = 5000\n\
             [daemon]\nflush_batch = 10000\n[maintenance]\nprune_batch = 100000\n",
        ),
        works(
            "largest connection pool",
            "[database]\nmax_connections = 10000\n",
        ),
        works(
            "largest integers",
            "[kinds.noop]\nmax_attempts = 4294967295\npriority = -32768\n\
             [http]\nmax_body = 67108864\n\
             [providers.stripe.rate_limit]\nper_second = 1e9\nburst = 1e9\n\
             [providers.stripe.circuit_breaker]\nfailure_threshold = 10000\n",
        ),
        works(
            "longest names and unicode payload",
            &format!(
                "[kinds.noop]\nqueue = \"{q}\"\n[queues.{q}]\nconcurrency = 1\n\
                 [schedules.{s}]\ncron = \"0 0 1 1 *\"\nkind = \"noop\"\n\
                 payload = {{ text = \"p\u{e9}ngu\u{ef}n \u{1f427} \\u00e9\" }}\n",
                q = "q".repeat(64),
                s = "s".repeat(64)
            ),
        ),
        works(
            "per-second schedule catching up 1000",
            "[schedules.tick]\ncron = \"* * * * * *\"\nkind = \"noop\"\nmissed = \"catch_up\"\nmax_catch_up = 1000\n",
        ),
    ])
}

/// A directory with the case's `jobs.toml`, removed afterwards.
struct Workdir(PathBuf);

impl Workdir {
    fn new(toml: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "penguin-jobs-chaos-config-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("jobs.toml"), toml).unwrap();
        Self(dir)
    }

    fn command(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(self.0.join("jobs.toml"))
            .args(args)
            .current_dir(&self.0)
            .env("DATABASE_URL", url)
            .env("RUST_LOG", "info")
            // an error's backtrace (symbolised in a debug build) costs more than the run
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE");
        cmd
    }

    fn spawn(&self, url: &str) -> Child {
        self.command(url, &["run", "--no-http"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path()).unwrap())
            .spawn()
            .unwrap()
    }

    fn log_path(&self) -> PathBuf {
        self.0.join("stderr.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for `child` to exit within `limit`; kills it (and returns `None`) past that.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs one refused config: how long the daemon took to exit, or how it failed the
/// expectation.
async fn run_error_case(
    work: &Workdir,
    child: &mut Child,
    spawned: Instant,
    key: &str,
) -> Result<Duration, String> {
    let status = wait_exit(child, ERROR_LIMIT.saturating_sub(spawned.elapsed())).await;
    let took = spawned.elapsed();
    let stderr = work.log();
    match status {
        None => Err(format!(
            "still running after {ERROR_LIMIT:?}; expected an error naming {key:?}\n{stderr}"
        )),
        Some(s) if s.success() => Err(format!(
            "exited 0; expected an error naming {key:?}\n{stderr}"
        )),
        Some(_) if stderr.contains("panicked") => Err(format!("panicked:\n{stderr}")),
        Some(_) if !stderr.contains(key) => Err(format!("error does not name {key:?}:\n{stderr}")),
        Some(s) if s.code() == Some(101) || s.code().is_none() => {
            Err(format!("ended by {s:?}, not a clean error exit:\n{stderr}"))
        }
        Some(_) => Ok(took),
    }
}

/// Error cases run this many at a time (2 cores).
const PARALLEL_ERRORS: usize = 8;

/// Runs one accepted config on a fresh database: a noop job completes, SIGTERM exits 0.
async fn run_working_case(case: &Case) -> Result<(), String> {
    let db = support::test_db().await;
    let work = Workdir::new(&case.toml);
    let mut child = work.spawn(&db.url);
    let worked = work_one_job(&db.pool, &mut child).await;
    if let Err(e) = worked {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{e}:\n{}", work.log()));
    }
    sigterm(&child);
    let status = wait_exit(&mut child, WORK_LIMIT).await;
    let stderr = work.log();
    match status {
        None => Err(format!(
            "did not stop within {WORK_LIMIT:?} of SIGTERM:\n{stderr}"
        )),
        Some(s) if !s.success() => Err(format!("SIGTERM exit {s:?}:\n{stderr}")),
        Some(_) if stderr.contains("panicked") => Err(format!("panicked:\n{stderr}")),
        Some(_) => Ok(()),
    }
}

/// Enqueues a `noop` job once the daemon registered its kinds, and waits for it to
/// complete (or be deleted at completion, `retention.completed = "0s"`) with nothing
/// dead-lettered.
async fn work_one_job(pool: &sqlx::PgPool, child: &mut Child) -> Result<(), String> {
    poll(
        pool,
        child,
        "select exists (select 1 from penguin.kinds where kind = 'noop')",
        "the daemon registers its kinds",
    )
    .await?;
    let id: i64 = sqlx::query_scalar("select penguin.enqueue('noop', '{\"chaos\": \"config\"}')")
        .fetch_one(pool)
        .await
        .map_err(|e| format!("enqueue: {e}"))?;
    poll(
        pool,
        child,
        &format!(
            "select not exists (select 1 from penguin.jobs where id = {id} and state <> 'completed')"
        ),
        "the noop job completes",
    )
    .await?;
    let dead: i64 = sqlx::query_scalar("select count(*) from penguin.dead_letters")
        .fetch_one(pool)
        .await
        .map_err(|e| format!("count dead letters: {e}"))?;
    if dead > 0 {
        return Err(format!("{dead} dead letters"));
    }
    Ok(())
}

/// Waits until the boolean query `sql` is true, while the daemon runs, for [`WORK_LIMIT`].
async fn poll(pool: &sqlx::PgPool, child: &mut Child, sql: &str, what: &str) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let done: bool = sqlx::query_scalar(sql)
            .fetch_one(pool)
            .await
            .map_err(|e| format!("waiting until {what}: {e}"))?;
        if done {
            return Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("daemon exited ({status:?}) before {what}"));
        }
        if start.elapsed() > WORK_LIMIT {
            return Err(format!("not done after {WORK_LIMIT:?}: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CLI call with time arguments that must be refused cleanly (exit 1 or 2, text in stderr).
struct CliCase {
    args: Vec<&'static str>,
    stderr: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_config_values_are_a_clear_startup_error_or_a_working_daemon() {
    let started = Instant::now();
    let cases = cases();
    let shared = support::test_db().await;

    // error cases: a few at a time, on one database
    let mut failures = Vec::new();
    let refused: Vec<(&Case, &str)> = cases
        .iter()
        .filter_map(|c| match c.expect {
            Expect::Error(key) => Some((c, key)),
            Expect::Works => None,
        })
        .collect();
    let errors = refused.len();
    let mut slowest = Duration::ZERO;
    for chunk in refused.chunks(PARALLEL_ERRORS) {
        let running: Vec<_> = chunk
            .iter()
            .map(|(case, key)| {
                let work = Workdir::new(&case.toml);
                let child = work.spawn(&shared.url);
                (case, key, work, child, Instant::now())
            })
            .collect();
        for (case, key, work, mut child, spawned) in running {
            match run_error_case(&work, &mut child, spawned, key).await {
                Ok(took) => slowest = slowest.max(took),
                Err(e) => failures.push(format!("[{}] {e}", case.name)),
            }
        }
    }

    // working cases: each on its own database, all at once
    let working: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Works))
        .collect();
    let results = futures::future::join_all(working.iter().map(|c| run_working_case(c))).await;
    for (case, result) in working.iter().zip(results) {
        if let Err(e) = result {
            failures.push(format!("[{}] {e}", case.name));
        }
    }

    // the CLI's durations and times: `enqueue noop --payload {}` plus these options, and
    // what stderr must name
    const ENQUEUE: [&str; 4] = ["enqueue", "noop", "--payload", "{}"];
    let enqueue = |rest: &[&'static str]| -> Vec<&'static str> { [&ENQUEUE[..], rest].concat() };
    let cli_cases = [
        CliCase {
            args: enqueue(&["--in", "1000000y"]),
            stderr: "must be between 0s and 100y, got 1000000y",
        },
        CliCase {
            args: enqueue(&["--in", "99999999999999999999y"]),
            stderr: "--in",
        },
        CliCase {
            args: enqueue(&["--in=-5s"]),
            stderr: "--in",
        },
        CliCase {
            args: enqueue(&["--run-at", "300000-01-01T00:00:00Z"]),
            stderr: "--run-at",
        },
        CliCase {
            args: enqueue(&["--run-at", "+300000-01-01T00:00:00Z"]),
            stderr: "--run-at",
        },
        CliCase {
            args: enqueue(&["--run-at", "9999-12-31T23:59:59Z"]),
            stderr: "must be between 1970-01-01T00:00:00Z and",
        },
        CliCase {
            args: enqueue(&["--run-at", "0001-01-01T00:00:00Z"]),
            stderr: "must be between 1970-01-01T00:00:00Z and",
        },
        CliCase {
            args: vec!["dlq", "purge", "--older-than", "1000000y"],
            stderr: "must be between 0s and 100y",
        },
        CliCase {
            args: enqueue(&["--priority", "99999"]),
            stderr: "--priority",
        },
        CliCase {
            args: enqueue(&["--max-attempts", "99999999999"]),
            stderr: "--max-attempts",
        },
    ];
    let cli_dir = Workdir::new("");
    let migrate = cli_dir.command(&shared.url, &["migrate"]).output().unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    for c in &cli_cases {
        let out = cli_dir.command(&shared.url, &c.args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        if !matches!(code, Some(1 | 2)) || !stderr.contains(c.stderr) || stderr.contains("panicked")
        {
            failures.push(format!(
                "[cli {}] exit {code:?}, expected 1 or 2 with {:?}:\n{stderr}",
                c.args.join(" "),
                c.stderr
            ));
        }
    }
    // the largest delays accepted do enqueue
    for args in [
        enqueue(&["--in", "100y"]),
        enqueue(&["--run-at", "2100-01-01T00:00:00Z"]),
    ] {
        let out = cli_dir.command(&shared.url, &args).output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "[cli {}] refused: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let far: i64 = sqlx::query_scalar(
        "select count(*) from penguin.jobs where run_at > now() + interval '70 years'",
    )
    .fetch_one(&shared.pool)
    .await
    .unwrap();
    if far != 2 {
        failures.push(format!("[cli] {far} far-future jobs stored, expected 2"));
    }

    println!(
        "chaos f (config values): {} cases, {errors} refused at start (slowest exit {} ms), {} working daemons, {} CLI refusals; {} failed; {:.1}s",
        cases.len(),
        slowest.as_millis(),
        working.len(),
        cli_cases.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
