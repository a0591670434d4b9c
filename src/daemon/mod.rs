//! The daemon, assembled: [`Daemon::build`] checks the configuration, connects (starting
//! the embedded cluster when no database is configured), migrates (or checks the schema
//! is current), builds the registry and binds the shim's listener; on the embedded cluster
//! it works as the runtime role, not as the superuser that migrated; [`Daemon::run_until_stopped`] serves the shim, runs the
//! worker pools and the scheduler until the shutdown token is cancelled, drains, and
//! closes the pool and the cluster. The CLI's `run` is these two calls and a signal
//! handler; tests and embedders call them the same way.
//!
//! Must never exit the process (the caller decides), and never leave the embedded cluster
//! running after a failed start.

mod connect;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use connect::{Embedded, connect, connect_as_runtime_role, migrate};

use crate::config::Config;
use crate::embedded_pg::EmbeddedPostgres;
use crate::jobs::{Deps, Kinds, Registry};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::scheduler::{self, Schedule};

/// After the workers drained, how long the shim may take to close its connections.
const SHIM_DRAIN: Duration = Duration::from_secs(5);

/// What one daemon process does (`run --no-migrate / --no-http / --no-workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Apply the migrations at start (else check that the schema is current, refusing to
    /// start if not, and only write the kinds' defaults).
    pub migrate: bool,
    /// Serve the HTTP shim on `[http] listen`.
    pub http: bool,
    /// Run the worker pools.
    pub workers: bool,
    /// Serve the admin listener on `[admin] listen`.
    pub admin: bool,
}

impl Default for Roles {
    fn default() -> Self {
        Self {
            migrate: true,
            http: true,
            workers: true,
            admin: true,
        }
    }
}

/// A daemon ready to run: connected, migrated, its listener bound.
pub struct Daemon {
    config: Config,
    roles: Roles,
    pool: PgPool,
    cluster: Option<EmbeddedPostgres>,
    registry: Arc<Registry>,
    schedules: Vec<Schedule>,
    listener: Option<TcpListener>,
    admin_listener: Option<TcpListener>,
    metrics: Arc<Metrics>,
    ready: Readiness,
}

impl Daemon {
    /// Checks every part of `config` before anything starts, then connects, migrates and
    /// binds. On a failure after the embedded cluster started, the cluster is stopped.
    pub async fn build(config: Config, roles: Roles) -> anyhow::Result<Daemon> {
        let schedules = scheduler::from_config(&config)?;
        let keyring = crate::secrets::Keyring::from_config(&config)?;
        crate::providers::oauth::Providers::from_config(&config)?.check_secrets()?;
        let kinds = Kinds::builtin(&config)?;
        for s in &schedules {
            kinds
                .check(&s.job)
                .map_err(|e| anyhow::anyhow!("schedules.{}: {e}", s.name))?;
        }
        let (connection, cluster) = connect(&config, Embedded::Start).await?;
        let pool = match prepare_schema(&config, roles, &kinds, connection, cluster.is_some()).await
        {
            Ok(pool) => pool,
            Err(e) => {
                stop_cluster(cluster).await;
                return Err(e);
            }
        };
        let metrics = Metrics::new();
        let deps =
            Deps::new(pool.clone()).map(|d| d.with_keyring(keyring).with_metrics(metrics.clone()));
        let prepared = match deps {
            Ok(deps) => prepare(&config, roles, &deps).await,
            Err(e) => Err(e.into()),
        };
        match prepared {
            Ok((registry, listener, admin_listener)) => {
                let ready = Readiness::new(pool.clone(), roles.workers);
                Ok(Daemon {
                    config,
                    roles,
                    pool,
                    cluster,
                    registry,
                    schedules,
                    listener,
                    admin_listener,
                    metrics,
                    ready,
                })
            }
            Err(e) => {
                close(pool, cluster).await;
                Err(e)
            }
        }
    }

    /// The daemon's database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The address the shim listens on (`None` without the `http` role).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// What `/readyz` answers; [`Readiness::wait_started`] returns once the daemon serves.
    pub fn readiness(&self) -> Readiness {
        self.ready.clone()
    }

