//! Webhook ingest benchmark: `cargo bench --bench shim` (`-- --runs N --seconds S
//! --connections 64`).
//!
//! Starts its own durable PostgreSQL cluster under /tmp and the real `penguin-jobs run
//! --no-workers` binary (the shim alone), then drives `POST /webhooks/stripe` with wrk
//! (`apt-get install wrk`) at 64 and at 256 connections. Every request carries a freshly
//! signed ~1 KB Stripe event with a unique id (signed by this harness just before the run;
//! wrk replays them from a file). Prints JSON with requests/s, p50 and p99 per run and their
//! medians, and checks that every request answered 2xx has its row and its job. Each
//! connection count starts with a warm-up run (as long as a run, so PostgreSQL has created
//! the WAL segments later runs recycle) that is checked but not reported, and every run
//! starts right after a CHECKPOINT (the harness drops and creates a database per run, which
//! leaves checkpoint work that a daemon in steady state does not have).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Daemon, arg, fresh_database, median};
use hmac::{Hmac, Mac};
use penguin_jobs::embedded_pg::EmbeddedPostgres;
use serde_json::json;
use sha2::Sha256;

const SECRET: &str = "whsec_benchmark_secret_0123456789";
const WRK_THREADS: usize = 2;

const LUA: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  reqs = {}
  for line in io.lines(args[1] .. "." .. id) do
    local tab = line:find("\t", 1, true)
    reqs[#reqs + 1] = wrk.format("POST", "/webhooks/stripe",
      {["Stripe-Signature"] = line:sub(1, tab - 1), ["Content-Type"] = "application/json"},
      line:sub(tab + 1))
  end
  idx = 0
end
function request()
  idx = idx + 1
  if idx > #reqs then idx = 1 end
  return reqs[idx]
end
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `per_thread` signed events for each wrk thread: `signature \t body` lines.
fn write_requests(prefix: &Path, run: &str, per_thread: usize) {
    let t = chrono::Utc::now().timestamp();
    let padding = "x".repeat(700);
    for thread in 0..WRK_THREADS {
        let file = std::fs::File::create(format!("{}.{thread}", prefix.display())).unwrap();
        let mut out = std::io::BufWriter::new(file);
        for i in 0..per_thread {
            let body = serde_json::to_string(&json!({
                "id": format!("evt_{run}_{thread}_{i}"),
                "object": "event",
                "type": "payment_intent.succeeded",
                "created": t,
                "data": {"object": {"id": format!("pi_{run}_{thread}_{i}"), "object": "payment_intent",
                                    "amount": 4200, "currency": "usd", "description": padding}}
            }))
            .unwrap();
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(format!("{t}.{body}").as_bytes());
            let sig = hex::encode(mac.finalize().into_bytes());
            writeln!(out, "t={t},v1={sig}\t{body}").unwrap();
        }
    }
}

/// Parses wrk's `--latency` output: (requests/s, p50 ms, p99 ms, responses, non-2xx).
fn parse_wrk(out: &str) -> (f64, f64, f64, u64, u64) {
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap()
        } else if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap() / 1000.0
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap() * 1000.0
        } else {
            f64::NAN
        }
    };
    let mut rps = 0.0;
    let (mut p50, mut p99) = (f64::NAN, f64::NAN);
    let (mut total, mut non2xx) = (0, 0);
    for line in out.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap();
        } else if let Some(v) = l.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            p99 = ms(v);
        } else if l.contains("requests in") {
            total = l.split_whitespace().next().unwrap().parse().unwrap();
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            non2xx = v.trim().parse().unwrap();
        }
    }
    (rps, p50, p99, total, non2xx)
}

