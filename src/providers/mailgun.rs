//! Mailgun's sending API: `POST {base}/v3/{domain}/messages`, a multipart form with Basic
//! auth `api:<key>`; the answer's `id` is the Message-Id its webhooks carry. And its
//! Events API (`GET {base}/v3/{domain}/events`), asked whether an event a webhook claims
//! is one Mailgun knows ([`Mailgun::knows_event`]).
//!
//! Builds the request and classifies the answer; must never touch the queue or log the
//! message, its addresses or the key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::SecretSource;
use super::email::Email;
use super::http::{CallError, exchange};
use crate::config::{MailgunConfig, MailgunRegion};

/// The API root of each region.
pub fn region_url(region: MailgunRegion) -> &'static str {
    match region {
        MailgunRegion::Us => "https://api.mailgun.net",
        MailgunRegion::Eu => "https://api.eu.mailgun.net",
    }
}

/// Mailgun as configured under `[providers.mailgun]`.
#[derive(Debug)]
pub struct Mailgun {
    base: String,
    domain: Option<String>,
    key: SecretSource,
}

/// A message Mailgun accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Message-Id without angle brackets (as `penguin.email_events` stores it).
    pub message_id: String,
}

impl Mailgun {
    /// The cheapest authenticated call: the first of the account's domains.
    pub fn health_request(
        &self,
        client: &reqwest::Client,
        key: &secrecy::SecretString,
    ) -> reqwest::RequestBuilder {
        use secrecy::ExposeSecret;
        client
            .get(format!("{}/v3/domains?limit=1", self.base))
            .basic_auth("api", Some(key.expose_secret()))
    }

    /// The key of the configuration (`[providers.mailgun]`), used when `penguin.api_keys`
    /// holds no active key for the provider.
    pub fn configured_key(&self) -> &SecretSource {
        &self.key
    }

    pub fn new(config: Option<&MailgunConfig>) -> Self {
        let region = config.map(|c| c.region).unwrap_or_default();
        Self {
            base: super::base_url(config.and_then(|c| c.base_url.as_ref()), region_url(region)),
            domain: config.and_then(|c| c.domain.clone()),
            key: SecretSource::new(
                "providers.mailgun.api_key",
                config.and_then(|c| c.api_key.clone()),
            ),
        }
    }

    /// The multipart form of `email` (field names as Mailgun documents them).
    pub fn form_fields(email: &Email) -> Vec<(String, String)> {
        let mut f: Vec<(String, String)> = vec![("from".into(), email.from.clone())];
        for a in &email.to {
            f.push(("to".into(), a.clone()));
        }
        for a in &email.cc {
            f.push(("cc".into(), a.clone()));
        }
        for a in &email.bcc {
            f.push(("bcc".into(), a.clone()));
        }
        if let Some(r) = &email.reply_to {
            f.push(("h:Reply-To".into(), r.clone()));
        }
        if let Some(s) = &email.subject {
            f.push(("subject".into(), s.clone()));
        }
        if let Some(t) = &email.text {
            f.push(("text".into(), t.clone()));
        }
        if let Some(h) = &email.html {
            f.push(("html".into(), h.clone()));
        }
        if let Some(t) = &email.template_id {
            f.push(("template".into(), t.clone()));
        }
        if let Some(d) = &email.template_data {
            f.push(("t:variables".into(), d.to_string()));
        }
        // Mailgun keeps three tags
        for t in email.tags.iter().take(3) {
            f.push(("o:tag".into(), t.clone()));
        }
        for (name, value) in &email.headers {
            f.push((format!("h:{name}"), value.clone()));
        }
        if let Some(c) = &email.campaign_id {
            f.push(("v:campaign-id".into(), c.clone()));
        }
        if let Some(r) = &email.recipient_id {
            f.push(("v:recipient-id".into(), r.clone()));
        }
        f
    }

