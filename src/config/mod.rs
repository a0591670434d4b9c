//! `jobs.toml` plus environment overrides, turned into a typed and validated [`Config`].
//!
//! Layering: built-in defaults, then the file (`--config PATH`, default `./jobs.toml`; a
//! missing *default* file means built-in defaults, a missing *named* file is an error),
//! then the environment (`DATABASE_URL` overrides `[database] url`). Secrets are written
//! as `"env:NAME"` or `"file:PATH"`: each is a [`SecretRef`] that knows its key, checked
//! for its form when the config is loaded and resolved into a [`SecretString`] when used.
//! Sections live in `providers` and `credentials`, duration ranges in `durations`.
//!
//! This module must never log or echo a secret value, and never reach the database:
//! it only reads files and the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod admin;
mod credentials;
mod durations;
mod egress;
mod health;
mod providers;
mod secret_ref;

pub use admin::*;
pub use credentials::*;
pub use durations::*;
pub use egress::*;
pub use health::*;
pub use providers::*;
pub use secret_ref::*;

/// Calls `$f(key, secret_ref)` for every secret the config names, through `$iter` /
/// `$as` (`iter`/`as_ref` or `iter_mut`/`as_mut`).
macro_rules! each_secret_ref {
    ($config:expr, $f:expr, $iter:ident, $as:ident) => {{
        let config = $config;
        let f = &mut $f;
        for r in config.http.api_tokens.$iter() {
            f("http.api_tokens".to_string(), r);
        }
        for r in config.admin.tokens.$iter() {
            f("admin.tokens".to_string(), r);
        }
        for (name, t) in config.http.tokens.$iter() {
            if let Some(r) = t.secret.$as() {
                f(format!("http.tokens.{name}.secret"), r);
            }
        }
        if let Some(m) = config.providers.mailgun.$as() {
            if let Some(r) = m.webhook_signing_key.$as() {
                f("providers.mailgun.webhook_signing_key".to_string(), r);
            }
            if let Some(r) = m.api_key.$as() {
                f("providers.mailgun.api_key".to_string(), r);
            }
        }
        if let Some(s) = config.providers.sendgrid.$as() {
            if let Some(r) = s.webhook_public_key.$as() {
                f("providers.sendgrid.webhook_public_key".to_string(), r);
            }
            if let Some(r) = s.api_key.$as() {
                f("providers.sendgrid.api_key".to_string(), r);
            }
        }
        if let Some(s) = config.providers.stripe.$as() {
            if let Some(r) = s.webhook_secret.$as() {
                f("providers.stripe.webhook_secret".to_string(), r);
            }
            if let Some(r) = s.secret_key.$as() {
                f("providers.stripe.secret_key".to_string(), r);
            }
        }
        if let Some(p) = config.providers.posthog.$as() {
            if let Some(r) = p.api_key.$as() {
                f("providers.posthog.api_key".to_string(), r);
            }
        }
        if let Some(r) = config.secrets.master_key.$as() {
            f("secrets.master_key".to_string(), r);
        }
        for r in config.secrets.previous_master_keys.$iter() {
            f("secrets.previous_master_keys".to_string(), r);
        }
        for (name, p) in config.oauth.providers.$iter() {
            if let Some(r) = p.client_secret.$as() {
                f(format!("oauth.providers.{name}.client_secret"), r);
            }
        }
    }};
}

/// `[http] listen`: an address like `127.0.0.1:8080`; the error names the key.
fn listen_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::net::SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "http.listen: {text:?} is not an address like 127.0.0.1:8080"
        ))
    })
}

/// The default config file, read when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "jobs.toml";

/// Errors that stop the daemon at start; each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("secret {reference}: {message}")]
    Secret { reference: String, message: String },
}

