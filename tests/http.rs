//! The HTTP shim against a real PostgreSQL: `/v1/jobs` statuses, and webhooks verified at
//! the edge, stored with their job after commit, deduplicated, refused when forged or stale.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use hmac::{Hmac, Mac};
use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};
use sha2::Sha256;
use support::app::{Builder, TestApp};
use support::daemon::config;

const TOKEN: &str = "test-api-token-0123456789-0123456789-0123456789";
const STRIPE_SECRET: &str = "whsec_test_secret_for_the_shim";
const MAILGUN_KEY: &str = "mailgun-signing-key-for-tests";

/// The app serving the shim, with every provider's webhook secret and a clock the test
/// moves.
struct Shim {
    app: TestApp,
    clock: Arc<AtomicI64>,
    sendgrid_key: p256::ecdsa::SigningKey,
}

async fn start() -> Shim {
    start_with(TestApp::builder(), "").await
}

/// `extra` is appended to the shim's config (filters).
async fn start_with(app: Builder, extra: &str) -> Shim {
    let sendgrid_key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    // SubjectPublicKeyInfo DER of a P-256 key: the fixed algorithm header, then the point
    let mut public = hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
    public.extend_from_slice(
        sendgrid_key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes(),
    );
    use base64::Engine;
    let dir = app.dir();
    let toml = format!(
        "[http]\napi_tokens = [\"{}\"]\nmax_body = 4096\n\
         [providers.stripe]\nwebhook_secret = \"{}\"\n\
         [providers.mailgun]\nwebhook_signing_key = \"{}\"\n\
         [providers.sendgrid]\nwebhook_public_key = \"{}\"\n{extra}",
        dir.secret_file("token", TOKEN),
        dir.secret_file("stripe", STRIPE_SECRET),
        dir.secret_file("mailgun", MAILGUN_KEY),
        dir.secret_file(
            "sendgrid",
            &base64::engine::general_purpose::STANDARD.encode(&public)
        ),
    );
    let clock = Arc::new(AtomicI64::new(chrono::Utc::now().timestamp()));
    let c = clock.clone();
    let app = app
        .config(&toml)
        .shim_clock(move || c.load(Ordering::SeqCst))
        .build()
        .await;
    Shim {
        app,
        clock,
        sendgrid_key,
    }
}

impl Shim {
    async fn post_job(&self, token: Option<&str>, body: &str) -> (u16, Value) {
        let shim = self.app.shim();
        let mut req = shim
            .client
            .post(shim.url("/v1/jobs"))
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post_webhook(
        &self,
        provider: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, Value) {
        let shim = self.app.shim();
        let mut req = shim
            .client
            .post(shim.url(&format!("/webhooks/{provider}")))
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(msg);
    hex::encode(mac.finalize().into_bytes())
}

fn stripe_event(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": "payment_intent.succeeded", "created": 1_700_000_000,
        "data": {"object": {"id": "pi_1", "object": "payment_intent", "amount": 4200, "currency": "usd"}}
    }))
    .unwrap()
}

fn stripe_signature(t: i64, body: &[u8]) -> String {
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    format!("t={t},v1={}", hmac_hex(STRIPE_SECRET.as_bytes(), &signed))
}

#[tokio::test]
async fn a_queue_name_the_config_could_not_name_is_refused_with_422() {
    let shim = start().await;
    let (status, body) = shim
        .post_job(
            Some(TOKEN),
            r#"{"kind": "noop", "payload": {}, "queue": "d\u00e9fault"}"#,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("queue: "),
        "{body}"
    );
    assert_eq!(
        shim.app.count("select count(*) from penguin.jobs").await,
        0,
        "nothing enqueued"
    );
}

#[tokio::test]
async fn a_job_declared_as_anything_but_json_is_refused_with_415_in_json() {
    let shim = start().await;
    let s = shim.app.shim();
    let post = |content_type: &'static str| {
        s.client
            .post(s.url("/v1/jobs"))
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(r#"{"kind": "noop", "payload": {}}"#)
            .send()
    };
    for refused in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ] {
        let resp = post(refused).await.unwrap();
        assert_eq!(resp.status().as_u16(), 415, "{refused}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("application/json"),
            "{body}"
        );
    }
    for accepted in [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/vnd.penguin+json",
    ] {
        assert_eq!(
            post(accepted).await.unwrap().status().as_u16(),
            202,
            "{accepted}"
        );
    }
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.jobs where kind = 'noop'")
            .await,
        3,
        "only the accepted requests left jobs"
    );
}

