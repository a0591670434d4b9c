//! Stripe Connect onboarding: `POST /v1/accounts` (an Express account) and
//! `POST /v1/account_links` (its onboarding link), form-encoded, Bearer secret key, with an
//! `Idempotency-Key` the caller derives from the job so a retried job never creates a
//! second account.
//!
//! Stripe's `Stripe-Should-Retry` header overrides the status' own retry verdict; a 409
//! (idempotency conflict) is retried only when Stripe says so. Builds requests and
//! classifies answers; must never touch the queue or log the key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::SecretSource;
use super::http::{Answer, CallError, error_from_answer, exchange};
use super::mailgun::unexpected_answer;
use crate::config::StripeConfig;
use crate::error_class::ErrorClass;
use crate::text;

pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";

/// Longest account id accepted from an answer (Stripe's are about 21 bytes; ours is a
/// primary key).
const MAX_ID: usize = 255;

/// Longest answer read, in bytes (one account or account link object, or an error).
const MAX_OBJECT_ANSWER: usize = 256 * 1024;

/// Longest onboarding URL kept from an answer, in bytes.
const MAX_URL: usize = 8192;

/// Stripe as configured under `[providers.stripe]`.
#[derive(Debug)]
pub struct Stripe {
    base: String,
    key: SecretSource,
}

/// A new connected account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
}

/// An onboarding link: single use, valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

impl Stripe {
    /// The cheapest authenticated call: the account's balance.
    pub fn health_request(
        &self,
        client: &reqwest::Client,
        key: &secrecy::SecretString,
    ) -> reqwest::RequestBuilder {
        super::bearer_get(client, format!("{}/v1/balance", self.base), key)
    }

    /// The key of the configuration (`[providers.stripe]`), used when `penguin.api_keys`
    /// holds no active key for the provider.
    pub fn configured_key(&self) -> &SecretSource {
        &self.key
    }

    pub fn new(config: Option<&StripeConfig>) -> Self {
        Self {
            base: super::base_url(config.and_then(|c| c.base_url.as_ref()), DEFAULT_BASE_URL),
            key: SecretSource::new(
                "providers.stripe.secret_key",
                config.and_then(|c| c.secret_key.clone()),
            ),
        }
    }

    /// The form of an Express account for `email` in `country`; `tenant_id` goes into the
    /// account's metadata so a dashboard user can find the tenant.
    pub fn account_form(
        email: &str,
        country: &str,
        tenant_id: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut f = vec![
            ("type".to_string(), "express".to_string()),
            ("country".into(), country.to_string()),
            ("email".into(), email.to_string()),
            (
                "capabilities[card_payments][requested]".into(),
                "true".into(),
            ),
            ("capabilities[transfers][requested]".into(), "true".into()),
        ];
        if let Some(t) = tenant_id {
            f.push(("metadata[tenant_id]".into(), t.to_string()));
        }
        f
    }

    /// The form of an onboarding link.
    pub fn account_link_form(
        account: &str,
        refresh_url: &str,
        return_url: &str,
    ) -> Vec<(String, String)> {
        vec![
            ("account".into(), account.to_string()),
            ("refresh_url".into(), refresh_url.to_string()),
            ("return_url".into(), return_url.to_string()),
            ("type".into(), "account_onboarding".to_string()),
        ]
    }

