//! Provider API key hooks for rotation: a cheap authenticated call that tests a key, and,
//! where the provider has a key API, creating the next key and revoking a retired one.
//!
//! Built in: `mailgun`, `sendgrid`, `stripe` and `posthog` test calls, and SendGrid's key
//! API; `[api_keys.providers.NAME]` overrides them or describes another provider. Must
//! never touch the queue, and never put a key into an error message.
//!
//! Where the hooks can read a key's scopes (SendGrid: `GET /v3/api_keys/{id}`, or
//! `GET /v3/scopes` for a key whose id we never learnt), the next key is created with the
//! scopes of the key it replaces, and a rotation whose scopes cannot be read creates
//! nothing: a key created without them would be a full-access key.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use super::http::{Answer, CallError, exchange};
use crate::config::{ApiKeyProviderConfig, ApiKeysConfig, ConfigError};
use crate::error_class::ErrorClass;
use crate::secrets::scrub;

/// How a key is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAuth {
    /// `Authorization: Bearer KEY`.
    Bearer,
    /// HTTP Basic with this user and the key as password (Mailgun: user `api`).
    Basic(String),
    /// The key as the value of this header.
    Header(String),
}

/// One provider's key hooks.
#[derive(Debug, Clone)]
pub struct KeyHooks {
    pub provider: String,
    pub test_url: Option<String>,
    pub auth: KeyAuth,
    pub create_url: Option<String>,
    pub create_body: Option<serde_json::Value>,
    pub key_field: String,
    pub id_field: String,
    pub revoke_url: Option<String>,
    pub scopes_url: Option<String>,
    pub own_scopes_url: Option<String>,
    pub scopes_field: String,
}

fn builtin(provider: &str) -> Option<ApiKeyProviderConfig> {
    let test = |url: &str, auth: &str| ApiKeyProviderConfig {
        test_url: Some(url.into()),
        auth: Some(auth.into()),
        ..ApiKeyProviderConfig::default()
    };
    match provider {
        "mailgun" => Some(test(
            "https://api.mailgun.net/v3/domains?limit=1",
            "basic:api",
        )),
        "stripe" => Some(test("https://api.stripe.com/v1/balance", "bearer")),
        "posthog" => Some(test("https://us.posthog.com/api/users/@me/", "bearer")),
        "sendgrid" => Some(ApiKeyProviderConfig {
            create_url: Some("https://api.sendgrid.com/v3/api_keys".into()),
            create_body: Some(serde_json::json!({"name": "penguin-jobs"})),
            key_field: Some("api_key".into()),
            id_field: Some("api_key_id".into()),
            revoke_url: Some("https://api.sendgrid.com/v3/api_keys/{id}".into()),
            scopes_url: Some("https://api.sendgrid.com/v3/api_keys/{id}".into()),
            own_scopes_url: Some("https://api.sendgrid.com/v3/scopes".into()),
            ..test("https://api.sendgrid.com/v3/scopes", "bearer")
        }),
        _ => None,
    }
}

impl KeyHooks {
    /// The hooks of `provider`: the built-in ones with `[api_keys.providers.NAME]` on top.
    pub fn for_provider(config: &ApiKeysConfig, provider: &str) -> Result<Self, ConfigError> {
        let base = builtin(provider).unwrap_or_default();
        let over = config.providers.get(provider).cloned().unwrap_or_default();
        let pick = |a: Option<String>, b: Option<String>| a.or(b);
        let auth_text = pick(over.auth, base.auth).unwrap_or_else(|| "bearer".into());
        let auth = if auth_text == "bearer" {
            KeyAuth::Bearer
        } else if let Some(user) = auth_text.strip_prefix("basic:") {
            KeyAuth::Basic(user.into())
        } else if let Some(h) = auth_text.strip_prefix("header:") {
            KeyAuth::Header(h.into())
        } else {
            return Err(ConfigError::Invalid(format!(
                "api_keys.providers.{provider}.auth: {auth_text:?} is not \"bearer\", \"basic:USER\" or \"header:NAME\""
            )));
        };
        Ok(Self {
            provider: provider.into(),
            test_url: pick(over.test_url, base.test_url),
            auth,
            create_url: pick(over.create_url, base.create_url),
            create_body: over.create_body.or(base.create_body),
            key_field: pick(over.key_field, base.key_field).unwrap_or_else(|| "key".into()),
            id_field: pick(over.id_field, base.id_field).unwrap_or_else(|| "id".into()),
            revoke_url: pick(over.revoke_url, base.revoke_url),
            scopes_url: pick(over.scopes_url, base.scopes_url),
            own_scopes_url: pick(over.own_scopes_url, base.own_scopes_url),
            scopes_field: pick(over.scopes_field, base.scopes_field)
                .unwrap_or_else(|| "scopes".into()),
        })
    }

    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        key: &SecretString,
    ) -> reqwest::RequestBuilder {
        match &self.auth {
            KeyAuth::Bearer => request.bearer_auth(key.expose_secret()),
            KeyAuth::Basic(user) => request.basic_auth(user, Some(key.expose_secret())),
            KeyAuth::Header(name) => request.header(name.as_str(), key.expose_secret()),
        }
    }
}

