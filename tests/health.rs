//! Integration health and alerts on a real PostgreSQL: the health model over what the
//! daemons counted, the scheduled health check against a fake provider, alerts opened once
//! per condition however many daemons evaluate, resolved when the condition clears, and
//! their notifications delivered as jobs (a webhook with Slack's `text`, an email).

mod support;

use std::time::Duration;

use chrono::{DurationRound, Utc};
use penguin_jobs::alerts::{self, Settings};
use penguin_jobs::queue::integrations::{self, LATENCY_SLOTS, MetricRow, latency_slot};
use penguin_jobs::queue::{self, JobState, NewJob};
use serde_json::{Value, json};
use support::app::TestApp;
use support::fake_provider::{FakeProvider, Reply};

const MAILGUN_KEY: &str = "key-test-mailgun-0123456789";

/// `calls` calls of `provider` this minute, `failures` of them 5xx, each `ms` long.
async fn counted(pool: &sqlx::PgPool, provider: &str, calls: i64, failures: i64, ms: f64) {
    let minute = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let row = |class: &str, n: i64| {
        let mut buckets = [0; LATENCY_SLOTS];
        buckets[latency_slot(ms)] = n;
        MetricRow {
            minute,
            provider: provider.into(),
            kind: "mailgun.send".into(),
            status_class: class.into(),
            calls: n,
            total_ms: ms * n as f64,
            max_ms: ms,
            buckets,
        }
    };
    integrations::add_metrics(pool, &[row("2xx", calls - failures), row("5xx", failures)])
        .await
        .unwrap();
}

/// An app with Mailgun pointing at a fake provider, the admin listener, webhook and email
/// notification targets (the webhook is the fake too), and `extra` config.
async fn app_with_fake(extra: &str) -> TestApp {
    let fake = FakeProvider::start().await;
    let builder = TestApp::builder();
    let key = builder.dir().secret_file("mailgun", MAILGUN_KEY);
    let toml = format!(
        "[daemon]\npoll_interval = \"50ms\"\n[maintenance]\nprune = false\n\
         [providers.mailgun]\napi_key = \"{key}\"\ndomain = \"mg.example.com\"\nbase_url = \"{url}\"\n\
         [egress]\nallow = [\"127.0.0.1/32\"]\n\
         [alerts.notify.ops-hook]\ntype = \"webhook\"\nurl = \"{url}/hooks/alerts\"\n\
         [alerts.notify.ops-mail]\ntype = \"email\"\nprovider = \"mailgun\"\nfrom = \"alerts@mg.example.com\"\nto = [\"ops@example.com\"]\n\
         {extra}",
        url = fake.url
    );
    builder
        .config(&toml)
        .fake_provider(fake)
        .admin()
        .build()
        .await
}

fn settings(app: &TestApp) -> Settings {
    Settings::from_config(&app.config)
}

#[tokio::test]
async fn the_health_model_follows_the_counted_calls_and_the_providers_row() {
    let app = app_with_fake("[providers.stripe]\nsecret_key = \"env:NOT_USED_HERE\"\n").await;
    counted(&app.pool, "mailgun", 20, 10, 80.0).await;
    counted(&app.pool, "http", 40, 0, 3000.0).await;
    let (status, body) = app.admin().get("/v1/integrations").await;
    assert_eq!(status, 200, "{body}");
    let item = |name: &str| -> Value {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["provider"] == name)
            .unwrap_or_else(|| panic!("no {name} in {body}"))
            .clone()
    };
    let mailgun = item("mailgun");
    assert_eq!(mailgun["status"], "unhealthy", "{mailgun}");
    assert_eq!(mailgun["error_rate"], 0.5);
    assert_eq!(
        mailgun["requests_24h"],
        json!({"total": 20, "successful": 10, "failed": 10})
    );
    assert_eq!(mailgun["response_time_ms"], 80.0);
    assert_eq!(mailgun["p95_latency_ms_24h"], 100.0);
    assert_eq!(mailgun["active"], true);
    let http = item("http");
    assert_eq!(http["status"], "degraded", "{http}");
    assert_eq!(http["score"], 75);
    // configured, never called: listed, healthy, not active
    let stripe = item("stripe");
    assert_eq!(stripe["status"], "healthy");
    assert_eq!(stripe["active"], false);
    assert_eq!(stripe["uptime_24h_percent"], 100.0);
    assert_eq!(body["summary"]["total"], 3);
    assert_eq!(body["summary"]["active"], 2);
    assert_eq!(body["summary"]["failing"], 1);

    // the rollups are pruned after [retention] metrics
    sqlx::query("update penguin.integration_metrics set minute = minute - interval '40 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    let gone = integrations::prune_metrics(&app.pool, Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!(gone, 4);
}

