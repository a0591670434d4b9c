//! `[admin]`: the operators' listener (admin API, `/metrics`, the dashboard), apart from
//! the public shim, with bearer tokens of its own.

use super::*;

/// The admin listener's address when `[admin] listen` is not set.
pub const DEFAULT_ADMIN_LISTEN: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8081);

/// `admin.stats_interval`: how stale the queue counts of `/metrics`, `/v1/stats` and the
/// dashboard may be.
pub const STATS_INTERVAL_RANGE: DurationRange = DurationRange { min: MS, max: HOUR };
/// `admin.statement_timeout`.
pub const ADMIN_STATEMENT_TIMEOUT_RANGE: DurationRange = DurationRange {
    min: Duration::from_millis(100),
    max: HOUR,
};

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener (default 127.0.0.1:8081). Unset, a port already in
    /// use is warned about and the daemon runs without it; set, it must be free.
    #[serde(deserialize_with = "admin_listen_address")]
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer tokens for `/v1/*` on the admin listener, each `"env:NAME"` or `"file:PATH"`
    /// (at least 43 characters). Empty: the admin API answers 401 to everyone (and says
    /// why); `/healthz`, `/readyz` and `/metrics` need no token.
    pub tokens: Vec<SecretRef>,
    /// Queue counts (depth per queue and state, oldest waiting job) are read at most this
    /// often, however often `/metrics`, `/v1/stats` or the dashboard ask, and never for
    /// more than 2% of the time (a reading of a big backlog that took 470 ms is reused for
    /// 23.5 s): a scrape never costs a count over the table.
    #[serde(with = "humantime_serde")]
    pub stats_interval: Duration,
    /// The longest one admin API statement may run: a search too broad for a huge table,
    /// or a request waiting on a lock a long transaction elsewhere holds, is answered 503
    /// naming this setting instead of holding one of the admin API's connections.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tokens: Vec::new(),
            stats_interval: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(15),
        }
    }
}

impl AdminConfig {
    /// The address to listen on.
    pub fn listen_address(&self) -> std::net::SocketAddr {
        self.listen.unwrap_or(DEFAULT_ADMIN_LISTEN)
    }
}

/// `[admin] listen`: an address like `127.0.0.1:8081`; the error names the key.
fn admin_listen_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "admin.listen: {text:?} is not an address like 127.0.0.1:8081"
        ))
    })
}

impl Config {
    /// `[admin]`.
    pub(super) fn validate_admin(&self) -> Result<(), ConfigError> {
        check_duration(
            "admin.stats_interval",
            self.admin.stats_interval,
            STATS_INTERVAL_RANGE,
        )?;
        check_duration(
            "admin.statement_timeout",
            self.admin.statement_timeout,
            ADMIN_STATEMENT_TIMEOUT_RANGE,
        )?;
        if let Some(listen) = self.admin.listen
            && listen == self.http.listen
            && listen.port() != 0
        {
            return Err(ConfigError::Invalid(format!(
                "admin.listen: {listen} is also http.listen; the admin listener must be apart \
                 from the public shim"
            )));
        }
        Ok(())
    }
}
