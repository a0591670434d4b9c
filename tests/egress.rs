//! The egress guard, end to end: `http.request` jobs aimed inward (loopback, the cloud
//! metadata address, a name resolving to loopback, and redirects to each) are refused
//! permanently and reach nothing; `[egress] allow` opens exactly what it names; no client
//! of the daemon, the providers' included, follows a redirect.

mod support;

use penguin_jobs::queue::{JobState, NewJob};
use serde_json::json;
use support::app::TestApp;
use support::fake_provider::{FakeProvider, Reply};

const FAST: &str = "[daemon]\npoll_interval = \"100ms\"\n";

fn request(url: &str) -> NewJob {
    NewJob {
        max_attempts: Some(5),
        ..NewJob::new("http.request", json!({ "method": "PUT", "url": url }))
    }
}

/// The port of the fake, to aim URLs at it under other names.
fn port(fake: &FakeProvider) -> u16 {
    fake.url.rsplit(':').next().unwrap().parse().unwrap()
}

async fn app(config: &str) -> TestApp {
    TestApp::builder()
        .config(&format!("{FAST}{config}"))
        .fake_provider(FakeProvider::start().await)
        .runtime()
        .build()
        .await
}

/// Runs `url` as an `http.request` and returns its dead letter's last error, after
/// checking the refusal was permanent (one attempt) and recorded as `data`.
async fn refused(app: &TestApp, url: &str) -> String {
    let id = app.enqueue(&request(url)).await;
    let dead = app.wait_for_dead_letter(id).await;
    assert_eq!(dead.attempt, 1, "{url}: refused at once, not retried");
    let last = dead.errors.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["class"], "data", "{url}: {last}");
    last["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn calls_aimed_at_loopback_metadata_or_a_name_resolving_inward_are_refused() {
    let app = app("").await;
    let port = port(app.fake());
    let loopback = refused(&app, &format!("http://127.0.0.1:{port}/admin")).await;
    assert!(
        loopback.starts_with("egress refused: 127.0.0.1 is 127.0.0.1, a loopback address"),
        "{loopback}"
    );
    let metadata = refused(&app, "http://169.254.169.254/latest/meta-data/").await;
    assert!(metadata.contains("link-local"), "{metadata}");
    let mapped = refused(&app, &format!("http://[::ffff:127.0.0.1]:{port}/admin")).await;
    assert!(mapped.contains("loopback"), "{mapped}");
    // no address in the URL: the resolver refuses what `localhost` resolves to
    let named = refused(&app, &format!("http://localhost:{port}/admin")).await;
    assert!(
        named.starts_with("egress refused: localhost is "),
        "{named}"
    );
    assert!(named.contains("loopback"), "{named}");
    assert!(
        app.fake().requests().is_empty(),
        "nothing reached the server: {:?}",
        app.fake().requests()
    );
}

#[tokio::test]
async fn allow_opens_what_it_names_and_no_redirect_is_followed() {
    // the fake is reachable as `localhost` only: its address stays refused
    let app = app("[egress]\nallow = [\"localhost\"]\n").await;
    let port = port(app.fake());
    app.fake()
        .always("/ok", vec![Reply::status(200, json!({"ok": true}))]);
    let ok = app
        .enqueue(&request(&format!("http://localhost:{port}/ok")))
        .await;
    app.wait_for_state(ok, JobState::Completed).await;
    let direct = refused(&app, &format!("http://127.0.0.1:{port}/target")).await;
    assert!(direct.contains("loopback"), "{direct}");

    let targets = [
        format!("http://127.0.0.1:{port}/target"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://localhost:{port}/target"),
    ];
    for (n, target) in targets.iter().enumerate() {
        let status = [302, 307, 308][n];
        app.fake().push(
            &format!("/redirect/{n}"),
            Reply::raw(status, "text/plain", "").with_header("location", target),
        );
        let message = refused(&app, &format!("http://localhost:{port}/redirect/{n}")).await;
        assert!(
            message.starts_with(&format!(
                "HTTP {status}: a redirect, and redirects are not followed"
            )),
            "{target}: {message}"
        );
    }
    assert!(
        app.fake().requests_to("/target").is_empty(),
        "no redirect was followed"
    );
    assert_eq!(app.fake().requests_to("/redirect").len(), 3);

    // expected, a redirect is an answer like any other
    app.fake().push(
        "/moved",
        Reply::raw(301, "text/plain", "").with_header("location", "http://169.254.169.254/"),
    );
    let expected = app
        .enqueue(&NewJob::new(
            "http.request",
            json!({"url": format!("http://localhost:{port}/moved"), "expect_status": 301}),
        ))
        .await;
    app.wait_for_state(expected, JobState::Completed).await;
    assert_eq!(app.job(expected).await.result, Some(json!({"status": 301})));
}

#[tokio::test]
async fn the_provider_client_does_not_follow_redirects_either() {
    // a 307 keeps method and body: followed, it would resend credentials to another host
    let fake = FakeProvider::start().await;
    fake.push(
        "/v3/messages",
        Reply::raw(307, "text/plain", "")
            .with_header("location", &format!("{}/elsewhere", fake.url)),
    );
    let client = penguin_jobs::providers::http::client(std::time::Duration::from_secs(5)).unwrap();
    let answer = client
        .post(format!("{}/v3/messages", fake.url))
        .header("authorization", "Basic c2VjcmV0")
        .body("client_secret=s3cr3t")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 307);
    assert!(fake.requests_to("/elsewhere").is_empty());
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn headers_that_steer_the_connection_are_refused_at_enqueue() {
    let app = TestApp::new().await;
    let e = app.cli(&[
        "enqueue",
        "http.request",
        "--payload",
        r#"{"url": "https://example.com/", "headers": {"Host": "metadata.google.internal"}}"#,
    ]);
    assert!(!e.status.success());
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(stderr.contains("headers: host may not be set"), "{stderr}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_network_error_retried_not_a_refusal() {
    let app = app("").await;
    // RFC 6761: names under .invalid never resolve, with or without a DNS server
    let id = app
        .enqueue(&request("http://no-such-host.invalid/hook?token=s3cr3t"))
        .await;
    app.wait_for_state(id, JobState::Retryable).await;
    // the first attempt's error (a retry may have run since)
    let first = app.job(id).await.errors[0].clone();
    assert_eq!(first["class"], "network", "{first}");
    let message = first["message"].as_str().unwrap();
    assert!(message.contains("no-such-host.invalid"), "{message}");
    assert!(!message.contains("egress refused"), "{message}");
    assert!(
        !message.contains("s3cr3t"),
        "the query string stays out: {message}"
    );
    assert_eq!(
        app.count(&format!(
            "select count(*) from penguin.dead_letters where job_id = {id}"
        ))
        .await,
        0,
        "a lookup failure may pass: it is retried, not buried"
    );
}
