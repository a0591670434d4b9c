//! Email webhook effects: `penguin.email_events` (append-only), `penguin.email_status`
//! (one row per campaign recipient, under the precedence of `penguin.email_status_rank`),
//! `penguin.suppressions`, and `penguin.webhook_counters` (shared with the edge). Also
//! reads `penguin.inbound_events` for the processing jobs of every provider.
//!
//! One processed event is one transaction: its event row, its status and its suppression
//! commit together or not at all, and the event row's unique `inbound_event_id` makes a
//! second run a no-op. It must never delete a suppression, never let a lower-ranked status
//! replace a higher one, and knows nothing of provider payloads (callers hand it
//! normalised [`EmailEvent`]s).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::Error;

/// One stored inbound webhook event, as the processing jobs need it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InboundEvent {
    pub id: i64,
    /// `mailgun`, `sendgrid` or `stripe`.
    pub provider: String,
    /// The provider's event id.
    pub event_id: String,
    pub event_type: Option<String>,
    /// The event itself.
    pub payload: serde_json::Value,
}

/// Loads inbound event `id`, or `None` if there is none.
pub async fn load_inbound_event<'e>(
    executor: impl PgExecutor<'e>,
    id: i64,
) -> Result<Option<InboundEvent>, Error> {
    Ok(sqlx::query_as(
        "select id, provider, event_id, event_type,
                coalesce(payload, convert_from(raw, 'UTF8')::jsonb) as payload
           from penguin.inbound_events where id = $1",
    )
    .bind(id)
    .fetch_optional(executor)
    .await?)
}

/// Why an address is suppressed (`penguin.suppressions.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressionReason {
    HardBounce,
    Complaint,
    Unsubscribe,
}

impl SuppressionReason {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::HardBounce => "hard_bounce",
            SuppressionReason::Complaint => "complaint",
            SuppressionReason::Unsubscribe => "unsubscribe",
        }
    }
}

/// A recipient status (`penguin.email_status.status`), ranked by
/// `penguin.email_status_rank` in the migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailStatus {
    /// Our own record that the provider accepted the message (ranks below every webhook).
    Sent,
    Processed,
    Deferred,
    SoftBounced,
    Delivered,
    Opened,
    Clicked,
    Bounced,
    Failed,
    Dropped,
    Complained,
    Unsubscribed,
}

impl EmailStatus {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Sent => "sent",
            EmailStatus::Processed => "processed",
            EmailStatus::Deferred => "deferred",
            EmailStatus::SoftBounced => "soft_bounced",
            EmailStatus::Delivered => "delivered",
            EmailStatus::Opened => "opened",
            EmailStatus::Clicked => "clicked",
            EmailStatus::Bounced => "bounced",
            EmailStatus::Failed => "failed",
            EmailStatus::Dropped => "dropped",
            EmailStatus::Complained => "complained",
            EmailStatus::Unsubscribed => "unsubscribed",
        }
    }
}

/// One provider email event, normalised by its job.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailEvent {
    /// `mailgun` or `sendgrid`.
    pub provider: &'static str,
    /// The provider's own event name.
    pub event_type: String,
    /// What it means for the recipient; `None` leaves `email_status` alone.
    pub status: Option<EmailStatus>,
    pub campaign_id: Option<String>,
    pub recipient_id: Option<String>,
    /// The address, lowercased by the caller.
    pub recipient: String,
    pub provider_message_id: Option<String>,
    pub provider_event_id: Option<String>,
    pub occurred_at: DateTime<Utc>,
    pub inbound_event_id: i64,
    /// Add the recipient to the suppressions for this reason.
    pub suppress: Option<SuppressionReason>,
}

/// What recording one event changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EmailEffects {
    /// `false`: this inbound event was already recorded, nothing else was done.
    pub event_recorded: bool,
    /// The campaign recipient's status was inserted or replaced.
    pub status_changed: bool,
    /// The address was newly suppressed.
    pub suppressed: bool,
}

/// Records `event` in one transaction: its `email_events` row; when it has a status and a
/// campaign id, the recipient's `email_status` (only if the new status ranks higher, or
/// equal and later); and its suppression (first reason wins). An inbound event recorded
/// before changes nothing.
pub async fn record_email_event(pool: &PgPool, event: &EmailEvent) -> Result<EmailEffects, Error> {
    let mut tx = pool.begin().await?;
    let Some(email_event_id) = insert_email_event(&mut tx, event).await? else {
        tx.rollback().await?;
        return Ok(EmailEffects::default());
    };
    let mut effects = EmailEffects {
        event_recorded: true,
        ..EmailEffects::default()
    };
    if let (Some(status), Some(campaign_id)) = (event.status, &event.campaign_id) {
        effects.status_changed =
            advance_status(&mut tx, event, status, campaign_id, email_event_id).await?;
    }
    if let Some(reason) = event.suppress {
        effects.suppressed = suppress(&mut tx, event, reason).await?;
    }
    tx.commit().await?;
    Ok(effects)
}

