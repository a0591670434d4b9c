//! PostHog capture: `POST {host}/batch/` with the project key in the body and up to 100
//! events per call.
//!
//! Builds the request and classifies the answer; must never touch the queue or log event
//! properties or the key.

use std::time::Duration;

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::SecretSource;
use super::http::{CallError, exchange};
use crate::config::PosthogConfig;

pub const DEFAULT_HOST: &str = "https://us.i.posthog.com";

/// Most events in one `/batch/` call.
pub const MAX_BATCH: usize = 100;

/// Longest answer to a batch read, in bytes (`{"status": 1}`, or an error).
const MAX_CAPTURE_ANSWER: usize = 64 * 1024;

/// PostHog as configured under `[providers.posthog]`.
#[derive(Debug)]
pub struct Posthog {
    host: String,
    key: SecretSource,
}

/// One analytics event (the `posthog.capture` payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureEvent {
    pub event: String,
    pub distinct_id: String,
    #[serde(default)]
    pub properties: serde_json::Map<String, Value>,
    /// Sent as the `organization` group (`$groups`).
    #[serde(default)]
    pub organization_id: Option<String>,
    /// RFC 3339; default: when the job runs.
    #[serde(default)]
    pub timestamp: Option<chrono::DateTime<Utc>>,
}

impl CaptureEvent {
    /// Parses and checks a job payload.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let e: CaptureEvent = serde_json::from_value(payload.clone()).map_err(|e| e.to_string())?;
        e.check()?;
        Ok(e)
    }

    /// Checks what the payload's shape does not: lengths and empty ids.
    pub fn check(&self) -> Result<(), String> {
        if self.event.trim().is_empty() || self.event.len() > 200 {
            return Err("event: give a name of 1-200 characters".into());
        }
        if self.distinct_id.trim().is_empty() || self.distinct_id.len() > 200 {
            return Err("distinct_id: give an id of 1-200 characters".into());
        }
        if self.organization_id.as_deref().is_some_and(str::is_empty) {
            return Err("organization_id must not be empty".into());
        }
        Ok(())
    }

    /// The event as PostHog's batch API takes it. `uuid` makes a resent event a duplicate
    /// PostHog drops rather than a second event.
    pub fn to_batch_item(&self, uuid: uuid::Uuid, now: chrono::DateTime<Utc>) -> Value {
        let mut properties = self.properties.clone();
        if let Some(org) = &self.organization_id {
            properties.insert("$groups".into(), json!({ "organization": org }));
        }
        properties.insert("$lib".into(), json!("penguin-jobs"));
        json!({
            "event": self.event,
            "distinct_id": self.distinct_id,
            "properties": properties,
            "timestamp": self.timestamp.unwrap_or(now).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "uuid": uuid.to_string(),
        })
    }
}

impl Posthog {
    /// The cheapest call the project key authenticates: feature flags for a made-up user.
    pub fn health_request(
        &self,
        client: &reqwest::Client,
        key: &secrecy::SecretString,
    ) -> reqwest::RequestBuilder {
        use secrecy::ExposeSecret;
        client
            .post(format!("{}/flags/?v=2", self.host))
            .json(&serde_json::json!({
                "api_key": key.expose_secret(),
                "distinct_id": "penguin-jobs-health-check",
            }))
    }

    /// The key of the configuration (`[providers.posthog]`), used when `penguin.api_keys`
    /// holds no active key for the provider.
    pub fn configured_key(&self) -> &SecretSource {
        &self.key
    }

    pub fn new(config: Option<&PosthogConfig>) -> Self {
        Self {
            host: super::base_url(config.and_then(|c| c.host.as_ref()), DEFAULT_HOST),
            key: SecretSource::new(
                "providers.posthog.api_key",
                config.and_then(|c| c.api_key.clone()),
            ),
        }
    }

    /// Sends `items` (from [`CaptureEvent::to_batch_item`]) in one call.
    pub async fn capture_batch(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        items: Vec<Value>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let request = http
            .post(format!("{}/batch/", self.host))
            .json(&json!({ "api_key": key.expose_secret(), "batch": items }))
            .timeout(timeout);
        let answer = exchange(request, MAX_CAPTURE_ANSWER).await?;
        if (200..300).contains(&answer.status) {
            return Ok(());
        }
        Err(answer.error(key, |v| {
            v.get("detail")
                .or_else(|| v.get("error"))
                .and_then(|m| m.as_str())
                .map(String::from)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_organization_becomes_a_group() {
        let e = CaptureEvent::from_payload(&json!({
            "event": "campaign_sent", "distinct_id": "user_1", "properties": {"campaign": "cmp_42"},
            "organization_id": "org_1", "timestamp": "2026-11-26T10:00:00Z"}))
        .unwrap();
        let item = e.to_batch_item(uuid::Uuid::nil(), Utc::now());
        assert_eq!(
            item["properties"]["$groups"],
            json!({"organization": "org_1"})
        );
        assert_eq!(item["properties"]["campaign"], "cmp_42");
        assert_eq!(item["timestamp"], "2026-11-26T10:00:00.000Z");
        assert_eq!(item["distinct_id"], "user_1");
    }

    #[test]
    fn an_event_needs_a_name_and_a_distinct_id() {
        assert!(CaptureEvent::from_payload(&json!({"event": "", "distinct_id": "u"})).is_err());
        assert!(CaptureEvent::from_payload(&json!({"event": "e"})).is_err());
    }
}
