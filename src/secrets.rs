//! Encryption at rest and redaction.
//!
//! Envelope encryption with AES-256-GCM: every stored secret (OAuth tokens, PKCE verifiers,
//! provider API keys) is encrypted under a fresh random data key, and that data key is
//! wrapped under the daemon's master key. A ciphertext is one ASCII string
//!
//! ```text
//! pj1.<key id>.<base64url(nonce ‖ wrapped data key)>.<base64url(nonce ‖ ciphertext)>
//! ```
//!
//! so it names the master key that wraps it ([`MasterKey::id`], a fingerprint of the key,
//! never the key). Rotating the master key re-wraps the data keys only
//! ([`Keyring::rewrap`]); the data ciphertexts never change. Each ciphertext is bound to
//! where it is stored (the additional authenticated data names the table, column and row),
//! so a ciphertext copied into another row does not decrypt.
//!
//! The master key comes from `PENGUIN_JOBS_MASTER_KEY` (base64 of 32 bytes) or
//! `[secrets] master_key = "file:PATH"`; `[secrets] previous_master_keys` are accepted
//! for decryption only, which is what makes rotation online. Without a master key there
//! is no [`Keyring`], and storing a credential is refused ([`SecretsError::NoMasterKey`]):
//! nothing is ever stored in plaintext.
//!
//! This module must never log, format or return a plaintext or a key in an error: every
//! error names a key id or a place, never a value. Key material it holds is wiped when
//! dropped: a master key is never copied (not `Clone`; a [`Keyring`] shares it through
//! `Arc`), and data keys and decrypted plaintexts live in [`Zeroizing`] buffers until
//! they are handed over as a [`SecretString`] (which wipes itself too).

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError, SecretRef, resolve_secret_ref};

/// The environment variable holding the master key (base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "PENGUIN_JOBS_MASTER_KEY";

const VERSION: &str = "pj1";
const NONCE_LEN: usize = 12;

/// Errors of this module; none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "no master key configured: set {MASTER_KEY_ENV} (base64 of 32 bytes) or [secrets] master_key = \"file:PATH\"; credentials are never stored in plaintext"
    )]
    NoMasterKey,
    #[error("{source_name}: the master key must be base64 of exactly 32 bytes")]
    BadKey { source_name: String },
    #[error(
        "ciphertext was written under master key {0}, which this daemon does not have (add it to [secrets] previous_master_keys)"
    )]
    UnknownKey(String),
    #[error("ciphertext for {0} is malformed or was tampered with")]
    Corrupt(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One 256-bit master key and its id. Not `Clone`, so that the key exists once in memory
/// (share it through `Arc`); its bytes are wiped when it is dropped.
pub struct MasterKey {
    id: String,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish()
    }
}

impl MasterKey {
    /// A key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let key = Zeroizing::new(bytes);
        let digest = Sha256::new()
            .chain_update(b"penguin-jobs master key id\0")
            .chain_update(key.as_slice())
            .finalize();
        Self {
            id: hex::encode(&digest[..8]),
            key,
        }
    }

    /// A key from base64 text (standard or URL-safe alphabet, padding optional);
    /// `source_name` names where it came from in the error.
    pub fn from_base64(text: &str, source_name: &str) -> Result<Self, SecretsError> {
        let text = text.trim();
        let bad = || SecretsError::BadKey {
            source_name: source_name.into(),
        };
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| bad())?,
        );
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(Self::from_bytes(bytes))
    }

    /// A new random key (tests, and `secrets generate-key`).
    pub fn generate() -> Self {
        Self::from_bytes(rand::random())
    }

    /// The key as base64, to write into a key file.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.key.as_slice()))
    }

    /// Its id: a fingerprint (16 hex digits) that names it in ciphertexts and audit rows.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads a key from `"env:NAME"` / `"file:PATH"` (`key` names the config key).
    pub fn from_ref(key: &str, reference: &str) -> Result<Self, SecretsError> {
        let text = resolve_secret_ref(key, reference)?;
        Self::from_base64(text.expose_secret(), key)
    }

    /// Reads a key the config names.
    pub fn from_secret(secret: &SecretRef) -> Result<Self, SecretsError> {
        let text = secret.resolve()?;
        Self::from_base64(text.expose_secret(), secret.key())
    }

    fn cipher(&self) -> Aes256Gcm {
        cipher_of(&self.key)
    }
}