#[tokio::test]
async fn post_jobs_answers_every_status_the_contract_names() {
    let shim = start().await;

    assert_eq!(shim.post_job(None, r#"{"kind": "noop"}"#).await.0, 401);
    assert_eq!(
        shim.post_job(Some("wrong-token-0123456789abc"), r#"{"kind": "noop"}"#)
            .await
            .0,
        401
    );

    let (status, body) = shim
        .post_job(
            Some(TOKEN),
            r#"{"kind": "noop", "payload": {}, "unique_key": "once", "priority": -1}"#,
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_i64().unwrap();
    let (status, again) = shim
        .post_job(
            Some(TOKEN),
            r#"{"kind": "noop", "payload": {}, "unique_key": "once"}"#,
        )
        .await;
    assert_eq!((status, again["id"].as_i64()), (200, Some(id)));

    let (status, body) = shim
        .post_job(Some(TOKEN), r#"{"kind": "no.such.kind", "payload": {}}"#)
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"].as_str().unwrap().contains("unknown job kind"),
        "{body}"
    );
    let (status, body) = shim
        .post_job(
            Some(TOKEN),
            r#"{"kind": "http.request", "payload": {"method": "GET"}}"#,
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing field `url`"),
        "{body}"
    );
    assert_eq!(shim.post_job(Some(TOKEN), "{not json").await.0, 422);
    let big = format!(
        r#"{{"kind": "noop", "payload": {{"pad": "{}"}}}}"#,
        "x".repeat(5000)
    );
    assert_eq!(shim.post_job(Some(TOKEN), &big).await.0, 413);
    // answered as JSON like every other refusal, not axum's plain text
    let (_, answer) = shim.post_job(Some(TOKEN), &big).await;
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|m| m.contains("length limit exceeded")),
        "{answer}"
    );

    assert_eq!(shim.app.count("select count(*) from penguin.jobs").await, 1);
}

#[tokio::test]
async fn concurrent_posts_share_commits_and_each_gets_its_own_job() {
    let shim = Arc::new(start().await);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let shim = shim.clone();
        tasks.push(tokio::spawn(async move {
            shim.post_job(
                Some(TOKEN),
                &format!(r#"{{"kind": "noop", "payload": {{"n": {n}}}}}"#),
            )
            .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 202);
        ids.push(body["id"].as_i64().unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(
        shim.app.count("select count(*) from penguin.jobs").await,
        200
    );
}

#[tokio::test]
async fn a_stripe_event_is_stored_with_its_job_once_and_forgeries_are_refused() {
    let shim = start().await;
    let body = stripe_event("evt_shim_1");
    let sig = stripe_signature(shim.now(), &body);

    let (status, answer) = shim
        .post_webhook("stripe", &[("stripe-signature", sig.clone())], &body)
        .await;
    assert_eq!(
        (status, answer),
        (200, json!({"stored": 1, "duplicates": 0}))
    );
    // redelivery: 200, no second row, no second job
    let (status, answer) = shim
        .post_webhook("stripe", &[("stripe-signature", sig.clone())], &body)
        .await;
    assert_eq!(
        (status, answer),
        (200, json!({"stored": 0, "duplicates": 1}))
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
    assert_eq!(
        shim.app
            .count(
                "select count(*) from penguin.jobs j join penguin.inbound_events e
                on (j.payload->>'inbound_event_id')::bigint = e.id
             where j.kind = 'stripe.event' and e.event_id = 'evt_shim_1'"
            )
            .await,
        1
    );
    let raw: Vec<u8> = sqlx::query_scalar("select raw from penguin.inbound_events")
        .fetch_one(&shim.app.pool)
        .await
        .unwrap();
    assert_eq!(raw, body, "the raw body is stored exactly as received");

    // forged, missing, stale: 401 and nothing stored
    let other = stripe_event("evt_shim_2");
    let mut tampered = other.clone();
    tampered[10] ^= 1;
    let sig2 = stripe_signature(shim.now(), &other);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig2.clone())], &tampered)
            .await
            .0,
        401
    );
    assert_eq!(shim.post_webhook("stripe", &[], &other).await.0, 401);
    shim.clock.fetch_add(301, Ordering::SeqCst);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig2)], &other)
            .await
            .0,
        401
    );
    // a validly signed body that is not an event: 400
    let junk = b"[1, 2, 3]".to_vec();
    let sig = stripe_signature(shim.now(), &junk);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], &junk)
            .await
            .0,
        400
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
    assert_eq!(shim.post_webhook("paypal", &[], b"{}").await.0, 404);
    // over [http] max_body (4096 here): 413, nothing stored
    let big = vec![b' '; 5000];
    let sig = stripe_signature(shim.now(), &big);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig.clone())], &big)
            .await
            .0,
        413
    );
    let (_, answer) = shim
        .post_webhook("stripe", &[("stripe-signature", sig)], &big)
        .await;
    assert!(answer["error"].is_string(), "{answer}");
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
}

