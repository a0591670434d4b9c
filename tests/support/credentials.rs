//! Credential test helpers: master key files (an app whose kinds use them is
//! `TestApp::builder().keyring(..)`), and a real OAuth 2.0
//! authorization server (oauthlib, in Python) on a local port.
//!
//! The server needs Python 3 with `oauthlib`. It is looked for in a virtualenv under the
//! target directory, then `PENGUIN_JOBS_TEST_PYTHON`, then `python3`; when none has it, the
//! virtualenv is created and `oauthlib` installed from PyPI. If that fails the test fails
//! saying what to install: it never skips.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};

use penguin_jobs::secrets::MasterKey;
use secrecy::ExposeSecret;

use super::TempDir;

/// The oauthlib version the test server is written against.
pub const OAUTHLIB: &str = "oauthlib==3.2.2";

/// A new master key written to `dir/name`: the key (shared, as keyrings hold it) and its
/// `"file:PATH"` reference.
pub fn master_key_file(dir: &TempDir, name: &str) -> (Arc<MasterKey>, String) {
    let key = MasterKey::generate();
    let reference = dir.secret_file(name, key.to_base64().expose_secret());
    (Arc::new(key), reference)
}

/// A running oauthlib authorization server.
pub struct OAuthServer {
    pub base: String,
    child: Child,
    http: reqwest::Client,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OAuthServer {
    /// Starts a server for one client; `auth` is the client authentication it accepts
    /// (`"basic"` or `"body"`).
    pub fn start(client_id: &str, client_secret: &str, auth: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oauth_server/server.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args([client_id, client_secret, auth])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the OAuth test server {}: {e}",
                    script.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the OAuth test server's port");
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("the OAuth test server did not start: {line:?}"));
        Self {
            base: format!("http://127.0.0.1:{port}"),
            child,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        }
    }

    /// `[oauth.providers.NAME]` pointing at this server.
    pub fn provider_toml(
        &self,
        name: &str,
        client_id: &str,
        secret_ref: &str,
        auth: &str,
    ) -> String {
        format!(
            "[oauth.providers.{name}]\nclient_id = \"{client_id}\"\nclient_secret = \"{secret_ref}\"\n\
             auth_url = \"{b}/authorize\"\ntoken_url = \"{b}/token\"\nuserinfo_url = \"{b}/userinfo\"\n\
             scopes = [\"openid\", \"email\"]\nclient_auth = \"{auth}\"\n",
            b = self.base
        )
    }

    /// POSTs a control request (`config`, `revoke`, `fail`).
    pub async fn control(&self, what: &str, body: serde_json::Value) -> serde_json::Value {
        self.http
            .post(format!("{}/_control/{what}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// What the server saw.
    pub async fn stats(&self) -> serde_json::Value {
        self.http
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Plays the user's browser: opens `authorize_url`, consents (automatic), and returns
    /// the redirect back to our callback (not followed).
    pub async fn consent(&self, authorize_url: &str) -> String {
        let r = self.http.get(authorize_url).send().await.unwrap();
        assert_eq!(
            r.status().as_u16(),
            302,
            "authorization refused: {:?}",
            r.text().await
        );
        r.headers()["location"].to_str().unwrap().to_string()
    }

    /// Calls the userinfo endpoint with `token`: its HTTP status.
    pub async fn userinfo_status(&self, token: &str) -> u16 {
        self.http
            .get(format!("{}/userinfo", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A refresh grant sent directly: status and answer.
    pub async fn refresh_directly(
        &self,
        client_id: &str,
        secret: &str,
        refresh_token: &str,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}/token", self.base))
            .basic_auth(client_id, Some(secret))
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or_default())
    }
}

/// A Python with oauthlib (see the module docs); panics with what to install.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(find_or_install_python) {
        Ok(p) => p.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn find_or_install_python() -> Result<PathBuf, String> {
    let imports = |python: &Path| super::python::imports(python, "oauthlib");
    if let Ok(p) = std::env::var("PENGUIN_JOBS_TEST_PYTHON")
        && imports(Path::new(&p))
    {
        return Ok(PathBuf::from(p));
    }
    if imports(Path::new("python3")) {
        return Ok(PathBuf::from("python3"));
    }
    let venv = super::python::venv("oauth-venv", OAUTHLIB, "oauthlib");
    venv.map(|v| v.join("bin/python")).map_err(|e| {
        format!(
            "the OAuth tests run a real authorization server built on oauthlib and need Python 3 \
             with {OAUTHLIB}: install python3 and python3-venv (bash .ci/run does), or set \
             PENGUIN_JOBS_TEST_PYTHON to a Python that has oauthlib; {e}"
        )
    })
}
