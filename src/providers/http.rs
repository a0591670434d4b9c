//! Generic HTTP: the shared client, and the classification of answers and transport
//! errors that every provider starts from.
//!
//! Network errors, timeouts, 408, 429 and 5xx are worth retrying (a `Retry-After` header
//! sets the earliest next attempt); any other 4xx means the request itself is wrong and
//! retrying cannot help. Must never log request or response bodies (they carry personal
//! data and secrets).
//!
//! Every message built here from a remote answer (body, header, transport error) goes
//! through [`crate::text`]: NUL and invalid UTF-8 replaced, length capped, so an error
//! message can always be stored, whatever the provider sent.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error_class::ErrorClass;
use crate::text;

/// Longest part of a provider's own words kept in an error message, in bytes.
pub const MAX_PROVIDER_MESSAGE: usize = 500;

/// A failed call, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub class: ErrorClass,
    pub retryable: bool,
    pub message: String,
    pub status: Option<u16>,
    /// From `Retry-After`: the provider asks us not to call before this instant.
    pub not_before: Option<DateTime<Utc>>,
}

/// The HTTP client of the provider calls (rustls, connection pooling). `timeout` bounds a
/// whole call unless a request sets its own. Calls to user-given URLs use
/// [`super::egress::client`] instead.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    builder(timeout).build()
}

/// What every client of the daemon shares: rustls, the timeouts, our user agent, and no
/// redirect followed: a redirect could carry a credentialed call (a `header:NAME` key, an
/// OAuth client secret in a 307 body) to another host, or aim a call inward. A 3xx is an
/// answer like any other.
pub(super) fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("penguin-jobs/", env!("CARGO_PKG_VERSION")))
}

/// Class and retryability of an HTTP status that is not a success.
pub fn classify_status(status: u16) -> (ErrorClass, bool) {
    match status {
        401 => (ErrorClass::Authentication, false),
        402 => (ErrorClass::Quota, false),
        403 => (ErrorClass::Authorization, false),
        408 => (ErrorClass::Timeout, true),
        429 => (ErrorClass::RateLimit, true),
        500..=599 => (ErrorClass::Api, true),
        _ => (ErrorClass::Data, false),
    }
}

/// The longest wait a provider's throttling headers can impose; later instants are
/// clamped to it (a provider asking for more is treated as asking for a day).
const MAX_WAIT_SECS: u32 = 86_400;

/// `now` plus `secs` seconds, `secs` clamped to `[-1, MAX_WAIT_SECS]` first: never overflows.
fn in_secs(now: DateTime<Utc>, secs: f64) -> DateTime<Utc> {
    let secs = secs.clamp(-1.0, f64::from(MAX_WAIT_SECS));
    now + chrono::Duration::milliseconds((secs * 1000.0) as i64)
}

/// The earliest next call a throttling answer allows: `Retry-After` (seconds or an HTTP
/// date), else `X-RateLimit-Reset` (Unix seconds, or seconds from now when small).
/// Garbage, negative and past values are ignored; anything later than a day is a day.
pub fn not_before_from_headers(
    headers: &reqwest::header::HeaderMap,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(at) = text("retry-after").and_then(|v| parse_retry_after(v, now)) {
        return Some(at);
    }
    parse_rate_limit_reset(text("x-ratelimit-reset")?, now)
}

/// `X-RateLimit-Reset`: Unix seconds when above 10^9, else seconds from now (decimals
/// allowed). Unparseable, non-finite, negative or past values give `None`; later than a
/// day is capped at a day.
pub fn parse_rate_limit_reset(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let reset: f64 = value.trim().parse().ok().filter(|r: &f64| r.is_finite())?;
    let ahead = if reset > 1e9 {
        reset - now.timestamp_millis() as f64 / 1000.0
    } else {
        reset
    };
    let at = in_secs(now, ahead);
    (at > now).then_some(at)
}

/// Classifies a provider's non-success answer: the status decides class and retry, the
/// throttling headers the earliest retry, and `message` (the provider's own words, when it
/// gave some) is kept so an operator reads why in the dead letter: cleaned and cut to
/// [`MAX_PROVIDER_MESSAGE`] bytes, since the provider may have sent anything.
pub fn error_from_answer(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    message: Option<String>,
    now: DateTime<Utc>,
) -> CallError {
    let (class, retryable) = classify_status(status);
    CallError {
        class,
        retryable,
        message: match message {
            Some(m) if !m.trim().is_empty() => {
                format!(
                    "HTTP {status}: {}",
                    text::clean(m.trim(), MAX_PROVIDER_MESSAGE)
                )
            }
            _ => format!("HTTP {status}"),
        },
        status: Some(status),
        not_before: if retryable {
            not_before_from_headers(headers, now)
        } else {
            None
        },
    }
}

/// A `configuration` error: our own settings are missing or wrong. Retryable, so the
/// jobs go on once an operator fixes the configuration and restarts.
pub fn configuration_error(message: impl Into<String>) -> CallError {
    CallError {
        class: ErrorClass::Configuration,
        retryable: true,
        message: message.into(),
        status: None,
        not_before: None,
    }
}

