//! Operator actions on a real PostgreSQL: retry, cancel, replay of many dead letters,
//! purge and stats.

mod support;

use std::time::Duration;

use penguin_jobs::queue::{self, NewJob, Outcome};
use serde_json::json;
use support::daemon::{bury, config, count, register_kinds};

#[tokio::test]
async fn replay_all_of_one_kind_leaves_the_others_alone() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut buried = Vec::new();
    for kind in ["noop", "noop", "http.request"] {
        let payload = if kind == "noop" {
            json!({})
        } else {
            json!({"url": "https://example.com"})
        };
        let id = queue::enqueue(&db.pool, &NewJob::new(kind, payload))
            .await
            .unwrap();
        bury(&db.pool, id).await;
        buried.push(id);
    }
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        3
    );
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.jobs").await,
        0
    );

    let replayed = queue::replay_dead_letters(&db.pool, None, Some("noop"))
        .await
        .unwrap();
    assert_eq!(replayed.len(), 2);
    for r in &replayed {
        let job = queue::get_job(&db.pool, r.job).await.unwrap();
        assert_eq!(
            (job.kind.as_str(), job.state.as_str(), job.attempt),
            ("noop", "available", 0)
        );
    }
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.dead_letters where replayed_at is null"
        )
        .await,
        1
    );
    // nothing left of that kind: a second --all is a no-op
    assert!(
        queue::replay_dead_letters(&db.pool, None, Some("noop"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn purge_deletes_only_dead_letters_older_than_asked() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    for _ in 0..2 {
        let id = queue::enqueue(&db.pool, &NewJob::new("noop", json!({})))
            .await
            .unwrap();
        bury(&db.pool, id).await;
    }
    sqlx::query("update penguin.dead_letters set dead_at = now() - interval '40 days' where id = (select min(id) from penguin.dead_letters)")
        .execute(&db.pool)
        .await
        .unwrap();
    let purged = queue::purge_dead_letters(&db.pool, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(
        count(&db.pool, "select count(*) from penguin.dead_letters").await,
        1
    );
}

#[tokio::test]
async fn retry_runs_a_waiting_job_now_and_a_finished_one_with_fresh_attempts() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let later = NewJob {
        run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..NewJob::new("noop", json!({}))
    };
    let scheduled = queue::enqueue(&db.pool, &later).await.unwrap();
    let job = queue::retry_job(&db.pool, scheduled).await.unwrap();
    assert_eq!(job.state, "available");
    assert!(job.run_at <= chrono::Utc::now());

    let claimed = support::daemon::claim_default(&db.pool, "w", 1, Duration::from_secs(30)).await;
    let err = queue::retry_job(&db.pool, claimed[0].id).await.unwrap_err();
    assert!(
        err.to_string().contains("running job cannot be retried"),
        "{err}"
    );
    queue::write_outcomes(
        &db.pool,
        "w",
        &[(
            claimed[0].id,
            Outcome::Completed {
                result: Some(json!({"ok": true})),
                delete: false,
            },
        )],
    )
    .await
    .unwrap();
    let done = queue::get_job(&db.pool, claimed[0].id).await.unwrap();
    assert_eq!(
        (done.state.as_str(), done.result),
        ("completed", Some(json!({"ok": true})))
    );
    let again = queue::retry_job(&db.pool, claimed[0].id).await.unwrap();
    assert_eq!((again.state.as_str(), again.attempt), ("available", 0));
}

#[tokio::test]
async fn stats_count_every_state_per_queue() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let mut conn = db.pool.acquire().await.unwrap();
    let mut jobs: Vec<NewJob> = (0..3).map(|_| NewJob::new("noop", json!({}))).collect();
    jobs.push(NewJob {
        queue: Some("email".into()),
        run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
        ..NewJob::new("noop", json!({}))
    });
    let ids = queue::enqueue_many(&mut conn, &jobs).await.unwrap();
    queue::cancel_job(&db.pool, ids[0]).await.unwrap();
    let stats = queue::stats(&db.pool).await.unwrap();
    assert_eq!(stats.len(), 2);
    let default = stats.iter().find(|s| s.queue == "default").unwrap();
    assert_eq!((default.available, default.cancelled), (2, 1));
    let email = stats.iter().find(|s| s.queue == "email").unwrap();
    assert_eq!(email.scheduled, 1);
}

#[tokio::test]
async fn replaying_every_dead_letter_works_in_bounded_batches_and_replays_each_once() {
    let db = support::test_db().await;
    register_kinds(&db.pool, &config("")).await;
    let total = queue::REPLAY_BATCH * 2 + 7;
    sqlx::query(
        "insert into penguin.dead_letters
             (job_id, queue, kind, payload, priority, attempt, max_attempts, errors, created_at, reason)
         select g, 'default', 'noop', jsonb_build_object('n', g), 0, 1, 25, '[]', now(), 'permanent_error'
           from generate_series(1, $1) g",
    )
    .bind(total)
    .execute(&db.pool)
    .await
    .unwrap();
    let replayed = queue::replay_dead_letters(&db.pool, None, None)
        .await
        .unwrap();
    assert_eq!(replayed.len() as i64, total);
    assert_eq!(
        count(&db.pool, "select count(distinct payload) from penguin.jobs").await,
        total
    );
    assert_eq!(
        count(
            &db.pool,
            "select count(*) from penguin.dead_letters where replayed_at is null"
        )
        .await,
        0
    );
    assert!(
        queue::replay_dead_letters(&db.pool, None, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_transaction_holding_the_horizon_is_named_by_stats_and_warned_about_by_the_daemon() {
    let app = support::app::TestApp::builder()
        .config(
            "[daemon]\nhorizon_warn = \"1s\"\nrescue_interval = \"200ms\"\npoll_interval = \"100ms\"\n\
             [maintenance]\nprune = false\n[oauth]\nrefresh = false\n[api_keys]\nrotation = false\n",
        )
        .build()
        .await;
    let quiet = app.cli(&["stats"]);
    let quiet = String::from_utf8_lossy(&quiet.stdout).to_string();
    assert!(!quiet.contains("WARNING"), "{quiet}");

    // a report in REPEATABLE READ elsewhere, left open
    let mut report = <sqlx::PgConnection as sqlx::Connection>::connect(&format!(
        "{}{}application_name=nightly-report",
        app.url,
        if app.url.contains('?') { "&" } else { "?" }
    ))
    .await
    .unwrap();
    sqlx::query("begin isolation level repeatable read")
        .execute(&mut report)
        .await
        .unwrap();
    // the snapshot is taken by the transaction's first statement
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut report)
        .await
        .unwrap();
    let mut daemon = app.spawn_daemon("daemon.log");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let out = app.cli(&["stats"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "WARNING: the xmin horizon is held by session pid {pid} (\"nightly-report\"), idle in transaction, for "
        )),
        "{stdout}"
    );
    let out = app.cli(&["stats", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["horizon"]["oldest"]["pid"], pid);
    assert_eq!(json["horizon"]["oldest"]["name"], "nightly-report");

    let warned = support::poll_until(Duration::from_secs(30), async || {
        app.log("daemon.log")
            .contains("a transaction holds the xmin horizon")
    })
    .await;
    support::daemon::stop_daemon(&mut daemon);
    let log = app.log("daemon.log");
    assert!(warned.is_some(), "no warning in the daemon's log:\n{log}");
    assert!(log.contains(&format!("session pid {pid}")), "{log}");
    sqlx::query("rollback").execute(&mut report).await.unwrap();
}

#[tokio::test]
async fn the_cli_shows_lists_and_retries_a_dead_job_and_says_when_nothing_is_open() {
    let app = support::app::TestApp::new().await;
    let id = app.enqueue(&NewJob::new("noop", json!({"x": 1}))).await;
    bury(&app.pool, id).await;
    let stdout = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let shown: serde_json::Value = serde_json::from_str(&stdout(app.cli(&[
        "jobs",
        "show",
        &id.to_string(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["payload"], json!({"x": 1}));
    assert!(shown["dead_letter"].is_i64(), "{shown}");
    let listed = stdout(app.cli(&["jobs", "list", "--state", "dead"]));
    assert!(
        listed.contains(&id.to_string()) && listed.contains("dead"),
        "{listed}"
    );
    let retried = stdout(app.cli(&["jobs", "retry", &id.to_string()]));
    let replay: i64 = retried
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{retried}"));
    assert!(retried.contains("replayed as job"), "{retried}");
    assert_eq!(app.job(replay).await.payload, json!({"x": 1}));

    assert_eq!(stdout(app.cli(&["alerts"])).trim(), "no open alerts");
    assert!(stdout(app.cli(&["audit"])).starts_with("no audit events"));
}
