//! The shim under slow and greedy clients: a request head trickled byte by byte is cut
//! after `header_timeout`, a stalled body is answered 408 after `body_timeout`, an idle
//! keep-alive connection closes after `idle_timeout` (not after the header timeout), at
//! `max_connections` new connections wait until a slot frees (with one warning), and with
//! 2,000 slow connections held normal `POST /v1/jobs` requests still succeed.
//!
//! Deadlines are generous upper bounds; latencies are printed, never asserted.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use support::app::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "slow-clients-test-token-0123456789-0123456789";

/// How long any single outcome may take before the test gives up on it.
const DEADLINE: Duration = Duration::from_secs(20);

/// The app serving the shim with `http` appended to its `[http]` table (and a token).
async fn shim_with(http: &str) -> TestApp {
    let builder = TestApp::builder();
    let token = builder.dir().secret_file("token", TOKEN);
    builder
        .config(&format!("[http]\napi_tokens = [\"{token}\"]\n{http}\n"))
        .shim()
        .build()
        .await
}

/// `127.0.0.1:PORT` of the app's shim.
fn address(app: &TestApp) -> String {
    app.shim().base.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (or resets it): what it sent, and how
/// long after `since` it closed. Panics after [`DEADLINE`].
async fn read_until_closed(stream: &mut TcpStream, since: Instant) -> (String, Duration) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open after {DEADLINE:?}; received {:?}",
                String::from_utf8_lossy(&received)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        since.elapsed(),
    )
}

/// Reads one answer (head and a `Content-Length` body) from a keep-alive connection.
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("an answer within the deadline")
            .expect("read");
        assert!(n > 0, "closed before the answer: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: shim\r\n\r\n";

/// [`HEALTHZ`] that gives its connection (and slot) back once answered.
const HEALTHZ_THEN_CLOSE: &[u8] =
    b"GET /healthz HTTP/1.1\r\nhost: shim\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn a_request_head_sent_byte_by_byte_is_cut_after_the_header_timeout() {
    captured_logs();
    let app = shim_with("header_timeout = \"1s\"").await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    let start = Instant::now();
    let (mut read, mut write) = stream.split();
    let trickle = async {
        let mut sent = write.write_all(b"POST /v1/jobs HTTP/1.1\r\nx-slow: ").await;
        while sent.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sent = write.write_all(b"a").await;
        }
    };
    let closed = async {
        let mut buf = [0u8; 256];
        let mut received = Vec::new();
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    let received = tokio::select! {
        received = closed => received,
        // the write fails once the shim has closed and reset the connection
        _ = trickle => Vec::new(),
        _ = tokio::time::sleep(DEADLINE) => panic!("the trickling connection is open after {DEADLINE:?}"),
    };
    let elapsed = start.elapsed();
    println!("trickled head cut after {elapsed:?}");
    assert!(
        received.is_empty(),
        "no answer: {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "not before the timeout: {elapsed:?}"
    );
    wait_for_log_line(&[
        "request headers not complete",
        "header_timeout=1s",
        "closed=1",
    ])
    .await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_408_as_json_after_the_body_timeout() {
    captured_logs();
    let app = shim_with("body_timeout = \"1s\"").await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/jobs HTTP/1.1\r\nhost: shim\r\nauthorization: Bearer {TOKEN}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"kind\": \"noop\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let start = Instant::now();
    let (answer, elapsed) = read_until_closed(&mut stream, start).await;
    println!("stalled body answered and closed after {elapsed:?}: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"error":"the request body did not arrive within 1s"}"#),
        "{answer}"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "not before the timeout: {elapsed:?}"
    );
    assert_eq!(app.count("select count(*) from penguin.jobs").await, 0);
    wait_for_log_line(&["answered 408", "body_timeout=1s", "answered=1"]).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let header_timeout = Duration::from_secs(1);
    let idle_timeout = Duration::from_secs(3);
    let app = shim_with("header_timeout = \"1s\"\nidle_timeout = \"3s\"").await;
    let mut stream = TcpStream::connect(address(&app)).await.unwrap();
    for _ in 0..2 {
        stream.write_all(HEALTHZ).await.unwrap();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "kept alive: {answer}");
    }
    let (rest, idle) = read_until_closed(&mut stream, Instant::now()).await;
    println!("idle connection closed after {idle:?}");
    assert_eq!(rest, "", "closed without a word");
    // the shim's clock starts as the answer leaves, a little before it arrives here
    assert!(
        idle >= idle_timeout - Duration::from_millis(300),
        "kept for idle_timeout: {idle:?}"
    );
    assert!(
        idle > header_timeout,
        "the header timeout does not cut idle connections"
    );
}