/// A provider's answer, its body read (at most the limit given to [`exchange`]).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body, or its first bytes when it went on past the limit.
    pub body: Vec<u8>,
    /// The body went on past the limit (one byte more was read, the rest never): an answer
    /// that is of use only whole (JSON to parse) cannot be read, see [`Answer::whole_body`].
    pub cut: bool,
}

impl Answer {
    /// The body as JSON, if it is (a cut body is not).
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(self.whole_body("").ok()?).ok()
    }

    /// The whole body; a cut one is an `api` error (retryable, like any 2xx we cannot
    /// read) naming `what` was answered and the limit.
    pub fn whole_body(&self, what: &str) -> Result<&[u8], CallError> {
        if !self.cut {
            return Ok(&self.body);
        }
        Err(CallError {
            class: ErrorClass::Api,
            retryable: true,
            message: format!(
                "{what} answered HTTP {} with a body longer than {} bytes: not read",
                self.status,
                self.body.len()
            ),
            status: Some(self.status),
            not_before: None,
        })
    }

    /// This non-success answer, classified: the provider's own words (`provider_message`
    /// reads them from a JSON body; otherwise the body's text, invalid UTF-8 replaced) with
    /// `key` masked, then cleaned and capped by [`error_from_answer`]. The key is masked
    /// before the cut, so a cut never leaves part of it.
    pub fn error(
        &self,
        key: &secrecy::SecretString,
        provider_message: impl FnOnce(&serde_json::Value) -> Option<String>,
    ) -> CallError {
        let message = self
            .json()
            .as_ref()
            .and_then(provider_message)
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        let message = Some(super::redact(&message, key));
        error_from_answer(self.status, &self.headers, message, Utc::now())
    }
}

/// Sends `request` and reads at most `limit` bytes of its answer's body (a transport
/// failure is classified; a longer body is [`Answer::cut`], never buffered).
pub async fn exchange(request: reqwest::RequestBuilder, limit: usize) -> Result<Answer, CallError> {
    let response = request.send().await.map_err(|e| error_from_transport(&e))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = read_body(response, limit.saturating_add(1)).await?;
    let cut = body.len() > limit;
    body.truncate(limit);
    Ok(Answer {
        status,
        headers,
        body,
        cut,
    })
}

/// Reads at most `limit` bytes of an answer's body (providers' answers are small; a huge
/// one is cut, not buffered).
pub async fn read_body(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, CallError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| error_from_transport(&e))?
    {
        let room = limit.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= limit {
            break;
        }
    }
    Ok(body)
}

/// Classifies a transport error (no HTTP answer).
pub fn error_from_transport(error: &reqwest::Error) -> CallError {
    let class = if error.is_timeout() {
        ErrorClass::Timeout
    } else if error.is_builder() {
        ErrorClass::Data
    } else {
        ErrorClass::Network
    };
    CallError {
        class,
        retryable: class != ErrorClass::Data,
        message: describe_transport(error),
        status: None,
        not_before: None,
    }
}

/// The error and its sources in one line, without the URL's query string (it may carry
/// a token), cleaned and capped (a source may quote what the server sent).
fn describe_transport(error: &reqwest::Error) -> String {
    let mut line = error.to_string();
    if let Some(url) = error.url() {
        let mut shown = url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        line = line.replace(url.as_str(), shown.as_str());
    }
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    text::clean(&line, text::MAX_MESSAGE)
}

