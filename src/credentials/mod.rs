//! Credentials: OAuth connections and states, API keys, the audit log and alerts. One
//! file per table (`oauth_connections`, `oauth_states`, `api_keys`, `audit`, `alerts`,
//! `sealed` for master key rotation) holds its statements; [`connections`] and [`keys`]
//! hold the operations that seal and open secrets (the additional data binding a
//! ciphertext to its table, column and row is built here and nowhere else), write a change
//! with its audit entry in one transaction, and raise alerts. Job kinds, the CLI and the
//! OAuth callback call these; the provider calls stay in `jobs/`.
//!
//! The table files see ciphertexts only. Every state change of a credential takes a
//! compare-and-set `update` (status, claim id or old ciphertext in its `where`), so two
//! daemons never both act on one credential. Must never call a provider, log a secret,
//! or put one in an audit entry's `detail`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::queue::{Error, NewJob, enqueue};

mod alerts;
mod api_keys;
mod audit;
pub mod connections;
pub mod keys;
mod oauth_connections;
mod oauth_states;
mod sealed;

pub use alerts::*;
pub use api_keys::*;
pub use audit::*;
pub use oauth_connections::*;
pub use oauth_states::*;
pub use sealed::*;

/// Declares a closed set of stored words: the enum, and `as_str` giving each variant's
/// stored string.
macro_rules! stored_words {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)*
        }

        impl $name {
            /// Every variant.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The stored string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }
    };
}

stored_words! {
    /// What an audit log entry records (`penguin.audit_log.event`).
    AuditAction {
        AuthorizationStarted => "authorization_started",
        Exchanged => "exchanged",
        ExchangeFailed => "exchange_failed",
        /// A connection stored directly (an import).
        Stored => "stored",
        Refreshed => "refreshed",
        RefreshFailed => "refresh_failed",
        ReauthRequired => "reauth_required",
        ConnectionRevoked => "connection_revoked",
        KeyStaged => "key_staged",
        KeyActivated => "key_activated",
        KeyTestFailed => "key_test_failed",
        KeyRevoked => "key_revoked",
        MasterKeyRotated => "master_key_rotated",
    }
}

stored_words! {
    /// What an audit entry or an alert is about (`subject_type`).
    Subject {
        OauthConnection => "oauth_connection",
        OauthState => "oauth_state",
        ApiKey => "api_key",
        MasterKey => "master_key",
        /// Our OAuth client at a provider (the subject id is the provider's name).
        OauthClient => "oauth_client",
    }
}

stored_words! {
    /// What an alert raised by a job says is wrong (`penguin.alerts.kind`; migration 0038
    /// renamed `oauth_reauth_required` and `apikey_test_failed`).
    AlertKind {
        OauthReauthRequired => "reauth_required",
        ApikeyRotationBlocked => "apikey_rotation_blocked",
        ApikeyRotationFailed => "apikey_rotation_failed",
        ApikeyTestFailed => "key_test_failed",
        /// The provider refuses our OAuth client (`invalid_client`, `unauthorized_client`).
        OauthClientRefused => "oauth_client_refused",
    }
}

/// Who caused a credential event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    Cli,
    Schedule,
    /// A request to the shim: `None` for the OAuth flow's own routes, else the name of the
    /// bearer token that enqueued the job (stored as `api:NAME`).
    Api(Option<String>),
}

impl Actor {
    /// The stored string: `cli`, `schedule`, `api` or `api:TOKEN`.
    pub fn as_str(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Actor::Cli => "cli".into(),
            Actor::Schedule => "schedule".into(),
            Actor::Api(None) => "api".into(),
            Actor::Api(Some(token)) => format!("api:{token}").into(),
        }
    }

    /// A payload's `actor` field: `default` when absent, else the parsed actor; the error
    /// names the field.
    pub fn from_field(actor: Option<&str>, default: Actor) -> Result<Self, String> {
        match actor {
            None => Ok(default),
            Some(a) => Self::parse(a)
                .ok_or_else(|| format!("actor: {a:?} is not cli, schedule, api or api:TOKEN")),
        }
    }

    /// Parses the stored string (job payloads of internal kinds carry it; the shim sets it
    /// from the token, never from the caller's payload).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cli" => Some(Actor::Cli),
            "schedule" => Some(Actor::Schedule),
            "api" => Some(Actor::Api(None)),
            _ => {
                let token = s.strip_prefix("api:")?;
                let plain = |c: char| c.is_ascii_alphanumeric() || "_-.[]".contains(c);
                (!token.is_empty() && token.len() <= 80 && token.chars().all(plain))
                    .then(|| Actor::Api(Some(token.to_string())))
            }
        }
    }
}

/// `d` as a PostgreSQL interval literal, for `$n::interval`.
fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}

#[cfg(test)]
mod actor_tests {
    use super::Actor;

    #[test]
    fn a_payload_actor_is_parsed_or_refused_naming_the_field() {
        assert_eq!(
            Actor::from_field(None, Actor::Schedule),
            Ok(Actor::Schedule)
        );
        assert_eq!(
            Actor::from_field(Some("cli"), Actor::Schedule),
            Ok(Actor::Cli)
        );
        assert_eq!(
            Actor::from_field(Some("api:ops"), Actor::Schedule),
            Ok(Actor::Api(Some("ops".into())))
        );
        for bad in ["root", "api:", "api:a b", "API"] {
            let e = Actor::from_field(Some(bad), Actor::Schedule).unwrap_err();
            assert!(e.starts_with("actor: "), "{bad}: {e}");
        }
        assert_eq!(Actor::Api(Some("ops".into())).as_str(), "api:ops");
        assert_eq!(Actor::Api(None).as_str(), "api");
    }
}
