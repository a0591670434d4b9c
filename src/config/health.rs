//! `[health]` (how integration health is judged, and the scheduled health checks) and
//! `[alerts]` (thresholds of the conditions the daemons watch, and `[alerts.notify.NAME]`
//! targets that hear about them).

use super::*;

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// The recent window status, error rate and response time are judged over.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer calls than this in the window judge nothing by rate or latency (one failed
    /// call of two is not an outage).
    pub min_calls: i64,
    /// Provider-side failures (5xx, timeouts, network errors) per call at or above which an
    /// integration is degraded...
    pub degraded_error_rate: f64,
    /// ... and unhealthy.
    pub unhealthy_error_rate: f64,
    /// p95 latency at or above which an integration is degraded...
    #[serde(with = "humantime_serde")]
    pub degraded_latency: Duration,
    /// ... and unhealthy.
    #[serde(with = "humantime_serde")]
    pub unhealthy_latency: Duration,
    /// Schedule an `integration.health_check` of every configured provider (Mailgun,
    /// SendGrid, Stripe, PostHog): a cheap authenticated call, so health is known without
    /// traffic.
    pub checks: bool,
    /// When the health checks run (cron, UTC).
    pub check_cron: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(300),
            min_calls: 5,
            degraded_error_rate: 0.05,
            unhealthy_error_rate: 0.25,
            degraded_latency: Duration::from_secs(2),
            unhealthy_latency: Duration::from_secs(10),
            checks: true,
            check_cron: "*/5 * * * *".into(),
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How often each daemon with workers evaluates the conditions (one alert per
    /// condition, however many daemons see it).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// An integration's provider-side failure rate over `[health] window` at or above
    /// this opens an `error_rate` alert.
    pub error_rate: f64,
    /// An integration's p95 latency over `[health] window` at or above this opens a
    /// `response_time` alert.
    #[serde(with = "humantime_serde")]
    pub response_time: Duration,
    /// This many jobs dead-lettered within `dead_letters_window` open a
    /// `dead_letters_growing` alert.
    pub dead_letters: i64,
    #[serde(with = "humantime_serde")]
    pub dead_letters_window: Duration,
    /// A queue whose oldest due job (of any priority) waited longer than this (or that
    /// holds jobs no live daemon serves) opens a `queue_stalled` alert.
    #[serde(with = "humantime_serde")]
    pub queue_stalled_after: Duration,
    /// An alert resolves once its condition has been clear this long; a condition that
    /// comes back sooner stays the same alert (no open/clear/open storm of notifications
    /// at a threshold's edge). `0s`: resolve at the first pass that finds it clear.
    #[serde(with = "humantime_serde")]
    pub clear_after: Duration,
    /// Who hears of alerts opening and clearing: `[alerts.notify.NAME]`.
    pub notify: BTreeMap<String, NotifyTarget>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_secs(30),
            error_rate: 0.25,
            response_time: Duration::from_secs(5),
            dead_letters: 10,
            dead_letters_window: Duration::from_secs(900),
            queue_stalled_after: Duration::from_secs(300),
            clear_after: Duration::from_secs(120),
            notify: BTreeMap::new(),
        }
    }
}

/// `[alerts.notify.NAME]`: each notification is a job of its own (retried as any job), so
/// a target that is down never holds back detection or the other targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum NotifyTarget {
    /// A JSON POST (an `http.request` job, through the egress guard): `{"text": ..,
    /// "alert": {..}}`, which a Slack incoming webhook accepts as is.
    Webhook {
        /// `http(s)://...`; a private address must be allowed in `[egress] allow`.
        url: String,
    },
    /// An email through the configured Mailgun or SendGrid (a `mailgun.send` or
    /// `sendgrid.send` job).
    Email {
        /// `mailgun` or `sendgrid` (its `[providers.NAME]` must have an api_key).
        provider: String,
        from: String,
        to: Vec<String>,
    },
}

/// `[health] window`, `[alerts] check_interval`, `dead_letters_window`, `queue_stalled_after`.
pub const HEALTH_WINDOW_RANGE: DurationRange = DurationRange {
    min: Duration::from_secs(60),
    max: DAY,
};
/// `[health]` latencies and `[alerts] response_time`.
pub const LATENCY_RANGE: DurationRange = DurationRange { min: MS, max: HOUR };
/// `[alerts] clear_after`.
pub const ALERT_CLEAR_RANGE: DurationRange = DurationRange {
    min: Duration::ZERO,
    max: DAY,
};
/// `[alerts] check_interval`.
pub const ALERT_CHECK_RANGE: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: HOUR,
};

impl Config {
    /// `[health]` and `[alerts]`.
    pub(super) fn validate_health(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let h = &self.health;
        check_duration("health.window", h.window, HEALTH_WINDOW_RANGE)?;
        check_duration("health.degraded_latency", h.degraded_latency, LATENCY_RANGE)?;
        check_duration(
            "health.unhealthy_latency",
            h.unhealthy_latency,
            LATENCY_RANGE,
        )?;
        for (key, rate) in [
            ("health.degraded_error_rate", h.degraded_error_rate),
            ("health.unhealthy_error_rate", h.unhealthy_error_rate),
            ("alerts.error_rate", self.alerts.error_rate),
        ] {
            if !(rate > 0.0 && rate <= 1.0) {
                return invalid(format!("{key} must be above 0 and at most 1, got {rate}"));
            }
        }
        if h.degraded_error_rate > h.unhealthy_error_rate {
            return invalid(
                "health.degraded_error_rate must not be above unhealthy_error_rate".into(),
            );
        }
        if h.degraded_latency > h.unhealthy_latency {
            return invalid("health.degraded_latency must not be above unhealthy_latency".into());
        }
        if !(1..=1_000_000).contains(&h.min_calls) {
            return invalid("health.min_calls must be between 1 and 1000000".into());
        }
        let a = &self.alerts;
        check_duration("alerts.check_interval", a.check_interval, ALERT_CHECK_RANGE)?;
        check_duration("alerts.response_time", a.response_time, LATENCY_RANGE)?;
        check_duration(
            "alerts.dead_letters_window",
            a.dead_letters_window,
            HEALTH_WINDOW_RANGE,
        )?;
        check_duration(
            "alerts.queue_stalled_after",
            a.queue_stalled_after,
            HEALTH_WINDOW_RANGE,
        )?;
        check_duration("alerts.clear_after", a.clear_after, ALERT_CLEAR_RANGE)?;
        if !(1..=1_000_000_000).contains(&a.dead_letters) {
            return invalid("alerts.dead_letters must be between 1 and 1000000000".into());
        }
        for (name, target) in &a.notify {
            check_name("alerts.notify", name)?;
            match target {
                NotifyTarget::Webhook { url } => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return invalid(format!(
                            "alerts.notify.{name}.url: {url:?} is not an http(s) URL"
                        ));
                    }
                }
                NotifyTarget::Email { provider, from, to } => {
                    let configured = match provider.as_str() {
                        "mailgun" => self.providers.mailgun.is_some(),
                        "sendgrid" => self.providers.sendgrid.is_some(),
                        _ => {
                            return invalid(format!(
                                "alerts.notify.{name}.provider: {provider:?} is not mailgun or sendgrid"
                            ));
                        }
                    };
                    if !configured {
                        return invalid(format!(
                            "alerts.notify.{name}.provider: [providers.{provider}] is not configured"
                        ));
                    }
                    if from.trim().is_empty()
                        || to.is_empty()
                        || to.iter().any(|t| t.trim().is_empty())
                    {
                        return invalid(format!(
                            "alerts.notify.{name}: give a from address and at least one to address"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
