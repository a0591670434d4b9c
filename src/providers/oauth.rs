//! OAuth 2.0 providers: the built-in Google, Microsoft and HubSpot endpoints, the
//! `[oauth.providers.NAME]` overrides and additions, and the three calls a connection
//! needs: the authorization URL (PKCE S256), the token endpoint (code exchange and refresh,
//! client authenticated by HTTP Basic or in the body) and userinfo.
//!
//! Token endpoint answers are classified here: only `invalid_grant` means the grant is
//! gone and a new authorization is needed ([`TokenError::Reauthorize`]); `invalid_client`
//! and `unauthorized_client` refuse *our* client (a mistyped secret, a disabled app): a
//! `configuration` error, retried, which no tenant can fix by consenting again;
//! 5xx, 429, `temporarily_unavailable`, `server_error` and network errors are worth a retry;
//! anything else is a permanent error. Must never touch the queue, and never put a token,
//! code, verifier or client secret into an error message (every message is scrubbed).
//! Text taken from an answer (error codes and descriptions, account ids, emails, scopes)
//! is cleaned and capped with [`crate::text`] before it leaves this module, and answers
//! are read up to [`MAX_TOKEN_ANSWER`] / [`MAX_USERINFO_ANSWER`] bytes: a longer one is
//! an error, never buffered.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::{CallError, exchange, parse_retry_after};
use crate::config::{ClientAuth, Config, ConfigError, OAuthProviderConfig, SecretRef};
use crate::error_class::ErrorClass;
use crate::secrets::scrub;
use crate::text;

/// Longest token endpoint answer read, in bytes (tokens, an expiry and scopes: a few KiB;
/// a longer answer is refused, never buffered).
pub const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Longest userinfo answer read, in bytes (an account's id, email and a few claims).
pub const MAX_USERINFO_ANSWER: usize = 64 * 1024;

/// Longest account id kept from userinfo (it is part of a unique key), in bytes; a longer
/// one is refused rather than cut, since a cut id could name another account.
const MAX_ACCOUNT_ID: usize = 255;

/// Longest email address kept from userinfo (RFC 5321: 254), in bytes.
const MAX_EMAIL: usize = 320;

/// Longest scope kept from a token answer, and most scopes kept.
const MAX_SCOPE: usize = 256;
const MAX_SCOPES: usize = 100;

/// One provider, with its endpoints resolved.
#[derive(Debug, Clone)]
pub struct Provider {
    pub name: String,
    pub client_id: String,
    client_secret_ref: SecretRef,
    pub auth_url: reqwest::Url,
    pub token_url: reqwest::Url,
    pub userinfo_url: Option<String>,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub auth_params: BTreeMap<String, String>,
}

struct Builtin {
    name: &'static str,
    auth_url: &'static str,
    token_url: &'static str,
    userinfo_url: &'static str,
    scopes: &'static [&'static str],
    client_auth: ClientAuth,
    auth_params: &'static [(&'static str, &'static str)],
}

/// The providers the seed names. Google only returns a refresh token with
/// `access_type=offline` (and again on re-consent with `prompt=consent`); Microsoft needs
/// the `offline_access` scope; HubSpot authenticates the client in the body and names the
/// account through its token info endpoint.
const BUILTIN: [Builtin; 3] = [
    Builtin {
        name: "google",
        auth_url: "https://accounts.google.com/o/oauth2/v2/auth",
        token_url: "https://oauth2.googleapis.com/token",
        userinfo_url: "https://openidconnect.googleapis.com/v1/userinfo",
        scopes: &[
            "openid",
            "email",
            "https://www.googleapis.com/auth/gmail.send",
        ],
        client_auth: ClientAuth::Body,
        auth_params: &[("access_type", "offline"), ("prompt", "consent")],
    },
    Builtin {
        name: "microsoft",
        auth_url: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        token_url: "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        userinfo_url: "https://graph.microsoft.com/oidc/userinfo",
        scopes: &[
            "openid",
            "email",
            "offline_access",
            "https://graph.microsoft.com/Mail.Send",
        ],
        client_auth: ClientAuth::Body,
        auth_params: &[],
    },
    Builtin {
        name: "hubspot",
        auth_url: "https://app.hubspot.com/oauth/authorize",
        token_url: "https://api.hubapi.com/oauth/v1/token",
        userinfo_url: "https://api.hubapi.com/oauth/v1/access-tokens/{access_token}",
        scopes: &[
            "oauth",
            "crm.objects.contacts.read",
            "crm.objects.contacts.write",
        ],
        client_auth: ClientAuth::Body,
        auth_params: &[],
    },
];

