//! Inbound webhook verification and event extraction, one module per provider: pure functions.
//!
//! The HTTP shim hands a request's raw body, the relevant header values, the provider's key
//! and the current time to a provider's `verify`, and gets a verdict: accept, or a
//! [`Rejection`] it turns into a status code. Only then does it call `events` to split the body
//! into [`InboundEvent`]s, each deduplicated on its provider id and stored raw.
//! [`standard`] is the other direction: it signs the webhooks we deliver to our customers.
//!
//! This module must never do I/O of any kind: no `sqlx`, no `queue/`, no network, no clock.
//! "Now" is an argument, so the replay window is tested without waiting. Anything that
//! remembers between requests (Mailgun tokens already seen) belongs to the caller.
//!
//! Every comparison involving a secret or a signature is constant-time, and no input (empty,
//! non-UTF-8, huge, truncated) may panic: every failure is a [`Rejection`].
//!
//! An event's parsed copy is made storable here, once: a signed event is always stored, so
//! a NUL (`\u0000`, which jsonb and text refuse) in any of its strings is replaced, and an
//! absurdly long id or type is shortened ([`InboundEvent::new`]). The raw bytes are kept as
//! received.

pub mod mailgun;
pub mod sendgrid;
pub mod standard;
pub mod stripe;

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::text;

/// How far a signed timestamp may be from "now", in seconds, either way.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// Longest event id or type stored as sent, in bytes (providers' ids are tens of bytes;
/// the id is a unique key, and a btree entry must stay well under 2.7 kB).
pub const MAX_ID: usize = 200;

/// Why an inbound request was refused.
///
/// Signature checks run before timestamp checks, so [`Rejection::Stale`] and a
/// [`Rejection::Malformed`] timestamp are only reported for requests the provider really signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature (or a part of the signed material, such as its timestamp) is absent.
    #[error("missing webhook signature")]
    MissingSignature,
    /// A signature is present but does not verify with the configured key.
    #[error("webhook signature does not verify")]
    BadSignature,
    /// The signed timestamp is more than [`REPLAY_WINDOW_SECS`] from now, in the past or future.
    #[error("webhook timestamp outside the {REPLAY_WINDOW_SECS} s window")]
    Stale,
    /// The body or a header cannot be parsed: HTTP 400 at the edge. Never echoes secrets.
    #[error("malformed webhook: {0}")]
    Malformed(String),
    /// A Mailgun token seen again within the window (raised by the caller, who remembers tokens).
    #[error("webhook replayed")]
    Replayed,
}

/// One event extracted from a verified request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundEvent {
    /// The provider's id for the event: the deduplication key.
    pub event_id: String,
    /// The provider's event type (`payment_intent.succeeded`, `delivered`, `bounce`, ...).
    pub event_type: Option<String>,
    /// The event as the provider sent it, NUL replaced in its strings and keys.
    pub payload: serde_json::Value,
    /// Whether `payload` had to be cleaned: the raw bytes then hold text that cannot be
    /// stored as jsonb, and only `payload` is a storable copy of the event.
    pub payload_cleaned: bool,
}

impl InboundEvent {
    /// An event, made storable: NUL replaced in the payload and the type, the type cut to
    /// [`MAX_ID`] bytes, and the id through [`storable_id`].
    pub fn new(event_id: String, event_type: Option<String>, payload: serde_json::Value) -> Self {
        let payload_cleaned = text::first_unstorable(&payload).is_some();
        Self {
            event_id: if event_id.len() <= MAX_ID && text::is_storable(&event_id) {
                event_id
            } else {
                storable_id(&event_id)
            },
            event_type: event_type.map(|t| {
                if t.len() <= MAX_ID && text::is_storable(&t) {
                    t
                } else {
                    text::clean(&t, MAX_ID)
                }
            }),
            payload: if payload_cleaned {
                text::clean_json(payload)
            } else {
                payload
            },
            payload_cleaned,
        }
    }
}

/// A provider's event id as stored: as sent when it is at most [`MAX_ID`] bytes without
/// NUL; NUL replaced otherwise; and a longer one as its first 64 bytes plus the SHA-256 of
/// the whole, so two long ids that differ only at the end stay two events.
pub fn storable_id(id: &str) -> String {
    if id.len() <= MAX_ID {
        return if text::is_storable(id) {
            id.to_owned()
        } else {
            text::clean(id, MAX_ID)
        };
    }
    let digest = hex::encode(Sha256::digest(id.as_bytes()));
    format!("{}~sha256:{digest}", text::clean(id, 64))
}

