//! The chaos suite (`cargo test --test chaos`): each experiment injects one fault on
//! purpose (a kill -9, a database restart, a provider answering garbage, a rolling deploy,
//! a slow client, an extreme config value) and fails when anything is lost, stalls or
//! panics. Each prints the figures it measured; RELIABILITY.md lists them.
//!
//! `CHAOS_LONG=1` runs the longer versions meant for benchmarks; the default versions are
//! bounded so the whole suite stays within a few minutes on 2 cores.

#[path = "../support/mod.rs"]
mod support;

mod config_values;
mod kill_nine;
mod pg_restart;
mod provider_faults;
mod rolling_deploy;
mod sink;
mod slow_clients;

/// Whether the long versions of the experiments were asked for (`CHAOS_LONG=1`).
#[allow(dead_code)]
fn long_mode() -> bool {
    std::env::var("CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// A free local TCP port (bound, then let go) for a daemon's shim.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until the shim at `base` answers `/healthz` (30 s at most); returns a client
/// whose requests time out after `timeout`.
async fn wait_for_shim(base: &str, timeout: std::time::Duration) -> reqwest::Client {
    let client = reqwest::Client::builder().timeout(timeout).build().unwrap();
    let up = std::time::Instant::now();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            up.elapsed() < std::time::Duration::from_secs(30),
            "the shim never came up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    client
}

/// The bearer token the experiments' shims accept (`api_tokens = ["env:CHAOS_API_TOKEN"]`).
const API_TOKEN: &str = "chaos-token-0123456789-0123456789-0123456789";

/// Spawns `cmd` (a `penguin-jobs ... run`, possibly wrapped) as a daemon on `url` with the
/// shim's token in its environment, logging to `dir/daemon.log`.
fn spawn_with_shim(
    mut cmd: std::process::Command,
    url: &str,
    dir: &std::path::Path,
) -> support::daemon::DaemonProcess {
    let child = cmd
        .env("DATABASE_URL", url)
        .env("CHAOS_API_TOKEN", API_TOKEN)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    support::daemon::DaemonProcess(child)
}