/// Names of the built-in providers.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|b| b.name).collect()
}

/// The configured providers (those with client credentials), by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

impl Providers {
    /// The providers of `config`: a built-in one is usable once `[oauth.providers.NAME]`
    /// gives its `client_id` and `client_secret`; another one needs its URLs and scopes too.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in &config.oauth.providers {
            let p = Self::resolve(name, cfg)?;
            by_name.insert(name.clone(), Arc::new(p));
        }
        Ok(Self { by_name })
    }

    fn resolve(name: &str, cfg: &OAuthProviderConfig) -> Result<Provider, ConfigError> {
        let key = |field: &str| format!("oauth.providers.{name}.{field}");
        let missing = |field: &str| ConfigError::Invalid(format!("{} is required", key(field)));
        let builtin = BUILTIN.iter().find(|b| b.name == name);
        let url = |field: &str, value: Option<&String>, default: Option<&str>| {
            let text = value
                .map(String::as_str)
                .or(default)
                .ok_or_else(|| missing(field))?;
            let url = reqwest::Url::parse(text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", key(field))))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid(format!(
                    "{}: must be an http(s) URL",
                    key(field)
                )));
            }
            Ok(url)
        };
        let client_id = cfg.client_id.clone().ok_or_else(|| missing("client_id"))?;
        let client_secret_ref = cfg
            .client_secret
            .clone()
            .ok_or_else(|| missing("client_secret"))?;
        let scopes = match (&cfg.scopes, builtin) {
            (Some(s), _) => s.clone(),
            (None, Some(b)) => b.scopes.iter().map(|s| s.to_string()).collect(),
            (None, None) => return Err(missing("scopes")),
        };
        Ok(Provider {
            name: name.into(),
            client_id,
            client_secret_ref,
            auth_url: url(
                "auth_url",
                cfg.auth_url.as_ref(),
                builtin.map(|b| b.auth_url),
            )?,
            token_url: url(
                "token_url",
                cfg.token_url.as_ref(),
                builtin.map(|b| b.token_url),
            )?,
            userinfo_url: cfg
                .userinfo_url
                .clone()
                .or_else(|| builtin.map(|b| b.userinfo_url.to_string())),
            scopes,
            client_auth: cfg
                .client_auth
                .or(builtin.map(|b| b.client_auth))
                .unwrap_or(ClientAuth::Basic),
            auth_params: cfg.auth_params.clone().unwrap_or_else(|| {
                builtin
                    .map(|b| {
                        b.auth_params
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                    .unwrap_or_default()
            }),
        })
    }

    /// The provider `name`, or an error that says how to configure it.
    pub fn get(&self, name: &str) -> Result<Arc<Provider>, ConfigError> {
        self.by_name.get(name).cloned().ok_or_else(|| {
            ConfigError::Invalid(if builtin_names().contains(&name) {
                format!(
                    "oauth provider {name:?} is not configured: set [oauth.providers.{name}] client_id and client_secret"
                )
            } else {
                format!(
                    "unknown oauth provider {name:?} (built in: {}; add others under [oauth.providers.NAME])",
                    builtin_names().join(", ")
                )
            })
        })
    }

    /// Resolves every client secret (at daemon start, so a missing one stops it early).
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        self.by_name
            .values()
            .try_for_each(|p| p.client_secret().map(|_| ()))
    }
}

impl Provider {
    /// The client secret, read from its `env:` / `file:` reference.
    pub fn client_secret(&self) -> Result<SecretString, ConfigError> {
        self.client_secret_ref.resolve()
    }

