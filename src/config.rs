//! `jobs.toml` plus environment overrides, turned into a typed and validated [`Config`].
//!
//! Layering: built-in defaults, then the file (`--config PATH`, default `./jobs.toml`; a
//! missing *default* file means built-in defaults, a missing *named* file is an error),
//! then the environment (`DATABASE_URL` overrides `[database] url`). Secrets are written
//! as `"env:NAME"` or `"file:PATH"` and resolved here into [`SecretString`]s.
//!
//! This module must never log or echo a secret value, and never reach the database:
//! it only reads files and the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

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
    /// Provider credentials and webhook keys.
    pub providers: ProvidersConfig,
    /// Encryption at rest: the master key.
    pub secrets: SecretsConfig,
    /// OAuth providers, connect and scheduled token refresh.
    pub oauth: OAuthConfig,
    /// Provider API keys: scheduled rotation and each provider's key hooks.
    pub api_keys: ApiKeysConfig,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the shim listens on.
    pub listen: String,
    /// Bearer tokens accepted by `POST /v1/jobs`, each `"env:NAME"` or `"file:PATH"`.
    /// Empty: `/v1/jobs` answers 401 to everyone.
    pub api_tokens: Vec<String>,
    /// Largest request body in bytes; larger requests get 413.
    pub max_body: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            api_tokens: Vec::new(),
            max_body: 1024 * 1024,
        }
    }
}

/// `[providers.*]`: one table per provider. A provider without its table has its webhook
/// route answer 404, and its outbound jobs fail with a `configuration` error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvidersConfig {
    pub mailgun: Option<MailgunConfig>,
    pub sendgrid: Option<SendgridConfig>,
    pub stripe: Option<StripeConfig>,
    pub posthog: Option<PosthogConfig>,
}

/// One `[[providers.NAME.filters]]` entry: an event gets a processing job when its type
/// is `event` (`"*"`: any) and every condition holds. With filters configured, an event
/// no filter matches is stored but gets no job, and is counted in
/// `penguin.webhook_counters` (reason `filtered`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookFilter {
    /// Event type (`payment_intent.succeeded`, `bounce`, `failed`, ...) or `"*"`.
    pub event: String,
    /// Dot-separated field path in the event (`data.object.currency`) → required JSON value.
    #[serde(default)]
    pub conditions: BTreeMap<String, serde_json::Value>,
}

/// `[providers.NAME.rate_limit]`: calls to the provider allowed across every daemon on the
/// database (a token bucket per window, kept in `penguin.rate_limits`). Unset windows do
/// not limit; no table at all: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub per_second: Option<f64>,
    pub per_minute: Option<f64>,
    pub per_hour: Option<f64>,
    /// Calls allowed at once (the bucket's size): any one second then sees at most
    /// `per_second + burst` calls. Default: a tenth of `per_second` (at least 1), else 1.
    pub burst: Option<f64>,
}

impl RateLimitConfig {
    /// `(window name, capacity, refill per second)` of each configured window.
    pub fn windows(&self) -> Vec<(&'static str, f64, f64)> {
        let burst = self
            .burst
            .unwrap_or_else(|| self.per_second.map_or(1.0, |r| (r / 10.0).max(1.0)));
        let mut windows = Vec::new();
        if let Some(r) = self.per_second {
            windows.push(("second", burst, r));
        }
        if let Some(r) = self.per_minute {
            windows.push(("minute", burst.min(r).max(1.0), r / 60.0));
        }
        if let Some(r) = self.per_hour {
            windows.push(("hour", burst.min(r).max(1.0), r / 3600.0));
        }
        windows
    }

    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        for (name, v) in [
            ("per_second", self.per_second),
            ("per_minute", self.per_minute),
            ("per_hour", self.per_hour),
            ("burst", self.burst),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0 && v <= 1e9)
            {
                return Err(ConfigError::Invalid(format!(
                    "{key}.rate_limit.{name} must be a number > 0"
                )));
            }
        }
        if self.burst.is_some_and(|b| b < 1.0) {
            return Err(ConfigError::Invalid(format!(
                "{key}.rate_limit.burst must be at least 1"
            )));
        }
        Ok(())
    }
}

/// `[providers.NAME.circuit_breaker]`: after `failure_threshold` failures (5xx, timeouts,
/// network errors) within `monitoring_period`, the provider's jobs wait `recovery_timeout`
/// without calling it; then one probe call decides. Shared by all daemons through
/// `penguin.integrations`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub monitoring_period: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(30),
            monitoring_period: Duration::from_secs(60),
        }
    }
}