/// Longest answer of a key call read, in bytes (a key and its id; a test call's answer
/// is read no further than this either).
const MAX_KEY_ANSWER: usize = 64 * 1024;

/// Longest provider key id kept (stored as text; SendGrid's are 22 bytes).
const MAX_KEY_ID: usize = 255;

/// Most scopes a key may carry (SendGrid knows a few hundred).
const MAX_SCOPES: usize = 2000;

/// The key a rotation replaces, as the provider's key API knows it.
#[derive(Debug, Clone, Copy)]
pub struct Replaced<'a> {
    /// The active key: it authenticates the calls.
    pub key: &'a SecretString,
    /// Its id at the provider, when its key API created it.
    pub provider_key_id: Option<&'a str>,
    /// Its version here, named in the new key's name.
    pub version: i32,
}

/// Sends a key call authenticated with `key` and reads its answer (at most
/// [`MAX_KEY_ANSWER`] bytes); `what` names the call in error messages, which never carry
/// `key`.
async fn call(
    what: &str,
    request: reqwest::RequestBuilder,
    key: &SecretString,
) -> Result<Answer, CallError> {
    exchange(request, MAX_KEY_ANSWER).await.map_err(|mut e| {
        e.message = scrub(&format!("{what}: {}", e.message), &[key]);
        e
    })
}

/// `answer` if it is a success; else its classified error, with the provider's own words
/// when it gave some (`message`, `error`, `errors[0].message`), never `key`.
fn expect_success(what: &str, answer: Answer, key: &SecretString) -> Result<Answer, CallError> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    let mut e = answer.error(key, provider_message);
    e.message = format!("{what}: {}", e.message);
    Err(e)
}

fn provider_message(answer: &serde_json::Value) -> Option<String> {
    ["/message", "/error", "/error/message", "/errors/0/message"]
        .iter()
        .find_map(|p| answer.pointer(p).and_then(|m| m.as_str()))
        .map(String::from)
}

/// A successful answer we cannot use: not retried, since a key may have been created.
fn unusable(what: &str, message: &str) -> CallError {
    CallError {
        class: ErrorClass::Api,
        retryable: false,
        message: format!("{what}: {message}"),
        status: None,
        not_before: None,
    }
}

/// The JSON of a successful answer; a body cut at [`MAX_KEY_ANSWER`] or not JSON is
/// [`unusable`].
fn answer_json(what: &str, answer: &Answer) -> Result<serde_json::Value, CallError> {
    let body = answer
        .whole_body(what)
        .map_err(|e| unusable(what, &e.message))?;
    serde_json::from_slice(body).map_err(|_| unusable(what, "the answer is not JSON"))
}

/// Tests `key` with the provider's cheap authenticated call. A 401/403 means the key is
/// bad (not retryable); 5xx and network errors are retryable. No test URL: a
/// configuration error.
pub async fn test_key(
    client: &reqwest::Client,
    hooks: &KeyHooks,
    key: &SecretString,
) -> Result<(), CallError> {
    let Some(url) = &hooks.test_url else {
        return Err(CallError {
            class: ErrorClass::Configuration,
            retryable: false,
            message: format!(
                "no test call for {} keys: set [api_keys.providers.{}] test_url",
                hooks.provider, hooks.provider
            ),
            status: None,
            not_before: None,
        });
    };
    let answer = call("key test", hooks.authorize(client.get(url), key), key).await?;
    expect_success("key test", answer, key).map(drop)
}