#[tokio::test]
async fn a_sendgrid_batch_stores_each_event_once() {
    let shim = start().await;
    let body = serde_json::to_vec(&json!([
        {"email": "ada@example.com", "timestamp": 1_700_000_000, "event": "delivered", "sg_event_id": "sg-1", "sg_message_id": "m1.filter", "campaignId": "cmp_42"},
        {"email": "bob@example.com", "timestamp": 1_700_000_001, "event": "bounce", "type": "bounce", "sg_event_id": "sg-2", "sg_message_id": "m2.filter"}
    ]))
    .unwrap();
    let ts = shim.now().to_string();
    let mut signed = ts.clone().into_bytes();
    signed.extend_from_slice(&body);
    let signature: p256::ecdsa::Signature = shim.sendgrid_key.sign(&signed);
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let headers = [
        ("x-twilio-email-event-webhook-signature", sig),
        ("x-twilio-email-event-webhook-timestamp", ts),
    ];
    let (status, answer) = shim.post_webhook("sendgrid", &headers, &body).await;
    assert_eq!(
        (status, answer),
        (200, json!({"stored": 2, "duplicates": 0}))
    );
    let (status, answer) = shim.post_webhook("sendgrid", &headers, &body).await;
    assert_eq!(
        (status, answer),
        (200, json!({"stored": 0, "duplicates": 2}))
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.jobs where kind = 'sendgrid.event'")
            .await,
        2
    );
    // each event keeps its own bytes of the batch, not the whole batch again
    let raws: Vec<Vec<u8>> =
        sqlx::query_scalar("select raw from penguin.inbound_events order by event_id")
            .fetch_all(&shim.app.pool)
            .await
            .unwrap();
    let elements: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&body).unwrap();
    assert_eq!(raws.len(), 2);
    for (raw, element) in raws.iter().zip(&elements) {
        assert_eq!(raw.as_slice(), element.get().as_bytes());
    }
    let mut tampered = body.clone();
    tampered[5] ^= 1;
    assert_eq!(
        shim.post_webhook("sendgrid", &headers, &tampered).await.0,
        401
    );
}

/// A Mailgun delivery signed at `ts` with `token`, around event `id`.
fn mailgun_body(ts: i64, token: &str, id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "signature": {"timestamp": ts.to_string(), "token": token,
                      "signature": hmac_hex(MAILGUN_KEY.as_bytes(), format!("{ts}{token}").as_bytes())},
        "event-data": {"id": id, "event": "delivered", "recipient": "ada@example.com", "timestamp": ts as f64,
                       "user-variables": {"campaign-id": "cmp_42", "recipient-id": "rcp_7"}}
    }))
    .unwrap()
}

#[tokio::test]
async fn a_mailgun_token_cannot_be_replayed() {
    let shim = start().await;
    let ts = shim.now();
    let token = "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6aa";
    let body = |id: &str| mailgun_body(ts, token, id);
    assert_eq!(
        shim.post_webhook("mailgun", &[], &body("mg-1")).await.0,
        200
    );
    // the same signed token again, even around another event: refused
    assert_eq!(
        shim.post_webhook("mailgun", &[], &body("mg-2")).await.0,
        401
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
}

#[tokio::test]
async fn one_mailgun_token_delivered_many_times_at_once_is_taken_once() {
    let shim = start().await;
    let ts = shim.now();
    let token = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0";
    // concurrent deliveries share group-commit batches: a token seen twice in one batch
    // must be a replay there too, not two events
    let bodies: Vec<Vec<u8>> = (0..16)
        .map(|n| mailgun_body(ts, token, &format!("mg-at-once-{n}")))
        .collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|b| shim.post_webhook("mailgun", &[], b)))
            .await;
    let mut statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
}

