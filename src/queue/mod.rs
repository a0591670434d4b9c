//! The storage: every SQL statement that touches `penguin.jobs`, `penguin.dead_letters`,
//! `penguin.kinds` and `penguin.idle_workers` lives under this module, with the migrations of
//! the whole schema ([`schema`]) and the runtime role's privileges on it ([`grants`]).
//!
//! It stores rows and knows no job kind: kinds arrive as plain [`KindDefaults`] data, and
//! outcomes as plain [`Outcome`] values. It must never call a handler, a provider or the
//! HTTP layer, and must never hold a row lock across anything but its own statement.

pub mod admin;
pub mod claim;
pub mod daemons;
pub mod email;
pub mod enqueue;
pub mod grants;
pub mod horizon;
pub mod inbound;
pub mod integrations;
pub mod outcome;
pub mod payments;
pub mod prune;
pub mod queues;
pub mod rescue;
pub mod schema;
pub mod state;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

pub use admin::*;
pub use claim::{
    ClaimPosition, ClaimRequest, ClaimedJob, claim, claim_from, extend_leases, forget_claims,
    forget_idle_claims, forget_stale_idle_marks, mark_busy, mark_idle, mark_started, release,
};
pub use daemons::{
    UnservedQueue, WaitingKind, register_daemon, unregister_daemon, unserved_queues, waiting_kinds,
};
pub use enqueue::{
    Enqueued, NewJob, RESERVED_KEY_PREFIX, enqueue, enqueue_many, enqueue_many_reporting,
    reserved_key,
};
pub use inbound::{NewInboundEvent, ReplayToken, remember_replay_tokens, store_inbound};
pub use outcome::{
    DeadReason, ErrorEntry, FlushCounts, Outcome, bury_unwritable, write_outcomes,
    write_outcomes_started,
};
pub use prune::{Pruned, prune, prune_inbound_events, prune_replay_tokens};
pub use queues::{
    FinishedCounts, QueueDeadLetters, QueueDepth, QueueMinute, QueuePause, QueueWait, add_finished,
    dead_lettered_since, oldest_due_per_queue, open_dead_letters, pause_queue, paused_queues,
    prune_queue_minutes, queue_depths, queue_minutes, resume_queue, sample_depths,
};
pub use rescue::{CLAIMS_CHECKED_AFTER, RescueCounts, forget_finished_claims, rescue_expired};
pub use schema::{check_migrated, migrate};
pub use state::{JobState, UnknownState};

/// The channel idle workers LISTEN on; the payload is a comma-separated list of queues.
pub const NOTIFY_CHANNEL: &str = "penguin_jobs";

/// Storage errors. Database errors keep their chain; constraint and function errors raised
/// by our own SQL carry a message meant for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: i64 },
    #[error("{0}")]
    Conflict(String),
}

impl Error {
    /// The statement was cancelled by `statement_timeout` (SQLSTATE 57014).
    pub fn is_statement_timeout(&self) -> bool {
        matches!(self, Error::Database(sqlx::Error::Database(db)) if db.code().as_deref() == Some("57014"))
    }

    /// Whether this failure is about reaching the database (connection lost or refused,
    /// server restarting, pool exhausted, deadlock, serialization failure, out of
    /// resources) rather than about the statement or its data: only such a failure is
    /// worth retrying unchanged. A data error (say, text PostgreSQL refuses) fails again.
    pub fn is_transient(&self) -> bool {
        let Error::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 08: connection exception; 57P: operator intervention (shutdown, crash
                // recovery); 53: insufficient resources; 40001/40P01: serialization
                // failure, deadlock; 55P03: lock not available
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code.starts_with("53")
                    || code == "40001"
                    || code == "40P01"
                    || code == "55P03"
            }),
            _ => false,
        }
    }

    /// The message of an exception raised by our own SQL (for example an unknown kind
    /// in `penguin.enqueue`), if this is one.
    pub fn user_message(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("22023") | Some("22004")) =>
            {
                Some(db.message().to_string())
            }
            Error::Invalid(m) | Error::Conflict(m) => Some(m.clone()),
            Error::NotFound { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

/// One kind's defaults, as written into `penguin.kinds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindDefaults {
    pub kind: String,
    pub queue: String,
    pub max_attempts: i32,
    pub priority: i16,
}

/// Upserts every known kind's defaults into `penguin.kinds` in one statement. Kinds that
/// another (newer) daemon registered are left alone.
pub async fn sync_kinds(pool: &PgPool, kinds: &[KindDefaults]) -> Result<(), Error> {
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    let queues: Vec<&str> = kinds.iter().map(|k| k.queue.as_str()).collect();
    let attempts: Vec<i32> = kinds.iter().map(|k| k.max_attempts).collect();
    let priorities: Vec<i16> = kinds.iter().map(|k| k.priority).collect();
    sqlx::query(
        "insert into penguin.kinds (kind, queue, max_attempts, priority)
         select * from unnest($1::text[], $2::text[], $3::int[], $4::smallint[])
         on conflict (kind) do update
            set queue = excluded.queue, max_attempts = excluded.max_attempts,
                priority = excluded.priority, updated_at = now()
            where (penguin.kinds.queue, penguin.kinds.max_attempts, penguin.kinds.priority)
               is distinct from (excluded.queue, excluded.max_attempts, excluded.priority)",
    )
    .bind(&names)
    .bind(&queues)
    .bind(&attempts)
    .bind(&priorities)
    .execute(pool)
    .await?;
    Ok(())
}

/// A whole job row, for operators.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: String,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub leased_by: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub unique_key: Option<String>,
    pub tenant_id: Option<uuid::Uuid>,
    pub errors: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub attempted_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// For a job in the dead letters (state `dead`): the dead letter's id.
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<i64>,
    /// For a job in the dead letters: why it was dead-lettered.
    #[sqlx(default)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
}

/// A whole dead-letter row, for operators.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub job_id: i64,
    pub queue: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i16,
    pub attempt: i32,
    pub max_attempts: i32,
    pub unique_key: Option<String>,
    pub tenant_id: Option<uuid::Uuid>,
    pub errors: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_as: Option<i64>,
}
