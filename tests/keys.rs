//! API keys against a real PostgreSQL and a fake provider key API (wiremock): the CLI,
//! rotation end to end (create, test, activate, retire, revoke), a staged key that fails
//! its test, and the daily sweep.

mod support;

use std::process::Output;
use std::time::Duration;

use penguin_jobs::credentials::keys::{self as apikey, KeyMeta, active_key};
use penguin_jobs::credentials::{self as creds, Actor};
use penguin_jobs::jobs::apikey::sweep;
use penguin_jobs::queue;
use penguin_jobs::secrets::Keyring;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::PgPool;
use support::app::{TestApp, assert_last_error};
use support::credentials::master_key_file;
use support::daemon::cli;
use support::fake_provider::{FakeProvider, Reply, eight_mebibytes_of_json};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const LIMIT: Duration = Duration::from_secs(60);

struct World {
    app: TestApp,
    api: MockServer,
}

/// A database, a master key, a fake provider whose valid keys are `valid` (`acme`,
/// `plain`), and a fake SendGrid key API ([`TestApp::fake`]) that answers what a test
/// scripts.
async fn world(valid: &[&str]) -> World {
    let app = TestApp::builder();
    let sendgrid = FakeProvider::start().await;
    let (key, master_ref) = master_key_file(app.dir(), "master.key");
    let api = MockServer::start().await;
    for k in valid {
        Mock::given(method("GET"))
            .and(path("/v1/me"))
            .and(header("authorization", format!("Bearer {k}").as_str()))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"ok": true})))
            .with_priority(1)
            .mount(&api)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/v1/me"))
        .respond_with(ResponseTemplate::new(401))
        .with_priority(10)
        .mount(&api)
        .await;
    let toml = format!(
        "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
         [secrets]\nmaster_key = \"{master_ref}\"\n\
         [api_keys]\noverlap = \"1s\"\n\
         [api_keys.providers.acme]\ntest_url = \"{b}/v1/me\"\nauth = \"bearer\"\n\
         create_url = \"{b}/v1/keys\"\ncreate_body = {{ name = \"penguin-jobs\" }}\n\
         key_field = \"key.secret\"\nid_field = \"key.id\"\nrevoke_url = \"{b}/v1/keys/{{id}}\"\n\
         [api_keys.providers.plain]\ntest_url = \"{b}/v1/me\"\n\
         [api_keys.providers.sendgrid]\ntest_url = \"{s}/v3/scopes\"\n\
         create_url = \"{s}/v3/api_keys\"\nrevoke_url = \"{s}/v3/api_keys/{{id}}\"\n\
         scopes_url = \"{s}/v3/api_keys/{{id}}\"\nown_scopes_url = \"{s}/v3/scopes\"\n",
        b = api.uri(),
        s = sendgrid.url
    );
    let app = app
        .config(&toml)
        .fake_provider(sendgrid)
        .keyring(Keyring::new(key, Vec::new()))
        .build()
        .await;
    World { app, api }
}

impl World {
    fn keyring(&self) -> &Keyring {
        self.app.keyring.as_ref().unwrap()
    }

    fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.cli_with(&self.app.config_path(), args, stdin)
    }

    fn cli_with(&self, config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
        cli(config, &self.app.url, args, stdin)
    }

    async fn set(&self, provider: &str, key: &str) {
        apikey::set_key(
            &self.app.pool,
            self.keyring(),
            provider,
            "production",
            &SecretString::from(key.to_string()),
            &meta("monthly"),
            Duration::from_secs(1),
            Actor::Cli,
        )
        .await
        .unwrap();
    }

    async fn active(&self, provider: &str) -> (i32, String) {
        let k = active_key(&self.app.pool, self.keyring(), provider, "production")
            .await
            .unwrap()
            .expect("an active key");
        (k.version, k.key.expose_secret().to_string())
    }

    async fn rotate(&self, provider: &str) -> i64 {
        queue::enqueue(
            &self.app.pool,
            &apikey::rotation_job(provider, "production", Actor::Cli),
        )
        .await
        .unwrap()
    }
}

fn meta(schedule: &str) -> KeyMeta {
    KeyMeta {
        schedule: Some(schedule.into()),
        ..KeyMeta::default()
    }
}

