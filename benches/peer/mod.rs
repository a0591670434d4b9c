//! The peer of the queue benchmark (`--peer`): graphile_worker-rs 0.14 drains the same 200k
//! no-op jobs on the same cluster in each run, for the side-by-side ratio of issue 16.
//!
//! The peer lives in `tools/graphile-bench`, a Cargo project of its own (its own workspace
//! and lock file), so the daemon's build never pulls graphile_worker or its sqlx 0.9 in.
//! `--peer` builds it once, before the cluster starts (the command is printed; a failed
//! build ends the bench), then runs it once per run in a fresh database: it installs
//! graphile's schema, enqueues through `add_jobs`, starts a worker with the bench's
//! `--concurrency`, a local queue of PEER_LOCAL_QUEUE and batched completions, and reports
//! jobs/s from the worker's start to the last completion committed (see its `//!` doc).
//! The ratio compares that with our drain from the daemon's start.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use serde_json::{Value, json};

/// graphile_worker's local queue: the size issue 16 names for the comparison.
const PEER_LOCAL_QUEUE: usize = 500;
const MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tools/graphile-bench/Cargo.toml"
);

/// The built peer tool.
pub struct Peer {
    binary: PathBuf,
}

impl Peer {
    /// With `--peer` on the command line, builds the tool (exiting if that fails); else None.
    pub fn from_args() -> Option<Self> {
        if !std::env::args().any(|a| a == "--peer") {
            return None;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let args = [
            "build",
            "--release",
            "--manifest-path",
            MANIFEST,
            "--message-format=json-render-diagnostics",
        ];
        eprintln!("--peer: building the peer: {cargo} {}", args.join(" "));
        let output = Command::new(&cargo)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| fail(&format!("could not run {cargo}: {e}")));
        if !output.status.success() {
            fail(&format!("building {MANIFEST} failed ({})", output.status));
        }
        // the last line naming an executable is the tool's
        let binary = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
            .next_back()
            .unwrap_or_else(|| fail("cargo built the peer but named no executable"));
        Some(Self { binary })
    }

    /// One drain of `jobs` by the peer in a fresh database on `cluster`: the tool's report.
    pub async fn drain(
        &self,
        cluster: &EmbeddedPostgres,
        jobs: usize,
        concurrency: usize,
    ) -> Value {
        let (pool, url) = super::common::fresh_database(cluster, "bench_peer", 1).await;
        pool.close().await;
        let output = tokio::process::Command::new(&self.binary)
            .args(["--url", &url, "--jobs", &jobs.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--local-queue", &PEER_LOCAL_QUEUE.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .await
            .expect("run the peer");
        assert!(
            output.status.success(),
            "the peer failed ({})",
            output.status
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("the peer's JSON line");
        eprintln!(
            "  peer: graphile_worker-rs {} drained {jobs} jobs at {}/s from the worker's start (enqueue {}/s)",
            report["version"],
            report["drain_from_worker_start_jobs_per_s"],
            report["enqueue_jobs_per_s"]
        );
        report
    }
}

fn fail(message: &str) -> ! {
    eprintln!("--peer: {message}");
    std::process::exit(1)
}

/// Adds the peer's figures to `report`: its drain rate in every run (and their median), the
/// tool's reports, and our median drain from the daemon's start over the peer's median.
pub fn add_to_report(report: &mut Value, peer_reports: &[Value], ours_from_start_median: f64) {
    let rates: Vec<f64> = peer_reports
        .iter()
        .map(|r| r["drain_from_worker_start_jobs_per_s"].as_f64().unwrap())
        .collect();
    let median = super::common::median(&rates);
    report["peer_graphile_worker_rs"] = json!({
        "median": median, "runs": rates, "reports": peer_reports,
    });
    report["ratio_from_daemon_start_vs_peer"] = json!(ours_from_start_median / median);
}