#[tokio::test]
async fn a_mailgun_token_is_refused_by_every_shim_and_only_once_its_delivery_is_stored() {
    let first = start().await;
    let second = start_with(
        TestApp::builder().database(first.app.pool.clone(), &first.app.url),
        "",
    )
    .await;
    let ts = first.now();
    let token = "f6e5d4c3b2a1f6e5d4c3b2a1f6e5d4c3b2a1f6e5d4c3b2a1ff";
    // a delivery whose storing failed (answered 503, its transaction rolled back) leaves
    // no token behind, so Mailgun's redelivery is taken
    let seen = penguin_jobs::queue::ReplayToken {
        provider: "mailgun",
        token: token.into(),
    };
    let mut tx = first.app.pool.begin().await.unwrap();
    let fresh = penguin_jobs::queue::remember_replay_tokens(&mut tx, &[&seen])
        .await
        .unwrap();
    assert!(fresh.contains(&seen));
    tx.rollback().await.unwrap();
    assert_eq!(
        first
            .post_webhook("mailgun", &[], &mailgun_body(ts, token, "mg-1"))
            .await
            .0,
        200
    );
    // the same token at another shim on the same database: refused there too
    assert_eq!(
        second
            .post_webhook("mailgun", &[], &mailgun_body(ts, token, "mg-forged"))
            .await
            .0,
        401
    );
    assert_eq!(
        first
            .app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
}

/// `penguin-jobs run --no-workers` serving the shim of `shim`'s config on a port of its
/// own, against the same database, and the base URL it will answer at.
fn shim_process(shim: &Shim) -> (std::process::Command, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = shim.app.toml.replacen(
        "[http]\n",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
        1,
    );
    let path = shim.app.dir.0.join("second.toml");
    std::fs::write(&path, toml).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_penguin-jobs"));
    command
        .arg("--config")
        .arg(&path)
        .args(["run", "--no-workers"])
        .env("DATABASE_URL", &shim.app.url)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(shim.app.dir.0.join("second.log")).unwrap());
    (command, format!("http://127.0.0.1:{port}"))
}

