//! `run` and `migrate`: the daemon (assembled by [`crate::daemon::Daemon`]) until a
//! signal, and the migrations alone.
//!
//! Must never exit on the first signal without draining (the second one may).

use super::*;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not apply migrations at start (the schema must already be current).
    #[arg(long)]
    pub no_migrate: bool,
    /// Do not serve the HTTP shim ([http] listen): workers and schedules only.
    #[arg(long)]
    pub no_http: bool,
    /// Do not serve the admin listener ([admin] listen): no admin API, /metrics or
    /// dashboard from this daemon.
    #[arg(long)]
    pub no_admin: bool,
    /// Run no worker pools: the HTTP shim and the schedules only (jobs wait for another
    /// daemon's workers).
    #[arg(long, conflicts_with = "no_http")]
    pub no_workers: bool,
}

pub(super) async fn run_daemon(config: Config, args: RunArgs) -> anyhow::Result<()> {
    tracing::info!(
        config = %config.describe_source(),
        version = env!("CARGO_PKG_VERSION"),
        "penguin-jobs starting"
    );
    crate::process::raise_open_files_limit_logged();
    let systemd = std::sync::Arc::new(crate::systemd::Notifier::from_env());
    systemd.status("starting: connecting and migrating");
    let roles = Roles {
        migrate: !args.no_migrate,
        http: !args.no_http,
        workers: !args.no_workers,
        admin: !args.no_admin,
    };
    let daemon = Daemon::build(config, roles).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    if systemd.is_active() {
        let serving = serving_status(&daemon);
        tokio::spawn(tell_systemd(
            systemd,
            daemon.readiness(),
            serving,
            shutdown.clone(),
        ));
    }
    daemon.run_until_stopped(shutdown).await
}

/// What the daemon serves, for `systemctl status`.
fn serving_status(daemon: &Daemon) -> String {
    let mut parts = vec!["serving".to_string()];
    if let Some(a) = daemon.local_addr() {
        parts.push(format!("shim on {a}"));
    }
    if let Some(a) = daemon.admin_addr() {
        parts.push(format!("admin on {a}"));
    }
    parts.join(", ")
}

/// Under systemd (`Type=notify`): READY once the pools run, WATCHDOG every half
/// `WatchdogSec` while the runtime answers, STOPPING when the drain begins.
async fn tell_systemd(
    systemd: std::sync::Arc<crate::systemd::Notifier>,
    ready: crate::readiness::Readiness,
    serving: String,
    shutdown: CancellationToken,
) {
    let watchdog = systemd.watchdog_every();
    let ping = async {
        let Some(every) = watchdog else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            systemd.watchdog();
        }
    };
    let lifecycle = async {
        tokio::select! {
            () = ready.wait_started() => systemd.ready(&serving),
            () = shutdown.cancelled() => {}
        }
        shutdown.cancelled().await;
        systemd.stopping("draining: no new claims, running jobs finish");
    };
    // the watchdog is fed through the drain too, until the process exits
    tokio::join!(ping, lifecycle);
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once (leases will expire and
/// the jobs be rescued).
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting without waiting for running jobs");
    std::process::exit(130);
}

/// `migrate`: the migrations and the kinds' defaults, nothing else.
pub(super) async fn migrate_only(config: &Config) -> anyhow::Result<()> {
    let (pool, _) = connect(config, Embedded::Attach).await?;
    let kinds = registry(config)?;
    migrate(&pool, &kinds).await?;
    println!(
        "migrations applied; {} kinds registered",
        kinds.kinds().len()
    );
    Ok(())
}
