//! Standard Webhooks (<https://www.standardwebhooks.com>): signing the webhooks we deliver to
//! our customers, and verifying such signatures (for our tests and for customers' examples).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`, HMAC-SHA256, base64; the
//! key is the base64-decoded part after `whsec_` (unlike Stripe, which uses the whole
//! `whsec_...` string as bytes). The `webhook-signature` header holds one or more
//! space-separated `v1,<base64>` entries: one per active secret while a secret rotates.
//! The secret is parsed once, at config load, into a [`Secret`].
//!
//! Pure functions: no I/O, no clock (the delivery job passes the timestamp it sends).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use subtle::Choice;

use super::{Rejection, check_window, ct_eq, hmac_sha256};

/// The header carrying the message id (stable across retries of one delivery).
pub const ID_HEADER: &str = "webhook-id";
/// The header carrying the signed unix timestamp.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header carrying the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

const PREFIX: &str = "whsec_";
const VERSION: &str = "v1";

/// An endpoint's signing secret, decoded. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parse `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    /// The error says what is wrong, never echoing the input.
    pub fn parse(whsec: &str) -> Result<Self, String> {
        let whsec = whsec.trim();
        let b64 = whsec.strip_prefix(PREFIX).unwrap_or(whsec);
        let key = STANDARD
            .decode(b64)
            .map_err(|e| format!("webhook secret is not whsec_<base64>: {e}"))?;
        if key.is_empty() {
            return Err("webhook secret is empty".into());
        }
        Ok(Self(key))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn signature(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac_sha256(
        &secret.0,
        &[msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    STANDARD.encode(mac)
}

/// The `webhook-signature` header value for one delivery: `v1,<base64>`.
/// `timestamp` is the unix time sent in `webhook-timestamp`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("{VERSION},{}", signature(secret, msg_id, timestamp, body))
}

/// Verify a Standard Webhooks request from its three headers and raw body.
///
/// Any header absent, or a signature header without a `v1,` entry →
/// [`Rejection::MissingSignature`]; a timestamp that is not a unix time →
/// [`Rejection::Malformed`]; no `v1` entry matching → [`Rejection::BadSignature`]; signed more
/// than 300 s from `now_unix` → [`Rejection::Stale`].
pub fn verify(
    body: &[u8],
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signature_header: Option<&str>,
    secret: &Secret,
    now_unix: i64,
) -> Result<(), Rejection> {
    let (Some(msg_id), Some(timestamp), Some(signature_header)) =
        (msg_id, timestamp, signature_header)
    else {
        return Err(Rejection::MissingSignature);
    };
    let timestamp = timestamp
        .trim()
        .parse::<i64>()
        .map_err(|_| Rejection::Malformed(format!("{TIMESTAMP_HEADER} is not a unix timestamp")))?;
    let candidates: Vec<&str> = signature_header
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == VERSION)
        .map(|(_, signature)| signature)
        .collect();
    if candidates.is_empty() {
        return Err(Rejection::MissingSignature);
    }
    let expected = signature(secret, msg_id, timestamp, body);
    let matched = candidates.iter().fold(Choice::from(0), |any, candidate| {
        any | Choice::from(u8::from(ct_eq(expected.as_bytes(), candidate.as_bytes())))
    });
    if !bool::from(matched) {
        return Err(Rejection::BadSignature);
    }
    check_window(timestamp, now_unix)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::webhooks::vectors::{flip_byte, flip_char, official, signatures};

    #[derive(Clone)]
    struct Vector {
        secret: String,
        id: String,
        timestamp: String,
        body: String,
        signature: String,
    }

    impl Vector {
        fn from(v: &Value, body_key: &str) -> Self {
            let field = |name: &str| v[name].as_str().unwrap().to_owned();
            Self {
                secret: field("secret"),
                id: field("webhook-id"),
                timestamp: field("webhook-timestamp"),
                body: field(body_key),
                signature: field("webhook-signature"),
            }
        }

        fn at(&self) -> i64 {
            self.timestamp.parse().unwrap()
        }

        fn verify_at(&self, now: i64) -> Result<(), Rejection> {
            verify(
                self.body.as_bytes(),
                Some(&self.id),
                Some(&self.timestamp),
                Some(&self.signature),
                &Secret::parse(&self.secret).unwrap(),
                now,
            )
        }
    }

    fn all_vectors() -> Vec<(&'static str, Vector)> {
        vec![
            (
                "signatures.json",
                Vector::from(&signatures()["standard_webhooks"], "body"),
            ),
            (
                "official.json",
                Vector::from(&official()["standard_webhooks"], "payload"),
            ),
        ]
    }

    #[test]
    fn sign_reproduces_every_vector() {
        for (name, v) in all_vectors() {
            let secret = Secret::parse(&v.secret).unwrap();
            let header = sign(&secret, &v.id, v.at(), v.body.as_bytes());
            assert_eq!(header, v.signature, "{name}");
        }
    }

    #[test]
    fn accepts_every_vector_at_its_own_time_and_300_seconds_either_way() {
        for (name, v) in all_vectors() {
            for now in [v.at(), v.at() - 300, v.at() + 300] {
                assert_eq!(v.verify_at(now), Ok(()), "{name} at {now}");
            }
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
    fn rejects_every_vector_with_any_one_body_byte_changed() {
        for (name, v) in all_vectors() {
            for i in 0..v.body.len() {
                let body = String::from_utf8(flip_byte(v.body.as_bytes(), i)).unwrap();
                let changed = Vector { body, ..v.clone() };
                let verdict = changed.verify_at(v.at());
                assert_eq!(verdict, Err(Rejection::BadSignature), "{name} byte {i}");
            }
        }
    }

    #[test]
    fn rejects_every_vector_with_one_signature_char_changed() {
        for (name, v) in all_vectors() {
            for i in [3, 20, v.signature.len() - 2] {
                let changed = Vector {
                    signature: flip_char(&v.signature, i),
                    ..v.clone()
                };
                let verdict = changed.verify_at(v.at());
                assert_eq!(verdict, Err(Rejection::BadSignature), "{name} char {i}");
            }
        }
    }

    #[test]
    fn rejects_every_vector_with_the_id_or_timestamp_changed() {
        for (name, v) in all_vectors() {
            let other_id = Vector {
                id: format!("{}x", v.id),
                ..v.clone()
            };
            let other_time = Vector {
                timestamp: (v.at() + 1).to_string(),
                ..v.clone()
            };
            for changed in [other_id, other_time] {
                let verdict = changed.verify_at(v.at());
                assert_eq!(verdict, Err(Rejection::BadSignature), "{name}");
            }
        }
    }

    #[test]
    fn accepts_when_only_the_second_of_several_entries_matches() {
        for (name, v) in all_vectors() {
            let old = Secret::parse("whsec_b2xkLXNlY3JldC1yb3RhdGVkLW91dA==").unwrap();
            let stale = sign(&old, &v.id, v.at(), v.body.as_bytes());
            let changed = Vector {
                signature: format!("v1a,AAAA {stale} {}", v.signature),
                ..v.clone()
            };
            assert_eq!(changed.verify_at(v.at()), Ok(()), "{name}");
        }
    }

    #[test]
    fn stripe_style_key_of_the_whole_whsec_string_does_not_verify() {
        let v = &all_vectors()[0].1;
        let mac = hmac_sha256(
            v.secret.as_bytes(),
            &[
                v.id.as_bytes(),
                b".",
                v.timestamp.as_bytes(),
                b".",
                v.body.as_bytes(),
            ],
        );
        let changed = Vector {
            signature: format!("v1,{}", STANDARD.encode(mac)),
            ..v.clone()
        };
        assert_eq!(changed.verify_at(v.at()), Err(Rejection::BadSignature));
    }

    #[test]
    fn missing_headers_or_no_v1_entry_is_missing_signature() {
        let v = &all_vectors()[0].1;
        let secret = Secret::parse(&v.secret).unwrap();
        let body = v.body.as_bytes();
        let (id, ts, sig) = (
            Some(v.id.as_str()),
            Some(v.timestamp.as_str()),
            Some(v.signature.as_str()),
        );
        let verdicts = [
            verify(body, None, ts, sig, &secret, v.at()),
            verify(body, id, None, sig, &secret, v.at()),
            verify(body, id, ts, None, &secret, v.at()),
            verify(body, id, ts, Some(""), &secret, v.at()),
            verify(body, id, ts, Some("v1a,AAAA v2,BBBB"), &secret, v.at()),
        ];
        for verdict in verdicts {
            assert_eq!(verdict, Err(Rejection::MissingSignature));
        }
    }

    #[test]
    fn non_numeric_timestamp_is_malformed() {
        let v = &all_vectors()[0].1;
        let changed = Vector {
            timestamp: "2024-11-24T00:00:00Z".into(),
            ..v.clone()
        };
        assert!(matches!(
            changed.verify_at(v.at()),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn secret_parse_accepts_a_missing_prefix_and_rejects_garbage() {
        let v = &all_vectors()[0].1;
        let bare = v.secret.strip_prefix("whsec_").unwrap();
        assert_eq!(
            Secret::parse(bare).unwrap(),
            Secret::parse(&v.secret).unwrap()
        );
        for bad in ["", "whsec_", "whsec_not base64!", "whsec_A"] {
            assert!(Secret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_debug_does_not_show_the_key() {
        let secret = Secret::parse(&all_vectors()[0].1.secret).unwrap();
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn garbage_headers_and_bodies_are_rejected_without_panicking() {
        let v = &all_vectors()[0].1;
        let secret = Secret::parse(&v.secret).unwrap();
        let huge = "v1,AAAA ".repeat(100_000);
        let signatures = ["", ",", "v1,", "v1", " v1, ", "\u{0}", huge.as_str()];
        let timestamps = ["", "-", "99999999999999999999", "-9223372036854775808"];
        let bodies: [&[u8]; 2] = [b"", &[0xff, 0x00]];
        for signature in signatures {
            for timestamp in timestamps {
                for body in bodies {
                    let verdict = verify(
                        body,
                        Some(""),
                        Some(timestamp),
                        Some(signature),
                        &secret,
                        i64::MAX,
                    );
                    assert!(verdict.is_err());
                }
            }
        }
    }
}