#[tokio::test]
async fn an_alert_opens_once_however_many_daemons_evaluate_and_resolves_when_it_clears() {
    let app = app_with_fake("[alerts]\nclear_after = \"2s\"\n").await;
    // a daemon serves the queue the notifications go to (else they stall it)
    queue::register_daemon(
        &app.pool,
        "d1",
        &["http.request".into()],
        &["default".into()],
    )
    .await
    .unwrap();
    counted(&app.pool, "mailgun", 20, 10, 80.0).await;
    let s = settings(&app);
    // three daemons evaluating at once
    let (a, b, c) = tokio::join!(
        alerts::evaluate(&app.pool, &s),
        alerts::evaluate(&app.pool, &s),
        alerts::evaluate(&app.pool, &s)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    alerts::evaluate(&app.pool, &s).await.unwrap();
    let (_, open) = app.admin().get("/v1/alerts").await;
    let items = open["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{open}");
    assert_eq!(items[0]["kind"], "error_rate");
    assert_eq!(items[0]["severity"], "high");
    assert_eq!(items[0]["condition"], "error_rate:mailgun");
    let open_of = |list: &Value, provider: &str| {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["provider"] == provider)
            .map(|i| i["open_alerts"].clone())
    };
    let (_, integrations) = app.admin().get("/v1/integrations").await;
    assert_eq!(
        open_of(&integrations, "mailgun"),
        Some(json!(1)),
        "{integrations}"
    );
    assert!(
        items[0]["message"]
            .as_str()
            .unwrap()
            .contains("50% of 20 calls")
    );
    // one notification per target, once
    let notifications = |app: &TestApp| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, Value)>(
                "select kind, payload from penguin.jobs where unique_key like 'penguin:alert:%' order by id",
            )
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let sent = notifications(&app).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0].0, "http.request");
    let text = sent[0].1["body"]["text"].as_str().unwrap();
    assert!(
        text.starts_with("[penguin-jobs] HIGH error_rate opened: mailgun: 50%"),
        "{text}"
    );
    assert_eq!(sent[1].0, "mailgun.send");
    assert_eq!(sent[1].1["to"], json!(["ops@example.com"]));

    // the condition clears for less than clear_after and comes back: the same alert, and
    // nothing more notified
    let clear = async || {
        sqlx::query("delete from penguin.integration_metrics")
            .execute(&app.pool)
            .await
            .unwrap();
    };
    // (each clearing right after a pass that saw the condition: the 2 s start there)
    alerts::evaluate(&app.pool, &s).await.unwrap();
    clear().await;
    alerts::evaluate(&app.pool, &s).await.unwrap();
    counted(&app.pool, "mailgun", 20, 10, 80.0).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    alerts::evaluate(&app.pool, &s).await.unwrap();
    let (_, still) = app.admin().get("/v1/alerts").await;
    assert_eq!(still["items"][0]["id"], items[0]["id"], "{still}");
    assert_eq!(notifications(&app).await.len(), 2);
    // clear for clear_after: resolved, and the clearing notified once
    alerts::evaluate(&app.pool, &s).await.unwrap();
    clear().await;
    alerts::evaluate(&app.pool, &s).await.unwrap();
    let (_, open) = app.admin().get("/v1/alerts").await;
    assert_eq!(
        open["items"].as_array().unwrap().len(),
        1,
        "resolved too soon"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    alerts::evaluate(&app.pool, &s).await.unwrap();
    alerts::evaluate(&app.pool, &s).await.unwrap();
    let (_, open) = app.admin().get("/v1/alerts").await;
    assert_eq!(open["items"], json!([]));
    let (_, all) = app.admin().get("/v1/alerts?state=all").await;
    assert!(all["items"][0]["resolved_at"].is_string(), "{all}");
    let (_, integrations) = app.admin().get("/v1/integrations").await;
    assert_eq!(
        open_of(&integrations, "mailgun"),
        Some(json!(0)),
        "{integrations}"
    );
    let sent = notifications(&app).await;
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(
        sent[2].1["body"]["text"]
            .as_str()
            .unwrap()
            .contains("error_rate cleared"),
        "{:?}",
        sent[2]
    );
    // it comes back: a new alert
    counted(&app.pool, "mailgun", 20, 10, 80.0).await;
    alerts::evaluate(&app.pool, &s).await.unwrap();
    let (_, open) = app.admin().get("/v1/alerts").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1);
    assert_ne!(open["items"][0]["id"], all["items"][0]["id"]);
}

