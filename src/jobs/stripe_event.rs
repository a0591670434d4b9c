//! `stripe.event`: processes one Stripe event stored by the edge in
//! `penguin.inbound_events` (payload `{"inbound_event_id": <id>}`).
//!
//! - `payment_intent.succeeded` / `payment_intent.payment_failed` → `penguin.payments`
//!   (the connected account is the event's `account`, else the intent's `on_behalf_of`,
//!   else its `transfer_data.destination`; of a failure only the message and code are kept).
//! - `invoice.payment_succeeded` (and `invoice.paid`) / `invoice.payment_failed` →
//!   `penguin.invoices`, with the subscription's status derived from the event: succeeded →
//!   `active`, failed → `past_due`.
//! - `account.updated` (the whole account) / `capability.updated` (one capability) →
//!   `penguin.connect_accounts`.
//!
//! Any other type is counted in `penguin.webhook_counters` as `unknown_type:<type>`.
//! Out-of-order and repeated events are the storage's business (`queue::payments`): an
//! older event never overwrites a newer one. Must never log a payload at info level.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::inbound::{InboundEventRef, ignore_unknown, load_inbound, str_at, webhook_policy};
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::queue::payments::{
    self, AccountFlags, AccountUpdate, InboundEvent, InvoiceUpdate, PaymentStatus, PaymentUpdate,
    SubscriptionStatus,
};

/// The provider name in `penguin.inbound_events`.
const PROVIDER: &str = "stripe";

/// The `stripe.event` kind: one stored Stripe event.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct StripeEvent(InboundEventRef);

impl Kind for StripeEvent {
    const KIND: &'static str = crate::kind_names::STRIPE_EVENT;
    const INTERNAL: bool = true;
    type Deps = PgPool;

    fn policy() -> KindPolicy {
        webhook_policy()
    }

    async fn run(self, ctx: &JobContext, pool: &PgPool) -> Attempt {
        let inbound = load_inbound(pool, self.0, PROVIDER).await?;
        let (effect, changed) = match parse(&inbound).map_err(JobError::bad_payload)? {
            Parsed::Payment(p) => ("payment", payments::upsert_payment(pool, &p).await?),
            Parsed::Invoice(i) => ("invoice", payments::upsert_invoice(pool, &i).await?),
            Parsed::Account(a) => (
                "connect_account",
                payments::apply_account_update(pool, &a).await?,
            ),
            Parsed::Unknown(event_type) => {
                return ignore_unknown(pool, ctx, PROVIDER, &event_type).await;
            }
        };
        tracing::info!(
            job.id = ctx.id, provider = PROVIDER, inbound_event_id = inbound.id,
            event_type = ?inbound.event_type, effect, changed, "stripe event processed"
        );
        Ok(Some(if changed {
            json!({ "effects": [effect] })
        } else {
            // an older event than the one stored, or this very event again
            json!({ "effects": [], "skipped": "stale_or_duplicate" })
        }))
    }
}

/// What a Stripe event amounts to.
#[derive(Debug, Clone, PartialEq)]
enum Parsed {
    Payment(PaymentUpdate),
    Invoice(InvoiceUpdate),
    Account(AccountUpdate),
    /// A type we do not process.
    Unknown(String),
}

/// Parses one Stripe event object.
/// What every event carries, read once.
struct Envelope<'a> {
    event_type: &'a str,
    event_id: String,
    event_created: DateTime<Utc>,
    /// `data.object`
    object: &'a Value,
    /// The connected account the event is about, if any.
    account: Option<String>,
}

impl Envelope<'_> {
    fn object_id(&self) -> Result<String, String> {
        str_at(self.object, "id")
            .map(str::to_string)
            .ok_or_else(|| "data.object.id is missing".to_string())
    }
}