/// Log lines of this test binary, as the daemon would print them.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        #[derive(Clone)]
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                captured_logs().lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| Capture)
            .init();
        Mutex::new(Vec::new())
    })
}

/// Waits until the captured log has a line containing every one of `parts`: that line.
async fn wait_for_log_line(parts: &[&str]) -> String {
    let found = support::poll_until(DEADLINE, async || {
        let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
        logs.lines().any(|l| parts.iter().all(|p| l.contains(p)))
    })
    .await;
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    assert!(found.is_some(), "no log line with {parts:?} in:\n{logs}");
    logs.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn at_max_connections_new_connections_wait_until_one_ends_with_one_warning() {
    captured_logs();
    let started = Instant::now();
    let app = shim_with("max_connections = 3\nheader_timeout = \"1m\"").await;
    let address = address(&app);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&address).await.unwrap());
    }
    let mut waiting = Vec::new();
    for _ in 0..5 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(HEALTHZ_THEN_CLOSE).await.unwrap();
        waiting.push(stream);
    }
    let early = tokio::time::timeout(Duration::from_secs(1), waiting[0].read(&mut [0u8; 64])).await;
    assert!(early.is_err(), "not served while 3 are held: {early:?}");
    let warning = wait_for_log_line(&["HTTP connection limit reached", "max_connections=3 "]).await;
    println!("{warning}");
    assert!(warning.contains("WARN"), "{warning}");

    let freed = Instant::now();
    drop(held);
    for stream in &mut waiting {
        let answer = read_answer(stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    println!(
        "5 waiting connections served {:?} after the held ones left",
        freed.elapsed()
    );
    let logs = String::from_utf8_lossy(&captured_logs().lock().unwrap()).into_owned();
    let lines = logs.matches("max_connections=3 ").count() as u64;
    // one line at once, then at most one per REPORT_EVERY with a count, never one per connection
    let periods = started.elapsed().as_secs() / penguin_jobs::http::serve::REPORT_EVERY.as_secs();
    assert!(
        lines <= 1 + periods,
        "{lines} warnings in {:?}:\n{logs}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_over_max_connections_per_ip_is_closed_while_others_are_served() {
    captured_logs();
    let app = shim_with("max_connections_per_ip = 2\nheader_timeout = \"1m\"").await;
    let address = address(&app);
    let held = [
        TcpStream::connect(&address).await.unwrap(),
        TcpStream::connect(&address).await.unwrap(),
    ];
    let mut third = TcpStream::connect(&address).await.unwrap();
    let (rest, _) = read_until_closed(&mut third, Instant::now()).await;
    assert_eq!(rest, "", "closed unanswered");
    wait_for_log_line(&["max_connections_per_ip=2", "refused=1"]).await;
    drop(held);
    let served = support::poll_until(DEADLINE, async || {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let mut first = [0u8; 1];
        stream.write_all(HEALTHZ).await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_secs(1), stream.read(&mut first)).await,
                Ok(Ok(1))
            )
    })
    .await;
    assert!(served.is_some(), "served once the held connections left");
}