/// Sends a provider's health check (`health_request` of its client) authenticated with
/// `key`: `Ok` for a 2xx, else the classified failure (the key scrubbed from it).
pub async fn probe(request: reqwest::RequestBuilder, key: &SecretString) -> Result<(), CallError> {
    let answer = call("health check", request, key).await?;
    expect_success("health check", answer, key).map(drop)
}

/// Creates the next key through the provider's key API, authenticated with the replaced
/// key, and with its scopes where the hooks read them: the new key and its provider id.
/// `Ok(None)`: the provider has no key API.
pub async fn create_key(
    client: &reqwest::Client,
    hooks: &KeyHooks,
    replaced: &Replaced<'_>,
) -> Result<Option<(SecretString, Option<String>)>, CallError> {
    let Some(url) = &hooks.create_url else {
        return Ok(None);
    };
    let scopes = read_scopes(client, hooks, replaced)
        .await
        .map_err(|mut e| {
            e.message = format!(
                "{}; no key was created, since one without the current key's scopes could have \
             other rights",
                e.message
            );
            e
        })?;
    let active = replaced.key;
    let mut request = hooks.authorize(client.post(url), active);
    if let Some(body) = next_key_body(hooks.create_body.as_ref(), replaced.version, scopes)? {
        request = request.json(&body);
    }
    let what = "key API";
    let answer = expect_success(what, call(what, request, active).await?, active)?;
    let answer = answer_json(what, &answer)?;
    let key = path(&answer, &hooks.key_field)
        .and_then(|v| v.as_str())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unusable(what, &format!("the answer has no {:?}", hooks.key_field)))?;
    // the id is stored as text: cleaned, and an absurd one dropped rather than cut (a cut
    // id would revoke nothing)
    let id = path(&answer, &hooks.id_field)
        .and_then(|v| match v {
            serde_json::Value::String(s) => Some(crate::text::clean(s, usize::MAX)),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .filter(|id| id.len() <= MAX_KEY_ID);
    Ok(Some((SecretString::from(key.to_string()), id)))
}

/// The scopes of the replaced key: `scopes_url` with its provider id, else
/// `own_scopes_url` (the scopes of the key that authenticates). `Ok(None)`: the hooks read
/// no scopes. A key whose scopes cannot be read is an error, never "no scopes".
async fn read_scopes(
    client: &reqwest::Client,
    hooks: &KeyHooks,
    replaced: &Replaced<'_>,
) -> Result<Option<Vec<String>>, CallError> {
    let what = "reading the current key's scopes";
    let url = match (
        &hooks.scopes_url,
        replaced.provider_key_id,
        &hooks.own_scopes_url,
    ) {
        (Some(by_id), Some(id), _) => by_id.replace("{id}", &url_escape(id)),
        (_, _, Some(own)) => own.clone(),
        (None, _, None) => return Ok(None),
        (Some(_), None, None) => {
            return Err(unusable(
                what,
                "the provider id of the current key is unknown",
            ));
        }
    };
    let key = replaced.key;
    let answer = call(what, hooks.authorize(client.get(url), key), key).await?;
    let answer = answer_json(what, &expect_success(what, answer, key)?)?;
    let scopes: Option<Vec<String>> = path(&answer, &hooks.scopes_field)
        .and_then(|v| v.as_array())
        .and_then(|list| list.iter().map(|s| s.as_str().map(String::from)).collect());
    match scopes {
        Some(s) if !s.is_empty() && s.len() <= MAX_SCOPES => Ok(Some(s)),
        _ => Err(unusable(
            what,
            &format!(
                "the answer has no list of scopes at {:?}",
                hooks.scopes_field
            ),
        )),
    }
}

/// The create call's body: `template` (`create_body`) with its `name` saying the key is
/// a rotation of version `version`, and `scopes` as its `scopes` member.
fn next_key_body(
    template: Option<&serde_json::Value>,
    version: i32,
    scopes: Option<Vec<String>>,
) -> Result<Option<serde_json::Value>, CallError> {
    let mut body = match (template, &scopes) {
        (None, None) => return Ok(None),
        (None, Some(_)) => serde_json::Map::new(),
        (Some(serde_json::Value::Object(o)), _) => o.clone(),
        (Some(other), None) => return Ok(Some(other.clone())),
        (Some(_), Some(_)) => {
            return Err(unusable(
                "key API",
                "create_body is not a JSON object, so it cannot carry the key's scopes",
            ));
        }
    };
    if let Some(serde_json::Value::String(name)) = body.get("name") {
        let name = format!("{name} (rotation of version {version})");
        body.insert("name".into(), name.into());
    }
    if let Some(scopes) = scopes {
        body.insert("scopes".into(), scopes.into());
    }
    Ok(Some(serde_json::Value::Object(body)))
}

/// Revokes a retired key at the provider (`revoke_url` with `{id}`), authenticated with
/// `active`. `Ok(false)`: nothing to do there (no key API, or no provider id).
pub async fn revoke_key(
    client: &reqwest::Client,
    hooks: &KeyHooks,
    active: &SecretString,
    provider_key_id: Option<&str>,
) -> Result<bool, CallError> {
    let (Some(url), Some(id)) = (&hooks.revoke_url, provider_key_id) else {
        return Ok(false);
    };
    let url = url.replace("{id}", &url_escape(id));
    let what = "key revocation";
    let answer = call(what, hooks.authorize(client.delete(url), active), active).await?;
    match answer.status {
        // already gone there
        404 => Ok(true),
        _ => expect_success(what, answer, active).map(|_| true),
    }
}

fn path<'a>(value: &'a serde_json::Value, dotted: &str) -> Option<&'a serde_json::Value> {
    dotted.split('.').try_fold(value, |v, k| v.get(k))
}

