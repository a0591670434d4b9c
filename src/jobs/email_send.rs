//! `mailgun.send` and `sendgrid.send`: one email (see [`Email`]) through one provider.
//!
//! An attempt: (1) one statement asks whether this job's message was already accepted (a
//! retry after a crash between the provider's answer and our commit) and which recipients
//! are suppressed; (2) suppressed recipients are dropped, and a message left without `to`
//! completes with outcome `suppressed` without a call; (3) the call goes through
//! [`Outbound`] (breaker, rate limit, metrics); (4) the accepted message is recorded at
//! once, before the job's own outcome, as `sent` email events keyed by the job and as the
//! recipients' status. Steps (1) and (4) are grouped with those of concurrent sends (see
//! [`super::send_ledger`]). Neither provider takes an idempotency key, so a crash between (3)
//! and (4) can still send twice; (4) narrows that window to one statement.
//!
//! Must never log the message, its addresses or the provider key.

use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use super::outbound::Outbound;
use super::send_ledger::SendLedger;
use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::providers::email::{Email, bare_address};
use crate::providers::mailgun::Mailgun;
use crate::providers::sendgrid::Sendgrid;
use crate::queue::email::AcceptedSend;

/// Which provider a send kind uses.
#[derive(Debug)]
pub enum EmailProvider {
    Mailgun(Mailgun),
    Sendgrid(Sendgrid),
}

impl EmailProvider {
    fn name(&self) -> &'static str {
        match self {
            EmailProvider::Mailgun(_) => "mailgun",
            EmailProvider::Sendgrid(_) => "sendgrid",
        }
    }
}

/// What a send kind needs.
pub struct SendDeps {
    pub provider: EmailProvider,
    pub http: reqwest::Client,
    pub pool: sqlx::PgPool,
    pub outbound: Arc<Outbound>,
    pub ledger: Arc<SendLedger>,
}

fn policy() -> KindPolicy {
    KindPolicy {
        timeout: std::time::Duration::from_secs(30),
        ..KindPolicy::default()
    }
}

/// `mailgun.send`: one email through Mailgun.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct MailgunSend(Email);

impl Kind for MailgunSend {
    const KIND: &'static str = "mailgun.send";
    type Deps = SendDeps;

    fn policy() -> KindPolicy {
        policy()
    }

    fn validate(&self) -> Result<(), String> {
        self.0.check()?;
        if self.0.ip_pool.is_some() {
            return Err("ip_pool is a SendGrid setting; Mailgun chooses IPs by domain".into());
        }
        Ok(())
    }

    async fn run(self, ctx: &JobContext, deps: &SendDeps) -> Attempt {
        send(self.0, ctx, deps).await
    }
}

/// `sendgrid.send`: one email through SendGrid.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct SendgridSend(Email);

impl Kind for SendgridSend {
    const KIND: &'static str = "sendgrid.send";
    type Deps = SendDeps;

    fn policy() -> KindPolicy {
        policy()
    }

    fn validate(&self) -> Result<(), String> {
        self.0.check()
    }

    async fn run(self, ctx: &JobContext, deps: &SendDeps) -> Attempt {
        send(self.0, ctx, deps).await
    }
}

/// One attempt of a send kind.
async fn send(email: Email, ctx: &JobContext, deps: &SendDeps) -> Attempt {
    let provider_name = deps.provider.name();
    let check = deps
        .ledger
        .check(&deps.pool, ctx.id, email.recipients())
        .await
        .map_err(|e| JobError::Retryable {
            class: crate::error_class::ErrorClass::Database,
            message: format!("database: {e}"),
            status: None,
            not_before: None,
        })?;
    if let Some(message_id) = check.already_sent {
        tracing::info!(
            job.id = ctx.id,
            provider = provider_name,
            "the provider accepted this message before: not sent again"
        );
        return Ok(Some(json!({
            "outcome": "sent", "provider": provider_name, "message_id": message_id,
            "deduplicated": true,
        })));
    }
    let email = email.without(&check.suppressed);
    if email.to.is_empty() {
        return Ok(Some(json!({
            "outcome": "suppressed", "provider": provider_name,
            "suppressed": check.suppressed,
        })));
    }
    let message_id = call_provider(&email, ctx, deps).await?;
    record_accepted(&email, &message_id, ctx, deps).await;
    Ok(Some(json!({
        "outcome": "sent", "provider": provider_name, "message_id": message_id,
        "suppressed": check.suppressed,
    })))
}

/// Sends through the provider; returns its message id.
async fn call_provider(
    email: &Email,
    ctx: &JobContext,
    deps: &SendDeps,
) -> Result<String, JobError> {
    let http = &deps.http;
    // the send must end in time for its acceptance to be recorded after it
    let timeout = ctx.call_timeout();
    let outbound = &deps.outbound;
    Ok(match &deps.provider {
        EmailProvider::Mailgun(m) => {
            outbound
                .call("mailgun", "mailgun.send", m.configured_key(), async |key| {
                    m.send(http, key, email, timeout).await
                })
                .await?
                .message_id
        }
        EmailProvider::Sendgrid(s) => {
            outbound
                .call(
                    "sendgrid",
                    "sendgrid.send",
                    s.configured_key(),
                    async |key| s.send(http, key, email, timeout).await,
                )
                .await?
                .message_id
        }
    })
}

/// Records the accepted message as `sent` events and the recipients' status. A failure is
/// logged, not returned: the provider has the message, and failing the job would send it
/// again.
async fn record_accepted(email: &Email, message_id: &str, ctx: &JobContext, deps: &SendDeps) {
    let mut to: Vec<String> = email
        .to
        .iter()
        .map(|a| bare_address(a).to_ascii_lowercase())
        .collect();
    to.sort();
    to.dedup();
    let provider = deps.provider.name();
    let send = AcceptedSend {
        job_id: ctx.id,
        provider,
        provider_message_id: message_id.to_string(),
        campaign_id: email.campaign_id.clone(),
        recipient_id: email.recipient_id.clone(),
        recipients: to,
        accepted_at: Utc::now(),
    };
    if let Err(e) = deps.ledger.record(&deps.pool, send).await {
        tracing::error!(job.id = ctx.id, provider, error = %e, "message accepted but its status could not be recorded");
    }
}
