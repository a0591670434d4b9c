//! Job kinds: one module per kind, and the registry that maps the stable kind string to
//! its handler and its policy (queue, attempts, priority, timeout, backoff).
//!
//! A kind is its payload type: it implements [`Kind`] (its name, the dependencies it
//! runs with, its policy, extra checks, and `run`). One adapter turns a kind into the
//! runtime's [`Handler`]: it decodes and checks the payload by the same code at enqueue
//! time and before every attempt. [`Kinds`] describes the built-in kinds without running
//! anything (to check jobs and write `penguin.kinds`); [`Registry`] runs them, each with
//! its dependencies, checked when it is built.
//!
//! A handler does one attempt of one job and says how it went: a result, a retryable
//! error, a fatal error, a snooze or a cancel. It must never decide retry timing, write
//! job rows, or know about the worker runtime or the HTTP shim.

pub mod apikey;
pub mod email_send;
pub mod health_check;
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
    /// A failure's class, message and HTTP status; `None` for a snooze or a cancellation
    /// (which are not failures).
    pub fn failure(&self) -> Option<(ErrorClass, &str, Option<u16>)> {
        match self {
            JobError::Retryable {
                class,
                message,
                status,
                ..
            }
            | JobError::Fatal {
                class,
                message,
                status,
            } => Some((*class, message, *status)),
            JobError::Snooze { .. } | JobError::Cancel { .. } => None,
        }
    }

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

