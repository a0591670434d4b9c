//! Outbound provider kinds against a local fake provider that checks the exact request and
//! injects faults: request shapes per kind, error classes, suppressions, the breaker, the
//! rate limit shared by two daemon processes, metrics, and `wait` on `POST /v1/jobs`.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use penguin_jobs::queue::{self, JobState, NewJob};
use serde_json::{Value, json};
use support::TempDir;
use support::app::{Builder, Shim, TestApp};
use support::fake_provider::{FakeProvider, Recorded, Reply};

const MAILGUN_KEY: &str = "key-test-mailgun-0123456789";
const SENDGRID_KEY: &str = "SG.test-sendgrid-key-0123456789";
const STRIPE_KEY: &str = "sk_test_stripe_key_0123456789";
const POSTHOG_KEY: &str = "phc_test_posthog_key_0123456789";
const API_TOKEN: &str = "test-api-token-for-wait-0123456789-0123456789";

/// Writes the provider keys and the shim's API token to files in `dir`
/// (`dir.file_ref("mailgun")`).
fn write_keys(dir: &TempDir) {
    for (name, key) in [
        ("mailgun", MAILGUN_KEY),
        ("sendgrid", SENDGRID_KEY),
        ("stripe", STRIPE_KEY),
        ("posthog", POSTHOG_KEY),
    ] {
        dir.secret_file(name, &format!("{key}\n"));
    }
    dir.secret_file("token", API_TOKEN);
}

/// An app whose config points every provider at a fake provider (`app.fake()`), with the
/// keys in the app's scratch directory: `config(&fake, dir)` writes the config.
async fn builder_with(config: impl FnOnce(&FakeProvider, &TempDir) -> String) -> Builder {
    let fake = FakeProvider::start().await;
    let app = TestApp::builder();
    write_keys(app.dir());
    let toml = config(&fake, app.dir());
    app.config(&toml).fake_provider(fake)
}

/// [`builder_with`] the usual config ([`toml`]) with `extra` appended; nothing runs yet.
async fn set_up(extra: &str) -> TestApp {
    builder_with(|fake, dir| toml(fake, dir, extra))
        .await
        .build()
        .await
}

/// [`set_up`] with the runtime running.
async fn running(extra: &str) -> TestApp {
    builder_with(|fake, dir| toml(fake, dir, extra))
        .await
        .runtime()
        .build()
        .await
}

/// A config with every provider pointing at `fake`, quick polling and quick retries, and
/// the shim's API token; `extra` is appended (it may add tables such as
/// `[providers.mailgun.circuit_breaker]` or `[kinds."mailgun.send"]`).
fn toml(fake: &FakeProvider, dir: &TempDir, extra: &str) -> String {
    let quick = "strategy = \"fixed\"\nbase = \"100ms\"\nmax = \"100ms\"\njitter = false\n";
    let mut text = format!(
        "[daemon]\npoll_interval = \"50ms\"\nlease = \"5s\"\nrescue_interval = \"200ms\"\nshutdown_grace = \"5s\"\n\
         [providers.mailgun]\napi_key = \"{mg}\"\ndomain = \"mg.example.com\"\nbase_url = \"{url}\"\n\
         [providers.sendgrid]\napi_key = \"{sg}\"\nbase_url = \"{url}\"\nip_pool = \"marketing\"\n\
         [providers.stripe]\nsecret_key = \"{st}\"\nbase_url = \"{url}\"\n\
         [providers.posthog]\napi_key = \"{ph}\"\nhost = \"{url}\"\n\
         [http]\napi_tokens = [\"{token}\"]\n",
        mg = dir.file_ref("mailgun"),
        sg = dir.file_ref("sendgrid"),
        st = dir.file_ref("stripe"),
        ph = dir.file_ref("posthog"),
        token = dir.file_ref("token"),
        url = fake.url,
    );
    for kind in [
        "mailgun.send",
        "sendgrid.send",
        "stripe.account.create",
        "stripe.account_link.create",
        "posthog.capture",
    ] {
        text.push_str(&format!("[kinds.\"{kind}\".backoff]\n{quick}"));
    }
    text.push_str(extra);
    text
}

fn email() -> Value {
    json!({"from": "News <news@mg.example.com>", "to": ["ada@example.com"], "subject": "Hi",
           "html": "<p>Hi</p>", "text": "Hi", "campaign_id": "cmp_42", "recipient_id": "rcp_7",
           "tags": ["launch"], "headers": {"X-Campaign": "42"}})
}

