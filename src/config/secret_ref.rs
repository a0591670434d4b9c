//! Secrets named in the config (`"env:NAME"`, `"file:PATH"`, `"cred:NAME"` for a systemd
//! credential, `LoadCredential=NAME:...`): resolved when used, so a rotated file is picked
//! up; URLs redacted for logs.
//!
//! Must never put a secret's value in an error or a log line.

use super::*;

/// Resolves `"env:NAME"` and `"file:PATH"`; any other value is taken literally (convenient
/// for a local database URL without password). The error names the reference, never the value.
pub fn resolve_secret(reference: &str) -> Result<SecretString, ConfigError> {
    let fail = |message: String| ConfigError::Secret {
        reference: reference.to_string(),
        message,
    };
    if let Some(name) = reference.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
            Ok(_) => Err(fail("the environment variable is empty".into())),
            Err(_) => Err(fail("the environment variable is not set".into())),
        }
    } else if let Some(path) = reference
        .strip_prefix("file:")
        .map(std::path::PathBuf::from)
        .map(Ok)
        .or_else(|| reference.strip_prefix("cred:").map(credential_path))
    {
        let path = path.map_err(fail)?;
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let value = text.trim_end_matches(['\n', '\r']).to_string();
        if value.is_empty() {
            return Err(fail("the file is empty".into()));
        }
        Ok(SecretString::from(value))
    } else {
        Ok(SecretString::from(reference.to_string()))
    }
}

/// The file of systemd credential `name`: `$CREDENTIALS_DIRECTORY/name`.
fn credential_path(name: &str) -> Result<std::path::PathBuf, String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err("a credential name is one file name, as in LoadCredential=NAME:PATH".into());
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if !dir.is_empty() => Ok(std::path::Path::new(&dir).join(name)),
        _ => Err(
            "CREDENTIALS_DIRECTORY is not set: cred:NAME is read from systemd's LoadCredential= \
             (outside the unit, use file:PATH or env:NAME)"
                .into(),
        ),
    }
}

/// Whether `reference` names a secret (rather than being one).
fn is_reference(reference: &str) -> bool {
    ["env:", "file:", "cred:"]
        .iter()
        .any(|p| reference.starts_with(p))
}

/// What a secret reference must look like, for errors.
const REFERENCE_FORMS: &str =
    "\"env:NAME\", \"file:PATH\" or \"cred:NAME\" (systemd's LoadCredential)";

/// Like [`resolve_secret`], but only references are accepted: tokens and signing keys must
/// not sit in the config file itself.
pub fn resolve_secret_ref(key: &str, reference: &str) -> Result<SecretString, ConfigError> {
    if is_reference(reference) {
        resolve_secret(reference)
    } else {
        Err(ConfigError::Invalid(format!(
            "{key}: write the secret as {REFERENCE_FORMS}, not the value itself"
        )))
    }
}

/// A database URL with its password replaced, for logs and errors.
pub fn redact_url(url: &SecretString) -> String {
    let raw = url.expose_secret();
    match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &raw[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &raw[..scheme_end], user, &raw[at + 1..])
        }
        _ => raw.split('?').next().unwrap_or("").to_string(),
    }
}

/// A secret named in the config: `"env:NAME"` or `"file:PATH"`, never the value itself.
/// It carries the key it was set under (`providers.mailgun.api_key`) for error messages:
/// [`Config::from_toml`] names it, and [`Config::validate`] refuses any other form. The
/// secret is read when [`SecretRef::resolve`] is called, so a rotated file is picked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    key: String,
    reference: String,
}

impl SecretRef {
    /// `reference` (`"env:NAME"` / `"file:PATH"`) set under `key`.
    pub fn new(key: impl Into<String>, reference: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reference: reference.into(),
        }
    }

    /// The key it was set under.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reads the secret; the error names the key and the reference, never the value.
    pub fn resolve(&self) -> Result<SecretString, ConfigError> {
        resolve_secret_ref(&self.key, &self.reference)
    }

    /// Refuses a value written in place of a reference.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if is_reference(&self.reference) {
            Ok(())
        } else {
            Err(ConfigError::Invalid(format!(
                "{}: write the secret as {REFERENCE_FORMS}, not the value itself",
                self.key
            )))
        }
    }

    /// Names the key it was set under.
    pub(super) fn bind(&mut self, key: impl Into<String>) {
        self.key = key.into();
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // the key is named after parsing, by Config::from_toml
        Ok(Self::new(String::new(), String::deserialize(d)?))
    }
}