impl CircuitBreakerConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.failure_threshold == 0 || self.failure_threshold > 10_000 {
            return Err(ConfigError::Invalid(format!(
                "{key}.circuit_breaker.failure_threshold must be between 1 and 10000"
            )));
        }
        check_duration(
            &format!("{key}.circuit_breaker.recovery_timeout"),
            self.recovery_timeout,
            BREAKER_RANGE,
        )?;
        check_duration(
            &format!("{key}.circuit_breaker.monitoring_period"),
            self.monitoring_period,
            BREAKER_RANGE,
        )
    }
}

/// Mailgun's API region: the base URL of its REST API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailgunRegion {
    #[default]
    Us,
    Eu,
}

/// `[providers.mailgun]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunConfig {
    /// HTTP webhook signing key (`"env:NAME"` / `"file:PATH"`).
    pub webhook_signing_key: Option<String>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// Sending API key (`"env:NAME"` / `"file:PATH"`), for `mailgun.send`.
    pub api_key: Option<String>,
    /// Sending domain (`mg.example.com`).
    pub domain: Option<String>,
    /// `us` (api.mailgun.net) or `eu` (api.eu.mailgun.net).
    #[serde(default)]
    pub region: MailgunRegion,
    /// Overrides the region's URL (tests, proxies).
    pub base_url: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// `[providers.sendgrid]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridConfig {
    /// Event Webhook verification key: base64 DER public key (`"env:NAME"` / `"file:PATH"`).
    pub webhook_public_key: Option<String>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// API key (`"env:NAME"` / `"file:PATH"`), for `sendgrid.send`.
    pub api_key: Option<String>,
    /// IP pool every send goes through (`ip_pool_name`), unless the job names one.
    pub ip_pool: Option<String>,
    /// Default `https://api.sendgrid.com`.
    pub base_url: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// `[providers.stripe]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StripeConfig {
    /// Endpoint signing secret `whsec_...` (`"env:NAME"` / `"file:PATH"`).
    pub webhook_secret: Option<String>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// Platform secret key `sk_...` (`"env:NAME"` / `"file:PATH"`), for the Connect kinds.
    pub secret_key: Option<String>,
    /// The platform's fee on connected accounts' payments, in percent (0-100). Stored for
    /// the payment kinds; the onboarding kinds do not use it.
    pub application_fee_percent: Option<f64>,
    /// Default `https://api.stripe.com`.
    pub base_url: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// `[providers.posthog]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PosthogConfig {
    /// Project API key `phc_...` (`"env:NAME"` / `"file:PATH"`).
    pub api_key: Option<String>,
    /// Default `https://us.i.posthog.com`.
    pub host: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

