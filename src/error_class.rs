//! The error classes a failed attempt is recorded with (`errors[].class`), shared by the
//! provider clients that classify answers, the job kinds that raise them and the runtime
//! whose retry policy reads them.
//!
//! Only the vocabulary lives here: no I/O, and nothing that knows a provider, a kind or
//! the runtime.

use serde::{Deserialize, Serialize};

/// Why a call failed, as recorded in a job's `errors` and used by the retry policy.
/// The first eight are the seed's classes; the rest are raised by the handlers' own
/// storage and by the runtime itself.
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
    /// Our own database failed (connection lost, statement refused): retried.
    Database,
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
            ErrorClass::Database => "database",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_is_stored_under_its_stable_name() {
        for (class, name) in [
            (ErrorClass::RateLimit, "rate_limit"),
            (ErrorClass::Database, "database"),
            (ErrorClass::UnknownKind, "unknown_kind"),
        ] {
            assert_eq!(class.as_str(), name);
            assert_eq!(serde_json::to_value(class).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<ErrorClass>(name.into()).unwrap(),
                class
            );
        }
    }
}
