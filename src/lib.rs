//! penguin-jobs: a durable PostgreSQL job queue and worker daemon for PenguinMails'
//! third-party integrations.
//!
//! Data flows one way: an enqueue (SQL, Rust, CLI, HTTP) writes a row through [`queue`];
//! the [`runtime`] claims rows in batches and runs them through the [`jobs`] registry,
//! whose handlers call out through [`providers`]; outcomes flow back to [`queue`].

pub mod admin;
pub mod alerts;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod embedded_pg;
pub mod error_class;
pub mod health;
pub mod http;
pub mod jobs;
pub mod kind_names;
pub mod metrics;
pub mod process;
pub mod providers;
pub mod queue;
pub mod readiness;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod systemd;
pub mod telemetry;
pub mod text;
pub mod webhooks;
