//! Stripe webhooks: the `Stripe-Signature` header and the event body.
//!
//! Stripe signs `{t}.{raw body}` with HMAC-SHA256 under the endpoint secret, the whole
//! `whsec_...` string taken as bytes (not base64-decoded: that is Standard Webhooks' rule, and
//! mixing the two is the classic bug). The header is `t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`:
//! during a secret rotation several `v1` entries appear and any one matching is enough; `v0`
//! and unknown keys are ignored.
//!
//! Pure functions: no I/O, no clock.

use subtle::Choice;

use super::{InboundEvent, Rejection, check_window, ct_eq, hmac_sha256, parse_json, text};

/// The only signature scheme we accept (`v0` is a test-mode legacy scheme).
const SCHEME: &str = "v1";

/// The parts of a `Stripe-Signature` header we use.
struct SignatureHeader<'a> {
    timestamp: i64,
    signatures: Vec<&'a str>,
}

fn parse_header(header: &str) -> Result<SignatureHeader<'_>, Rejection> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_some() => {
                return Err(Rejection::Malformed(
                    "Stripe-Signature has more than one t=".into(),
                ));
            }
            "t" => {
                let t = value.parse::<i64>().map_err(|_| {
                    Rejection::Malformed("Stripe-Signature t= is not a unix timestamp".into())
                })?;
                timestamp = Some(t);
            }
            SCHEME => signatures.push(value),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return Err(Rejection::Malformed(
            "Stripe-Signature has no t= timestamp".into(),
        ));
    };
    if signatures.is_empty() {
        return Err(Rejection::MissingSignature);
    }
    Ok(SignatureHeader {
        timestamp,
        signatures,
    })
}

/// Verify a Stripe webhook: `body` is the raw request body, `signature_header` the
/// `Stripe-Signature` value, `secret` the endpoint secret (`whsec_...` as bytes).
///
/// Absent header, or one without any `v1=` → [`Rejection::MissingSignature`]; no `t=` or a
/// non-numeric one → [`Rejection::Malformed`]; no `v1` matching (or an empty secret) →
/// [`Rejection::BadSignature`]; signed more than 300 s from `now_unix` → [`Rejection::Stale`].
pub fn verify(
    body: &[u8],
    signature_header: Option<&str>,
    secret: &[u8],
    now_unix: i64,
) -> Result<(), Rejection> {
    let header = parse_header(signature_header.ok_or(Rejection::MissingSignature)?)?;
    if secret.is_empty() {
        return Err(Rejection::BadSignature);
    }
    let t = header.timestamp.to_string();
    let expected = hex::encode(hmac_sha256(secret, &[t.as_bytes(), b".", body]));
    let matched = header
        .signatures
        .iter()
        .fold(Choice::from(0), |any, candidate| {
            any | Choice::from(u8::from(ct_eq(expected.as_bytes(), candidate.as_bytes())))
        });
    if !bool::from(matched) {
        return Err(Rejection::BadSignature);
    }
    check_window(header.timestamp, now_unix)
}

