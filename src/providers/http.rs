//! Generic HTTP: the shared client, and the classification of answers and transport
//! errors that every provider starts from.
//!
//! Network errors, timeouts, 408, 429 and 5xx are worth retrying (a `Retry-After` header
//! sets the earliest next attempt); any other 4xx means the request itself is wrong and
//! retrying cannot help. Must never log request or response bodies (they carry personal
//! data and secrets).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ErrorClass;

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

/// The one HTTP client of the daemon (rustls, connection pooling). `timeout` bounds a
/// whole call unless a request sets its own.
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("penguin-jobs/", env!("CARGO_PKG_VERSION")))
        .build()
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

/// Classifies an answer whose status was not the expected one.
pub fn error_from_response(
    status: u16,
    retry_after: Option<&str>,
    now: DateTime<Utc>,
) -> CallError {
    let (class, retryable) = classify_status(status);
    CallError {
        class,
        retryable,
        message: format!("HTTP {status}"),
        status: Some(status),
        not_before: if retryable {
            retry_after.and_then(|v| parse_retry_after(v, now))
        } else {
            None
        },
    }
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
/// a token).
fn describe_transport(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        let mut shown = url.clone();
        shown.set_query(None);
        let _ = shown.set_password(None);
        text = text.replace(url.as_str(), shown.as_str());
    }
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` is either delay-seconds or an HTTP-date. Values in the past or
/// unparseable give `None`; absurd delays are capped at one day.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let value = value.trim();
    let at = if let Ok(secs) = value.parse::<u64>() {
        now + chrono::Duration::seconds(secs.min(86_400) as i64)
    } else {
        let date = DateTime::parse_from_rfc2822(value)
            .ok()?
            .with_timezone(&Utc);
        date.min(now + chrono::Duration::days(1))
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
    fn retry_after_is_ignored_on_permanent_errors() {
        let now = Utc::now();
        let e = error_from_response(400, Some("60"), now);
        assert!(!e.retryable);
        assert_eq!(e.not_before, None);
        let e = error_from_response(429, Some("60"), now);
        assert!(e.retryable);
        assert!(e.not_before.is_some());
    }
}