#[tokio::test]
async fn the_webhook_notification_reaches_its_target_with_slacks_text_field() {
    let mut app = app_with_fake("").await;
    app.fake()
        .always("/hooks/alerts", vec![Reply::status(200, json!({}))]);
    counted(&app.pool, "mailgun", 20, 20, 80.0).await;
    alerts::evaluate(&app.pool, &settings(&app)).await.unwrap();
    app.start_runtime();
    app.wait_for(
        "select count(*) = 1 from penguin.jobs where kind = 'http.request' and state = 'completed'",
        Duration::from_secs(30),
        "the webhook notification delivered",
    )
    .await;
    app.stop().await;
    let hooks = app.fake().requests_to("/hooks/alerts");
    assert_eq!(hooks.len(), 1);
    let body = hooks[0].json();
    assert!(
        body["text"].as_str().unwrap().contains("error_rate"),
        "{body}"
    );
    assert_eq!(body["alert"]["kind"], "error_rate");
    assert_eq!(body["alert"]["provider"], "mailgun");
}

#[tokio::test]
async fn stalled_queues_and_growing_dead_letters_are_alerts() {
    let app = app_with_fake("[alerts]\ndead_letters = 2\nqueue_stalled_after = \"60s\"\n").await;
    for _ in 0..2 {
        let id = app
            .enqueue(&NewJob::new("noop", json!({"dead": true})))
            .await;
        support::daemon::bury(&app.pool, id).await;
    }
    // a queue no daemon serves
    app.enqueue(&NewJob {
        queue: Some("nowhere".into()),
        ..NewJob::new("noop", json!({}))
    })
    .await;
    // a served queue whose next job has been due for two minutes
    let late = app.enqueue(&NewJob::new("noop", json!({}))).await;
    sqlx::query("update penguin.jobs set run_at = now() - interval '2 minutes' where id = $1")
        .bind(late)
        .execute(&app.pool)
        .await
        .unwrap();
    queue::register_daemon(&app.pool, "d1", &["noop".into()], &["default".into()])
        .await
        .unwrap();
    let found = alerts::conditions(&app.pool, &settings(&app))
        .await
        .unwrap();
    let mut keys: Vec<&str> = found.iter().map(|c| c.condition.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        vec![
            "dead_letters_growing",
            "queue_stalled:default",
            "queue_stalled:nowhere"
        ],
        "{found:?}"
    );
    // a low-priority job starved behind urgent ones is stalled too: the queue's next job
    // in line is fresh, its oldest due job is not
    queue::register_daemon(
        &app.pool,
        "d2",
        &["noop".into()],
        &["default".into(), "bulk".into()],
    )
    .await
    .unwrap();
    let starved = app
        .enqueue(&NewJob {
            queue: Some("bulk".into()),
            priority: Some(5),
            ..NewJob::new("noop", json!({}))
        })
        .await;
    sqlx::query("update penguin.jobs set run_at = now() - interval '3 minutes' where id = $1")
        .bind(starved)
        .execute(&app.pool)
        .await
        .unwrap();
    for priority in [0, 1] {
        app.enqueue(&NewJob {
            queue: Some("bulk".into()),
            priority: Some(priority),
            ..NewJob::new("noop", json!({}))
        })
        .await;
    }
    let waits = queue::oldest_due_per_queue(&app.pool).await.unwrap();
    let bulk = waits.iter().find(|w| w.queue == "bulk").unwrap();
    let waited = Utc::now() - bulk.due_since.unwrap();
    assert!(waited >= chrono::Duration::minutes(3), "{waits:?}");
    let found = alerts::conditions(&app.pool, &settings(&app))
        .await
        .unwrap();
    let bulk_stalled = found
        .iter()
        .find(|c| c.condition == "queue_stalled:bulk")
        .unwrap_or_else(|| panic!("the starved job raised nothing: {found:?}"));
    assert!(
        bulk_stalled
            .message
            .contains("oldest due job has waited 3 min")
    );
    // a paused queue is not stalled
    queue::pause_queue(&app.pool, "default", "test")
        .await
        .unwrap();
    let found = alerts::conditions(&app.pool, &settings(&app))
        .await
        .unwrap();
    assert!(found.iter().all(|c| c.condition != "queue_stalled:default"));
}