    /// The URL to send the user to: code flow with `state` and a PKCE S256 `challenge`.
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &SecretString,
        challenge: &str,
    ) -> reqwest::Url {
        let mut url = self.auth_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &self.scopes.join(" "))
                .append_pair("state", state.expose_secret())
                .append_pair("code_challenge", challenge)
                .append_pair("code_challenge_method", "S256");
            for (k, v) in &self.auth_params {
                q.append_pair(k, v);
            }
        }
        url
    }
}

/// A token endpoint's successful answer.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: SecretString,
    /// A new refresh token, when the provider issued (or rotated) one.
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted scopes, when the answer lists them.
    pub scopes: Option<Vec<String>>,
}

/// A failed token endpoint call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// `invalid_grant`: the grant was revoked or expired; retrying cannot help, the tenant
    /// must authorize again.
    Reauthorize { message: String },
    /// Anything else, classified (retryable or not).
    Call(CallError),
}

impl TokenError {
    /// The message, free of secrets.
    pub fn message(&self) -> &str {
        match self {
            TokenError::Reauthorize { message } => message,
            TokenError::Call(c) => &c.message,
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Exchanges an authorization code (with its PKCE verifier) for tokens.
pub async fn exchange_code(
    client: &reqwest::Client,
    provider: &Provider,
    code: &SecretString,
    redirect_uri: &str,
    verifier: &SecretString,
) -> Result<Tokens, TokenError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.expose_secret()),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier.expose_secret()),
    ];
    token_call(client, provider, &form, &[code, verifier]).await
}

/// Refreshes: `grant_type=refresh_token` with the provider's client authentication.
pub async fn refresh(
    client: &reqwest::Client,
    provider: &Provider,
    refresh_token: &SecretString,
) -> Result<Tokens, TokenError> {
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
    ];
    token_call(client, provider, &form, &[refresh_token]).await
}

fn config_error(message: String) -> TokenError {
    TokenError::Call(CallError {
        class: ErrorClass::Configuration,
        retryable: false,
        message,
        status: None,
        not_before: None,
    })
}

/// One token endpoint call with `form` (borrowed from the secrets it carries: no copy of
/// a token, code or secret is left behind in our memory).
async fn token_call(
    client: &reqwest::Client,
    provider: &Provider,
    form: &[(&'static str, &str)],
    sent: &[&SecretString],
) -> Result<Tokens, TokenError> {
    let secret = provider
        .client_secret()
        .map_err(|e| config_error(e.to_string()))?;
    let mut request = client
        .post(provider.token_url.clone())
        .header(reqwest::header::ACCEPT, "application/json");
    let mut form = form.to_vec();
    match provider.client_auth {
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: form-urlencode id and secret before Basic
            let encoded_secret = zeroize::Zeroizing::new(url_encode(secret.expose_secret()));
            request = request.basic_auth(
                url_encode(&provider.client_id),
                Some(encoded_secret.as_str()),
            );
        }
        ClientAuth::Body => {
            form.push(("client_id", &provider.client_id));
            form.push(("client_secret", secret.expose_secret()));
        }
    }
    let mut secrets: Vec<&SecretString> = sent.to_vec();
    secrets.push(&secret);
    let answer = exchange(request.form(&form), MAX_TOKEN_ANSWER)
        .await
        .map_err(|mut c| {
            c.message = scrub(&format!("token endpoint: {}", c.message), &secrets);
            TokenError::Call(c)
        })?;
    if (200..300).contains(&answer.status) {
        let body = answer
            .whole_body("the token endpoint")
            .map_err(|c| TokenError::Call(c.clone()))?;
        if let Ok(tokens_answer) = serde_json::from_slice::<TokenAnswer>(body) {
            return Ok(tokens(tokens_answer, Utc::now()));
        }
    }
    let retry_after = answer
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok());
    Err(classify_token_error(
        answer.status,
        &answer.body,
        retry_after,
        Utc::now(),
        &secrets,
    ))
}

fn tokens(a: TokenAnswer, now: DateTime<Utc>) -> Tokens {
    let expires_in = a.expires_in.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    });
    Tokens {
        access_token: SecretString::from(a.access_token),
        refresh_token: a
            .refresh_token
            .filter(|t| !t.is_empty())
            .map(SecretString::from),
        expires_at: expires_in
            .map(|s| now + chrono::Duration::seconds(s.clamp(0, 10 * 365 * 86_400))),
        scopes: a.scope.map(|s| {
            s.split([' ', ','])
                .filter(|s| !s.is_empty())
                .take(MAX_SCOPES)
                .map(|s| text::clean(s, MAX_SCOPE))
                .collect()
        }),
    }
}

