//! The dashboard end to end in headless Chromium (Debian's chromium driven by
//! playwright-core, tests/browser/dashboard.cjs) against a running daemon: the page signs
//! in with an admin token, its numbers match the database, replaying a dead letter from the
//! page creates the job, pausing a queue from the page stops its claims, a job's detail
//! opens, an alert is acknowledged, and nothing is fetched from anywhere but the daemon.
//! Screenshots stay in `target/tmp/dashboard-screenshots`.

mod support;

use std::process::Command;
use std::time::Duration;

use penguin_jobs::daemon::{Daemon, Roles};
use penguin_jobs::queue::{self, JobState, NewJob};
use serde_json::{Value, json};
use support::TempDir;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdefghijk";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_database_and_acts_on_it_in_a_real_browser() {
    let chromium = support::node::chromium();
    let modules =
        support::node::modules("browser-node", support::node::PLAYWRIGHT, "playwright-core")
            .unwrap_or_else(|e| {
                panic!(
                    "the dashboard test drives Chromium with {}: {e}",
                    support::node::PLAYWRIGHT
                )
            });
    let db = support::test_db().await;
    let dir = TempDir::new("dashboard");
    support::daemon::register_kinds(&db.pool, &support::daemon::config("")).await;
    // what the page will show: three dead letters, an alert, a completed job
    let mut letters = Vec::new();
    for n in 0..3 {
        let id = queue::enqueue(&db.pool, &NewJob::new("noop", json!({ "n": n })))
            .await
            .unwrap();
        support::daemon::bury(&db.pool, id).await;
        letters.push(id);
    }
    let alert: i64 = sqlx::query_scalar(
        "insert into penguin.alerts (kind, subject_type, message, severity)
         values ('key_test_failed', 'api_key', 'the stored key failed its test', 'high') returning id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let config = support::daemon::config(&format!(
        "[daemon]\ndata_dir = \"{data}\"\npoll_interval = \"50ms\"\n[database]\nurl = \"{url}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntokens = [\"{token}\"]\nstats_interval = \"1ms\"\n",
        data = dir.path().display(),
        url = db.url,
        token = dir.secret_file("admin.token", ADMIN_TOKEN),
    ));
    let daemon = Daemon::build(config, Roles::default()).await.unwrap();
    let admin = format!("http://{}", daemon.admin_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    let done = queue::enqueue(&db.pool, &NewJob::new("noop", json!({"shown": true})))
        .await
        .unwrap();
    support::daemon::wait_for(
        &db.pool,
        &format!("select state = 'completed' from penguin.jobs where id = {done}"),
        Duration::from_secs(30),
        "the job to show completed",
    )
    .await;
    let dead_letter: i64 =
        sqlx::query_scalar("select id from penguin.dead_letters where job_id = $1")
            .bind(letters[0])
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let expected_dead = support::daemon::count(
        &db.pool,
        "select count(*) from penguin.dead_letters where replayed_at is null",
    )
    .await;
    let expected_available = support::daemon::count(
        &db.pool,
        "select count(*) from penguin.jobs where state = 'available'",
    )
    .await;

    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.cjs");
    let run = {
        let (admin, shots) = (admin.clone(), shots.clone());
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(script)
                .env("NODE_PATH", modules)
                .env("BASE", admin)
                .env("TOKEN", ADMIN_TOKEN)
                .env("CHROMIUM", chromium)
                .env("SHOTS", shots)
                .env("REPLAY_ID", dead_letter.to_string())
                .env("JOB_ID", done.to_string())
                .env("ALERT_ID", alert.to_string())
                .env("QUEUE", "default")
                .output()
                .expect("node runs (install Node.js)")
        })
    };
    let out = run.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser script failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));

    // its numbers are the database's
    assert!(
        seen["login_error"].as_str().unwrap().contains("invalid"),
        "{seen}"
    );
    assert_eq!(seen["dead_letters"], expected_dead.to_string(), "{seen}");
    assert_eq!(seen["available"], expected_available.to_string(), "{seen}");
    assert_eq!(seen["dead_letter_rows"], 3, "{seen}");
    assert_eq!(seen["open_alerts"], "1", "{seen}");
    assert_eq!(seen["queue_state"], "running", "{seen}");
    assert_eq!(seen["job_detail"]["id"], done, "{seen}");
    assert_eq!(seen["job_detail"]["payload"], json!({"shown": true}));
    assert_eq!(seen["open_alerts_after"], "0", "{seen}");
    assert_eq!(seen["console_errors"], json!([]), "{seen}");
    assert_eq!(
        seen["requests_elsewhere"],
        json!([]),
        "nothing from a CDN: {seen}"
    );

    // replaying from the page created the job
    let replayed: Option<i64> =
        sqlx::query_scalar("select replayed_as from penguin.dead_letters where id = $1")
            .bind(dead_letter)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let replayed = replayed.expect("the dead letter was replayed");
    assert_eq!(seen["replayed_as"], replayed.to_string());
    support::daemon::wait_for(
        &db.pool,
        &format!("select exists (select 1 from penguin.jobs where id = {replayed})"),
        Duration::from_secs(5),
        "the replayed job",
    )
    .await;
    // acknowledged from the page
    assert_eq!(
        support::daemon::count(
            &db.pool,
            &format!("select count(*) from penguin.alerts where id = {alert} and acknowledged_at is not null")
        )
        .await,
        1
    );
    // pausing from the page stopped the queue's claims (the workers poll every 50 ms)
    assert_eq!(seen["queue_state_after"], "paused");
    let waiting = queue::enqueue(&db.pool, &NewJob::new("noop", json!({"after": "pause"})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let state: String = sqlx::query_scalar("select state from penguin.jobs where id = $1")
        .bind(waiting)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        state,
        JobState::Available.to_string(),
        "a paused queue's job was claimed"
    );
    queue::resume_queue(&db.pool, "default").await.unwrap();
    support::daemon::wait_for(
        &db.pool,
        &format!("select state = 'completed' from penguin.jobs where id = {waiting}"),
        Duration::from_secs(30),
        "the job runs once the queue is resumed",
    )
    .await;
    for name in ["1-login", "2-dashboard", "3-job-detail", "4-after-actions"] {
        let size = std::fs::metadata(shots.join(format!("{name}.png")))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 1000, "screenshot {name} missing");
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