    /// Sends `email`; `timeout` bounds the call.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        email: &Email,
        timeout: Duration,
    ) -> Result<Accepted, CallError> {
        let Some(domain) = &self.domain else {
            return Err(super::http::configuration_error(
                "providers.mailgun.domain is not configured",
            ));
        };
        let mut form = reqwest::multipart::Form::new();
        for (name, value) in Self::form_fields(email) {
            form = form.text(name, value);
        }
        let request = http
            .post(format!("{}/v3/{domain}/messages", self.base))
            .basic_auth("api", Some(key.expose_secret()))
            .multipart(form)
            .timeout(timeout);
        let answer = exchange(request, MAX_SEND_ANSWER).await?;
        if answer.status != 200 {
            return Err(answer.error(key, |v| {
                v.get("message").and_then(|m| m.as_str()).map(String::from)
            }));
        }
        answer.whole_body("Mailgun")?;
        let id = answer
            .json()
            .and_then(|v| v.get("id").and_then(|m| m.as_str()).map(String::from))
            .ok_or_else(|| unexpected_answer("Mailgun answered 200 without a message id"))?;
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        Ok(Accepted {
            message_id: crate::text::clean(id, MAX_MESSAGE_ID),
        })
    }
}

/// Longest answer to a send read, in bytes (a message id and a sentence).
const MAX_SEND_ANSWER: usize = 64 * 1024;

/// Longest Events API answer read, in bytes (a page of [`EVENTS_PAGE`] events of a few KiB).
const MAX_EVENTS_ANSWER: usize = 2 * 1024 * 1024;

/// Events asked for in one Events API page: one recipient's events of one type within
/// [`EVENT_WINDOW_SECS`] of a timestamp, far fewer in practice.
const EVENTS_PAGE: u32 = 100;

/// How far around an event's timestamp the Events API is searched, in seconds.
const EVENT_WINDOW_SECS: i64 = 60;

/// What a webhook's `event-data` claims happened, to be checked with the Events API.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedEvent<'a> {
    /// Mailgun's event id, when the webhook carried one.
    pub id: Option<&'a str>,
    /// `complained`, `unsubscribed`, `failed`, ...
    pub event: &'a str,
    /// The recipient's address (compared without regard to case).
    pub recipient: &'a str,
    /// `failed` events: `permanent` or `temporary`.
    pub severity: Option<&'a str>,
    /// `failed` events: why (`bounce`, `old`, `suppress-bounce`, ...).
    pub reason: Option<&'a str>,
    pub timestamp: DateTime<Utc>,
}

impl ClaimedEvent<'_> {
    /// Whether `item` (one event of an Events API page) is this event: same id (when the
    /// webhook gave one), type, recipient, severity and reason.
    fn is(&self, item: &Value) -> bool {
        let text = |key: &str| item.get(key).and_then(Value::as_str);
        self.id.is_none_or(|id| text("id") == Some(id))
            && text("event") == Some(self.event)
            && text("recipient").is_some_and(|r| r.trim().eq_ignore_ascii_case(self.recipient))
            && self.severity.is_none_or(|s| text("severity") == Some(s))
            && self.reason.is_none_or(|r| text("reason") == Some(r))
    }
}

impl Mailgun {
    /// Whether the Events API lists `claimed`: `GET {base}/v3/{domain}/events` filtered by
    /// its type and recipient, [`EVENT_WINDOW_SECS`] either side of its timestamp, and an
    /// item that [is](ClaimedEvent::is) it. Failures are classified as any call's.
    pub async fn knows_event(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        claimed: &ClaimedEvent<'_>,
        timeout: Duration,
    ) -> Result<bool, CallError> {
        let Some(domain) = &self.domain else {
            return Err(super::http::configuration_error(
                "providers.mailgun.domain is not configured",
            ));
        };
        let at = claimed.timestamp.timestamp();
        let request = http
            .get(format!("{}/v3/{domain}/events", self.base))
            .basic_auth("api", Some(key.expose_secret()))
            .query(&[
                ("event", claimed.event.to_string()),
                ("recipient", claimed.recipient.to_string()),
                ("begin", (at - EVENT_WINDOW_SECS).to_string()),
                ("end", (at + EVENT_WINDOW_SECS + 1).to_string()),
                ("limit", EVENTS_PAGE.to_string()),
            ])
            .timeout(timeout);
        let answer = exchange(request, MAX_EVENTS_ANSWER).await?;
        if answer.status != 200 {
            return Err(answer.error(key, |v| {
                v.get("message").and_then(|m| m.as_str()).map(String::from)
            }));
        }
        let page: Value = serde_json::from_slice(answer.whole_body("the Mailgun Events API")?)
            .map_err(|_| {
                unexpected_answer("the Mailgun Events API answered something that is not JSON")
            })?;
        let items = page
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| unexpected_answer("the Mailgun Events API answered without items"))?;
        Ok(items.iter().any(|item| claimed.is(item)))
    }
}