async fn enqueue(pool: &sqlx::PgPool, kind: &str, payload: Value) -> i64 {
    queue::enqueue(pool, &NewJob::new(kind, payload))
        .await
        .expect("enqueue")
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn mailgun_send_posts_the_exact_form_and_records_the_message_as_sent() {
    let mut app = running("").await;
    let id = enqueue(&app.pool, "mailgun.send", email()).await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    let requests = app.fake().requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v3/mg.example.com/messages");
    assert_eq!(
        r.header("authorization"),
        Some(basic("api", MAILGUN_KEY).as_str())
    );
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("multipart/form-data")
    );
    let mut form = r.form();
    form.sort();
    let mut expected: Vec<(String, String)> = [
        ("from", "News <news@mg.example.com>"),
        ("to", "ada@example.com"),
        ("subject", "Hi"),
        ("text", "Hi"),
        ("html", "<p>Hi</p>"),
        ("o:tag", "launch"),
        ("h:X-Campaign", "42"),
        ("v:campaign-id", "cmp_42"),
        ("v:recipient-id", "rcp_7"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    expected.sort();
    assert_eq!(form, expected);

    let job = app.job(id).await;
    let result = job.result.unwrap();
    assert_eq!(result["outcome"], "sent");
    assert_eq!(result["message_id"], "20261126.1@mg.example.com");
    let (status, message_id): (String, String) = sqlx::query_as(
        "select status, provider_message_id from penguin.email_status
          where campaign_id = 'cmp_42' and recipient = 'ada@example.com'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), message_id.as_str()),
        ("sent", "20261126.1@mg.example.com")
    );
}

#[tokio::test]
async fn sendgrid_send_posts_the_exact_json_and_keeps_the_x_message_id() {
    let mut app = running("").await;
    let id = enqueue(&app.pool, "sendgrid.send", email()).await;
    let template = enqueue(
        &app.pool,
        "sendgrid.send",
        json!({"from": "news@example.com", "to": ["bob@example.com"], "template_id": "d-123",
               "template_data": {"first_name": "Bob"}, "campaign_id": "cmp_42"}),
    )
    .await;
    app.wait_for_state(id, JobState::Completed).await;
    app.wait_for_state(template, JobState::Completed).await;
    app.stop().await;

    let requests = app.fake().requests_to("/v3/mail/send");
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_eq!(r.method, "POST");
        let bearer = format!("Bearer {SENDGRID_KEY}");
        assert_eq!(r.header("authorization"), Some(bearer.as_str()));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let plain = requests
        .iter()
        .find(|r| r.json().get("template_id").is_none())
        .unwrap();
    assert_eq!(
        plain.json(),
        json!({
            "personalizations": [{"to": [{"email": "ada@example.com"}]}],
            "from": {"email": "news@mg.example.com", "name": "News"},
            "subject": "Hi",
            "content": [{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}],
            "custom_args": {"campaignId": "cmp_42", "recipientId": "rcp_7"},
            "categories": ["launch"],
            "headers": {"X-Campaign": "42"},
            "ip_pool_name": "marketing"
        })
    );
    let templated = requests
        .iter()
        .find(|r| r.json().get("template_id").is_some())
        .unwrap();
    assert_eq!(
        templated.json(),
        json!({
            "personalizations": [{"to": [{"email": "bob@example.com"}],
                                  "dynamic_template_data": {"first_name": "Bob"}}],
            "from": {"email": "news@example.com"},
            "template_id": "d-123",
            "custom_args": {"campaignId": "cmp_42"},
            "ip_pool_name": "marketing"
        })
    );
    let result = app.job(id).await.result.unwrap();
    assert!(
        result["message_id"]
            .as_str()
            .unwrap()
            .starts_with("sg-message-")
    );
    assert_eq!(
        app.count("select count(*) from penguin.email_status where status = 'sent' and provider = 'sendgrid'").await,
        2
    );
}

#[tokio::test]
async fn stripe_account_create_sends_the_connect_form_with_a_stable_idempotency_key() {
    let mut app = set_up("").await;
    // the first answer is lost in a 500: the retry must carry the same key
    app.fake().push(
        "/v1/accounts",
        Reply::status(
            500,
            json!({"error": {"message": "boom", "type": "api_error"}}),
        ),
    );
    app.start_runtime();
    let tenant = uuid::Uuid::from_u128(rand::random::<u128>());
    let id = enqueue(
        &app.pool,
        "stripe.account.create",
        json!({"email": "owner@example.com", "country": "US", "tenant_id": tenant}),
    )
    .await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    let requests = app.fake().requests_to("/v1/accounts");
    assert_eq!(requests.len(), 2);
    let key = format!("penguin-jobs:stripe.account.create:{id}");
    for r in &requests {
        assert_eq!(r.method, "POST");
        let bearer = format!("Bearer {STRIPE_KEY}");
        assert_eq!(r.header("authorization"), Some(bearer.as_str()));
        assert_eq!(r.header("idempotency-key"), Some(key.as_str()));
        assert_eq!(
            r.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            r.form(),
            vec![
                ("type".to_string(), "express".to_string()),
                ("country".into(), "US".into()),
                ("email".into(), "owner@example.com".into()),
                (
                    "capabilities[card_payments][requested]".into(),
                    "true".into()
                ),
                ("capabilities[transfers][requested]".into(), "true".into()),
                ("metadata[tenant_id]".into(), tenant.to_string()),
            ]
        );
    }
    let result = app.job(id).await.result.unwrap();
    let account = result["account"].as_str().unwrap().to_string();
    assert!(account.starts_with("acct_"));
    let stored: Option<uuid::Uuid> =
        sqlx::query_scalar("select tenant_id from penguin.connect_accounts where id = $1")
            .bind(&account)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, Some(tenant));
}

