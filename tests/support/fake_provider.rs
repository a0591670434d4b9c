//! A local stand-in for Mailgun, SendGrid, Stripe and PostHog: records every request
//! exactly as it arrived (method, path, headers, body, arrival time), answers like the
//! provider does, and injects faults scripted per path: any status with headers and body
//! (any bytes: NUL, invalid UTF-8, megabytes), a delay (to trip timeouts), or a connection
//! dropped without an answer.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The query string, decoded into its pairs in order.
    pub query: Vec<(String, String)>,
    /// Lowercase names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }

    /// The fields of a form body, urlencoded or multipart, in order.
    pub fn form(&self) -> Vec<(String, String)> {
        let content_type = self.header("content-type").unwrap_or_default();
        if let Some(boundary) = content_type.split("boundary=").nth(1) {
            return parse_multipart(&self.body, boundary.trim_matches('"'));
        }
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// Every value of form field `name`.
    pub fn field(&self, name: &str) -> Vec<String> {
        self.form()
            .into_iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v)
            .collect()
    }
}

fn parse_multipart(body: &[u8], boundary: &str) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut fields = Vec::new();
    for part in text.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_string();
        fields.push((
            name,
            value.strip_suffix("\r\n").unwrap_or(value).to_string(),
        ));
    }
    fields
}

/// A JSON object of `members` (`"access_token":"t"`) padded past eight MiB: a valid
/// answer that a client accepts only if it reads it whole.
pub fn eight_mebibytes_of_json(members: &str) -> Vec<u8> {
    let mut body = format!(r#"{{{members},"padding":""#).into_bytes();
    body.resize(body.len() + 8 * 1024 * 1024, b'x');
    body.extend_from_slice(br#""}"#);
    body
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status, headers and body.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without answering.
    Reset,
}

impl Reply {
    pub fn status(status: u16, body: Value) -> Self {
        Reply::Status {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(body.to_string()),
        }
    }

    /// This status with `body` exactly as given (it need not be JSON, nor UTF-8).
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Reply::Status {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Reply::Status {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_string(), value.to_string()));
                Reply::Status {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// Path prefix → replies to use first, in order.
    script: HashMap<String, VecDeque<Reply>>,
    /// Path prefix → replies given in turn for as long as the fake runs, once the script
    /// of the path is used up.
    rules: HashMap<String, (Vec<Reply>, usize)>,
    /// Stripe: Idempotency-Key → the answer first given for it.
    idempotent: HashMap<String, (u16, String)>,
    counter: u64,
}

/// The running fake (stops when dropped).
pub struct FakeProvider {
    pub url: String,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { url, state, task }
    }

    /// The next request whose path starts with `path_prefix` gets `reply` (replies queue up).
    pub fn push(&self, path_prefix: &str, reply: Reply) {
        self.state
            .lock()
            .unwrap()
            .script
            .entry(path_prefix.to_string())
            .or_default()
            .push_back(reply);
    }

    /// Every request whose path starts with `path_prefix` gets the next of `replies`, in
    /// turn, for as long as the fake runs (after any replies [`push`](Self::push)ed).
    pub fn always(&self, path_prefix: &str, replies: Vec<Reply>) {
        assert!(!replies.is_empty(), "always: give at least one reply");
        self.state
            .lock()
            .unwrap()
            .rules
            .insert(path_prefix.to_string(), (replies, 0));
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                v.to_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = Recorded {
        method,
        path: path.clone(),
        query,
        headers,
        body,
        at: Instant::now(),
    };
    let scripted = {
        let mut s = state.lock().unwrap();
        s.requests.push(recorded.clone());
        s.counter += 1;
        let key = s
            .script
            .keys()
            .filter(|k| path.starts_with(k.as_str()))
            .max_by_key(|k| k.len())
            .cloned();
        let scripted = key.and_then(|k| s.script.get_mut(&k).and_then(VecDeque::pop_front));
        scripted.or_else(|| {
            let key = s
                .rules
                .keys()
                .filter(|k| path.starts_with(k.as_str()))
                .max_by_key(|k| k.len())
                .cloned()?;
            let (replies, next) = s.rules.get_mut(&key)?;
            let reply = replies[*next % replies.len()].clone();
            *next += 1;
            Some(reply)
        })
    };
    match scripted {
        Some(Reply::Reset) => Err(Dropped),
        Some(Reply::Status {
            status,
            headers,
            body,
        }) => {
            let mut r = Response::builder().status(status);
            for (n, v) in headers {
                r = r.header(n, v);
            }
            Ok(r.body(Full::new(body)).unwrap())
        }
        Some(Reply::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(normal_answer(&state, &recorded))
        }
        None => Ok(normal_answer(&state, &recorded)),
    }
}

fn json_response(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// What the real provider answers to a good request.
fn normal_answer(state: &Arc<Mutex<State>>, r: &Recorded) -> Response<Full<Bytes>> {
    let n = state.lock().unwrap().counter;
    let path = r.path.as_str();
    if path.starts_with("/v3/") && path.ends_with("/messages") {
        return json_response(
            200,
            json!({"id": format!("<20261126.{n}@mg.example.com>"), "message": "Queued. Thank you."}),
        );
    }
    if path == "/v3/mail/send" {
        return Response::builder()
            .status(202)
            .header("x-message-id", format!("sg-message-{n}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    if path == "/v1/accounts" || path == "/v1/account_links" {
        // Stripe replays the first answer given to an idempotency key
        let key = r.header("idempotency-key").map(String::from);
        if let Some(key) = &key
            && let Some((status, body)) = state.lock().unwrap().idempotent.get(key).cloned()
        {
            return Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .header("idempotent-replayed", "true")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
        }
        let now = chrono::Utc::now().timestamp();
        let body = if path == "/v1/accounts" {
            json!({"id": format!("acct_fake{n}"), "object": "account", "type": "express"})
        } else {
            let account = r
                .form()
                .into_iter()
                .find(|(k, _)| k == "account")
                .map(|(_, v)| v)
                .unwrap_or_default();
            json!({"object": "account_link", "created": now, "expires_at": now + 300,
                   "url": format!("https://connect.stripe.com/setup/e/{account}/link{n}")})
        };
        if let Some(key) = key {
            state
                .lock()
                .unwrap()
                .idempotent
                .insert(key, (200, body.to_string()));
        }
        return json_response(200, body);
    }
    if path == "/batch/" {
        // PostHog refuses a whole batch for one event it cannot take; here, one whose
        // properties say `"refuse_me": true`
        let refused = r.json()["batch"]
            .as_array()
            .is_some_and(|b| b.iter().any(|e| e["properties"]["refuse_me"] == true));
        if refused {
            return json_response(
                400,
                json!({"type": "validation_error", "code": "invalid_payload", "detail": "invalid event"}),
            );
        }
        return json_response(200, json!({"status": 1}));
    }
    json_response(404, json!({"error": "not found"}))
}