/// The AES-256-GCM cipher of `key` (its key schedule is wiped when it is dropped).
fn cipher_of(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
}

/// The current master key (encrypts) and older ones (decrypt only). Cloning it shares the
/// keys, never copies them.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: Arc<MasterKey>,
    previous: Vec<Arc<MasterKey>>,
}

impl Keyring {
    /// A keyring encrypting under `current`.
    pub fn new(current: impl Into<Arc<MasterKey>>, previous: Vec<Arc<MasterKey>>) -> Self {
        Self {
            current: current.into(),
            previous,
        }
    }

    /// The keyring of `config`: `PENGUIN_JOBS_MASTER_KEY` if set, else `[secrets]
    /// master_key`; `None` if neither is configured.
    pub fn from_config(config: &Config) -> Result<Option<Self>, SecretsError> {
        let current = match std::env::var(MASTER_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => Some(MasterKey::from_base64(&v, MASTER_KEY_ENV)?),
            _ => match &config.secrets.master_key {
                Some(r) => Some(MasterKey::from_secret(r)?),
                None => None,
            },
        };
        let Some(current) = current else {
            return Ok(None);
        };
        let previous = config
            .secrets
            .previous_master_keys
            .iter()
            .map(|r| MasterKey::from_secret(r).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self::new(current, previous)))
    }

    /// The key new ciphertexts are written under.
    pub fn current(&self) -> &MasterKey {
        &self.current
    }

    fn key(&self, id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .map(|k| &**k)
    }

    /// Encrypts `plaintext` for the place `aad` (e.g. `oauth_connections.access_token:<id>`).
    pub fn encrypt(&self, plaintext: &str, aad: &str) -> Result<String, SecretsError> {
        let data_key = Zeroizing::new(rand::random::<[u8; 32]>());
        let data_nonce: [u8; NONCE_LEN] = rand::random();
        let data = cipher_of(&data_key)
            .encrypt(
                Nonce::from_slice(&data_nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Corrupt(aad.into()))?;
        let wrapped = wrap(&self.current, &data_key, aad)?;
        Ok(format!(
            "{VERSION}.{}.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(wrapped),
            URL_SAFE_NO_PAD.encode([&data_nonce[..], &data].concat())
        ))
    }

    /// Decrypts a ciphertext written for `aad` under any key of this ring.
    pub fn decrypt(&self, ciphertext: &str, aad: &str) -> Result<SecretString, SecretsError> {
        let parts = Parts::parse(ciphertext, aad)?;
        let master = self
            .key(parts.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(parts.key_id.into()))?;
        let data_key = unwrap(master, &parts.wrapped, aad)?;
        let (nonce, data) = parts.data.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            cipher_of(&data_key)
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: data,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| SecretsError::Corrupt(aad.into()))?,
        );
        std::str::from_utf8(&plain)
            .map(SecretString::from)
            .map_err(|_| SecretsError::Corrupt(aad.into()))
    }

    /// The master key id a ciphertext names (no key needed).
    pub fn key_id_of(ciphertext: &str) -> Option<&str> {
        let mut it = ciphertext.split('.');
        (it.next() == Some(VERSION)).then(|| it.next()).flatten()
    }

    /// Re-wraps a ciphertext's data key under `to` (the data ciphertext is kept): the
    /// unit of master key rotation. The result decrypts with any keyring holding `to`.
    pub fn rewrap(
        &self,
        ciphertext: &str,
        aad: &str,
        to: &MasterKey,
    ) -> Result<String, SecretsError> {
        let parts = Parts::parse(ciphertext, aad)?;
        let master = self
            .key(parts.key_id)
            .ok_or_else(|| SecretsError::UnknownKey(parts.key_id.into()))?;
        let data_key = unwrap(master, &parts.wrapped, aad)?;
        let wrapped = wrap(to, &data_key, aad)?;
        Ok(format!(
            "{VERSION}.{}.{}.{}",
            to.id,
            URL_SAFE_NO_PAD.encode(wrapped),
            URL_SAFE_NO_PAD.encode(&parts.data)
        ))
    }
}

