//! The admin listener on a real PostgreSQL: its tokens (apart from the shim's), the JSON
//! API over jobs, dead letters, queues, schedules and alerts, `/healthz` and `/readyz`
//! on both listeners, and a paused queue that no daemon claims from.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use penguin_jobs::daemon::{Daemon, Roles};
use penguin_jobs::queue::{self, JobState, NewJob};
use penguin_jobs::readiness::Readiness;
use serde_json::{Value, json};
use support::app::{ADMIN_TOKEN, TestApp};
use support::daemon::{bury, count};

const SHIM_TOKEN: &str = "shim-token-for-tests-0123456789abcdefghijklm";

#[tokio::test]
async fn admin_api_wants_an_admin_token_and_says_when_none_is_configured() {
    // no admin token configured: the 401 names the setting
    let dir = support::TempDir::new("admin-no-token");
    let toml = format!(
        "[http]\napi_tokens = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.secret_file("shim", SHIM_TOKEN)
    );
    let app = TestApp::builder().config(&toml).build().await;
    let ready = Readiness::new(app.pool.clone(), false);
    let state =
        penguin_jobs::admin::AdminState::new(&app.config, &app.pool, ready, BTreeSet::new())
            .unwrap();
    let router = penguin_jobs::admin::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum_serve(listener, router).await });
    let client = reqwest::Client::new();
    let answer = client
        .get(format!("{base}/v1/stats"))
        .bearer_auth(SHIM_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let body: Value = answer.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("[admin] tokens"),
        "{body}"
    );
    // liveness and readiness need no token
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // with admin tokens: the shim's token opens nothing here, a wrong one neither
    let app = TestApp::builder()
        .config(&format!(
            "[http]\napi_tokens = [\"{}\"]\n",
            support::TempDir::new("admin-shim").secret_file("shim", SHIM_TOKEN)
        ))
        .admin()
        .build()
        .await;
    let admin = app.admin();
    for (token, status) in [(SHIM_TOKEN, 401), ("", 401), (ADMIN_TOKEN, 200)] {
        let answer = admin
            .client
            .get(admin.url("/v1/jobs"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), status, "token {token:?}");
    }
    let no_header = admin
        .client
        .get(admin.url("/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status(), 401);
    let body: Value = no_header.json().await.unwrap();
    assert_eq!(body["error"], "missing or invalid bearer token");
}

/// Serves `router` without the daemon's accept loop (enough for one test's requests).
async fn axum_serve(listener: tokio::net::TcpListener, router: axum::Router) {
    let limits = penguin_jobs::config::HttpConfig::default();
    penguin_jobs::http::serve::serve(
        listener,
        router,
        &limits,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
}

#[tokio::test]
async fn jobs_are_listed_by_filter_and_every_page_follows_the_last() {
    let app = TestApp::builder().admin().build().await;
    let tenant = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut job = NewJob::new("noop", json!({ "n": n }));
        if n % 2 == 0 {
            job.tenant_id = Some(tenant);
        }
        if n == 6 {
            job.queue = Some("other".into());
        }
        ids.push(app.enqueue(&job).await);
    }
    let admin = app.admin();

    // pages of 3, newest first, until next_before is null: every job once
    let mut seen = Vec::new();
    let mut path = "/v1/jobs?limit=3".to_string();
    loop {
        let (status, page) = admin.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_i64().unwrap()),
        );
        match page["next_before"].as_i64() {
            Some(before) => path = format!("/v1/jobs?limit=3&before={before}"),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);

    let (_, by_tenant) = admin.get(&format!("/v1/jobs?tenant={tenant}")).await;
    assert_eq!(by_tenant["items"].as_array().unwrap().len(), 4);
    let (_, by_queue) = admin.get("/v1/jobs?queue=other").await;
    assert_eq!(by_queue["items"][0]["id"], ids[6]);
    assert_eq!(by_queue["items"].as_array().unwrap().len(), 1);
    let (_, by_state) = admin.get("/v1/jobs?state=available&kind=noop").await;
    assert_eq!(by_state["items"].as_array().unwrap().len(), 7);
    let (_, none) = admin.get("/v1/jobs?state=completed").await;
    assert_eq!(none["items"], json!([]));
    assert_eq!(none["next_before"], Value::Null);

    // a bad filter is the caller's fault, named
    for (path, words) in [
        ("/v1/jobs?state=lost", "unknown state"),
        ("/v1/jobs?limit=0", "limit"),
        ("/v1/jobs?limit=1001", "limit"),
        ("/v1/jobs?tenant=nope", "tenant"),
        ("/v1/jobs?before=x", "before"),
        ("/v1/jobs?colour=red", "colour"),
        ("/v1/jobs?kind=a%00b", "NUL"),
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(words),
            "{path}: {body}"
        );
    }
    for path in [
        "/v1/jobs/abc",
        "/v1/jobs/0",
        "/v1/jobs/99999999",
        "/v1/jobs/-1",
    ] {
        let (status, body) = admin.get(path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
}

#[tokio::test]
async fn a_dead_job_is_listed_shown_and_retried_through_its_dead_letter() {
    let app = TestApp::builder().admin().build().await;
    let id = app
        .enqueue(&NewJob::new("noop", json!({"to": "dlq"})))
        .await;
    bury(&app.pool, id).await;
    let letter = app.dead_letter(id).await;
    let admin = app.admin();

    let (status, dead) = admin.get("/v1/jobs?state=dead").await;
    assert_eq!(status, 200);
    assert_eq!(dead["items"][0]["id"], id);
    assert_eq!(dead["items"][0]["state"], "dead");
    assert_eq!(dead["items"][0]["dead_letter"], letter.id);

    let (status, shown) = admin.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["payload"], json!({"to": "dlq"}));
    assert_eq!(shown["dead_reason"], "permanent_error");

    // cancelling a dead job is a conflict that says why
    let (status, body) = admin.post(&format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("dead"), "{body}");

    // retry replays it: a new job, the dead letter marked
    let (status, retried) = admin.post(&format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(status, 200, "{retried}");
    let new_id = retried["id"].as_i64().unwrap();
    assert_ne!(new_id, id);
    assert_eq!(retried["state"], "available");
    assert_eq!(app.job(new_id).await.payload, json!({"to": "dlq"}));
    let (_, letter_now) = admin.get(&format!("/v1/dead-letters/{}", letter.id)).await;
    assert_eq!(letter_now["replayed_as"], new_id);
    // a second retry of the same dead job: already replayed
    let (status, body) = admin.post(&format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already replayed"),
        "{body}"
    );
}

#[tokio::test]
async fn dead_letters_are_filtered_replayed_in_bounded_batches_and_purged() {
    let app = TestApp::builder().admin().build().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = app.enqueue(&NewJob::new("noop", json!({ "n": n }))).await;
        bury(&app.pool, id).await;
        ids.push(id);
    }
    let other = app
        .enqueue(&NewJob::new(
            "http.request",
            json!({"url": "https://example.com"}),
        ))
        .await;
    bury(&app.pool, other).await;
    let admin = app.admin();

    let (_, noop) = admin.get("/v1/dead-letters?kind=noop").await;
    assert_eq!(noop["items"].as_array().unwrap().len(), 5);
    let first = noop["items"][4]["id"].as_i64().unwrap();
    let (status, one) = admin
        .post(&format!("/v1/dead-letters/{first}/replay"), None)
        .await;
    assert_eq!(status, 201, "{one}");
    assert_eq!(one["dead_letter"], first);
    let (status, again) = admin
        .post(&format!("/v1/dead-letters/{first}/replay"), None)
        .await;
    assert_eq!(status, 409, "{again}");

    // by filter, at most `limit` per request, `more` until done; the other kind stays
    let (status, batch) = admin
        .post(
            "/v1/dead-letters/replay",
            Some(json!({"kind": "noop", "limit": 3})),
        )
        .await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["count"], 3);
    assert_eq!(batch["more"], true);
    let (_, rest) = admin
        .post(
            "/v1/dead-letters/replay",
            Some(json!({"kind": "noop", "limit": 3})),
        )
        .await;
    assert_eq!(rest["count"], 1);
    assert_eq!(rest["more"], false);
    let (_, open) = admin.get("/v1/dead-letters?replayed=false").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1);
    assert_eq!(open["items"][0]["kind"], "http.request");
    assert_eq!(
        count(
            &app.pool,
            "select count(*) from penguin.jobs where kind = 'noop'"
        )
        .await,
        5
    );
    let (status, body) = admin
        .post("/v1/dead-letters/replay", Some(json!({"limit": 0})))
        .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin
        .post("/v1/dead-letters/replay", Some(json!({"kinds": "noop"})))
        .await;
    assert_eq!(status, 422, "{body}");

    // purge: a duration is required, and only older letters go
    let (status, body) = admin.delete("/v1/dead-letters").await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = admin.delete("/v1/dead-letters?older_than=soon").await;
    assert_eq!(status, 422, "{body}");
    let (_, kept) = admin.delete("/v1/dead-letters?older_than=1h").await;
    assert_eq!(kept["deleted"], 0);
    sqlx::query("update penguin.dead_letters set dead_at = now() - interval '2 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, purged) = admin.delete("/v1/dead-letters?older_than=1h").await;
    assert_eq!(purged["deleted"], 6);
}