#[tokio::test]
async fn the_scheduled_health_check_calls_the_provider_and_records_what_it_found() {
    // the schedule exists but never fires during the test (the test enqueues its job)
    let mut app = app_with_fake("[health]\ncheck_cron = \"0 0 1 1 *\"\n").await;
    // first check: the key works; second: refused
    app.fake()
        .push("/v3/domains", Reply::status(200, json!({"items": []})));
    app.fake().push(
        "/v3/domains",
        Reply::status(401, json!({"message": "Invalid private key"})),
    );
    let schedules = penguin_jobs::scheduler::from_config(&app.config).unwrap();
    let check = schedules
        .iter()
        .find(|s| s.name == "health-check-mailgun")
        .expect("a health check schedule for the configured provider");
    assert_eq!(check.job.kind, "integration.health_check");
    app.start_runtime();
    let first = app.enqueue(&check.job).await;
    app.wait_for_state(first, JobState::Completed).await;
    let second = app.enqueue(&check.job).await;
    app.wait_for_state(second, JobState::Completed).await;
    app.stop().await;
    let ok = app.job(first).await.result.unwrap();
    assert_eq!(ok["ok"], true, "{ok}");
    let refused = app.job(second).await.result.unwrap();
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["status"], 401);
    assert!(!refused.to_string().contains(MAILGUN_KEY));
    let request = &app.fake().requests_to("/v3/domains")[0];
    assert!(
        request
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );
    // counted as any call, and the refusal marks the integration
    app.wait_for(
        "select coalesce(sum(calls), 0) = 2 from penguin.integration_metrics
          where provider = 'mailgun' and kind = 'integration.health_check'",
        Duration::from_secs(10),
        "both checks counted",
    )
    .await;
    let found = alerts::conditions(&app.pool, &settings(&app))
        .await
        .unwrap();
    let refused_alert = found
        .iter()
        .find(|c| c.condition == "credentials_refused:mailgun")
        .expect("credentials refused");
    assert_eq!(refused_alert.severity, "critical");
    assert_eq!(
        app.count("select count(*) from penguin.dead_letters").await,
        0
    );
}