/// The campaign and recipient an email event belongs to, as we attached them when sending
/// (SendGrid custom args, Mailgun user variables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CampaignRef {
    /// Our campaign id, if the event carries one.
    pub campaign_id: Option<String>,
    /// Our recipient id, if the event carries one.
    pub recipient_id: Option<String>,
}

/// `Ok` when `timestamp` is within [`REPLAY_WINDOW_SECS`] of `now_unix`, either way.
pub(crate) fn check_window(timestamp: i64, now_unix: i64) -> Result<(), Rejection> {
    if timestamp.abs_diff(now_unix) > REPLAY_WINDOW_SECS.unsigned_abs() {
        return Err(Rejection::Stale);
    }
    Ok(())
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length (long ones are hashed), so this never fails.
    let mut mac = <Hmac<Sha256> as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Constant-time equality; lengths are not secret and may differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Parse a body as JSON, mapping failure to [`Rejection::Malformed`].
pub(crate) fn parse_json(body: &[u8]) -> Result<serde_json::Value, Rejection> {
    serde_json::from_slice(body).map_err(|e| Rejection::Malformed(format!("body is not JSON: {e}")))
}

/// A JSON string as is, or an integer as its decimal text; anything else is `None`.
pub(crate) fn text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod vectors {
    //! The shared signature vectors, copied into the repository so a clean checkout has them.

    pub(crate) fn signatures() -> serde_json::Value {
        serde_json::from_str(include_str!("vectors/signatures.json")).expect("signatures.json")
    }

    pub(crate) fn official() -> serde_json::Value {
        serde_json::from_str(include_str!("vectors/official.json")).expect("official.json")
    }

    /// `s` with the byte at `index` changed to another digit (valid in hex and base64 alike).
    pub(crate) fn flip_byte(s: &[u8], index: usize) -> Vec<u8> {
        let mut out = s.to_vec();
        out[index] = if out[index] == b'0' { b'1' } else { b'0' };
        out
    }

    /// `s` with the char at `index` changed (stays ASCII, stays in the same alphabet).
    pub(crate) fn flip_char(s: &str, index: usize) -> String {
        String::from_utf8(flip_byte(s.as_bytes(), index)).expect("ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_accepts_exactly_300_seconds_either_way_and_rejects_301() {
        assert_eq!(check_window(1000, 1300), Ok(()));
        assert_eq!(check_window(1300, 1000), Ok(()));
        assert_eq!(check_window(1000, 1301), Err(Rejection::Stale));
        assert_eq!(check_window(1301, 1000), Err(Rejection::Stale));
    }

    #[test]
    fn window_does_not_overflow_on_extreme_timestamps() {
        assert_eq!(check_window(i64::MIN, i64::MAX), Err(Rejection::Stale));
        assert_eq!(check_window(i64::MAX, i64::MIN), Err(Rejection::Stale));
    }

    #[test]
    fn an_event_with_nul_is_cleaned_and_says_so() {
        let e = InboundEvent::new(
            "evt\u{0}1".into(),
            Some("bounce\u{0}".into()),
            serde_json::json!({"reason": "550 \u{0}", "n": 1}),
        );
        assert_eq!(e.event_id, "evt\u{fffd}1");
        assert_eq!(e.event_type.as_deref(), Some("bounce\u{fffd}"));
        assert_eq!(e.payload["reason"], "550 \u{fffd}");
        assert!(e.payload_cleaned);
        let e = InboundEvent::new(
            "evt_1".into(),
            Some("delivered".into()),
            serde_json::json!({"a": "b"}),
        );
        assert_eq!(e.event_id, "evt_1");
        assert!(!e.payload_cleaned);
    }

    #[test]
    fn a_long_event_id_is_shortened_but_stays_distinct() {
        let a = storable_id(&format!("{}a", "x".repeat(5000)));
        let b = storable_id(&format!("{}b", "x".repeat(5000)));
        assert_ne!(a, b);
        assert!(a.len() <= MAX_ID, "{}", a.len());
        assert_eq!(storable_id(&"y".repeat(MAX_ID)), "y".repeat(MAX_ID));
        let t = InboundEvent::new("e".into(), Some("t".repeat(1000)), serde_json::json!({}));
        assert!(t.event_type.unwrap().len() <= MAX_ID + 3);
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