/// Whether `base` answers `/healthz` within a minute.
async fn comes_up(base: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let up = reqwest::get(format!("{base}/healthz")).await;
        if up.is_ok_and(|r| r.status().is_success()) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn a_mailgun_delivery_answered_503_is_taken_again_and_its_token_refused_by_another_process() {
    let shim = start().await;
    let ts = shim.now();
    let token = "0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e5f0a1b2c3d4e5f0a";
    let delivery = mailgun_body(ts, token, "mg-503");
    // the database refuses the delivery's events as a server going down would
    for statement in [
        "create function penguin.test_refuse() returns trigger language plpgsql as $$
         begin raise exception 'going down' using errcode = '57P03'; end $$",
        "create trigger refuse before insert on penguin.inbound_events
         for each row execute function penguin.test_refuse()",
    ] {
        sqlx::query(statement)
            .execute(&shim.app.pool)
            .await
            .unwrap();
    }
    assert_eq!(shim.post_webhook("mailgun", &[], &delivery).await.0, 503);
    sqlx::query("drop trigger refuse on penguin.inbound_events")
        .execute(&shim.app.pool)
        .await
        .unwrap();
    // Mailgun redelivers: taken, since the 503's transaction kept no token
    assert_eq!(shim.post_webhook("mailgun", &[], &delivery).await.0, 200);
    // the same signed token at a shim in another process on the same database: refused
    let (mut command, base) = shim_process(&shim);
    let mut second = command.spawn().unwrap();
    let replayed = match comes_up(&base).await {
        true => reqwest::Client::new()
            .post(format!("{base}/webhooks/mailgun"))
            .body(mailgun_body(ts, token, "mg-forged"))
            .send()
            .await
            .map(|r| r.status().as_u16()),
        false => Ok(0),
    };
    support::daemon::stop_daemon(&mut second);
    let replayed = replayed.unwrap();
    assert_eq!(
        replayed, 401,
        "(0: the second shim never answered; see second.log)"
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        1
    );
}

#[tokio::test]
async fn a_stopped_database_answers_503_so_the_provider_retries() {
    // a cluster of this test's own, so stopping it leaves the other tests alone
    let cluster = penguin_jobs::embedded_pg::EmbeddedPostgres::start_temporary()
        .await
        .unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect(&cluster.url("postgres"))
        .await
        .unwrap();
    penguin_jobs::queue::migrate(&pool).await.unwrap();
    let shim = start_with(
        TestApp::builder().database(pool, &cluster.url("postgres")),
        "",
    )
    .await;
    let body = stripe_event("evt_up");
    let sig = stripe_signature(shim.now(), &body);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], &body)
            .await
            .0,
        200
    );

    cluster.stop().await.unwrap();
    let body = stripe_event("evt_down");
    let sig = stripe_signature(shim.now(), &body);
    let (status, answer) = shim
        .post_webhook("stripe", &[("stripe-signature", sig)], &body)
        .await;
    assert_eq!(status, 503, "{answer}");
    let (status, _) = shim
        .post_job(Some(TOKEN), r#"{"kind": "noop", "payload": {}}"#)
        .await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn one_bad_request_in_a_group_commit_does_not_fail_its_neighbours() {
    let shim = Arc::new(start().await);
    // known to this daemon's registry, but gone from penguin.kinds: the SQL refuses it
    sqlx::query("delete from penguin.kinds where kind = 'http.request'")
        .execute(&shim.app.pool)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for n in 0..60 {
        let shim = shim.clone();
        tasks.push(tokio::spawn(async move {
            let body = if n == 30 {
                r#"{"kind": "http.request", "payload": {"url": "https://example.com"}}"#.to_string()
            } else {
                format!(r#"{{"kind": "noop", "payload": {{"n": {n}}}}}"#)
            };
            (n, shim.post_job(Some(TOKEN), &body).await)
        }));
    }
    for t in tasks {
        let (n, (status, body)) = t.await.unwrap();
        if n == 30 {
            assert_eq!(status, 422, "{body}");
            assert!(
                body["error"].as_str().unwrap().contains("unknown job kind"),
                "{body}"
            );
        } else {
            assert_eq!(status, 202, "request {n}: {body}");
        }
    }
    assert_eq!(
        shim.app.count("select count(*) from penguin.jobs").await,
        59
    );
}

#[tokio::test]
async fn filtered_events_are_stored_and_counted_but_get_no_job() {
    let shim = start_with(
        TestApp::builder(),
        "[[providers.stripe.filters]]\nevent = \"payment_intent.succeeded\"\nconditions = { \"data.object.currency\" = \"usd\" }\n",
    )
    .await;
    let wanted = stripe_event("evt_usd");
    let sig = stripe_signature(shim.now(), &wanted);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], &wanted)
            .await
            .0,
        200
    );
    let other = serde_json::to_vec(&json!({
        "id": "evt_customer", "type": "customer.created", "created": 1_700_000_000, "data": {"object": {}}
    }))
    .unwrap();
    let sig = stripe_signature(shim.now(), &other);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig.clone())], &other)
            .await
            .0,
        200
    );
    // a redelivery of the filtered event is not counted twice
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], &other)
            .await
            .0,
        200
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.inbound_events")
            .await,
        2
    );
    assert_eq!(
        shim.app
            .count("select count(*) from penguin.jobs where kind = 'stripe.event'")
            .await,
        1
    );
    assert_eq!(
        shim.app.count("select count from penguin.webhook_counters where provider = 'stripe' and reason = 'filtered'").await,
        1
    );
}

