//! The command line: clap's types and the dispatch to one file per command group (`run`,
//! `roles`, `enqueue`, `jobs`, `dlq`, `schedules`, `status`, `oauth`, `keys`, `secrets`,
//! `audit`).
//! Commands read and write through `queue/`, `credentials/`, `scheduler` and the daemon's
//! library calls; they hold no SQL of their own.
//!
//! Must never print a secret (database URLs are redacted) and never panic on bad input:
//! every refusal is one clear line and a non-zero exit.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{self, CLI_DELAY_RANGE, Config};
use crate::credentials::keys::{self as apikey, DEFAULT_ENVIRONMENT};
use crate::credentials::{self as creds, Actor};
use crate::daemon::{Daemon, Embedded, Roles, connect, migrate};
use crate::jobs::Kinds;
use crate::providers::oauth::Providers;
use crate::queue::{self, JobFilter, NewJob};
use crate::scheduler;
use crate::secrets::{Keyring, MasterKey, SecretsError};
use secrets::keyring;
use table::Table;

mod audit;
mod dlq;
mod enqueue;
mod jobs;
mod keys;
mod oauth;
mod roles;
mod run;
mod schedules;
mod secrets;
mod status;
mod table;

pub use dlq::DlqCommand;
pub use enqueue::EnqueueArgs;
pub use jobs::JobsCommand;
pub use keys::KeysCommand;
pub use oauth::OauthCommand;
pub use roles::RolesCommand;
pub use run::RunArgs;
pub use schedules::SchedulesCommand;
pub use secrets::SecretsCommand;

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
    /// The database roles: print the SQL that sets up the runtime role.
    #[command(subcommand)]
    Roles(RolesCommand),
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
    /// Print the OpenAPI 3.1 document of the HTTP shim (with a JSON Schema per job kind's
    /// payload, for typed clients), or with --admin of the admin API. Needs no database.
    Openapi {
        /// The admin listener's document instead of the shim's.
        #[arg(long)]
        admin: bool,
    },
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
        Command::Run(args) => run::run_daemon(config, args).await,
        Command::Migrate => run::migrate_only(&config).await,
        Command::Roles(cmd) => roles::roles(cmd),
        Command::Enqueue(args) => enqueue::enqueue(&config, args).await,
        Command::Jobs(cmd) => jobs::jobs(&config, cmd).await,
        Command::Dlq(cmd) => dlq::dlq(&config, cmd).await,
        Command::Schedules(cmd) => schedules::schedules(&config, cmd).await,
        Command::Integrations { json } => status::integrations(&config, json).await,
        Command::Oauth(cmd) => oauth::oauth(&config, cmd).await,
        Command::Keys(cmd) => keys::keys(&config, cmd).await,
        Command::Secrets(cmd) => secrets::secrets(&config, cmd).await,
        Command::Audit {
            subject,
            limit,
            json,
        } => audit::audit(&config, subject, limit, json).await,
        Command::Alerts { ack, json } => audit::alerts(&config, ack, json).await,
        Command::Stats { json } => status::stats(&config, json).await,
        Command::Openapi { admin } => {
            let doc = if admin {
                crate::admin::document()
            } else {
                crate::http::document(&registry(&config)?)
            };
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
    }
}

/// The built-in kinds, to check jobs and write `penguin.kinds` (nothing runs).
fn registry(config: &Config) -> anyhow::Result<Kinds> {
    Ok(Kinds::builtin(config)?)
}

fn user_error(e: queue::Error) -> anyhow::Error {
    match e.user_message() {
        Some(m) => anyhow::anyhow!(m),
        None => e.into(),
    }
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

/// An instant as RFC 3339 to the second, or `-`.
fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}
