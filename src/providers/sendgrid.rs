//! SendGrid's v3 Mail Send: `POST {base}/v3/mail/send`, JSON, Bearer key; 202 with the
//! `X-Message-Id` header that its event webhooks carry (as the prefix of `sg_message_id`).
//!
//! Builds the request and classifies the answer; must never touch the queue or log the
//! message, its addresses or the key.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::SecretSource;
use super::email::{Email, bare_address};
use super::http::{CallError, exchange};
use super::mailgun::unexpected_answer;
use crate::config::SendgridConfig;

pub const DEFAULT_BASE_URL: &str = "https://api.sendgrid.com";

/// Longest answer to a send read, in bytes (empty on success; a list of errors).
const MAX_SEND_ANSWER: usize = 64 * 1024;

/// SendGrid as configured under `[providers.sendgrid]`.
#[derive(Debug)]
pub struct Sendgrid {
    base: String,
    ip_pool: Option<String>,
    key: SecretSource,
}

/// A message SendGrid accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// `X-Message-Id`.
    pub message_id: String,
}

fn mailbox(address: &str) -> Value {
    let email = bare_address(address);
    let name = address
        .rfind('<')
        .map(|i| address[..i].trim().trim_matches('"').trim())
        .filter(|n| !n.is_empty());
    match name {
        Some(name) => json!({"email": email, "name": name}),
        None => json!({"email": email}),
    }
}

impl Sendgrid {
    /// The cheapest authenticated call: the key's own scopes.
    pub fn health_request(
        &self,
        client: &reqwest::Client,
        key: &secrecy::SecretString,
    ) -> reqwest::RequestBuilder {
        super::bearer_get(client, format!("{}/v3/scopes", self.base), key)
    }

    /// The key of the configuration (`[providers.sendgrid]`), used when `penguin.api_keys`
    /// holds no active key for the provider.
    pub fn configured_key(&self) -> &SecretSource {
        &self.key
    }

    pub fn new(config: Option<&SendgridConfig>) -> Self {
        Self {
            base: super::base_url(config.and_then(|c| c.base_url.as_ref()), DEFAULT_BASE_URL),
            ip_pool: config.and_then(|c| c.ip_pool.clone()),
            key: SecretSource::new(
                "providers.sendgrid.api_key",
                config.and_then(|c| c.api_key.clone()),
            ),
        }
    }

    /// The JSON body of `email`.
    pub fn body(&self, email: &Email) -> Value {
        let list = |l: &Vec<String>| l.iter().map(|a| mailbox(a)).collect::<Vec<_>>();
        let mut personalization = json!({ "to": list(&email.to) });
        if !email.cc.is_empty() {
            personalization["cc"] = json!(list(&email.cc));
        }
        if !email.bcc.is_empty() {
            personalization["bcc"] = json!(list(&email.bcc));
        }
        if let Some(d) = &email.template_data {
            personalization["dynamic_template_data"] = d.clone();
        }
        let mut body = json!({
            "personalizations": [personalization],
            "from": mailbox(&email.from),
        });
        if let Some(r) = &email.reply_to {
            body["reply_to"] = mailbox(r);
        }
        if let Some(s) = &email.subject {
            body["subject"] = json!(s);
        }
        // text/plain must come first
        let mut content = Vec::new();
        if let Some(t) = &email.text {
            content.push(json!({"type": "text/plain", "value": t}));
        }
        if let Some(h) = &email.html {
            content.push(json!({"type": "text/html", "value": h}));
        }
        if !content.is_empty() {
            body["content"] = json!(content);
        }
        if let Some(t) = &email.template_id {
            body["template_id"] = json!(t);
        }
        let mut args = serde_json::Map::new();
        if let Some(c) = &email.campaign_id {
            args.insert("campaignId".into(), json!(c));
        }
        if let Some(r) = &email.recipient_id {
            args.insert("recipientId".into(), json!(r));
        }
        if !args.is_empty() {
            body["custom_args"] = Value::Object(args);
        }
        if !email.tags.is_empty() {
            body["categories"] = json!(email.tags);
        }
        if !email.headers.is_empty() {
            body["headers"] = json!(email.headers);
        }
        if let Some(pool) = email.ip_pool.as_ref().or(self.ip_pool.as_ref()) {
            body["ip_pool_name"] = json!(pool);
        }
        body
    }

    /// Sends `email`; `timeout` bounds the call.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        key: &SecretString,
        email: &Email,
        timeout: Duration,
    ) -> Result<Accepted, CallError> {
        let request = http
            .post(format!("{}/v3/mail/send", self.base))
            .bearer_auth(key.expose_secret())
            .json(&self.body(email))
            .timeout(timeout);
        let answer = exchange(request, MAX_SEND_ANSWER).await?;
        if answer.status == 202 || answer.status == 200 {
            return answer
                .headers
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(|id| Accepted {
                    message_id: crate::text::clean(id, super::mailgun::MAX_MESSAGE_ID),
                })
                .ok_or_else(|| {
                    unexpected_answer("SendGrid accepted the message without an X-Message-Id")
                });
        }
        Err(answer.error(key, |v| {
            let texts: Vec<String> = v
                .get("errors")?
                .as_array()?
                .iter()
                .filter_map(|e| {
                    let m = e.get("message")?.as_str()?;
                    Some(match e.get("field").and_then(|f| f.as_str()) {
                        Some(f) => format!("{f}: {m}"),
                        None => m.to_string(),
                    })
                })
                .collect();
            (!texts.is_empty()).then(|| texts.join("; "))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_personalizations_custom_args_and_the_pool() {
        let sg = Sendgrid::new(Some(&SendgridConfig {
            ip_pool: Some("marketing".into()),
            ..Default::default()
        }));
        let email = Email::from_payload(&json!({
            "from": "News <news@example.com>", "to": ["ada@example.com"], "subject": "Hi",
            "html": "<p>Hi</p>", "text": "Hi", "campaign_id": "cmp_42", "recipient_id": "rcp_7",
            "tags": ["launch"]}))
        .unwrap();
        assert_eq!(
            sg.body(&email),
            json!({
                "personalizations": [{"to": [{"email": "ada@example.com"}]}],
                "from": {"email": "news@example.com", "name": "News"},
                "subject": "Hi",
                "content": [{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}],
                "custom_args": {"campaignId": "cmp_42", "recipientId": "rcp_7"},
                "categories": ["launch"],
                "ip_pool_name": "marketing"
            })
        );
    }

    #[test]
    fn templates_carry_their_data_in_the_personalization() {
        let sg = Sendgrid::new(None);
        let email = Email::from_payload(&json!({
            "from": "news@example.com", "to": ["ada@example.com"], "template_id": "d-123",
            "template_data": {"first_name": "Ada"}}))
        .unwrap();
        let body = sg.body(&email);
        assert_eq!(body["template_id"], "d-123");
        assert_eq!(
            body["personalizations"][0]["dynamic_template_data"],
            json!({"first_name": "Ada"})
        );
        assert!(body.get("content").is_none());
    }
}