#[tokio::main]
async fn main() {
    let runs: usize = arg("--runs").unwrap_or(3);
    let seconds: u64 = arg("--seconds").unwrap_or(10);
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is not installed: apt-get install wrk");
        std::process::exit(2);
    }
    let dir = PathBuf::from(format!(
        "/tmp/penguin-jobs-shim-bench-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    std::fs::write(dir.join("bench.lua"), LUA).unwrap();
    let cluster = EmbeddedPostgres::start(&dir.join("postgres"))
        .await
        .expect("start PostgreSQL");

    let mut results = serde_json::Map::new();
    let only: Option<usize> = arg("--connections");
    for conns in [64usize, 256] {
        if only.is_some_and(|o| o != conns) {
            continue;
        }
        let (mut rps_runs, mut p50_runs, mut p99_runs, mut lost_runs) =
            (vec![], vec![], vec![], vec![]);
        // run 0 warms the cluster and the page cache up and is not reported
        for run in 0..=runs {
            let warmup = run == 0;
            let (pool, url) = fresh_database(&cluster, "bench_shim", 2).await;
            let port = free_port();
            std::fs::write(
                dir.join("jobs.toml"),
                format!(
                    "[database]\nmax_connections = 8\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
                     [providers.stripe]\nwebhook_secret = \"file:{}\"\n[maintenance]\nprune = false\n\
                     [oauth]\nrefresh = false\n[api_keys]\nrotation = false\n",
                    dir.join("secret").display()
                ),
            )
            .unwrap();
            let daemon = Daemon(
                Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
                    .arg("--config")
                    .arg(dir.join("jobs.toml"))
                    .args(["run", "--no-workers"])
                    .env("DATABASE_URL", &url)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .unwrap(),
            );
            let client = reqwest::Client::new();
            for _ in 0..200 {
                if client
                    .get(format!("http://127.0.0.1:{port}/healthz"))
                    .send()
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // generous: 40k/s per second of the run, split over the wrk threads
            // the warm-up lasts as long as a run: besides caches, it makes PostgreSQL create
            // the WAL segments a run fills. Later runs recycle them, as a daemon in steady
            // state does; creating (zero-filling) them mid-run costs the first run ~4 ms of p99
            let secs = seconds;
            let per_thread = (40_000 * secs as usize) / WRK_THREADS;
            let prefix = dir.join("requests");
            write_requests(&prefix, &format!("{conns}_{run}"), per_thread);
            // DROP/CREATE DATABASE between runs leave checkpoint work behind: start each run
            // from a finished checkpoint, as a daemon in steady state mostly is
            sqlx::query("checkpoint").execute(&pool).await.unwrap();
            let out = Command::new("wrk")
                .args([
                    &format!("-t{WRK_THREADS}"),
                    &format!("-c{conns}"),
                    &format!("-d{secs}s"),
                    "--timeout",
                    "10s",
                    "--latency",
                    "-s",
                ])
                .arg(dir.join("bench.lua"))
                .arg(format!("http://127.0.0.1:{port}"))
                .arg("--")
                .arg(&prefix)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (rps, p50, p99, total, non2xx) = parse_wrk(&text);
            drop(daemon);
            let acked = total - non2xx;
            let rows: i64 = sqlx::query_scalar("select count(*) from penguin.inbound_events")
                .fetch_one(&pool)
                .await
                .unwrap();
            let jobs: i64 = sqlx::query_scalar(
                "select count(*) from penguin.jobs j join penguin.inbound_events e
                    on (j.payload->>'inbound_event_id')::bigint = e.id where j.kind = 'stripe.event'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            // every 2xx has its row and its job (rows may exceed: requests cut at the end)
            let lost = (acked as i64 - rows).max(0) + (rows - jobs).abs();
            if warmup {
                eprintln!(
                    "{conns} connections, warm-up: {rps:.0} req/s, p99 {p99:.2} ms, lost {lost}"
                );
                assert_eq!(lost, 0, "acknowledged requests without their row or job");
                pool.close().await;
                continue;
            }
            eprintln!(
                "{conns} connections, run {}: {rps:.0} req/s, p50 {p50:.2} ms, p99 {p99:.2} ms, \
                 {total} answered ({non2xx} non-2xx), {rows} rows, {jobs} jobs, lost {lost}",
                run
            );
            if non2xx > 0 || rps == 0.0 {
                eprintln!("{text}");
            }
            rps_runs.push(rps);
            p50_runs.push(p50);
            p99_runs.push(p99);
            lost_runs.push(lost as f64);
            pool.close().await;
            for t in 0..WRK_THREADS {
                let _ = std::fs::remove_file(format!("{}.{t}", prefix.display()));
            }
        }
        results.insert(
            format!("connections_{conns}"),
            json!({
                "requests_per_s": { "median": median(&rps_runs), "runs": rps_runs },
                "p50_ms": { "median": median(&p50_runs), "runs": p50_runs },
                "p99_ms": { "median": median(&p99_runs), "runs": p99_runs },
                "acknowledged_but_missing": lost_runs.iter().sum::<f64>(),
            }),
        );
    }
    results.insert("seconds_per_run".into(), json!(seconds));
    results.insert(
        "postgres".into(),
        json!("embedded, fsync=on, synchronous_commit=on, same machine"),
    );
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    let _ = cluster.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
