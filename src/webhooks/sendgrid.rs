//! SendGrid Event Webhook: the signed-webhook headers and the array of events.
//!
//! SendGrid signs `{timestamp}{raw body}` with ECDSA P-256 / SHA-256. The signature travels
//! base64-encoded DER in `X-Twilio-Email-Event-Webhook-Signature`, the timestamp (unix
//! seconds, as text) in `X-Twilio-Email-Event-Webhook-Timestamp`, and the verification key is
//! the base64 DER SubjectPublicKeyInfo shown in SendGrid's settings. The key is parsed once,
//! at config load, into a [`PublicKey`].
//!
//! The body is a JSON array of events; our `custom_args` come back as top-level keys of each
//! event, and `sg_message_id` is the send's `X-Message-Id` plus a `.filter...` suffix.
//!
//! Pure functions: no I/O, no clock.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::DigestVerifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{CampaignRef, InboundEvent, Rejection, check_window, parse_json, text};

/// The header carrying the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
/// The header carrying the signed unix timestamp.
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// A SendGrid Event Webhook verification key (public: nothing here is secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse the key as SendGrid shows it: base64 of a DER SubjectPublicKeyInfo for P-256.
    /// Surrounding whitespace is ignored. The error says what is wrong, never echoing the input.
    pub fn parse(b64_der_spki: &str) -> Result<Self, String> {
        let der = STANDARD
            .decode(b64_der_spki.trim())
            .map_err(|e| format!("SendGrid public key is not base64: {e}"))?;
        let key = VerifyingKey::from_public_key_der(&der)
            .map_err(|e| format!("SendGrid public key is not a P-256 DER SPKI: {e}"))?;
        Ok(Self(key))
    }
}

/// Verify a SendGrid Event Webhook request: `body` is the raw body, `signature_b64` and
/// `timestamp` the two header values.
///
/// Either header absent → [`Rejection::MissingSignature`]; a signature that is not base64
/// DER, or does not verify over `{timestamp}{body}` → [`Rejection::BadSignature`]; a signed
/// timestamp that is not a unix time → [`Rejection::Malformed`]; signed more than 300 s from
/// `now_unix` → [`Rejection::Stale`].
pub fn verify(
    body: &[u8],
    signature_b64: Option<&str>,
    timestamp: Option<&str>,
    key: &PublicKey,
    now_unix: i64,
) -> Result<(), Rejection> {
    let signature_b64 = signature_b64.ok_or(Rejection::MissingSignature)?;
    let timestamp = timestamp.ok_or(Rejection::MissingSignature)?;
    let der = STANDARD
        .decode(signature_b64.trim())
        .map_err(|_| Rejection::BadSignature)?;
    let signature = DerSignature::from_bytes(&der).map_err(|_| Rejection::BadSignature)?;
    let digest = Sha256::new()
        .chain_update(timestamp.as_bytes())
        .chain_update(body);
    key.0
        .verify_digest(digest, &signature)
        .map_err(|_| Rejection::BadSignature)?;
    let signed_at = timestamp
        .trim()
        .parse::<i64>()
        .map_err(|_| Rejection::Malformed(format!("{TIMESTAMP_HEADER} is not a unix timestamp")))?;
    check_window(signed_at, now_unix)
}