/// The event's row; `None` if its inbound event was recorded before.
async fn insert_email_event(
    conn: &mut PgConnection,
    event: &EmailEvent,
) -> Result<Option<i64>, Error> {
    Ok(sqlx::query_scalar(
        "insert into penguin.email_events
             (provider, event_type, status, campaign_id, recipient_id, recipient,
              provider_message_id, provider_event_id, occurred_at, inbound_event_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         on conflict (inbound_event_id) do nothing
         returning id",
    )
    .bind(event.provider)
    .bind(&event.event_type)
    .bind(event.status.map(EmailStatus::as_str))
    .bind(&event.campaign_id)
    .bind(&event.recipient_id)
    .bind(&event.recipient)
    .bind(&event.provider_message_id)
    .bind(&event.provider_event_id)
    .bind(event.occurred_at)
    .bind(event.inbound_event_id)
    .fetch_optional(conn)
    .await?)
}

/// Moves the recipient's status forward (a higher rank, or the same rank later);
/// `true` if it changed.
async fn advance_status(
    conn: &mut PgConnection,
    event: &EmailEvent,
    status: EmailStatus,
    campaign_id: &str,
    email_event_id: i64,
) -> Result<bool, Error> {
    Ok(sqlx::query(
        "insert into penguin.email_status as s
             (campaign_id, recipient, recipient_id, status, provider, provider_message_id,
              occurred_at, email_event_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (campaign_id, recipient) do update
            set recipient_id = coalesce(excluded.recipient_id, s.recipient_id),
                status = excluded.status,
                provider = excluded.provider,
                provider_message_id = excluded.provider_message_id,
                occurred_at = excluded.occurred_at,
                email_event_id = excluded.email_event_id,
                updated_at = now()
          where penguin.email_status_rank(excluded.status) > penguin.email_status_rank(s.status)
             or (penguin.email_status_rank(excluded.status) = penguin.email_status_rank(s.status)
                 and excluded.occurred_at > s.occurred_at)",
    )
    .bind(campaign_id)
    .bind(&event.recipient)
    .bind(&event.recipient_id)
    .bind(status.as_str())
    .bind(event.provider)
    .bind(&event.provider_message_id)
    .bind(event.occurred_at)
    .bind(email_event_id)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Suppresses the recipient's address; `true` if it was not suppressed yet.
async fn suppress(
    conn: &mut PgConnection,
    event: &EmailEvent,
    reason: SuppressionReason,
) -> Result<bool, Error> {
    Ok(sqlx::query(
        "insert into penguin.suppressions (address, reason, provider, inbound_event_id)
         values ($1, $2, $3, $4)
         on conflict (address) do nothing",
    )
    .bind(&event.recipient)
    .bind(reason.as_str())
    .bind(event.provider)
    .bind(event.inbound_event_id)
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// Adds `n` to each `(provider, reason)` counter of `penguin.webhook_counters`, in one
/// statement (repeated pairs are summed first).
pub async fn count_webhooks<'e>(
    executor: impl PgExecutor<'e>,
    counts: &[(&str, &str, i64)],
) -> Result<(), Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let providers: Vec<&str> = counts.iter().map(|c| c.0).collect();
    let reasons: Vec<&str> = counts.iter().map(|c| c.1).collect();
    let ns: Vec<i64> = counts.iter().map(|c| c.2).collect();
    sqlx::query(
        "insert into penguin.webhook_counters as c (provider, reason, count)
         select provider, reason, sum(n)::bigint
           from unnest($1::text[], $2::text[], $3::bigint[]) as t(provider, reason, n)
          group by provider, reason
          order by provider, reason
         on conflict (provider, reason) do update
            set count = c.count + excluded.count, updated_at = now()",
    )
    .bind(&providers)
    .bind(&reasons)
    .bind(&ns)
    .execute(executor)
    .await?;
    Ok(())
}

/// What a send job must know before calling the provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendCheck {
    /// The provider message id this job's send was already recorded with (a retry after
    /// the provider accepted it): do not send again.
    pub already_sent: Option<String>,
    /// Which of the recipients are in `penguin.suppressions`.
    pub suppressed: Vec<String>,
}

/// One statement for many send jobs `(job id, lowercased recipients)`: was each job's
/// message already accepted (a retry after the provider answered), and which of its
/// recipients are suppressed; answers in input order.
pub async fn check_sends(
    pool: &PgPool,
    jobs: &[(i64, Vec<String>)],
) -> Result<Vec<SendCheck>, Error> {
    let job_ids: Vec<i64> = jobs.iter().map(|(id, _)| *id).collect();
    let mut ords = Vec::new();
    let mut addresses = Vec::new();
    for (i, (_, recipients)) in jobs.iter().enumerate() {
        for r in recipients {
            ords.push(i as i32 + 1);
            addresses.push(r.as_str());
        }
    }
    let rows: Vec<(i64, Option<String>, Vec<String>)> = sqlx::query_as(
        "with jobs as (
             select job_id, ord from unnest($1::bigint[]) with ordinality as j(job_id, ord)
         ),
         rcpt as (select * from unnest($2::int[], $3::text[]) as r(ord, address))
         select j.ord,
                (select coalesce(e.provider_message_id, '') from penguin.email_events e
                  where e.send_job_id = j.job_id limit 1),
                coalesce((select array_agg(distinct s.address) from rcpt r
                            join penguin.suppressions s on s.address = r.address
                           where r.ord = j.ord), '{}')
           from jobs j
          order by j.ord",
    )
    .bind(&job_ids)
    .bind(&ords)
    .bind(&addresses)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(_, already_sent, suppressed)| SendCheck {
            already_sent,
            suppressed,
        })
        .collect())
}