/// Longest message id kept from a provider's answer, in bytes (RFC 5322 lines stop at
/// 998; real ids are under 100).
pub(crate) const MAX_MESSAGE_ID: usize = 998;

/// A 2xx we cannot read: the call may have succeeded, so it is an `api` error (retried).
pub(crate) fn unexpected_answer(message: &str) -> CallError {
    CallError {
        class: crate::error_class::ErrorClass::Api,
        retryable: true,
        message: message.into(),
        status: None,
        not_before: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_form_carries_every_field_and_the_join_variables() {
        let email = Email::from_payload(&json!({
            "from": "News <news@mg.example.com>", "to": ["ada@example.com", "bob@example.com"],
            "cc": ["cy@example.com"], "subject": "Hi", "html": "<p>Hi</p>", "text": "Hi",
            "campaign_id": "cmp_42", "recipient_id": "rcp_7", "tags": ["launch", "a", "b", "c"],
            "headers": {"X-Campaign": "42"}}))
        .unwrap();
        let f = Mailgun::form_fields(&email);
        let get = |n: &str| -> Vec<&str> {
            f.iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("to"), vec!["ada@example.com", "bob@example.com"]);
        assert_eq!(get("cc"), vec!["cy@example.com"]);
        assert_eq!(get("o:tag"), vec!["launch", "a", "b"]);
        assert_eq!(get("h:X-Campaign"), vec!["42"]);
        assert_eq!(get("v:campaign-id"), vec!["cmp_42"]);
        assert_eq!(get("v:recipient-id"), vec!["rcp_7"]);
        assert_eq!(get("subject"), vec!["Hi"]);
    }

    #[test]
    fn an_event_is_known_only_when_every_claimed_field_matches() {
        let claimed = ClaimedEvent {
            id: Some("ev1"),
            event: "failed",
            recipient: "ada@example.com",
            severity: Some("permanent"),
            reason: Some("bounce"),
            timestamp: Utc::now(),
        };
        let item = json!({"id": "ev1", "event": "failed", "recipient": "Ada@Example.com",
                          "severity": "permanent", "reason": "bounce"});
        assert!(claimed.is(&item));
        for (field, other) in [
            ("id", "ev2"),
            ("event", "delivered"),
            ("recipient", "bob@example.com"),
            ("severity", "temporary"),
            ("reason", "old"),
        ] {
            let mut changed = item.clone();
            changed[field] = json!(other);
            assert!(!claimed.is(&changed), "{field} differs");
        }
        let without_id = ClaimedEvent {
            id: None,
            ..claimed
        };
        assert!(without_id.is(&json!({"id": "any", "event": "failed",
            "recipient": "ada@example.com", "severity": "permanent", "reason": "bounce"})));
    }

    #[test]
    fn regions_have_their_own_api_root() {
        let eu = MailgunConfig {
            region: MailgunRegion::Eu,
            ..Default::default()
        };
        assert_eq!(Mailgun::new(Some(&eu)).base, "https://api.eu.mailgun.net");
        assert_eq!(Mailgun::new(None).base, "https://api.mailgun.net");
    }
}