#[tokio::test]
async fn each_minute_records_what_the_queues_finished_and_their_depth() {
    let mut app = app_with_fake("").await;
    let jobs: Vec<NewJob> = (0..30)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&jobs).await;
    let failing = app
        .enqueue(&NewJob {
            max_attempts: Some(1),
            ..NewJob::new(
                "http.request",
                json!({"url": "http://127.0.0.1:9/unreachable"}),
            )
        })
        .await;
    app.start_runtime();
    app.wait_for_dead_letter(failing).await;
    // the refused connection is counted as an outbound call of provider `http`
    app.wait_for(
        "select coalesce(sum(calls), 0) = 1 from penguin.integration_metrics
          where provider = 'http' and kind = 'http.request' and status_class = 'network'",
        Duration::from_secs(10),
        "the http.request call counted",
    )
    .await;
    // the pools report every 5 s
    app.wait_for(
        "select coalesce(sum(completed), 0) = 30 and coalesce(sum(dead_lettered), 0) = 1
           from penguin.queue_minutes where queue = 'default'",
        Duration::from_secs(30),
        "the finished jobs reported",
    )
    .await;
    app.stop().await;
    // a job waits: the evaluator's pass samples the depth once this minute
    app.enqueue(&NewJob::new("noop", json!({}))).await;
    alerts::evaluate(&app.pool, &settings(&app)).await.unwrap();
    let (status, history) = app.admin().get("/v1/history?minutes=5").await;
    assert_eq!(status, 200, "{history}");
    let rows: Vec<&Value> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["queue"] == "default")
        .collect();
    let completed: i64 = rows.iter().map(|r| r["completed"].as_i64().unwrap()).sum();
    assert_eq!(completed, 30, "{history}");
    let last = rows.last().unwrap();
    assert_eq!(last["available"], 1, "{history}");
    let (status, _) = app.admin().get("/v1/history?minutes=0").await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_daemon_evaluates_alerts_only_once_its_pools_have_started() {
    let app = app_with_fake("").await;
    // jobs in a queue: before this daemon's pools are recorded it would look unserved
    app.enqueue(&NewJob::new("noop", json!({}))).await;
    let ready = penguin_jobs::readiness::Readiness::new(app.pool.clone(), true);
    let stop = tokio_util::sync::CancellationToken::new();
    let evaluator = tokio::spawn(alerts::run(
        app.pool.clone(),
        settings(&app),
        ready.clone(),
        stop.clone(),
    ));
    let alerts = "select count(*) from penguin.alerts";
    let early = support::poll_until(Duration::from_millis(500), async || {
        app.count(alerts).await > 0
    })
    .await;
    assert!(early.is_none(), "an alert opened before the pools started");
    // started (and, as the runtime does first, recorded as serving no queue here): the
    // first pass runs at once and finds the queue unserved
    ready.pools_started();
    let opened = support::poll_until(Duration::from_secs(10), async || {
        app.count("select count(*) from penguin.alerts where condition = 'queue_stalled:default'")
            .await
            == 1
    })
    .await;
    stop.cancel();
    evaluator.await.unwrap();
    assert!(opened.is_some(), "the evaluator did not run once started");
}

/// Renames `penguin.queue_minutes` away (`away`) or back: every write to it fails meanwhile,
/// as it would while the database refuses them.
async fn queue_minutes_away(app: &TestApp, away: bool) {
    let sql = if away {
        "alter table penguin.queue_minutes rename to queue_minutes_away"
    } else {
        "alter table penguin.queue_minutes_away rename to queue_minutes"
    };
    sqlx::query(sql).execute(&app.pool).await.unwrap();
}

