//! `integration.health_check`: one cheap authenticated call to a configured provider
//! (Mailgun's domains, SendGrid's key scopes, Stripe's balance, PostHog's flags), through
//! the provider's guard like any call ([`Outbound::call`]: its breaker, rate limit, health
//! row and metrics), so an integration's health is known without traffic. Scheduled per
//! configured provider by `[health] checks` (`health-check-PROVIDER`).
//!
//! A failed check is an answer, not a failure of the job: the job completes with what it
//! found (`{"ok": false, ...}`) and never lands in the dead letters; the provider's row
//! and metrics carry the failure to the health model and the alerts.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::outbound::Outbound;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::providers::keys::probe;
use crate::providers::{SecretSource, mailgun, posthog, sendgrid, stripe};

/// The kind's name.
pub const KIND: &str = crate::kind_names::HEALTH_CHECK;

/// The providers a check knows how to call.
pub const PROVIDERS: [&str; 4] = ["mailgun", "sendgrid", "stripe", "posthog"];

/// The `integration.health_check` kind: which provider to check.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// mailgun, sendgrid, stripe or posthog.
    provider: String,
}

/// The configured providers' clients, and the guard their calls go through.
pub struct HealthDeps {
    pub http: reqwest::Client,
    pub outbound: Arc<Outbound>,
    pub mailgun: mailgun::Mailgun,
    pub sendgrid: sendgrid::Sendgrid,
    pub stripe: stripe::Stripe,
    pub posthog: posthog::Posthog,
}

impl Kind for HealthCheck {
    const KIND: &'static str = KIND;
    const INTERNAL: bool = true;
    type Deps = HealthDeps;

    fn policy() -> KindPolicy {
        KindPolicy {
            max_attempts: 1,
            timeout: Duration::from_secs(30),
            ..KindPolicy::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        if PROVIDERS.contains(&self.provider.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "provider: {:?} is not one of {}",
                self.provider,
                PROVIDERS.join(", ")
            ))
        }
    }

    async fn run(self, ctx: &JobContext, d: &HealthDeps) -> Attempt {
        let started = std::time::Instant::now();
        let timeout = ctx.call_timeout();
        let http = &d.http;
        let result = match self.provider.as_str() {
            "mailgun" => {
                check(d, "mailgun", d.mailgun.configured_key(), async |key| {
                    probe(d.mailgun.health_request(http, key).timeout(timeout), key).await
                })
                .await
            }
            "sendgrid" => {
                check(d, "sendgrid", d.sendgrid.configured_key(), async |key| {
                    probe(d.sendgrid.health_request(http, key).timeout(timeout), key).await
                })
                .await
            }
            "stripe" => {
                check(d, "stripe", d.stripe.configured_key(), async |key| {
                    probe(d.stripe.health_request(http, key).timeout(timeout), key).await
                })
                .await
            }
            _ => {
                check(d, "posthog", d.posthog.configured_key(), async |key| {
                    probe(d.posthog.health_request(http, key).timeout(timeout), key).await
                })
                .await
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(Some(match &result {
            Ok(()) => json!({ "provider": self.provider, "ok": true, "ms": ms }),
            Err(JobError::Snooze { .. }) => json!({
                "provider": self.provider, "ok": false, "skipped": "circuit open or rate limited"
            }),
            Err(e) => match e.failure() {
                Some((class, message, status)) => json!({
                    "provider": self.provider, "ok": false, "class": class.as_str(),
                    "status": status, "error": message, "ms": ms,
                }),
                None => json!({ "provider": self.provider, "ok": false }),
            },
        }))
    }
}

/// One guarded call to `provider` with its current key.
async fn check(
    d: &HealthDeps,
    provider: &'static str,
    key: &SecretSource,
    call: impl AsyncFnOnce(&secrecy::SecretString) -> Result<(), crate::providers::http::CallError>,
) -> Result<(), JobError> {
    d.outbound.call(provider, KIND, key, call).await
}