    /// The address the admin listener listens on (`None` without it).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Runs until `shutdown` is cancelled, then drains the workers, gives the shim's
    /// clients [`SHIM_DRAIN`] to leave, and closes the pool and the embedded cluster.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Daemon {
            config,
            roles,
            pool,
            cluster,
            registry,
            schedules,
            listener,
            admin_listener,
            metrics,
            ready,
        } = self;
        let result = async {
            let serving = Serving {
                config: &config,
                pool: &pool,
                registry: &registry,
                ready: &ready,
                metrics: &metrics,
                shutdown: &shutdown,
            };
            let shim = match listener {
                Some(listener) => Some(serve_shim(&serving, listener)?),
                None => None,
            };
            let admin = match admin_listener {
                Some(listener) => Some(serve_admin(&serving, listener, roles.workers)?),
                None => None,
            };
            let cron = tokio::spawn(scheduler::run(pool.clone(), schedules, shutdown.clone()));
            let alerts = roles.workers.then(|| {
                tokio::spawn(crate::alerts::run(
                    pool.clone(),
                    crate::alerts::Settings::from_config(&config),
                    ready.clone(),
                    shutdown.clone(),
                ))
            });
            let stopping = {
                let (ready, shutdown) = (ready.clone(), shutdown.clone());
                tokio::spawn(async move {
                    shutdown.cancelled().await;
                    ready.stopping();
                })
            };
            if roles.workers {
                crate::runtime::run_reporting(
                    &config,
                    pool.clone(),
                    registry,
                    shutdown,
                    Some(&ready),
                    metrics.clone(),
                )
                .await?;
            } else {
                tracing::info!("no worker pools (--no-workers)");
                shutdown.cancelled().await;
            }
            let _ = stopping.await;
            let _ = cron.await;
            if let Some(alerts) = alerts {
                let _ = alerts.await;
            }
            for server in [shim, admin].into_iter().flatten() {
                stop_shim(server).await;
            }
            anyhow::Ok(())
        }
        .await;
        close(pool, cluster).await;
        result
    }
}

/// Migrates (or, with `--no-migrate`, checks that the schema is current) and writes the
/// kinds' defaults through `connection`; returns the pool the daemon works with:
/// `connection` itself, or on the embedded cluster a pool as the runtime role (the
/// superuser's `connection` is then closed).
async fn prepare_schema(
    config: &Config,
    roles: Roles,
    kinds: &Kinds,
    connection: PgPool,
    embedded: bool,
) -> anyhow::Result<PgPool> {
    let ready = async {
        if roles.migrate {
            migrate(&connection, kinds).await?;
        } else {
            crate::queue::check_migrated(&connection)
                .await
                .context("checking the schema (run --no-migrate)")?;
            crate::queue::sync_kinds(&connection, &kinds.kind_defaults())
                .await
                .context("writing kind defaults to penguin.kinds")?;
        }
        if embedded {
            connect_as_runtime_role(config, &connection).await
        } else {
            Ok(connection.clone())
        }
    }
    .await;
    if embedded || ready.is_err() {
        connection.close().await;
    }
    ready
}

/// The registry, the shim's listener and the admin listener.
async fn prepare(
    config: &Config,
    roles: Roles,
    deps: &Deps,
) -> anyhow::Result<(Arc<Registry>, Option<TcpListener>, Option<TcpListener>)> {
    let registry = Arc::new(Registry::builtin(config, deps)?);
    let listener = if roles.http {
        let listener = TcpListener::bind(&config.http.listen)
            .await
            .with_context(|| format!("cannot listen on http.listen = {}", config.http.listen))?;
        Some(listener)
    } else {
        None
    };
    let admin = if roles.admin {
        bind_admin(config).await?
    } else {
        None
    };
    Ok((registry, listener, admin))
}

/// Binds `[admin] listen`. A default address already in use is warned about and the
/// daemon runs without the admin listener (the workers matter more than the dashboard);
/// an address the config names must be free.
async fn bind_admin(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    let address = config.admin.listen_address();
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(Some(listener)),
        Err(e) if config.admin.listen.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                listen = %address,
                "the admin listener's default address is in use (another daemon on this \
                 host?): running without the admin API, /metrics and the dashboard; set \
                 [admin] listen to another address, or run --no-admin to silence this"
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!("cannot listen on admin.listen = {address} (run --no-admin to go without)")
        }),
    }
}