#[tokio::test]
async fn cancel_and_retry_answer_with_the_job_or_a_conflict() {
    let app = TestApp::builder().admin().build().await;
    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    let admin = app.admin();
    let (status, cancelled) = admin.post(&format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, body) = admin.post(&format!("/v1/jobs/{id}/cancel"), None).await;
    assert_eq!(status, 409, "{body}");
    let (status, retried) = admin.post(&format!("/v1/jobs/{id}/retry"), None).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["id"], id);
    assert_eq!(app.job(id).await.state, JobState::Available);
}

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_resumed() {
    let app = TestApp::builder()
        .config("[daemon]\npoll_interval = \"50ms\"\n")
        .admin()
        .runtime()
        .build()
        .await;
    let admin = app.admin();
    let (status, paused) = admin.post("/v1/queues/default/pause", None).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["changed"], true);
    let (_, again) = admin.post("/v1/queues/default/pause", None).await;
    assert_eq!(again["changed"], false);

    let id = app.enqueue(&NewJob::new("noop", json!({}))).await;
    // a claim of a paused queue returns nothing, from any worker (the claim checks)
    let claimed = queue::claim(
        &app.pool,
        "default",
        &support::daemon::known_kinds(&app.pool).await,
        10,
        "another-daemon",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(claimed.is_empty());
    // the runtime polls every 50 ms: half a second of polls claims nothing
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.job(id).await.state, JobState::Available);
    let (_, stats) = admin.get("/v1/stats").await;
    let default = stats["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap()
        .clone();
    assert_eq!(default["paused"], true, "{stats}");
    assert_eq!(default["available"], 1, "{stats}");
    assert_eq!(default["served_here"], true, "{stats}");
    assert_eq!(stats["totals"]["available"], 1);

    let (status, resumed) = admin.post("/v1/queues/default/resume", None).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["changed"], true);
    app.wait_for_state(id, JobState::Completed).await;
    let (status, body) = admin.post("/v1/queues/%00/pause", None).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_request_stuck_behind_a_long_transaction_is_answered_503_and_writes_nothing() {
    let app = TestApp::builder()
        .admin_settings("statement_timeout = \"1s\"")
        .build()
        .await;
    // a long transaction elsewhere holds a lock the pause needs
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("lock table penguin.queue_pauses in access exclusive mode")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let admin = app.admin();
    let started = std::time::Instant::now();
    let (status, body) = admin.post("/v1/queues/default/pause", None).await;
    let waited = started.elapsed();
    assert_eq!(status, 503, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("[admin] statement_timeout"), "{message}");
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}, not at the timeout"
    );
    // reads wait on it too, and so answer the same way
    let (status, _) = admin.get("/v1/queues").await;
    assert_eq!(status, 503);
    blocker.rollback().await.unwrap();
    assert_eq!(
        app.count("select count(*) from penguin.queue_pauses").await,
        0,
        "nothing half-written"
    );
    // the lock gone, the same request goes through: no connection was left stuck
    let (status, body) = admin.post("/v1/queues/default/pause", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
}

