//! Scoped API tokens against the real shim and PostgreSQL: which kinds a token may enqueue,
//! internal kinds and the daemon's unique keys out of a caller's reach, tenants kept apart,
//! the actor recorded from the token, short tokens refused at start.

mod support;

use std::sync::Arc;

use penguin_jobs::credentials::Actor;
use penguin_jobs::http::AppState;
use penguin_jobs::queue::{self, JobState};
use serde_json::{Value, json};
use support::app::TestApp;

const PLAIN: &str = "plain-token-0123456789-0123456789-0123456789";
const MAILER: &str = "mailer-token-0123456789-0123456789-0123456789";
const TENANT_A: &str = "tenant-a-token-0123456789-0123456789-012345";
const TENANT_B: &str = "tenant-b-token-0123456789-0123456789-012345";
const OPS: &str = "ops-token-0123456789-0123456789-0123456789-01";
const A: &str = "0b5a8f57-3f7c-4a8e-9d3c-111111111111";
const B: &str = "0b5a8f57-3f7c-4a8e-9d3c-222222222222";

async fn shim() -> TestApp {
    let builder = TestApp::builder();
    let dir = builder.dir();
    let toml = format!(
        "[http]\napi_tokens = [\"{}\"]\n\
         [http.tokens.mailer]\nsecret = \"{}\"\nkinds = [\"noop\"]\n\
         [http.tokens.tenant-a]\nsecret = \"{}\"\ntenant = \"{A}\"\n\
         [http.tokens.tenant-b]\nsecret = \"{}\"\ntenant = \"{B}\"\n\
         [http.tokens.ops]\nsecret = \"{}\"\nkinds = [\"apikey.rotate\", \"noop\"]\n",
        dir.secret_file("plain", PLAIN),
        dir.secret_file("mailer", MAILER),
        dir.secret_file("a", TENANT_A),
        dir.secret_file("b", TENANT_B),
        dir.secret_file("ops", OPS),
    );
    builder.config(&toml).shim().build().await
}