/// A `posthog.capture` job for user `i` with `properties`.
fn capture_job(i: usize, properties: Value) -> NewJob {
    NewJob::new(
        "posthog.capture",
        json!({"event": "campaign_sent", "distinct_id": format!("user_{i}"),
               "properties": properties, "organization_id": "org_1",
               "timestamp": "2026-11-26T10:00:00Z"}),
    )
}

#[tokio::test]
async fn posthog_capture_jobs_ready_together_share_batch_calls() {
    let mut app = set_up("[queues.default]\nconcurrency = 200\nbatch = 200\n").await;
    let jobs: Vec<NewJob> = (0..150)
        .map(|i| capture_job(i, json!({"campaign": "cmp_42"})))
        .collect();
    app.enqueue_many(&jobs).await;
    app.start_runtime();
    app.wait_for(
        "select count(*) = 150 from penguin.jobs where state = 'completed' and kind = 'posthog.capture'",
        Duration::from_secs(30),
        "150 captures",
    )
    .await;
    app.stop().await;

    let calls = app.fake().requests_to("/batch/");
    assert!(
        calls.len() < 150 / 10,
        "{} calls for 150 events",
        calls.len()
    );
    let mut users = Vec::new();
    for call in &calls {
        let body = call.json();
        assert_eq!(body["api_key"], POSTHOG_KEY);
        let batch = body["batch"].as_array().unwrap();
        assert!(batch.len() <= 100);
        for e in batch {
            assert_eq!(e["event"], "campaign_sent");
            assert_eq!(e["properties"]["$groups"], json!({"organization": "org_1"}));
            assert_eq!(e["properties"]["campaign"], "cmp_42");
            assert_eq!(e["timestamp"], "2026-11-26T10:00:00.000Z");
            users.push(e["distinct_id"].as_str().unwrap().to_string());
        }
    }
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 150, "every event sent exactly once");
}

#[tokio::test]
async fn a_500_then_200_is_retried_and_completes() {
    let mut app = set_up("").await;
    app.fake()
        .push("/v3/", Reply::status(500, json!({"message": "internal"})));
    app.start_runtime();
    let id = enqueue(&app.pool, "mailgun.send", email()).await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    assert_eq!(app.fake().requests().len(), 2);
    let job = app.job(id).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors[0]["class"], "api");
    assert_eq!(job.errors[0]["status"], 500);
}

#[tokio::test]
async fn a_429_with_retry_after_runs_again_no_earlier_than_it_says() {
    let mut app = set_up("").await;
    app.fake().push(
        "/v3/mail/send",
        Reply::status(429, json!({"errors": [{"message": "too many requests"}]}))
            .with_header("retry-after", "2"),
    );
    app.start_runtime();
    let id = enqueue(&app.pool, "sendgrid.send", email()).await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    let requests = app.fake().requests();
    assert_eq!(
        requests.len(),
        2,
        "one refused call, one retry: no calls while waiting"
    );
    let gap = requests[1].at - requests[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    let job = app.job(id).await;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.errors[0]["class"], "rate_limit");
}

#[tokio::test]
async fn a_400_is_dead_lettered_at_once_with_the_providers_message() {
    let mut app = set_up("").await;
    app.fake().push(
        "/v3/",
        Reply::status(
            400,
            json!({"message": "'to' parameter is not a valid address. please check documentation"}),
        ),
    );
    app.start_runtime();
    let id = enqueue(&app.pool, "mailgun.send", email()).await;
    let dead = app.wait_for_dead_letter(id).await;
    app.stop().await;

    assert_eq!(app.fake().requests().len(), 1);
    assert_eq!(dead.reason, "permanent_error");
    let last = dead.errors.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["class"], "data");
    assert_eq!(last["status"], 400);
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("'to' parameter is not a valid address"),
        "{last}"
    );
}

#[tokio::test]
async fn a_timeout_and_a_dropped_connection_are_retried() {
    let mut app = set_up("[kinds.\"mailgun.send\"]\ntimeout = \"1s\"\n").await;
    app.fake()
        .push("/v3/", Reply::Delay(Duration::from_secs(5)));
    app.fake().push("/v3/", Reply::Reset);
    app.start_runtime();
    let id = enqueue(&app.pool, "mailgun.send", email()).await;
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    assert_eq!(app.fake().requests().len(), 3);
    let job = app.job(id).await;
    assert_eq!(job.attempt, 3);
    assert_eq!(job.errors[0]["class"], "timeout");
    assert_eq!(job.errors[1]["class"], "network");
}