async fn status_of(pool: &PgPool, provider: &str, version: i32) -> String {
    sqlx::query_scalar("select status from penguin.api_keys where provider = $1 and version = $2")
        .bind(provider)
        .bind(version)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn events_of(pool: &PgPool, provider: &str, version: i32) -> Vec<String> {
    sqlx::query_scalar(
        "select a.event || ':' || a.outcome from penguin.audit_log a
           join penguin.api_keys k on a.subject_id = k.id::text
          where k.provider = $1 and k.version = $2 order by a.id",
    )
    .bind(provider)
    .bind(version)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rotation_through_the_key_api_tests_activates_retires_then_revokes() {
    let mut w = world(&["initial-key-1", "generated-key-2", "generated-key-3"]).await;
    // the key API creates the next key, authenticated with the active one
    for (auth, secret, id) in [
        ("initial-key-1", "generated-key-2", "k2"),
        ("generated-key-2", "generated-key-3", "k3"),
    ] {
        Mock::given(method("POST"))
            .and(path("/v1/keys"))
            .and(header("authorization", format!("Bearer {auth}").as_str()))
            .respond_with(
                ResponseTemplate::new(201)
                    .set_body_json(serde_json::json!({"key": {"secret": secret, "id": id}})),
            )
            .expect(1)
            .mount(&w.api)
            .await;
    }
    Mock::given(method("DELETE"))
        .and(path("/v1/keys/k2"))
        .and(header("authorization", "Bearer generated-key-3"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&w.api)
        .await;
    w.set("acme", "initial-key-1").await;
    w.app.start_runtime();

    let job = w.rotate("acme").await;
    w.app.wait_for_finished(job, LIMIT).await;
    assert_eq!(w.active("acme").await, (2, "generated-key-2".into()));
    assert_eq!(status_of(&w.app.pool, "acme", 1).await, "retiring");
    // the old key stays valid for the overlap, then the revocation job retires it
    w.app.wait_for(
        "select status = 'revoked' from penguin.api_keys where provider = 'acme' and version = 1",
        LIMIT,
        "version 1 revoked after the overlap",
    )
    .await;
    let (retire_at, revoked_at, rotate_after): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = sqlx::query_as(
        "select o.retire_at, o.revoked_at, n.rotate_after from penguin.api_keys o, penguin.api_keys n
          where o.provider = 'acme' and o.version = 1 and n.provider = 'acme' and n.version = 2",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert!(revoked_at >= retire_at, "revoked only after the overlap");
    assert!(rotate_after.unwrap() > chrono::Utc::now() + chrono::Duration::days(27));

    // the next rotation revokes version 2 at the provider too (it has a provider id)
    let job = w.rotate("acme").await;
    w.app.wait_for_finished(job, LIMIT).await;
    assert_eq!(w.active("acme").await, (3, "generated-key-3".into()));
    w.app.wait_for(
        "select status = 'revoked' from penguin.api_keys where provider = 'acme' and version = 2",
        LIMIT,
        "version 2 revoked",
    )
    .await;
    w.app.stop().await;
    assert_eq!(
        events_of(&w.app.pool, "acme", 2).await,
        vec!["key_staged:ok", "key_activated:ok", "key_revoked:ok"]
    );
    let detail: serde_json::Value = sqlx::query_scalar(
        "select detail from penguin.audit_log where event = 'key_revoked' order by id desc limit 1",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(detail["revoked_at_provider"], true);
    // no key material anywhere in the queue's rows
    let rows: String = sqlx::query_scalar(
        "select coalesce(string_agg(payload::text || coalesce(result::text, '') || errors::text, ' '), '') from penguin.jobs",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    for k in ["initial-key-1", "generated-key-2", "generated-key-3"] {
        assert!(!rows.contains(k), "{k} in {rows}");
    }
    w.api.verify().await;
}

#[tokio::test]
async fn a_staged_key_that_fails_its_test_leaves_the_old_key_active_and_raises_an_alert() {
    let mut w = world(&["plain-key-1", "plain-key-3"]).await;
    w.set("plain", "plain-key-1").await;
    w.app.start_runtime();

    let out = w.cli(&["keys", "stage", "plain"], Some("wrong-key-2\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = w.cli(&["keys", "rotate", "plain"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: i64 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    w.app.wait_for_finished(job, LIMIT).await;

    assert_eq!(w.active("plain").await, (1, "plain-key-1".into()));
    assert_eq!(status_of(&w.app.pool, "plain", 2).await, "revoked");
    let (reason, errors): (String, serde_json::Value) =
        sqlx::query_as("select reason, errors from penguin.dead_letters where job_id = $1")
            .bind(job)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(!reason.is_empty());
    assert_eq!(errors[0]["class"], "authentication");
    assert!(!errors.to_string().contains("wrong-key-2"));
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "key_test_failed");
    assert!(alerts[0].message.contains("the current key stays active"));
    assert_eq!(
        events_of(&w.app.pool, "plain", 2).await,
        vec!["key_staged:ok", "key_test_failed:failed"]
    );

    // nothing staged and no key API: the rotation says what to do
    let job = w.rotate("plain").await;
    w.app.wait_for_finished(job, LIMIT).await;
    let errors: serde_json::Value =
        sqlx::query_scalar("select errors from penguin.dead_letters where job_id = $1")
            .bind(job)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("keys stage plain"),
        "{errors}"
    );
    assert_eq!(
        creds::open_alerts(&w.app.pool).await.unwrap()[0].kind,
        "apikey_rotation_blocked"
    );

    // a good staged key goes through
    let out = w.cli(&["keys", "stage", "plain"], Some("plain-key-3"));
    assert!(out.status.success());
    let job = w.rotate("plain").await;
    w.app.wait_for_finished(job, LIMIT).await;
    assert_eq!(w.active("plain").await, (3, "plain-key-3".into()));
    assert_eq!(status_of(&w.app.pool, "plain", 1).await, "retiring");
    // the activation resolves both alerts at the evaluator's next pass
    assert_eq!(creds::open_alerts(&w.app.pool).await.unwrap().len(), 2);
    penguin_jobs::alerts::evaluate(
        &w.app.pool,
        &penguin_jobs::alerts::Settings::from_config(&w.app.config),
    )
    .await
    .unwrap();
    assert!(creds::open_alerts(&w.app.pool).await.unwrap().is_empty());
    assert_eq!(
        w.app
            .count("select count(*) from penguin.alerts where resolved_at is not null")
            .await,
        2
    );
    w.app.stop().await;
}

#[tokio::test]
async fn keys_are_read_from_standard_input_stored_encrypted_and_never_listed() {
    let w = world(&[]).await;
    let out = w.cli(
        &[
            "keys",
            "set",
            "sendgrid",
            "--schedule",
            "quarterly",
            "--permissions",
            "mail.send,stats.read",
            "--expires-at",
            "2027-01-31T00:00:00Z",
        ],
        Some("SG.very-secret-value\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("version 1") && !printed.contains("very-secret"));
    let out = w.cli(&["keys", "list", "--json"], None);
    assert!(out.status.success());
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        !list.contains("very-secret") && !list.contains("pj1."),
        "{list}"
    );
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(rows[0]["provider"], "sendgrid");
    assert_eq!(rows[0]["status"], "active");
    assert_eq!(rows[0]["rotation_schedule"], "quarterly");
    assert_eq!(rows[0]["version"], 1);
    assert_eq!(
        rows[0]["permissions"],
        serde_json::json!(["mail.send", "stats.read"])
    );
    assert_eq!(rows[0]["expires_at"], "2027-01-31T00:00:00Z");
    // a staged key keeps the schedule and permissions unless told otherwise
    let out = w.cli(&["keys", "stage", "sendgrid"], Some("SG.next-value"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(
        &w.cli(&["keys", "list", "--provider", "sendgrid", "--json"], None)
            .stdout,
    )
    .unwrap();
    assert_eq!(rows[0]["version"], 2);
    assert_eq!(rows[0]["status"], "pending");
    assert_eq!(rows[0]["rotation_schedule"], "quarterly");
    assert_eq!(
        rows[0]["permissions"],
        serde_json::json!(["mail.send", "stats.read"])
    );
    assert_eq!(rows[0]["expires_at"], serde_json::Value::Null);
    let table = String::from_utf8(w.cli(&["keys", "list"], None).stdout).unwrap();
    assert!(table.contains("sendgrid") && !table.contains("very-secret"));
    let (id, enc): (uuid::Uuid, String) =
        sqlx::query_as("select id, key_enc from penguin.api_keys where version = 1")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(enc.starts_with("pj1.") && !enc.contains("very-secret"));
    assert_eq!(
        w.keyring()
            .decrypt(&enc, &creds::api_key_aad(id))
            .unwrap()
            .expose_secret(),
        "SG.very-secret-value"
    );

    // refusals: one clear line each, nothing stored
    let no_master = w.app.dir.0.join("no-master.toml");
    std::fs::write(&no_master, "").unwrap();
    for (config, args, stdin, expected) in [
        (
            None,
            vec!["keys", "set", "stripe"],
            Some(""),
            "no key on standard input",
        ),
        (
            None,
            vec!["keys", "set", "stripe", "--schedule", "weekly"],
            Some("k"),
            "not monthly, quarterly or never",
        ),
        (
            Some(&no_master),
            vec!["keys", "set", "stripe"],
            Some("sk_live_x"),
            "no master key configured",
        ),
        (
            Some(&no_master),
            vec!["keys", "stage", "stripe"],
            Some("sk_live_x"),
            "no master key configured",
        ),
        (
            None,
            vec!["keys", "rotate", "stripe"],
            None,
            "no active stripe key in production",
        ),
        (
            None,
            vec!["keys", "set", "bad name"],
            Some("k"),
            "provider \"bad name\"",
        ),
    ] {
        let out = match config {
            Some(c) => w.cli_with(c, &args, stdin),
            None => w.cli(&args, stdin),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("panicked") && !stderr.contains("sk_live_x"),
            "{stderr}"
        );
    }
    assert_eq!(
        w.app.count("select count(*) from penguin.api_keys").await,
        2
    );
}

#[tokio::test]
async fn the_daily_sweep_enqueues_due_rotations_once_and_overdue_revocations() {
    let w = world(&[]).await;
    w.set("acme", "a1").await;
    w.set("plain", "p1").await;
    apikey::set_key(
        &w.app.pool,
        w.keyring(),
        "forever",
        "production",
        &SecretString::from("f1".to_string()),
        &meta("never"),
        Duration::from_secs(3600),
        Actor::Cli,
    )
    .await
    .unwrap();
    assert_eq!(sweep(&w.app.pool).await.unwrap(), 0, "nothing due yet");
    sqlx::query("update penguin.api_keys set rotate_after = now() - interval '1 minute' where provider = 'acme'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(sweep(&w.app.pool).await.unwrap(), 1);
    assert_eq!(
        sweep(&w.app.pool).await.unwrap(),
        0,
        "unique per provider and environment"
    );
    let payload: serde_json::Value =
        sqlx::query_scalar("select payload from penguin.jobs where kind = 'apikey.rotate'")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"provider": "acme", "environment": "production", "actor": "schedule"})
    );
    // a retiring key whose overlap is over gets its revocation
    w.set("plain", "p2").await;
    sqlx::query("update penguin.api_keys set retire_at = now() - interval '1 second' where status = 'retiring'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    sweep(&w.app.pool).await.unwrap();
    assert_eq!(
        w.app
            .count("select count(*) from penguin.jobs where kind = 'apikey.revoke'")
            .await,
        1,
        "the rotation's own revocation job and the sweep's are one"
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.jobs where kind = 'apikey.rotate'")
            .await,
        1,
        "a 'never' key is not rotated"
    );
    // a key the provider expires within a day is due whatever its schedule
    sqlx::query("update penguin.api_keys set expires_at = now() + interval '2 hours' where provider = 'forever'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(sweep(&w.app.pool).await.unwrap(), 1);
    assert_eq!(
        w.app.count(
            "select count(*) from penguin.jobs where kind = 'apikey.rotate' and payload->>'provider' = 'forever'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_key_api_answer_past_its_size_limit_fails_the_rotation_and_stores_no_key() {
    let mut w = world(&["initial-key-1", "generated-key-2"]).await;
    let body = eight_mebibytes_of_json(r#""key":{"secret":"generated-key-2","id":"k2"}"#);
    Mock::given(method("POST"))
        .and(path("/v1/keys"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(body, "application/json"))
        .expect(1)
        .mount(&w.api)
        .await;
    w.set("acme", "initial-key-1").await;
    w.app.start_runtime();

    let job = w.rotate("acme").await;
    let dead = w.app.wait_for_dead_letter(job).await;
    w.app.stop().await;

    assert_last_error(&dead, "api", "longer than 65536 bytes");
    assert_eq!(w.active("acme").await, (1, "initial-key-1".into()));
    assert_eq!(
        w.app
            .count("select count(*) from penguin.api_keys where provider = 'acme'")
            .await,
        1,
        "no candidate key was stored"
    );
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "apikey_rotation_failed");
    w.api.verify().await;
}

/// The fake SendGrid key API of three rotations: the first key's own scopes (its provider
/// id is unknown) and every new key's test call at `/v3/scopes`; keys `id-2` and `id-3`
/// created; `id-2`'s scopes read by its id; `id-3`'s refused.
fn script_three_sendgrid_rotations(fake: &FakeProvider) {
    let own_scopes = json!({"scopes": ["mail.send", "api_keys.create", "api_keys.read"]});
    fake.always("/v3/scopes", vec![Reply::status(200, own_scopes)]);
    for n in [2, 3] {
        fake.push(
            "/v3/api_keys",
            Reply::status(
                201,
                json!({"api_key": format!("SG.generated-{n}"), "api_key_id": format!("id-{n}")}),
            ),
        );
    }
    let by_id = json!({"api_key_id": "id-2", "name": "penguin-jobs (rotation of version 1)",
                       "scopes": ["mail.send", "api_keys.read"]});
    fake.push("/v3/api_keys/id-2", Reply::status(200, by_id));
    fake.push(
        "/v3/api_keys/id-3",
        Reply::status(403, json!({"errors": [{"message": "access forbidden"}]})),
    );
}

#[tokio::test]
async fn a_sendgrid_rotation_creates_the_next_key_with_the_scopes_of_the_current_one() {
    let mut w = world(&[]).await;
    script_three_sendgrid_rotations(w.app.fake());
    w.set("sendgrid", "SG.initial-1").await;
    w.app.start_runtime();

    // 1: an operator's key (no provider id): its own scopes; 2: a key the rotation
    // created: read by its id; 3: its scopes cannot be read, so nothing is created
    for version in [2, 3] {
        let job = w.rotate("sendgrid").await;
        w.app.wait_for_state(job, queue::JobState::Completed).await;
        assert_eq!(w.active("sendgrid").await.0, version);
    }
    let job = w.rotate("sendgrid").await;
    let dead = w.app.wait_for_dead_letter(job).await;
    w.app.stop().await;

    let fake = w.app.fake();
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v3/api_keys")
        .collect();
    assert_eq!(creates.len(), 2, "no key is created without its scopes");
    assert_eq!(
        creates[0].header("authorization"),
        Some("Bearer SG.initial-1")
    );
    assert_eq!(
        creates[0].json(),
        json!({"name": "penguin-jobs (rotation of version 1)",
               "scopes": ["mail.send", "api_keys.create", "api_keys.read"]})
    );
    assert_eq!(
        creates[1].header("authorization"),
        Some("Bearer SG.generated-2")
    );
    assert_eq!(
        creates[1].json(),
        json!({"name": "penguin-jobs (rotation of version 2)",
               "scopes": ["mail.send", "api_keys.read"]})
    );
    let read = fake.requests_to("/v3/api_keys/id-2");
    assert_eq!(
        (read[0].method.as_str(), read[0].header("authorization")),
        ("GET", Some("Bearer SG.generated-2"))
    );
    let last = assert_last_error(&dead, "authorization", "reading the current key's scopes");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("no key was created"),
        "{last}"
    );
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("access forbidden"),
        "{last}"
    );
    assert_eq!(w.active("sendgrid").await, (3, "SG.generated-3".into()));
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts[0].kind, "apikey_rotation_failed");
}