/// The single event in a verified Stripe body: id = `id`, type = `type`, payload = the whole body.
pub fn events(body: &[u8]) -> Result<Vec<InboundEvent>, Rejection> {
    let payload = parse_json(body)?;
    let Some(event_id) = payload.get("id").and_then(|id| id.as_str()) else {
        return Err(Rejection::Malformed(
            "Stripe event has no string `id`".into(),
        ));
    };
    let event_type = text(payload.get("type"));
    Ok(vec![InboundEvent::new(
        event_id.to_owned(),
        event_type,
        payload,
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhooks::vectors::{flip_byte, flip_char, signatures};

    struct Vector {
        secret: String,
        timestamp: i64,
        body: String,
        header: String,
    }

    fn vector() -> Vector {
        let v = &signatures()["stripe"];
        Vector {
            secret: v["secret"].as_str().unwrap().to_owned(),
            timestamp: v["timestamp"].as_i64().unwrap(),
            body: v["body"].as_str().unwrap().to_owned(),
            header: v["header"].as_str().unwrap().to_owned(),
        }
    }

    fn sign(secret: &str, t: i64, body: &str) -> String {
        hex::encode(hmac_sha256(
            secret.as_bytes(),
            &[t.to_string().as_bytes(), b".", body.as_bytes()],
        ))
    }

    #[test]
    fn accepts_the_stripe_library_vector_at_its_own_time() {
        let v = vector();
        let verdict = verify(
            v.body.as_bytes(),
            Some(&v.header),
            v.secret.as_bytes(),
            v.timestamp,
        );
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn accepts_at_300_seconds_either_way() {
        let v = vector();
        for now in [v.timestamp - 300, v.timestamp + 300] {
            let verdict = verify(v.body.as_bytes(), Some(&v.header), v.secret.as_bytes(), now);
            assert_eq!(verdict, Ok(()), "now = {now}");
        }
    }

    #[test]
    fn rejects_as_stale_at_301_seconds_after_or_before() {
        let v = vector();
        for now in [v.timestamp + 301, v.timestamp - 301] {
            let verdict = verify(v.body.as_bytes(), Some(&v.header), v.secret.as_bytes(), now);
            assert_eq!(verdict, Err(Rejection::Stale), "now = {now}");
        }
    }

    #[test]
    fn rejects_the_body_with_any_one_byte_changed() {
        let v = vector();
        for i in 0..v.body.len() {
            let body = flip_byte(v.body.as_bytes(), i);
            let verdict = verify(&body, Some(&v.header), v.secret.as_bytes(), v.timestamp);
            assert_eq!(verdict, Err(Rejection::BadSignature), "byte {i}");
        }
    }

    #[test]
    fn rejects_the_signature_with_one_char_changed() {
        let v = vector();
        let sig_start = v.header.find("v1=").unwrap() + 3;
        for i in [sig_start, sig_start + 17, v.header.len() - 1] {
            let header = flip_char(&v.header, i);
            let verdict = verify(
                v.body.as_bytes(),
                Some(&header),
                v.secret.as_bytes(),
                v.timestamp,
            );
            assert_eq!(verdict, Err(Rejection::BadSignature), "char {i}");
        }
    }

    #[test]
    fn rejects_a_changed_timestamp_in_the_header() {
        let v = vector();
        let header = v.header.replace(
            &format!("t={}", v.timestamp),
            &format!("t={}", v.timestamp + 1),
        );
        let verdict = verify(
            v.body.as_bytes(),
            Some(&header),
            v.secret.as_bytes(),
            v.timestamp,
        );
        assert_eq!(verdict, Err(Rejection::BadSignature));
    }

    #[test]
    fn accepts_when_only_the_second_of_several_v1_entries_matches() {
        let v = vector();
        let old = sign("whsec_the_rotated_out_secret", v.timestamp, &v.body);
        let new = sign(&v.secret, v.timestamp, &v.body);
        let header = format!("t={},v1={old},v1={new}", v.timestamp);
        let verdict = verify(
            v.body.as_bytes(),
            Some(&header),
            v.secret.as_bytes(),
            v.timestamp,
        );
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn ignores_v0_and_unknown_keys_and_spaces() {
        let v = vector();
        let good = sign(&v.secret, v.timestamp, &v.body);
        let header = format!(
            "t={}, v0=deadbeef, scheme=x, novalue, v1={good}",
            v.timestamp
        );
        let verdict = verify(
            v.body.as_bytes(),
            Some(&header),
            v.secret.as_bytes(),
            v.timestamp,
        );
        assert_eq!(verdict, Ok(()));
    }

    #[test]
    fn a_matching_v0_alone_is_not_enough() {
        let v = vector();
        let good = sign(&v.secret, v.timestamp, &v.body);
        let header = format!("t={},v0={good}", v.timestamp);
        let verdict = verify(
            v.body.as_bytes(),
            Some(&header),
            v.secret.as_bytes(),
            v.timestamp,
        );
        assert_eq!(verdict, Err(Rejection::MissingSignature));
    }

    #[test]
    fn missing_header_is_missing_signature() {
        let v = vector();
        let verdict = verify(v.body.as_bytes(), None, v.secret.as_bytes(), v.timestamp);
        assert_eq!(verdict, Err(Rejection::MissingSignature));
    }

    #[test]
    fn header_without_a_timestamp_is_malformed() {
        let v = vector();
        let good = sign(&v.secret, v.timestamp, &v.body);
        for header in [
            format!("v1={good}"),
            format!("t=yesterday,v1={good}"),
            format!("t={0},t={0},v1={good}", v.timestamp),
        ] {
            let verdict = verify(
                v.body.as_bytes(),
                Some(&header),
                v.secret.as_bytes(),
                v.timestamp,
            );
            assert!(
                matches!(verdict, Err(Rejection::Malformed(_))),
                "{header}: {verdict:?}"
            );
        }
    }

    #[test]
    fn base64_decoding_the_secret_like_standard_webhooks_does_not_verify() {
        let v = vector();
        let wrong_keys: [&[u8]; 3] = [b"test_penguin_4f1c2b", b"whsec_test_penguin_4f1c2c", b""];
        for key in wrong_keys {
            let verdict = verify(v.body.as_bytes(), Some(&v.header), key, v.timestamp);
            assert_eq!(verdict, Err(Rejection::BadSignature));
        }
    }

    #[test]
    fn garbage_headers_and_bodies_are_rejected_without_panicking() {
        let v = vector();
        let huge = format!("t=1,{}", "v1=00,".repeat(100_000));
        let headers = [
            "",
            ",",
            "=",
            "t=",
            "t=,v1=",
            "t=99999999999999999999999,v1=00",
            "t=-9223372036854775808,v1=00",
            "v1=zz,t=1",
            "t=1,v1=\u{0}\u{ffff}",
            huge.as_str(),
        ];
        let bodies: [&[u8]; 3] = [b"", &[0xff, 0xfe, 0x00], v.body.as_bytes()];
        for header in headers {
            for body in bodies {
                let verdict = verify(body, Some(header), v.secret.as_bytes(), v.timestamp);
                assert!(verdict.is_err(), "{header:.40}");
            }
        }
        let verdict = verify(
            v.body.as_bytes(),
            Some("t=-9223372036854775808,v1=00"),
            v.secret.as_bytes(),
            i64::MAX,
        );
        assert!(verdict.is_err());
    }

    #[test]
    fn events_yields_the_one_event_with_its_id_and_type() {
        let v = vector();
        let events = events(v.body.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_id, "evt_1PenguinTest");
        assert_eq!(
            events[0].event_type.as_deref(),
            Some("payment_intent.succeeded")
        );
        assert_eq!(events[0].payload["data"]["object"]["amount"], 4900);
    }

    #[test]
    fn events_rejects_bodies_that_are_not_an_event_as_malformed() {
        let bodies: [&[u8]; 7] = [
            b"",
            b"\xff\xfe",
            b"[]",
            b"null",
            b"{\"type\":\"x\"}",
            b"{\"id\":42}",
            b"{\"id\":\"evt_1\"",
        ];
        for body in bodies {
            assert!(
                matches!(events(body), Err(Rejection::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn events_tolerates_a_missing_type() {
        let events = events(br#"{"id":"evt_1"}"#).unwrap();
        assert_eq!(events[0].event_type, None);
    }
}
