//! Job kinds: one module per kind, and the registry that maps the stable kind string to
//! its handler and its policy (queue, attempts, priority, timeout, backoff).
//!
//! A handler does one attempt of one job and says how it went: a result, a retryable
//! error, a fatal error, a snooze or a cancel. It must never decide retry timing, write
//! job rows, or know about the worker runtime or the HTTP shim.

pub mod apikey;
pub mod email_send;
pub mod http_request;
pub mod inbound;
pub mod mailgun_event;
pub mod maintenance;
pub mod noop;
pub mod oauth;
pub mod outbound;
pub mod posthog_capture;
pub mod send_ledger;
pub mod sendgrid_event;
pub mod stripe_connect;
pub mod stripe_event;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::config::{BackoffConfig, Config};
use crate::error_class::ErrorClass;
use crate::providers::http::CallError;
use crate::queue::{KindDefaults, NewJob};

/// How one attempt failed (or asked to stop or wait).
#[derive(Debug, Clone, PartialEq)]
pub enum JobError {
    /// Try again later (5xx, 429, timeouts, network).
    Retryable {
        class: ErrorClass,
        message: String,
        status: Option<u16>,
        /// Not before this instant (`Retry-After`).
        not_before: Option<DateTime<Utc>>,
    },
    /// Retrying cannot help (4xx, bad payload): straight to the dead letters.
    Fatal {
        class: ErrorClass,
        message: String,
        status: Option<u16>,
    },
    /// Not now: run again after `delay` without spending an attempt.
    Snooze { delay: Duration },
    /// Stop for good, without dead-lettering.
    Cancel { message: String },
}

impl JobError {
    /// A fatal `data` error: the payload cannot be processed.
    pub fn bad_payload(message: impl Into<String>) -> Self {
        JobError::Fatal {
            class: ErrorClass::Data,
            message: message.into(),
            status: None,
        }
    }
}

/// A failure of our own database (connection, statement, a row not found or in conflict):
/// retried, with class `database`.
impl From<crate::queue::Error> for JobError {
    fn from(e: crate::queue::Error) -> Self {
        JobError::Retryable {
            class: ErrorClass::Database,
            message: e.to_string(),
            status: None,
            not_before: None,
        }
    }
}

impl From<sqlx::Error> for JobError {
    fn from(e: sqlx::Error) -> Self {
        crate::queue::Error::from(e).into()
    }
}

/// A secret that cannot be sealed or unsealed (no master key, a key that does not open
/// it): our configuration is wrong, and retrying will not fix it.
impl From<crate::secrets::SecretsError> for JobError {
    fn from(e: crate::secrets::SecretsError) -> Self {
        JobError::Fatal {
            class: ErrorClass::Configuration,
            message: e.to_string(),
            status: None,
        }
    }
}

impl From<CallError> for JobError {
    fn from(e: CallError) -> Self {
        if e.retryable {
            JobError::Retryable {
                class: e.class,
                message: e.message,
                status: e.status,
                not_before: e.not_before,
            }
        } else {
            JobError::Fatal {
                class: e.class,
                message: e.message,
                status: e.status,
            }
        }
    }
}

/// What a handler knows about the job besides its payload.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub id: i64,
    pub kind: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub tenant_id: Option<uuid::Uuid>,
    /// The kind's timeout for one attempt (the runtime enforces it too).
    pub timeout: Duration,
    /// When the attempt started (the runtime cancels it at `started + timeout`).
    pub started: std::time::Instant,
}

impl JobContext {
    /// How long a provider call made now may take so that the attempt still has time to
    /// record what the provider answered before the runtime cancels it: the rest of the
    /// attempt, less a margin of a fifth of the timeout (between 100 ms and 5 s). A call
    /// that outlives the attempt could be accepted and never recorded, then sent again.
    pub fn call_timeout(&self) -> Duration {
        let margin = (self.timeout / 5).clamp(Duration::from_millis(100), Duration::from_secs(5));
        self.timeout
            .saturating_sub(self.started.elapsed())
            .saturating_sub(margin)
            .max(Duration::from_millis(10))
    }
}

#[cfg(test)]
mod conversion_tests {
    use super::*;

    #[test]
    fn a_database_failure_is_retried_with_class_database() {
        for e in [
            JobError::from(sqlx::Error::PoolTimedOut),
            JobError::from(crate::queue::Error::Invalid("row refused".into())),
        ] {
            let JobError::Retryable { class, message, .. } = e else {
                panic!("not retryable: {e:?}");
            };
            assert_eq!(class, ErrorClass::Database);
            assert!(!message.is_empty());
        }
    }