/// `Retry-After` is either delay-seconds or an HTTP-date. Values in the past, negative or
/// unparseable give `None`; delays beyond one day (however many digits) are capped at one day.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let at = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // more digits than a u64 holds is still "a long time"
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        in_secs(now, secs.min(u64::from(MAX_WAIT_SECS)) as f64)
    } else {
        let date = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        date.min(in_secs(now, f64::from(MAX_WAIT_SECS)))
    };
    (at > now).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_design_says() {
        assert_eq!(classify_status(500), (ErrorClass::Api, true));
        assert_eq!(classify_status(503), (ErrorClass::Api, true));
        assert_eq!(classify_status(429), (ErrorClass::RateLimit, true));
        assert_eq!(classify_status(408), (ErrorClass::Timeout, true));
        assert_eq!(classify_status(400), (ErrorClass::Data, false));
        assert_eq!(classify_status(404), (ErrorClass::Data, false));
        assert_eq!(classify_status(422), (ErrorClass::Data, false));
        assert_eq!(classify_status(401), (ErrorClass::Authentication, false));
        assert_eq!(classify_status(403), (ErrorClass::Authorization, false));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(now + chrono::Duration::seconds(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:05:00 GMT", now),
            Some(now + chrono::Duration::minutes(5))
        );
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("99999999", now),
            Some(now + chrono::Duration::days(1))
        );
    }

    #[test]
    fn rate_limit_reset_is_read_when_retry_after_is_absent() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "x-ratelimit-reset",
            (now.timestamp() + 7).to_string().parse().unwrap(),
        );
        assert_eq!(
            not_before_from_headers(&h, now),
            Some(now + chrono::Duration::seconds(7))
        );
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(
            not_before_from_headers(&h, now),
            Some(now + chrono::Duration::seconds(2))
        );
        let e = error_from_answer(400, &h, Some("'to' parameter is missing".into()), now);
        assert_eq!(e.message, "HTTP 400: 'to' parameter is missing");
        assert_eq!(e.not_before, None);
        assert!(!e.retryable);
    }

    #[test]
    fn a_provider_message_is_cleaned_and_capped() {
        let h = reqwest::header::HeaderMap::new();
        let e = error_from_answer(500, &h, Some("bad\u{0}news".into()), Utc::now());
        assert_eq!(e.message, "HTTP 500: bad\u{fffd}news");
        let e = error_from_answer(500, &h, Some("x".repeat(1 << 20)), Utc::now());
        assert!(
            e.message.len() <= MAX_PROVIDER_MESSAGE + 20,
            "{}",
            e.message.len()
        );
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn an_answer_body_that_is_not_utf8_is_kept_as_replaced_text() {
        let key = secrecy::SecretString::from("key-123456");
        let answer = |body: &[u8]| Answer {
            status: 503,
            headers: reqwest::header::HeaderMap::new(),
            body: body.to_vec(),
            cut: false,
        };
        let e = answer(b"down\x00\xff for key-123456").error(&key, |_| None);
        assert_eq!(e.message, "HTTP 503: down\u{fffd}\u{fffd} for ***");
        assert!(e.retryable);
        let e = answer(br#"{"message":"bad\u0000"}"#).error(&key, |v| {
            v.get("message").and_then(|m| m.as_str()).map(String::from)
        });
        assert_eq!(e.message, "HTTP 503: bad\u{fffd}");
        assert_eq!(answer(b"").error(&key, |_| None).message, "HTTP 503");
    }

    #[test]
    fn a_cut_body_is_never_read_as_json() {
        let cut = Answer {
            status: 200,
            headers: reqwest::header::HeaderMap::new(),
            body: br#"{"id": 1}"#.to_vec(),
            cut: true,
        };
        assert_eq!(cut.json(), None);
        let e = cut.whole_body("the token endpoint").unwrap_err();
        assert_eq!((e.class, e.retryable), (ErrorClass::Api, true));
        assert!(e.message.contains("longer than 9 bytes"), "{}", e.message);
    }

    #[test]
    fn absurd_retry_after_values_are_capped_or_ignored_never_a_panic() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = Some(now + chrono::Duration::days(1));
        for capped in [
            "99999999999999999",
            "18446744073709551615",
            "999999999999999999999999999999999999",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "26 Nov 2033 10:05:00 -2359",
        ] {
            let got = parse_retry_after(capped, now);
            assert!(got.is_some() && got <= day, "{capped}: {got:?}");
        }
        assert_eq!(parse_retry_after("99999999999999999", now), day);
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now), day);
        for ignored in [
            "-1",
            "-9223372036854775808",
            "+5",
            "1.5",
            "",
            "   ",
            "NaN",
            "Thu, 01 Jan 1970 00:00:00 GMT",
            "Mon, 26 Nov 2026 99:99:99 GMT",
            "\u{7f}",
        ] {
            assert_eq!(parse_retry_after(ignored, now), None, "{ignored:?}");
        }
    }

    #[test]
    fn absurd_rate_limit_resets_are_capped_or_ignored_never_a_panic() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let day = Some(now + chrono::Duration::days(1));
        let reset = |v: &str| {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("x-ratelimit-reset", v.parse().unwrap());
            not_before_from_headers(&h, now)
        };
        for ignored in [
            "-9223372036854775808",
            "-1",
            "0",
            "inf",
            "-inf",
            "NaN",
            "1e400",
            "soon",
            "",
        ] {
            assert_eq!(reset(ignored), None, "{ignored:?}");
        }
        for capped in [
            "9223372036854775807",
            "18446744073709551616",
            "1e300",
            "999999999",
            "86401",
        ] {
            assert_eq!(reset(capped), day, "{capped}");
        }
        assert_eq!(reset("30"), Some(now + chrono::Duration::seconds(30)));
        assert_eq!(
            reset("1.5"),
            Some(now + chrono::Duration::milliseconds(1500))
        );
        assert_eq!(
            reset(&(now.timestamp() + 60).to_string()),
            Some(now + chrono::Duration::seconds(60))
        );
        // a garbage Retry-After falls back to the reset header
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "-9223372036854775808".parse().unwrap());
        h.insert("x-ratelimit-reset", "5".parse().unwrap());
        assert_eq!(
            not_before_from_headers(&h, now),
            Some(now + chrono::Duration::seconds(5))
        );
    }

    #[test]
    fn retry_after_is_ignored_on_permanent_errors() {
        let now = Utc::now();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "60".parse().unwrap());
        let e = error_from_answer(400, &h, None, now);
        assert!(!e.retryable);
        assert_eq!(e.not_before, None);
        let e = error_from_answer(429, &h, None, now);
        assert!(e.retryable);
        assert!(e.not_before.is_some());
    }
}