#[tokio::test]
async fn a_stored_stripe_event_is_processed_end_to_end() {
    let shim = start().await;
    let body = stripe_event("evt_e2e");
    let sig = stripe_signature(shim.now(), &body);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], &body)
            .await
            .0,
        200
    );

    let registry = penguin_jobs::jobs::Registry::builtin(
        &config(""),
        &penguin_jobs::jobs::Deps::new(shim.app.pool.clone()).unwrap(),
    )
    .unwrap();
    let claimed = penguin_jobs::queue::claim(
        &shim.app.pool,
        "default",
        &support::daemon::known_kinds(&shim.app.pool).await,
        10,
        "w",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].kind, "stripe.event");
    let outcome = penguin_jobs::runtime::run_attempt(&registry, claimed[0].clone(), false).await;
    assert!(
        matches!(outcome, penguin_jobs::queue::Outcome::Completed { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        shim.app
            .count(
                "select count(*) from penguin.payments where id = 'pi_1' and status = 'succeeded'"
            )
            .await,
        1
    );
}

#[tokio::test]
async fn a_job_with_text_the_database_cannot_store_is_refused_with_422_naming_the_field() {
    let shim = start().await;
    // `\u0000` inside JSON is a NUL, which neither jsonb nor text can hold
    for (body, names) in [
        (
            r#"{"kind": "noop", "payload": {"note": "a\u0000b"}}"#,
            "payload: $.note ",
        ),
        (
            r#"{"kind": "noop", "payload": {"a": [1, {"k\u0000": true}]}}"#,
            "payload: $.a[1].k\u{fffd} ",
        ),
        (
            r#"{"kind": "noop", "payload": {}, "unique_key": "once\u0000"}"#,
            "unique_key ",
        ),
        (
            r#"{"kind": "noop", "payload": {}, "queue": "default\u0000"}"#,
            "queue ",
        ),
        (r#"{"kind": "noop\u0000", "payload": {}}"#, "kind "),
    ] {
        let (status, answer) = shim.post_job(Some(TOKEN), body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(names) && message.contains("NUL"),
            "{body}: {answer}"
        );
    }
    // values out of the columns' ranges, or too long for their index
    let long_key = format!(
        r#"{{"kind": "noop", "payload": {{}}, "unique_key": "{}"}}"#,
        "k".repeat(3000)
    );
    for body in [
        r#"{"kind": "noop", "payload": {}, "priority": 40000}"#,
        r#"{"kind": "noop", "payload": {}, "max_attempts": 3000000000}"#,
        r#"{"kind": "noop", "payload": {}, "run_at": "-5000-01-01T00:00:00Z"}"#,
        r#"{"kind": "noop", "payload": {}, "run_at": "+200000-01-01T00:00:00Z"}"#,
        r#"{"kind": "noop", "payload": {}, "run_at": "0000-01-01T00:00:00Z"}"#,
        long_key.as_str(),
    ] {
        let (status, answer) = shim.post_job(Some(TOKEN), body).await;
        assert_eq!(status, 422, "{}: {answer}", &body[..body.len().min(120)]);
        assert!(answer["error"].is_string(), "{answer}");
    }
    assert_eq!(shim.app.count("select count(*) from penguin.jobs").await, 0);
    // the largest values the columns hold are taken
    let (status, answer) = shim
        .post_job(
            Some(TOKEN),
            r#"{"kind": "noop", "payload": {"note": "\ufffd"}, "priority": 32767, "max_attempts": 2147483647, "run_at": "9999-12-31T23:59:59Z"}"#,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
}

/// SendGrid's signature headers for `body`.
fn sendgrid_headers(shim: &Shim, body: &[u8]) -> [(&'static str, String); 2] {
    let ts = shim.now().to_string();
    let mut signed = ts.clone().into_bytes();
    signed.extend_from_slice(body);
    let signature: p256::ecdsa::Signature = shim.sendgrid_key.sign(&signed);
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    [
        ("x-twilio-email-event-webhook-signature", sig),
        ("x-twilio-email-event-webhook-timestamp", ts),
    ]
}

/// Runs one attempt of every job of `kind`, as a worker would; each must complete.
async fn process_all(pool: &sqlx::PgPool, kind: &str) {
    let registry = penguin_jobs::jobs::Registry::builtin(
        &config(""),
        &penguin_jobs::jobs::Deps::new(pool.clone()).unwrap(),
    )
    .unwrap();
    let jobs: Vec<(i64, Value)> =
        sqlx::query_as("select id, payload from penguin.jobs where kind = $1 order by id")
            .bind(kind)
            .fetch_all(pool)
            .await
            .unwrap();
    assert!(!jobs.is_empty(), "no {kind} job");
    for (id, payload) in jobs {
        let now = chrono::Utc::now();
        let job = penguin_jobs::queue::ClaimedJob {
            id,
            kind: kind.into(),
            payload,
            attempt: 1,
            max_attempts: 10,
            priority: 0,
            run_at: now,
            tenant_id: None,
            created_at: now,
        };
        let outcome = penguin_jobs::runtime::run_attempt(&registry, job, false).await;
        assert!(
            matches!(outcome, penguin_jobs::queue::Outcome::Completed { .. }),
            "{kind} job {id}: {outcome:?}"
        );
    }
}

#[tokio::test]
async fn a_signed_webhook_with_nul_in_its_text_is_stored_and_processed() {
    let shim = start().await;

    // a bounce reason is written by a remote mail server: it can hold anything
    let body = br#"[{"email": "ada@example.com", "timestamp": 1700000000, "event": "bounce", "type": "bounce", "reason": "550 user\u0000unknown", "sg_event_id": "sg-nul\u0000", "sg_message_id": "m1.filter", "campaignId": "cmp_42", "recipientId": "r\u0000"},
        {"email": "bob@example.com", "timestamp": 1700000001, "event": "delivered", "sg_event_id": "sg-ok", "sg_message_id": "m2.filter", "campaignId": "cmp_42"}]"#;
    let (status, answer) = shim
        .post_webhook("sendgrid", &sendgrid_headers(&shim, body), body)
        .await;
    assert_eq!(
        (status, answer),
        (200, json!({"stored": 2, "duplicates": 0}))
    );

    let ts = shim.now();
    let token = "f00df00df00df00df00df00df00df00df00df00df00df00d00";
    let mailgun = format!(
        r#"{{"signature": {{"timestamp": "{ts}", "token": "{token}", "signature": "{}"}},
            "event-data": {{"id": "mg-nul", "event": "failed", "severity": "permanent", "reason": "bounce",
                            "recipient": "carol@example.com", "timestamp": {ts},
                            "delivery-status": {{"message": "mailbox \u0000 gone", "code": 550}},
                            "user-variables": {{"campaign-id": "cmp_42"}}}}}}"#,
        hmac_hex(MAILGUN_KEY.as_bytes(), format!("{ts}{token}").as_bytes())
    );
    assert_eq!(
        shim.post_webhook("mailgun", &[], mailgun.as_bytes())
            .await
            .0,
        200
    );

    let stripe = br#"{"id": "evt_nul", "object": "event", "type": "payment_intent.payment_failed", "created": 1700000000,
        "data": {"object": {"id": "pi_nul", "object": "payment_intent", "amount": 4200, "currency": "usd",
                            "last_payment_error": {"message": "declined\u0000", "code": "card_declined"}}}}"#;
    let sig = stripe_signature(shim.now(), stripe);
    assert_eq!(
        shim.post_webhook("stripe", &[("stripe-signature", sig)], stripe)
            .await
            .0,
        200
    );

    // stored as received (raw) and as a storable copy (NUL replaced)
    let raw: Vec<u8> = sqlx::query_scalar(
        "select raw from penguin.inbound_events where event_id = 'sg-nul\u{fffd}'",
    )
    .fetch_one(&shim.app.pool)
    .await
    .unwrap();
    assert!(raw.windows(6).any(|w| w == br"\u0000"));
    assert_eq!(
        shim.app
            .count(
                "select count(*) from penguin.inbound_events
              where payload->>'reason' = E'550 user\\uFFFDunknown'
                 or payload#>>'{delivery-status,message}' = E'mailbox \\uFFFD gone'
                 or payload#>>'{data,object,last_payment_error,message}' = E'declined\\uFFFD'"
            )
            .await,
        3
    );

    for kind in ["sendgrid.event", "mailgun.event", "stripe.event"] {
        process_all(&shim.app.pool, kind).await;
    }
    assert_eq!(
        shim.app
            .count(
                "select count(*) from penguin.email_events
              where recipient in ('ada@example.com', 'bob@example.com', 'carol@example.com')"
            )
            .await,
        3
    );
    assert_eq!(
        shim.app.count(
            "select count(*) from penguin.suppressions where address in ('ada@example.com', 'carol@example.com')"
        )
        .await,
        2
    );
    assert_eq!(
        shim.app
            .count(
                "select count(*) from penguin.payments where id = 'pi_nul' and status = 'failed'
                and last_error = E'declined\\uFFFD'"
            )
            .await,
        1
    );
}

#[tokio::test]
async fn replay_tokens_are_forgotten_once_older_than_the_age_given() {
    let app = TestApp::new().await;
    sqlx::query(
        "insert into penguin.webhook_replay_tokens (provider, token, seen_at)
         values ('mailgun', 'old-1', now() - interval '2 days'),
                ('mailgun', 'old-2', now() - interval '3 days'),
                ('mailgun', 'fresh', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // a batch of 1: the deletes loop until none is left
    let pruned = penguin_jobs::queue::prune_replay_tokens(
        &app.pool,
        std::time::Duration::from_secs(86_400),
        1,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 2);
    let left: Vec<String> = sqlx::query_scalar("select token from penguin.webhook_replay_tokens")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["fresh".to_string()]);
}
