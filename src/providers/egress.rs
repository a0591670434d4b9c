//! The egress guard: the HTTP client for calls to URLs that a user or tenant controls
//! (`http.request` now, customer webhooks later), which cannot be aimed inward.
//!
//! Refused: loopback, private (RFC 1918), link-local (the cloud metadata address
//! 169.254.169.254 among them), CGNAT, unique-local, multicast, unspecified, broadcast,
//! documentation and other reserved ranges, and IPv6 forms that embed such an IPv4 address
//! (mapped, NAT64, 6to4). `[egress] allow` opens exceptions by network or host name.
//!
//! The check is made on the addresses the connection is made to: the client resolves
//! names through [`GuardedResolver`], which drops refused addresses, so a name that
//! resolves to a public address when checked and to 127.0.0.1 when connected (DNS
//! rebinding) cannot pass; an address written in the URL is checked by
//! [`EgressPolicy::check_url`] before the request is built, since no resolution happens
//! for it. The client follows no redirect and ignores proxy variables (a proxy would
//! connect for us, unchecked).
//!
//! Must never let a request reach a refused address, and never follow a redirect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::config::{EgressAllow, EgressConfig};

/// A call the guard refused: names the host, the address and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress refused: {host} is {address}, a {range} address; outbound calls to user-given \
     URLs may not reach it (name it in [egress] allow to permit it)"
)]
pub struct Refused {
    pub host: String,
    pub address: IpAddr,
    pub range: &'static str,
}

/// Which addresses and hosts calls may reach besides the public internet.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    networks: Vec<IpNet>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    /// The policy `[egress]` describes.
    pub fn new(config: &EgressConfig) -> Self {
        let mut policy = Self::default();
        for entry in &config.allow {
            match entry {
                EgressAllow::Network(net) => policy.networks.push(*net),
                EgressAllow::Host(host) => policy.hosts.push(host.clone()),
            }
        }
        policy
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// `Ok` when `address`, reached as `host`, may be called.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        let Some(range) = internal_range(address) else {
            return Ok(());
        };
        if self.host_allowed(host) || self.networks.iter().any(|n| n.contains(&address)) {
            return Ok(());
        }
        Err(Refused {
            host: host.to_string(),
            address,
            range,
        })
    }

    /// Checks a URL whose host is an address (names are checked when resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        let host = url.host_str().unwrap_or_default();
        let Ok(address): Result<IpAddr, _> =
            host.trim_start_matches('[').trim_end_matches(']').parse()
        else {
            return Ok(());
        };
        self.check(&address.to_string(), address)
    }
}

/// The HTTP client for user-given URLs with its policy: resolution through the guard, no
/// redirects, no proxy, rustls.
#[derive(Clone)]
pub struct GuardedClient {
    pub client: reqwest::Client,
    pub policy: Arc<EgressPolicy>,
}

impl GuardedClient {
    /// `timeout` bounds a whole call unless a request sets its own.
    pub fn new(config: &EgressConfig, timeout: Duration) -> reqwest::Result<Self> {
        let policy = Arc::new(EgressPolicy::new(config));
        let client = super::http::builder(timeout)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
            .build()?;
        Ok(Self { client, policy })
    }
}

/// The refusal behind a failed call, if the guard caused it.
pub fn refusal(error: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = s.source();
    }
    None
}

/// Resolves with the system resolver and keeps only the addresses the policy allows;
/// none left is a [`Refused`] error naming the first one dropped.
pub struct GuardedResolver(Arc<EgressPolicy>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(&host, a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused.get_or_insert(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(Box::new(r) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The internal or reserved range `address` is in, if any.
pub fn internal_range(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(a: Ipv4Addr) -> Option<&'static str> {
    let [b0, b1, b2, _] = a.octets();
    Some(match (b0, b1, b2) {
        (0, ..) => "this-network (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (127, ..) => "loopback",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, ..) => "multicast",
        (240..=255, ..) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_range(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if a.is_unspecified() {
        return Some("unspecified (::)");
    }
    if a.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = a.to_ipv4_mapped() {
        return v4_range(v4);
    }
    Some(match s[0] {
        // IPv4-compatible (deprecated ::a.b.c.d)
        0 if s[1..6] == [0; 5] => return v4_range(embedded_v4(s[6], s[7])),
        0x64 if s[1] == 0xff9b && s[2..6] == [0; 4] => {
            return v4_range(embedded_v4(s[6], s[7]));
        }
        0x64 if s[1] == 0xff9b && s[2] == 1 => "local-use NAT64 (64:ff9b:1::/48)",
        0x100 if s[1..4] == [0; 3] => "discard (100::/64)",
        0x2001 if s[1] == 0 => "Teredo (2001::/32)",
        0x2001 if s[1] == 0xdb8 => "documentation (2001:db8::/32)",
        0x2002 => return v4_range(embedded_v4(s[1], s[2])),
        0xfc00..=0xfdff => "unique-local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (fec0::/10)",
        0xff00..=0xffff => "multicast",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_and_reserved_addresses_are_refused() {
        for refused in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.100.100.200",
            "192.0.0.192",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
        ] {
            assert!(internal_range(ip(refused)).is_some(), "{refused}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:101:101::",
        ] {
            assert_eq!(internal_range(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn allow_entries_open_exactly_what_they_name() {
        let config = EgressConfig {
            allow: vec![
                EgressAllow::parse("10.1.2.3/32").unwrap(),
                EgressAllow::parse("hooks.internal").unwrap(),
            ],
        };
        let policy = EgressPolicy::new(&config);
        assert!(policy.check("x.example", ip("10.1.2.3")).is_ok());
        let refused = policy.check("x.example", ip("10.1.2.4")).unwrap_err();
        assert_eq!(refused.range, "private (10.0.0.0/8)");
        assert!(refused.to_string().contains("x.example is 10.1.2.4"));
        assert!(policy.check("HOOKS.internal.", ip("127.0.0.1")).is_ok());
        assert!(
            policy
                .check("hooks.internal.evil", ip("127.0.0.1"))
                .is_err()
        );
        assert!(policy.check("x.example", ip("1.1.1.1")).is_ok());
    }

    #[test]
    fn addresses_written_in_urls_are_checked_in_every_spelling() {
        let policy = EgressPolicy::default();
        let check = |u: &str| policy.check_url(&reqwest::Url::parse(u).unwrap());
        for refused in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::1]:8080/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
        ] {
            assert!(check(refused).is_err(), "{refused}");
        }
        assert!(check("https://example.com/").is_ok());
        assert!(check("https://1.1.1.1/").is_ok());
    }
}
