//! The message of a send job (`mailgun.send`, `sendgrid.send`): one typed payload for both
//! providers, checked before it is enqueued.
//!
//! Must never log a message's content or addresses (personal data).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most recipients (to + cc + bcc) of one message: both providers' limit is 1,000.
pub const MAX_RECIPIENTS: usize = 1000;

/// Mailgun keeps at most 3 tags per message; SendGrid 10 categories.
pub const MAX_TAGS: usize = 10;

/// One email to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Email {
    /// `"News <news@mg.example.com>"` or a bare address.
    pub from: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Our campaign id: sent as Mailgun `v:campaign-id` / SendGrid `custom_args.campaignId`,
    /// so the webhooks about this message join back to the campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// Our recipient id (`v:recipient-id` / `custom_args.recipientId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<String>,
    /// Mailgun `o:tag` / SendGrid `categories`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Extra MIME headers (Mailgun `h:NAME`, SendGrid `headers`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// A provider-side template instead of subject/html/text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// Variables of the template (SendGrid `dynamic_template_data`, Mailgun `t:variables`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_data: Option<serde_json::Value>,
    /// SendGrid only: the IP pool (`ip_pool_name`); default `[providers.sendgrid] ip_pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_pool: Option<String>,
}

impl Email {
    /// Parses and checks a job payload; the message says which field is wrong.
    pub fn from_payload(payload: &serde_json::Value) -> Result<Self, String> {
        let email: Email = serde_json::from_value(payload.clone()).map_err(|e| e.to_string())?;
        email.check()?;
        Ok(email)
    }

    /// Every address the message goes to (to, cc, bcc), lowercased.
    pub fn recipients(&self) -> Vec<String> {
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|a| bare_address(a).to_ascii_lowercase())
            .collect()
    }

    /// The same message without the recipients in `suppressed` (lowercased bare addresses).
    pub fn without(&self, suppressed: &[String]) -> Email {
        let keep = |list: &Vec<String>| -> Vec<String> {
            list.iter()
                .filter(|a| !suppressed.contains(&bare_address(a).to_ascii_lowercase()))
                .cloned()
                .collect()
        };
        Email {
            to: keep(&self.to),
            cc: keep(&self.cc),
            bcc: keep(&self.bcc),
            ..self.clone()
        }
    }

    pub fn check(&self) -> Result<(), String> {
        check_address("from", &self.from)?;
        if self.to.is_empty() {
            return Err("to: give at least one recipient".into());
        }
        for (field, list) in [("to", &self.to), ("cc", &self.cc), ("bcc", &self.bcc)] {
            for a in list {
                check_address(field, a)?;
            }
        }
        if let Some(r) = &self.reply_to {
            check_address("reply_to", r)?;
        }
        let count = self.to.len() + self.cc.len() + self.bcc.len();
        if count > MAX_RECIPIENTS {
            return Err(format!(
                "{count} recipients: at most {MAX_RECIPIENTS} per message"
            ));
        }
        if self.template_id.is_none() {
            if self.subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
                return Err("subject: required unless template_id is given".into());
            }
            if self.html.is_none() && self.text.is_none() {
                return Err("give html or text (or a template_id)".into());
            }
        } else if self.template_id.as_deref().is_some_and(str::is_empty) {
            return Err("template_id must not be empty".into());
        }
        if self.template_data.as_ref().is_some_and(|d| !d.is_object()) {
            return Err("template_data must be a JSON object".into());
        }
        if self.tags.len() > MAX_TAGS || self.tags.iter().any(|t| t.is_empty() || t.len() > 128) {
            return Err(format!("tags: at most {MAX_TAGS}, each 1-128 characters"));
        }
        for (name, value) in &self.headers {
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !token {
                return Err(format!("headers: {name:?} is not a header name"));
            }
            if value.contains(['\r', '\n']) {
                return Err(format!(
                    "headers: the value of {name} contains a line break"
                ));
            }
        }
        for (field, v) in [
            ("campaign_id", &self.campaign_id),
            ("recipient_id", &self.recipient_id),
            ("subject", &self.subject),
            ("ip_pool", &self.ip_pool),
        ] {
            if v.as_deref().is_some_and(|v| v.contains(['\r', '\n'])) {
                return Err(format!("{field} contains a line break"));
            }
        }
        Ok(())
    }
}

/// `"Name <a@b>"` → `a@b`; a bare address is returned as is.
pub fn bare_address(address: &str) -> &str {
    match (address.rfind('<'), address.rfind('>')) {
        (Some(open), Some(close)) if open < close => address[open + 1..close].trim(),
        _ => address.trim(),
    }
}

fn check_address(field: &str, address: &str) -> Result<(), String> {
    let bare = bare_address(address);
    let ok = bare.len() <= 320
        && !address.contains(['\r', '\n'])
        && bare.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        })
        && !bare.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {address:?} is not an email address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> serde_json::Value {
        json!({"from": "News <news@mg.example.com>", "to": ["ada@example.com"], "subject": "Hi",
               "html": "<p>Hi</p>", "text": "Hi", "campaign_id": "cmp_42", "recipient_id": "rcp_7",
               "tags": ["launch"], "headers": {"X-Campaign": "42"}})
    }

    #[test]
    fn the_issue_example_is_a_valid_email() {
        let e = Email::from_payload(&example()).unwrap();
        assert_eq!(e.recipients(), vec!["ada@example.com"]);
        assert_eq!(bare_address(&e.from), "news@mg.example.com");
    }

    #[test]
    fn bad_payloads_name_the_field() {
        let mut p = example();
        p["to"] = json!([]);
        assert!(Email::from_payload(&p).unwrap_err().starts_with("to:"));
        let mut p = example();
        p["to"] = json!(["not an address"]);
        assert!(Email::from_payload(&p).unwrap_err().starts_with("to:"));
        let mut p = example();
        p.as_object_mut().unwrap().remove("subject");
        assert!(Email::from_payload(&p).unwrap_err().starts_with("subject:"));
        let mut p = example();
        p["headers"] = json!({"X-Evil": "a\r\nBcc: x@y.z"});
        assert!(Email::from_payload(&p).unwrap_err().contains("line break"));
        let mut p = example();
        p["colour"] = json!("red");
        assert!(Email::from_payload(&p).unwrap_err().contains("colour"));
    }

    #[test]
    fn a_template_replaces_subject_and_body() {
        let p = json!({"from": "a@example.com", "to": ["b@example.com"], "template_id": "d-1",
                       "template_data": {"name": "Ada"}});
        Email::from_payload(&p).unwrap();
    }

    #[test]
    fn suppressed_recipients_are_removed_from_every_list() {
        let mut p = example();
        p["to"] = json!(["Ada <ADA@example.com>", "bob@example.com"]);
        p["bcc"] = json!(["ada@example.com"]);
        let e = Email::from_payload(&p).unwrap();
        let kept = e.without(&["ada@example.com".to_string()]);
        assert_eq!(kept.to, vec!["bob@example.com"]);
        assert!(kept.bcc.is_empty());
    }
}