#[tokio::test]
async fn schedules_and_alerts_are_listed_switched_and_acknowledged() {
    let app = TestApp::builder()
        .config(
            "[schedules.nightly]\ncron = \"0 3 * * *\"\nkind = \"noop\"\n[maintenance]\nprune = false\n",
        )
        .admin()
        .build()
        .await;
    // the scheduler writes its rows when it runs; a daemon's first pass does that
    let schedules = penguin_jobs::scheduler::from_config(&app.config).unwrap();
    penguin_jobs::scheduler::register(&app.pool, &schedules)
        .await
        .unwrap();
    let admin = app.admin();
    let (status, list) = admin.get("/v1/schedules").await;
    assert_eq!(status, 200, "{list}");
    let nightly = schedule(&list, "nightly");
    assert_eq!(nightly["name"], "nightly");
    assert_eq!(nightly["enabled"], true);
    assert!(nightly["next_fire_at"].is_string(), "{list}");
    let (status, _) = admin.post("/v1/schedules/nightly/pause", None).await;
    assert_eq!(status, 200);
    let (_, list) = admin.get("/v1/schedules").await;
    assert_eq!(schedule(&list, "nightly")["enabled"], false);
    let (status, _) = admin.post("/v1/schedules/nightly/resume", None).await;
    assert_eq!(status, 200);
    let (status, body) = admin.post("/v1/schedules/weekly/pause", None).await;
    assert_eq!(status, 404, "{body}");

    sqlx::query(
        "insert into penguin.alerts (kind, subject_type, message) values ('key_test_failed', 'api_key', 'm')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, open) = admin.get("/v1/alerts").await;
    let alert = open["items"][0]["id"].as_i64().unwrap();
    let (status, _) = admin
        .post(&format!("/v1/alerts/{alert}/acknowledge"), None)
        .await;
    assert_eq!(status, 200);
    let (_, open) = admin.get("/v1/alerts").await;
    assert_eq!(open["items"], json!([]));
    let (_, all) = admin.get("/v1/alerts?state=all").await;
    assert_eq!(all["items"][0]["id"], alert);
    let (status, _) = admin
        .post(&format!("/v1/alerts/{alert}/acknowledge"), None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin.get("/v1/alerts?state=new").await;
    assert_eq!(status, 422);
    let (status, integrations) = admin.get("/v1/integrations").await;
    assert_eq!(status, 200);
    assert_eq!(integrations["items"], json!([]));
}

/// The schedule `name` of a `GET /v1/schedules` answer.
fn schedule(list: &Value, name: &str) -> Value {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no schedule {name} in {list}"))
        .clone()
}

#[tokio::test]
async fn both_listeners_answer_healthz_and_readyz_once_the_pools_run() {
    let db = support::test_db().await;
    let dir = support::TempDir::new("admin-daemon");
    let config = support::daemon::config(&format!(
        "[daemon]\ndata_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().display()
    ));
    let config = penguin_jobs::config::Config {
        database: penguin_jobs::config::DatabaseConfig {
            url: Some(db.url.clone()),
            ..Default::default()
        },
        ..config
    };
    let daemon = Daemon::build(config, Roles::default()).await.unwrap();
    let shim = format!("http://{}", daemon.local_addr().unwrap());
    let admin = format!("http://{}", daemon.admin_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    let client = reqwest::Client::new();
    for base in [&shim, &admin] {
        let ready = support::poll_until(Duration::from_secs(30), async || {
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready.is_some(), "{base}/readyz never answered 200");
        let health: Value = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(health["status"], "ok");
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn readiness_waits_for_the_pools_and_ends_at_shutdown() {
    let db = support::test_db().await;
    let ready = Readiness::new(db.pool.clone(), true);
    let why = ready.check().await.unwrap_err();
    assert!(why.contains("pools not started"), "{why}");
    ready.pools_started();
    assert_eq!(ready.check().await, Ok(()));
    ready.stopping();
    assert_eq!(ready.check().await, Err("shutting down".into()));

    // a database that misses a migration is not ready, and says what to do
    let behind = support::test_db().await;
    sqlx::query(
        "delete from _sqlx_migrations where version = (select max(version) from _sqlx_migrations)",
    )
    .execute(&behind.pool)
    .await
    .unwrap();
    let why = Readiness::new(behind.pool.clone(), false)
        .check()
        .await
        .unwrap_err();
    assert!(why.contains("not current"), "{why}");

    // a database that cannot be reached is not ready, and the probe does not hang
    let away = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
        .unwrap();
    let why = Readiness::new(away, false).check().await.unwrap_err();
    assert!(
        why.contains("unreachable") || why.contains("did not answer"),
        "{why}"
    );
    assert!(
        !why.contains("nobody"),
        "no connection detail in the answer: {why}"
    );
}

/// A daemon (shim, admin listener, workers) on `db` with `extra` TOML, running until the
/// returned token is cancelled.
async fn start_daemon(
    db: &support::TestDb,
    dir: &support::TempDir,
    extra: &str,
) -> (
    String,
    String,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let config = support::daemon::config(&format!(
        "[daemon]\ndata_dir = \"{}\"\npoll_interval = \"50ms\"\n[database]\nurl = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{extra}",
        dir.path().display(),
        db.url
    ));
    let daemon = Daemon::build(config, Roles::default()).await.unwrap();
    let shim = format!("http://{}", daemon.local_addr().unwrap());
    let admin = format!("http://{}", daemon.admin_addr().unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(daemon.run_until_stopped(shutdown.clone()));
    (shim, admin, shutdown, running)
}

#[tokio::test]
async fn metrics_count_what_the_daemon_did_and_read_depth_from_the_database() {
    let db = support::test_db().await;
    let dir = support::TempDir::new("admin-metrics");
    let token = dir.secret_file("shim", SHIM_TOKEN);
    let (shim, admin, shutdown, running) = start_daemon(
        &db,
        &dir,
        &format!(
            "api_tokens = [\"{token}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\nstats_interval = \"1ms\"\n\
             [queues.default]\nconcurrency = 7\n"
        ),
    )
    .await;
    let client = reqwest::Client::new();
    for n in 0..3 {
        let answer = client
            .post(format!("{shim}/v1/jobs"))
            .bearer_auth(SHIM_TOKEN)
            .json(&json!({"kind": "noop", "payload": {"n": n}}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
    }
    support::daemon::wait_for(
        &db.pool,
        "select count(*) = 3 from penguin.jobs where state = 'completed'",
        Duration::from_secs(30),
        "three jobs done",
    )
    .await;
    // a webhook of a provider with no key configured is counted as such
    let answer = client
        .post(format!("{shim}/webhooks/stripe"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
    // a job waiting in a paused queue shows in the depth gauges
    queue::pause_queue(&db.pool, "default", "test")
        .await
        .unwrap();
    queue::enqueue(&db.pool, &NewJob::new("noop", json!({})))
        .await
        .unwrap();

    let answer = client.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    let text = answer.text().await.unwrap();
    for line in [
        "penguin_jobs_attempts_total{kind=\"noop\",outcome=\"completed\"} 3",
        "penguin_jobs_attempt_duration_seconds_count{kind=\"noop\"} 3",
        "penguin_jobs_enqueued_total{kind=\"noop\",via=\"http\"} 3",
        "penguin_jobs_pool_concurrency{queue=\"default\"} 7",
        "penguin_jobs_pool_busy{queue=\"default\"} 0",
        "penguin_jobs_queue_jobs{queue=\"default\",state=\"available\"} 1",
        "penguin_jobs_queue_jobs{queue=\"default\",state=\"running\"} 0",
        "penguin_jobs_queue_paused{queue=\"default\"} 1",
        "penguin_jobs_dead_letters{queue=\"default\"} 0",
        "penguin_jobs_stats_up 1",
        "penguin_jobs_webhooks_total{provider=\"stripe\",result=\"not_configured\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    let age: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("penguin_jobs_queue_oldest_due_age_seconds{queue=\"default\"} ")
        })
        .expect("the oldest due job's age")
        .parse()
        .unwrap();
    assert!((0.0..60.0).contains(&age), "{age}");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_shims_401_says_when_no_api_token_is_configured() {
    let app = TestApp::builder().shim().build().await;
    let answer = app
        .shim()
        .client
        .post(app.shim().url("/v1/jobs"))
        .json(&json!({"kind": "noop", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    let body: Value = answer.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("no API token is configured"), "{error}");
    assert!(error.contains("[http] api_tokens"), "{error}");
}
