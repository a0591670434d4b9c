//! `[providers.*]`: one table per provider (keys, webhook secrets, base URLs, rate limits,
//! circuit breakers) and their validation.

use super::*;

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

impl ProvidersConfig {
    /// The names of the providers with a `[providers.NAME]` table.
    pub fn configured(&self) -> Vec<&'static str> {
        [
            ("mailgun", self.mailgun.is_some()),
            ("sendgrid", self.sendgrid.is_some()),
            ("stripe", self.stripe.is_some()),
            ("posthog", self.posthog.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }

    /// The names of the providers with a key for outbound calls (Mailgun's and SendGrid's
    /// `api_key`, Stripe's `secret_key`, PostHog's `api_key`): the ones a health check can
    /// call. A table holding only a webhook secret receives, it never calls.
    pub fn with_api_key(&self) -> Vec<&'static str> {
        [
            (
                "mailgun",
                self.mailgun.as_ref().is_some_and(|c| c.api_key.is_some()),
            ),
            (
                "sendgrid",
                self.sendgrid.as_ref().is_some_and(|c| c.api_key.is_some()),
            ),
            (
                "stripe",
                self.stripe.as_ref().is_some_and(|c| c.secret_key.is_some()),
            ),
            (
                "posthog",
                self.posthog.as_ref().is_some_and(|c| c.api_key.is_some()),
            ),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
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

    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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
    pub(super) fn validate(&self, key: &str) -> Result<(), ConfigError> {
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
    pub webhook_signing_key: Option<SecretRef>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// Sending API key (`"env:NAME"` / `"file:PATH"`), for `mailgun.send`.
    pub api_key: Option<SecretRef>,
    /// Sending domain (`mg.example.com`).
    pub domain: Option<String>,
    /// `us` (api.mailgun.net) or `eu` (api.eu.mailgun.net).
    #[serde(default)]
    pub region: MailgunRegion,
    /// Overrides the region's URL (tests, proxies).
    pub base_url: Option<String>,
    /// Ask Mailgun's Events API, before an event suppresses an address (complaint,
    /// unsubscribe, permanent failure), whether Mailgun knows that event; an event it does
    /// not know is not applied. Mailgun signs a webhook's timestamp and token, not its
    /// `event-data`, so whoever holds one fresh signed token can attach forged events to
    /// it. Costs one Events API call per suppressing event (with the sending key, under
    /// the rate limit and breaker) and needs `domain`; a genuine event Mailgun has not
    /// listed yet waits (up to half an hour after it happened) instead of being applied at
    /// once. Default `false`: no extra calls, events applied as signed.
    #[serde(default)]
    pub confirm_suppressions: bool,
    pub rate_limit: Option<RateLimitConfig>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
}

/// `[providers.sendgrid]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendgridConfig {
    /// Event Webhook verification key: base64 DER public key (`"env:NAME"` / `"file:PATH"`).
    pub webhook_public_key: Option<SecretRef>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// API key (`"env:NAME"` / `"file:PATH"`), for `sendgrid.send`.
    pub api_key: Option<SecretRef>,
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
    pub webhook_secret: Option<SecretRef>,
    /// Which events get a processing job (`[[providers.NAME.filters]]`); none: all do.
    #[serde(default)]
    pub filters: Vec<WebhookFilter>,
    /// Platform secret key `sk_...` (`"env:NAME"` / `"file:PATH"`), for the Connect kinds.
    pub secret_key: Option<SecretRef>,
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
    pub api_key: Option<SecretRef>,
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

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let secret = |v: &Option<SecretRef>| v.as_ref().map_or(Ok(()), SecretRef::check);
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
            secret(&m.api_key)?;
            url("providers.mailgun.base_url", &m.base_url)?;
            if m.api_key.is_some() && m.domain.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "providers.mailgun.domain is needed to send (mg.example.com)".into(),
                );
            }
            if m.confirm_suppressions && m.domain.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "providers.mailgun.confirm_suppressions needs providers.mailgun.domain (the Events API is per domain)".into(),
                );
            }
            if let Some(d) = &m.domain
                && (d.is_empty() || d.contains(['/', '?', '#', ' ']))
            {
                return invalid(format!("providers.mailgun.domain: {d:?} is not a domain"));
            }
        }
        if let Some(s) = &self.sendgrid {
            secret(&s.api_key)?;
            url("providers.sendgrid.base_url", &s.base_url)?;
        }
        if let Some(s) = &self.stripe {
            secret(&s.secret_key)?;
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
            secret(&p.api_key)?;
            url("providers.posthog.host", &p.host)?;
        }
        Ok(())
    }
}