/// The whole configuration of one daemon.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the jobs live.
    pub database: DatabaseConfig,
    /// Timings of the worker runtime.
    pub daemon: DaemonConfig,
    /// Worker pools, one per queue name.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Per-kind overrides of the defaults each kind ships with.
    pub kinds: BTreeMap<String, KindConfig>,
    /// How long finished rows are kept.
    pub retention: RetentionConfig,
    /// Cron schedules, one per name: each fire enqueues one job, once across all daemons.
    pub schedules: BTreeMap<String, ScheduleConfig>,
    /// Built-in housekeeping schedules.
    pub maintenance: MaintenanceConfig,
    /// The HTTP shim: enqueue over HTTP and provider webhooks.
    pub http: HttpConfig,
    /// The operators' listener: admin API, Prometheus metrics, dashboard.
    pub admin: AdminConfig,
    /// How integration health is judged, and its scheduled checks.
    pub health: HealthConfig,
    /// Alert thresholds and who hears of alerts.
    pub alerts: AlertsConfig,
    /// Provider credentials and webhook keys.
    pub providers: ProvidersConfig,
    /// Exceptions to the egress guard for calls to user-controlled URLs.
    pub egress: EgressConfig,
    /// Encryption at rest: the master key.
    pub secrets: SecretsConfig,
    /// OAuth providers, connect and scheduled token refresh.
    pub oauth: OAuthConfig,
    /// Provider API keys: scheduled rotation and each provider's key hooks.
    pub api_keys: ApiKeysConfig,
    /// The file this config was read from (`None`: built-in defaults, no file).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the shim listens on.
    #[serde(deserialize_with = "listen_address")]
    pub listen: std::net::SocketAddr,
    /// Bearer tokens accepted by `/v1/jobs`, each `"env:NAME"` or `"file:PATH"`: each may
    /// enqueue and read every public kind, for any tenant. Empty, and no `tokens`: `/v1/jobs`
    /// answers 401 to everyone.
    pub api_tokens: Vec<SecretRef>,
    /// Named tokens with scopes, `[http.tokens.NAME]`.
    pub tokens: BTreeMap<String, TokenConfig>,
    /// Largest request body in bytes; larger requests get 413.
    pub max_body: usize,
    /// How long a client has to send a request's line and headers: from the connection's
    /// start, and on a keep-alive connection from the first byte of its next request. A
    /// client still sending headers after it is disconnected without an answer.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// How long a request's whole body may take to arrive, from the end of its headers;
    /// a body still arriving after it is answered 408 and the connection closed.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request with no request in
    /// progress before the shim closes it.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections served at once (lowered, with a warning, when the open files limit
    /// cannot hold them). At the limit the shim stops accepting: new connections wait in
    /// the kernel's listen backlog until a connection ends (see `http::serve` for why they
    /// are not refused), and a warning is logged.
    pub max_connections: usize,
    /// Most connections served at once for one client IP address; more are closed at once.
    /// Unset: no per-address limit (behind a proxy every client has the proxy's address).
    pub max_connections_per_ip: Option<usize>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_tokens: Vec::new(),
            tokens: BTreeMap::new(),
            max_body: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: None,
        }
    }
}

/// `[http.tokens.NAME]`: a bearer token limited to some kinds and, optionally, one tenant.
/// The audit log and the logs name its holder `api:NAME`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// The token itself, `"env:NAME"` or `"file:PATH"` (required).
    pub secret: Option<SecretRef>,
    /// The kinds it may enqueue and read. Unset: every public kind. Internal kinds
    /// (`apikey.*`, `oauth.*`, `maintenance.prune`, the webhook event kinds) only when named.
    pub kinds: Option<Vec<String>>,
    /// The one tenant it enqueues for and reads: a job without `tenant_id` gets it, a job
    /// for another tenant is refused (403), another tenant's job is not found (404).
    pub tenant: Option<uuid::Uuid>,
}

/// The largest `http.max_connections`: each connection is an open file, and no open files
/// limit goes much further.
pub const MAX_HTTP_CONNECTIONS: usize = 1_000_000;

/// `[database]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, or `"env:NAME"` / `"file:PATH"` holding one. `DATABASE_URL` overrides
    /// it. Unset: `run` starts a private cluster under `daemon.data_dir`.
    pub url: Option<String>,
    /// Connections in the main pool (claims, enqueues, maintenance). Outcome flushes and
    /// LISTEN use a few dedicated connections on top.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
        }
    }
}

/// `[daemon]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Directory for daemon state; the embedded PostgreSQL cluster lives in `postgres/` under it.
    pub data_dir: PathBuf,
    /// How often an idle pool looks for work when no notification arrives (scheduled jobs,
    /// retries coming due, a lost notification).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long a claimed job stays leased without a heartbeat. A heartbeat extends the
    /// leases of every job a pool holds every `lease / 3`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often expired leases (jobs of a worker that died) are returned to `retryable`.
    #[serde(with = "humantime_serde")]
    pub rescue_interval: Duration,
    /// On SIGTERM/SIGINT, how long in-flight jobs may run before they are released.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Most outcomes written back in one statement (default 2000: measured faster than
    /// 1000 for a no-op drain; larger ack statements risk the plan flips noted in
    /// queue::outcome).
    pub flush_batch: usize,
    /// How long a job whose kind no running daemon handles waits before it is
    /// dead-lettered with reason `unknown_kind`.
    #[serde(with = "humantime_serde")]
    pub unknown_kind_grace: Duration,
    /// A transaction (or prepared transaction) holding the xmin horizon longer than this is
    /// warned about, naming its pid and application: while it holds, VACUUM cannot remove
    /// the dead row versions the queue leaves, and claims slow down.
    #[serde(with = "humantime_serde")]
    pub horizon_warn: Duration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./.penguin-jobs"),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            rescue_interval: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(30),
            flush_batch: 2000,
            unknown_kind_grace: Duration::from_secs(24 * 3600),
            horizon_warn: Duration::from_secs(300),
        }
    }
}