struct Parts<'a> {
    key_id: &'a str,
    wrapped: Vec<u8>,
    data: Vec<u8>,
}

impl<'a> Parts<'a> {
    fn parse(ciphertext: &'a str, aad: &str) -> Result<Self, SecretsError> {
        let corrupt = || SecretsError::Corrupt(aad.into());
        let mut it = ciphertext.split('.');
        let (Some(VERSION), Some(key_id), Some(wrapped), Some(data), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(corrupt());
        };
        let wrapped = URL_SAFE_NO_PAD.decode(wrapped).map_err(|_| corrupt())?;
        let data = URL_SAFE_NO_PAD.decode(data).map_err(|_| corrupt())?;
        if wrapped.len() <= NONCE_LEN || data.len() <= NONCE_LEN {
            return Err(corrupt());
        }
        Ok(Self {
            key_id,
            wrapped,
            data,
        })
    }
}

fn wrap_aad(master: &MasterKey, aad: &str) -> Vec<u8> {
    format!("penguin-jobs data key|{}|{aad}", master.id).into_bytes()
}

fn wrap(master: &MasterKey, data_key: &[u8; 32], aad: &str) -> Result<Vec<u8>, SecretsError> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let wrapped = master
        .cipher()
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: data_key,
                aad: &wrap_aad(master, aad),
            },
        )
        .map_err(|_| SecretsError::Corrupt(aad.into()))?;
    Ok([&nonce[..], &wrapped].concat())
}

fn unwrap(
    master: &MasterKey,
    wrapped: &[u8],
    aad: &str,
) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    let (nonce, body) = wrapped.split_at(NONCE_LEN);
    let key = Zeroizing::new(
        master
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: &wrap_aad(master, aad),
                },
            )
            .map_err(|_| SecretsError::Corrupt(aad.into()))?,
    );
    let mut data_key = Zeroizing::new([0u8; 32]);
    if key.len() != data_key.len() {
        return Err(SecretsError::Corrupt(aad.into()));
    }
    data_key.copy_from_slice(&key);
    Ok(data_key)
}