fn parse(inbound: &InboundEvent) -> Result<Parsed, String> {
    let event = &inbound.payload;
    let event_type = str_at(event, "type").ok_or("type is missing")?;
    if !KNOWN_TYPES.contains(&event_type) {
        return Ok(Parsed::Unknown(event_type.to_string()));
    }
    let e = Envelope {
        event_type,
        event_id: str_at(event, "id").ok_or("id is missing")?.to_string(),
        event_created: event
            .get("created")
            .and_then(Value::as_i64)
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
            .ok_or("created is missing or not a unix time")?,
        object: event
            .pointer("/data/object")
            .filter(|o| o.is_object())
            .ok_or("data.object is missing")?,
        account: id_of(event.get("account")),
    };
    match event_type {
        "payment_intent.succeeded" | "payment_intent.payment_failed" => payment(e),
        "invoice.payment_succeeded" | "invoice.paid" | "invoice.payment_failed" => invoice(e),
        "account.updated" => account_updated(e),
        "capability.updated" => capability_updated(e),
        other => Ok(Parsed::Unknown(other.to_string())),
    }
}

fn payment(e: Envelope<'_>) -> Result<Parsed, String> {
    let object = e.object;
    let error = object.get("last_payment_error").unwrap_or(&Value::Null);
    Ok(Parsed::Payment(PaymentUpdate {
        id: e.object_id()?,
        status: if e.event_type == "payment_intent.succeeded" {
            PaymentStatus::Succeeded
        } else {
            PaymentStatus::Failed
        },
        amount: object.get("amount").and_then(Value::as_i64),
        currency: str_at(object, "currency").map(str::to_string),
        customer: id_of(object.get("customer")),
        account: e
            .account
            .or_else(|| id_of(object.get("on_behalf_of")))
            .or_else(|| id_of(object.pointer("/transfer_data/destination"))),
        last_error: str_at(error, "message").map(str::to_string),
        last_error_code: str_at(error, "decline_code")
            .or_else(|| str_at(error, "code"))
            .map(str::to_string),
        event_id: e.event_id,
        event_created: e.event_created,
    }))
}

fn invoice(e: Envelope<'_>) -> Result<Parsed, String> {
    let object = e.object;
    let succeeded = e.event_type != "invoice.payment_failed";
    let status = str_at(object, "status").map(str::to_string);
    Ok(Parsed::Invoice(InvoiceUpdate {
        id: e.object_id()?,
        // `paid` is gone from newer API versions: fall back on the status
        paid: object
            .get("paid")
            .and_then(Value::as_bool)
            .unwrap_or(status.as_deref() == Some("paid")),
        status,
        // moved under `parent.subscription_details` in newer API versions
        subscription_id: id_of(object.get("subscription"))
            .or_else(|| id_of(object.pointer("/parent/subscription_details/subscription"))),
        subscription_status: Some(if succeeded {
            SubscriptionStatus::Active
        } else {
            SubscriptionStatus::PastDue
        }),
        amount_due: object.get("amount_due").and_then(Value::as_i64),
        amount_paid: object.get("amount_paid").and_then(Value::as_i64),
        currency: str_at(object, "currency").map(str::to_string),
        customer: id_of(object.get("customer")),
        account: e.account,
        event_id: e.event_id,
        event_created: e.event_created,
    }))
}

fn account_updated(e: Envelope<'_>) -> Result<Parsed, String> {
    let object = e.object;
    let capabilities = object
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            caps.iter()
                .filter_map(|(name, status)| Some((name.clone(), status.as_str()?.into())))
                .collect()
        })
        .unwrap_or_default();
    Ok(Parsed::Account(AccountUpdate {
        account_id: e.object_id()?,
        event_id: e.event_id,
        event_created: e.event_created,
        flags: Some(AccountFlags {
            charges_enabled: object.get("charges_enabled").and_then(Value::as_bool),
            payouts_enabled: object.get("payouts_enabled").and_then(Value::as_bool),
            details_submitted: object.get("details_submitted").and_then(Value::as_bool),
        }),
        capabilities,
    }))
}

