//! `--observed`: the no-op drain with operators watching, against the same drain without:
//! a Prometheus scrape of `/metrics` every second and the dashboard open in headless
//! Chromium (Debian's chromium, playwright-core from npm under target/tmp/browser-node;
//! it refreshes every 5 s by itself), both on the admin listener with the defaults users
//! get (`[admin] stats_interval = "5s"`). Each run drains `OBSERVED_JOBS` jobs twice,
//! each on a fresh database and daemon, the order alternating between runs so that the
//! machine's drift does not favour one side; rates are jobs / (last finished_at − first
//! attempted_at). Prints the medians, their ratio (goal: at least 0.95) and what the
//! observers did during each observed drain. `--observers metrics` or `dashboard` keeps
//! one of the two (what each costs); the default is both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use penguin_jobs::embedded_pg::EmbeddedPostgres;
use serde_json::json;

use super::{Daemon, drain_jobs, fresh_database, median, wait_idle};

/// Jobs per drain: long enough (~10 s here) for ten scrapes and two dashboard refreshes.
pub const OBSERVED_JOBS: usize = 1_000_000;

/// The admin listener the bench's daemons serve, and its token.
pub struct Admin {
    pub base: String,
    pub token: String,
}

/// Who watches the observed drains: `--observers metrics|dashboard|both` (default both;
/// one alone tells what each costs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observers {
    Metrics,
    Dashboard,
    Both,
}

impl Observers {
    /// From `--observers`; `None` for a value that is none of the three.
    pub fn from_args() -> Option<Self> {
        match super::common::arg::<String>("--observers").as_deref() {
            None | Some("both") => Some(Self::Both),
            Some("metrics") => Some(Self::Metrics),
            Some("dashboard") => Some(Self::Dashboard),
            Some(_) => None,
        }
    }

    fn scrape(self) -> bool {
        self != Self::Dashboard
    }

    fn browse(self) -> bool {
        self != Self::Metrics
    }
}

/// What the observers did during one drain.
struct Watching {
    scrapes: Arc<AtomicU64>,
    scrape_failures: Arc<AtomicU64>,
    scrape_bytes: Arc<AtomicU64>,
    scraper: Option<tokio::task::JoinHandle<()>>,
    browser: Option<Child>,
    count_file: PathBuf,
}

impl Watching {
    /// Starts the scraper and the browser, and waits until the page has loaded once.
    async fn start(admin: &Admin, dir: &Path, observers: Observers) -> Self {
        let scrapes = Arc::new(AtomicU64::new(0));
        let scrape_failures = Arc::new(AtomicU64::new(0));
        let scrape_bytes = Arc::new(AtomicU64::new(0));
        let scraper = observers.scrape().then(|| {
            let (url, ok, failed, bytes) = (
                format!("{}/metrics", admin.base),
                scrapes.clone(),
                scrape_failures.clone(),
                scrape_bytes.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let body = r.bytes().await.map(|b| b.len()).unwrap_or(0);
                            bytes.store(body as u64, Ordering::Relaxed);
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        });
        let count_file = dir.join("dashboard-refreshes");
        let _ = std::fs::remove_file(&count_file);
        let browser = observers.browse().then(|| {
            Command::new("node")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/observed/dashboard.cjs"))
                .env("NODE_PATH", browser_modules())
                .env("BASE", &admin.base)
                .env("TOKEN", &admin.token)
                .env(
                    "CHROMIUM",
                    std::env::var("PENGUIN_JOBS_CHROMIUM").unwrap_or("/usr/bin/chromium".into()),
                )
                .env("COUNT_FILE", &count_file)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("node runs the dashboard (install Node.js)")
        });
        let watching = Self {
            scrapes,
            scrape_failures,
            scrape_bytes,
            scraper,
            browser,
            count_file,
        };
        for _ in 0..600 {
            if !observers.browse() || watching.refreshes() >= 1 {
                return watching;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the dashboard did not load within 60 s");
    }

    fn refreshes(&self) -> u64 {
        std::fs::read_to_string(&self.count_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// (scrapes, scrape failures, last scrape's bytes, dashboard refreshes) so far.
    fn counts(&self) -> (u64, u64, u64, u64) {
        (
            self.scrapes.load(Ordering::Relaxed),
            self.scrape_failures.load(Ordering::Relaxed),
            self.scrape_bytes.load(Ordering::Relaxed),
            self.refreshes(),
        )
    }

    fn stop(self) {
        if let Some(scraper) = self.scraper {
            scraper.abort();
        }
        if let Some(mut browser) = self.browser {
            let _ = browser.kill();
            let _ = browser.wait();
        }
    }
}

/// playwright-core's node_modules (the dashboard test's, installed when missing).
fn browser_modules() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp/browser-node");
    let modules = root.join("node_modules");
    if !modules.join("playwright-core/package.json").exists() {
        std::fs::create_dir_all(&root).unwrap();
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&root)
            .arg("playwright-core@1.64.1")
            .status()
            .expect("npm runs");
        assert!(status.success(), "npm install playwright-core failed");
    }
    modules
}

/// The comparison, `runs` pairs.
pub async fn run(
    cluster: &EmbeddedPostgres,
    dir: &Path,
    admin: &Admin,
    runs: usize,
    observers: Observers,
) -> serde_json::Value {
    let (mut plain, mut observed, mut watched) = (vec![], vec![], vec![]);
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for with_observers in order {
            let (pool, url) = fresh_database(cluster, "bench_observed").await;
            super::common::quiet_cluster(cluster).await;
            let daemon = Daemon::start(dir, &url);
            wait_idle(&pool).await;
            let watching = if with_observers {
                Some(Watching::start(admin, dir, observers).await)
            } else {
                None
            };
            let before = watching.as_ref().map(Watching::counts);
            let (rate, _) = drain_jobs(
                &pool,
                &daemon,
                OBSERVED_JOBS,
                Duration::from_secs(45),
                super::DRAIN_LIMIT,
            )
            .await;
            if let Some(w) = watching {
                let (s0, f0, _, r0) = before.unwrap_or_default();
                let (s1, f1, bytes, r1) = w.counts();
                w.stop();
                observed.push(rate);
                watched.push(json!({
                    "rate": rate, "scrapes": s1 - s0, "scrape_failures": f1 - f0,
                    "metrics_bytes": bytes, "dashboard_refreshes": r1 - r0,
                }));
                eprintln!(
                    "run {} observed: {rate:.0} jobs/s ({} scrapes, {} dashboard refreshes)",
                    run + 1,
                    s1 - s0,
                    r1 - r0
                );
            } else {
                plain.push(rate);
                eprintln!("run {} plain: {rate:.0} jobs/s", run + 1);
            }
            daemon.stop();
            pool.close().await;
        }
    }
    let (p, o) = (median(&mut plain.clone()), median(&mut observed.clone()));
    json!({
        "note": "each drain from a fresh database and daemon, order alternating per run; \
                 scrape: GET /metrics every 1 s; dashboard: headless Chromium, signed in, \
                 refreshing every 5 s (all of /v1/stats, history, integrations, alerts, \
                 dead-letters, jobs, schedules); [admin] stats_interval = 5s (default)",
        "observers": format!("{observers:?}"),
        "jobs_per_drain": OBSERVED_JOBS,
        "plain_jobs_per_s": { "median": p, "runs": plain },
        "observed_jobs_per_s": { "median": o, "runs": observed },
        "observed_to_plain_ratio": o / p,
        "observed_runs": watched,
    })
}
