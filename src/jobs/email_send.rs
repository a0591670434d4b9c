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
use futures::future::BoxFuture;
use serde_json::json;

use super::outbound::Outbound;
use super::send_ledger::SendLedger;
use super::{Attempt, Handler, JobContext, JobError, KindPolicy};
use crate::providers::email::{Email, bare_address};
use crate::providers::http::configuration_error;
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

    fn kind(&self) -> &'static str {
        match self {
            EmailProvider::Mailgun(_) => "mailgun.send",
            EmailProvider::Sendgrid(_) => "sendgrid.send",
        }
    }
}

/// A send kind.
#[derive(Clone)]
pub struct EmailSend {
    provider: Arc<EmailProvider>,
    http: reqwest::Client,
    pool: Option<sqlx::PgPool>,
    outbound: Arc<Outbound>,
    ledger: Arc<SendLedger>,
}

impl EmailSend {
    pub fn new(
        provider: EmailProvider,
        http: reqwest::Client,
        pool: Option<sqlx::PgPool>,
        outbound: Arc<Outbound>,
        ledger: Arc<SendLedger>,
    ) -> Self {
        Self {
            provider: Arc::new(provider),
            http,
            pool,
            outbound,
            ledger,
        }
    }
}

impl Handler for EmailSend {
    fn kind(&self) -> &'static str {
        self.provider.kind()
    }

    fn default_policy(&self) -> KindPolicy {
        KindPolicy {
            timeout: std::time::Duration::from_secs(30),
            ..KindPolicy::default()
        }
    }

    fn validate(&self, payload: &serde_json::Value) -> Result<(), String> {
        let email = Email::from_payload(payload)?;
        if matches!(*self.provider, EmailProvider::Mailgun(_)) && email.ip_pool.is_some() {
            return Err("ip_pool is a SendGrid setting; Mailgun chooses IPs by domain".into());
        }
        Ok(())
    }

    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxFuture<'static, Attempt> {
        let this = self.clone();
        Box::pin(async move {
            this.validate(&payload).map_err(JobError::bad_payload)?;
            let email = Email::from_payload(&payload).map_err(JobError::bad_payload)?;
            let provider_name = this.provider.name();
            let Some(pool) = &this.pool else {
                return Err(configuration_error("this registry has no database").into());
            };
            let recipients = email.recipients();
            let check = this
                .ledger
                .check(pool, ctx.id, recipients)
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
            let http = this.http.clone();
            // the send must end in time for its acceptance to be recorded below
            let timeout = ctx.call_timeout();
            let message_id = match &*this.provider {
                EmailProvider::Mailgun(m) => {
                    this.outbound
                        .call("mailgun", "mailgun.send", m.configured_key(), async |key| {
                            m.send(&http, key, &email, timeout).await
                        })
                        .await?
                        .message_id
                }
                EmailProvider::Sendgrid(s) => {
                    this.outbound
                        .call(
                            "sendgrid",
                            "sendgrid.send",
                            s.configured_key(),
                            async |key| s.send(&http, key, &email, timeout).await,
                        )
                        .await?
                        .message_id
                }
            };
            let mut to: Vec<String> = email
                .to
                .iter()
                .map(|a| bare_address(a).to_ascii_lowercase())
                .collect();
            to.sort();
            to.dedup();
            let send = AcceptedSend {
                job_id: ctx.id,
                provider: provider_name,
                provider_message_id: message_id.clone(),
                campaign_id: email.campaign_id.clone(),
                recipient_id: email.recipient_id.clone(),
                recipients: to,
                accepted_at: Utc::now(),
            };
            if let Err(e) = this.ledger.record(pool, send).await {
                // the provider has the message: failing the job would send it again
                tracing::error!(job.id = ctx.id, provider = provider_name, error = %e, "message accepted but its status could not be recorded");
            }
            Ok(Some(json!({
                "outcome": "sent", "provider": provider_name, "message_id": message_id,
                "suppressed": check.suppressed,
            })))
        })
    }
}
