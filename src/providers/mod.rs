//! One HTTP client per provider: building requests and classifying answers, nothing else.
//!
//! A provider module turns a typed request into an HTTP call and an HTTP answer into
//! success or a classified [`ErrorClass`](crate::error_class::ErrorClass). It must never touch the queue, a job row or
//! SQL: the retry decision from a class is the runtime's, the storage is `queue/`'s.

pub mod egress;
pub mod email;
pub mod http;
pub mod keys;
pub mod mailgun;
pub mod oauth;
pub mod posthog;
pub mod sendgrid;
pub mod stripe;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};

/// How long a resolved key is reused before the file or variable is read again (so a
/// rotated key file is picked up without a restart).
const SECRET_CACHE: Duration = Duration::from_secs(30);

/// A provider secret named in the configuration (`"env:NAME"` / `"file:PATH"`), read when
/// a call needs it. A missing or unreadable secret is a `configuration` error naming the
/// setting, never the value.
#[derive(Debug)]
pub struct SecretSource {
    key: &'static str,
    reference: Option<crate::config::SecretRef>,
    cached: Mutex<Option<(Instant, SecretString)>>,
}

impl SecretSource {
    /// `key` is the setting's name (`providers.mailgun.api_key`) for error messages.
    pub fn new(key: &'static str, reference: Option<crate::config::SecretRef>) -> Self {
        Self {
            key,
            reference,
            cached: Mutex::new(None),
        }
    }

    /// The secret, from the cache when fresh.
    pub fn get(&self) -> Result<SecretString, http::CallError> {
        let Some(reference) = &self.reference else {
            return Err(http::configuration_error(format!(
                "{} is not configured",
                self.key
            )));
        };
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, secret)) = cached.as_ref()
            && at.elapsed() < SECRET_CACHE
        {
            return Ok(secret.clone());
        }
        let secret = reference
            .resolve()
            .map_err(|e| http::configuration_error(e.to_string()))?;
        *cached = Some((Instant::now(), secret.clone()));
        Ok(secret)
    }
}

/// The API root: the configured URL or the provider's, without a trailing slash.
/// `GET url` with `key` as a bearer token (the health checks of bearer-key providers).
pub fn bearer_get(
    client: &reqwest::Client,
    url: String,
    key: &SecretString,
) -> reqwest::RequestBuilder {
    client.get(url).bearer_auth(key.expose_secret())
}

pub fn base_url(configured: Option<&String>, default: &str) -> String {
    configured
        .map_or(default, String::as_str)
        .trim_end_matches('/')
        .to_string()
}

/// `message` with every occurrence of `secret` masked: provider error texts sometimes
/// quote the credential they refused.
pub fn redact(message: &str, secret: &SecretString) -> String {
    let s = secret.expose_secret();
    if s.len() < 4 {
        return message.to_string();
    }
    message.replace(s, "***")
}