/// `[queues.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Jobs of this queue running at once in this daemon.
    pub concurrency: usize,
    /// Most jobs claimed per statement. The pool claims what its free workers take plus
    /// what they will start within the next 10 ms at their current rate, so a fast queue
    /// claims big batches and a slow one a job or two at a time. Default: the concurrency,
    /// at least 1000 (a no-op drain from the daemon's start measured 15% faster than at
    /// 500, and no faster at 2000; tuning it is rarely useful).
    pub batch: Option<usize>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            concurrency: 50,
            batch: None,
        }
    }
}

impl QueueConfig {
    /// The claim batch size, defaulted from the concurrency.
    pub fn batch_size(&self) -> usize {
        self.batch
            .unwrap_or_else(|| self.concurrency.clamp(1000, 5000))
    }
}

/// `[kinds."KIND"]`: overrides of a kind's built-in defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KindConfig {
    /// Queue (pool) that works this kind.
    pub queue: Option<String>,
    /// Attempts before the job moves to the dead letters.
    pub max_attempts: Option<u32>,
    /// Lower runs first; negative values allowed.
    pub priority: Option<i16>,
    /// Longest one attempt may run; on expiry the attempt fails with class `timeout`.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Delay before the next attempt.
    pub backoff: Option<BackoffConfig>,
}

/// How the delay between attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackoffStrategy {
    /// base, 2·base, 4·base, … capped at max.
    Exponential,
    /// base, 2·base, 3·base, … capped at max.
    Linear,
    /// base every time.
    Fixed,
}

/// `backoff = { strategy, base, max, jitter }`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    pub strategy: BackoffStrategy,
    /// First delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Longest delay, jitter included.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Add a random part (up to the delay itself, still capped at max) so that jobs that
    /// failed together do not retry together.
    #[serde(default = "default_true")]
    pub jitter: bool,
}

fn default_true() -> bool {
    true
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            strategy: BackoffStrategy::Exponential,
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: true,
        }
    }
}

/// `[retention]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long `completed` and `cancelled` jobs stay in `penguin.jobs` before pruning.
    /// `"0s"` deletes a job at completion.
    #[serde(with = "humantime_serde")]
    pub completed: Duration,
    /// How long dead letters stay before pruning; `"0s"` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub dead_letters: Duration,
    /// How long stored webhooks (`penguin.inbound_events`) stay; `"0s"` keeps them forever.
    /// At least 3 days: providers redeliver for that long, and a redelivery is recognised
    /// by its stored row.
    #[serde(with = "humantime_serde")]
    pub inbound_events: Duration,
    /// How long the per-minute call rollups (`penguin.integration_metrics`, what health
    /// and its charts are computed from) stay; `"0s"` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub metrics: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            completed: Duration::from_secs(24 * 3600),
            dead_letters: Duration::from_secs(30 * 24 * 3600),
            inbound_events: Duration::from_secs(30 * 24 * 3600),
            metrics: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// What a schedule does about fires it missed while no daemon ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedFires {
    /// Drop them; only fires from now on run.
    #[default]
    Skip,
    /// Enqueue the latest `max_catch_up` of them.
    CatchUp,
}

/// `[schedules.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Standard 5-field cron (`min hour dom month dow`), or 6 fields with seconds first.
    pub cron: String,
    /// IANA time zone the cron is read in (`Europe/Berlin`); default UTC.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// The job kind each fire enqueues.
    pub kind: String,
    /// Its payload.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// Queue (default: the kind's).
    #[serde(default)]
    pub queue: Option<String>,
    /// Priority (default: the kind's).
    #[serde(default)]
    pub priority: Option<i16>,
    /// After downtime: `skip` or `catch_up`.
    #[serde(default)]
    pub missed: MissedFires,
    /// With `catch_up`: most missed fires enqueued.
    #[serde(default = "default_max_catch_up")]
    pub max_catch_up: u32,
}

fn default_timezone() -> String {
    "UTC".into()
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}

fn default_max_catch_up() -> u32 {
    1
}

/// `[maintenance]`: housekeeping run as ordinary scheduled jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Prune completed/cancelled jobs and dead letters past `[retention]`.
    pub prune: bool,
    /// When pruning runs (cron).
    pub prune_cron: String,
    /// Rows deleted per statement, so a prune never holds long locks.
    pub prune_batch: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            prune: true,
            prune_cron: "* * * * *".into(),
            prune_batch: 1000,
        }
    }
}