impl ProvidersConfig {
    /// `(provider, rate limit, breaker)` of every configured provider table.
    pub fn limits(&self) -> Vec<(&'static str, Option<RateLimitConfig>, CircuitBreakerConfig)> {
        let mut limits = Vec::new();
        if let Some(c) = &self.mailgun {
            limits.push(("mailgun", c.rate_limit, c.circuit_breaker));
        }
        if let Some(c) = &self.sendgrid {
            limits.push(("sendgrid", c.rate_limit, c.circuit_breaker));
        }
        if let Some(c) = &self.stripe {
            limits.push(("stripe", c.rate_limit, c.circuit_breaker));
        }
        if let Some(c) = &self.posthog {
            limits.push(("posthog", c.rate_limit, c.circuit_breaker));
        }
        limits
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let secret = |key: &str, v: &Option<String>| -> Result<(), ConfigError> {
            match v {
                Some(r) if !(r.starts_with("env:") || r.starts_with("file:")) => {
                    Err(ConfigError::Invalid(format!(
                        "{key}: write the secret as \"env:NAME\" or \"file:PATH\", not the value itself"
                    )))
                }
                _ => Ok(()),
            }
        };
        let url = |key: &str, v: &Option<String>| -> Result<(), ConfigError> {
            match v {
                Some(u) => match reqwest::Url::parse(u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") => Ok(()),
                    _ => Err(ConfigError::Invalid(format!(
                        "{key}: {u:?} is not an http(s) URL"
                    ))),
                },
                None => Ok(()),
            }
        };
        for (provider, rate_limit, breaker) in self.limits() {
            let key = format!("providers.{provider}");
            if let Some(r) = rate_limit {
                r.validate(&key)?;
            }
            breaker.validate(&key)?;
        }
        if let Some(m) = &self.mailgun {
            secret("providers.mailgun.api_key", &m.api_key)?;
            url("providers.mailgun.base_url", &m.base_url)?;
            if m.api_key.is_some() && m.domain.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "providers.mailgun.domain is needed to send (mg.example.com)".into(),
                );
            }
            if let Some(d) = &m.domain
                && (d.is_empty() || d.contains(['/', '?', '#', ' ']))
            {
                return invalid(format!("providers.mailgun.domain: {d:?} is not a domain"));
            }
        }
        if let Some(s) = &self.sendgrid {
            secret("providers.sendgrid.api_key", &s.api_key)?;
            url("providers.sendgrid.base_url", &s.base_url)?;
        }
        if let Some(s) = &self.stripe {
            secret("providers.stripe.secret_key", &s.secret_key)?;
            url("providers.stripe.base_url", &s.base_url)?;
            if let Some(f) = s.application_fee_percent
                && !(0.0..=100.0).contains(&f)
            {
                return invalid(
                    "providers.stripe.application_fee_percent must be between 0 and 100".into(),
                );
            }
        }
        if let Some(p) = &self.posthog {
            secret("providers.posthog.api_key", &p.api_key)?;
            url("providers.posthog.host", &p.host)?;
        }
        Ok(())
    }
}

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
    /// at least 500 (the fastest drain measured; tuning it is rarely useful).
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
            .unwrap_or_else(|| self.concurrency.clamp(500, 5000))
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
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            completed: Duration::from_secs(24 * 3600),
            dead_letters: Duration::from_secs(30 * 24 * 3600),
            inbound_events: Duration::from_secs(30 * 24 * 3600),
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
        let config = toml::from_str(text).map_err(parse_error)?;
        // no setting takes a NUL (names, URLs, paths, cron, payloads: PostgreSQL stores
        // none of them); refused here once, naming the key, instead of failing at run time
        let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        if let Some(key) = find_nul(&toml::Value::Table(table), "") {
            return Err(ConfigError::Invalid(format!(
                "{key}: contains a NUL character (\\u0000), which no setting accepts"
            )));
        }
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks every value that would otherwise fail later, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_daemon()?;
        self.validate_http()?;
        self.providers.validate()?;
        self.validate_retention()?;
        self.validate_schedules()?;
        self.validate_kinds()?;
        self.validate_credentials()
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
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid(format!(
                "http.listen: {:?} is not an address like 127.0.0.1:8080",
                self.http.listen
            ));
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

/// A year as humantime reads `"1y"` (365.25 days).
pub const YEAR: Duration = Duration::from_secs(31_557_600);
/// A day.
pub const DAY: Duration = Duration::from_secs(86_400);
const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

/// The inclusive range a duration key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub min: Duration,
    pub max: Duration,
}

const fn range(min: Duration, max: Duration) -> DurationRange {
    DurationRange { min, max }
}

// The range of every duration key. Upper bounds keep every value far inside what
// `Instant`, chrono, PostgreSQL's `interval`/`timestamptz` and sqlx can hold, so that no
// arithmetic on a configured value can overflow at run time.
/// `daemon.poll_interval`.
pub const POLL_INTERVAL_RANGE: DurationRange = range(MS, HOUR);
/// `daemon.lease`: at least 3s (a heartbeat every lease/3 must fit a few round trips).
pub const LEASE_RANGE: DurationRange = range(Duration::from_secs(3), HOUR);
/// `daemon.rescue_interval`.
pub const RESCUE_INTERVAL_RANGE: DurationRange = range(Duration::from_millis(10), HOUR);
/// `daemon.shutdown_grace` (`"0s"`: release running jobs at once).
pub const SHUTDOWN_GRACE_RANGE: DurationRange = range(Duration::ZERO, DAY);
/// `daemon.unknown_kind_grace` (`"0s"`: dead-letter at once).
pub const UNKNOWN_KIND_GRACE_RANGE: DurationRange = range(Duration::ZERO, DAY.saturating_mul(365));
/// `kinds.X.timeout`.
pub const TIMEOUT_RANGE: DurationRange = range(MS, DAY);
/// `kinds.X.backoff.base` and `.max`.
pub const BACKOFF_RANGE: DurationRange = range(MS, DAY.saturating_mul(365));
/// `retention.*` (`"0s"` has each key's own meaning).
pub const RETENTION_RANGE: DurationRange = range(Duration::ZERO, YEAR.saturating_mul(100));
/// `providers.X.circuit_breaker.recovery_timeout` and `.monitoring_period`.
pub const BREAKER_RANGE: DurationRange = range(MS, DAY.saturating_mul(7));
/// `oauth.refresh_ahead`.
pub const REFRESH_AHEAD_RANGE: DurationRange =
    range(Duration::from_secs(1), DAY.saturating_mul(30));
