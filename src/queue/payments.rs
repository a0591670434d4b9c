//! Stripe webhook effects: `penguin.payments`, `penguin.invoices` and
//! `penguin.connect_accounts`.
//!
//! Stripe delivers events at least once and in no particular order, so every write here is
//! guarded by the event's `created`: an older event never overwrites what a newer one
//! stored, and the event already stored (same `last_event_id`) changes nothing when it
//! comes again. The webhook writes never touch `connect_accounts.tenant_id`: only
//! [`record_created_account`] (the `stripe.account.create` job) sets it. Never stores card
//! data, and knows nothing of Stripe's JSON (callers hand it the fields).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::Error;

pub use super::email::{InboundEvent, load_inbound_event};

/// A payment intent's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded,
    Failed,
}

impl PaymentStatus {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
        }
    }
}

/// A payment intent as one event left it.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentUpdate {
    /// `pi_...`
    pub id: String,
    pub status: PaymentStatus,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub customer: Option<String>,
    /// The connected account, if any.
    pub account: Option<String>,
    /// The failure's message (never card data).
    pub last_error: Option<String>,
    /// The failure's decline code or code.
    pub last_error_code: Option<String>,
    /// `evt_...`
    pub event_id: String,
    pub event_created: DateTime<Utc>,
}

/// Stores `p` unless the stored row came from a newer event (at the same second a success
/// beats a failure) or from this very event. Returns whether the row changed.
pub async fn upsert_payment<'e>(
    executor: impl PgExecutor<'e>,
    p: &PaymentUpdate,
) -> Result<bool, Error> {
    let n = sqlx::query(
        "insert into penguin.payments as p
             (id, status, amount, currency, customer, account, last_error, last_error_code,
              last_event_id, event_created)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (id) do update
            set status = excluded.status, amount = excluded.amount,
                currency = excluded.currency, customer = excluded.customer,
                account = excluded.account, last_error = excluded.last_error,
                last_error_code = excluded.last_error_code,
                last_event_id = excluded.last_event_id,
                event_created = excluded.event_created, updated_at = now()
          where excluded.last_event_id <> p.last_event_id
            and (excluded.event_created, excluded.status = 'succeeded')
                >= (p.event_created, p.status = 'succeeded')",
    )
    .bind(&p.id)
    .bind(p.status.as_str())
    .bind(p.amount)
    .bind(&p.currency)
    .bind(&p.customer)
    .bind(&p.account)
    .bind(&p.last_error)
    .bind(&p.last_error_code)
    .bind(&p.event_id)
    .bind(p.event_created)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// What a subscription's status becomes after one of its invoices' payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    /// The invoice was paid.
    Active,
    /// The invoice's payment failed.
    PastDue,
}

impl SubscriptionStatus {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
        }
    }
}

/// An invoice as one event left it.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceUpdate {
    /// `in_...`
    pub id: String,
    /// Stripe's invoice status (`paid`, `open`, ...).
    pub status: Option<String>,
    pub paid: bool,
    pub subscription_id: Option<String>,
    /// Derived from the event type; stored only with a subscription id.
    pub subscription_status: Option<SubscriptionStatus>,
    pub amount_due: Option<i64>,
    pub amount_paid: Option<i64>,
    pub currency: Option<String>,
    pub customer: Option<String>,
    pub account: Option<String>,
    pub event_id: String,
    pub event_created: DateTime<Utc>,
}

