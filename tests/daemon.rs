//! The real binary: crash (SIGKILL) and restart lose nothing, SIGTERM drains, and the CLI
//! answers bad input with a clear error instead of a panic.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use penguin_jobs::queue::{JobState, NewJob};
use serde_json::json;
use support::app::TestApp;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let exited = support::poll_until(limit, async || child.try_wait().unwrap().is_some()).await;
    if exited.is_none() {
        let _ = child.kill();
        panic!("daemon did not exit within {limit:?}");
    }
    child.wait().unwrap()
}

/// The built-in prune schedule is off: its job would add to the counts these tests wait for.
/// The local servers playing the providers are on 127.0.0.1, which the egress guard refuses
/// unless allowed.
const CONFIG: &str = "[egress]\nallow = [\"127.0.0.1\"]\n[daemon]\npoll_interval = \"100ms\"\nlease = \"3s\"\nrescue_interval = \"250ms\"\nshutdown_grace = \"10s\"\n[queues.default]\nconcurrency = 20\n[maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n";

#[tokio::test]
async fn sigkill_mid_batch_then_restart_completes_every_job() {
    let app = TestApp::builder().config(CONFIG).build().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(20)))
        .mount(&provider)
        .await;
    let migrate = app.cli(&["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let url = format!("{}/hook", provider.uri());
    let jobs: Vec<NewJob> = (0..1500)
        .map(|n| {
            NewJob::new(
                "http.request",
                json!({ "method": "POST", "url": url, "body": { "n": n } }),
            )
        })
        .collect();
    app.enqueue_many(&jobs).await;

    let mut daemon = app.spawn_daemon("first.log");
    app.wait_for(
        "select count(*) >= 100 from penguin.jobs where state = 'completed'",
        Duration::from_secs(60),
        "some jobs completed",
    )
    .await;
    signal(&daemon, "-KILL");
    wait_exit(&mut daemon, Duration::from_secs(10)).await;
    let held_at_kill = app
        .count("select count(*) from penguin.jobs where state = 'running'")
        .await;
    assert!(held_at_kill > 0, "the kill caught jobs mid-batch");
    let unstarted_at_kill = app
        .count("select count(*) from penguin.jobs where state = 'running' and started_at is null")
        .await;
    assert!(
        app.count("select count(*) from penguin.jobs where state <> 'completed'")
            .await
            > 0
    );

    let mut daemon = app.spawn_daemon("second.log");
    app.wait_for(
        "select count(*) = 1500 from penguin.jobs where state = 'completed'",
        Duration::from_secs(120),
        "every job completed after the restart",
    )
    .await;
    signal(&daemon, "-TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", app.log("second.log"));
    assert_eq!(
        app.count("select count(*) from penguin.dead_letters").await,
        0
    );
    let rescued = app
        .count(
            "select count(*) from penguin.jobs where errors @> '[{\"class\": \"lease_expired\"}]'
                                               or errors @> '[{\"class\": \"lease_expired_unstarted\"}]'",
        )
        .await;
    assert_eq!(
        rescued, held_at_kill,
        "every job held at the kill was rescued once"
    );
    // jobs claimed but never started are not charged for it
    let refunded = app
        .count(
            "select count(*) from penguin.jobs
              where errors @> '[{\"class\": \"lease_expired_unstarted\"}]' and attempt = 1",
        )
        .await;
    assert_eq!(refunded, unstarted_at_kill);
}

#[tokio::test]
async fn sigterm_drains_running_jobs_and_exits_zero() {
    let app = TestApp::builder().config(CONFIG).build().await;
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)))
        .expect(5)
        .mount(&provider)
        .await;
    let mut daemon = app.spawn_daemon("daemon.log");
    app.wait_for(
        "select exists (select 1 from penguin.idle_workers)",
        Duration::from_secs(30),
        "the daemon to start and idle",
    )
    .await;
    let url = format!("{}/slow", provider.uri());
    let jobs: Vec<NewJob> = (0..5)
        .map(|_| NewJob::new("http.request", json!({ "method": "POST", "url": url })))
        .collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 5 from penguin.jobs where state = 'running'",
        Duration::from_secs(10),
        "the jobs to be claimed",
    )
    .await;
    // claimed is not started: signal only once all five reached the provider
    support::poll_until(Duration::from_secs(10), async || {
        provider.received_requests().await.unwrap_or_default().len() >= 5
    })
    .await
    .expect("the jobs never started");
    signal(&daemon, "-TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", app.log("daemon.log"));
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state = 'completed' and attempt = 1")
            .await,
        5
    );
    assert_eq!(
        app.count("select count(*) from penguin.idle_workers").await,
        0
    );
    provider.verify().await;
}