/// `text` with every occurrence of each secret replaced by `[redacted]`: for messages
/// built from a provider's answer or a transport error, which might echo what we sent.
pub fn scrub(text: &str, secrets: &[&SecretString]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let s = s.expose_secret();
        if s.len() >= 4 {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

/// A random URL-safe token of `bytes` random bytes (OAuth `state`, PKCE verifiers).
pub fn random_token(bytes: usize) -> SecretString {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    SecretString::from(URL_SAFE_NO_PAD.encode(raw))
}

/// SHA-256 of `text`, hex: how single-use tokens (OAuth `state`) are stored.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &SecretString) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(MasterKey::from_bytes([1; 32]), Vec::new())
    }

    #[test]
    fn a_ciphertext_round_trips_and_names_its_key_but_not_the_plaintext() {
        let ring = ring();
        let ct = ring.encrypt("ya29.secret-token", "t.c:1").unwrap();
        assert!(ct.starts_with(&format!("pj1.{}.", ring.current().id())));
        assert!(!ct.contains("secret-token"));
        assert_eq!(Keyring::key_id_of(&ct), Some(ring.current().id()));
        assert_eq!(
            ring.decrypt(&ct, "t.c:1").unwrap().expose_secret(),
            "ya29.secret-token"
        );
        // a fresh data key and nonce each time
        assert_ne!(ct, ring.encrypt("ya29.secret-token", "t.c:1").unwrap());
    }

    #[test]
    fn a_ciphertext_does_not_decrypt_elsewhere_or_when_tampered_with() {
        let ring = ring();
        let ct = ring.encrypt("value", "t.c:1").unwrap();
        assert!(matches!(
            ring.decrypt(&ct, "t.c:2"),
            Err(SecretsError::Corrupt(_))
        ));
        let mut bytes = ct.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(ring.decrypt(&tampered, "t.c:1").is_err());
        assert!(ring.decrypt("plaintext", "t.c:1").is_err());
        let other = Keyring::new(MasterKey::from_bytes([2; 32]), Vec::new());
        let err = other.decrypt(&ct, "t.c:1").unwrap_err().to_string();
        assert!(err.contains(ring.current().id()), "{err}");
        assert!(!err.contains("value"));
    }

    #[test]
    fn rewrapping_moves_a_ciphertext_to_the_new_key_and_keeps_the_data() {
        let old = Arc::new(MasterKey::from_bytes([1; 32]));
        let new = Arc::new(MasterKey::from_bytes([2; 32]));
        let ct = Keyring::new(old.clone(), Vec::new())
            .encrypt("refresh-token", "x:1")
            .unwrap();
        let moved = Keyring::new(old.clone(), Vec::new())
            .rewrap(&ct, "x:1", &new)
            .unwrap();
        assert_eq!(Keyring::key_id_of(&moved), Some(new.id()));
        assert_eq!(ct.rsplit('.').next(), moved.rsplit('.').next());
        let after = Keyring::new(new.clone(), Vec::new());
        assert_eq!(
            after.decrypt(&moved, "x:1").unwrap().expose_secret(),
            "refresh-token"
        );
        assert!(matches!(
            after.decrypt(&ct, "x:1"),
            Err(SecretsError::UnknownKey(_))
        ));
        // during rotation a daemon holding both reads both
        let both = Keyring::new(new, vec![old]);
        assert!(both.decrypt(&ct, "x:1").is_ok() && both.decrypt(&moved, "x:1").is_ok());
    }

    #[test]
    fn master_keys_are_32_bytes_of_base64_and_errors_do_not_echo_them() {
        let k = MasterKey::generate();
        let text = k.to_base64();
        let back = MasterKey::from_base64(text.expose_secret(), "x").unwrap();
        assert_eq!(back.id(), k.id());
        let err = MasterKey::from_base64("c2hvcnQ=", "secrets.master_key")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "secrets.master_key: the master key must be base64 of exactly 32 bytes"
        );
        assert!(MasterKey::from_base64("not base64!", "x").is_err());
    }

    /// `Probe::<T>::new().is_clone()` is `true` exactly when `T: Clone`: method lookup
    /// takes the by-value candidate (`CloneProbe`, whose impl needs `T: Clone`) before the
    /// one found by auto-referencing (`NotCloneProbe`), and skips it when `T` is not `Clone`.
    struct Probe<T>(std::marker::PhantomData<T>);

    trait CloneProbe {
        fn is_clone(&self) -> bool {
            true
        }
    }
    impl<T: Clone> CloneProbe for Probe<T> {}

    trait NotCloneProbe {
        fn is_clone(&self) -> bool {
            false
        }
    }
    impl<T> NotCloneProbe for &Probe<T> {}

    #[test]
    fn a_master_key_cannot_be_cloned_so_it_exists_once_in_memory() {
        // the probes are references, so that lookup starts from `&Probe<T>`
        let string = &Probe::<String>(std::marker::PhantomData);
        let master_key = &Probe::<MasterKey>(std::marker::PhantomData);
        assert!(string.is_clone());
        assert!(!master_key.is_clone());
        // a keyring shares its keys
        let ring = ring();
        let copy = ring.clone();
        assert!(std::ptr::eq(ring.current(), copy.current()));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("webhooks/vectors/official.json")).unwrap();
        let v = &vectors["pkce_rfc7636_appendix_b"];
        let verifier = SecretString::from(v["code_verifier"].as_str().unwrap().to_string());
        assert_eq!(pkce_challenge(&verifier), v["code_challenge_s256"]);
    }

    #[test]
    fn scrub_replaces_every_secret() {
        let s = SecretString::from("tok-123456".to_string());
        assert_eq!(
            scrub("GET /info/tok-123456 failed: tok-123456", &[&s]),
            "GET /info/[redacted] failed: [redacted]"
        );
    }
}