/// `api_keys.overlap`.
pub const OVERLAP_RANGE: DurationRange = range(Duration::from_secs(1), DAY.saturating_mul(365));
/// Delays and ages given on the command line (`enqueue --in`, `dlq purge --older-than`).
pub const CLI_DELAY_RANGE: DurationRange = range(Duration::ZERO, YEAR.saturating_mul(100));

/// `Ok` if `value` lies in `range`, else the message
/// `KEY must be between MIN and MAX, got VALUE`.
pub fn check_duration_range(
    key: &str,
    value: Duration,
    range: DurationRange,
) -> Result<(), String> {
    if (range.min..=range.max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} must be between {} and {}, got {}",
            format_duration(range.min),
            format_duration(range.max),
            format_duration(value)
        ))
    }
}

fn check_duration(key: &str, value: Duration, range: DurationRange) -> Result<(), ConfigError> {
    check_duration_range(key, value, range).map_err(ConfigError::Invalid)
}

/// A duration in the largest humantime unit that holds it exactly (`"365d"`, `"1000000y"`,
/// `"90s"`), so that an error quotes a value as it was written.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    const UNITS: [(&str, u128); 8] = [
        ("y", 31_557_600 * 1_000_000_000),
        ("d", 86_400 * 1_000_000_000),
        ("h", 3_600 * 1_000_000_000),
        ("m", 60 * 1_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    let (unit, size) = UNITS
        .into_iter()
        .find(|(_, size)| nanos % size == 0)
        .unwrap_or(("ns", 1));
    format!("{}{unit}", nanos / size)
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
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{key}: name {name:?} must be 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.'"
        )))
    }
}

/// Resolves `"env:NAME"` and `"file:PATH"`; any other value is taken literally (convenient
/// for a local database URL without password). The error names the reference, never the value.
pub fn resolve_secret(reference: &str) -> Result<SecretString, ConfigError> {
    let fail = |message: String| ConfigError::Secret {
        reference: reference.to_string(),
        message,
    };
    if let Some(name) = reference.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
            Ok(_) => Err(fail("the environment variable is empty".into())),
            Err(_) => Err(fail("the environment variable is not set".into())),
        }
    } else if let Some(path) = reference.strip_prefix("file:") {
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let value = text.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(fail("the file is empty".into()));
        }
        Ok(SecretString::from(value))
    } else {
        Ok(SecretString::from(reference.to_string()))
    }
}

/// Like [`resolve_secret`], but only `"env:NAME"` and `"file:PATH"` are accepted: tokens
/// and signing keys must not sit in the config file itself.
pub fn resolve_secret_ref(key: &str, reference: &str) -> Result<SecretString, ConfigError> {
    if reference.starts_with("env:") || reference.starts_with("file:") {
        resolve_secret(reference)
    } else {
        Err(ConfigError::Invalid(format!(
            "{key}: write the secret as \"env:NAME\" or \"file:PATH\", not the value itself"
        )))
    }
}

/// A database URL with its password replaced, for logs and errors.
pub fn redact_url(url: &SecretString) -> String {
    let raw = url.expose_secret();
    match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &raw[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &raw[..scheme_end], user, &raw[at + 1..])
        }
        _ => raw.split('?').next().unwrap_or("").to_string(),
    }
}

/// `[secrets]`: the master key that encrypts credentials at rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The master key (base64 of 32 bytes) as `"env:NAME"` or `"file:PATH"`. The
    /// `PENGUIN_JOBS_MASTER_KEY` environment variable overrides it. Unset: storing a
    /// credential is refused.
    pub master_key: Option<String>,
    /// Older master keys, accepted for decryption only (`"env:NAME"` / `"file:PATH"`):
    /// keep the old key here while `secrets rotate-master` moves ciphertexts to the new one.
    pub previous_master_keys: Vec<String>,
}

/// `[oauth]`: OAuth connections and their scheduled refresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Run the built-in `oauth-refresh-sweep` schedule.
    pub refresh: bool,
    /// When the sweep runs (cron, UTC).
    pub refresh_cron: String,
    /// Refresh connections whose access token expires within this.
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// Redirect URI `oauth authorize` uses without `--redirect-uri`: the shim's
    /// `/oauth/callback/{provider}` as the provider reaches it (`{provider}` is replaced).
    pub redirect_uri: Option<String>,
    /// `[oauth.providers.NAME]`: client credentials of the built-in providers (`google`,
    /// `microsoft`, `hubspot`), overrides of their URLs, and more providers.
    pub providers: BTreeMap<String, OAuthProviderConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            refresh: true,
            refresh_cron: "* * * * *".into(),
            refresh_ahead: Duration::from_secs(600),
            redirect_uri: None,
            providers: BTreeMap::new(),
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Body,
}

