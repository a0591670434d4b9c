//! The command line: one function per subcommand. Commands read and write through
//! `queue/` and the registry; they hold no SQL of their own.
//!
//! Must never print a secret (database URLs are redacted) and never panic on bad input:
//! every refusal is one clear line and a non-zero exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::{self, CLI_DELAY_RANGE, Config, redact_url};
use crate::embedded_pg::EmbeddedPostgres;
use crate::jobs::{Deps, Kinds, Registry};
use crate::queue::{self, JobFilter, NewJob};
use crate::scheduler;

mod credentials;
pub use credentials::{KeysCommand, OauthCommand, SecretsCommand};

/// Durable PostgreSQL job queue and worker daemon for PenguinMails' integrations.
///
/// With no database configured (no DATABASE_URL, no [database] url), `run` starts a
/// private PostgreSQL under the data directory (./.penguin-jobs/postgres by default).
#[derive(Debug, Parser)]
#[command(name = "penguin-jobs", version, about, long_about = None)]
pub struct Cli {
    /// Config file. Default ./jobs.toml; a missing default file means built-in defaults.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the worker pools until SIGTERM/SIGINT (applies migrations first).
    Run(RunArgs),
    /// Apply database migrations and write every known kind's defaults to penguin.kinds.
    Migrate,
    /// Enqueue one job and print its id.
    Enqueue(EnqueueArgs),
    /// Inspect and act on jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// List, pause and resume cron schedules.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Connect OAuth accounts and list connections.
    #[command(subcommand)]
    Oauth(OauthCommand),
    /// Provider API keys: set, stage, list, rotate (keys are read from standard input).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The master key: generate one, see which keys wrap the stored secrets, rotate it.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The append-only audit log of credential events, newest first.
    Audit {
        /// Only events about this subject (connection, key or state id).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Open alerts (revoked grants, keys that failed their test), newest first.
    Alerts {
        /// Acknowledge this alert instead of listing.
        #[arg(long, value_name = "ID")]
        ack: Option<i64>,
        #[arg(long)]
        json: bool,
    },
    /// Job counts per queue and state.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Provider health: credentials refused (status error), circuit breaker, last error.
    Integrations {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not apply migrations at start (the schema must already be current).
    #[arg(long)]
    pub no_migrate: bool,
    /// Do not serve the HTTP shim ([http] listen): workers and schedules only.
    #[arg(long)]
    pub no_http: bool,
    /// Run no worker pools: the HTTP shim and the schedules only (jobs wait for another
    /// daemon's workers).
    #[arg(long, conflicts_with = "no_http")]
    pub no_workers: bool,
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// Job kind, e.g. noop or http.request.
    pub kind: String,
    /// Payload as JSON.
    #[arg(long, default_value = "{}")]
    pub payload: String,
    /// Queue (default: the kind's queue).
    #[arg(long)]
    pub queue: Option<String>,
    /// Earliest start, RFC 3339 (e.g. 2026-12-01T09:00:00Z), between 1970 and 100 years
    /// from now.
    #[arg(long, conflicts_with = "delay", value_parser = parse_run_at)]
    pub run_at: Option<DateTime<Utc>>,
    /// Earliest start as a delay from now (e.g. 30s, 5m), at most 100y.
    #[arg(long = "in", value_name = "DURATION", value_parser = parse_delay)]
    pub delay: Option<Duration>,
    /// Lower runs first (default: the kind's priority).
    #[arg(long, allow_hyphen_values = true)]
    pub priority: Option<i16>,
    /// Attempts before dead-lettering (default: the kind's).
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// At most one live job per key; prints the live job's id if one exists.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// Tenant (UUID).
    #[arg(long)]
    pub tenant: Option<uuid::Uuid>,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Newest jobs first.
    List {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        queue: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job with its payload, errors and result.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a live job.
    Cancel { id: i64 },
    /// Run a job again now (a finished one with fresh attempts).
    Retry { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Newest dead letters first.
    List {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its whole error history.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Enqueue a dead letter again as a new job with fresh attempts.
    Replay {
        /// Dead letter id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Replay every dead letter not replayed yet.
        #[arg(long)]
        all: bool,
        /// With --all: only this kind.
        #[arg(long, requires = "all")]
        kind: Option<String>,
    },
    /// Delete dead letters older than a duration.
    Purge {
        /// Age (e.g. 30d), at most 100y.
        #[arg(long, value_name = "DURATION", value_parser = parse_delay)]
        older_than: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// Every schedule with its next and last fire.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop firing a schedule (fires while paused are passed over, not caught up).
    Pause { name: String },
    /// Fire a paused schedule again.
    Resume { name: String },
}

/// A delay or age from now: a humantime duration within [`CLI_DELAY_RANGE`], so that
/// `now ± delay` fits chrono and PostgreSQL.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write e.g. 30s, 5m, 2h, 30d)"))?;
    config::check_duration_range("the duration", d, CLI_DELAY_RANGE)?;
    Ok(d)
}

/// An RFC 3339 instant between 1970 and [`CLI_DELAY_RANGE`]'s maximum from now (PostgreSQL's
/// `timestamptz` and chrono hold far more; beyond that a job would never run anyway).
fn parse_run_at(s: &str) -> Result<DateTime<Utc>, String> {
    let at: DateTime<Utc> = s
        .trim()
        .parse()
        .map_err(|e| format!("{e} (write RFC 3339, e.g. 2026-12-01T09:00:00Z)"))?;
    let latest = chrono::Duration::from_std(CLI_DELAY_RANGE.max)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if at < DateTime::UNIX_EPOCH || at > latest {
        return Err(format!(
            "must be between 1970-01-01T00:00:00Z and {} (100 years from now)",
            latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    Ok(at)
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run(args) => run_daemon(config, args).await,
        Command::Migrate => {
            let (pool, _) = connect(&config, Embedded::Attach).await?;
            let registry = registry(&config)?;
            migrate(&pool, &registry).await?;
            println!(
                "migrations applied; {} kinds registered",
                registry.kinds().len()
            );
            Ok(())
        }
        Command::Enqueue(args) => enqueue(&config, args).await,
        Command::Jobs(cmd) => jobs(&config, cmd).await,
        Command::Dlq(cmd) => dlq(&config, cmd).await,
        Command::Schedules(cmd) => schedules(&config, cmd).await,
        Command::Integrations { json } => {
            let (pool, _) = connect(&config, Embedded::Attach).await?;
            let rows = queue::integrations::list_integrations(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if rows.is_empty() {
                println!("no provider has been called yet");
            }
            println!(
                "{:<12} {:<7} {:<10} {:>8}  {:<25} LAST ERROR",
                "PROVIDER", "STATUS", "BREAKER", "FAILURES", "LAST SUCCESS"
            );
            for r in rows {
                let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "-".into())
                };
                let last_error = match (&r.last_error_class, &r.last_error) {
                    (Some(c), Some(m)) => format!("{} [{c}] {m}", when(r.last_error_at)),
                    _ => "-".into(),
                };
                println!(
                    "{:<12} {:<7} {:<10} {:>8}  {:<25} {}",
                    r.provider,
                    r.status,
                    r.breaker,
                    r.failures,
                    when(r.last_success_at),
                    last_error
                );
            }
            Ok(())
        }
        Command::Oauth(cmd) => credentials::oauth(&config, cmd).await,
        Command::Keys(cmd) => credentials::keys(&config, cmd).await,
        Command::Secrets(cmd) => credentials::secrets(&config, cmd).await,
        Command::Audit {
            subject,
            limit,
            json,
        } => credentials::audit(&config, subject, limit, json).await,
        Command::Alerts { ack, json } => credentials::alerts(&config, ack, json).await,
        Command::Stats { json } => {
            let (pool, _) = connect(&config, Embedded::Attach).await?;
            let stats = queue::stats(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{:<20} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>6}",
                    "QUEUE",
                    "AVAILABLE",
                    "SCHEDULED",
                    "RUNNING",
                    "RETRYABLE",
                    "COMPLETED",
                    "CANCELLED",
                    "DEAD"
                );
                for s in stats {
                    println!(
                        "{:<20} {:>10} {:>10} {:>8} {:>10} {:>10} {:>10} {:>6}",
                        s.queue,
                        s.available,
                        s.scheduled,
                        s.running,
                        s.retryable,
                        s.completed,
                        s.cancelled,
                        s.dead_letters
                    );
                }
                let window = queue::daemons::liveness_window(config.daemon.rescue_interval);
                for w in queue::waiting_kinds(&pool, window).await? {
                    println!(
                        "{} jobs of kind {} wait for a daemon that handles it (due for {}; dead-lettered as unknown_kind after {})",
                        w.jobs,
                        w.kind,
                        humantime::format_duration(std::time::Duration::from_secs(
                            w.oldest_due_secs as u64
                        )),
                        humantime::format_duration(config.daemon.unknown_kind_grace)
                    );
                }
            }
            Ok(())
        }
    }
}

/// The built-in kinds, to check jobs and write `penguin.kinds` (nothing runs).
fn registry(config: &Config) -> anyhow::Result<Kinds> {
    Ok(Kinds::builtin(config)?)
}

async fn migrate<H: ?Sized + crate::jobs::Describe>(
    pool: &PgPool,
    registry: &crate::jobs::Catalog<H>,
) -> anyhow::Result<()> {
    queue::migrate(pool).await.context("applying migrations")?;
    queue::sync_kinds(pool, &registry.kind_defaults())
        .await
        .context("writing kind defaults to penguin.kinds")?;
    Ok(())
}

/// The database of the embedded cluster.
const EMBEDDED_DATABASE: &str = "penguin_jobs";

/// What to do when no database is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Embedded {
    /// Start the embedded cluster under the data directory (`run`).
    Start,
    /// Attach to the embedded cluster a running daemon started (every other command).
    Attach,
}

/// Connects to the configured database, or else to the embedded cluster: started by
/// `run` ([`Embedded::Start`]), attached to by the other commands.
async fn connect(
    config: &Config,
    embedded: Embedded,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    let options = PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(Duration::from_secs(10));
    if let Some(url) = config.database_url()? {
        let pool = options
            .connect(url.expose_secret())
            .await
            .with_context(|| format!("cannot connect to {}", redact_url(&url)))?;
        return Ok((pool, None));
    }
    let dir = config.daemon.data_dir.join("postgres");
    let (admin_url, url, cluster) = if embedded == Embedded::Start {
        let cluster = EmbeddedPostgres::start(&dir).await?;
        tracing::info!(dir = %dir.display(), "started the embedded PostgreSQL (no database configured)");
        (
            cluster.url("postgres"),
            cluster.url(EMBEDDED_DATABASE),
            Some(cluster),
        )
    } else {
        match (
            EmbeddedPostgres::running_url(&dir, "postgres"),
            EmbeddedPostgres::running_url(&dir, EMBEDDED_DATABASE),
        ) {
            (Some(admin), Some(url)) => (admin, url, None),
            _ => bail!(
                "no database configured: set DATABASE_URL or [database] url, or start `penguin-jobs run`, \
                 which runs an embedded PostgreSQL under {}",
                dir.display()
            ),
        }
    };
    // the embedded cluster keeps our data in a database of its own
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url)
        .await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(EMBEDDED_DATABASE)
            .fetch_one(&admin)
            .await?;
    if !exists {
        // a CLI command attaching while the daemon starts may race us to it
        let created = sqlx::query(&format!("create database {EMBEDDED_DATABASE}"))
            .execute(&admin)
            .await;
        match created {
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() || e.code().as_deref() == Some("42P04") => {}
            other => {
                other?;
            }
        }
    }
    admin.close().await;
    let pool = options.connect(&url).await?;
    Ok((pool, cluster))
}

/// After the workers drained, how long the shim may take to close its connections.
const SHIM_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn run_daemon(config: Config, args: RunArgs) -> anyhow::Result<()> {
    crate::process::raise_open_files_limit_logged();
    // every config error before anything starts
    let schedules = scheduler::from_config(&config)?;
    let keyring = crate::secrets::Keyring::from_config(&config)?;
    crate::providers::oauth::Providers::from_config(&config)?.check_secrets()?;
    let check = registry(&config)?;
    for s in &schedules {
        check
            .check(&s.job)
            .map_err(|e| anyhow::anyhow!("schedules.{}: {e}", s.name))?;
    }
    let (pool, cluster) = connect(&config, Embedded::Start).await?;
    let result = async {
        let deps = Deps::new(pool.clone())?.with_keyring(keyring);
        let registry = Arc::new(Registry::builtin(&config, &deps)?);
        if args.no_migrate {
            queue::sync_kinds(&pool, &registry.kind_defaults())
                .await
                .context("writing kind defaults to penguin.kinds (is the schema migrated?)")?;
        } else {
            migrate(&pool, &registry).await?;
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(watch_signals(shutdown.clone()));
        let shim = if args.no_http {
            None
        } else {
            let state = crate::http::AppState::new(&config, pool.clone(), registry.clone())?;
            let listener = tokio::net::TcpListener::bind(&config.http.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on http.listen = {}", config.http.listen)
                })?;
            tracing::info!(listen = %config.http.listen, "HTTP shim listening");
            let max_body = config.http.max_body;
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::http::serve_on(listener, state, max_body, stop).await {
                    tracing::error!(error = %e, "HTTP shim stopped");
                }
            }))
        };
        let cron = tokio::spawn(scheduler::run(pool.clone(), schedules, shutdown.clone()));
        if args.no_workers {
            tracing::info!("no worker pools (--no-workers)");
            shutdown.cancelled().await;
        } else {
            crate::runtime::run(&config, pool.clone(), registry, shutdown).await?;
        }
        let _ = cron.await;
        if let Some(mut shim) = shim {
            // Graceful shutdown waits for open connections to close; a slow or idle client
            // must not hold the daemon's exit (systemd would SIGKILL it). In-flight
            // requests had the whole drain above to finish.
            if tokio::time::timeout(SHIM_DRAIN, &mut shim).await.is_err() {
                tracing::warn!(
                    after = %humantime::format_duration(SHIM_DRAIN),
                    "HTTP clients still connected after shutdown; closing their connections"
                );
                shim.abort();
            }
        }
        anyhow::Ok(())
    }
    .await;
    pool.close().await;
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop().await
    {
        tracing::error!(error = %e, "could not stop the embedded PostgreSQL");
    }
    result
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once (leases will expire and
/// the jobs be rescued).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for running jobs");
    std::process::exit(130);
}