/// What the listeners share.
#[derive(Clone, Copy)]
struct Serving<'a> {
    config: &'a Config,
    pool: &'a PgPool,
    registry: &'a Arc<Registry>,
    ready: &'a Readiness,
    metrics: &'a Arc<Metrics>,
    shutdown: &'a CancellationToken,
}

/// Serves the shim on `listener` until `shutdown`.
fn serve_shim(s: &Serving<'_>, listener: TcpListener) -> anyhow::Result<JoinHandle<()>> {
    let config = s.config;
    let state = crate::http::AppState::new(config, s.pool.clone(), s.registry.clone())?
        .with_readiness(s.ready.clone())
        .with_metrics(s.metrics.clone());
    tracing::info!(listen = %config.http.listen, "HTTP shim listening");
    if state.has_no_tokens() {
        tracing::warn!(
            "no API token is configured ([http] api_tokens and [http.tokens.*] are empty): \
             POST /v1/jobs refuses every request; webhooks and the OAuth callback still work"
        );
    }
    let http = config.http.clone();
    let stop = s.shutdown.clone();
    Ok(tokio::spawn(async move {
        crate::http::serve_on(listener, state, &http, stop).await;
    }))
}

/// Serves the admin listener on `listener` until `shutdown`.
fn serve_admin(
    s: &Serving<'_>,
    listener: TcpListener,
    workers: bool,
) -> anyhow::Result<JoinHandle<()>> {
    let config = s.config;
    let served = if workers {
        crate::runtime::queues(config, s.registry)
    } else {
        Default::default()
    };
    let state = crate::admin::AdminState::new(config, s.pool, s.ready.clone(), served)?
        .with_metrics(s.metrics.clone());
    let address = listener.local_addr().map_or_else(
        |_| config.admin.listen_address().to_string(),
        |a| a.to_string(),
    );
    tracing::info!(listen = %address, "admin listener (admin API, /metrics, dashboard) listening");
    if config.admin.tokens.is_empty() {
        tracing::warn!(
            "no admin token is configured ([admin] tokens is empty): the admin API and the \
             dashboard refuse every request; /healthz, /readyz and /metrics still answer"
        );
    }
    let http = config.http.clone();
    let stop = s.shutdown.clone();
    Ok(tokio::spawn(async move {
        crate::admin::serve_on(listener, state, &http, stop).await;
    }))
}

/// Graceful shutdown waits for open connections to close; a slow or idle client must not
/// hold the daemon's exit (systemd would SIGKILL it). In-flight requests had the whole
/// drain of the workers to finish.
async fn stop_shim(mut shim: JoinHandle<()>) {
    if tokio::time::timeout(SHIM_DRAIN, &mut shim).await.is_err() {
        tracing::warn!(
            after = %humantime::format_duration(SHIM_DRAIN),
            "HTTP clients still connected after shutdown; closing their connections"
        );
        shim.abort();
    }
}

/// Closes the pool, then stops the embedded cluster if this process started it.
async fn close(pool: PgPool, cluster: Option<EmbeddedPostgres>) {
    pool.close().await;
    stop_cluster(cluster).await;
}

/// Stops the embedded cluster if this process started it.
async fn stop_cluster(cluster: Option<EmbeddedPostgres>) {
    if let Some(cluster) = cluster
        && let Err(e) = cluster.stop().await
    {
        tracing::error!(error = %e, "could not stop the embedded PostgreSQL");
    }
}

/// The shim checks jobs through the daemon's registry (the shim imports no kind).
impl<H: ?Sized + crate::jobs::Describe> crate::http::EnqueueCheck for crate::jobs::Catalog<H> {
    fn check(&self, job: &crate::queue::NewJob) -> Result<(), String> {
        crate::jobs::Catalog::check(self, job).map_err(|e| e.to_string())
    }
    fn internal(&self, kind: &str) -> Option<bool> {
        crate::jobs::Catalog::internal(self, kind)
    }
    fn payload_schemas(&self) -> Vec<crate::http::openapi::KindSchema> {
        let mut kinds = self.kinds();
        kinds.sort_unstable();
        kinds
            .into_iter()
            .filter_map(|kind| {
                let (item, _) = self.get(kind)?;
                Some(crate::http::openapi::KindSchema {
                    kind: kind.to_string(),
                    internal: item.internal(),
                    schema: item.payload_schema(),
                })
            })
            .collect()
    }
}
