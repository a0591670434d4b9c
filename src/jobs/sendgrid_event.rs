//! `sendgrid.event`: processes one SendGrid event (one element of an Event Webhook batch,
//! stored by the edge in `penguin.inbound_events`; payload `{"inbound_event_id": <id>}`):
//! records the email event, moves the campaign recipient's status, and suppresses hard
//! bounces, spam reports and unsubscribes.
//!
//! Mapping (`event` → status, suppression): `processed` → processed; `delivered`; `open` →
//! opened; `click` → clicked; `deferred`; `bounce` with `type` `blocked` → soft_bounced;
//! other `bounce`s → bounced + hard_bounce; `dropped`; `spamreport` → complained +
//! complaint; `unsubscribe` and `group_unsubscribe` → unsubscribed + unsubscribe. Any other
//! event is counted in `penguin.webhook_counters` as `unknown_type:<event>`. Our sends set
//! the custom args `campaignId` and `recipientId` (`campaign_id`/`recipient_id` accepted).
//!
//! Must never log a payload or an email address at info level.

use sqlx::PgPool;

use super::inbound::{
    InboundEventRef, Parsed, address, email_webhook, id_at, str_at, webhook_policy,
};
use super::{Attempt, JobContext, Kind, KindPolicy};
use crate::queue::email::{EmailEvent, EmailStatus, InboundEvent, SuppressionReason};

/// The provider name in `penguin.inbound_events`.
const PROVIDER: &str = "sendgrid";

/// The `sendgrid.event` kind: one stored SendGrid event.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SendgridEvent(InboundEventRef);

impl Kind for SendgridEvent {
    const KIND: &'static str = crate::kind_names::SENDGRID_EVENT;
    const INTERNAL: bool = true;
    type Deps = PgPool;

    fn policy() -> KindPolicy {
        webhook_policy()
    }

    async fn run(self, ctx: &JobContext, pool: &PgPool) -> Attempt {
        email_webhook(self.0, ctx, pool, PROVIDER, parse).await
    }
}

/// Parses one SendGrid event object.
fn parse(inbound: &InboundEvent) -> Result<Parsed, String> {
    let data = &inbound.payload;
    if !data.is_object() {
        return Err("the event is not an object".into());
    }
    let event = str_at(data, "event").ok_or("event is missing")?;
    use EmailStatus as S;
    use SuppressionReason as R;
    let (status, suppress) = match event {
        "processed" => (S::Processed, None),
        "delivered" => (S::Delivered, None),
        "open" => (S::Opened, None),
        "click" => (S::Clicked, None),
        "deferred" => (S::Deferred, None),
        "bounce" if str_at(data, "type") == Some("blocked") => (S::SoftBounced, None),
        "bounce" => (S::Bounced, Some(R::HardBounce)),
        "dropped" => (S::Dropped, None),
        "spamreport" => (S::Complained, Some(R::Complaint)),
        "unsubscribe" | "group_unsubscribe" => (S::Unsubscribed, Some(R::Unsubscribe)),
        other => return Ok(Parsed::Unknown(other.to_string())),
    };
    let recipient = address(str_at(data, "email")).ok_or("email is missing")?;
    let occurred_at = data
        .get("timestamp")
        .and_then(|t| t.as_i64().or_else(|| t.as_f64().map(|f| f as i64)))
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .ok_or("timestamp is missing or not a unix time")?;
    // sg_message_id is the send's X-Message-Id plus a `.filter...` suffix
    let message_id = str_at(data, "sg_message_id")
        .and_then(|id| id.split(".filter").next())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty());
    Ok(Parsed::Event(EmailEvent {
        provider: PROVIDER,
        event_type: event.to_string(),
        status: Some(status),
        campaign_id: id_at(data, &["campaignId", "campaign_id"]),
        recipient_id: id_at(data, &["recipientId", "recipient_id"]),
        recipient,
        provider_message_id: message_id,
        provider_event_id: str_at(data, "sg_event_id").map(str::to_string),
        occurred_at,
        inbound_event_id: inbound.id,
        suppress,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn event(payload: Value) -> EmailEvent {
        let inbound = InboundEvent {
            id: 1,
            provider: PROVIDER.into(),
            event_id: "sg_evt_1".into(),
            event_type: None,
            payload,
        };
        match parse(&inbound).unwrap() {
            Parsed::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn the_vector_bounce_is_a_hard_bounce_with_its_custom_args() {
        let e = event(
            json!({"email":"bob@example.com","timestamp":1732406401,"event":"bounce",
            "type":"bounce","reason":"550 5.1.1 user unknown","sg_event_id":"sg_evt_2",
            "sg_message_id":"sg_msg_2.filter0001","campaign_id":"cmp_42","recipient_id":"rcp_8"}),
        );
        assert_eq!(e.status, Some(EmailStatus::Bounced));
        assert_eq!(e.suppress, Some(SuppressionReason::HardBounce));
        assert_eq!(e.provider_message_id.as_deref(), Some("sg_msg_2"));
        assert_eq!(e.campaign_id.as_deref(), Some("cmp_42"));
        assert_eq!(e.recipient_id.as_deref(), Some("rcp_8"));
        assert_eq!(e.occurred_at.timestamp(), 1_732_406_401);
    }

    #[test]
    fn blocked_is_a_soft_bounce_and_camel_case_args_are_read() {
        let e = event(
            json!({"email":"a@b.c","timestamp":1,"event":"bounce","type":"blocked",
            "campaignId":"cmp_1","recipientId":"r_1"}),
        );
        assert_eq!(
            (e.status, e.suppress),
            (Some(EmailStatus::SoftBounced), None)
        );
        assert_eq!(e.campaign_id.as_deref(), Some("cmp_1"));
        assert_eq!(e.recipient_id.as_deref(), Some("r_1"));
    }
}
