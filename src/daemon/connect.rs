//! The database a daemon or a command works on: the configured one, or else the embedded
//! cluster under the data directory (started by `run`, attached to by every other
//! command), with its own database `penguin_jobs`; and the migrations.
//!
//! On the embedded cluster the superuser migrates and the daemon's pool works as the
//! runtime role ([`connect_as_runtime_role`]); commands attached to it connect as the
//! superuser, as an operator would with the owner role.
//!
//! Must never log a database password (URLs are redacted) or start a second embedded
//! cluster over a running one.

use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::config::{Config, redact_url};
use crate::embedded_pg::EmbeddedPostgres;
use crate::jobs::{Catalog, Describe};
use crate::queue::{
    self,
    grants::{self, DEFAULT_RUNTIME_ROLE, RuntimeRole},
};

/// The database of the embedded cluster.
const EMBEDDED_DATABASE: &str = "penguin_jobs";

/// What to do when no database is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    /// Start the embedded cluster under the data directory (`run`).
    Start,
    /// Attach to the embedded cluster a running daemon started (every other command).
    Attach,
}

/// Connects to the configured database, or else to the embedded cluster: started by
/// `run` ([`Embedded::Start`]), attached to by the other commands. The cluster, when
/// started here, is returned: stop it after closing the pool.
pub async fn connect(
    config: &Config,
    embedded: Embedded,
) -> anyhow::Result<(PgPool, Option<EmbeddedPostgres>)> {
    let options = pool_options(config);
    if let Some(url) = config.database_url()? {
        let pool = options
            .connect(url.expose_secret())
            .await
            .with_context(|| format!("cannot connect to {}", redact_url(&url)))?;
        return Ok((pool, None));
    }
    let dir = config.daemon.data_dir.join("postgres");
    let (admin_url, url, cluster) = if embedded == Embedded::Start {
        let cluster = EmbeddedPostgres::start(&dir).await?;
        tracing::info!(
            dir = %dir.display(),
            "started the embedded PostgreSQL (no database configured); connect with: psql -h {} -p {} -U postgres {EMBEDDED_DATABASE}",
            cluster.socket_dir().display(),
            cluster.port(),
        );
        (
            cluster.url("postgres"),
            cluster.url(EMBEDDED_DATABASE),
            Some(cluster),
        )
    } else {
        match (
            EmbeddedPostgres::running_url(&dir, "postgres"),
            EmbeddedPostgres::running_url(&dir, EMBEDDED_DATABASE),
        ) {
            (Some(admin), Some(url)) => (admin, url, None),
            _ => bail!(
                "no database configured: set DATABASE_URL or [database] url, or start `penguin-jobs run`, \
                 which runs an embedded PostgreSQL under {}",
                dir.display()
            ),
        }
    };
    create_embedded_database(&admin_url).await?;
    let pool = options.connect(&url).await?;
    Ok((pool, cluster))
}

/// The settings of every pool the daemon or a command opens.
fn pool_options(config: &Config) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// On the embedded cluster, the superuser migrates; the daemon works as the runtime role
/// (see `queue::grants`): this gives the role its privileges through `superuser` (a pool
/// on the embedded database) and connects a pool as that role, over the same socket.
pub async fn connect_as_runtime_role(
    config: &Config,
    superuser: &PgPool,
) -> anyhow::Result<PgPool> {
    let role = RuntimeRole::new(DEFAULT_RUNTIME_ROLE, None)?.with_login();
    grants::apply(superuser, &role)
        .await
        .with_context(|| format!("granting the runtime role {} its privileges", role.name()))?;
    let options = (*superuser.connect_options()).clone().username(role.name());
    pool_options(config)
        .connect_with(options)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the embedded PostgreSQL as {}",
                role.name()
            )
        })
}

/// The embedded cluster keeps our data in a database of its own: created when missing.
async fn create_embedded_database(admin_url: &str) -> anyhow::Result<()> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(EMBEDDED_DATABASE)
            .fetch_one(&admin)
            .await?;
    if !exists {
        // a CLI command attaching while the daemon starts may race us to it
        let created = sqlx::query(&format!("create database {EMBEDDED_DATABASE}"))
            .execute(&admin)
            .await;
        match created {
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() || e.code().as_deref() == Some("42P04") => {}
            other => {
                other?;
            }
        }
    }
    admin.close().await;
    Ok(())
}

/// Applies the migrations and writes the kinds' defaults to `penguin.kinds`.
pub async fn migrate<H: ?Sized + Describe>(
    pool: &PgPool,
    kinds: &Catalog<H>,
) -> anyhow::Result<()> {
    queue::migrate(pool).await.context("applying migrations")?;
    queue::sync_kinds(pool, &kinds.kind_defaults())
        .await
        .context("writing kind defaults to penguin.kinds")?;
    Ok(())
}