#[tokio::test]
async fn a_401_is_dead_lettered_and_marks_the_integration_error() {
    let mut app = set_up("").await;
    app.fake().push("/v1/accounts", Reply::status(401, json!({"error": {"message": "Invalid API Key provided: sk_test_****6789", "type": "invalid_request_error"}})));
    app.start_runtime();
    let id = enqueue(
        &app.pool,
        "stripe.account.create",
        json!({"email": "owner@example.com", "country": "US"}),
    )
    .await;
    let dead = app.wait_for_dead_letter(id).await;
    app.stop().await;

    assert_eq!(app.fake().requests().len(), 1);
    let last = dead.errors.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["class"], "authentication");
    assert!(!dead.errors.to_string().contains(STRIPE_KEY));
    let integration = queue::integrations::get_integration(&app.pool, "stripe")
        .await
        .unwrap()
        .expect("a stripe row");
    assert_eq!(integration.status, "error");
    assert_eq!(
        integration.last_error_class.as_deref(),
        Some("authentication")
    );
    // operators see it from the CLI
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_penguin-jobs"))
        .args(["integrations"])
        .env("DATABASE_URL", &app.url)
        .current_dir(&app.dir.0)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let table = String::from_utf8_lossy(&shown.stdout);
    let line = table
        .lines()
        .find(|l| l.starts_with("stripe"))
        .expect("a stripe line");
    assert!(
        line.contains("error") && line.contains("[authentication]"),
        "{table}"
    );
    assert!(!table.contains(STRIPE_KEY));
}

#[tokio::test]
async fn a_409_idempotency_conflict_is_not_retried_unless_stripe_says_so() {
    let mut app = set_up("").await;
    app.fake().push("/v1/accounts", Reply::status(409, json!({"error": {"message": "Keys for idempotent requests can only be used with the same parameters they were first used with.", "type": "idempotency_error"}})));
    app.fake().push(
        "/v1/account_links",
        Reply::status(409, json!({"error": {"message": "There is currently another in-progress request using this Idempotent Key", "type": "invalid_request_error"}}))
            .with_header("stripe-should-retry", "true"),
    );
    app.start_runtime();
    let conflict = enqueue(
        &app.pool,
        "stripe.account.create",
        json!({"email": "owner@example.com", "country": "US"}),
    )
    .await;
    let in_flight = enqueue(
        &app.pool,
        "stripe.account_link.create",
        json!({"account": "acct_1", "refresh_url": "https://app.example.com/r", "return_url": "https://app.example.com/d"}),
    )
    .await;
    let dead = app.wait_for_dead_letter(conflict).await;
    app.wait_for_state(in_flight, JobState::Completed).await;
    app.stop().await;

    assert_eq!(app.fake().requests_to("/v1/accounts").len(), 1);
    assert!(dead.errors.to_string().contains("idempotency conflict"));
    assert_eq!(app.fake().requests_to("/v1/account_links").len(), 2);
    let result = app.job(in_flight).await.result.unwrap();
    assert!(
        result["url"]
            .as_str()
            .unwrap()
            .starts_with("https://connect.stripe.com/setup/")
    );
}

#[tokio::test]
async fn a_bad_payload_enqueued_through_sql_is_dead_lettered_as_data_without_a_call() {
    let mut app = running("").await;
    let id: i64 = sqlx::query_scalar(
        "select penguin.enqueue('mailgun.send', '{\"from\": \"a@example.com\", \"to\": []}')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let dead = app.wait_for_dead_letter(id).await;
    app.stop().await;

    assert!(app.fake().requests().is_empty());
    assert_eq!(dead.attempt, 1);
    let last = dead.errors.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["class"], "data");
    assert!(last["message"].as_str().unwrap().contains("to:"), "{last}");
}

#[tokio::test]
async fn suppressed_recipients_are_skipped_and_a_fully_suppressed_send_makes_no_call() {
    let mut app = set_up("").await;
    sqlx::query("insert into penguin.suppressions (address, reason, provider) values ('ada@example.com', 'hard_bounce', 'mailgun')")
        .execute(&app.pool)
        .await
        .unwrap();
    app.start_runtime();
    let only_ada = enqueue(&app.pool, "mailgun.send", email()).await;
    let mut both = email();
    both["to"] = json!(["Ada <ADA@example.com>", "bob@example.com"]);
    let both = enqueue(&app.pool, "mailgun.send", both).await;
    app.wait_for_state(only_ada, JobState::Completed).await;
    app.wait_for_state(both, JobState::Completed).await;
    app.stop().await;

    let result = app.job(only_ada).await.result.unwrap();
    assert_eq!(result["outcome"], "suppressed");
    assert_eq!(result["suppressed"], json!(["ada@example.com"]));
    let requests = app.fake().requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].field("to"), vec!["bob@example.com"]);
}

