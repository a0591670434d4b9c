//! Stripe Connect onboarding kinds: `stripe.account.create` (an Express account for a
//! tenant, stored in `penguin.connect_accounts`) and `stripe.account_link.create` (its
//! single-use onboarding link, returned as the job's result: a backend enqueues it with
//! `"wait"` and gets the link in the answer).
//!
//! Every request carries `Idempotency-Key: penguin-jobs:<kind>:<job id>`, the same on every
//! attempt, so a retry after a lost answer never creates a second account. Must never log
//! the key or the link.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use super::outbound::Outbound;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::error_class::ErrorClass;
use crate::providers::http::CallError;
use crate::providers::stripe::Stripe;
use crate::queue::payments::record_created_account;

/// The idempotency key of a job's Stripe request.
pub fn idempotency_key(kind: &str, job_id: i64) -> String {
    format!("penguin-jobs:{kind}:{job_id}")
}

/// `stripe.account.create`: an Express account for a tenant.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    email: String,
    /// ISO 3166-1 alpha-2.
    country: String,
    #[serde(default)]
    tenant_id: Option<uuid::Uuid>,
}

fn check_account(p: &CreateAccount) -> Result<(), String> {
    if !(p.country.len() == 2 && p.country.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(format!(
            "country: {:?} is not a two-letter country code like \"US\"",
            p.country
        ));
    }
    let at = p.email.split_once('@');
    if !at.is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        || p.email.contains(char::is_whitespace)
    {
        return Err(format!("email: {:?} is not an email address", p.email));
    }
    Ok(())
}

/// `stripe.account_link.create`: the onboarding link of an account.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountLink {
    account: String,
    refresh_url: String,
    return_url: String,
}

fn check_link(p: &CreateAccountLink) -> Result<(), String> {
    if !p.account.starts_with("acct_") || p.account.len() < 6 {
        return Err(format!(
            "account: {:?} is not a Stripe account id (acct_...)",
            p.account
        ));
    }
    for (field, url) in [
        ("refresh_url", &p.refresh_url),
        ("return_url", &p.return_url),
    ] {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(format!("{field}: {url:?} is not an http(s) URL")),
        }
    }
    Ok(())
}

/// What the Stripe Connect kinds need.
pub struct StripeDeps {
    pub stripe: Stripe,
    pub http: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub outbound: Arc<Outbound>,
}

impl StripeDeps {
    /// One call to Stripe for `kind`, with the configured key, through the breaker, the
    /// rate limit and the metrics.
    async fn call<T>(
        &self,
        kind: &'static str,
        call: impl AsyncFnOnce(&Stripe, &SecretString) -> Result<T, CallError>,
    ) -> Result<T, JobError> {
        self.outbound
            .call(
                "stripe",
                kind,
                self.stripe.configured_key(),
                async |secret| call(&self.stripe, secret).await,
            )
            .await
    }
}

impl Kind for CreateAccount {
    const KIND: &'static str = "stripe.account.create";
    type Deps = StripeDeps;

    fn policy() -> KindPolicy {
        KindPolicy {
            timeout: Duration::from_secs(30),
            ..KindPolicy::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_account(self)
    }

    async fn run(self, ctx: &JobContext, deps: &StripeDeps) -> Attempt {
        let tenant = self.tenant_id.or(ctx.tenant_id);
        let tenant_text = tenant.map(|t| t.to_string());
        let form = Stripe::account_form(&self.email, &self.country, tenant_text.as_deref());
        let key = idempotency_key(Self::KIND, ctx.id);
        let account = deps
            .call(Self::KIND, async |stripe, secret| {
                stripe
                    .create_account(&deps.http, secret, &form, &key, ctx.call_timeout())
                    .await
            })
            .await?;
        record_created_account(&deps.pool, &account.id, tenant)
            .await
            .map_err(|e| JobError::Retryable {
                // the retry repeats the idempotency key: Stripe answers with the same account
                class: ErrorClass::Database,
                message: format!("account {} created but not stored: {e}", account.id),
                status: None,
                not_before: None,
            })?;
        Ok(Some(json!({ "account": account.id, "tenant_id": tenant })))
    }
}

impl Kind for CreateAccountLink {
    const KIND: &'static str = "stripe.account_link.create";
    type Deps = StripeDeps;

    /// A user is waiting on the other end: runs before everything of default priority,
    /// with a short timeout and few attempts (a link is only useful for minutes).
    fn policy() -> KindPolicy {
        KindPolicy {
            priority: -100,
            max_attempts: 5,
            timeout: Duration::from_secs(15),
            backoff: crate::config::BackoffConfig {
                base: Duration::from_millis(500),
                max: Duration::from_secs(10),
                ..Default::default()
            },
            ..KindPolicy::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_link(self)
    }

    async fn run(self, ctx: &JobContext, deps: &StripeDeps) -> Attempt {
        let form = Stripe::account_link_form(&self.account, &self.refresh_url, &self.return_url);
        let key = idempotency_key(Self::KIND, ctx.id);
        let link = deps
            .call(Self::KIND, async |stripe, secret| {
                stripe
                    .create_account_link(&deps.http, secret, &form, &key, ctx.call_timeout())
                    .await
            })
            .await?;
        Ok(Some(json!({
            "account": self.account,
            "url": link.url,
            "expires_at": link.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::decode;

    fn account_payload(p: &serde_json::Value) -> Result<CreateAccount, String> {
        decode(p)
    }

    fn link_payload(p: &serde_json::Value) -> Result<CreateAccountLink, String> {
        decode(p)
    }

    #[test]
    fn payloads_are_checked() {
        assert!(account_payload(&json!({"email": "owner@example.com", "country": "US"})).is_ok());
        assert!(
            account_payload(&json!({"email": "owner@example.com", "country": "usa"}))
                .unwrap_err()
                .starts_with("country")
        );
        assert!(
            account_payload(&json!({"email": "x", "country": "US"}))
                .unwrap_err()
                .starts_with("email")
        );
        assert!(link_payload(&json!({"account": "acct_1", "refresh_url": "https://a.example/r", "return_url": "https://a.example/d"})).is_ok());
        assert!(link_payload(&json!({"account": "cus_1", "refresh_url": "https://a.example/r", "return_url": "https://a.example/d"})).unwrap_err().starts_with("account"));
        assert!(link_payload(&json!({"account": "acct_1", "refresh_url": "nope", "return_url": "https://a.example/d"})).unwrap_err().starts_with("refresh_url"));
    }

    #[test]
    fn the_idempotency_key_depends_on_the_job_only() {
        assert_eq!(
            idempotency_key("stripe.account.create", 42),
            "penguin-jobs:stripe.account.create:42"
        );
    }
}