    /// Creates an Express account.
    pub async fn create_account(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        form: &[(String, String)],
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<Account, CallError> {
        let answer = self
            .post(http, key, "/v1/accounts", form, idempotency_key, timeout)
            .await?;
        let id = answer
            .get("id")
            .and_then(|v| v.as_str())
            .filter(|id| id.starts_with("acct_") && id.len() <= MAX_ID && text::is_storable(id))
            .ok_or_else(|| unexpected_answer("Stripe created an account but sent no acct_ id"))?;
        Ok(Account { id: id.to_string() })
    }

    /// Creates an onboarding link.
    pub async fn create_account_link(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        form: &[(String, String)],
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<AccountLink, CallError> {
        let answer = self
            .post(
                http,
                key,
                "/v1/account_links",
                form,
                idempotency_key,
                timeout,
            )
            .await?;
        let url = answer.get("url").and_then(|v| v.as_str());
        let expires = answer
            .get("expires_at")
            .and_then(|v| v.as_i64())
            .and_then(|t| DateTime::from_timestamp(t, 0));
        match (url, expires) {
            (Some(url), Some(expires_at)) => Ok(AccountLink {
                url: text::clean(url, MAX_URL),
                expires_at,
            }),
            _ => Err(unexpected_answer(
                "Stripe created an account link but sent no url or expires_at",
            )),
        }
    }

    async fn post(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        path: &str,
        form: &[(String, String)],
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let request = http
            .post(format!("{}{path}", self.base))
            .bearer_auth(key.expose_secret())
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .timeout(timeout);
        let answer = exchange(request, MAX_OBJECT_ANSWER).await?;
        let json = answer.json();
        if (200..300).contains(&answer.status) {
            answer.whole_body("Stripe")?;
            return json
                .ok_or_else(|| unexpected_answer("Stripe answered with a body that is not JSON"));
        }
        let Answer {
            status, headers, ..
        } = answer;
        let message = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .map(|e| {
                let text = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
                match (
                    e.get("type").and_then(|t| t.as_str()),
                    e.get("code").and_then(|c| c.as_str()),
                ) {
                    (Some(t), Some(c)) => format!("{text} ({t}, {c})"),
                    (Some(t), None) => format!("{text} ({t})"),
                    _ => text.to_string(),
                }
            })
            .map(|m| super::redact(&m, key));
        let should_retry = headers
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        Err(classify(
            status,
            &headers,
            message,
            should_retry,
            Utc::now(),
        ))
    }
}

/// Stripe's answer classification: the status' verdict, overridden by
/// `Stripe-Should-Retry`; a 409 is an idempotency conflict, retried only when Stripe says so.
pub fn classify(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    message: Option<String>,
    should_retry: Option<bool>,
    now: DateTime<Utc>,
) -> CallError {
    let mut e = error_from_answer(status, headers, message, now);
    if status == 409 {
        e.class = if should_retry == Some(true) {
            ErrorClass::Api
        } else {
            ErrorClass::Data
        };
        e.message = format!("idempotency conflict: {}", e.message);
    }
    if let Some(retry) = should_retry {
        // a 401/403 stays final whatever the header says: the key is wrong
        if !matches!(
            e.class,
            ErrorClass::Authentication | ErrorClass::Authorization
        ) {
            e.retryable = retry;
        }
    } else if status == 409 {
        e.retryable = false;
    }
    if !e.retryable {
        e.not_before = None;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_retry_overrides_the_status() {
        let h = reqwest::header::HeaderMap::new();
        let now = Utc::now();
        assert!(!classify(500, &h, None, Some(false), now).retryable);
        assert!(classify(400, &h, None, Some(true), now).retryable);
        let conflict = classify(
            409,
            &h,
            Some("Keys for idempotent requests can only be used with the same parameters".into()),
            None,
            now,
        );
        assert!(!conflict.retryable);
        assert_eq!(conflict.class, ErrorClass::Data);
        assert!(conflict.message.starts_with("idempotency conflict"));
        let in_flight = classify(409, &h, None, Some(true), now);
        assert!(in_flight.retryable);
        assert!(!classify(401, &h, None, Some(true), now).retryable);
    }

    #[test]
    fn the_account_form_requests_both_capabilities() {
        let f = Stripe::account_form("owner@example.com", "US", Some("t-1"));
        assert!(f.contains(&("type".into(), "express".into())));
        assert!(f.contains(&(
            "capabilities[card_payments][requested]".into(),
            "true".into()
        )));
        assert!(f.contains(&("capabilities[transfers][requested]".into(), "true".into())));
        assert!(f.contains(&("metadata[tenant_id]".into(), "t-1".into())));
    }
}