/// A credential that cannot be stored or opened: a database failure is retried, a sealing
/// failure is our configuration's.
impl From<crate::credentials::connections::StoreError> for JobError {
    fn from(e: crate::credentials::connections::StoreError) -> Self {
        use crate::credentials::connections::StoreError;
        match e {
            StoreError::Queue(q) => q.into(),
            StoreError::Secrets(s) => s.into(),
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
mod kind_name_tests {
    use crate::kind_names;

    #[test]
    fn the_kinds_the_shim_enqueues_are_built_in() {
        let config = crate::config::Config::default();
        let kinds = super::Kinds::builtin(&config).unwrap();
        for name in [
            kind_names::STRIPE_EVENT,
            kind_names::SENDGRID_EVENT,
            kind_names::MAILGUN_EVENT,
            kind_names::OAUTH_EXCHANGE,
        ] {
            assert!(kinds.get(name).is_some(), "{name} is not a built-in kind");
        }
    }
    /// Kinds are public unless they set `Kind::INTERNAL`, and every plain API token may
    /// enqueue a public kind: this list makes a new public kind a decision.
    #[test]
    fn only_the_kinds_a_backend_sends_are_public() {
        let kinds = super::Kinds::builtin(&crate::config::Config::default()).unwrap();
        let public: Vec<_> = kinds
            .kinds()
            .into_iter()
            .filter(|k| kinds.internal(k) == Some(false))
            .collect();
        assert_eq!(
            public,
            [
                "http.request",
                "mailgun.send",
                "noop",
                "posthog.capture",
                "sendgrid.send",
                "stripe.account.create",
                "stripe.account_link.create"
            ]
        );
        assert_eq!(kinds.internal("no.such.kind"), None);
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

/// One job kind. The payload type is the kind: it is decoded from the job's JSON (and
/// checked by [`Kind::validate`]) by the same code at enqueue time and before every
/// attempt, and then it runs. Its JSON Schema (`schemars`) is the payload's schema in the
/// shim's OpenAPI document.
///
/// ```text
/// #[derive(Deserialize, JsonSchema)]
/// struct Ping { url: String }
///
/// impl Kind for Ping {
///     const KIND: &'static str = "ping";
///     type Deps = reqwest::Client;
///     async fn run(self, ctx: &JobContext, http: &reqwest::Client) -> Attempt { .. }
/// }
/// ```
pub trait Kind: serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static {
    /// The stable kind string (`noop`, `http.request`, ...).
    const KIND: &'static str;
    /// Enqueued by the daemon itself (schedules, sweeps, webhooks, CLI commands): a
    /// caller over HTTP or the CLI's `enqueue` may enqueue it only with a token that names
    /// it. Credential, maintenance and webhook-event kinds are internal.
    const INTERNAL: bool = false;
    /// What an attempt needs besides its payload, built once with the registry.
    type Deps: Send + Sync + 'static;
    /// Built-in policy, before `[kinds."KIND"]` overrides.
    fn policy() -> KindPolicy {
        KindPolicy::default()
    }
    /// Checks the decoded payload beyond its shape; the message names the field at fault.
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
    /// Runs one attempt.
    fn run(
        self,
        ctx: &JobContext,
        deps: &Self::Deps,
    ) -> impl std::future::Future<Output = Attempt> + Send;
}

/// Decodes and checks a payload of kind `K`. A decoding error names the path of the field
/// at fault (`to[0]: invalid type: ..`) unless it is the payload itself.
pub fn decode<K: Kind>(payload: &serde_json::Value) -> Result<K, String> {
    let job: K = serde_path_to_error::deserialize(payload).map_err(|e| e.to_string())?;
    job.validate()?;
    Ok(job)
}

/// What the registry knows of a kind without running it: its name, its policy, and how
/// to check a payload.
pub trait Describe: Send + Sync + 'static {
    /// The stable kind string.
    fn kind(&self) -> &'static str;
    /// Built-in policy, before `[kinds."KIND"]` overrides.
    fn default_policy(&self) -> KindPolicy {
        KindPolicy::default()
    }
    /// Checks a payload at enqueue time; the message says what is wrong.
    fn validate(&self, payload: &serde_json::Value) -> Result<(), String>;
    /// [`Kind::INTERNAL`].
    fn internal(&self) -> bool {
        false
    }
    /// The JSON Schema (2020-12, as OpenAPI 3.1 uses) of the kind's payload; by default
    /// any value.
    fn payload_schema(&self) -> serde_json::Value {
        serde_json::Value::Bool(true)
    }
}

/// The JSON Schema of `K`'s payload.
fn schema_of<K: Kind>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(K)).unwrap_or(serde_json::Value::Bool(true))
}

/// One kind's code, as the runtime calls it.
pub trait Handler: Describe {
    /// Runs one attempt.
    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt>;
}

/// A [`Kind`] described by its type alone, for checking payloads where nothing runs.
#[derive(Clone, Copy)]
pub struct KindInfo {
    kind: &'static str,
    internal: bool,
    policy: fn() -> KindPolicy,
    check: fn(&serde_json::Value) -> Result<(), String>,
    schema: fn() -> serde_json::Value,
}

impl KindInfo {
    /// The description of `K`.
    pub const fn of<K: Kind>() -> Self {
        Self {
            kind: K::KIND,
            internal: K::INTERNAL,
            policy: K::policy,
            check: check::<K>,
            schema: schema_of::<K>,
        }
    }
}

fn check<K: Kind>(payload: &serde_json::Value) -> Result<(), String> {
    decode::<K>(payload).map(drop)
}

impl Describe for KindInfo {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn default_policy(&self) -> KindPolicy {
        (self.policy)()
    }
    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        (self.check)(payload)
    }
    fn internal(&self) -> bool {
        self.internal
    }
    fn payload_schema(&self) -> serde_json::Value {
        (self.schema)()
    }
}

/// The handler of kind `K`, running with `deps`.
pub fn handler<K: Kind>(deps: impl Into<Arc<K::Deps>>) -> Arc<dyn Handler> {
    Arc::new(Typed::<K> { deps: deps.into() })
}

/// The adapter from a [`Kind`] to a [`Handler`]: decodes the payload, then runs it with
/// the kind's dependencies.
struct Typed<K: Kind> {
    deps: Arc<K::Deps>,
}

impl<K: Kind> Describe for Typed<K> {
    fn kind(&self) -> &'static str {
        K::KIND
    }
    fn default_policy(&self) -> KindPolicy {
        K::policy()
    }
    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        check::<K>(payload)
    }
    fn internal(&self) -> bool {
        K::INTERNAL
    }
    fn payload_schema(&self) -> serde_json::Value {
        schema_of::<K>()
    }
}