#[tokio::test]
async fn an_evaluator_pass_that_fails_is_tried_again_and_the_next_one_opens_the_alert() {
    let app = app_with_fake("[alerts]\ncheck_interval = \"100ms\"\n").await;
    app.enqueue(&NewJob {
        queue: Some("nowhere".into()),
        ..NewJob::new("noop", json!({}))
    })
    .await;
    queue_minutes_away(&app, true).await;
    let ready = penguin_jobs::readiness::Readiness::new(app.pool.clone(), false);
    let stop = tokio_util::sync::CancellationToken::new();
    let evaluator = tokio::spawn(alerts::run(
        app.pool.clone(),
        settings(&app),
        ready,
        stop.clone(),
    ));
    let stalled = "select count(*) from penguin.alerts where condition = 'queue_stalled:nowhere'";
    let early = support::poll_until(Duration::from_millis(700), async || {
        app.count(stalled).await > 0
    })
    .await;
    assert!(
        early.is_none(),
        "a pass that cannot write its sample went on"
    );
    assert!(
        !evaluator.is_finished(),
        "a failed pass ended the evaluator"
    );
    queue_minutes_away(&app, false).await;
    let opened = support::poll_until(Duration::from_secs(10), async || {
        app.count(stalled).await == 1
    })
    .await;
    stop.cancel();
    evaluator.await.unwrap();
    assert!(opened.is_some(), "the evaluator did not recover");
}

#[tokio::test]
async fn finished_jobs_a_report_could_not_write_are_written_by_the_next_one() {
    let mut app = app_with_fake("").await;
    queue_minutes_away(&app, true).await;
    app.start_runtime();
    let jobs: Vec<NewJob> = (0..10)
        .map(|n| NewJob::new("noop", json!({ "n": n })))
        .collect();
    app.enqueue_many(&jobs).await;
    app.wait_for(
        "select count(*) = 10 from penguin.jobs where state = 'completed'",
        Duration::from_secs(10),
        "the jobs completed",
    )
    .await;
    // at least one report (every 5 s) fails while the table is away
    tokio::time::sleep(Duration::from_millis(5500)).await;
    queue_minutes_away(&app, false).await;
    app.wait_for(
        "select coalesce(sum(completed), 0) = 10 from penguin.queue_minutes where queue = 'default'",
        Duration::from_secs(15),
        "the counts kept for the next report",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn notifications_a_failed_batch_could_not_enqueue_are_sent_once_by_the_next_pass() {
    let app = app_with_fake("").await;
    queue::register_daemon(
        &app.pool,
        "d1",
        &["http.request".into(), "mailgun.send".into()],
        &["default".into()],
    )
    .await
    .unwrap();
    // the database refuses the notification jobs (a failure mid-batch)
    sqlx::query(
        "create function public.refuse_notifications() returns trigger language plpgsql as $$
         begin raise exception 'refused for the test'; end $$",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "create trigger refuse_notifications before insert on penguin.jobs for each row
         when (new.unique_key like 'penguin:alert:%') execute function public.refuse_notifications()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    counted(&app.pool, "mailgun", 20, 10, 80.0).await;
    let s = settings(&app);
    let failed = alerts::evaluate(&app.pool, &s).await;
    assert!(failed.is_err(), "the refused batch is an error of the pass");
    // detection did not wait for the notification: the alert is open, not marked notified
    let (open, notified): (i64, i64) = sqlx::query_as(
        "select count(*), count(notified_at) from penguin.alerts where resolved_at is null",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((open, notified), (1, 0));
    let sent = "select count(*) from penguin.jobs where unique_key like 'penguin:alert:%'";
    assert_eq!(app.count(sent).await, 0);
    sqlx::query("drop trigger refuse_notifications on penguin.jobs")
        .execute(&app.pool)
        .await
        .unwrap();
    // the next passes send it, once per target, and only once
    alerts::evaluate(&app.pool, &s).await.unwrap();
    alerts::evaluate(&app.pool, &s).await.unwrap();
    assert_eq!(app.count(sent).await, 2);
    assert_eq!(
        app.count("select count(*) from penguin.alerts where notified_at is null")
            .await,
        0
    );
}