async fn enqueue(config: &Config, args: EnqueueArgs) -> anyhow::Result<()> {
    let payload: serde_json::Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let run_at = match (args.run_at, args.delay) {
        (Some(at), _) => Some(at),
        (None, Some(delay)) => Some(
            chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d))
                .context("--in is too large")?,
        ),
        (None, None) => None,
    };
    let job = NewJob {
        kind: args.kind,
        payload,
        queue: args.queue,
        run_at,
        priority: args.priority,
        max_attempts: args.max_attempts,
        unique_key: args.unique_key,
        tenant_id: args.tenant,
    };
    registry(config)?.check(&job)?;
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let id = queue::enqueue(&pool, &job).await.map_err(user_error)?;
    println!("{id}");
    Ok(())
}

fn user_error(e: queue::Error) -> anyhow::Error {
    match e.user_message() {
        Some(m) => anyhow::anyhow!(m),
        None => e.into(),
    }
}

async fn jobs(config: &Config, cmd: JobsCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        JobsCommand::List {
            state,
            kind,
            queue: q,
            limit,
            json,
        } => {
            let filter = JobFilter {
                state,
                kind,
                queue: q,
                limit,
            };
            let jobs = queue::list_jobs(&pool, &filter).await.map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
                return Ok(());
            }
            println!(
                "{:>10} {:<12} {:<20} {:<16} {:>8} {:>7}  RUN_AT",
                "ID", "STATE", "KIND", "QUEUE", "PRIORITY", "ATTEMPT"
            );
            for j in jobs {
                println!(
                    "{:>10} {:<12} {:<20} {:<16} {:>8} {:>3}/{:<3}  {}",
                    j.id,
                    j.state,
                    j.kind,
                    j.queue,
                    j.priority,
                    j.attempt,
                    j.max_attempts,
                    j.run_at.to_rfc3339()
                );
            }
        }
        JobsCommand::Show { id, json } => {
            let job = queue::get_job(&pool, id).await.map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_record(&serde_json::to_value(&job)?);
            }
        }
        JobsCommand::Cancel { id } => {
            queue::cancel_job(&pool, id).await.map_err(user_error)?;
            println!("job {id} cancelled");
        }
        JobsCommand::Retry { id } => {
            queue::retry_job(&pool, id).await.map_err(user_error)?;
            println!("job {id} is available again");
        }
    }
    Ok(())
}