#[tokio::test]
async fn the_cli_enqueues_inspects_and_refuses_bad_input_clearly() {
    let app = TestApp::new().await;
    let out = app.cli(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = app.cli(&[
        "enqueue",
        "noop",
        "--payload",
        "{\"x\": 1}",
        "--in",
        "1h",
        "--priority",
        "-5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let job = app.job(id).await;
    assert_eq!((job.state, job.priority), (JobState::Scheduled, -5));

    let out = app.cli(&["jobs", "show", &id.to_string(), "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["payload"], json!({"x": 1}));

    let out = app.cli(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["queues"][0]["scheduled"], 1);

    let refusals: [(&[&str], &str); 5] = [
        (&["enqueue", "nope"], "unknown job kind \"nope\""),
        (
            &["enqueue", "noop", "--payload", "{not json"],
            "--payload is not valid JSON",
        ),
        (
            &["enqueue", "http.request", "--payload", "{\"url\": 5}"],
            "invalid payload for http.request",
        ),
        (&["jobs", "show", "999999"], "job 999999 not found"),
        (
            &["jobs", "list", "--state", "weird"],
            "unknown state \"weird\"",
        ),
    ];
    for (args, expected) in refusals {
        let out = app.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(app.count("select count(*) from penguin.jobs").await, 1);

    let out = app.cli(&["jobs", "cancel", &id.to_string()]);
    assert!(out.status.success());
    let out = app.cli(&["jobs", "cancel", &id.to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is cancelled"));
    let out = app.cli(&["dlq", "purge", "--older-than", "30d"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0 dead letters purged"
    );
}

#[tokio::test]
async fn a_bad_config_stops_the_daemon_at_start_naming_the_key() {
    let app = TestApp::new().await;
    let bad = app.dir.path().join("bad.toml");
    std::fs::write(&bad, "[queues.email]\nconcurrency = 0\n").unwrap();
    let out = support::daemon::cli(&bad, &app.url, &["run"], None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("queues.email.concurrency must be between 1 and 100000"),
        "{stderr}"
    );

    std::fs::write(&bad, "[kinds.\"mailgun.sned\"]\nmax_attempts = 3\n").unwrap();
    let out = support::daemon::cli(&bad, &app.url, &["run"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kinds.\"mailgun.sned\": not a known job kind"),
        "{stderr}"
    );
}

#[tokio::test]
async fn with_no_database_configured_run_starts_and_stops_its_own_postgres() {
    // the data directory must be reachable by the `postgres` user when tests run as root
    let work = support::TempDir::new("daemon-test");
    let data_dir = work.path().join("state");
    std::fs::write(
        work.path().join("jobs.toml"),
        format!(
            "[daemon]\ndata_dir = \"{}\"\npoll_interval = \"100ms\"\n",
            data_dir.display()
        ),
    )
    .unwrap();
    let mut perms = std::fs::metadata(work.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(work.path(), perms).unwrap();

    let embedded_log =
        || std::fs::read_to_string(work.path().join("embedded.log")).unwrap_or_default();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(work.path().join("jobs.toml"))
            .args(args)
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    };
    // no daemon yet: other commands explain what to do
    let out = run(&["stats"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database configured"));

    let log = std::fs::File::create(work.path().join("embedded.log")).unwrap();
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(work.path().join("jobs.toml"))
        .args(["run", "--no-http"])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // attach to the running daemon's cluster: enqueue, and watch the job complete
    let start = std::time::Instant::now();
    let id = loop {
        let out = run(&["enqueue", "noop"]);
        if out.status.success() {
            break String::from_utf8(out.stdout).unwrap().trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            embedded_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        let out = run(&["jobs", "show", &id, "--json"]);
        let job: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if job["state"] == "completed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            embedded_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the log of the first hour: which config, how to reach the database, no colours
    let log = embedded_log();
    let config_path = work.path().join("jobs.toml");
    assert!(
        log.contains(&format!("config={}", config_path.display())),
        "{log}"
    );
    assert!(log.contains("connect with: psql -h "), "{log}");
    assert!(log.contains("-U postgres penguin_jobs"), "{log}");
    assert!(!log.contains('\u{1b}'), "escape codes in a log file: {log}");
    // a second daemon on the same data directory fails at once, naming the first
    let started = std::time::Instant::now();
    let second = run(&["run", "--no-http", "--no-admin"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a second run waited {:?} before failing",
        started.elapsed()
    );
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains(&format!(
            "belongs to another process still running (pid {}",
            daemon.id()
        )),
        "{stderr}"
    );
    signal(&daemon, "-TERM");
    let status = wait_exit(&mut daemon, Duration::from_secs(30)).await;
    assert!(status.success(), "{}", embedded_log());
    assert!(embedded_log().contains("embedded PostgreSQL stopped"));
    assert!(
        !data_dir.join("postgres/postmaster.pid").exists(),
        "the cluster is down after the daemon exits"
    );
}

/// A start that fails after the embedded cluster is up (here: the shim's address is
/// taken) stops the cluster again: nothing is left running under the data directory.
#[tokio::test]
async fn a_failed_start_stops_the_embedded_cluster_it_started() {
    let dir = support::TempDir::new("failed-start");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let toml = format!(
        "[daemon]\ndata_dir = \"{}\"\n[http]\nlisten = \"{}\"\n",
        dir.path().display(),
        taken.local_addr().unwrap()
    );
    let config =
        penguin_jobs::config::Config::from_toml(&toml, std::path::Path::new("jobs.toml")).unwrap();
    config.validate().unwrap();
    let Err(e) = penguin_jobs::daemon::Daemon::build(config, Default::default()).await else {
        panic!("the daemon started on a taken address");
    };
    assert!(
        format!("{e:#}").contains("cannot listen on http.listen"),
        "{e:#}"
    );
    let cluster = dir.path().join("postgres");
    assert!(
        cluster.join("PG_VERSION").exists(),
        "the cluster was started"
    );
    assert_eq!(
        penguin_jobs::embedded_pg::EmbeddedPostgres::running_url(&cluster, "postgres"),
        None,
        "the embedded cluster still runs"
    );
}

#[tokio::test]
async fn a_queue_with_jobs_and_no_pool_is_warned_about() {
    let app = TestApp::builder()
        .config("[daemon]\nrescue_interval = \"100ms\"\npoll_interval = \"100ms\"\n")
        .build()
        .await;
    app.enqueue(&NewJob {
        queue: Some("nowhere".into()),
        ..NewJob::new("noop", json!({}))
    })
    .await;
    let served = app.enqueue(&NewJob::new("noop", json!({}))).await;
    let mut daemon = app.spawn_daemon("unserved.log");
    app.wait_for_finished(served, Duration::from_secs(30)).await;
    let warned = support::poll_until(Duration::from_secs(30), async || {
        app.log("unserved.log")
            .contains("queue \"nowhere\" holds jobs but no running daemon has a pool for it")
    })
    .await;
    // the queue-level view while the daemon runs: served queues are not listed
    let unserved = penguin_jobs::queue::unserved_queues(&app.pool, Duration::from_secs(3600))
        .await
        .unwrap();
    // the alert evaluator's first pass comes once this daemon's pools are recorded: the
    // unserved queue is stalled, the served one never was (not even at startup)
    let stalled = "select count(*) from penguin.alerts where condition = 'queue_stalled:nowhere'";
    let alerted = support::poll_until(Duration::from_secs(30), async || {
        app.count(stalled).await == 1
    })
    .await;
    signal(&daemon, "-TERM");
    wait_exit(&mut daemon, Duration::from_secs(30)).await;
    let log = app.log("unserved.log");
    assert!(warned.is_some(), "{log}");
    assert!(!log.contains("queue \"default\" holds jobs"), "{log}");
    assert!(
        alerted.is_some(),
        "no queue_stalled alert for the unserved queue"
    );
    assert_eq!(
        app.count("select count(*) from penguin.alerts where condition = 'queue_stalled:default'")
            .await,
        0,
        "the served queue looked unserved"
    );
    assert_eq!(
        unserved,
        vec![penguin_jobs::queue::UnservedQueue {
            queue: "nowhere".into(),
            has_jobs: true
        }]
    );
}

#[tokio::test]
async fn under_systemd_the_daemon_notifies_ready_watchdog_and_stopping() {
    let app = TestApp::builder().build().await;
    let dir = support::TempDir::new("systemd");
    // the master key as a systemd credential (LoadCredential=master-key:...)
    let credentials = dir.path().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let key = penguin_jobs::secrets::MasterKey::generate();
    std::fs::write(
        credentials.join("master-key"),
        secrecy::ExposeSecret::expose_secret(&key.to_base64()),
    )
    .unwrap();
    let config = dir.path().join("jobs.toml");
    std::fs::write(
        &config,
        "[daemon]\npoll_interval = \"100ms\"\n[secrets]\nmaster_key = \"cred:master-key\"\n",
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["run", "--no-http", "--no-admin"])
        .env("DATABASE_URL", &app.url)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut received = Vec::new();
    let mut next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no notification ({e}); got {received:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        let message = String::from_utf8_lossy(&buf[..n]).to_string();
        received.push(message.clone());
        message
    };
    // a status while starting, then READY once the pools run, then the watchdog
    let mut ready = None;
    while ready.is_none() {
        let m = next();
        if m.starts_with("READY=1") {
            ready = Some(m);
        }
    }
    let ready = ready.unwrap();
    assert!(
        ready.contains(&format!("MAINPID={}", daemon.id())),
        "{ready}"
    );
    let mut pings = 0;
    while pings < 3 {
        if next() == "WATCHDOG=1" {
            pings += 1;
        }
    }
    signal(&daemon, "-TERM");
    loop {
        if next().starts_with("STOPPING=1") {
            break;
        }
    }
    let status = wait_exit(&mut daemon, Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