/// `[oauth.providers.NAME]`. For a built-in provider every field but the client
/// credentials has a default; another provider needs them all but `userinfo_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthProviderConfig {
    /// The client id the provider issued (not a secret).
    pub client_id: Option<String>,
    /// The client secret, `"env:NAME"` or `"file:PATH"`.
    pub client_secret: Option<String>,
    /// Authorization endpoint.
    pub auth_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Userinfo endpoint (GET with the new access token); `{access_token}` in it is
    /// replaced by the token (HubSpot's token info). Unset: accounts are named by the
    /// token answer alone.
    pub userinfo_url: Option<String>,
    /// Scopes asked for.
    pub scopes: Option<Vec<String>>,
    /// `"basic"` or `"body"`.
    pub client_auth: Option<ClientAuth>,
    /// Extra query parameters of the authorization URL (Google: `access_type = "offline"`).
    pub auth_params: Option<BTreeMap<String, String>>,
}

/// `[api_keys]`: provider API keys and their scheduled rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// Run the built-in `apikey-rotation` schedule.
    pub rotation: bool,
    /// When it runs (cron, UTC).
    pub rotation_cron: String,
    /// How long a replaced key stays `retiring` (valid, for in-flight work) before it is revoked.
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    /// `[api_keys.providers.NAME]`: how to test a key and, where the provider has a key
    /// API, how to create and revoke keys.
    pub providers: BTreeMap<String, ApiKeyProviderConfig>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            rotation: true,
            rotation_cron: "0 3 * * *".into(),
            overlap: Duration::from_secs(24 * 3600),
            providers: BTreeMap::new(),
        }
    }
}

/// `[api_keys.providers.NAME]`: overrides of a built-in provider's key hooks
/// (`mailgun`, `sendgrid`, `stripe`, `posthog`), or the hooks of another provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyProviderConfig {
    /// A cheap authenticated GET that succeeds only with a valid key.
    pub test_url: Option<String>,
    /// How a key is sent: `"bearer"`, `"basic:USER"` (key as the password) or `"header:NAME"`.
    pub auth: Option<String>,
    /// Key API: POST here, authenticated with the active key, to create the next key.
    /// Unset: rotation uses the key an operator staged (`keys stage`).
    pub create_url: Option<String>,
    /// JSON body of the create call.
    pub create_body: Option<serde_json::Value>,
    /// Dot-separated path of the new key in the create answer (default `key`).
    pub key_field: Option<String>,
    /// Dot-separated path of the new key's provider id in the create answer (default `id`).
    pub id_field: Option<String>,
    /// Key API: DELETE here (`{id}`: the provider's key id) when a retired key is revoked.
    pub revoke_url: Option<String>,
}

impl Config {
    fn validate_credentials(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        check_duration(
            "oauth.refresh_ahead",
            self.oauth.refresh_ahead,
            REFRESH_AHEAD_RANGE,
        )?;
        for (name, p) in &self.oauth.providers {
            check_name("oauth.providers", name)?;
            if let Some(s) = &p.client_secret
                && !(s.starts_with("env:") || s.starts_with("file:"))
            {
                return invalid(format!(
                    "oauth.providers.{name}.client_secret: write the secret as \"env:NAME\" or \"file:PATH\", not the value itself"
                ));
            }
        }
        check_duration("api_keys.overlap", self.api_keys.overlap, OVERLAP_RANGE)?;
        for (name, p) in &self.api_keys.providers {
            check_name("api_keys.providers", name)?;
            if let Some(a) = &p.auth
                && !(a == "bearer" || a.starts_with("basic:") || a.starts_with("header:"))
            {
                return invalid(format!(
                    "api_keys.providers.{name}.auth: {a:?} is not \"bearer\", \"basic:USER\" or \"header:NAME\""
                ));
            }
        }
        Ok(())
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
        assert_eq!(c.queue("default").batch_size(), 500);
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

    fn invalid(toml: &str) -> String {
        match Config::from_toml(toml, Path::new("x")) {
            Ok(c) => c.validate().expect_err(toml).to_string(),
            Err(e) => e.to_string(),
        }
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