#[tokio::test]
async fn a_send_the_provider_already_accepted_is_not_sent_again() {
    let mut app = set_up("").await;
    // as if the daemon died after the provider's answer, before the job's outcome
    let id = enqueue(&app.pool, "mailgun.send", email()).await;
    queue::email::record_send(
        &app.pool,
        &queue::email::AcceptedSend {
            job_id: id,
            provider: "mailgun",
            provider_message_id: "earlier@mg.example.com".into(),
            campaign_id: Some("cmp_42".into()),
            recipient_id: None,
            recipients: vec!["ada@example.com".into()],
            accepted_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    app.start_runtime();
    app.wait_for_state(id, JobState::Completed).await;
    app.stop().await;

    assert!(app.fake().requests().is_empty());
    let result = app.job(id).await.result.unwrap();
    assert_eq!(result["deduplicated"], true);
    assert_eq!(result["message_id"], "earlier@mg.example.com");
}

#[tokio::test]
async fn the_breaker_opens_after_the_threshold_and_a_probe_closes_it_after_recovery() {
    let mut app = set_up(
        "[providers.mailgun.circuit_breaker]\nfailure_threshold = 3\nrecovery_timeout = \"1s\"\nmonitoring_period = \"1m\"\n",
    )
    .await;
    for _ in 0..3 {
        app.fake().push(
            "/v3/",
            Reply::status(503, json!({"message": "unavailable"})),
        );
    }
    app.start_runtime();
    // three failing attempts open the breaker
    let first = enqueue(&app.pool, "mailgun.send", email()).await;
    app.wait_for(
        "select exists (select 1 from penguin.integrations where provider = 'mailgun' and breaker = 'open')",
        Duration::from_secs(20),
        "breaker open",
    )
    .await;
    // jobs arriving while it is open wait without calling
    let later: Vec<i64> =
        futures::future::join_all((0..3).map(|_| enqueue(&app.pool, "mailgun.send", email())))
            .await;
    for id in later.iter().chain([&first]) {
        app.wait_for_state(*id, JobState::Completed).await;
    }
    app.stop().await;

    let requests = app.fake().requests();
    assert_eq!(
        requests.len(),
        3 + 4,
        "three failures, then one call per job"
    );
    let closed_gap = requests[3].at - requests[2].at;
    assert!(
        closed_gap >= Duration::from_millis(950),
        "no call while open: probe after {closed_gap:?}"
    );
    let integration = queue::integrations::get_integration(&app.pool, "mailgun")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (integration.breaker.as_str(), integration.failures),
        ("closed", 0)
    );
    for id in later {
        let job = app.job(id).await;
        assert_eq!(job.attempt, 1, "waiting for the breaker spends no attempt");
        assert_eq!(job.errors, json!([]));
    }
}

#[tokio::test]
async fn calls_are_counted_per_minute_provider_kind_and_status_class() {
    let mut app = set_up("").await;
    app.fake()
        .push("/v3/mail/send", Reply::status(500, json!({})));
    app.start_runtime();
    let a = enqueue(&app.pool, "sendgrid.send", email()).await;
    let b = enqueue(&app.pool, "sendgrid.send", email()).await;
    app.wait_for_state(a, JobState::Completed).await;
    app.wait_for_state(b, JobState::Completed).await;
    app.wait_for(
        "select coalesce(sum(calls), 0) = 3 from penguin.integration_metrics where provider = 'sendgrid'",
        Duration::from_secs(10),
        "three calls counted",
    )
    .await;
    app.stop().await;
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select kind, status_class, sum(calls)::bigint from penguin.integration_metrics
          group by 1, 2 order by 2",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("sendgrid.send".to_string(), "2xx".to_string(), 2),
            ("sendgrid.send".to_string(), "5xx".to_string(), 1)
        ]
    );
    // and in the Prometheus histogram of outbound latency
    let text = app.metrics_text();
    for line in [
        "penguin_jobs_outbound_request_duration_seconds_count{provider=\"sendgrid\",status_class=\"2xx\"} 2",
        "penguin_jobs_outbound_request_duration_seconds_count{provider=\"sendgrid\",status_class=\"5xx\"} 1",
        "penguin_jobs_attempts_total{kind=\"sendgrid.send\",outcome=\"retried\"} 1",
        "penguin_jobs_attempts_total{kind=\"sendgrid.send\",outcome=\"completed\"} 2",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}