impl<K: Kind> Handler for Typed<K> {
    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let deps = self.deps.clone();
        Box::pin(async move {
            let job = decode::<K>(&payload).map_err(JobError::bad_payload)?;
            job.run(&ctx, &deps).await
        })
    }
}

/// A payload that must be `{}`.
#[derive(Debug, Clone, Copy)]
pub struct NoPayload;

impl<'de> serde::Deserialize<'de> for NoPayload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Object(o) if o.is_empty() => Ok(NoPayload),
            _ => Err(serde::de::Error::custom("takes no payload (use {})")),
        }
    }
}

impl schemars::JsonSchema for NoPayload {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NoPayload".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Takes no payload: {}",
            "type": "object",
            "maxProperties": 0
        })
    }
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

/// What the built-in kinds share, built once per daemon.
#[derive(Clone)]
pub struct Deps {
    pub http: reqwest::Client,
    /// The database: every kind that runs reads or writes our tables.
    pub pool: sqlx::PgPool,
    /// The master keys, for kinds that read or store credentials. `None`: no master key
    /// configured, and those kinds fail with a configuration error.
    pub keyring: Option<Arc<crate::secrets::Keyring>>,
    /// The daemon's Prometheus metrics (provider calls count into it).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Deps {
    /// The shared HTTP client and `pool`, without master keys.
    pub fn new(pool: sqlx::PgPool) -> Result<Self, RegistryError> {
        let http = crate::providers::http::client(Duration::from_secs(60))
            .map_err(|e| RegistryError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            pool,
            keyring: None,
            metrics: crate::metrics::Metrics::new(),
        })
    }

    /// The same, counting into `metrics`.
    pub fn with_metrics(self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self { metrics, ..self }
    }

    /// The same, with the master keys.
    pub fn with_keyring(self, keyring: Option<crate::secrets::Keyring>) -> Self {
        Self {
            keyring: keyring.map(Arc::new),
            ..self
        }
    }
}

/// Every built-in kind, described by its type.
const BUILTIN: &[KindInfo] = &[
    KindInfo::of::<email_send::MailgunSend>(),
    KindInfo::of::<email_send::SendgridSend>(),
    KindInfo::of::<stripe_connect::CreateAccount>(),
    KindInfo::of::<stripe_connect::CreateAccountLink>(),
    KindInfo::of::<posthog_capture::Capture>(),
    KindInfo::of::<noop::Noop>(),
    KindInfo::of::<http_request::HttpRequest>(),
    KindInfo::of::<maintenance::Prune>(),
    KindInfo::of::<mailgun_event::MailgunEvent>(),
    KindInfo::of::<sendgrid_event::SendgridEvent>(),
    KindInfo::of::<stripe_event::StripeEvent>(),
    KindInfo::of::<oauth::Exchange>(),
    KindInfo::of::<oauth::Refresh>(),
    KindInfo::of::<oauth::Sweep>(),
    KindInfo::of::<apikey::Rotate>(),
    KindInfo::of::<apikey::Revoke>(),
    KindInfo::of::<apikey::Sweep>(),
    KindInfo::of::<health_check::HealthCheck>(),
];

