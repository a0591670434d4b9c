//! `mailgun.event`: processes one Mailgun webhook stored by the edge in
//! `penguin.inbound_events` (payload `{"inbound_event_id": <id>}`): records the email
//! event, moves the campaign recipient's status, and suppresses hard bounces, complaints
//! and unsubscribes.
//!
//! Mapping (`event-data.event` → status, suppression):
//! `accepted` → processed; `delivered`; `opened`; `clicked`; `unsubscribed` → unsubscribe;
//! `complained` → complaint; `rejected` → dropped; `failed` with severity `temporary` →
//! soft_bounced; `failed` with severity `permanent` → bounced + hard_bounce, except reason
//! `old` (Mailgun gave up retrying: failed, no suppression) and the `suppress-*` reasons
//! (the address was already on Mailgun's lists: dropped, suppressed for the same reason).
//! Any other event is counted in `penguin.webhook_counters` as `unknown_type:<event>`.
//!
//! The helpers at the bottom are shared by the three webhook kinds (`sendgrid.event`,
//! `stripe.event`). Must never log a payload or an email address at info level.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Attempt, ErrorClass, Handler, JobContext, JobError, KindPolicy};
use crate::queue;
use crate::queue::email::{EmailEvent, EmailStatus, InboundEvent, SuppressionReason};

/// The provider name in `penguin.inbound_events`.
const PROVIDER: &str = "mailgun";

/// The `mailgun.event` kind.
#[derive(Debug, Clone)]
pub struct MailgunEvent {
    pool: Option<PgPool>,
}

impl MailgunEvent {
    pub fn new(pool: Option<PgPool>) -> Self {
        Self { pool }
    }
}

impl Handler for MailgunEvent {
    fn kind(&self) -> &'static str {
        "mailgun.event"
    }

    fn default_policy(&self) -> KindPolicy {
        webhook_policy()
    }

    fn validate(&self, payload: &Value) -> Result<(), String> {
        inbound_event_id(payload).map(|_| ())
    }

    fn run(&self, ctx: JobContext, payload: Value) -> BoxFuture<'static, Attempt> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let pool = require_pool(pool, PROVIDER)?;
            let inbound = load_inbound(&pool, &payload, PROVIDER).await?;
            match parse(&inbound).map_err(JobError::bad_payload)? {
                Parsed::Event(event) => record_email(&pool, &ctx, &event).await,
                Parsed::Unknown(event_type) => {
                    ignore_unknown(&pool, &ctx, PROVIDER, &event_type).await
                }
            }
        })
    }
}

/// What an email webhook event amounts to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Parsed {
    Event(EmailEvent),
    /// A type we do not process.
    Unknown(String),
}

/// Parses a Mailgun webhook body (or its bare `event-data`).
pub(crate) fn parse(inbound: &InboundEvent) -> Result<Parsed, String> {
    let data = inbound
        .payload
        .get("event-data")
        .unwrap_or(&inbound.payload);
    if !data.is_object() {
        return Err("event-data is not an object".into());
    }
    let event = str_at(data, "event").ok_or("event-data.event is missing")?;
    let permanent = str_at(data, "severity") == Some("permanent");
    let reason = str_at(data, "reason").unwrap_or_default();
    use EmailStatus as S;
    use SuppressionReason as R;
    let (status, suppress) = match event {
        "accepted" => (S::Processed, None),
        "delivered" => (S::Delivered, None),
        "opened" => (S::Opened, None),
        "clicked" => (S::Clicked, None),
        "unsubscribed" => (S::Unsubscribed, Some(R::Unsubscribe)),
        "complained" => (S::Complained, Some(R::Complaint)),
        "rejected" => (S::Dropped, None),
        "failed" if !permanent => (S::SoftBounced, None),
        "failed" => match reason {
            "old" => (S::Failed, None),
            "suppress-bounce" => (S::Dropped, Some(R::HardBounce)),
            "suppress-complaint" => (S::Dropped, Some(R::Complaint)),
            "suppress-unsubscribe" => (S::Dropped, Some(R::Unsubscribe)),
            _ => (S::Bounced, Some(R::HardBounce)),
        },
        other => return Ok(Parsed::Unknown(other.to_string())),
    };
    let recipient = address(str_at(data, "recipient")).ok_or("event-data.recipient is missing")?;
    let occurred_at = data
        .get("timestamp")
        .and_then(Value::as_f64)
        .and_then(unix_float)
        .ok_or("event-data.timestamp is missing or not a unix time")?;
    let message_id = data
        .pointer("/message/headers/message-id")
        .and_then(Value::as_str)
        .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|id| !id.is_empty())
        .map(str::to_string);
    let vars = data.get("user-variables").unwrap_or(&Value::Null);
    Ok(Parsed::Event(EmailEvent {
        provider: PROVIDER,
        event_type: event.to_string(),
        status: Some(status),
        campaign_id: id_at(vars, &["campaign-id", "campaign_id", "campaignId"]),
        recipient_id: id_at(vars, &["recipient-id", "recipient_id", "recipientId"]),
        recipient,
        provider_message_id: message_id,
        provider_event_id: str_at(data, "id").map(str::to_string),
        occurred_at,
        inbound_event_id: inbound.id,
        suppress,
    }))
}