/// A message a provider accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedSend {
    pub job_id: i64,
    /// `mailgun` or `sendgrid`.
    pub provider: &'static str,
    pub provider_message_id: String,
    pub campaign_id: Option<String>,
    pub recipient_id: Option<String>,
    /// The `to` addresses, lowercased, without duplicates.
    pub recipients: Vec<String>,
    pub accepted_at: DateTime<Utc>,
}

/// Records an accepted send: see [`record_sends`].
pub async fn record_send(pool: &PgPool, send: &AcceptedSend) -> Result<(), Error> {
    record_sends(pool, std::slice::from_ref(send)).await
}

/// Records accepted sends in one statement: a `sent` email event per recipient, keyed by
/// the job (recording twice changes nothing), and, with a campaign id, each recipient's
/// status `sent` unless a webhook already reported something (every webhook status ranks
/// higher). When several sends of the batch reach the same campaign recipient, the latest
/// accepted one sets the status.
pub async fn record_sends(pool: &PgPool, sends: &[AcceptedSend]) -> Result<(), Error> {
    let rows = sends.iter().map(|s| s.recipients.len()).sum();
    let mut job_ids = Vec::with_capacity(rows);
    let mut providers = Vec::with_capacity(rows);
    let mut campaigns = Vec::with_capacity(rows);
    let mut recipient_ids = Vec::with_capacity(rows);
    let mut message_ids = Vec::with_capacity(rows);
    let mut accepted = Vec::with_capacity(rows);
    let mut recipients = Vec::with_capacity(rows);
    for send in sends {
        for r in &send.recipients {
            job_ids.push(send.job_id);
            providers.push(send.provider);
            campaigns.push(send.campaign_id.as_deref());
            recipient_ids.push(send.recipient_id.as_deref());
            message_ids.push(send.provider_message_id.as_str());
            accepted.push(send.accepted_at);
            recipients.push(r.as_str());
        }
    }
    sqlx::query(
        "with input as (
             select * from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::timestamptz[], $7::text[])
                 as t(job_id, provider, campaign_id, recipient_id, message_id, accepted_at, recipient)
         ),
         ev as (
             insert into penguin.email_events
                 (provider, event_type, status, campaign_id, recipient_id, recipient,
                  provider_message_id, occurred_at, send_job_id)
             select provider, 'sent', 'sent', campaign_id, recipient_id, recipient, message_id,
                    accepted_at, job_id
               from input
             on conflict (send_job_id, recipient) where send_job_id is not null do nothing
             returning id, provider, campaign_id, recipient_id, recipient, provider_message_id,
                       occurred_at
         )
         insert into penguin.email_status as s
             (campaign_id, recipient, recipient_id, status, provider, provider_message_id,
              occurred_at, email_event_id)
         select distinct on (campaign_id, recipient)
                campaign_id, recipient, recipient_id, 'sent', provider, provider_message_id,
                occurred_at, id
           from ev
          where campaign_id is not null
          order by campaign_id, recipient, occurred_at desc, id desc
         on conflict (campaign_id, recipient) do update
            set recipient_id = coalesce(excluded.recipient_id, s.recipient_id),
                status = excluded.status, provider = excluded.provider,
                provider_message_id = excluded.provider_message_id,
                occurred_at = excluded.occurred_at, email_event_id = excluded.email_event_id,
                updated_at = now()
          where penguin.email_status_rank(excluded.status) > penguin.email_status_rank(s.status)
             or (penguin.email_status_rank(excluded.status) = penguin.email_status_rank(s.status)
                 and excluded.occurred_at > s.occurred_at)",
    )
    .bind(&job_ids)
    .bind(&providers)
    .bind(&campaigns)
    .bind(&recipient_ids)
    .bind(&message_ids)
    .bind(&accepted)
    .bind(&recipients)
    .execute(pool)
    .await?;
    Ok(())
}