/// Classifies a token endpoint answer that carried no tokens.
pub fn classify_token_error(
    status: u16,
    body: &[u8],
    retry_after: Option<&str>,
    now: DateTime<Utc>,
    secrets: &[&SecretString],
) -> TokenError {
    let parsed = serde_json::from_slice::<ErrorAnswer>(body).ok();
    let code = parsed.as_ref().map(|e| e.error.as_str());
    let description = parsed
        .as_ref()
        .and_then(|e| e.error_description.as_deref())
        .map(|d| format!(": {d}"))
        .unwrap_or_default();
    // scrubbed whole, then cut: a cut first could leave part of a secret behind
    let message = scrub(
        &match code {
            Some(code) => format!("token endpoint answered HTTP {status} {code}{description}"),
            None => format!("token endpoint answered HTTP {status}"),
        },
        secrets,
    );
    let message = text::clean(&message, 300);
    let call = |class: ErrorClass, retryable: bool| {
        TokenError::Call(CallError {
            class,
            retryable,
            message: message.clone(),
            status: Some(status),
            not_before: if retryable {
                retry_after.and_then(|v| parse_retry_after(v, now))
            } else {
                None
            },
        })
    };
    match code {
        Some("invalid_grant") => TokenError::Reauthorize {
            message: message.clone(),
        },
        // our client is refused: the operators' to fix, while every grant stays valid
        Some("invalid_client") | Some("unauthorized_client") => {
            call(ErrorClass::Configuration, true)
        }
        Some("temporarily_unavailable") | Some("server_error") => call(ErrorClass::Api, true),
        Some("slow_down") => call(ErrorClass::RateLimit, true),
        _ => match status {
            429 => call(ErrorClass::RateLimit, true),
            408 => call(ErrorClass::Timeout, true),
            500..=599 => call(ErrorClass::Api, true),
            // a 2xx without tokens: the provider misbehaved, try again later
            200..=299 => call(ErrorClass::Api, true),
            401 => call(ErrorClass::Authentication, false),
            403 => call(ErrorClass::Authorization, false),
            _ => call(ErrorClass::Data, false),
        },
    }
}

/// The account a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: Option<String>,
}

/// Fetches the account behind `access_token` from the provider's userinfo endpoint:
/// the id from `sub`, `id`, `user_id` or `oid`, the email from `email`, `user` or `mail`.
/// `Ok(None)`: the provider has no userinfo endpoint.
pub async fn userinfo(
    client: &reqwest::Client,
    provider: &Provider,
    access_token: &SecretString,
) -> Result<Option<Account>, CallError> {
    let Some(template) = &provider.userinfo_url else {
        return Ok(None);
    };
    let secrets = [access_token];
    let fail = |class, retryable, message: String, status| CallError {
        class,
        retryable,
        message: scrub(&message, &secrets),
        status,
        not_before: None,
    };
    let request = userinfo_request(client, provider, template, access_token)
        .map_err(|message| fail(ErrorClass::Configuration, false, message, None))?;
    let answer = exchange(request, MAX_USERINFO_ANSWER).await.map_err(|c| {
        fail(
            c.class,
            c.retryable,
            format!("userinfo: {}", c.message),
            c.status,
        )
    })?;
    let status = answer.status;
    if !(200..300).contains(&status) {
        let (class, retryable) = super::http::classify_status(status);
        return Err(fail(
            class,
            retryable,
            format!("userinfo answered HTTP {status}"),
            Some(status),
        ));
    }
    let body = answer
        .whole_body("userinfo")
        .map_err(|c| fail(c.class, c.retryable, c.message, c.status))?;
    let info: serde_json::Value = serde_json::from_slice(body).map_err(|_| {
        fail(
            ErrorClass::Api,
            true,
            "userinfo answered something that is not JSON".into(),
            Some(status),
        )
    })?;
    account_of(&info).map(Some).ok_or_else(|| {
        fail(
            ErrorClass::Data,
            false,
            format!(
                "userinfo names no account (no sub, id, user_id or oid of at most {MAX_ACCOUNT_ID} bytes)"
            ),
            Some(status),
        )
    })
}

