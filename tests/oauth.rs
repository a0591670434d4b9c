//! OAuth against a real authorization server (oauthlib, run locally) and a real
//! PostgreSQL: connect with PKCE through the shim's callback, refresh with and without
//! refresh-token rotation, a revoked grant, outages, and two daemons sweeping at once.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use penguin_jobs::credentials::connections::{access_token, begin_authorization};
use penguin_jobs::credentials::{self as creds, Actor, sealed_aad};
use penguin_jobs::jobs::oauth::sweep;
use penguin_jobs::providers::oauth::Providers;
use penguin_jobs::secrets::{Keyring, sha256_hex};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use support::app::{TestApp, assert_last_error};
use support::credentials::{OAuthServer, master_key_file};
use support::daemon::{config, stop_daemon};
use support::fake_provider::{FakeProvider, Reply, eight_mebibytes_of_json};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");
const CLIENT_ID: &str = "penguin-test-client";
const CLIENT_SECRET: &str = "client-secret-for-the-oauth-tests";
const LIMIT: Duration = Duration::from_secs(60);

struct World {
    app: TestApp,
    server: OAuthServer,
}

/// A database, an authorization server for `provider` accepting client authentication
/// `auth`, a master key, and the shim serving the callback.
async fn world(provider: &str, auth: &str) -> World {
    let app = TestApp::builder();
    let server = OAuthServer::start(CLIENT_ID, CLIENT_SECRET, auth);
    let (key, master_ref) = master_key_file(app.dir(), "master.key");
    let secret_ref = app.dir().secret_file("client.secret", CLIENT_SECRET);
    let toml = format!(
        "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
         [secrets]\nmaster_key = \"{master_ref}\"\n\
         [kinds.\"oauth.refresh\"]\nmax_attempts = 30\nbackoff = {{ strategy = \"fixed\", base = \"100ms\", max = \"100ms\", jitter = false }}\n
         [kinds.\"oauth.exchange\"]\nmax_attempts = 30\nbackoff = {{ strategy = \"fixed\", base = \"200ms\", max = \"200ms\", jitter = false }}\n\
         {}",
        server.provider_toml(provider, CLIENT_ID, &secret_ref, auth)
    );
    let app = app
        .config(&toml)
        .keyring(Keyring::new(key, Vec::new()))
        .shim()
        .build()
        .await;
    World { app, server }
}

impl World {
    fn keyring(&self) -> &Keyring {
        self.app.keyring.as_ref().unwrap()
    }

    /// Starts an authorization for a new tenant and consents: the callback URL the
    /// provider sends the browser to.
    async fn consent_as_a_new_tenant(&self, provider: &str) -> String {
        let providers = Providers::from_config(&config(&self.app.toml)).unwrap();
        let url = begin_authorization(
            &self.app.pool,
            self.keyring(),
            &providers.get(provider).unwrap(),
            Uuid::new_v4(),
            &self.redirect_uri(provider),
            Actor::Api(None),
        )
        .await
        .unwrap();
        self.server.consent(url.as_str()).await
    }

    fn redirect_uri(&self, provider: &str) -> String {
        self.app.shim().url(&format!("/oauth/callback/{provider}"))
    }

    /// Connects `tenant` through the whole flow (the runtime must be running).
    async fn connect(&self, provider: &str, tenant: Uuid) -> Uuid {
        let providers = Providers::from_config(&config(&self.app.toml)).unwrap();
        let url = begin_authorization(
            &self.app.pool,
            self.keyring(),
            &providers.get(provider).unwrap(),
            tenant,
            &self.redirect_uri(provider),
            Actor::Api(None),
        )
        .await
        .unwrap();
        let back = self.server.consent(url.as_str()).await;
        let page = reqwest::get(&back).await.unwrap();
        assert_eq!(page.status().as_u16(), 200);
        self.app
            .wait_for(
            &format!(
                "select exists (select 1 from penguin.oauth_connections where tenant_id = '{tenant}' and status = 'active')"
            ),
            LIMIT,
            "the connection is stored",
        )
        .await;
        sqlx::query_scalar("select id from penguin.oauth_connections where tenant_id = $1")
            .bind(tenant)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    async fn refresh_token(&self, id: Uuid) -> String {
        let enc: String = sqlx::query_scalar(
            "select refresh_token_enc from penguin.oauth_connections where id = $1",
        )
        .bind(id)
        .fetch_one(&self.app.pool)
        .await
        .unwrap();
        self.keyring()
            .decrypt(
                &enc,
                &sealed_aad("oauth_connections", "refresh_token_enc", id),
            )
            .unwrap()
            .expose_secret()
            .to_string()
    }

    async fn access_token(&self, id: Uuid) -> String {
        access_token(&self.app.pool, self.keyring(), id)
            .await
            .unwrap()
            .unwrap()
            .expose_secret()
            .to_string()
    }

    async fn make_due(&self, id: Uuid) {
        sqlx::query("update penguin.oauth_connections set expires_at = now() + interval '1 minute' where id = $1")
            .bind(id)
            .execute(&self.app.pool)
            .await
            .unwrap();
    }
}

async fn audit_events(pool: &PgPool, subject: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "select event || ':' || outcome from penguin.audit_log where subject_id = $1 order by id",
    )
    .bind(subject.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn connect_exchanges_the_code_with_pkce_through_the_callback_and_stores_encrypted_tokens() {
    let mut w = world("google", "body").await;
    w.app.start_runtime();
    let tenant = Uuid::new_v4();

    // the CLI prints the authorization URL
    let out = Command::new(BIN)
        .arg("--config")
        .arg(w.app.dir.0.join("jobs.toml"))
        .args([
            "oauth",
            "authorize",
            "google",
            "--tenant",
            &tenant.to_string(),
        ])
        .args(["--redirect-uri", &w.redirect_uri("google")])
        .env("DATABASE_URL", &w.app.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = reqwest::Url::parse(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["access_type"], "offline", "Google's built-in parameters");
    // the state is stored hashed, never as itself
    let stored: String = sqlx::query_scalar("select state_hash from penguin.oauth_states")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(stored, sha256_hex(&q["state"]));
    assert_eq!(
        w.app
            .count(&format!(
                "select count(*) from penguin.oauth_states where state_hash = '{}'",
                q["state"]
            ))
            .await,
        0
    );

    // the user consents; the provider sends the browser to our callback
    let back = w.server.consent(url.as_str()).await;
    assert!(back.starts_with(&w.redirect_uri("google")));
    let page = reqwest::get(&back).await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("Connected"));
    w.app
        .wait_for_kind_finished("oauth.exchange", 1, LIMIT)
        .await;

    let c = creds::list_connections(&w.app.pool, Some(tenant))
        .await
        .unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    let c = &c[0];
    assert_eq!(
        (
            c.provider.as_str(),
            c.account_id.as_str(),
            c.status.as_str()
        ),
        ("google", "user-1", "active")
    );
    assert_eq!(c.account_email.as_deref(), Some("user-1@example.test"));
    assert!(c.expires_at.is_some());
    // the server checked our PKCE verifier and our client authentication in the body
    let stats = w.server.stats().await;
    assert_eq!(stats["pkce_checked"], 1);
    assert_eq!(stats["token_requests"]["authorization_code"], 1);
    assert_eq!(stats["client_auth"], serde_json::json!(["body"]));
    // the token call is counted under the provider, as every outbound call
    w.app
        .wait_for(
            "select coalesce(sum(calls), 0) = 1 from penguin.integration_metrics
              where provider = 'google' and kind = 'oauth.exchange' and status_class = '2xx'",
            LIMIT,
            "the token call counted",
        )
        .await;
    // tokens are ciphertexts at rest, and decrypt to the token the server issued
    let (access_enc, refresh_enc): (String, String) =
        sqlx::query_as("select access_token_enc, refresh_token_enc from penguin.oauth_connections")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert!(access_enc.starts_with("pj1.") && refresh_enc.starts_with("pj1."));
    let access = w.access_token(c.id).await;
    assert!(!access_enc.contains(&access));
    assert_eq!(w.server.userinfo_status(&access).await, 200);
    // the job carried the state id only; the code is gone from the state row
    let payload: serde_json::Value =
        sqlx::query_scalar("select payload from penguin.jobs where kind = 'oauth.exchange'")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(
        payload.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["state_id"]
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.oauth_states where code_enc is not null")
            .await,
        0
    );

    // the same callback again, or a made-up state: 400 and nothing enqueued
    let again = reqwest::get(&back).await.unwrap();
    assert_eq!(again.status().as_u16(), 400);
    let forged = back.replace(&format!("state={}", urlencode(&q["state"])), "state=forged");
    assert_ne!(forged, back);
    assert_eq!(reqwest::get(&forged).await.unwrap().status().as_u16(), 400);
    let wrong_provider = back.replace("/callback/google", "/callback/microsoft");
    assert_eq!(
        reqwest::get(&wrong_provider)
            .await
            .unwrap()
            .status()
            .as_u16(),
        400
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.jobs where kind = 'oauth.exchange'")
            .await,
        1
    );
    let state_id: Uuid = sqlx::query_scalar("select id from penguin.oauth_states")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(
        audit_events(&w.app.pool, state_id).await,
        vec!["authorization_started:ok"]
    );
    assert_eq!(audit_events(&w.app.pool, c.id).await, vec!["exchanged:ok"]);
    w.app.stop().await;
}

fn urlencode(s: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", s)])
        .unwrap()
        .query()
        .unwrap()[2..]
        .to_string()
}

#[tokio::test]
async fn an_expired_state_or_a_refused_consent_answers_400_and_enqueues_nothing() {
    let w = world("acme", "basic").await;
    let providers = Providers::from_config(&config(&w.app.toml)).unwrap();
    let p = providers.get("acme").unwrap();
    let url = begin_authorization(
        &w.app.pool,
        w.keyring(),
        &p,
        Uuid::new_v4(),
        &w.redirect_uri("acme"),
        Actor::Api(None),
    )
    .await
    .unwrap();
    let back = w.server.consent(url.as_str()).await;
    sqlx::query("update penguin.oauth_states set expires_at = now() - interval '1 second'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(reqwest::get(&back).await.unwrap().status().as_u16(), 400);

    let url = begin_authorization(
        &w.app.pool,
        w.keyring(),
        &p,
        Uuid::new_v4(),
        &w.redirect_uri("acme"),
        Actor::Api(None),
    )
    .await
    .unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let refused = format!(
        "{}?error=access_denied&state={}",
        w.redirect_uri("acme"),
        urlencode(&state)
    );
    let page = reqwest::get(&refused).await.unwrap();
    assert_eq!(page.status().as_u16(), 400);
    assert!(page.text().await.unwrap().contains("access_denied"));
    // and that state is used up
    let replay = format!(
        "{}?code=abc&state={}",
        w.redirect_uri("acme"),
        urlencode(&state)
    );
    assert_eq!(reqwest::get(&replay).await.unwrap().status().as_u16(), 400);
    assert_eq!(w.app.count("select count(*) from penguin.jobs").await, 0);
}

#[tokio::test]
async fn refresh_stores_a_rotated_refresh_token_and_keeps_the_old_one_when_none_is_returned() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let id = w.connect("acme", Uuid::new_v4()).await;
    let ahead = Duration::from_secs(600);
    // not due yet (the server issues one-hour tokens)
    assert_eq!(sweep(&w.app.pool, ahead).await.unwrap(), 0);

    // like Microsoft: every refresh rotates the refresh token
    let first_refresh = w.refresh_token(id).await;
    let first_access = w.access_token(id).await;
    w.make_due(id).await;
    assert_eq!(sweep(&w.app.pool, ahead).await.unwrap(), 1);
    assert_eq!(
        sweep(&w.app.pool, ahead).await.unwrap(),
        0,
        "unique per connection"
    );
    w.app
        .wait_for_kind_finished("oauth.refresh", 1, LIMIT)
        .await;
    let second_refresh = w.refresh_token(id).await;
    assert_ne!(second_refresh, first_refresh);
    assert_ne!(w.access_token(id).await, first_access);
    let c = creds::get_connection(&w.app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, "active");
    assert!(c.expires_at.unwrap() > chrono::Utc::now() + chrono::Duration::minutes(50));
    let stats = w.server.stats().await;
    assert_eq!(stats["token_requests"]["refresh_token"], 1);
    assert_eq!(
        stats["refresh_tokens_seen"],
        serde_json::json!([first_refresh])
    );
    assert!(
        stats["client_auth"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m == "basic")
    );
    // the server spent the old refresh token: had we kept it, the next refresh would fail
    let (status, answer) = w
        .server
        .refresh_directly(CLIENT_ID, CLIENT_SECRET, &first_refresh)
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // like Google: no refresh token in the answer, the stored one stays
    w.server
        .control("config", serde_json::json!({"refresh_mode": "omit"}))
        .await;
    let access_before = w.access_token(id).await;
    w.make_due(id).await;
    assert_eq!(sweep(&w.app.pool, ahead).await.unwrap(), 1);
    w.app
        .wait_for_kind_finished("oauth.refresh", 2, LIMIT)
        .await;
    assert_eq!(w.refresh_token(id).await, second_refresh);
    assert_ne!(w.access_token(id).await, access_before);

    let results: Vec<serde_json::Value> = sqlx::query_scalar(
        "select result from penguin.jobs where kind = 'oauth.refresh' order by id",
    )
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(results[0]["refresh_token_rotated"], true);
    assert_eq!(results[1]["refresh_token_rotated"], false);
    assert_eq!(
        audit_events(&w.app.pool, id).await,
        vec!["exchanged:ok", "refreshed:ok", "refreshed:ok"]
    );
    w.app.stop().await;
}

#[tokio::test]
async fn a_refused_client_secret_keeps_connections_active_raises_one_alert_and_retries() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let id = w.connect("acme", Uuid::new_v4()).await;
    // an operator mistypes the client secret: the provider answers invalid_client
    w.app
        .dir
        .secret_file("client.secret", "not-the-client-secret");
    w.make_due(id).await;
    sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap();
    let refused_twice = support::poll_until(LIMIT, async || {
        w.server.stats().await["token_requests"]["refresh_token"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    })
    .await;
    assert!(refused_twice.is_some(), "the refresh was not retried");
    let c = creds::get_connection(&w.app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(c.status, "reauth_required", "{c:?}");
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "oauth_client_refused");
    assert_eq!(alerts[0].provider.as_deref(), Some("acme"));
    assert!(!alerts[0].message.contains("not-the-client-secret"));
    // the secret is fixed: the next retry refreshes, and no tenant had to consent again
    w.app.dir.secret_file("client.secret", CLIENT_SECRET);
    w.app
        .wait_for_kind_finished("oauth.refresh", 1, LIMIT)
        .await;
    let (state, attempt): (String, i32) = sqlx::query_as(
        "select state::text, attempt from penguin.jobs where kind = 'oauth.refresh'",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(state, "completed");
    assert!(attempt >= 3, "{attempt}");
    let c = creds::get_connection(&w.app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, "active");
    // the refresh that went through resolves the alert at the evaluator's next pass
    assert_eq!(creds::open_alerts(&w.app.pool).await.unwrap().len(), 1);
    assert_eq!(evaluate_alerts(&w.app).await, 1);
    assert!(creds::open_alerts(&w.app.pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_refused_client_secret_during_the_code_exchange_is_retried_until_fixed() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    // mistyped before the first use: the token endpoint answers invalid_client
    w.app
        .dir
        .secret_file("client.secret", "not-the-client-secret");
    let tenant = Uuid::new_v4();
    let providers = Providers::from_config(&config(&w.app.toml)).unwrap();
    let url = begin_authorization(
        &w.app.pool,
        w.keyring(),
        &providers.get("acme").unwrap(),
        tenant,
        &w.redirect_uri("acme"),
        Actor::Api(None),
    )
    .await
    .unwrap();
    let back = w.server.consent(url.as_str()).await;
    assert_eq!(reqwest::get(&back).await.unwrap().status().as_u16(), 200);
    let refused_twice = support::poll_until(LIMIT, async || {
        w.server.stats().await["token_requests"]["authorization_code"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    })
    .await;
    assert!(refused_twice.is_some(), "the exchange was not retried");
    assert_eq!(
        w.app
            .count("select count(*) from penguin.dead_letters where kind = 'oauth.exchange'")
            .await,
        0,
        "a configuration error is not the tenant's: the exchange waits for the fix"
    );
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].kind, "oauth_client_refused");
    assert_eq!(evaluate_alerts(&w.app).await, 0, "nothing went through yet");
    // fixed (read again within the 30 s secret cache): the same code is exchanged
    w.app.dir.secret_file("client.secret", CLIENT_SECRET);
    w.app
        .wait_for(
            &format!(
                "select exists (select 1 from penguin.oauth_connections \
                 where tenant_id = '{tenant}' and status = 'active')"
            ),
            LIMIT,
            "the connection stored once the secret is fixed",
        )
        .await;
    assert_eq!(
        evaluate_alerts(&w.app).await,
        1,
        "the exchange resolves the alert"
    );
}

#[tokio::test]
async fn a_revoked_grant_requires_reauthorization_raises_an_alert_and_is_not_retried() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let tenant = Uuid::new_v4();
    let id = w.connect("acme", tenant).await;
    let refresh = w.refresh_token(id).await;
    w.server
        .control("revoke", serde_json::json!({"user": "user-1"}))
        .await;
    w.make_due(id).await;
    sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap();
    w.app
        .wait_for_kind_finished("oauth.refresh", 1, LIMIT)
        .await;

    let c = creds::get_connection(&w.app.pool, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.status, "reauth_required");
    assert!(
        c.last_error.as_deref().unwrap().contains("invalid_grant"),
        "{c:?}"
    );
    // one call, then straight to the dead letters
    assert_eq!(w.server.stats().await["token_requests"]["refresh_token"], 1);
    let (attempt, errors): (i32, serde_json::Value) = sqlx::query_as(
        "select attempt, errors from penguin.dead_letters where kind = 'oauth.refresh'",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(attempt, 1);
    assert_eq!(errors[0]["class"], "authentication");
    assert!(!errors.to_string().contains(&refresh));
    let alerts = creds::open_alerts(&w.app.pool).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "reauth_required");
    // the evaluator leaves it while the connection waits for consent
    assert_eq!(evaluate_alerts(&w.app).await, 0);
    assert_eq!(alerts[0].tenant_id, Some(tenant));
    let alerts_cli = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(w.app.dir.0.join("jobs.toml"))
            .arg("alerts")
            .args(args)
            .env("DATABASE_URL", &w.app.url)
            .output()
            .unwrap()
    };
    let listed = alerts_cli(&["--json"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("must be authorized again"));
    let acked = alerts_cli(&["--ack", &alerts[0].id.to_string()]);
    assert!(
        acked.status.success(),
        "{}",
        String::from_utf8_lossy(&acked.stderr)
    );
    assert!(creds::open_alerts(&w.app.pool).await.unwrap().is_empty());
    let again = alerts_cli(&["--ack", &alerts[0].id.to_string()]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("no open alert"));
    assert_eq!(
        audit_events(&w.app.pool, id).await,
        vec![
            "exchanged:ok",
            "refresh_failed:failed",
            "reauth_required:failed"
        ]
    );
    // the sweep leaves it alone from now on
    assert_eq!(
        sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap(),
        0
    );
    // connecting the account again makes it active, and the alert resolves (acknowledged
    // or not)
    let again = w.connect("acme", tenant).await;
    assert_eq!(again, id);
    assert_eq!(evaluate_alerts(&w.app).await, 1);
    w.app.stop().await;
}

/// One pass of the alert evaluator: how many alerts are resolved after it.
async fn evaluate_alerts(app: &TestApp) -> i64 {
    penguin_jobs::alerts::evaluate(
        &app.pool,
        &penguin_jobs::alerts::Settings::from_config(&app.config),
    )
    .await
    .unwrap();
    app.count("select count(*) from penguin.alerts where resolved_at is not null")
        .await
}

#[tokio::test]
async fn outages_and_temporarily_unavailable_are_retried_until_the_refresh_succeeds() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let id = w.connect("acme", Uuid::new_v4()).await;
    // a 503, then an OAuth error answer that says "later", then the real server
    w.server
        .control(
            "fail",
            serde_json::json!({"answers": [
                {"status": 503},
                {"status": 400, "error": "temporarily_unavailable"},
            ]}),
        )
        .await;
    w.make_due(id).await;
    sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap();
    w.app
        .wait_for_kind_finished("oauth.refresh", 1, LIMIT)
        .await;
    let (state, attempt, errors): (String, i32, serde_json::Value) = sqlx::query_as(
        "select state, attempt, errors from penguin.jobs where kind = 'oauth.refresh'",
    )
    .fetch_one(&w.app.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempt), ("completed", 3));
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e["class"] == "api"), "{errors:?}");
    assert_eq!(errors[0]["status"], 503);
    assert!(
        errors[1]["message"]
            .as_str()
            .unwrap()
            .contains("temporarily_unavailable")
    );
    assert_eq!(w.server.stats().await["token_requests"]["refresh_token"], 3);
    assert_eq!(
        creds::get_connection(&w.app.pool, id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "active"
    );
    assert_eq!(
        audit_events(&w.app.pool, id).await,
        vec![
            "exchanged:ok",
            "refresh_failed:failed",
            "refresh_failed:failed",
            "refreshed:ok"
        ]
    );
    w.app.stop().await;
}

fn spawn_daemon(w: &World, log: &str) -> Child {
    Command::new(BIN)
        .arg("--config")
        .arg(w.app.dir.0.join("daemons.toml"))
        .args(["run", "--no-http"])
        .env("DATABASE_URL", &w.app.url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.app.dir.0.join(log)).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn two_daemons_sweeping_at_once_refresh_a_connection_once() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let id = w.connect("acme", Uuid::new_v4()).await;
    w.app.stop().await;
    // both daemons sweep every second
    std::fs::write(
        w.app.dir.0.join("daemons.toml"),
        format!("{}[oauth]\nrefresh_cron = \"* * * * * *\"\n", w.app.toml),
    )
    .unwrap();
    w.make_due(id).await;
    // two sweeps that raced (as with an older daemon that used no unique key): two
    // refresh jobs for one connection, and each daemon's own sweeps on top
    for _ in 0..2 {
        sqlx::query("select penguin.enqueue('oauth.refresh', jsonb_build_object('connection_id', $1::text))")
            .bind(id.to_string())
            .execute(&w.app.pool)
            .await
            .unwrap();
    }
    let mut a = spawn_daemon(&w, "a.log");
    let mut b = spawn_daemon(&w, "b.log");
    w.app.wait_for(
        "select (select count(*) from penguin.jobs where kind = 'oauth.refresh' and state = 'completed')
              + (select count(*) from penguin.dead_letters where kind = 'oauth.refresh') >= 2",
        LIMIT,
        "the racing refresh jobs finished",
    )
    .await;
    // three more sweeps after that
    let t: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    w.app.wait_for(
        &format!(
            "select count(*) >= 3 from penguin.jobs where kind = 'oauth.refresh_sweep' and state = 'completed' and created_at > '{}'",
            t.to_rfc3339()
        ),
        LIMIT,
        "three more sweeps",
    )
    .await;
    stop_daemon(&mut a);
    stop_daemon(&mut b);
    assert_eq!(w.server.stats().await["token_requests"]["refresh_token"], 1);
    assert_eq!(
        audit_events(&w.app.pool, id).await,
        vec!["exchanged:ok", "refreshed:ok"]
    );
    let results: Vec<serde_json::Value> = sqlx::query_scalar(
        "select result from penguin.jobs where kind = 'oauth.refresh' and state = 'completed' order by id",
    )
    .fetch_all(&w.app.pool)
    .await
    .unwrap();
    assert_eq!(
        results
            .iter()
            .filter(|r| r.get("skipped").is_none())
            .count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.dead_letters")
            .await,
        0
    );
}

#[tokio::test]
async fn a_disconnected_connection_is_no_longer_refreshed_and_old_states_are_forgotten() {
    let mut w = world("acme", "basic").await;
    w.app.start_runtime();
    let id = w.connect("acme", Uuid::new_v4()).await;
    w.app.stop().await;
    let access = w.access_token(id).await;
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(w.app.dir.0.join("jobs.toml"))
            .args(args)
            .env("DATABASE_URL", &w.app.url)
            .output()
            .unwrap()
    };
    let list = run(&["oauth", "list", "--json"]);
    assert!(list.status.success());
    let listed = String::from_utf8(list.stdout).unwrap();
    assert!(listed.contains(&id.to_string()));
    assert!(
        !listed.contains(&access) && !listed.contains("pj1."),
        "{listed}"
    );

    let out = run(&["oauth", "disconnect", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = run(&["oauth", "disconnect", &id.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no live oauth connection"));
    assert_eq!(
        creds::get_connection(&w.app.pool, id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "revoked"
    );
    assert_eq!(
        audit_events(&w.app.pool, id).await,
        vec!["exchanged:ok", "connection_revoked:ok"]
    );
    w.make_due(id).await;
    assert_eq!(
        sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap(),
        0
    );
    assert!(
        access_token(&w.app.pool, w.keyring(), id)
            .await
            .unwrap()
            .is_none()
    );

    // the sweep forgets states a day after they expired
    assert_eq!(
        w.app
            .count("select count(*) from penguin.oauth_states")
            .await,
        1
    );
    sqlx::query("update penguin.oauth_states set expires_at = now() - interval '25 hours'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    sweep(&w.app.pool, Duration::from_secs(600)).await.unwrap();
    assert_eq!(
        w.app
            .count("select count(*) from penguin.oauth_states")
            .await,
        0
    );
}

#[tokio::test]
async fn an_exchange_without_a_master_key_dead_letters_and_forgets_the_code() {
    let w = world("acme", "basic").await;
    let back = w.consent_as_a_new_tenant("acme").await;
    assert_eq!(reqwest::get(&back).await.unwrap().status().as_u16(), 200);
    // until it is redeemed, the code is kept only encrypted
    let code = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let kept: String = sqlx::query_scalar("select code_enc from penguin.oauth_states")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert!(kept.starts_with("pj1.") && !kept.contains(&code), "{kept}");
    // a daemon started without its master key
    let cfg = config(&w.app.toml);
    let deps = penguin_jobs::jobs::Deps::new(w.app.pool.clone()).unwrap();
    let registry = std::sync::Arc::new(penguin_jobs::jobs::Registry::builtin(&cfg, &deps).unwrap());
    let runtime = support::daemon::start_runtime(&w.app.pool, cfg, registry);
    w.app
        .wait_for_kind_finished("oauth.exchange", 1, LIMIT)
        .await;
    runtime.stop().await;
    let errors: serde_json::Value =
        sqlx::query_scalar("select errors from penguin.dead_letters where kind = 'oauth.exchange'")
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(errors[0]["class"], "configuration");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("no master key configured")
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.oauth_states where code_enc is not null")
            .await,
        0
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.oauth_connections")
            .await,
        0
    );
    assert!(
        w.server.stats().await["token_requests"]
            .get("authorization_code")
            .is_none()
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.audit_log where event = 'exchange_failed'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_callback_to_a_shim_without_a_master_key_keeps_nothing_and_leaves_the_state_usable() {
    let w = world("acme", "basic").await;
    let back = w.consent_as_a_new_tenant("acme").await;
    // the same configuration without [secrets]: the code could only be kept in plaintext
    let without_key: String = w
        .app
        .toml
        .lines()
        .filter(|l| *l != "[secrets]" && !l.starts_with("master_key ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let other = TestApp::builder()
        .database(w.app.pool.clone(), &w.app.url)
        .config(&without_key)
        .shim()
        .build()
        .await;
    let answer = reqwest::get(back.replacen(&w.app.shim().base, &other.shim().base, 1))
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 503);
    assert_eq!(
        w.app.count(
            "select count(*) from penguin.oauth_states where used_at is null and code_enc is null"
        )
        .await,
        1,
        "the state is not used up and no code is kept"
    );
    assert_eq!(
        w.app
            .count("select count(*) from penguin.jobs where kind = 'oauth.exchange'")
            .await,
        0
    );
    // the configured shim then takes the same callback
    assert_eq!(reqwest::get(&back).await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn a_token_answer_past_its_size_limit_fails_the_refresh_and_is_never_read_whole() {
    let fake = FakeProvider::start().await;
    fake.always(
        "/token",
        vec![Reply::raw(
            200,
            "application/json",
            eight_mebibytes_of_json(
                r#""access_token":"oversized-access-token","token_type":"Bearer""#,
            ),
        )],
    );
    let app = TestApp::builder();
    let (key, master_ref) = master_key_file(app.dir(), "master.key");
    let secret_ref = app.dir().secret_file("client.secret", CLIENT_SECRET);
    let toml = format!(
        "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
         [secrets]\nmaster_key = \"{master_ref}\"\n\
         [kinds.\"oauth.refresh\"]\nmax_attempts = 1\n\
         [oauth.providers.acme]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret_ref}\"\n\
         auth_url = \"{b}/authorize\"\ntoken_url = \"{b}/token\"\nscopes = [\"openid\"]\n",
        b = fake.url
    );
    let mut app = app
        .config(&toml)
        .keyring(Keyring::new(key, Vec::new()))
        .fake_provider(fake)
        .runtime()
        .build()
        .await;
    let keyring = app.keyring.clone().unwrap();
    let id = creds::connections::store_connection(
        &app.pool,
        &keyring,
        &creds::connections::NewConnection {
            tenant_id: Uuid::new_v4(),
            provider: "acme",
            account_id: "user-1",
            account_email: None,
            scopes: &["openid".to_string()],
            access_token: &"old-access-token".to_string().into(),
            refresh_token: Some(&"refresh-token-1".to_string().into()),
            expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(30)),
        },
        creds::AuditAction::Stored,
        Actor::Api(None),
    )
    .await
    .unwrap();

    let job = app
        .enqueue(&penguin_jobs::queue::NewJob::new(
            "oauth.refresh",
            serde_json::json!({ "connection_id": id }),
        ))
        .await;
    let dead = app.wait_for_dead_letter(job).await;
    app.stop().await;

    assert_eq!(app.fake().requests_to("/token").len(), 1);
    assert_last_error(&dead, "api", "longer than 65536 bytes");
    // the connection keeps its old token and stays usable for the next refresh
    let token = access_token(&app.pool, &keyring, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(token.expose_secret(), "old-access-token");
    let connection = creds::get_connection(&app.pool, id).await.unwrap().unwrap();
    assert_eq!(connection.status, "active");
}