/// Stores `i` unless the stored row came from a newer event (at the same second a paid
/// invoice beats an unpaid one) or from this very event. Returns whether the row changed.
pub async fn upsert_invoice<'e>(
    executor: impl PgExecutor<'e>,
    i: &InvoiceUpdate,
) -> Result<bool, Error> {
    let n = sqlx::query(
        "insert into penguin.invoices as i
             (id, status, paid, subscription_id, subscription_status, amount_due, amount_paid,
              currency, customer, account, last_event_id, event_created)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         on conflict (id) do update
            set status = excluded.status, paid = excluded.paid,
                subscription_id = coalesce(excluded.subscription_id, i.subscription_id),
                subscription_status = coalesce(excluded.subscription_status, i.subscription_status),
                amount_due = excluded.amount_due, amount_paid = excluded.amount_paid,
                currency = excluded.currency, customer = excluded.customer,
                account = excluded.account, last_event_id = excluded.last_event_id,
                event_created = excluded.event_created, updated_at = now()
          where excluded.last_event_id <> i.last_event_id
            and (excluded.event_created, excluded.paid) >= (i.event_created, i.paid)",
    )
    .bind(&i.id)
    .bind(&i.status)
    .bind(i.paid)
    .bind(&i.subscription_id)
    .bind(
        i.subscription_id
            .as_ref()
            .and(i.subscription_status.map(SubscriptionStatus::as_str)),
    )
    .bind(i.amount_due)
    .bind(i.amount_paid)
    .bind(&i.currency)
    .bind(&i.customer)
    .bind(&i.account)
    .bind(&i.event_id)
    .bind(i.event_created)
    .execute(executor)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// The account-level flags of an `account.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFlags {
    pub charges_enabled: Option<bool>,
    pub payouts_enabled: Option<bool>,
    pub details_submitted: Option<bool>,
}

/// A connected account as one event describes it: the whole account (`account.updated`:
/// flags and every capability) or one capability (`capability.updated`: no flags).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountUpdate {
    /// `acct_...`
    pub account_id: String,
    /// `evt_...`
    pub event_id: String,
    pub event_created: DateTime<Utc>,
    /// `None` for a capability event.
    pub flags: Option<AccountFlags>,
    /// Capability name → status.
    pub capabilities: BTreeMap<String, String>,
}

/// The columns of `penguin.connect_accounts` an event can change.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AccountState {
    pub charges_enabled: Option<bool>,
    pub payouts_enabled: Option<bool>,
    pub details_submitted: Option<bool>,
    pub capabilities: serde_json::Value,
    pub capabilities_created: serde_json::Value,
    pub last_event_id: Option<String>,
    pub event_created: Option<DateTime<Utc>>,
}

impl AccountState {
    /// A row no event has touched yet.
    #[cfg(test)]
    fn empty() -> Self {
        Self {
            charges_enabled: None,
            payouts_enabled: None,
            details_submitted: None,
            capabilities: serde_json::json!({}),
            capabilities_created: serde_json::json!({}),
            last_event_id: None,
            event_created: None,
        }
    }

    /// This state after `u`: the flags when `u` is not older than the account event that
    /// set them (and is not that event), each capability when `u` is not older than the
    /// event that set it. Ties go to `u` (Stripe's `created` has one-second resolution).
    pub fn merged(&self, u: &AccountUpdate) -> Self {
        let mut next = self.clone();
        if let Some(flags) = u.flags {
            let newer = match (&self.event_created, &self.last_event_id) {
                (Some(at), Some(id)) => u.event_created >= *at && u.event_id != *id,
                _ => true,
            };
            if newer {
                next.charges_enabled = flags.charges_enabled;
                next.payouts_enabled = flags.payouts_enabled;
                next.details_submitted = flags.details_submitted;
                next.last_event_id = Some(u.event_id.clone());
                next.event_created = Some(u.event_created);
            }
        }
        let created = u.event_created.timestamp();
        for (name, status) in &u.capabilities {
            let stored = self.capabilities_created.get(name).and_then(|v| v.as_i64());
            if stored.is_none_or(|at| created >= at) {
                set_key(&mut next.capabilities, name, status.clone().into());
                set_key(&mut next.capabilities_created, name, created.into());
            }
        }
        next
    }
}

fn set_key(object: &mut serde_json::Value, key: &str, value: serde_json::Value) {
    if !object.is_object() {
        *object = serde_json::json!({});
    }
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_string(), value);
    }
}