/// The built-in kinds with what each needs to run.
fn builtin_handlers(config: &Config, deps: &Deps) -> Result<Vec<Arc<dyn Handler>>, RegistryError> {
    let outbound = outbound::Outbound::new(
        outbound::ProviderLimits::from_config(config),
        Some(deps.pool.clone()),
        deps.keyring.clone(),
        deps.metrics.clone(),
    );
    let providers = &config.providers;
    let stripe = Arc::new(stripe_connect::StripeDeps {
        stripe: crate::providers::stripe::Stripe::new(providers.stripe.as_ref()),
        http: deps.http.clone(),
        pool: deps.pool.clone(),
        outbound: outbound.clone(),
    });
    let ledger = Arc::new(send_ledger::SendLedger::default());
    let send = |provider| email_send::SendDeps {
        provider,
        http: deps.http.clone(),
        pool: deps.pool.clone(),
        outbound: outbound.clone(),
        ledger: ledger.clone(),
    };
    let posthog = posthog_capture::Collector::new(
        crate::providers::posthog::Posthog::new(providers.posthog.as_ref()),
        deps.http.clone(),
        outbound.clone(),
    );
    let oauth = Arc::new(oauth::OAuthDeps::new(config, deps)?.counting(outbound.clone()));
    let keys = Arc::new(apikey::KeyDeps::new(config, deps));
    Ok(vec![
        handler::<email_send::MailgunSend>(send(email_send::EmailProvider::Mailgun(
            crate::providers::mailgun::Mailgun::new(providers.mailgun.as_ref()),
        ))),
        handler::<email_send::SendgridSend>(send(email_send::EmailProvider::Sendgrid(
            crate::providers::sendgrid::Sendgrid::new(providers.sendgrid.as_ref()),
        ))),
        handler::<stripe_connect::CreateAccount>(stripe.clone()),
        handler::<stripe_connect::CreateAccountLink>(stripe),
        handler::<posthog_capture::Capture>(posthog),
        handler::<noop::Noop>(()),
        handler::<health_check::HealthCheck>(health_check::HealthDeps {
            http: deps.http.clone(),
            outbound: outbound.clone(),
            mailgun: crate::providers::mailgun::Mailgun::new(providers.mailgun.as_ref()),
            sendgrid: crate::providers::sendgrid::Sendgrid::new(providers.sendgrid.as_ref()),
            stripe: crate::providers::stripe::Stripe::new(providers.stripe.as_ref()),
            posthog: crate::providers::posthog::Posthog::new(providers.posthog.as_ref()),
        }),
        handler::<http_request::HttpRequest>(http_request::HttpDeps {
            guarded: crate::providers::egress::GuardedClient::new(
                &config.egress,
                Duration::from_secs(60),
            )
            .map_err(|e| RegistryError(format!("cannot build the HTTP client: {e}")))?,
            outbound: outbound.clone(),
        }),
        handler::<maintenance::Prune>(maintenance::Retention::new(config, deps.pool.clone())),
        handler::<mailgun_event::MailgunEvent>(mailgun_event::MailgunEventDeps::new(
            providers.mailgun.as_ref(),
            deps,
            &outbound,
        )),
        handler::<sendgrid_event::SendgridEvent>(deps.pool.clone()),
        handler::<stripe_event::StripeEvent>(deps.pool.clone()),
        handler::<oauth::Exchange>(oauth.clone()),
        handler::<oauth::Refresh>(oauth.clone()),
        handler::<oauth::Sweep>(oauth),
        handler::<apikey::Rotate>(keys.clone()),
        handler::<apikey::Revoke>(keys.clone()),
        handler::<apikey::Sweep>(keys),
    ])
}