/// Holds one slow connection for as long as `stop` is not set: sends a request line, then
/// a header byte every half second, and reconnects when the shim cuts it.
async fn slow_client(
    address: String,
    open: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
    stop: Arc<AtomicUsize>,
) {
    while stop.load(Ordering::Relaxed) == 0 {
        let Ok(mut stream) = TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        open.fetch_add(1, Ordering::Relaxed);
        let mut sent = stream
            .write_all(b"POST /v1/jobs HTTP/1.1\r\nx-slow: ")
            .await;
        while sent.is_ok() && stop.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sent = stream.write_all(b"a").await;
        }
        open.fetch_sub(1, Ordering::Relaxed);
        if sent.is_err() {
            cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_requests_succeed_while_two_thousand_slow_clients_trickle_headers() {
    const SLOW: usize = 2_000;
    const REQUESTS: usize = 40;
    let (before, limit) = penguin_jobs::process::raise_open_files_limit().unwrap();
    println!("open files limit: {before} -> {limit}");
    let app = shim_with("").await;
    let address = address(&app);
    let (open, cut, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            tokio::spawn(slow_client(
                address.clone(),
                open.clone(),
                cut.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let all_open = support::poll_until(Duration::from_secs(60), async || {
        open.load(Ordering::Relaxed) >= SLOW
    })
    .await;
    assert!(
        all_open.is_some(),
        "only {} slow connections opened",
        open.load(Ordering::Relaxed)
    );
    println!("{SLOW} slow connections open after {:?}", all_open.unwrap());

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let url = app.shim().url("/v1/jobs");
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    // spread over more than header_timeout (10s): the slow clients are cut and reconnect
    // meanwhile, as an attacker's would
    for i in 0..REQUESTS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let start = Instant::now();
        let answer = client
            .post(&url)
            .bearer_auth(TOKEN)
            .body(format!(r#"{{"kind": "noop", "payload": {{"i": {i}}}}}"#))
            .send()
            .await;
        latencies.push(start.elapsed());
        match answer {
            Ok(a) if a.status() == 202 => {}
            Ok(a) => failures.push(format!("{i}: {}", a.status())),
            Err(e) => failures.push(format!("{i}: {e}")),
        }
    }
    let still_open = open.load(Ordering::Relaxed);
    stop.store(1, Ordering::Relaxed);
    latencies.sort();
    println!(
        "{REQUESTS} POST /v1/jobs with {still_open} slow connections open ({} cut and reopened so far): \
         p50 {:?}, p90 {:?}, max {:?}",
        cut.load(Ordering::Relaxed),
        latencies[REQUESTS / 2],
        latencies[REQUESTS * 9 / 10],
        latencies[REQUESTS - 1]
    );
    assert!(failures.is_empty(), "every request succeeds: {failures:?}");
    assert_eq!(
        app.count("select count(*) from penguin.jobs").await,
        REQUESTS as i64
    );
    for task in slow {
        task.abort();
    }
}

#[tokio::test]
async fn on_shutdown_a_request_in_flight_is_answered_and_idle_connections_close() {
    let app = shim_with("").await;
    let state =
        penguin_jobs::http::AppState::new(&app.config, app.pool.clone(), app.registry.clone())
            .expect("shim state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http = app.config.http.clone();
    let serving = shutdown.clone();
    let server =
        tokio::spawn(
            async move { penguin_jobs::http::serve_on(listener, state, &http, serving).await },
        );

    let mut idle = TcpStream::connect(address).await.unwrap();
    idle.write_all(HEALTHZ).await.unwrap();
    read_answer(&mut idle).await;
    // no worker runs: the job stays available and the answer comes when the wait is over
    let body = r#"{"kind": "noop", "payload": {}, "wait": "2s"}"#;
    let mut in_flight = TcpStream::connect(address).await.unwrap();
    in_flight
        .write_all(
            format!(
                "POST /v1/jobs HTTP/1.1\r\nhost: shim\r\nauthorization: Bearer {TOKEN}\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    app.wait_for(
        "select count(*) = 1 from penguin.jobs",
        DEADLINE,
        "the job enqueued",
    )
    .await;

    shutdown.cancel();
    let (rest, _) = read_until_closed(&mut idle, Instant::now()).await;
    assert_eq!(rest, "", "the idle connection closes unanswered");
    let (answer, _) = read_until_closed(&mut in_flight, Instant::now()).await;
    assert!(
        answer.starts_with("HTTP/1.1 202"),
        "the request in flight is answered: {answer}"
    );
    assert!(answer.contains(r#""state":"available""#), "{answer}");
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("serve_on returns once every connection ended")
        .unwrap();
    assert!(
        TcpStream::connect(address).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn the_admin_listener_cuts_a_trickled_head_too_and_keeps_serving_others() {
    let app = TestApp::builder()
        .config("[http]\nheader_timeout = \"1s\"\n")
        .admin()
        .build()
        .await;
    let admin = app.admin().base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&admin).await.unwrap();
    let start = Instant::now();
    stream
        .write_all(b"GET /v1/stats HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    // another operator is served while the head trickles
    let (status, _) = app.admin().get("/v1/stats").await;
    assert_eq!(status, 200);
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"a").await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = trickle => {}
        _ = tokio::time::sleep(DEADLINE) => panic!("the trickling connection is open after {DEADLINE:?}"),
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "not before the timeout: {elapsed:?}"
    );
}