    #[test]
    fn a_secret_that_cannot_be_opened_is_a_configuration_error() {
        let e = JobError::from(crate::secrets::SecretsError::NoMasterKey);
        assert!(matches!(
            e,
            JobError::Fatal {
                class: ErrorClass::Configuration,
                ..
            }
        ));
    }
}

#[cfg(test)]
mod call_timeout_tests {
    use super::*;

    fn ctx(timeout: Duration, ago: Duration) -> JobContext {
        JobContext {
            id: 1,
            kind: "k".into(),
            attempt: 1,
            max_attempts: 1,
            tenant_id: None,
            timeout,
            started: std::time::Instant::now() - ago,
        }
    }

    #[test]
    fn a_call_ends_with_a_margin_inside_the_attempt() {
        let t = ctx(Duration::from_secs(30), Duration::ZERO).call_timeout();
        assert!(
            t <= Duration::from_secs(25) && t > Duration::from_secs(24),
            "{t:?}"
        );
        let t = ctx(Duration::from_secs(30), Duration::from_secs(10)).call_timeout();
        assert!(t <= Duration::from_secs(15), "{t:?}");
        let t = ctx(Duration::from_secs(1), Duration::ZERO).call_timeout();
        assert!(t <= Duration::from_millis(800), "{t:?}");
        let spent = ctx(Duration::from_secs(1), Duration::from_secs(5)).call_timeout();
        assert_eq!(spent, Duration::from_millis(10));
    }
}

/// The result of one attempt: an optional JSON result stored on the job.
pub type Attempt = Result<Option<serde_json::Value>, JobError>;

/// One kind's code.
pub trait Handler: Send + Sync + 'static {
    /// The stable kind string (`noop`, `http.request`, ...).
    fn kind(&self) -> &'static str;
    /// Built-in policy, before `[kinds."KIND"]` overrides.
    fn default_policy(&self) -> KindPolicy {
        KindPolicy::default()
    }
    /// Checks a payload at enqueue time; the message says what is wrong.
    fn validate(&self, payload: &serde_json::Value) -> Result<(), String>;
    /// Runs one attempt.
    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt>;
}

/// Queue, attempts, priority, timeout and backoff of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct KindPolicy {
    pub queue: String,
    pub max_attempts: i32,
    pub priority: i16,
    pub timeout: Duration,
    pub backoff: BackoffConfig,
}

impl Default for KindPolicy {
    fn default() -> Self {
        Self {
            queue: "default".into(),
            max_attempts: 25,
            priority: 0,
            timeout: Duration::from_secs(60),
            backoff: BackoffConfig::default(),
        }
    }
}

/// Why an enqueue was refused before reaching the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueRefused {
    #[error("unknown job kind {kind:?} (known kinds: {known})")]
    UnknownKind { kind: String, known: String },
    #[error("invalid payload for {kind}: {message}")]
    BadPayload { kind: String, message: String },
}

/// Registry building errors (a config naming a kind that does not exist).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(pub String);

/// Everything a handler may need, built once per daemon.
#[derive(Clone)]
pub struct Deps {
    pub http: reqwest::Client,
    /// The database, for kinds that work on our own tables (maintenance). `None` where
    /// the registry only checks payloads (the CLI's enqueue).
    pub pool: Option<sqlx::PgPool>,
    /// The master keys, for kinds that read or store credentials. `None`: no master key
    /// configured, and those kinds fail with a configuration error.
    pub keyring: Option<Arc<crate::secrets::Keyring>>,
}

impl Deps {
    /// Builds the shared HTTP client.
    pub fn new() -> Result<Self, RegistryError> {
        let http = crate::providers::http::client(Duration::from_secs(60))
            .map_err(|e| RegistryError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            pool: None,
            keyring: None,
        })
    }

    /// The same, with the master keys.
    pub fn with_keyring(self, keyring: Option<crate::secrets::Keyring>) -> Self {
        Self {
            keyring: keyring.map(Arc::new),
            ..self
        }
    }

    /// The same, with the database.
    pub fn with_pool(self, pool: sqlx::PgPool) -> Self {
        Self {
            pool: Some(pool),
            ..self
        }
    }
}