/// The events in a verified SendGrid body (a JSON array), in order: id = `sg_event_id`,
/// type = `event`, payload = the element. An element without a string `sg_event_id`
/// makes the whole body [`Rejection::Malformed`].
pub fn events(body: &[u8]) -> Result<Vec<InboundEvent>, Rejection> {
    let Value::Array(items) = parse_json(body)? else {
        return Err(Rejection::Malformed(
            "SendGrid body is not a JSON array".into(),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, payload)| {
            let Some(event_id) = payload.get("sg_event_id").and_then(Value::as_str) else {
                return Err(Rejection::Malformed(format!(
                    "SendGrid event {index} has no string sg_event_id"
                )));
            };
            let event_type = text(payload.get("event"));
            Ok(InboundEvent::new(event_id.to_owned(), event_type, payload))
        })
        .collect()
}

/// Our campaign and recipient ids from one SendGrid event: the top-level custom args
/// `campaign_id` / `recipient_id`, or `campaignId` / `recipientId` as `sendgrid.send` sets them.
pub fn campaign_ref(event: &Value) -> CampaignRef {
    let arg = |snake: &str, camel: &str| text(event.get(snake)).or_else(|| text(event.get(camel)));
    CampaignRef {
        campaign_id: arg("campaign_id", "campaignId"),
        recipient_id: arg("recipient_id", "recipientId"),
    }
}

/// The `X-Message-Id` SendGrid returned at send time, recovered from an event's
/// `sg_message_id` by dropping its `.filter...` suffix.
pub fn x_message_id(event: &Value) -> Option<&str> {
    let id = event.get("sg_message_id")?.as_str()?;
    Some(id.split_once(".filter").map_or(id, |(head, _)| head))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::SigningKey;
    use p256::ecdsa::signature::Signer;
    use serde_json::json;

    use super::*;
    use crate::webhooks::vectors::{flip_byte, flip_char, official, signatures};

    #[derive(Clone)]
    struct Vector {
        key: String,
        signature: String,
        timestamp: String,
        body: String,
    }

    impl Vector {
        fn at(&self) -> i64 {
            self.timestamp.parse().unwrap()
        }

        fn verify_at(&self, now: i64) -> Result<(), Rejection> {
            let key = PublicKey::parse(&self.key).unwrap();
            verify(
                self.body.as_bytes(),
                Some(&self.signature),
                Some(&self.timestamp),
                &key,
                now,
            )
        }
    }

    fn field(v: &Value, name: &str) -> String {
        v[name].as_str().unwrap().to_owned()
    }

    fn ours() -> Vector {
        let v = &signatures()["sendgrid"];
        Vector {
            key: field(v, "public_key"),
            signature: field(v, "signature"),
            timestamp: field(v, "timestamp"),
            body: field(v, "body"),
        }
    }

    fn official_vector(name: &str) -> Vector {
        let v = &official()[name];
        Vector {
            key: field(v, "public_key"),
            signature: field(v, "signature"),
            timestamp: field(v, "timestamp"),
            body: field(v, "payload"),
        }
    }

    fn all_vectors() -> Vec<(&'static str, Vector)> {
        vec![
            ("signatures.json", ours()),
            ("sendgrid_nodejs_go", official_vector("sendgrid_nodejs_go")),
            ("sendgrid_python", official_vector("sendgrid_python")),
        ]
    }

    /// A key of our own, so tests can sign what no vector covers.
    fn test_signer() -> (SigningKey, PublicKey) {
        let signing = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        // DER SubjectPublicKeyInfo = fixed P-256 header + the uncompressed SEC1 point.
        let mut spki = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
        spki.extend_from_slice(signing.verifying_key().to_encoded_point(false).as_bytes());
        let key = PublicKey::parse(&STANDARD.encode(spki)).unwrap();
        (signing, key)
    }

    fn sign(signing: &SigningKey, timestamp: &str, body: &str) -> String {
        let signature: p256::ecdsa::Signature =
            signing.sign(format!("{timestamp}{body}").as_bytes());
        STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn accepts_every_vector_at_its_own_time() {
        for (name, v) in all_vectors() {
            assert_eq!(v.verify_at(v.at()), Ok(()), "{name}");
        }
    }

    #[test]
    fn accepts_at_300_seconds_either_way() {
        for (name, v) in all_vectors() {
            assert_eq!(v.verify_at(v.at() + 300), Ok(()), "{name}");
            assert_eq!(v.verify_at(v.at() - 300), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_every_vector_as_stale_at_301_seconds_after_or_before() {
        for (name, v) in all_vectors() {
            assert_eq!(v.verify_at(v.at() + 301), Err(Rejection::Stale), "{name}");
            assert_eq!(v.verify_at(v.at() - 301), Err(Rejection::Stale), "{name}");
        }
    }

    #[test]
    fn rejects_every_vector_with_one_body_byte_changed() {
        for (name, v) in all_vectors() {
            for i in [0, v.body.len() / 2, v.body.len() - 1] {
                let changed = Vector {
                    body: String::from_utf8(flip_byte(v.body.as_bytes(), i)).unwrap(),
                    ..v.clone()
                };
                assert_eq!(
                    changed.verify_at(v.at()),
                    Err(Rejection::BadSignature),
                    "{name} byte {i}"
                );
            }
        }
    }

    #[test]
    fn rejects_every_vector_with_one_signature_char_changed() {
        for (name, v) in all_vectors() {
            // Past the DER header, inside r, inside s.
            for i in [12, 30, 60] {
                let changed = Vector {
                    signature: flip_char(&v.signature, i),
                    ..v.clone()
                };
                assert_eq!(
                    changed.verify_at(v.at()),
                    Err(Rejection::BadSignature),
                    "{name} char {i}"
                );
            }
        }
    }

    #[test]
    fn rejects_every_vector_with_the_timestamp_changed() {
        for (name, v) in all_vectors() {
            let changed = Vector {
                timestamp: (v.at() + 1).to_string(),
                ..v.clone()
            };
            assert_eq!(
                changed.verify_at(v.at()),
                Err(Rejection::BadSignature),
                "{name}"
            );
        }
    }

    #[test]
    fn rejects_each_must_fail_case_of_the_official_node_and_go_suite() {
        let official = official();
        let must_fail = &official["sendgrid_nodejs_go"]["must_fail"];
        let good = official_vector("sendgrid_nodejs_go");
        for part in ["timestamp", "signature", "payload", "public_key"] {
            let replacement = field(must_fail, part);
            let mut v = good.clone();
            match part {
                "timestamp" => v.timestamp = replacement,
                "signature" => v.signature = replacement,
                "payload" => v.body = replacement,
                _ => v.key = replacement,
            }
            assert_eq!(
                v.verify_at(good.at()),
                Err(Rejection::BadSignature),
                "{part}"
            );
        }
    }

    #[test]
    fn rejects_the_python_vector_without_its_trailing_crlf() {
        let mut v = official_vector("sendgrid_python");
        v.body = v.body.trim_end().to_owned();
        assert_eq!(v.verify_at(v.at()), Err(Rejection::BadSignature));
    }

    #[test]
    fn missing_signature_or_timestamp_is_missing_signature() {
        let v = ours();
        let key = PublicKey::parse(&v.key).unwrap();
        let body = v.body.as_bytes();
        let verdicts = [
            verify(body, None, Some(&v.timestamp), &key, v.at()),
            verify(body, Some(&v.signature), None, &key, v.at()),
            verify(body, None, None, &key, v.at()),
        ];
        for verdict in verdicts {
            assert_eq!(verdict, Err(Rejection::MissingSignature));
        }
    }

    #[test]
    fn a_signed_timestamp_that_is_not_a_number_is_malformed() {
        let (signing, key) = test_signer();
        let signature = sign(&signing, "soon", "[]");
        let verdict = verify(b"[]", Some(&signature), Some("soon"), &key, 0);
        assert!(
            matches!(verdict, Err(Rejection::Malformed(_))),
            "{verdict:?}"
        );
    }

    #[test]
    fn accepts_what_our_own_key_signed_and_nothing_signed_by_another() {
        let (signing, key) = test_signer();
        let signature = sign(&signing, "1732406400", "[{}]");
        let verdict = verify(
            b"[{}]",
            Some(&signature),
            Some("1732406400"),
            &key,
            1732406400,
        );
        assert_eq!(verdict, Ok(()));
        let other = PublicKey::parse(&ours().key).unwrap();
        let verdict = verify(
            b"[{}]",
            Some(&signature),
            Some("1732406400"),
            &other,
            1732406400,
        );
        assert_eq!(verdict, Err(Rejection::BadSignature));
    }

    #[test]
    fn public_key_parse_rejects_garbage_and_accepts_surrounding_whitespace() {
        let v = ours();
        for bad in [
            "",
            "not base64!",
            "AAAA",
            &v.signature,
            &v.key[..v.key.len() - 8],
        ] {
            assert!(PublicKey::parse(bad).is_err(), "{bad}");
        }
        assert!(PublicKey::parse(&format!("  {}\n", v.key)).is_ok());
    }

    #[test]
    fn garbage_signatures_timestamps_and_bodies_are_rejected_without_panicking() {
        let v = ours();
        let key = PublicKey::parse(&v.key).unwrap();
        let huge = "A".repeat(1 << 20);
        let signatures = [
            "",
            "=",
            "!!!!",
            "AAAA",
            "MEUCIQ",
            "MAYCAQACAQA=",
            &v.key,
            &huge,
        ];
        let timestamps = ["", "-", "99999999999999999999", &huge, &v.timestamp];
        let bodies: [&[u8]; 3] = [b"", &[0xff, 0x00, 0xfe], v.body.as_bytes()];
        for signature in signatures {
            for timestamp in timestamps {
                for body in bodies {
                    let verdict = verify(body, Some(signature), Some(timestamp), &key, v.at());
                    assert!(verdict.is_err(), "{signature:.20} {timestamp:.20}");
                }
            }
        }
    }

    #[test]
    fn events_yields_one_event_per_element_with_id_and_type() {
        let events = events(ours().body.as_bytes()).unwrap();
        let ids: Vec<_> = events.iter().map(|e| e.event_id.as_str()).collect();
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_deref()).collect();
        assert_eq!(ids, ["sg_evt_1", "sg_evt_2"]);
        assert_eq!(types, [Some("delivered"), Some("bounce")]);
        assert_eq!(events[1].payload["reason"], "550 5.1.1 user unknown");
    }

    #[test]
    fn events_reads_the_official_python_payload_with_its_trailing_crlf() {
        let events = events(official_vector("sendgrid_python").body.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].event_id,
            "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA"
        );
        assert_eq!(events[0].event_type.as_deref(), Some("dropped"));
    }

    #[test]
    fn events_of_an_empty_array_is_empty() {
        assert_eq!(events(b"[]"), Ok(vec![]));
    }

    #[test]
    fn events_rejects_non_arrays_and_elements_without_sg_event_id_as_malformed() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"\xff",
            b"{\"sg_event_id\":\"a\"}",
            b"[1]",
            b"[{\"sg_event_id\":\"a\"},{\"event\":\"open\"}]",
            b"[{\"sg_event_id\":7}]",
            b"[{\"sg_event_id\":\"a\"}",
        ];
        for body in bodies {
            assert!(
                matches!(events(body), Err(Rejection::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn campaign_ref_reads_snake_case_custom_args_from_the_vector() {
        let events = events(ours().body.as_bytes()).unwrap();
        assert_eq!(
            campaign_ref(&events[1].payload),
            CampaignRef {
                campaign_id: Some("cmp_42".into()),
                recipient_id: Some("rcp_8".into()),
            }
        );
    }

    #[test]
    fn campaign_ref_reads_camel_case_custom_args_and_tolerates_their_absence() {
        let camel = json!({"campaignId": "cmp_1", "recipientId": 99});
        assert_eq!(
            campaign_ref(&camel),
            CampaignRef {
                campaign_id: Some("cmp_1".into()),
                recipient_id: Some("99".into()),
            }
        );
        assert_eq!(
            campaign_ref(&json!({"event": "open"})),
            CampaignRef::default()
        );
        assert_eq!(campaign_ref(&json!([1, 2])), CampaignRef::default());
    }

    #[test]
    fn x_message_id_drops_the_filter_suffix() {
        let events = events(ours().body.as_bytes()).unwrap();
        assert_eq!(x_message_id(&events[0].payload), Some("sg_msg_1"));
        let python = json!({"sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"});
        assert_eq!(x_message_id(&python), Some("LRzXl_NHStOGhQ4kofSm_A"));
        assert_eq!(
            x_message_id(&json!({"sg_message_id": "plain"})),
            Some("plain")
        );
        assert_eq!(x_message_id(&json!({})), None);
    }
}
