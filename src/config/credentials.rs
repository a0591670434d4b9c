//! `[secrets]`, `[oauth]` and `[api_keys]`: the master key, the OAuth providers and the
//! API key providers, and their validation.

use super::*;

/// `[secrets]`: the master key that encrypts credentials at rest.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// The master key (base64 of 32 bytes) as `"env:NAME"` or `"file:PATH"`. The
    /// `PENGUIN_JOBS_MASTER_KEY` environment variable overrides it. Unset: storing a
    /// credential is refused.
    pub master_key: Option<SecretRef>,
    /// Older master keys, accepted for decryption only (`"env:NAME"` / `"file:PATH"`):
    /// keep the old key here while `secrets rotate-master` moves ciphertexts to the new one.
    pub previous_master_keys: Vec<SecretRef>,
}

/// `[oauth]`: OAuth connections and their scheduled refresh.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Run the built-in `oauth-refresh-sweep` schedule.
    pub refresh: bool,
    /// When the sweep runs (cron, UTC).
    pub refresh_cron: String,
    /// Refresh connections whose access token expires within this.
    #[serde(with = "humantime_serde")]
    pub refresh_ahead: Duration,
    /// Redirect URI `oauth authorize` uses without `--redirect-uri`: the shim's
    /// `/oauth/callback/{provider}` as the provider reaches it (`{provider}` is replaced).
    pub redirect_uri: Option<String>,
    /// `[oauth.providers.NAME]`: client credentials of the built-in providers (`google`,
    /// `microsoft`, `hubspot`), overrides of their URLs, and more providers.
    pub providers: BTreeMap<String, OAuthProviderConfig>,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            refresh: true,
            refresh_cron: "* * * * *".into(),
            refresh_ahead: Duration::from_secs(600),
            redirect_uri: None,
            providers: BTreeMap::new(),
        }
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Body,
}

/// `[oauth.providers.NAME]`. For a built-in provider every field but the client
/// credentials has a default; another provider needs them all but `userinfo_url`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthProviderConfig {
    /// The client id the provider issued (not a secret).
    pub client_id: Option<String>,
    /// The client secret, `"env:NAME"` or `"file:PATH"`.
    pub client_secret: Option<SecretRef>,
    /// Authorization endpoint.
    pub auth_url: Option<String>,
    /// Token endpoint.
    pub token_url: Option<String>,
    /// Userinfo endpoint (GET with the new access token); `{access_token}` in it is
    /// replaced by the token (HubSpot's token info). Unset: accounts are named by the
    /// token answer alone.
    pub userinfo_url: Option<String>,
    /// Scopes asked for.
    pub scopes: Option<Vec<String>>,
    /// `"basic"` or `"body"`.
    pub client_auth: Option<ClientAuth>,
    /// Extra query parameters of the authorization URL (Google: `access_type = "offline"`).
    pub auth_params: Option<BTreeMap<String, String>>,
}

/// `[api_keys]`: provider API keys and their scheduled rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeysConfig {
    /// Run the built-in `apikey-rotation` schedule.
    pub rotation: bool,
    /// When it runs (cron, UTC).
    pub rotation_cron: String,
    /// How long a replaced key stays `retiring` (valid, for in-flight work) before it is revoked.
    #[serde(with = "humantime_serde")]
    pub overlap: Duration,
    /// `[api_keys.providers.NAME]`: how to test a key and, where the provider has a key
    /// API, how to create and revoke keys.
    pub providers: BTreeMap<String, ApiKeyProviderConfig>,
}

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            rotation: true,
            rotation_cron: "0 3 * * *".into(),
            overlap: Duration::from_secs(24 * 3600),
            providers: BTreeMap::new(),
        }
    }
}

/// `[api_keys.providers.NAME]`: overrides of a built-in provider's key hooks
/// (`mailgun`, `sendgrid`, `stripe`, `posthog`), or the hooks of another provider.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyProviderConfig {
    /// A cheap authenticated GET that succeeds only with a valid key.
    pub test_url: Option<String>,
    /// How a key is sent: `"bearer"`, `"basic:USER"` (key as the password) or `"header:NAME"`.
    pub auth: Option<String>,
    /// Key API: POST here, authenticated with the active key, to create the next key.
    /// Unset: rotation uses the key an operator staged (`keys stage`).
    pub create_url: Option<String>,
    /// JSON body of the create call.
    pub create_body: Option<serde_json::Value>,
    /// Dot-separated path of the new key in the create answer (default `key`).
    pub key_field: Option<String>,
    /// Dot-separated path of the new key's provider id in the create answer (default `id`).
    pub id_field: Option<String>,
    /// Key API: DELETE here (`{id}`: the provider's key id) when a retired key is revoked.
    pub revoke_url: Option<String>,
    /// Key API: GET here (`{id}`: the active key's provider id) for the active key's scopes.
    /// Set (or `own_scopes_url`): the next key is created with the same scopes, and a
    /// rotation whose scopes cannot be read fails rather than create a key with other rights.
    pub scopes_url: Option<String>,
    /// GET here, authenticated with the active key, for that key's own scopes: used when
    /// the active key's provider id is unknown (a key an operator set).
    pub own_scopes_url: Option<String>,
    /// Dot-separated path of the scope list in those answers (default `scopes`).
    pub scopes_field: Option<String>,
}

impl Config {
    pub(super) fn validate_credentials(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        check_duration(
            "oauth.refresh_ahead",
            self.oauth.refresh_ahead,
            REFRESH_AHEAD_RANGE,
        )?;
        for (name, p) in &self.oauth.providers {
            check_name("oauth.providers", name)?;
            if let Some(s) = &p.client_secret {
                s.check()?;
            }
        }
        check_duration("api_keys.overlap", self.api_keys.overlap, OVERLAP_RANGE)?;
        for (name, p) in &self.api_keys.providers {
            check_name("api_keys.providers", name)?;
            if let Some(a) = &p.auth
                && !(a == "bearer" || a.starts_with("basic:") || a.starts_with("header:"))
            {
                return invalid(format!(
                    "api_keys.providers.{name}.auth: {a:?} is not \"bearer\", \"basic:USER\" or \"header:NAME\""
                ));
            }
        }
        Ok(())
    }
}
