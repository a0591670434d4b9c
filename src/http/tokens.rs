//! The shim's bearer tokens: who calls `/v1/jobs`, and what it may enqueue and read.
//!
//! A token from `[http] api_tokens` may use every public kind for any tenant; a named
//! token (`[http.tokens.NAME]`) only the kinds it lists (internal ones included when
//! listed) and, when it names a tenant, only that tenant's jobs. Tokens are compared in
//! constant time, each against every configured token. A token shorter than
//! [`MIN_TOKEN_LEN`] is refused at start.
//!
//! Must never log, echo or store a token; the holder is named `api:NAME` instead.

use std::collections::HashSet;

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::{ApiError, EnqueueCheck, HttpError};
use crate::config::{Config, SecretRef};
use crate::queue::NewJob;

/// Shortest token accepted, in characters: 32 random bytes in base64 (`openssl rand
/// -base64 32` prints 44).
pub const MIN_TOKEN_LEN: usize = 43;

/// The 401 of `/v1/jobs` when no token is configured.
pub const NO_API_TOKEN: &str = "no API token is configured, so /v1/jobs accepts no request: set \
    [http] api_tokens = [\"env:NAME\"] (or a [http.tokens.NAME] table) and restart";

/// Whether `given` is `expected`, compared in constant time (for equal lengths).
pub fn token_matches(expected: &SecretString, given: &[u8]) -> bool {
    let expected = expected.expose_secret().as_bytes();
    expected.len() == given.len() && bool::from(expected.ct_eq(given))
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes)
}

/// One accepted token and its scope.
pub struct ApiToken {
    /// `api_tokens[N]` or the name of its `[http.tokens.NAME]` table.
    pub name: String,
    secret: SecretString,
    /// `None`: every public kind.
    kinds: Option<HashSet<String>>,
    tenant: Option<uuid::Uuid>,
}

/// Every token the shim accepts.
pub struct Tokens(Vec<ApiToken>);

impl Tokens {
    /// Resolves the tokens of `config`, refusing short ones and scopes naming unknown kinds.
    pub fn from_config(config: &Config, kinds: &dyn EnqueueCheck) -> Result<Self, HttpError> {
        let mut tokens = Vec::new();
        for (n, r) in config.http.api_tokens.iter().enumerate() {
            tokens.push(ApiToken {
                name: format!("api_tokens[{n}]"),
                secret: resolve(r)?,
                kinds: None,
                tenant: None,
            });
        }
        for (name, t) in &config.http.tokens {
            let secret = t
                .secret
                .as_ref()
                .ok_or_else(|| HttpError::Key(format!("http.tokens.{name}.secret is missing")))?;
            if let Some(unknown) = t
                .kinds
                .iter()
                .flatten()
                .find(|k| kinds.internal(k).is_none())
            {
                return Err(HttpError::Key(format!(
                    "http.tokens.{name}.kinds: {unknown:?} is not a job kind"
                )));
            }
            tokens.push(ApiToken {
                name: name.clone(),
                secret: resolve(secret)?,
                kinds: t.kinds.as_ref().map(|k| k.iter().cloned().collect()),
                tenant: t.tenant,
            });
        }
        Ok(Self(tokens))
    }

    /// The request's token, or the 401 to answer: one that says so when no token is
    /// configured at all (the first thing a new user meets).
    pub fn require(&self, headers: &HeaderMap) -> Result<&ApiToken, ApiError> {
        if self.0.is_empty() {
            return Err(ApiError::NoTokenConfigured(NO_API_TOKEN));
        }
        self.authenticate(headers).ok_or(ApiError::Unauthorized)
    }

    /// Whether no token is configured (`/v1/jobs` then refuses everyone).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The token the request's `Authorization: Bearer` header carries, if it is one of
    /// ours. Every configured token is compared, in constant time each.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&ApiToken> {
        let given = bearer(headers)?;
        let mut found = None;
        for token in &self.0 {
            if token_matches(&token.secret, given) {
                found = Some(token);
            }
        }
        found
    }
}

/// Resolves a token's secret, refusing one shorter than [`MIN_TOKEN_LEN`] (the error names
/// its key).
pub fn resolve(r: &SecretRef) -> Result<SecretString, HttpError> {
    let secret = r.resolve()?;
    let len = secret.expose_secret().chars().count();
    if len < MIN_TOKEN_LEN {
        return Err(HttpError::Key(format!(
            "{}: the token is {len} characters; give at least {MIN_TOKEN_LEN} (32 random bytes \
             in base64: openssl rand -base64 32)",
            r.key()
        )));
    }
    Ok(secret)
}

impl ApiToken {
    /// The actor the audit log and the logs record for this token's requests.
    pub fn actor(&self) -> String {
        format!("api:{}", self.name)
    }

    /// Whether this token may enqueue or read jobs of `kind` (`internal` as the catalog
    /// says).
    fn may_use(&self, kind: &str, internal: bool) -> bool {
        match &self.kinds {
            Some(kinds) => kinds.contains(kind),
            None => !internal,
        }
    }

    /// Whether a job of `kind` for `tenant` is this token's to read.
    pub fn may_read(
        &self,
        kinds: &dyn EnqueueCheck,
        kind: &str,
        tenant: Option<uuid::Uuid>,
    ) -> bool {
        let internal = kinds.internal(kind).unwrap_or(true);
        self.may_use(kind, internal) && self.tenant.is_none_or(|t| tenant == Some(t))
    }

    /// Brings `job` into this token's scope: its kind must be the token's (403), its unique
    /// key not reserved (422), its tenant the token's (403; a job without one gets it).
    pub fn scope(&self, kinds: &dyn EnqueueCheck, job: &mut NewJob) -> Result<(), ApiError> {
        if let Some(internal) = kinds.internal(&job.kind)
            && !self.may_use(&job.kind, internal)
        {
            return Err(ApiError::Forbidden(format!(
                "this token may not enqueue {:?}{}",
                job.kind,
                if internal {
                    " (an internal kind: only a token that names it in http.tokens.NAME.kinds)"
                } else {
                    ""
                }
            )));
        }
        job.check_caller_key().map_err(ApiError::Invalid)?;
        if let Some(tenant) = self.tenant {
            match job.tenant_id {
                None => job.tenant_id = Some(tenant),
                Some(t) if t == tenant => {}
                Some(_) => {
                    return Err(ApiError::Forbidden(format!(
                        "this token enqueues for tenant {tenant} only"
                    )));
                }
            }
        }
        Ok(())
    }
}
