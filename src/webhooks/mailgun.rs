//! Mailgun webhooks: the `signature` block inside the JSON body, and the `event-data`.
//!
//! Mailgun signs `{timestamp}{token}` with HMAC-SHA256 under the webhook signing key and sends
//! `{"signature": {"timestamp", "token", "signature": <lowercase hex>}, "event-data": {...}}`.
//! The signature covers the timestamp and token only, not `event-data`: what stops a replay
//! is the 300 s window plus refusing a token seen before; the caller keeps that memory (the
//! shim records it in PostgreSQL with the delivery: [`verify`] returns the [`MailgunToken`]).
//!
//! Mailgun's send answer wraps the message id in angle brackets; webhook message ids are bare:
//! [`strip_message_id`] before matching.
//!
//! Pure functions: no I/O, no clock.

use serde_json::Value;

use super::{
    CampaignRef, InboundEvent, REPLAY_WINDOW_SECS, Rejection, check_window, ct_eq, hmac_sha256,
    parse_json, text,
};

/// The token of a verified request, to be refused if seen again within the window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailgunToken {
    /// Mailgun's random token (50 characters in practice).
    pub token: String,
    /// The signed unix timestamp.
    pub timestamp: i64,
}

impl MailgunToken {
    /// The unix time after which a request carrying this token is refused as stale anyway, so
    /// the caller may forget the token.
    pub fn remember_until(&self) -> i64 {
        self.timestamp.saturating_add(REPLAY_WINDOW_SECS)
    }
}

fn signed_field<'a>(signature: &'a Value, name: &str) -> Result<&'a str, Rejection> {
    match signature.get(name) {
        Some(Value::String(value)) => Ok(value),
        Some(_) => Err(Rejection::Malformed(format!(
            "Mailgun signature.{name} is not a string"
        ))),
        None if name == "signature" => Err(Rejection::MissingSignature),
        None => Err(Rejection::Malformed(format!(
            "Mailgun signature.{name} is missing"
        ))),
    }
}

/// Verify a Mailgun webhook from its raw JSON body with the webhook signing key.
///
/// Body not JSON → [`Rejection::Malformed`]; no `signature` block or no `signature.signature`
/// → [`Rejection::MissingSignature`]; `timestamp` or `token` absent, or a field that is not a
/// string → [`Rejection::Malformed`]; HMAC mismatch (or an empty key) →
/// [`Rejection::BadSignature`]; signed more than 300 s from `now_unix` → [`Rejection::Stale`].
/// On success the caller must still refuse the returned token if it saw it within the window
/// ([`Rejection::Replayed`]).
pub fn verify(body: &[u8], signing_key: &[u8], now_unix: i64) -> Result<MailgunToken, Rejection> {
    let body = parse_json(body)?;
    let signature = body.get("signature").ok_or(Rejection::MissingSignature)?;
    if !signature.is_object() {
        return Err(Rejection::Malformed(
            "Mailgun signature is not an object".into(),
        ));
    }
    let claimed = signed_field(signature, "signature")?;
    let timestamp = signed_field(signature, "timestamp")?;
    let token = signed_field(signature, "token")?;
    if signing_key.is_empty() {
        return Err(Rejection::BadSignature);
    }
    let expected = hex::encode(hmac_sha256(
        signing_key,
        &[timestamp.as_bytes(), token.as_bytes()],
    ));
    if !ct_eq(expected.as_bytes(), claimed.as_bytes()) {
        return Err(Rejection::BadSignature);
    }
    let signed_at = timestamp.parse::<i64>().map_err(|_| {
        Rejection::Malformed("Mailgun signature.timestamp is not a unix timestamp".into())
    })?;
    check_window(signed_at, now_unix)?;
    Ok(MailgunToken {
        token: token.to_owned(),
        timestamp: signed_at,
    })
}

/// The single event in a verified Mailgun body: id = `event-data.id`, type =
/// `event-data.event`, payload = the `event-data` object (the signature block is dropped).
pub fn events(body: &[u8]) -> Result<Vec<InboundEvent>, Rejection> {
    let Value::Object(mut body) = parse_json(body)? else {
        return Err(Rejection::Malformed(
            "Mailgun body is not a JSON object".into(),
        ));
    };
    let Some(payload) = body.remove("event-data").filter(Value::is_object) else {
        return Err(Rejection::Malformed(
            "Mailgun body has no event-data object".into(),
        ));
    };
    let Some(event_id) = payload.get("id").and_then(Value::as_str) else {
        return Err(Rejection::Malformed(
            "Mailgun event-data has no string id".into(),
        ));
    };
    let event_type = text(payload.get("event"));
    Ok(vec![InboundEvent::new(
        event_id.to_owned(),
        event_type,
        payload,
    )])
}

