//! Encryption at rest against a real PostgreSQL: master key rotation with the data
//! readable before and after, refusal without a master key, the append-only audit log,
//! and a daemon's logs through a whole connect, refresh and key rotation searched for
//! every secret it handled.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use penguin_jobs::credentials::connections::{self as oauth_jobs, NewConnection, store_connection};
use penguin_jobs::credentials::keys::{self as apikey, KeyMeta};
use penguin_jobs::credentials::{
    self as creds, Actor, AuditAction, AuditEvent, Subject, sealed_aad,
};
use penguin_jobs::secrets::{Keyring, SecretsError};
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use support::TempDir;
use support::credentials::{OAuthServer, master_key_file};
use support::daemon::cli;
use support::daemon::stop_daemon;
use support::daemon::{count, wait_for};
use uuid::Uuid;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const BIN: &str = env!("CARGO_BIN_EXE_penguin-jobs");
const LIMIT: Duration = Duration::from_secs(60);

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Every ciphertext in the database with its additional data.
async fn sealed(pool: &PgPool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (table, column) in creds::SEALED_COLUMNS {
        let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(&format!(
            "select id, {column} from penguin.{table} order by id"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        for (id, value) in rows {
            if let Some(v) = value {
                out.push((v, sealed_aad(table, column, id)));
            }
        }
    }
    out
}

#[tokio::test]
async fn rotating_the_master_key_rewraps_every_secret_online_and_keeps_it_readable() {
    let db = support::test_db().await;
    let dir = TempDir::new("secrets");
    let (old, old_ref) = master_key_file(&dir, "old.key");
    let (new, new_ref) = master_key_file(&dir, "new.key");
    let old_ring = Keyring::new(old.clone(), Vec::new());
    let toml = format!(
        "[secrets]\nmaster_key = \"{old_ref}\"\n\
         [oauth.providers.acme]\nclient_id = \"c\"\nclient_secret = \"env:UNUSED\"\n\
         auth_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://127.0.0.1:9/t\"\nscopes = [\"s\"]\n"
    );
    let config_path = dir.0.join("jobs.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let access = SecretString::from("access-token-before-rotation".to_string());
    let refresh = SecretString::from("refresh-token-before-rotation".to_string());
    let conn = store_connection(
        &db.pool,
        &old_ring,
        &NewConnection {
            tenant_id: Uuid::new_v4(),
            provider: "acme",
            account_id: "acct",
            account_email: None,
            scopes: &["s".to_string()],
            access_token: &access,
            refresh_token: Some(&refresh),
            expires_at: None,
        },
        AuditAction::Stored,
        Actor::Cli,
    )
    .await
    .unwrap();
    let key = SecretString::from("provider-api-key".to_string());
    apikey::set_key(
        &db.pool,
        &old_ring,
        "stripe",
        "production",
        &key,
        &KeyMeta {
            schedule: Some("monthly".into()),
            ..KeyMeta::default()
        },
        Duration::from_secs(60),
        Actor::Cli,
    )
    .await
    .unwrap();
    let out = cli(
        &config_path,
        &db.url,
        &[
            "oauth",
            "authorize",
            "acme",
            "--tenant",
            &Uuid::new_v4().to_string(),
            "--redirect-uri",
            "http://127.0.0.1:9/cb",
        ],
        None,
    );
    ok(&out);
    let before = sealed(&db.pool).await;
    assert_eq!(before.len(), 4, "two tokens, a key and a PKCE verifier");
    let status: serde_json::Value = serde_json::from_str(&ok(&cli(
        &config_path,
        &db.url,
        &["secrets", "status", "--json"],
        None,
    )))
    .unwrap();
    assert_eq!(status["current_key_id"], old.id());
    assert_eq!(status["secrets_by_key_id"][old.id()], 4);

    // a daemon already switched to the new key, the old one kept for reading, reads all
    let during = Keyring::new(new.clone(), vec![old.clone()]);
    for (ct, aad) in &before {
        during.decrypt(ct, aad).unwrap();
    }
    let printed = ok(&cli(
        &config_path,
        &db.url,
        &["secrets", "rotate-master", "--new-key", &new_ref],
        None,
    ));
    assert!(printed.starts_with("4 secrets re-wrapped"), "{printed}");

    let after = sealed(&db.pool).await;
    let new_ring = Keyring::new(new.clone(), Vec::new());
    for ((ct, aad), (old_ct, _)) in after.iter().zip(&before) {
        assert_eq!(Keyring::key_id_of(ct), Some(new.id()));
        // envelope: only the wrapped data key changed
        assert_eq!(ct.rsplit('.').next(), old_ct.rsplit('.').next());
        assert_eq!(
            new_ring.decrypt(ct, aad).unwrap().expose_secret(),
            old_ring.decrypt(old_ct, aad).unwrap().expose_secret()
        );
        assert!(matches!(
            old_ring.decrypt(ct, aad),
            Err(SecretsError::UnknownKey(_))
        ));
    }
    assert_eq!(
        oauth_jobs::access_token(&db.pool, &new_ring, conn)
            .await
            .unwrap()
            .unwrap()
            .expose_secret(),
        "access-token-before-rotation"
    );
    assert_eq!(
        apikey::active_key(&db.pool, &new_ring, "stripe", "production")
            .await
            .unwrap()
            .unwrap()
            .key
            .expose_secret(),
        "provider-api-key"
    );
    // the daemon's key may now come from the environment
    std::fs::write(&config_path, "").unwrap();
    let mut status = Command::new(BIN);
    status
        .arg("--config")
        .arg(&config_path)
        .args(["secrets", "status", "--json"])
        .env("DATABASE_URL", &db.url)
        .env("PENGUIN_JOBS_MASTER_KEY", new.to_base64().expose_secret());
    let status: serde_json::Value =
        serde_json::from_slice(&status.output().unwrap().stdout).unwrap();
    assert_eq!(status["current_key_id"], new.id());
    assert_eq!(
        status["secrets_by_key_id"],
        serde_json::json!({ new.id(): 4 })
    );

    let detail: serde_json::Value = sqlx::query_scalar(
        "select detail from penguin.audit_log where event = 'master_key_rotated' and actor = 'cli'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        detail,
        serde_json::json!({"from": [old.id()], "to": new.id(), "rewrapped": 4})
    );
    // nothing to do a second time
    std::fs::write(
        &config_path,
        format!("[secrets]\nmaster_key = \"{new_ref}\"\n"),
    )
    .unwrap();
    let again = ok(&cli(
        &config_path,
        &db.url,
        &["secrets", "rotate-master", "--new-key", &new_ref],
        None,
    ));
    assert!(again.starts_with("0 secrets re-wrapped"), "{again}");
}

#[tokio::test]
async fn without_a_master_key_credentials_are_refused_and_nothing_is_stored() {
    let db = support::test_db().await;
    let dir = TempDir::new("secrets");
    let config_path = dir.0.join("jobs.toml");
    std::fs::write(
        &config_path,
        "[oauth.providers.acme]\nclient_id = \"c\"\nclient_secret = \"env:UNUSED\"\n\
         auth_url = \"http://127.0.0.1:9/a\"\ntoken_url = \"http://127.0.0.1:9/t\"\nscopes = [\"s\"]\n",
    )
    .unwrap();
    let tenant = Uuid::new_v4().to_string();
    for (args, stdin) in [
        (
            vec![
                "oauth",
                "authorize",
                "acme",
                "--tenant",
                &tenant,
                "--redirect-uri",
                "http://127.0.0.1:9/cb",
            ],
            None,
        ),
        (vec!["keys", "set", "stripe"], Some("sk_test_plaintext")),
        (vec!["keys", "stage", "stripe"], Some("sk_test_plaintext")),
        (
            vec!["secrets", "rotate-master", "--new-key", "env:NOPE"],
            None,
        ),
    ] {
        let out = cli(&config_path, &db.url, &args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("no master key configured"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("never stored in plaintext"), "{stderr}");
    }
    for table in ["oauth_states", "oauth_connections", "api_keys", "audit_log"] {
        assert_eq!(
            count(&db.pool, &format!("select count(*) from penguin.{table}")).await,
            0,
            "{table}"
        );
    }
    // a key that is not 32 bytes of base64 is refused by name, without echoing it
    let bad = dir.secret_file("bad.key", "c2hvcnQta2V5");
    std::fs::write(&config_path, format!("[secrets]\nmaster_key = \"{bad}\"\n")).unwrap();
    let out = cli(&config_path, &db.url, &["secrets", "status"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("secrets.master_key: the master key must be base64 of exactly 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("c2hvcnQta2V5"));
    // and a daemon refuses to start with it
    let out = cli(&config_path, &db.url, &["run", "--no-http"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secrets.master_key"));
}

#[tokio::test]
async fn the_audit_log_refuses_update_delete_and_truncate() {
    let db = support::test_db().await;
    let event = AuditEvent {
        event: AuditAction::Stored,
        actor: Actor::Cli,
        subject_type: Subject::ApiKey,
        subject_id: Some("k".into()),
        tenant_id: None,
        provider: Some("stripe"),
        ok: true,
        detail: serde_json::json!({}),
    };
    creds::audit(&db.pool, &event).await.unwrap();
    for sql in [
        "update penguin.audit_log set outcome = 'failed'",
        "update penguin.audit_log set detail = '{\"forged\": true}' where id = 1",
        "delete from penguin.audit_log",
        "truncate penguin.audit_log",
    ] {
        let err = sqlx::query(sql)
            .execute(&db.pool)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("penguin.audit_log is append-only"),
            "{sql}: {err}"
        );
    }
    creds::audit(&db.pool, &event).await.unwrap();
    let rows = creds::list_audit(&db.pool, Some("k"), 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.outcome == "ok" && r.detail == serde_json::json!({}))
    );
    // the actor vocabulary is enforced too
    let err = sqlx::query(
        "insert into penguin.audit_log (event, actor, subject_type, outcome) values ('stored', 'someone', 'x', 'ok')",
    )
    .execute(&db.pool)
    .await
    .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_logs_of_a_connect_refresh_and_key_rotation_never_show_a_secret() {
    let db = support::test_db().await;
    let dir = TempDir::new("secrets-logs");
    let client_secret = "oauth-client-secret-9f8e7d";
    let server = OAuthServer::start("log-client", client_secret, "basic");
    let api = MockServer::start().await;
    for k in ["mailer-key-one-1111", "mailer-key-two-2222"] {
        Mock::given(method("GET"))
            .and(path("/me"))
            .and(header("authorization", format!("Bearer {k}").as_str()))
            .respond_with(ResponseTemplate::new(200))
            .mount(&api)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/keys"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"key": "mailer-key-two-2222", "id": "m2"})),
        )
        .mount(&api)
        .await;
    let (master, master_ref) = master_key_file(&dir, "master.key");
    let secret_ref = dir.secret_file("client.secret", client_secret);
    let port = free_port();
    let shim = format!("http://127.0.0.1:{port}");
    let config_path = dir.0.join("jobs.toml");
    std::fs::write(
        &config_path,
        format!(
            "[daemon]\npoll_interval = \"100ms\"\n[maintenance]\nprune = false\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\
             [secrets]\nmaster_key = \"{master_ref}\"\n\
             [kinds.\"oauth.refresh\"]\nbackoff = {{ strategy = \"fixed\", base = \"100ms\", max = \"100ms\" }}\n\
             [api_keys]\noverlap = \"1s\"\n\
             [api_keys.providers.mailer]\ntest_url = \"{a}/me\"\ncreate_url = \"{a}/keys\"\n\
             {}[oauth]\nrefresh_cron = \"* * * * * *\"\nredirect_uri = \"{shim}/oauth/callback/{{provider}}\"\n",
            server.provider_toml("acme", "log-client", &secret_ref, "basic"),
            a = api.uri()
        ),
    )
    .unwrap();
    let log_path = dir.0.join("daemon.log");
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut cli_output = String::new();
    let mut run = |args: &[&str], stdin: Option<&str>| {
        let out = cli(&config_path, &db.url, args, stdin);
        cli_output.push_str(&String::from_utf8_lossy(&out.stdout));
        cli_output.push_str(&String::from_utf8_lossy(&out.stderr));
        ok(&out)
    };

    // connect through the daemon's shim
    let tenant = Uuid::new_v4();
    let url = run(
        &[
            "oauth",
            "authorize",
            "acme",
            "--tenant",
            &tenant.to_string(),
        ],
        None,
    );
    let url = reqwest::Url::parse(url.trim()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let back = server.consent(url.as_str()).await;
    let code = reqwest::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let client = reqwest::Client::new();
    let page = loop {
        // the shim may still be starting
        match client.get(&back).send().await {
            Ok(r) => break r,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(page.status().as_u16(), 200);
    wait_for(
        &db.pool,
        "select count(*) = 1 from penguin.oauth_connections",
        LIMIT,
        "connected",
    )
    .await;
    let ring = Keyring::new(master.clone(), Vec::new());
    let (id, verifier_enc, state_id): (Uuid, String, Uuid) = sqlx::query_as(
        "select c.id, s.code_verifier_enc, s.id from penguin.oauth_connections c, penguin.oauth_states s",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let verifier = ring
        .decrypt(
            &verifier_enc,
            &sealed_aad("oauth_states", "code_verifier_enc", state_id),
        )
        .unwrap();
    let token = |column: &'static str| {
        let pool = db.pool.clone();
        let ring = ring.clone();
        async move {
            let enc: String = sqlx::query_scalar(&format!(
                "select {column} from penguin.oauth_connections where id = $1"
            ))
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            ring.decrypt(&enc, &sealed_aad("oauth_connections", column, id))
                .unwrap()
                .expose_secret()
                .to_string()
        }
    };
    let first_access = token("access_token_enc").await;
    let first_refresh = token("refresh_token_enc").await;

    // the per-second sweep refreshes it once it is due
    sqlx::query("update penguin.oauth_connections set expires_at = now() + interval '1 minute'")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_for(
        &db.pool,
        "select exists (select 1 from penguin.audit_log where event = 'refreshed')",
        LIMIT,
        "refreshed",
    )
    .await;
    let second_access = token("access_token_enc").await;
    let second_refresh = token("refresh_token_enc").await;
    assert_ne!(first_refresh, second_refresh);

    // a key set from standard input, rotated through the key API, the old one revoked
    run(&["keys", "set", "mailer"], Some("mailer-key-one-1111"));
    run(&["keys", "rotate", "mailer"], None);
    wait_for(
        &db.pool,
        "select exists (select 1 from penguin.audit_log where event = 'key_revoked')",
        LIMIT,
        "the old key revoked",
    )
    .await;
    stop_daemon(&mut daemon);

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("oauth connection stored"),
        "the log captured the connect"
    );
    assert!(
        log.contains("oauth tokens refreshed"),
        "the log captured the refresh"
    );
    assert!(
        log.contains("API key rotated"),
        "the log captured the rotation"
    );
    assert!(log.contains("DEBUG"), "debug logging was on");
    let rows: String = sqlx::query_scalar(
        "select coalesce(string_agg(payload::text || coalesce(result::text, '') || errors::text, ' '), '')
           from (select payload, result, errors from penguin.jobs
                 union all select payload, null, errors from penguin.dead_letters) j",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let audit: String =
        sqlx::query_scalar("select string_agg(detail::text, ' ') from penguin.audit_log")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let secrets = [
        ("client secret", client_secret.to_string()),
        ("state", state),
        ("code", code),
        ("PKCE verifier", verifier.expose_secret().to_string()),
        ("first access token", first_access),
        ("first refresh token", first_refresh),
        ("second access token", second_access),
        ("second refresh token", second_refresh),
        ("old API key", "mailer-key-one-1111".into()),
        ("new API key", "mailer-key-two-2222".into()),
        ("master key", master.to_base64().expose_secret().to_string()),
    ];
    for (what, secret) in &secrets {
        assert!(secret.len() >= 16, "{what} is long enough to search for");
        assert!(
            !log.contains(secret.as_str()),
            "the daemon log shows the {what}"
        );
        assert!(
            !rows.contains(secret.as_str()),
            "a job or dead letter holds the {what}"
        );
        assert!(
            !audit.contains(secret.as_str()),
            "the audit log holds the {what}"
        );
        assert!(
            !cli_output.contains(secret.as_str()) || *what == "state" || *what == "code",
            "the CLI printed the {what}"
        );
    }
}

#[tokio::test]
async fn many_daemons_raising_one_condition_at_once_open_one_alert() {
    use penguin_jobs::credentials::{AlertKind, NewAlert, Subject, raise_alert_once};
    let db = support::test_db().await;
    let alert = NewAlert {
        kind: AlertKind::OauthClientRefused,
        subject_type: Subject::OauthClient,
        subject_id: Some("google".into()),
        tenant_id: None,
        provider: Some("google"),
        message: "the token endpoint refused the client (invalid_client)".into(),
    };
    let raised =
        futures::future::join_all((0..12).map(|_| raise_alert_once(&db.pool, &alert))).await;
    let raised: Vec<bool> = raised.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(raised.iter().filter(|r| **r).count(), 1, "{raised:?}");
    let open: i64 = sqlx::query_scalar(
        "select count(*) from penguin.alerts where kind = 'oauth_client_refused' and acknowledged_at is null",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(open, 1);
    // once acknowledged, the condition may raise a new one
    sqlx::query("update penguin.alerts set acknowledged_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(raise_alert_once(&db.pool, &alert).await.unwrap());
}