#[tokio::test]
async fn the_rate_limit_holds_for_two_daemon_processes_together() {
    let app = set_up(
        "[queues.default]\nconcurrency = 4\nbatch = 2\n\
         [providers.sendgrid.rate_limit]\nper_second = 5\nburst = 1\n",
    )
    .await;
    let jobs: Vec<NewJob> = (0..20)
        .map(|_| NewJob::new("sendgrid.send", email()))
        .collect();
    app.enqueue_many(&jobs).await;
    let mut a = app.spawn_daemon("a.log");
    let mut b = app.spawn_daemon("b.log");
    let mut workers = std::collections::BTreeSet::new();
    let done =
        "select count(*) from penguin.jobs where state = 'completed' and kind = 'sendgrid.send'";
    let sent = support::poll_until(Duration::from_secs(30), async || {
        let running: Vec<String> = sqlx::query_scalar(
            "select distinct leased_by from penguin.jobs where leased_by is not null",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap();
        workers.extend(
            running
                .into_iter()
                .map(|w| w.split('/').next().unwrap_or("").to_string()),
        );
        app.count(done).await == 20
    })
    .await;
    assert!(
        sent.is_some(),
        "20 sends within 30 s ({} done)",
        app.count(done).await
    );
    support::daemon::stop_daemon(&mut a);
    support::daemon::stop_daemon(&mut b);

    let times: Vec<Instant> = app
        .fake()
        .requests()
        .iter()
        .map(|r: &Recorded| r.at)
        .collect();
    assert_eq!(
        times.len(),
        20,
        "one call per job; daemon logs:\n{}\n{}",
        app.log("a.log"),
        app.log("b.log")
    );
    // a bucket of 1 refilled at 5/s: any n calls span at least (n - 1) / 5 seconds (a
    // little slack for the time between the bucket's clock and the fake's)
    for i in 0..times.len() {
        for j in i + 1..times.len() {
            let span = (times[j] - times[i]).as_secs_f64();
            let calls = (j - i + 1) as f64;
            assert!(
                calls <= 1.0 + 5.0 * span + 1.0,
                "{calls} calls in {span:.3}s"
            );
        }
    }
    let span = (times[19] - times[0]).as_secs_f64();
    assert!(span >= 19.0 / 5.0 - 1.0, "20 calls took only {span:.2}s");
    assert!(workers.len() >= 2, "both daemons worked: {workers:?}");
}

/// [`set_up`] serving the shim too (its API token is [`API_TOKEN`]).
async fn serving() -> TestApp {
    builder_with(|fake, dir| toml(fake, dir, ""))
        .await
        .shim()
        .build()
        .await
}

/// The shim's job API as the backend calls it.
struct Api<'a>(&'a Shim);

impl Api<'_> {
    /// `POST /v1/jobs`: status and JSON answer.
    async fn post(&self, body: &Value) -> (u16, Value) {
        let answer = self
            .0
            .client
            .post(self.0.url("/v1/jobs"))
            .bearer_auth(API_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }

    /// `GET path`, with the token or without.
    async fn get(&self, path: &str, authenticated: bool) -> (u16, Value) {
        let mut request = self.0.client.get(self.0.url(path));
        if authenticated {
            request = request.bearer_auth(API_TOKEN);
        }
        let answer = request.send().await.unwrap();
        (answer.status().as_u16(), answer.json().await.unwrap())
    }
}

#[tokio::test]
async fn an_account_link_enqueued_with_wait_comes_back_in_the_answer() {
    let mut app = serving().await;
    app.start_runtime();
    let api = Api(app.shim());
    let link = json!({"kind": "stripe.account_link.create", "wait": "10s",
                      "payload": {"account": "acct_1", "refresh_url": "https://app.example.com/r",
                                  "return_url": "https://app.example.com/d"}});
    let (status, body) = api.post(&link).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "completed");
    assert!(
        body["result"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://connect.stripe.com/setup/e/acct_1/")
    );
    assert!(body["result"]["expires_at"].is_string());
    let sent = &app.fake().requests_to("/v1/account_links")[0];
    assert_eq!(
        sent.form(),
        vec![
            ("account".to_string(), "acct_1".to_string()),
            ("refresh_url".into(), "https://app.example.com/r".into()),
            ("return_url".into(), "https://app.example.com/d".into()),
            ("type".into(), "account_onboarding".into()),
        ]
    );
    let id = body["id"].as_i64().unwrap();
    let key = format!("penguin-jobs:stripe.account_link.create:{id}");
    assert_eq!(sent.header("idempotency-key"), Some(key.as_str()));
    let priority: i16 = sqlx::query_scalar("select priority from penguin.jobs where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(priority < 0, "account links jump the queue: {priority}");

    // a slow provider: the answer comes at the timeout with the id to poll
    app.fake()
        .push("/v1/account_links", Reply::Delay(Duration::from_secs(2)));
    let mut slow = link.clone();
    slow["wait"] = json!("300ms");
    let (status, body) = api.post(&slow).await;
    assert_eq!(status, 202);
    let id = body["id"].as_i64().unwrap();
    assert!(
        ["available", "running"].contains(&body["state"].as_str().unwrap()),
        "{body}"
    );
    app.wait_for_state(id, JobState::Completed).await;
    let (status, polled) = api.get(&format!("/v1/jobs/{id}"), true).await;
    assert_eq!(status, 200);
    assert_eq!(polled["state"], "completed");
    assert!(polled["result"]["url"].is_string());

    // no token, unknown id, bad wait, bad payload
    assert_eq!(api.get(&format!("/v1/jobs/{id}"), false).await.0, 401);
    assert_eq!(api.get("/v1/jobs/999999", true).await.0, 404);
    let mut too_long = link.clone();
    too_long["wait"] = json!("5m");
    assert_eq!(api.post(&too_long).await.0, 422);
    let (status, message) = api
        .post(&json!({"kind": "mailgun.send", "payload": {"from": "a@example.com", "to": ["nobody"]}}))
        .await;
    assert_eq!(status, 422);
    assert!(
        message["error"].as_str().unwrap().contains("to:"),
        "{message}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_fails_for_good_is_reported_dead_to_the_waiting_caller() {
    let mut app = serving().await;
    app.fake().push("/v1/account_links", Reply::status(400, json!({"error": {"message": "No such account: 'acct_gone'", "type": "invalid_request_error", "code": "resource_missing"}})));
    app.start_runtime();
    let api = Api(app.shim());
    let (status, answer) = api
        .post(&json!({"kind": "stripe.account_link.create", "wait": "10s",
                       "payload": {"account": "acct_gone", "refresh_url": "https://app.example.com/r",
                                   "return_url": "https://app.example.com/d"}}))
        .await;
    assert_eq!(status, 200);
    app.stop().await;
    assert_eq!(answer["state"], "dead");
    assert_eq!(answer["dead_reason"], "permanent_error");
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("No such account: 'acct_gone' (invalid_request_error, resource_missing)"),
        "{answer}"
    );
}

#[tokio::test]
async fn an_active_key_in_api_keys_is_used_instead_of_the_configured_one() {
    let keyring =
        penguin_jobs::secrets::Keyring::new(penguin_jobs::secrets::MasterKey::generate(), vec![]);
    let mut app = builder_with(|fake, dir| toml(fake, dir, ""))
        .await
        .keyring(keyring.clone())
        .build()
        .await;
    let stored = secrecy::SecretString::from("SG.stored-and-rotated-key-9876543210".to_string());
    penguin_jobs::credentials::keys::set_key(
        &app.pool,
        &keyring,
        "sendgrid",
        "production",
        &stored,
        &penguin_jobs::credentials::keys::KeyMeta::default(),
        Duration::from_secs(86_400),
        penguin_jobs::credentials::Actor::Cli,
    )
    .await
    .unwrap();
    app.start_runtime();
    let sendgrid = enqueue(&app.pool, "sendgrid.send", email()).await;
    let mailgun = enqueue(&app.pool, "mailgun.send", email()).await;
    app.wait_for_state(sendgrid, JobState::Completed).await;
    app.wait_for_state(mailgun, JobState::Completed).await;
    app.stop().await;

    let sent = &app.fake().requests_to("/v3/mail/send")[0];
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer SG.stored-and-rotated-key-9876543210")
    );
    // no key stored for Mailgun: the configured one
    let sent = &app.fake().requests_to("/v3/mg.example.com")[0];
    assert_eq!(
        sent.header("authorization"),
        Some(basic("api", MAILGUN_KEY).as_str())
    );
}

