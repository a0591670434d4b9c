//! The credential tables: `penguin.oauth_connections`, `penguin.oauth_states`,
//! `penguin.api_keys`, `penguin.audit_log` and `penguin.alerts`.
//!
//! Secret columns (`*_enc`) hold ciphertexts of [`crate::secrets`] and are opaque here:
//! this module stores and compares them, and must never see a plaintext or a key. Every
//! state change of a credential takes a compare-and-set `update` (status, claim id or old
//! ciphertext in its `where`), so two daemons never both act on one credential.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{Error, NewJob, enqueue};

mod alerts;
mod api_keys;
mod audit;
mod oauth_connections;
mod oauth_states;
mod sealed;

pub use alerts::*;
pub use api_keys::*;
pub use audit::*;
pub use oauth_connections::*;
pub use oauth_states::*;
pub use sealed::*;

/// Who caused a credential event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Cli,
    Schedule,
    Api,
}

impl Actor {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "cli",
            Actor::Schedule => "schedule",
            Actor::Api => "api",
        }
    }

    /// Parses the stored string (job payloads carry it).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cli" => Some(Actor::Cli),
            "schedule" => Some(Actor::Schedule),
            "api" => Some(Actor::Api),
            _ => None,
        }
    }
}

/// `d` as a PostgreSQL interval literal, for `$n::interval`.
fn interval(d: Duration) -> String {
    format!("{} milliseconds", d.as_millis())
}
