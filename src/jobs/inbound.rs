//! What the three webhook processing kinds (`mailgun.event`, `sendgrid.event`,
//! `stripe.event`) share: loading the inbound event a job points at, recording email
//! events, counting unknown types, small JSON readers, and the email kinds' attempt (the
//! providers differ only in how they parse an event).
//!
//! Must never log a payload or an email address at info level.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Attempt, JobContext, JobError, KindPolicy};
use crate::queue;
use crate::queue::email::{EmailEvent, InboundEvent};

/// An email provider's webhook kind (`sendgrid.event`; `mailgun.event` does the same with
/// a confirmation step): load the inbound event, parse it with the provider's parser,
/// record it.
pub(crate) async fn email_webhook(
    event: InboundEventRef,
    ctx: &JobContext,
    pool: &PgPool,
    provider: &str,
    parse: fn(&InboundEvent) -> Result<Parsed, String>,
) -> Attempt {
    let inbound = load_inbound(pool, event, provider).await?;
    match parse(&inbound).map_err(JobError::bad_payload)? {
        Parsed::Event(event) => record_email(pool, ctx, &event).await,
        Parsed::Unknown(event_type) => ignore_unknown(pool, ctx, provider, &event_type).await,
    }
}

/// The payload of the webhook processing kinds: `{"inbound_event_id": <positive integer>}`
/// (and nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundEventRef(pub i64);

impl<'de> serde::Deserialize<'de> for InboundEventRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let payload = Value::deserialize(d)?;
        inbound_event_id(&payload)
            .map(InboundEventRef)
            .map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for InboundEventRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "InboundEventRef".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The stored webhook event to process (penguin.inbound_events)",
            "type": "object",
            "properties": { "inbound_event_id": { "type": "integer", "minimum": 1 } },
            "required": ["inbound_event_id"],
            "additionalProperties": false
        })
    }
}

/// What an email webhook event amounts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Event(EmailEvent),
    /// A type we do not process.
    Unknown(String),
}

/// Policy of the webhook kinds: the work is a few local statements, so attempts are short;
/// only database trouble is retried.
pub(crate) fn webhook_policy() -> KindPolicy {
    KindPolicy {
        max_attempts: 10,
        timeout: Duration::from_secs(30),
        ..KindPolicy::default()
    }
}

/// The id in a `{"inbound_event_id": <positive integer>}` payload (and nothing else).
pub(crate) fn inbound_event_id(payload: &Value) -> Result<i64, String> {
    const SHAPE: &str = "payload must be {\"inbound_event_id\": <positive integer>}";
    let Some(object) = payload.as_object() else {
        return Err(SHAPE.into());
    };
    match (
        object.len(),
        object.get("inbound_event_id").and_then(Value::as_i64),
    ) {
        (1, Some(id)) if id > 0 => Ok(id),
        _ => Err(SHAPE.into()),
    }
}

/// Loads the job's inbound event, which must exist and belong to `provider`.
pub(crate) async fn load_inbound(
    pool: &PgPool,
    InboundEventRef(id): InboundEventRef,
    provider: &str,
) -> Result<InboundEvent, JobError> {
    let inbound = queue::email::load_inbound_event(pool, id)
        .await?
        .ok_or_else(|| JobError::bad_payload(format!("inbound event {id} does not exist")))?;
    if inbound.provider != provider {
        return Err(JobError::bad_payload(format!(
            "inbound event {id} is a {} event, not a {provider} one",
            inbound.provider
        )));
    }
    Ok(inbound)
}

/// Records a parsed email event; the result names what changed.
pub(crate) async fn record_email(pool: &PgPool, ctx: &JobContext, event: &EmailEvent) -> Attempt {
    let effects = queue::email::record_email_event(pool, event).await?;
    let mut names = Vec::new();
    if effects.event_recorded {
        names.push("email_event");
    }
    if effects.status_changed {
        names.push("email_status");
    }
    if effects.suppressed {
        names.push("suppression");
    }
    tracing::info!(
        job.id = ctx.id, provider = event.provider, inbound_event_id = event.inbound_event_id,
        event_type = %event.event_type, effects = ?names, "email event processed"
    );
    if effects.event_recorded {
        Ok(Some(json!({ "effects": names })))
    } else {
        Ok(Some(json!({ "effects": names, "skipped": "duplicate" })))
    }
}

/// Counts an event of a type we do not process instead of failing it.
pub(crate) async fn ignore_unknown(
    pool: &PgPool,
    ctx: &JobContext,
    provider: &str,
    event_type: &str,
) -> Attempt {
    let event_type: String = event_type.chars().take(100).collect();
    let reason = format!("unknown_type:{event_type}");
    queue::email::count_webhooks(pool, &[(provider, reason.as_str(), 1)]).await?;
    tracing::info!(
        job.id = ctx.id, provider, event_type = %event_type,
        "unknown webhook event type: counted, ignored"
    );
    Ok(Some(
        json!({ "ignored": "unknown_type", "event_type": event_type }),
    ))
}

/// A non-empty string at `key`.
pub(crate) fn str_at<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The first of `keys` holding a non-empty string or a number, as a string.
pub(crate) fn id_at(value: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|key| match value.get(*key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    })
}

/// An email address, trimmed and lowercased.
pub(crate) fn address(raw: Option<&str>) -> Option<String> {
    raw.map(|a| a.trim().to_lowercase())
        .filter(|a| !a.is_empty())
}

/// A unix time with a fraction (Mailgun) to the microsecond.
pub(crate) fn unix_float(t: f64) -> Option<DateTime<Utc>> {
    if !t.is_finite() {
        return None;
    }
    let micros = (t * 1e6).round();
    if micros.abs() > 1e17 {
        return None;
    }
    DateTime::from_timestamp_micros(micros as i64)
}