// ---- shared by mailgun.event, sendgrid.event and stripe.event ----

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

/// The pool, or the fatal configuration error of a registry built without one.
pub(crate) fn require_pool(pool: Option<PgPool>, provider: &str) -> Result<PgPool, JobError> {
    pool.ok_or_else(|| JobError::Fatal {
        class: ErrorClass::Configuration,
        message: format!("no database pool given to the {provider} webhook handler"),
        status: None,
    })
}

/// A database error: retry later.
pub(crate) fn db_error(e: queue::Error) -> JobError {
    JobError::Retryable {
        class: ErrorClass::Api,
        message: e.to_string(),
        status: None,
        not_before: None,
    }
}

/// Loads the job's inbound event, which must exist and belong to `provider`.
pub(crate) async fn load_inbound(
    pool: &PgPool,
    payload: &Value,
    provider: &str,
) -> Result<InboundEvent, JobError> {
    let id = inbound_event_id(payload).map_err(JobError::bad_payload)?;
    let inbound = queue::email::load_inbound_event(pool, id)
        .await
        .map_err(db_error)?
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
    let effects = queue::email::record_email_event(pool, event)
        .await
        .map_err(db_error)?;
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
    queue::email::count_webhooks(pool, &[(provider, reason.as_str(), 1)])
        .await
        .map_err(db_error)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(payload: Value) -> InboundEvent {
        InboundEvent {
            id: 7,
            provider: PROVIDER.into(),
            event_id: "mg_evt_1".into(),
            event_type: None,
            payload,
        }
    }

    fn event(data: Value) -> EmailEvent {
        match parse(&inbound(json!({ "signature": {}, "event-data": data }))).unwrap() {
            Parsed::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn the_vector_body_parses_into_a_delivered_event() {
        let body = json!({"signature":{"timestamp":"1732406400","token":"t","signature":"s"},
            "event-data":{"id":"mg_evt_1","event":"delivered","timestamp":1732406400.5,
            "recipient":"Ada@Example.com","user-variables":{"campaign-id":"cmp_42","recipient-id":"rcp_7"},
            "message":{"headers":{"message-id":"<20241124.1@mg.example.com>"}}}});
        let Parsed::Event(e) = parse(&inbound(body)).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(e.status, Some(EmailStatus::Delivered));
        assert_eq!(e.recipient, "ada@example.com");
        assert_eq!(e.campaign_id.as_deref(), Some("cmp_42"));
        assert_eq!(e.recipient_id.as_deref(), Some("rcp_7"));
        assert_eq!(
            e.provider_message_id.as_deref(),
            Some("20241124.1@mg.example.com")
        );
        assert_eq!(e.occurred_at.timestamp_micros(), 1_732_406_400_500_000);
        assert_eq!(e.suppress, None);
    }

    #[test]
    fn permanent_failures_suppress_and_temporary_ones_do_not() {
        let base = |severity: &str, reason: &str| {
            json!({"event": "failed", "severity": severity, "reason": reason,
                   "timestamp": 1.0, "recipient": "a@b.c"})
        };
        let hard = event(base("permanent", "bounce"));
        assert_eq!(
            (hard.status, hard.suppress),
            (
                Some(EmailStatus::Bounced),
                Some(SuppressionReason::HardBounce)
            )
        );
        let soft = event(base("temporary", "generic"));
        assert_eq!(
            (soft.status, soft.suppress),
            (Some(EmailStatus::SoftBounced), None)
        );
        let old = event(base("permanent", "old"));
        assert_eq!(
            (old.status, old.suppress),
            (Some(EmailStatus::Failed), None)
        );
    }

    #[test]
    fn unknown_types_are_not_errors_and_broken_events_are() {
        assert_eq!(
            parse(&inbound(json!({"event-data": {"event": "stored"}}))).unwrap(),
            Parsed::Unknown("stored".into())
        );
        assert!(parse(&inbound(json!({"event-data": {"event": "delivered"}}))).is_err());
        assert!(parse(&inbound(json!({"event-data": []}))).is_err());
    }

    #[test]
    fn only_a_positive_integer_id_is_a_valid_payload() {
        assert_eq!(inbound_event_id(&json!({"inbound_event_id": 3})), Ok(3));
        for bad in [
            json!({}),
            json!({"inbound_event_id": 0}),
            json!({"inbound_event_id": -1}),
            json!({"inbound_event_id": 1.5}),
            json!({"inbound_event_id": "3"}),
            json!({"inbound_event_id": 3, "extra": 1}),
            json!([3]),
        ] {
            assert!(inbound_event_id(&bad).is_err(), "{bad}");
        }
    }
}