/// The userinfo request: the token in the URL where the template asks for it, else as a
/// bearer token.
fn userinfo_request(
    client: &reqwest::Client,
    provider: &Provider,
    template: &str,
    access_token: &SecretString,
) -> Result<reqwest::RequestBuilder, String> {
    let in_path = template.contains("{access_token}");
    let url = template.replace("{access_token}", access_token.expose_secret());
    let url = reqwest::Url::parse(&url).map_err(|_| {
        format!(
            "oauth.providers.{}.userinfo_url is not a URL",
            provider.name
        )
    })?;
    let request = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json");
    Ok(if in_path {
        request
    } else {
        request.bearer_auth(access_token.expose_secret())
    })
}

fn account_of(info: &serde_json::Value) -> Option<Account> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(text::clean(s, usize::MAX)),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let id = ["sub", "id", "user_id", "oid"]
        .iter()
        .find_map(|k| info.get(k).and_then(text))
        .filter(|id| id.len() <= MAX_ACCOUNT_ID)?;
    let email = ["email", "user", "mail"]
        .iter()
        .find_map(|k| info.get(k).and_then(text))
        .filter(|e| e.len() <= MAX_EMAIL);
    Some(Account { id, email })
}

fn url_encode(s: &str) -> String {
    reqwest::Url::parse_with_params("x:", [("v", s)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_string()))
        .unwrap_or_else(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn invalid_grant_means_reauthorize_and_outages_retry() {
        let c =
            |status, body: &str| classify_token_error(status, body.as_bytes(), None, now(), &[]);
        assert!(matches!(
            c(
                400,
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#
            ),
            TokenError::Reauthorize { .. }
        ));
        for refused in [
            c(401, r#"{"error":"invalid_client"}"#),
            c(400, r#"{"error":"unauthorized_client"}"#),
        ] {
            match refused {
                TokenError::Call(e) => {
                    assert!(e.retryable && e.class == ErrorClass::Configuration, "{e:?}")
                }
                other => panic!("a refused client is not a revoked grant: {other:?}"),
            }
        }
        for (status, body) in [
            (503, "<html>down</html>"),
            (500, r#"{"error":"server_error"}"#),
            (400, r#"{"error":"temporarily_unavailable"}"#),
            (429, ""),
        ] {
            match c(status, body) {
                TokenError::Call(e) => assert!(e.retryable, "{status} {body}"),
                other => panic!("{other:?}"),
            }
        }
        match c(400, r#"{"error":"invalid_scope"}"#) {
            TokenError::Call(e) => assert!(!e.retryable && e.class == ErrorClass::Data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_never_carry_what_was_sent() {
        let token = SecretString::from("1//refresh-token-value".to_string());
        let e = classify_token_error(
            400,
            br#"{"error":"invalid_grant","error_description":"bad token 1//refresh-token-value"}"#,
            None,
            now(),
            &[&token],
        );
        assert!(
            !e.message().contains("refresh-token-value"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("invalid_grant"));
    }

    #[test]
    fn error_messages_from_the_answer_are_cleaned_and_capped() {
        let body = format!(
            r#"{{"error":"server_error\u0000","error_description":"down\u0000{}"}}"#,
            "x".repeat(100_000)
        );
        let e = classify_token_error(500, body.as_bytes(), None, now(), &[]);
        assert!(!e.message().contains('\0'), "{}", e.message());
        assert!(e.message().len() <= 310, "{}", e.message().len());
        assert!(e.message().contains("server_error\u{fffd}"));
    }

    #[test]
    fn an_account_id_or_email_that_cannot_be_stored_is_cleaned_or_refused() {
        let a = account_of(&serde_json::json!({"sub": "u\u{0}1", "email": "a\u{0}@b.c"})).unwrap();
        assert_eq!(a.id, "u\u{fffd}1");
        assert_eq!(a.email.as_deref(), Some("a\u{fffd}@b.c"));
        assert_eq!(
            account_of(&serde_json::json!({"sub": "x".repeat(300)})),
            None
        );
        let a = account_of(&serde_json::json!({"sub": "u", "email": "x".repeat(400)})).unwrap();
        assert_eq!(a.email, None);
    }

    #[test]
    fn token_answers_keep_the_old_refresh_token_when_none_is_returned() {
        let a: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"a","expires_in":3600,"token_type":"Bearer"}"#)
                .unwrap();
        let t = tokens(a, now());
        assert!(t.refresh_token.is_none());
        assert_eq!(t.expires_at, Some(now() + chrono::Duration::hours(1)));
        let a: TokenAnswer = serde_json::from_str(
            r#"{"access_token":"a","refresh_token":"r2","expires_in":"60","scope":"a b"}"#,
        )
        .unwrap();
        let t = tokens(a, now());
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "r2");
        assert_eq!(t.scopes.unwrap(), vec!["a", "b"]);
    }

    #[test]
    fn builtin_providers_need_only_client_credentials_and_urls_can_be_overridden() {
        let config = Config::from_toml(
            "[oauth.providers.google]\nclient_id = \"cid\"\nclient_secret = \"env:X\"\n\
             [oauth.providers.hubspot]\nclient_id = \"h\"\nclient_secret = \"env:Y\"\ntoken_url = \"http://127.0.0.1:9/token\"\n",
            std::path::Path::new("x"),
        )
        .unwrap();
        let p = Providers::from_config(&config).unwrap();
        let g = p.get("google").unwrap();
        assert_eq!(g.token_url.as_str(), "https://oauth2.googleapis.com/token");
        assert_eq!(g.client_auth, ClientAuth::Body);
        let url = g.authorization_url(
            "https://shim.example/oauth/callback/google",
            &SecretString::from("st".to_string()),
            "ch",
        );
        let q: BTreeMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["state"], "st");
        assert_eq!(
            p.get("hubspot").unwrap().token_url.as_str(),
            "http://127.0.0.1:9/token"
        );
        let err = p.get("microsoft").unwrap_err().to_string();
        assert!(
            err.contains("[oauth.providers.microsoft] client_id"),
            "{err}"
        );
        assert!(
            p.get("dropbox")
                .unwrap_err()
                .to_string()
                .contains("unknown oauth provider")
        );
        let bad = Config::from_toml(
            "[oauth.providers.acme]\nclient_id = \"a\"\nclient_secret = \"env:Z\"\n",
            std::path::Path::new("x"),
        )
        .unwrap();
        let err = Providers::from_config(&bad).unwrap_err().to_string();
        assert_eq!(err, "oauth.providers.acme.scopes is required");
    }

    #[tokio::test]
    async fn a_token_endpoint_that_cannot_be_reached_is_a_retryable_network_error() {
        // a port nothing listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = Config::from_toml(
            &format!(
                "[oauth.providers.acme]\nclient_id = \"c\"\nclient_secret = \"env:PATH\"\n\
                 auth_url = \"http://127.0.0.1:{port}/a\"\ntoken_url = \"http://127.0.0.1:{port}/t\"\nscopes = [\"s\"]\n"
            ),
            std::path::Path::new("x"),
        )
        .unwrap();
        let p = Providers::from_config(&config)
            .unwrap()
            .get("acme")
            .unwrap();
        let token = SecretString::from("refresh-token-value".to_string());
        let client = crate::providers::http::client(std::time::Duration::from_secs(5)).unwrap();
        match refresh(&client, &p, &token).await {
            Err(TokenError::Call(e)) => {
                assert!(e.retryable, "{e:?}");
                assert_eq!(e.class, ErrorClass::Network);
                assert!(!e.message.contains("refresh-token-value"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accounts_are_named_by_the_usual_userinfo_fields() {
        let a = account_of(&serde_json::json!({"sub": "1234", "email": "a@b.c"})).unwrap();
        assert_eq!(
            a,
            Account {
                id: "1234".into(),
                email: Some("a@b.c".into())
            }
        );
        let h =
            account_of(&serde_json::json!({"user_id": 42, "user": "x@y.z", "hub_id": 7})).unwrap();
        assert_eq!(h.id, "42");
        assert!(account_of(&serde_json::json!({"name": "n"})).is_none());
    }
}
