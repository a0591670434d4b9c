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
//! Mailgun signs a webhook's timestamp and token, not its `event-data`. With `[providers.
//! mailgun] confirm_suppressions`, an event that would suppress an address is first looked
//! up in Mailgun's Events API: one Mailgun does not list is not applied (counted as
//! `not_confirmed`, logged with a digest of the address, the job completes saying so);
//! one that may still be on its way there (younger than [`CONFIRM_GRACE`]) is asked about
//! again later; an Events API failure is retried like any provider call.
//!
//! Must never log a payload or an email address at info level.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::inbound::{
    InboundEventRef, Parsed, address, id_at, ignore_unknown, load_inbound, record_email, str_at,
    unix_float, webhook_policy,
};
use super::outbound::Outbound;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::providers::mailgun::{ClaimedEvent, Mailgun};
use crate::queue::email::{EmailEvent, EmailStatus, InboundEvent, SuppressionReason};

/// The provider name in `penguin.inbound_events`.
const PROVIDER: &str = "mailgun";

/// How long after an event the Events API may still not list it: Mailgun's events reach
/// its storage by different routes, and its polling guidance treats the last half hour as
/// incomplete. An unconfirmed event younger than this is asked about again.
pub const CONFIRM_GRACE: Duration = Duration::from_secs(30 * 60);

/// How long an unconfirmed young event waits before it is asked about again.
const CONFIRM_AGAIN: Duration = Duration::from_secs(120);

/// Clock difference tolerated for an event dated in the future; one dated later than this
/// cannot be on its way to the Events API, and is not waited for.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The `mailgun.event` kind: one stored Mailgun event.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct MailgunEvent(InboundEventRef);

/// What `mailgun.event` runs with.
pub struct MailgunEventDeps {
    pub pool: PgPool,
    /// Set with `[providers.mailgun] confirm_suppressions`.
    pub confirm: Option<Confirmer>,
}

impl MailgunEventDeps {
    /// With a [`Confirmer`] when `config` sets `confirm_suppressions`.
    pub fn new(
        config: Option<&crate::config::MailgunConfig>,
        deps: &super::Deps,
        outbound: &Arc<Outbound>,
    ) -> Self {
        Self {
            pool: deps.pool.clone(),
            confirm: config
                .filter(|m| m.confirm_suppressions)
                .map(|m| Confirmer {
                    mailgun: Mailgun::new(Some(m)),
                    http: deps.http.clone(),
                    outbound: outbound.clone(),
                }),
        }
    }
}

/// Asks Mailgun's Events API about events before they suppress an address.
pub struct Confirmer {
    pub mailgun: Mailgun,
    pub http: reqwest::Client,
    pub outbound: Arc<Outbound>,
}

impl Kind for MailgunEvent {
    const KIND: &'static str = crate::kind_names::MAILGUN_EVENT;
    const INTERNAL: bool = true;
    type Deps = MailgunEventDeps;

    fn policy() -> KindPolicy {
        webhook_policy()
    }

    async fn run(self, ctx: &JobContext, deps: &MailgunEventDeps) -> Attempt {
        let pool = &deps.pool;
        let inbound = load_inbound(pool, self.0, PROVIDER).await?;
        let event = match parse(&inbound).map_err(JobError::bad_payload)? {
            Parsed::Event(event) => event,
            Parsed::Unknown(event_type) => {
                return ignore_unknown(pool, ctx, PROVIDER, &event_type).await;
            }
        };
        if let (Some(_), Some(confirmer)) = (event.suppress, &deps.confirm)
            && !confirmer.confirms(ctx, &inbound, &event).await?
        {
            return not_confirmed(pool, ctx, &event, Utc::now()).await;
        }
        record_email(pool, ctx, &event).await
    }
}

impl Confirmer {
    /// Whether the Events API lists `event` (parsed from `inbound`).
    async fn confirms(
        &self,
        ctx: &JobContext,
        inbound: &InboundEvent,
        event: &EmailEvent,
    ) -> Result<bool, JobError> {
        let data = event_data(inbound);
        let claimed = ClaimedEvent {
            id: event.provider_event_id.as_deref(),
            event: &event.event_type,
            recipient: &event.recipient,
            severity: str_at(data, "severity"),
            reason: str_at(data, "reason"),
            timestamp: event.occurred_at,
        };
        let (mailgun, http, timeout) = (&self.mailgun, &self.http, ctx.call_timeout());
        self.outbound
            .call(
                PROVIDER,
                crate::kind_names::MAILGUN_EVENT,
                mailgun.configured_key(),
                async |key| mailgun.knows_event(http, key, &claimed, timeout).await,
            )
            .await
    }
}

/// An event the Events API does not list: asked about again while it may still be on its
/// way there, else not applied, counted and logged (the address as a digest only).
async fn not_confirmed(
    pool: &PgPool,
    ctx: &JobContext,
    event: &EmailEvent,
    now: DateTime<Utc>,
) -> Attempt {
    if may_still_be_listed(event.occurred_at, now) {
        return Err(JobError::Snooze {
            delay: CONFIRM_AGAIN,
        });
    }
    crate::queue::email::count_webhooks(pool, &[(PROVIDER, "not_confirmed", 1)]).await?;
    let digest = crate::secrets::sha256_hex(&event.recipient);
    tracing::warn!(
        job.id = ctx.id, provider = PROVIDER, inbound_event_id = event.inbound_event_id,
        event_type = %event.event_type, recipient_sha256 = &digest[..16],
        "the Mailgun Events API does not know this event: not applied (Mailgun does not sign event-data)"
    );
    Ok(Some(json!({
        "skipped": "not confirmed",
        "event_type": event.event_type,
        "reason": "the Mailgun Events API does not list this event",
    })))
}

/// Whether an event that happened at `occurred_at` may not be in the Events API yet.
fn may_still_be_listed(occurred_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let age = now - occurred_at;
    let skew = chrono::Duration::from_std(CLOCK_SKEW).unwrap_or_default();
    let grace = chrono::Duration::from_std(CONFIRM_GRACE).unwrap_or_default();
    age >= -skew && age < grace
}

/// The `event-data` of a Mailgun webhook body (or the body itself, when bare).
fn event_data(inbound: &InboundEvent) -> &Value {
    inbound
        .payload
        .get("event-data")
        .unwrap_or(&inbound.payload)
}

/// Parses a Mailgun webhook body (or its bare `event-data`).
pub(crate) fn parse(inbound: &InboundEvent) -> Result<Parsed, String> {
    let data = event_data(inbound);
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
    fn an_unlisted_event_is_waited_for_only_while_it_may_still_be_on_its_way() {
        let now = Utc::now();
        let ago = |secs: i64| now - chrono::Duration::seconds(secs);
        assert!(may_still_be_listed(ago(5), now));
        assert!(may_still_be_listed(ago(29 * 60), now));
        assert!(!may_still_be_listed(ago(31 * 60), now));
        assert!(may_still_be_listed(ago(-60), now), "a little clock skew");
        assert!(
            !may_still_be_listed(ago(-3600), now),
            "an event from the future"
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