async fn dlq(config: &Config, cmd: DlqCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        DlqCommand::List { kind, limit, json } => {
            let rows = queue::list_dead_letters(&pool, kind.as_deref(), limit)
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            println!(
                "{:>8} {:>10} {:<20} {:<16} {:<20} {:>7}  {:<25} REPLAYED_AS",
                "ID", "JOB", "KIND", "QUEUE", "REASON", "ATTEMPT", "DEAD_AT"
            );
            for d in rows {
                println!(
                    "{:>8} {:>10} {:<20} {:<16} {:<20} {:>3}/{:<3}  {:<25} {}",
                    d.id,
                    d.job_id,
                    d.kind,
                    d.queue,
                    d.reason,
                    d.attempt,
                    d.max_attempts,
                    d.dead_at.to_rfc3339(),
                    d.replayed_as.map(|j| j.to_string()).unwrap_or_default()
                );
            }
        }
        DlqCommand::Show { id, json } => {
            let d = queue::get_dead_letter(&pool, id)
                .await
                .map_err(user_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_record(&serde_json::to_value(&d)?);
            }
        }
        DlqCommand::Replay { id, all, kind } => {
            let ids = id.map(|i| vec![i]);
            if !all && ids.is_none() {
                bail!("give a dead letter id or --all");
            }
            let replayed = queue::replay_dead_letters(&pool, ids.as_deref(), kind.as_deref())
                .await
                .map_err(user_error)?;
            for r in &replayed {
                println!("dead letter {} replayed as job {}", r.dead_letter, r.job);
            }
            if replayed.is_empty() {
                println!("nothing to replay");
            }
        }
        DlqCommand::Purge { older_than } => {
            let n = queue::purge_dead_letters(&pool, older_than)
                .await
                .map_err(user_error)?;
            println!("{n} dead letters purged");
        }
    }
    Ok(())
}

