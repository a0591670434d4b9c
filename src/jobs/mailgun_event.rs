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
//! Must never log a payload or an email address at info level.

use serde_json::Value;
use sqlx::PgPool;

use super::inbound::{
    InboundEventRef, Parsed, address, email_webhook, id_at, str_at, unix_float, webhook_policy,
};
use super::{Attempt, JobContext, Kind, KindPolicy};
use crate::queue::email::{EmailEvent, EmailStatus, InboundEvent, SuppressionReason};

/// The provider name in `penguin.inbound_events`.
const PROVIDER: &str = "mailgun";

/// The `mailgun.event` kind: one stored Mailgun event.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub struct MailgunEvent(InboundEventRef);

impl Kind for MailgunEvent {
    const KIND: &'static str = crate::kind_names::MAILGUN_EVENT;
    const INTERNAL: bool = true;
    type Deps = PgPool;

    fn policy() -> KindPolicy {
        webhook_policy()
    }

    async fn run(self, ctx: &JobContext, pool: &PgPool) -> Attempt {
        email_webhook(self.0, ctx, pool, PROVIDER, parse).await
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::inbound::*;
    use serde_json::json;

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
