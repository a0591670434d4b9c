//! One HTTP client per provider: building requests and classifying answers, nothing else.
//!
//! A provider module turns a typed request into an HTTP call and an HTTP answer into
//! success or a classified [`ErrorClass`]. It must never touch the queue, a job row or
//! SQL: the retry decision from a class is the runtime's, the storage is `queue/`'s.

pub mod http;
pub mod keys;
pub mod oauth;

use serde::{Deserialize, Serialize};

/// Why a call failed, as recorded in a job's `errors` and used by the retry policy.
/// The first eight are the seed's classes; the rest are raised by the runtime itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 401: credentials refused.
    Authentication,
    /// 403: credentials lack a permission.
    Authorization,
    /// 429: slow down (honour `Retry-After`).
    RateLimit,
    /// Connection refused, reset, DNS failure, TLS failure.
    Network,
    /// 5xx: the provider failed.
    Api,
    /// Other 4xx, or a payload that cannot be sent: the request itself is wrong.
    Data,
    /// Our own settings are wrong (missing key, bad URL in config).
    Configuration,
    /// 402 or a provider-reported quota: out of credit, will not pass by retrying soon.
    Quota,
    /// No answer in time (our timeout, or 408).
    Timeout,
    /// The handler panicked.
    Panic,
    /// No handler for the job's kind.
    UnknownKind,
}

impl ErrorClass {
    /// The stable string stored in `errors[].class`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Authentication => "authentication",
            ErrorClass::Authorization => "authorization",
            ErrorClass::RateLimit => "rate_limit",
            ErrorClass::Network => "network",
            ErrorClass::Api => "api",
            ErrorClass::Data => "data",
            ErrorClass::Configuration => "configuration",
            ErrorClass::Quota => "quota",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Panic => "panic",
            ErrorClass::UnknownKind => "unknown_kind",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