fn capability_updated(e: Envelope<'_>) -> Result<Parsed, String> {
    let status = str_at(e.object, "status").ok_or("data.object.status is missing")?;
    let account_id = id_of(e.object.get("account"))
        .or_else(|| e.account.clone())
        .ok_or("data.object.account is missing")?;
    let capability = e.object_id()?;
    Ok(Parsed::Account(AccountUpdate {
        account_id,
        event_id: e.event_id,
        event_created: e.event_created,
        flags: None,
        capabilities: BTreeMap::from([(capability, status.to_string())]),
    }))
}

/// The event types this kind processes.
const KNOWN_TYPES: [&str; 7] = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "invoice.payment_succeeded",
    "invoice.paid",
    "invoice.payment_failed",
    "account.updated",
    "capability.updated",
];

/// The id of a Stripe reference: a string id, or an expanded object's `id`.
fn id_of(value: Option<&Value>) -> Option<String> {
    let value = value?;
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(_) => str_at(value, "id").map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(payload: Value) -> Result<Parsed, String> {
        parse(&InboundEvent {
            id: 1,
            provider: PROVIDER.into(),
            event_id: "evt".into(),
            event_type: None,
            payload,
        })
    }

    #[test]
    fn the_vector_event_is_a_succeeded_payment() {
        let Parsed::Payment(p) = parsed(json!({"id":"evt_1PenguinTest","object":"event",
            "type":"payment_intent.succeeded","created":1732406400,"livemode":false,
            "data":{"object":{"id":"pi_3PenguinTest","object":"payment_intent","amount":4900,
            "currency":"usd","status":"succeeded"}}}))
        .unwrap() else {
            panic!("not a payment")
        };
        assert_eq!(p.id, "pi_3PenguinTest");
        assert_eq!(p.status, PaymentStatus::Succeeded);
        assert_eq!((p.amount, p.currency.as_deref()), (Some(4900), Some("usd")));
        assert_eq!(p.event_created.timestamp(), 1_732_406_400);
        assert_eq!(p.account, None);
    }

    #[test]
    fn a_failed_payment_keeps_the_message_and_code_but_no_card() {
        let Parsed::Payment(p) =
            parsed(json!({"id":"evt_2","type":"payment_intent.payment_failed",
            "created":2,"account":"acct_9","data":{"object":{"id":"pi_1","customer":{"id":"cus_1"},
            "last_payment_error":{"message":"Your card was declined.","code":"card_declined",
            "decline_code":"insufficient_funds","payment_method":{"card":{"last4":"4242"}}}}}}))
            .unwrap()
        else {
            panic!("not a payment")
        };
        assert_eq!(p.last_error.as_deref(), Some("Your card was declined."));
        assert_eq!(p.last_error_code.as_deref(), Some("insufficient_funds"));
        assert_eq!(p.customer.as_deref(), Some("cus_1"));
        assert_eq!(p.account.as_deref(), Some("acct_9"));
    }

    #[test]
    fn newer_invoices_name_their_subscription_under_parent() {
        let Parsed::Invoice(i) = parsed(json!({"id":"evt_3","type":"invoice.payment_failed",
            "created":3,"data":{"object":{"id":"in_1","status":"open",
            "parent":{"subscription_details":{"subscription":"sub_1"}}}}}))
        .unwrap() else {
            panic!("not an invoice")
        };
        assert_eq!(i.subscription_id.as_deref(), Some("sub_1"));
        assert_eq!(i.subscription_status, Some(SubscriptionStatus::PastDue));
        assert!(!i.paid);
    }

    #[test]
    fn events_without_created_or_object_are_refused() {
        assert!(
            parsed(json!({"id":"evt","type":"account.updated","data":{"object":{"id":"acct"}}}))
                .is_err()
        );
        assert!(parsed(json!({"id":"evt","type":"account.updated","created":1})).is_err());
        assert_eq!(
            parsed(json!({"type":"charge.refunded"})).unwrap(),
            Parsed::Unknown("charge.refunded".into())
        );
    }
}