/// Kind string → handler and effective policy.
#[derive(Clone)]
pub struct Registry {
    handlers: HashMap<&'static str, (Arc<dyn Handler>, KindPolicy)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Registry {
    /// The built-in kinds with `config`'s overrides applied.
    pub fn builtin(config: &Config, deps: &Deps) -> Result<Self, RegistryError> {
        let outbound = outbound::Outbound::new(
            outbound::ProviderLimits::from_config(config),
            deps.pool.clone(),
            deps.keyring.clone(),
        );
        let providers = &config.providers;
        let stripe = Arc::new(crate::providers::stripe::Stripe::new(
            providers.stripe.as_ref(),
        ));
        let ledger = Arc::new(send_ledger::SendLedger::default());
        let send = |provider| {
            email_send::EmailSend::new(
                provider,
                deps.http.clone(),
                deps.pool.clone(),
                outbound.clone(),
                ledger.clone(),
            )
        };
        let handlers: Vec<Arc<dyn Handler>> = vec![
            Arc::new(send(email_send::EmailProvider::Mailgun(
                crate::providers::mailgun::Mailgun::new(providers.mailgun.as_ref()),
            ))),
            Arc::new(send(email_send::EmailProvider::Sendgrid(
                crate::providers::sendgrid::Sendgrid::new(providers.sendgrid.as_ref()),
            ))),
            Arc::new(stripe_connect::CreateAccount::new(
                stripe.clone(),
                deps.http.clone(),
                deps.pool.clone(),
                outbound.clone(),
            )),
            Arc::new(stripe_connect::CreateAccountLink::new(
                stripe,
                deps.http.clone(),
                outbound.clone(),
            )),
            Arc::new(posthog_capture::Capture::new(
                crate::providers::posthog::Posthog::new(providers.posthog.as_ref()),
                deps.http.clone(),
                outbound.clone(),
            )),
            Arc::new(noop::Noop),
            Arc::new(http_request::HttpRequest::new(deps.http.clone())),
            Arc::new(maintenance::Prune::new(config, deps.pool.clone())),
            Arc::new(mailgun_event::handler(deps.pool.clone())),
            Arc::new(sendgrid_event::handler(deps.pool.clone())),
            Arc::new(stripe_event::StripeEvent::new(deps.pool.clone())),
        ];
        let mut handlers = handlers;
        handlers.extend(oauth::handlers(config, deps)?);
        handlers.extend(apikey::handlers(config, deps));
        Self::new(handlers, &config.kinds)
    }

    /// A registry of `handlers`, with `overrides` (the `[kinds]` tables) applied; an
    /// override naming no handler is an error.
    pub fn new(
        handlers: Vec<Arc<dyn Handler>>,
        overrides: &BTreeMap<String, crate::config::KindConfig>,
    ) -> Result<Self, RegistryError> {
        let mut map = HashMap::new();
        for handler in handlers {
            let mut policy = handler.default_policy();
            if let Some(o) = overrides.get(handler.kind()) {
                if let Some(q) = &o.queue {
                    policy.queue = q.clone();
                }
                if let Some(m) = o.max_attempts {
                    policy.max_attempts = i32::try_from(m).unwrap_or(i32::MAX);
                }
                if let Some(p) = o.priority {
                    policy.priority = p;
                }
                if let Some(t) = o.timeout {
                    policy.timeout = t;
                }
                if let Some(b) = o.backoff {
                    policy.backoff = b;
                }
            }
            map.insert(handler.kind(), (handler, policy));
        }
        let registry = Self { handlers: map };
        for kind in overrides.keys() {
            if !registry.handlers.contains_key(kind.as_str()) {
                return Err(RegistryError(format!(
                    "kinds.\"{kind}\": not a known job kind (known kinds: {})",
                    registry.kinds().join(", ")
                )));
            }
        }
        Ok(registry)
    }

    /// Known kind strings, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.handlers.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    /// The handler and policy of `kind`.
    pub fn get(&self, kind: &str) -> Option<&(Arc<dyn Handler>, KindPolicy)> {
        self.handlers.get(kind)
    }

    /// Queues that some kind is routed to.
    pub fn queues(&self) -> BTreeSet<String> {
        self.handlers
            .values()
            .map(|(_, p)| p.queue.clone())
            .collect()
    }

    /// Rows for `penguin.kinds`.
    pub fn kind_defaults(&self) -> Vec<KindDefaults> {
        self.kinds()
            .into_iter()
            .map(|kind| {
                let (_, p) = &self.handlers[kind];
                KindDefaults {
                    kind: kind.to_string(),
                    queue: p.queue.clone(),
                    max_attempts: p.max_attempts,
                    priority: p.priority,
                }
            })
            .collect()
    }

    /// Checks a job before it is enqueued from Rust, the CLI or HTTP.
    pub fn check(&self, job: &NewJob) -> Result<(), EnqueueRefused> {
        let Some((handler, _)) = self.handlers.get(job.kind.as_str()) else {
            return Err(EnqueueRefused::UnknownKind {
                kind: job.kind.clone(),
                known: self.kinds().join(", "),
            });
        };
        handler
            .validate(&job.payload)
            .map_err(|message| EnqueueRefused::BadPayload {
                kind: job.kind.clone(),
                message,
            })
    }
}