#[tokio::test]
async fn sends_recorded_together_never_hide_a_webhook_status_and_never_collide() {
    let app = TestApp::new().await;
    sqlx::query(
        "with ev as (
             insert into penguin.email_events (provider, event_type, status, campaign_id, recipient, occurred_at)
             values ('mailgun', 'delivered', 'delivered', 'cmp_1', 'ada@example.com', now())
             returning id)
         insert into penguin.email_status (campaign_id, recipient, status, provider, occurred_at, email_event_id)
         select 'cmp_1', 'ada@example.com', 'delivered', 'mailgun', now(), id from ev",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let send = |job_id: i64, to: &str, message: &str| queue::email::AcceptedSend {
        job_id,
        provider: "mailgun",
        provider_message_id: message.into(),
        campaign_id: Some("cmp_1".into()),
        recipient_id: None,
        recipients: vec![to.into()],
        accepted_at: chrono::Utc::now(),
    };
    // two sends to bob in one batch, and one to ada whose webhook came first
    let batch = vec![
        send(1, "bob@example.com", "m1"),
        send(2, "bob@example.com", "m2"),
        send(3, "ada@example.com", "m3"),
    ];
    queue::email::record_sends(&app.pool, &batch).await.unwrap();
    queue::email::record_sends(&app.pool, &batch).await.unwrap();
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select recipient, status, provider_message_id from penguin.email_status order by recipient",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows[0],
        ("ada@example.com".into(), "delivered".into(), None)
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str()),
        ("bob@example.com", "sent")
    );
    assert_eq!(
        app.count("select count(*) from penguin.email_events where event_type = 'sent'")
            .await,
        3,
        "recording the same sends again adds nothing"
    );
    let checks = queue::email::check_sends(
        &app.pool,
        &[(2, vec!["bob@example.com".into()]), (99, vec![])],
    )
    .await
    .unwrap();
    assert_eq!(checks[0].already_sent.as_deref(), Some("m2"));
    assert_eq!(checks[1].already_sent, None);
}

