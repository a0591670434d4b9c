//! `http.request`: one generic outbound HTTP call (customer webhooks, health checks,
//! anything without a provider module of its own).
//!
//! Payload: `{"method": "POST", "url": "https://…", "headers": {"k": "v"},
//! "body": "text" | {json}, "expect_status": 200 | [200, 204], "timeout": "10s"}`.
//! Without `expect_status` any 2xx succeeds. Failures are classified by
//! [`crate::providers::http`]: network, timeout, 408, 429 and 5xx retry (honouring
//! `Retry-After`), other answers are permanent.
//!
//! The URL is the caller's, so the call goes through the egress guard
//! ([`crate::providers::egress`]): an internal address (loopback, private, link-local,
//! metadata...) not named in `[egress] allow` is a permanent `data` error, redirects are
//! answers (a 3xx fails unless expected), and headers that would change how the request
//! travels (`Host`, hop-by-hop) are refused with the payload. Must never store or log the
//! response body or the request headers (they may carry credentials).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;

use super::{Attempt, JobContext, JobError, Kind, KindPolicy};
use crate::error_class::ErrorClass;
use crate::providers::egress::{self, GuardedClient};
use crate::providers::http::{error_from_answer, error_from_transport};

/// Headers a caller may not set: `Host` (it would aim the request at another virtual host
/// than the URL names) and the hop-by-hop headers, which belong to the connection.
const REFUSED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
];

/// The `http.request` kind: the request to make.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    #[serde(default = "default_method")]
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<serde_json::Value>,
    #[serde(default)]
    expect_status: Option<ExpectStatus>,
    /// A duration such as `10s` (default 30s).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    timeout: Option<Duration>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum ExpectStatus {
    One(u16),
    Many(Vec<u16>),
}

fn default_method() -> String {
    "GET".into()
}

struct Prepared {
    /// A JSON body goes with `Content-Type: application/json` unless a header sets one.
    json_content_type: bool,
    method: reqwest::Method,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body: Option<(Vec<u8>, bool)>,
    expect: Option<Vec<u16>>,
    timeout: Option<Duration>,
}

fn prepare(p: &HttpRequest) -> Result<Prepared, String> {
    let method = reqwest::Method::from_bytes(p.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method {:?} is not an HTTP method", p.method))?;
    let url = reqwest::Url::parse(&p.url).map_err(|e| format!("url: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "url: scheme {:?} is not http or https",
            url.scheme()
        ));
    }
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &p.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
        if REFUSED_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "headers: {name} may not be set (it belongs to the connection, not the request)"
            ));
        }
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of {name} is not a valid header value"))?;
        headers.insert(name, value);
    }
    let body = match &p.body {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some((text.clone().into_bytes(), false)),
        Some(json) => Some((serde_json::to_vec(json).map_err(|e| e.to_string())?, true)),
    };
    let expect = p.expect_status.as_ref().map(|e| match e {
        ExpectStatus::One(s) => vec![*s],
        ExpectStatus::Many(v) => v.clone(),
    });
    if let Some(expect) = &expect
        && (expect.is_empty() || expect.iter().any(|s| !(100..=599).contains(s)))
    {
        return Err("expect_status: give HTTP statuses between 100 and 599".into());
    }
    if p.timeout.is_some_and(|t| t.is_zero()) {
        return Err("timeout must be > 0".into());
    }
    let json_content_type = !p
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type"));
    Ok(Prepared {
        json_content_type,
        method,
        url,
        headers,
        body,
        expect,
        timeout: p.timeout,
    })
}

/// What `http.request` needs: the egress-guarded client, and the metrics its calls count
/// into (provider `http`).
pub struct HttpDeps {
    pub guarded: GuardedClient,
    pub outbound: std::sync::Arc<super::outbound::Outbound>,
}

/// The provider name `http.request` calls are counted under.
pub const PROVIDER: &str = "http";

impl Kind for HttpRequest {
    const KIND: &'static str = "http.request";
    type Deps = HttpDeps;

    fn policy() -> KindPolicy {
        KindPolicy {
            timeout: Duration::from_secs(60),
            ..KindPolicy::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        prepare(self).map(drop)
    }

    async fn run(self, ctx: &JobContext, deps: &HttpDeps) -> Attempt {
        let guarded = &deps.guarded;
        let req = prepare(&self).map_err(JobError::bad_payload)?;
        guarded.policy.check_url(&req.url).map_err(refused)?;
        let mut builder = guarded
            .client
            .request(req.method, req.url)
            .headers(req.headers)
            .timeout(req.timeout.unwrap_or(ctx.timeout).min(ctx.call_timeout()));
        if let Some((body, json)) = req.body {
            if json && req.json_content_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            builder = builder.body(body);
        }
        let started = std::time::Instant::now();
        let sent = builder.send().await;
        let answer = match &sent {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) if egress::refusal(e).is_some() => Err(ErrorClass::Data),
            Err(e) => Err(error_from_transport(e).class),
        };
        deps.outbound
            .record_answer(PROVIDER, Self::KIND, answer, started.elapsed());
        let response = sent.map_err(|e| match egress::refusal(&e) {
            Some(r) => refused(r.clone()),
            None => JobError::from(error_from_transport(&e)),
        })?;
        let status = response.status().as_u16();
        let expected = match &req.expect {
            Some(list) => list.contains(&status),
            None => response.status().is_success(),
        };
        if expected {
            return Ok(Some(serde_json::json!({ "status": status })));
        }
        if (300..400).contains(&status) {
            return Err(JobError::Fatal {
                class: ErrorClass::Data,
                message: format!(
                    "HTTP {status}: a redirect, and redirects are not followed (call the URL it \
                     names, or list {status} in expect_status)"
                ),
                status: Some(status),
            });
        }
        if (200..300).contains(&status) {
            return Err(JobError::Fatal {
                class: ErrorClass::Data,
                message: format!("HTTP {status} is not among the expected statuses"),
                status: Some(status),
            });
        }
        Err(error_from_answer(status, response.headers(), None, Utc::now()).into())
    }
}

/// A call the egress guard refused: permanent, whatever the attempt.
fn refused(r: egress::Refused) -> JobError {
    JobError::Fatal {
        class: ErrorClass::Data,
        message: r.to_string(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::decode;
    use serde_json::json;

    #[test]
    fn payloads_are_checked_with_clear_messages() {
        let prepare = |p| decode::<HttpRequest>(&p).and_then(|p| super::prepare(&p));
        assert!(prepare(json!({"url": "https://example.com/hook"})).is_ok());
        let err = |p| prepare(p).err().unwrap();
        assert!(err(json!({})).contains("missing field `url`"));
        assert!(err(json!({"url": "ftp://x"})).contains("scheme"));
        assert!(err(json!({"url": "https://x", "method": "G E T"})).contains("method"));
        assert!(err(json!({"url": "https://x", "expect_status": 42})).contains("expect_status"));
        assert!(err(json!({"url": "https://x", "bogus": 1})).contains("unknown field"));
        assert!(err(json!({"url": "https://x", "headers": {"a b": "c"}})).contains("header"));
        for refused in ["Host", "connection", "Transfer-Encoding", "Upgrade", "TE"] {
            let e = err(json!({"url": "https://x", "headers": {refused: "x"}}));
            assert!(e.contains("may not be set"), "{refused}: {e}");
        }
        assert!(prepare(json!({"url": "https://x", "headers": {"X-Hook": "1"}})).is_ok());
    }
}