fn url_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~') {
                c.to_string()
            } else {
                let mut buf = [0; 4];
                c.encode_utf8(&mut buf)
                    .bytes()
                    .map(|b| format!("%{b:02X}"))
                    .collect()
            }
        })
        .collect()
}

/// Built-in provider names with hooks, for help texts.
pub fn builtin_names() -> BTreeMap<&'static str, bool> {
    ["mailgun", "sendgrid", "stripe", "posthog"]
        .into_iter()
        .map(|p| (p, builtin(p).is_some_and(|b| b.create_url.is_some())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_overridden_field_by_field() {
        let config = crate::config::Config::from_toml(
            "[api_keys.providers.sendgrid]\ntest_url = \"http://127.0.0.1:1/scopes\"\n\
             [api_keys.providers.acme]\ntest_url = \"http://a/me\"\nauth = \"header:X-Api-Key\"\n",
            std::path::Path::new("x"),
        )
        .unwrap()
        .api_keys;
        let s = KeyHooks::for_provider(&config, "sendgrid").unwrap();
        assert_eq!(s.test_url.as_deref(), Some("http://127.0.0.1:1/scopes"));
        assert_eq!(s.key_field, "api_key");
        assert!(s.create_url.is_some());
        let a = KeyHooks::for_provider(&config, "acme").unwrap();
        assert_eq!(a.auth, KeyAuth::Header("X-Api-Key".into()));
        assert!(a.create_url.is_none());
        let m = KeyHooks::for_provider(&config, "mailgun").unwrap();
        assert_eq!(m.auth, KeyAuth::Basic("api".into()));
    }

    #[test]
    fn the_next_key_keeps_the_scopes_and_says_it_is_a_rotation() {
        let template = serde_json::json!({"name": "penguin-jobs"});
        let scopes = vec!["mail.send".to_string(), "api_keys.read".to_string()];
        assert_eq!(
            next_key_body(Some(&template), 3, Some(scopes.clone())).unwrap(),
            Some(serde_json::json!({
                "name": "penguin-jobs (rotation of version 3)",
                "scopes": ["mail.send", "api_keys.read"],
            }))
        );
        assert_eq!(next_key_body(None, 1, None).unwrap(), None);
        assert_eq!(
            next_key_body(None, 1, Some(scopes.clone())).unwrap(),
            Some(serde_json::json!({"scopes": ["mail.send", "api_keys.read"]}))
        );
        assert!(next_key_body(Some(&serde_json::json!("x")), 1, Some(scopes)).is_err());
    }

    #[test]
    fn answer_fields_are_found_by_dotted_paths() {
        let v = serde_json::json!({"key": {"secret": "s", "id": 3}});
        assert_eq!(path(&v, "key.secret"), Some(&serde_json::json!("s")));
        assert_eq!(path(&v, "key.nope"), None);
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
    }
}