#[tokio::test]
async fn a_job_snoozed_by_the_rate_limit_runs_when_a_token_is_free_not_at_the_next_poll() {
    // polling every 30 s: only the claimer's own wake-up can run the snoozed job sooner
    let mut app = builder_with(|fake, dir| {
        toml(
            fake,
            dir,
            "[providers.sendgrid.rate_limit]\nper_second = 2\nburst = 1\n",
        )
        .replace("poll_interval = \"50ms\"", "poll_interval = \"30s\"")
    })
    .await
    .runtime()
    .build()
    .await;
    let started = Instant::now();
    let first = enqueue(&app.pool, "sendgrid.send", email()).await;
    let second = enqueue(&app.pool, "sendgrid.send", email()).await;
    let third = enqueue(&app.pool, "sendgrid.send", email()).await;
    for id in [first, second, third] {
        app.wait_for_state(id, JobState::Completed).await;
    }
    let took = started.elapsed();
    app.stop().await;
    assert!(
        took < Duration::from_secs(10),
        "three sends at 2/s took {took:?}: snoozed jobs waited for the 30 s poll"
    );
    let times: Vec<Instant> = app.fake().requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 3);
    assert!(
        times[2] - times[0] >= Duration::from_millis(900),
        "the limit held"
    );
    for id in [first, second, third] {
        assert_eq!(app.job(id).await.attempt, 1);
    }
}

/// Every error entry of `errors` (a job's or a dead letter's): storable, and short.
fn assert_clean_errors(errors: &Value, expected: usize) -> Vec<String> {
    let entries = errors.as_array().expect("errors is an array");
    assert_eq!(entries.len(), expected, "{errors}");
    entries
        .iter()
        .map(|e| {
            let message = e["message"].as_str().expect("a message").to_string();
            assert!(!message.contains('\0'), "{message:?}");
            assert!(message.len() <= 600, "{} bytes", message.len());
            assert_eq!(e["class"], "api", "{e}");
            assert_eq!(e["status"], 500, "{e}");
            message
        })
        .collect()
}

#[tokio::test]
async fn a_provider_answering_nul_bytes_or_megabytes_is_retried_with_clean_short_errors() {
    let mut app = set_up("").await;
    // Mailgun: a JSON `\u0000`, a raw NUL and invalid UTF-8, then 1 MB; then it recovers
    app.fake()
        .push("/v3/mg", Reply::status(500, json!({"message": "bad\u{0}"})));
    app.fake().push(
        "/v3/mg",
        Reply::raw(500, "text/plain", &b"bad\x00gateway\xff\xfe"[..]),
    );
    app.fake().push(
        "/v3/mg",
        Reply::raw(500, "text/plain", vec![b'x'; 1024 * 1024]),
    );
    // SendGrid: NUL in its error list until the job runs out of attempts
    for _ in 0..2 {
        app.fake().push(
            "/v3/mail/send",
            Reply::status(
                500,
                json!({"errors": [{"field": "to\u{0}", "message": "down\u{0}"}]}),
            ),
        );
    }
    app.start_runtime();
    let sent = enqueue(&app.pool, "mailgun.send", email()).await;
    let dead = queue::enqueue(
        &app.pool,
        &NewJob {
            max_attempts: Some(2),
            ..NewJob::new("sendgrid.send", email())
        },
    )
    .await
    .unwrap();
    app.wait_for_state(sent, JobState::Completed).await;
    let dead = app.wait_for_dead_letter(dead).await;
    app.stop().await;

    let job = app.job(sent).await;
    assert_eq!(job.attempt, 4);
    let messages = assert_clean_errors(&job.errors, 3);
    assert_eq!(messages[0], "HTTP 500: bad\u{fffd}");
    assert_eq!(messages[1], "HTTP 500: bad\u{fffd}gateway\u{fffd}\u{fffd}");
    assert!(messages[2].starts_with("HTTP 500: xxx") && messages[2].ends_with('…'));
    assert_eq!(job.result.unwrap()["outcome"], "sent");

    assert_eq!(dead.reason, "attempts_exhausted");
    let messages = assert_clean_errors(&dead.errors, 2);
    assert_eq!(messages[1], "HTTP 500: to\u{fffd}: down\u{fffd}");
    assert_eq!(
        app.count("select count(*) from penguin.jobs where state not in ('completed')")
            .await,
        0
    );
}

#[tokio::test]
async fn a_posthog_batch_refused_for_one_bad_event_is_resent_event_by_event() {
    let mut app = set_up("[queues.default]\nconcurrency = 100\n").await;
    let jobs: Vec<NewJob> = (0..40)
        .map(|i| capture_job(i, json!({"refuse_me": i == 7})))
        .collect();
    app.enqueue_many(&jobs).await;
    app.start_runtime();
    app.wait_for(
        "select (select count(*) = 39 from penguin.jobs where state = 'completed' and kind = 'posthog.capture')
            and (select count(*) = 1 from penguin.dead_letters)",
        Duration::from_secs(30),
        "39 captures and one dead letter",
    )
    .await;
    app.stop().await;
    let dead = &app.newest_dead_letter().await;
    assert_eq!(dead.payload["distinct_id"], "user_7");
    assert_eq!(dead.reason, "permanent_error");
    assert_eq!(dead.errors[0]["status"], 400);
    // some batch held the bad event with others, and those others were sent again alone
    let calls = app.fake().requests_to("/batch/");
    assert!(
        calls
            .iter()
            .any(|c| c.json()["batch"].as_array().unwrap().len() > 1
                && c.json()["batch"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e["properties"]["refuse_me"] == true)),
        "the bad event was never batched with others: the test proves nothing"
    );
}