async fn post(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let shim = app.shim();
    let resp = shim
        .client
        .post(shim.url("/v1/jobs"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(app: &TestApp, token: &str, id: i64) -> (u16, Value) {
    let shim = app.shim();
    let resp = shim
        .client
        .get(shim.url(&format!("/v1/jobs/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn error(answer: &(u16, Value)) -> &str {
    answer.1["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_token_enqueues_only_its_kinds_and_internal_kinds_only_when_named() {
    let app = shim().await;
    assert_eq!(
        post(&app, PLAIN, json!({"kind": "noop", "payload": {}}))
            .await
            .0,
        202
    );
    for internal in [
        "apikey.rotate",
        "oauth.refresh",
        "maintenance.prune",
        "stripe.event",
    ] {
        let refused = post(&app, PLAIN, json!({"kind": internal, "payload": {}})).await;
        assert_eq!(refused.0, 403, "{internal}: {refused:?}");
        assert!(error(&refused).contains("an internal kind"), "{refused:?}");
    }
    let refused = post(
        &app,
        MAILER,
        json!({"kind": "http.request", "payload": {"url": "https://example.com/"}}),
    )
    .await;
    assert_eq!(refused.0, 403, "{refused:?}");
    assert_eq!(
        error(&refused),
        "this token may not enqueue \"http.request\""
    );
    assert_eq!(
        post(&app, MAILER, json!({"kind": "noop", "payload": {}}))
            .await
            .0,
        202
    );
    assert_eq!(
        app.count("select count(*) from penguin.jobs").await,
        2,
        "nothing refused was written"
    );
}

#[tokio::test]
async fn the_daemons_unique_keys_cannot_be_squatted() {
    let app = shim().await;
    // the key the rotation schedule uses, taken ahead with a job that never runs
    let reserved = queue::reserved_key("apikey.rotate:sendgrid:production");
    let squat = post(
        &app,
        PLAIN,
        json!({"kind": "noop", "payload": {}, "unique_key": reserved, "run_at": "9999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(squat.0, 422, "{squat:?}");
    assert!(error(&squat).contains("reserved for the daemon's own jobs"));
    // the same words without the prefix, or a job of another kind: not the rotation's key
    let other = post(
        &app,
        PLAIN,
        json!({"kind": "noop", "payload": {}, "unique_key": "apikey.rotate:sendgrid:production",
               "run_at": "9999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(other.0, 202, "{other:?}");
    let rotation =
        penguin_jobs::credentials::keys::rotation_job("sendgrid", "production", Actor::Schedule);
    assert_eq!(rotation.unique_key.as_deref(), Some(reserved.as_str()));
    let mut conn = app.pool.acquire().await.unwrap();
    let enqueued = queue::enqueue_many_reporting(&mut conn, &[rotation])
        .await
        .unwrap();
    assert!(
        enqueued[0].created,
        "the rotation is enqueued, not held back"
    );
    // the CLI refuses the prefix and internal kinds too
    let cli = app.cli(&["enqueue", "noop", "--unique-key", &reserved]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("reserved"));
    let cli = app.cli(&[
        "enqueue",
        "apikey.rotate",
        "--payload",
        r#"{"provider": "sendgrid"}"#,
    ]);
    assert!(!cli.status.success());
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains("apikey.rotate is an internal kind"),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
}

#[tokio::test]
async fn a_tenant_token_enqueues_and_reads_only_its_tenant() {
    let app = shim().await;
    let (status, body) = post(
        &app,
        TENANT_A,
        json!({"kind": "noop", "payload": {}, "unique_key": "k"}),
    )
    .await;
    assert_eq!(status, 202);
    let a_job = body["id"].as_i64().unwrap();
    assert_eq!(
        app.count(&format!(
            "select count(*) from penguin.jobs where id = {a_job} and tenant_id = '{A}'"
        ))
        .await,
        1,
        "the job is the token's tenant's"
    );
    // tenants do not share unique keys
    let (status, body) = post(
        &app,
        TENANT_B,
        json!({"kind": "noop", "payload": {}, "unique_key": "k"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let b_job = body["id"].as_i64().unwrap();
    assert_ne!(a_job, b_job);

    let refused = post(
        &app,
        TENANT_A,
        json!({"kind": "noop", "payload": {}, "tenant_id": B}),
    )
    .await;
    assert_eq!(refused.0, 403, "{refused:?}");
    assert_eq!(get(&app, TENANT_B, a_job).await.0, 404);
    assert_eq!(
        error(&get(&app, TENANT_B, a_job).await),
        format!("no job {a_job}")
    );
    assert_eq!(get(&app, TENANT_A, a_job).await.0, 200);
    assert_eq!(get(&app, TENANT_A, b_job).await.0, 404);
    // a token without a tenant reads both; one without the kind reads neither
    assert_eq!(get(&app, PLAIN, a_job).await.0, 200);
    let rotation = app
        .enqueue(&penguin_jobs::credentials::keys::rotation_job(
            "sendgrid",
            "production",
            Actor::Schedule,
        ))
        .await;
    assert_eq!(get(&app, PLAIN, rotation).await.0, 404, "internal kind");
    assert_eq!(get(&app, OPS, rotation).await.0, 200);
}

#[tokio::test]
async fn the_actor_of_a_job_enqueued_over_http_is_its_token() {
    let app = shim().await;
    let forged = post(
        &app,
        OPS,
        json!({"kind": "apikey.rotate", "payload": {"provider": "sendgrid", "actor": "cli"}}),
    )
    .await;
    assert_eq!(forged.0, 422, "{forged:?}");
    assert!(error(&forged).starts_with("payload.actor: set by the daemon"));
    let (status, body) = post(
        &app,
        OPS,
        json!({"kind": "apikey.rotate", "payload": {"provider": "sendgrid"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let job = app.job(body["id"].as_i64().unwrap()).await;
    assert_eq!(job.payload["actor"], "api:ops");
    assert_eq!(job.state, JobState::Available);
    assert_eq!(
        Actor::parse("api:ops").unwrap().as_str(),
        "api:ops",
        "the audit log stores what the payload carries"
    );
}

/// The shim's start under `toml`: its error, if it refuses.
async fn shim_start_error(toml: &str) -> String {
    let config = support::daemon::config(toml);
    let db = support::test_db().await;
    let kinds = Arc::new(penguin_jobs::jobs::Kinds::builtin(&config).unwrap());
    match AppState::new(&config, db.pool.clone(), kinds) {
        Ok(_) => "started".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn short_tokens_and_scopes_naming_no_kind_are_refused_at_start() {
    let dir = support::TempDir::new("tokens");
    let short = dir.secret_file("short", "0123456789abcdef0123456789abcdef");
    let refused = shim_start_error(&format!("[http]\napi_tokens = [\"{short}\"]\n")).await;
    assert!(
        refused.starts_with("http.api_tokens: the token is 32 characters; give at least 43"),
        "{refused}"
    );
    assert!(
        !refused.contains("0123456789abcdef"),
        "the token is not echoed"
    );
    let token = dir.secret_file("t", PLAIN);
    let refused = shim_start_error(&format!(
        "[http.tokens.x]\nsecret = \"{token}\"\nkinds = [\"no.such.kind\"]\n"
    ))
    .await;
    assert_eq!(
        refused,
        "http.tokens.x.kinds: \"no.such.kind\" is not a job kind"
    );
    let ok = shim_start_error(&format!("[http.tokens.x]\nsecret = \"{token}\"\n")).await;
    assert_eq!(ok, "started");
}