/// `policy` with what a `[kinds."KIND"]` table sets.
fn apply_override(policy: &mut KindPolicy, o: &crate::config::KindConfig) {
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

/// Kind string → its description (or its handler) and effective policy.
#[derive(Clone)]
pub struct Catalog<H: ?Sized + Describe> {
    entries: HashMap<&'static str, (Arc<H>, KindPolicy)>,
}

/// The kinds a caller may enqueue, with their policies: enough to check a job and to
/// write `penguin.kinds`, without running anything.
pub type Kinds = Catalog<dyn Describe>;

/// The kinds a daemon runs: each with its handler, built with its dependencies.
pub type Registry = Catalog<dyn Handler>;

impl<H: ?Sized + Describe> std::fmt::Debug for Catalog<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Kinds {
    /// The built-in kinds with `config`'s overrides applied.
    pub fn builtin(config: &Config) -> Result<Self, RegistryError> {
        let described = BUILTIN
            .iter()
            .map(|k| Arc::new(*k) as Arc<dyn Describe>)
            .collect();
        Self::new(described, &config.kinds)
    }
}

impl Registry {
    /// The built-in kinds with `config`'s overrides applied, ready to run with `deps`.
    pub fn builtin(config: &Config, deps: &Deps) -> Result<Self, RegistryError> {
        let registry = Self::new(builtin_handlers(config, deps)?, &config.kinds)?;
        let described = Kinds::builtin(config)?;
        if registry.kinds() != described.kinds() {
            return Err(RegistryError(format!(
                "the built-in kinds ({}) and their handlers ({}) differ",
                described.kinds().join(", "),
                registry.kinds().join(", ")
            )));
        }
        Ok(registry)
    }
}

impl<H: ?Sized + Describe> Catalog<H> {
    /// A catalog of `items`, with `overrides` (the `[kinds]` tables) applied; an override
    /// naming no kind is an error.
    pub fn new(
        items: Vec<Arc<H>>,
        overrides: &BTreeMap<String, crate::config::KindConfig>,
    ) -> Result<Self, RegistryError> {
        let mut entries = HashMap::new();
        for item in items {
            let mut policy = item.default_policy();
            if let Some(o) = overrides.get(item.kind()) {
                apply_override(&mut policy, o);
            }
            entries.insert(item.kind(), (item, policy));
        }
        let catalog = Self { entries };
        for kind in overrides.keys() {
            if !catalog.entries.contains_key(kind.as_str()) {
                return Err(RegistryError(format!(
                    "kinds.\"{kind}\": not a known job kind (known kinds: {})",
                    catalog.kinds().join(", ")
                )));
            }
        }
        Ok(catalog)
    }

    /// Known kind strings, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds: Vec<_> = self.entries.keys().copied().collect();
        kinds.sort_unstable();
        kinds
    }

    /// The handler (or description) and policy of `kind`.
    pub fn get(&self, kind: &str) -> Option<&(Arc<H>, KindPolicy)> {
        self.entries.get(kind)
    }

    /// Queues that some kind is routed to.
    pub fn queues(&self) -> BTreeSet<String> {
        self.entries
            .values()
            .map(|(_, p)| p.queue.clone())
            .collect()
    }

    /// Rows for `penguin.kinds`.
    pub fn kind_defaults(&self) -> Vec<KindDefaults> {
        self.kinds()
            .into_iter()
            .map(|kind| {
                let (_, p) = &self.entries[kind];
                KindDefaults {
                    kind: kind.to_string(),
                    queue: p.queue.clone(),
                    max_attempts: p.max_attempts,
                    priority: p.priority,
                }
            })
            .collect()
    }

    /// `Some(internal)` ([`Kind::INTERNAL`]) for a known kind, `None` for an unknown one.
    pub fn internal(&self, kind: &str) -> Option<bool> {
        self.entries.get(kind).map(|(item, _)| item.internal())
    }

    /// Checks a job before it is enqueued from Rust, the CLI or HTTP.
    pub fn check(&self, job: &NewJob) -> Result<(), EnqueueRefused> {
        let Some((item, _)) = self.entries.get(job.kind.as_str()) else {
            return Err(EnqueueRefused::UnknownKind {
                kind: job.kind.clone(),
                known: self.kinds().join(", "),
            });
        };
        item.validate(&job.payload)
            .map_err(|message| EnqueueRefused::BadPayload {
                kind: job.kind.clone(),
                message,
            })
    }
}