/// Our campaign and recipient ids from an `event-data` object's `user-variables`
/// (`campaign-id`, `recipient-id`).
pub fn user_variables(event_data: &Value) -> CampaignRef {
    let vars = event_data.get("user-variables");
    let var = |name: &str| text(vars.and_then(|v| v.get(name)));
    CampaignRef {
        campaign_id: var("campaign-id"),
        recipient_id: var("recipient-id"),
    }
}

/// The message id as webhooks carry it, bare: `"<abc@x>"` → `"abc@x"`; bare ids are unchanged.
pub fn strip_message_id(id: &str) -> &str {
    let id = id.trim();
    let id = id.strip_prefix('<').unwrap_or(id);
    id.strip_suffix('>').unwrap_or(id)
}

/// The bare message id of an `event-data` object (`message.headers.message-id`).
pub fn message_id(event_data: &Value) -> Option<&str> {
    let id = event_data
        .get("message")?
        .get("headers")?
        .get("message-id")?
        .as_str()?;
    Some(strip_message_id(id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::webhooks::vectors::{flip_byte, signatures};

    const AT: i64 = 1732406400;

    fn key() -> String {
        signatures()["mailgun"]["signing_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn body() -> String {
        signatures()["mailgun"]["body"].as_str().unwrap().to_owned()
    }

    /// The vector's body with one JSON value replaced.
    fn with(pointer: &str, value: Value) -> Vec<u8> {
        let mut body: Value = serde_json::from_str(&body()).unwrap();
        *body.pointer_mut(pointer).unwrap() = value;
        serde_json::to_vec(&body).unwrap()
    }

    /// The vector's body with one key removed from the object at `parent`.
    fn without(parent: &str, key: &str) -> Vec<u8> {
        let mut body: Value = serde_json::from_str(&body()).unwrap();
        body.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .remove(key);
        serde_json::to_vec(&body).unwrap()
    }

    #[test]
    fn accepts_the_vector_at_its_own_time_and_returns_its_token() {
        let token = verify(body().as_bytes(), key().as_bytes(), AT).unwrap();
        assert_eq!(
            token,
            MailgunToken {
                token: "f3c1e0a8b1d24e6f9a7c5b3d2e1f0a9b8c7d6e5f4a3b2c1d0e".into(),
                timestamp: AT,
            }
        );
        assert_eq!(token.remember_until(), AT + 300);
    }

    #[test]
    fn accepts_at_300_seconds_either_way() {
        for now in [AT - 300, AT + 300] {
            assert!(verify(body().as_bytes(), key().as_bytes(), now).is_ok());
        }
    }

    #[test]
    fn rejects_as_stale_at_301_seconds_after_or_before() {
        for now in [AT - 301, AT + 301] {
            let verdict = verify(body().as_bytes(), key().as_bytes(), now);
            assert_eq!(verdict, Err(Rejection::Stale), "now = {now}");
        }
    }

    #[test]
    fn rejects_any_one_byte_changed_in_the_signed_timestamp_or_token() {
        let body = body();
        let signed = [
            "1732406400",
            "f3c1e0a8b1d24e6f9a7c5b3d2e1f0a9b8c7d6e5f4a3b2c1d0e",
        ];
        for field in signed {
            let start = body.find(field).unwrap();
            for i in start..start + field.len() {
                let changed = flip_byte(body.as_bytes(), i);
                let verdict = verify(&changed, key().as_bytes(), AT);
                assert_eq!(verdict, Err(Rejection::BadSignature), "byte {i}");
            }
        }
    }

    #[test]
    fn rejects_the_signature_with_any_one_char_changed() {
        let body = body();
        let signature = "85a79bcc11b5abc0cdfcbf6cb961ce52bad7bc090b552587e20e3295737cba7d";
        let start = body.find(signature).unwrap();
        for i in start..start + signature.len() {
            let changed = flip_byte(body.as_bytes(), i);
            let verdict = verify(&changed, key().as_bytes(), AT);
            assert_eq!(verdict, Err(Rejection::BadSignature), "char {i}");
        }
    }

    #[test]
    fn event_data_is_not_covered_by_mailgun_signature() {
        // Mailgun's scheme signs timestamp + token only; the token memory is the replay defence.
        let changed = with("/event-data/event", json!("failed"));
        assert!(verify(&changed, key().as_bytes(), AT).is_ok());
    }

    #[test]
    fn rejects_a_wrong_or_empty_signing_key() {
        for key in [&b"key-penguin-mailgun-signing-0002"[..], b""] {
            let verdict = verify(body().as_bytes(), key, AT);
            assert_eq!(verdict, Err(Rejection::BadSignature));
        }
    }

    #[test]
    fn rejects_an_uppercase_hex_signature() {
        let signature = "85A79BCC11B5ABC0CDFCBF6CB961CE52BAD7BC090B552587E20E3295737CBA7D";
        let changed = with("/signature/signature", json!(signature));
        let verdict = verify(&changed, key().as_bytes(), AT);
        assert_eq!(verdict, Err(Rejection::BadSignature));
    }

    #[test]
    fn missing_signature_block_or_value_is_missing_signature() {
        for body in [without("", "signature"), without("/signature", "signature")] {
            let verdict = verify(&body, key().as_bytes(), AT);
            assert_eq!(verdict, Err(Rejection::MissingSignature));
        }
    }

    #[test]
    fn missing_or_mistyped_signed_fields_are_malformed() {
        let bodies = [
            without("/signature", "timestamp"),
            without("/signature", "token"),
            with("/signature/timestamp", json!(AT)),
            with("/signature/token", json!(null)),
            with("/signature/signature", json!(["85a7"])),
            with("/signature", json!("85a7")),
        ];
        for body in bodies {
            let verdict = verify(&body, key().as_bytes(), AT);
            assert!(
                matches!(verdict, Err(Rejection::Malformed(_))),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_signed_timestamp_that_is_not_a_number_is_malformed() {
        let key = key();
        let signature = hex::encode(hmac_sha256(key.as_bytes(), &[b"now", b"tok"]));
        let body =
            json!({"signature": {"timestamp": "now", "token": "tok", "signature": signature}});
        let verdict = verify(body.to_string().as_bytes(), key.as_bytes(), AT);
        assert!(
            matches!(verdict, Err(Rejection::Malformed(_))),
            "{verdict:?}"
        );
    }

    #[test]
    fn garbage_bodies_are_rejected_without_panicking() {
        let huge = format!(
            r#"{{"signature":{{"timestamp":"1","token":"{}","signature":"{}"}}}}"#,
            "t".repeat(1 << 20),
            "0".repeat(1 << 16)
        );
        let deep = "[".repeat(100_000);
        let bodies: [&[u8]; 9] = [
            b"",
            b"\xff\xfe\x00",
            b"null",
            b"[]",
            b"{}",
            b"{\"signature\":null}",
            b"{\"signature\":{}}",
            huge.as_bytes(),
            deep.as_bytes(),
        ];
        for body in bodies {
            assert!(verify(body, key().as_bytes(), AT).is_err());
            assert!(events(body).is_err());
        }
    }

    #[test]
    fn events_yields_the_event_data_with_its_id_and_type() {
        let events = events(body().as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, "mg_evt_1");
        assert_eq!(events[0].event_type.as_deref(), Some("delivered"));
        assert_eq!(events[0].payload["recipient"], "ada@example.com");
        assert!(events[0].payload.get("signature").is_none());
    }

    #[test]
    fn events_rejects_a_body_without_event_data_or_its_id_as_malformed() {
        let bodies = [
            without("", "event-data"),
            without("/event-data", "id"),
            with("/event-data/id", json!(1)),
            with("/event-data", json!("mg_evt_1")),
        ];
        for body in bodies {
            assert!(matches!(events(&body), Err(Rejection::Malformed(_))));
        }
    }

    #[test]
    fn user_variables_reads_campaign_and_recipient_ids() {
        let events = events(body().as_bytes()).unwrap();
        assert_eq!(
            user_variables(&events[0].payload),
            CampaignRef {
                campaign_id: Some("cmp_42".into()),
                recipient_id: Some("rcp_7".into()),
            }
        );
        assert_eq!(user_variables(&json!({})), CampaignRef::default());
        assert_eq!(
            user_variables(&json!({"user-variables": "x"})),
            CampaignRef::default()
        );
    }

    #[test]
    fn strip_message_id_removes_the_angle_brackets_of_the_send_answer() {
        assert_eq!(strip_message_id("<abc@x>"), "abc@x");
        assert_eq!(strip_message_id(" <abc@x>\n"), "abc@x");
        assert_eq!(strip_message_id("abc@x"), "abc@x");
        assert_eq!(strip_message_id(""), "");
        assert_eq!(strip_message_id("<"), "");
    }

    #[test]
    fn message_id_reads_the_bare_id_from_event_data() {
        let events = events(body().as_bytes()).unwrap();
        assert_eq!(
            message_id(&events[0].payload),
            Some("20241124.1@mg.example.com")
        );
        assert_eq!(message_id(&json!({"message": {}})), None);
    }
}