impl Config {
    /// Reads `path` (or the default file, if present), applies the environment and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => Self::default(),
        };
        if let Ok(url) = std::env::var("DATABASE_URL")
            && !url.trim().is_empty()
        {
            config.database.url = Some(url);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without touching the environment (used by tests and `load`).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string(),
        };
        // a raw NUL is never valid TOML; named here so that the error does not echo it
        if let Some((n, line)) = text.lines().enumerate().find(|(_, l)| l.contains('\0')) {
            let key = line.split('=').next().unwrap_or("").replace('\0', "");
            return Err(ConfigError::Parse {
                path: origin.to_path_buf(),
                message: format!(
                    "line {}: {}: a raw NUL byte, which no setting accepts",
                    n + 1,
                    key.trim()
                ),
            });
        }
        // no setting takes a NUL (names, URLs, paths, cron, payloads: PostgreSQL stores
        // none of them); refused here once, naming the key, instead of failing at run time
        // (and before typed settings such as addresses refuse it less clearly)
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        if let Some(key) = find_nul(&toml::Value::Table(table), "") {
            return Err(ConfigError::Invalid(format!(
                "{key}: contains a NUL character (\\u0000), which no setting accepts"
            )));
        }
        let mut config: Config = toml::from_str(text).map_err(parse_error)?;
        config.name_secret_refs();
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(config)
    }

    /// Where this config came from, for the start-up log.
    pub fn describe_source(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => format!("no config file ({DEFAULT_CONFIG_PATH} not found): built-in defaults"),
        }
    }

    /// Checks every value that would otherwise fail later, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_daemon()?;
        self.validate_http()?;
        self.validate_admin()?;
        self.validate_health()?;
        self.providers.validate()?;
        self.validate_retention()?;
        self.validate_schedules()?;
        self.validate_kinds()?;
        self.validate_credentials()?;
        self.secret_refs()
            .into_iter()
            .try_for_each(SecretRef::check)
    }

    /// Every secret the config names.
    fn secret_refs(&self) -> Vec<&SecretRef> {
        let mut refs = Vec::new();
        each_secret_ref!(self, |_key: String, r| refs.push(r), iter, as_ref);
        refs
    }

    /// Names every secret with the key it is set under, for error messages.
    fn name_secret_refs(&mut self) {
        each_secret_ref!(
            self,
            |key: String, r: &mut SecretRef| r.bind(key),
            iter_mut,
            as_mut
        );
    }

    /// `[database]`, `[daemon]` and `[queues.*]`.
    fn validate_daemon(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !(2..=10_000).contains(&self.database.max_connections) {
            return invalid("database.max_connections must be between 2 and 10000".into());
        }
        let d = &self.daemon;
        check_duration("daemon.poll_interval", d.poll_interval, POLL_INTERVAL_RANGE)?;
        check_duration("daemon.lease", d.lease, LEASE_RANGE)?;
        check_duration(
            "daemon.rescue_interval",
            d.rescue_interval,
            RESCUE_INTERVAL_RANGE,
        )?;
        check_duration(
            "daemon.shutdown_grace",
            d.shutdown_grace,
            SHUTDOWN_GRACE_RANGE,
        )?;
        check_duration(
            "daemon.unknown_kind_grace",
            d.unknown_kind_grace,
            UNKNOWN_KIND_GRACE_RANGE,
        )?;
        check_duration("daemon.horizon_warn", d.horizon_warn, HORIZON_WARN_RANGE)?;
        if d.flush_batch == 0 || d.flush_batch > 10_000 {
            return invalid("daemon.flush_batch must be between 1 and 10000".into());
        }
        for (name, q) in &self.queues {
            check_name("queues", name)?;
            if q.concurrency == 0 || q.concurrency > 100_000 {
                return invalid(format!(
                    "queues.{name}.concurrency must be between 1 and 100000"
                ));
            }
            if let Some(b) = q.batch
                && (b == 0 || b > 5_000)
            {
                return invalid(format!("queues.{name}.batch must be between 1 and 5000"));
            }
        }
        Ok(())
    }

    /// `[http]`.
    fn validate_http(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.http.max_body < 1024 || self.http.max_body > 64 * 1024 * 1024 {
            return invalid("http.max_body must be between 1024 and 67108864 bytes".into());
        }
        for (name, token) in &self.http.tokens {
            check_name("http.tokens", name)?;
            if token.secret.is_none() {
                return invalid(format!(
                    "http.tokens.{name}.secret: give the token as \"env:NAME\" or \"file:PATH\""
                ));
            }
            if token.kinds.as_ref().is_some_and(Vec::is_empty) {
                return invalid(format!(
                    "http.tokens.{name}.kinds: name at least one kind, or leave it out for every \
                     public kind"
                ));
            }
        }
        let h = &self.http;
        check_duration("http.header_timeout", h.header_timeout, HTTP_TIMEOUT_RANGE)?;
        check_duration("http.body_timeout", h.body_timeout, HTTP_TIMEOUT_RANGE)?;
        check_duration("http.idle_timeout", h.idle_timeout, HTTP_TIMEOUT_RANGE)?;
        if !(1..=MAX_HTTP_CONNECTIONS).contains(&h.max_connections) {
            return invalid(format!(
                "http.max_connections must be between 1 and {MAX_HTTP_CONNECTIONS}"
            ));
        }
        if let Some(per_ip) = h.max_connections_per_ip
            && !(1..=h.max_connections).contains(&per_ip)
        {
            return invalid(
                "http.max_connections_per_ip must be between 1 and http.max_connections".into(),
            );
        }
        Ok(())
    }

    /// `[retention]` and `[maintenance]`.
    fn validate_retention(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let r = &self.retention;
        check_duration("retention.completed", r.completed, RETENTION_RANGE)?;
        check_duration("retention.dead_letters", r.dead_letters, RETENTION_RANGE)?;
        check_duration(
            "retention.inbound_events",
            r.inbound_events,
            RETENTION_RANGE,
        )?;
        check_duration("retention.metrics", r.metrics, RETENTION_RANGE)?;
        if !r.inbound_events.is_zero() && r.inbound_events < 3 * DAY {
            return invalid(
                "retention.inbound_events must be \"0s\" (keep) or at least 3d: providers redeliver \
                 webhooks for up to 3 days, and a redelivery is recognised by its stored row"
                    .into(),
            );
        }
        if self.maintenance.prune_batch == 0 || self.maintenance.prune_batch > 100_000 {
            return invalid("maintenance.prune_batch must be between 1 and 100000".into());
        }
        Ok(())
    }

    /// `[schedules.*]`.
    fn validate_schedules(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (name, schedule) in &self.schedules {
            check_name("schedules", name)?;
            if let Some(q) = &schedule.queue {
                check_name(&format!("schedules.{name}.queue"), q)?;
            }
            if schedule.max_catch_up == 0 || schedule.max_catch_up > 1000 {
                return invalid(format!(
                    "schedules.{name}.max_catch_up must be between 1 and 1000"
                ));
            }
        }
        Ok(())
    }

    /// `[kinds.*]`.
    fn validate_kinds(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        for (kind, k) in &self.kinds {
            if let Some(q) = &k.queue {
                check_name(&format!("kinds.\"{kind}\".queue"), q)?;
            }
            if k.max_attempts == Some(0) {
                return invalid(format!("kinds.\"{kind}\".max_attempts must be at least 1"));
            }
            if let Some(t) = k.timeout {
                check_duration(&format!("kinds.\"{kind}\".timeout"), t, TIMEOUT_RANGE)?;
            }
            if let Some(b) = &k.backoff {
                check_duration(
                    &format!("kinds.\"{kind}\".backoff.base"),
                    b.base,
                    BACKOFF_RANGE,
                )?;
                check_duration(
                    &format!("kinds.\"{kind}\".backoff.max"),
                    b.max,
                    BACKOFF_RANGE,
                )?;
                if b.max < b.base {
                    return invalid(format!(
                        "kinds.\"{kind}\".backoff.max must be at least backoff.base"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pool settings of `queue`: its `[queues.NAME]` table or the defaults.
    pub fn queue(&self, queue: &str) -> QueueConfig {
        self.queues.get(queue).cloned().unwrap_or_default()
    }

    /// The database URL with secrets resolved, if one is configured.
    pub fn database_url(&self) -> Result<Option<SecretString>, ConfigError> {
        self.database.url.as_deref().map(resolve_secret).transpose()
    }
}

/// The dotted key of the first string (or table key) holding a NUL, if any.
fn find_nul(value: &toml::Value, key: &str) -> Option<String> {
    let join = |name: &str| {
        let bare = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        let name = if bare {
            name.to_string()
        } else {
            format!("{name:?}")
        };
        if key.is_empty() {
            name
        } else {
            format!("{key}.{name}")
        }
    };
    match value {
        toml::Value::String(s) if s.contains('\0') => Some(key.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_nul(v, &format!("{key}[{i}]"))),
        toml::Value::Table(table) => table.iter().find_map(|(name, v)| {
            let inner = join(name);
            if name.contains('\0') {
                Some(inner)
            } else {
                find_nul(v, &inner)
            }
        }),
        _ => None,
    }
}

fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if crate::text::is_plain_name(name) {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{key}: name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("x.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.daemon.poll_interval, Duration::from_secs(1));
        assert_eq!(c.retention.completed, Duration::from_secs(86_400));
        assert_eq!(c.queue("default").concurrency, 50);
        assert_eq!(c.queue("default").batch_size(), 1000);
    }

    #[test]
    fn durations_are_humantime_strings() {
        let c = Config::from_toml(
            "[daemon]\nlease = \"1m\"\nshutdown_grace = \"200ms\"\n[kinds.\"http.request\"]\ntimeout = \"15s\"\nbackoff = { strategy = \"linear\", base = \"2s\", max = \"1h\" }\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.daemon.lease, Duration::from_secs(60));
        assert_eq!(c.daemon.shutdown_grace, Duration::from_millis(200));
        let k = &c.kinds["http.request"];
        assert_eq!(k.timeout, Some(Duration::from_secs(15)));
        let b = k.backoff.unwrap();
        assert_eq!(b.strategy, BackoffStrategy::Linear);
        assert!(b.jitter);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = Config::from_toml("[daemon]\nleese = \"1s\"\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("leese"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let c = Config::from_toml("[queues.email]\nconcurrency = 0\n", Path::new("x")).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert_eq!(err, "queues.email.concurrency must be between 1 and 100000");
        let c = Config::from_toml("[kinds.noop]\nmax_attempts = 0\n", Path::new("x")).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("kinds.\"noop\".max_attempts")
        );
    }

    #[test]
    fn secrets_resolve_from_env_and_file_without_echoing_the_value() {
        let dir = std::env::temp_dir().join(format!("pj-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "hunter2\n").unwrap();
        let s = resolve_secret(&format!("file:{}", file.display())).unwrap();
        assert_eq!(s.expose_secret(), "hunter2");
        let err = resolve_secret("env:PENGUIN_JOBS_TEST_SURELY_UNSET").unwrap_err();
        assert!(err.to_string().contains("not set"));
    }

    #[test]
    fn provider_tables_parse_and_are_checked() {
        let c = Config::from_toml(
            "[providers.mailgun]\napi_key = \"env:MG\"\ndomain = \"mg.example.com\"\nregion = \"eu\"\n\
             [providers.sendgrid.rate_limit]\nper_second = 100\nper_minute = 5000\n\
             [providers.sendgrid.circuit_breaker]\nfailure_threshold = 3\nrecovery_timeout = \"10s\"\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        let limit = c.providers.sendgrid.as_ref().unwrap().rate_limit.unwrap();
        assert_eq!(
            limit.windows(),
            vec![("second", 10.0, 100.0), ("minute", 10.0, 5000.0 / 60.0)]
        );
        let literal = Config::from_toml(
            "[providers.stripe]\nsecret_key = \"sk_live_123\"\n",
            Path::new("x"),
        )
        .unwrap();
        let err = literal.validate().unwrap_err().to_string();
        assert!(
            err.contains("providers.stripe.secret_key") && !err.contains("sk_live_123"),
            "{err}"
        );
        let no_domain = Config::from_toml(
            "[providers.mailgun]\napi_key = \"env:MG\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(
            no_domain
                .validate()
                .unwrap_err()
                .to_string()
                .contains("providers.mailgun.domain")
        );
        let zero = Config::from_toml(
            "[providers.posthog.rate_limit]\nper_second = 0\n",
            Path::new("x"),
        )
        .unwrap();
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("per_second")
        );
    }

    #[test]
    fn every_secret_is_a_reference_named_by_its_key_when_loaded() {
        let c = Config::from_toml(
            "[http]\napi_tokens = [\"env:PENGUIN_JOBS_TEST_UNSET_TOKEN\"]\n\
             [providers.stripe]\nsecret_key = \"file:/nonexistent/penguin\"\n\
             [oauth.providers.acme]\nclient_id = \"c\"\nclient_secret = \"env:X\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.http.api_tokens[0].key(), "http.api_tokens");
        let stripe = c.providers.stripe.as_ref().unwrap();
        assert_eq!(
            stripe.secret_key.as_ref().unwrap().key(),
            "providers.stripe.secret_key"
        );
        assert_eq!(
            c.oauth.providers["acme"]
                .client_secret
                .as_ref()
                .unwrap()
                .key(),
            "oauth.providers.acme.client_secret"
        );
        let unreadable = stripe.secret_key.as_ref().unwrap().resolve().unwrap_err();
        assert!(
            unreadable.to_string().contains("file:/nonexistent/penguin"),
            "{unreadable}"
        );
        // a value in place of a reference is refused when the config is loaded
        assert!(
            invalid("[http]\napi_tokens = [\"s3cr3t-token\"]\n")
                .starts_with("http.api_tokens: write the secret as"),
        );
        assert!(!invalid("[http]\napi_tokens = [\"s3cr3t-token\"]\n").contains("s3cr3t"));
        assert!(
            invalid("[secrets]\nmaster_key = \"c2VjcmV0\"\n")
                .starts_with("secrets.master_key: write the secret as")
        );
    }

    #[test]
    fn a_credential_reference_names_one_file_of_systemds_credentials_directory() {
        for bad in ["cred:../etc/passwd", "cred:", "cred:a/b"] {
            let e = resolve_secret(bad).unwrap_err().to_string();
            assert!(e.contains("one file name"), "{bad}: {e}");
        }
        if std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
            let e = resolve_secret("cred:master-key").unwrap_err().to_string();
            assert!(e.contains("LoadCredential"), "{e}");
        }
        // accepted where a reference is required
        let c = Config::from_toml(
            "[secrets]\nmaster_key = \"cred:master-key\"\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn the_listen_address_is_a_socket_address_and_a_bad_one_names_the_key() {
        let c = Config::from_toml("[http]\nlisten = \"0.0.0.0:9000\"\n", Path::new("x")).unwrap();
        assert_eq!(
            c.http.listen,
            std::net::SocketAddr::from(([0, 0, 0, 0], 9000))
        );
        let e = invalid("[http]\nlisten = \"localhost\"\n");
        assert!(
            e.contains("http.listen: \"localhost\" is not an address like 127.0.0.1:8080"),
            "{e}"
        );
    }

    #[test]
    fn the_shim_connection_limits_have_defaults_and_bounds_that_name_the_key() {
        let d = Config::from_toml("", Path::new("x")).unwrap().http;
        assert_eq!(
            (d.header_timeout, d.body_timeout, d.idle_timeout),
            (
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(60)
            )
        );
        assert_eq!(
            (d.max_connections, d.max_connections_per_ip),
            (10_000, None)
        );
        let c = Config::from_toml(
            "[http]\nheader_timeout = \"1s\"\nbody_timeout = \"2s\"\nidle_timeout = \"500ms\"\n\
             max_connections = 20\nmax_connections_per_ip = 5\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        let h = &c.http;
        assert_eq!(h.header_timeout, Duration::from_secs(1));
        assert_eq!(h.body_timeout, Duration::from_secs(2));
        assert_eq!(h.idle_timeout, Duration::from_millis(500));
        assert_eq!((h.max_connections, h.max_connections_per_ip), (20, Some(5)));
        for (toml, message) in [
            (
                "[http]\nheader_timeout = \"0s\"",
                "http.header_timeout must be between 100ms and 1h, got 0s",
            ),
            (
                "[http]\nbody_timeout = \"2h\"",
                "http.body_timeout must be between 100ms and 1h, got 2h",
            ),
            (
                "[http]\nidle_timeout = \"10ms\"",
                "http.idle_timeout must be between 100ms and 1h, got 10ms",
            ),
            (
                "[http]\nmax_connections = 0",
                "http.max_connections must be between 1 and 1000000",
            ),
            (
                "[http]\nmax_connections = 10\nmax_connections_per_ip = 11",
                "http.max_connections_per_ip must be between 1 and http.max_connections",
            ),
            (
                "[http]\nmax_connections_per_ip = 0",
                "http.max_connections_per_ip must be between 1 and http.max_connections",
            ),
        ] {
            assert_eq!(invalid(toml), message, "{toml}");
        }
    }

    fn invalid(toml: &str) -> String {
        match Config::from_toml(toml, Path::new("x")) {
            Ok(c) => c.validate().expect_err(toml).to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_scoped_token_needs_a_secret_a_plain_name_and_kinds_if_any() {
        assert!(
            invalid("[http.tokens.x]\nkinds = [\"noop\"]\n")
                .starts_with("http.tokens.x.secret: give the token as")
        );
        assert!(
            invalid("[http.tokens.x]\nsecret = \"env:T\"\nkinds = []\n")
                .starts_with("http.tokens.x.kinds: name at least one kind")
        );
        assert!(
            invalid("[http.tokens.\"a b\"]\nsecret = \"env:T\"\n").starts_with("http.tokens: name")
        );
        assert!(
            invalid("[http.tokens.x]\nsecret = \"env:T\"\ntenant = \"nope\"\n").contains("tenant")
        );
    }

    #[test]
    fn every_duration_is_bounded_with_the_key_and_range_named() {
        let cases = [
            (
                "[daemon]\nlease = \"1000000y\"",
                "daemon.lease must be between 3s and 1h, got 1000000y",
            ),
            (
                "[daemon]\nlease = \"2s\"",
                "daemon.lease must be between 3s and 1h, got 2s",
            ),
            (
                "[daemon]\npoll_interval = \"0s\"",
                "daemon.poll_interval must be between 1ms and 1h, got 0s",
            ),
            (
                "[daemon]\npoll_interval = \"1000000y\"",
                "daemon.poll_interval must be between 1ms and 1h, got 1000000y",
            ),
            (
                "[daemon]\nrescue_interval = \"2h\"",
                "daemon.rescue_interval must be between 10ms and 1h, got 2h",
            ),
            (
                "[daemon]\nshutdown_grace = \"1000000y\"",
                "daemon.shutdown_grace must be between 0s and 1d, got 1000000y",
            ),
            (
                "[daemon]\nunknown_kind_grace = \"366d\"",
                "daemon.unknown_kind_grace must be between 0s and 365d, got 366d",
            ),
            (
                "[kinds.\"http.request\"]\ntimeout = \"0s\"",
                "kinds.\"http.request\".timeout must be between 1ms and 1d, got 0s",
            ),
            (
                "[kinds.\"http.request\"]\nbackoff = { strategy = \"fixed\", base = \"1s\", max = \"1000000y\" }",
                "kinds.\"http.request\".backoff.max must be between 1ms and 365d, got 1000000y",
            ),
            (
                "[kinds.noop]\nbackoff = { strategy = \"fixed\", base = \"1000000y\", max = \"1000000y\" }",
                "kinds.\"noop\".backoff.base must be between 1ms and 365d, got 1000000y",
            ),
            (
                "[retention]\ncompleted = \"1000000y\"",
                "retention.completed must be between 0s and 100y, got 1000000y",
            ),
            (
                "[retention]\ndead_letters = \"101y\"",
                "retention.dead_letters must be between 0s and 100y, got 101y",
            ),
            (
                "[retention]\ninbound_events = \"1000000y\"",
                "retention.inbound_events must be between 0s and 100y, got 1000000y",
            ),
            (
                "[providers.stripe.circuit_breaker]\nrecovery_timeout = \"1000000y\"",
                "providers.stripe.circuit_breaker.recovery_timeout must be between 1ms and 7d, got 1000000y",
            ),
            (
                "[providers.posthog.circuit_breaker]\nmonitoring_period = \"0s\"",
                "providers.posthog.circuit_breaker.monitoring_period must be between 1ms and 7d, got 0s",
            ),
            (
                "[oauth]\nrefresh_ahead = \"1000000y\"",
                "oauth.refresh_ahead must be between 1s and 30d, got 1000000y",
            ),
            (
                "[api_keys]\noverlap = \"0s\"",
                "api_keys.overlap must be between 1s and 365d, got 0s",
            ),
            (
                "[database]\nmax_connections = 4294967295",
                "database.max_connections must be between 2 and 10000",
            ),
        ];
        for (toml, message) in cases {
            assert_eq!(invalid(toml), message, "{toml}");
        }
        // the bounds themselves are accepted
        let c = Config::from_toml(
            "[daemon]\nlease = \"1h\"\npoll_interval = \"1ms\"\nshutdown_grace = \"0s\"\n\
             unknown_kind_grace = \"365d\"\n[retention]\ncompleted = \"100y\"\n\
             dead_letters = \"0s\"\ninbound_events = \"100y\"\n\
             [kinds.noop]\nbackoff = { strategy = \"fixed\", base = \"365d\", max = \"365d\" }\n",
            Path::new("x"),
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.daemon.unknown_kind_grace, 365 * DAY);
    }

    #[test]
    fn unknown_kind_grace_defaults_to_a_day() {
        let c = Config::from_toml("", Path::new("x")).unwrap();
        assert_eq!(c.daemon.unknown_kind_grace, Duration::from_secs(86_400));
        let c =
            Config::from_toml("[daemon]\nunknown_kind_grace = \"2h\"\n", Path::new("x")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.daemon.unknown_kind_grace, Duration::from_secs(7200));
    }

    #[test]
    fn durations_are_quoted_in_the_unit_they_were_written_in() {
        for (text, shown) in [
            ("1000000y", "1000000y"),
            ("365d", "365d"),
            ("90s", "90s"),
            ("1h", "1h"),
            ("1500ms", "1500ms"),
            ("0s", "0s"),
            ("7ns", "7ns"),
        ] {
            let d = humantime::parse_duration(text).unwrap();
            assert_eq!(format_duration(d), shown);
        }
        assert_eq!(
            format_duration(Duration::MAX),
            "18446744073709551615999999999ns"
        );
    }

    #[test]
    fn a_nul_in_any_string_is_refused_naming_the_key() {
        for (toml, key) in [
            ("[http]\nlisten = \"127.0.0.1:80\\u0000\"", "http.listen:"),
            (
                "[schedules.probe]\ncron = \"* * * * *\"\nkind = \"noop\"\npayload = { note = \"a\\u0000b\" }",
                "schedules.probe.payload.note:",
            ),
            (
                "[http]\napi_tokens = [\"env:A\", \"env:\\u0000\"]",
                "http.api_tokens[1]:",
            ),
            (
                "[queues.\"a\\u0000b\"]\nconcurrency = 1",
                "queues.\"a\\0b\":",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:80\0\"",
                "invalid config file x: line 2: listen: a raw NUL byte",
            ),
        ] {
            let err = invalid(toml);
            assert!(err.starts_with(key), "{toml}: {err}");
            assert!(err.contains("NUL") && !err.contains('\0'), "{err}");
        }
    }

    #[test]
    fn redacted_urls_hide_the_password() {
        let u = SecretString::from("postgres://app:s3cret@db:5432/jobs".to_string());
        assert_eq!(redact_url(&u), "postgres://app:***@db:5432/jobs");
    }
}