/// Applies `u` to its connected account in one transaction (the row is locked while the
/// merge is computed, see [`AccountState::merged`]); writes only when something changes.
/// Returns whether the row was created or changed.
pub async fn apply_account_update(pool: &PgPool, u: &AccountUpdate) -> Result<bool, Error> {
    let mut tx = pool.begin().await?;
    let created = sqlx::query(
        "insert into penguin.connect_accounts (id) values ($1) on conflict (id) do nothing",
    )
    .bind(&u.account_id)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    let current: AccountState = sqlx::query_as(
        "select charges_enabled, payouts_enabled, details_submitted, capabilities,
                capabilities_created, last_event_id, event_created
           from penguin.connect_accounts where id = $1 for update",
    )
    .bind(&u.account_id)
    .fetch_one(&mut *tx)
    .await?;
    let next = current.merged(u);
    let changed = next != current;
    if changed {
        sqlx::query(
            "update penguin.connect_accounts
                set charges_enabled = $2, payouts_enabled = $3, details_submitted = $4,
                    capabilities = $5, capabilities_created = $6, last_event_id = $7,
                    event_created = $8, updated_at = now()
              where id = $1",
        )
        .bind(&u.account_id)
        .bind(next.charges_enabled)
        .bind(next.payouts_enabled)
        .bind(next.details_submitted)
        .bind(&next.capabilities)
        .bind(&next.capabilities_created)
        .bind(&next.last_event_id)
        .bind(next.event_created)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(created || changed)
}

/// Records an account this platform created for `tenant_id` (the `stripe.account.create`
/// job). An `account.updated` that arrived first keeps its flags; a retried job changes
/// nothing.
pub async fn record_created_account(
    pool: &PgPool,
    account_id: &str,
    tenant_id: Option<uuid::Uuid>,
) -> Result<(), Error> {
    sqlx::query(
        "insert into penguin.connect_accounts as a (id, tenant_id) values ($1, $2)
         on conflict (id) do update set tenant_id = coalesce(excluded.tenant_id, a.tenant_id),
                                        updated_at = now()",
    )
    .bind(account_id)
    .bind(tenant_id)
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix, 0).unwrap()
    }

    fn account(event: &str, created: i64, charges: bool) -> AccountUpdate {
        AccountUpdate {
            account_id: "acct_1".into(),
            event_id: event.into(),
            event_created: at(created),
            flags: Some(AccountFlags {
                charges_enabled: Some(charges),
                payouts_enabled: Some(charges),
                details_submitted: Some(true),
            }),
            capabilities: BTreeMap::from([("card_payments".into(), "active".into())]),
        }
    }

    fn capability(event: &str, created: i64, name: &str, status: &str) -> AccountUpdate {
        AccountUpdate {
            account_id: "acct_1".into(),
            event_id: event.into(),
            event_created: at(created),
            flags: None,
            capabilities: BTreeMap::from([(name.into(), status.into())]),
        }
    }

    #[test]
    fn an_older_account_event_keeps_the_newer_flags() {
        let newer = AccountState::empty().merged(&account("evt_2", 20, true));
        let after = newer.merged(&account("evt_1", 10, false));
        assert_eq!(after, newer);
    }

    #[test]
    fn the_same_account_event_twice_changes_nothing() {
        let once = AccountState::empty().merged(&account("evt_1", 10, true));
        assert_eq!(once.merged(&account("evt_1", 10, true)), once);
    }

    #[test]
    fn capabilities_are_ordered_one_by_one() {
        let s = AccountState::empty()
            .merged(&capability("evt_2", 20, "card_payments", "inactive"))
            // older news about card_payments is dropped, about transfers it is kept
            .merged(&capability("evt_1", 10, "card_payments", "active"))
            .merged(&capability("evt_0", 5, "transfers", "pending"));
        assert_eq!(
            s.capabilities,
            serde_json::json!({"card_payments": "inactive", "transfers": "pending"})
        );
        // an account snapshot older than the card_payments event keeps the capability
        let s = s.merged(&account("evt_3", 15, true));
        assert_eq!(s.capabilities["card_payments"], "inactive");
        assert_eq!(s.charges_enabled, Some(true));
    }
}