async fn schedules(config: &Config, cmd: SchedulesCommand) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    match cmd {
        SchedulesCommand::List { json } => {
            let rows = scheduler::list(&pool).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            let when =
                |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
            println!(
                "{:<24} {:<20} {:<16} {:<20} {:<8} {:<26} {:<26} LAST_JOB",
                "NAME", "CRON", "TIMEZONE", "KIND", "ENABLED", "NEXT_FIRE", "LAST_FIRE"
            );
            for r in rows {
                println!(
                    "{:<24} {:<20} {:<16} {:<20} {:<8} {:<26} {:<26} {}",
                    r.name,
                    r.cron,
                    r.timezone,
                    r.kind,
                    r.enabled,
                    when(r.next_fire_at),
                    when(r.last_fire_at),
                    r.last_job_id
                        .map(|j| j.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        SchedulesCommand::Pause { name } => {
            scheduler::set_enabled(&pool, &name, false).await?;
            println!("schedule {name} paused");
        }
        SchedulesCommand::Resume { name } => {
            scheduler::set_enabled(&pool, &name, true).await?;
            println!("schedule {name} resumed");
        }
    }
    Ok(())
}

/// Prints a JSON object as `key: value` lines, nested values as indented JSON.
fn print_record(value: &serde_json::Value) {
    let Some(obj) = value.as_object() else {
        println!("{value}");
        return;
    };
    for (k, v) in obj {
        match v {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
                println!("{k}:\n  {}", pretty.replace('\n', "\n  "));
            }
            serde_json::Value::String(s) => println!("{k}: {s}"),
            serde_json::Value::Null => println!("{k}: -"),
            other => println!("{k}: {other}"),
        }
    }
}

/// The shim checks jobs through the daemon's registry (the shim imports no kind).
impl<H: ?Sized + crate::jobs::Describe> crate::http::EnqueueCheck for crate::jobs::Catalog<H> {
    fn check(&self, job: &crate::queue::NewJob) -> Result<(), String> {
        crate::jobs::Catalog::check(self, job).map_err(|e| e.to_string())
    }
}
