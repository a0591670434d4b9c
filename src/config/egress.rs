//! `[egress]`: the exceptions to the egress guard (addresses and hosts that outbound calls
//! to user-controlled URLs may reach although they are loopback, private, link-local or
//! otherwise internal).
//!
//! Only parses and checks the entries; the guard itself is `providers::egress`.

use std::net::IpAddr;

use ipnet::IpNet;

use super::*;

/// `[egress]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Networks (`"10.1.2.3/32"`, `"fd00::/64"`, a bare address) and host names
    /// (`"internal.example"`, matched exactly, case-insensitively) that `http.request` may
    /// call although the guard would refuse them. Empty by default: nothing internal.
    pub allow: Vec<EgressAllow>,
}

/// One `[egress] allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressAllow {
    /// Every address in this network.
    Network(IpNet),
    /// This host name, whatever it resolves to (lower case, no trailing dot).
    Host(String),
}

impl<'de> Deserialize<'de> for EgressAllow {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        EgressAllow::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl EgressAllow {
    /// Parses a network, an address or a host name; the error names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let entry = text.trim();
        if let Ok(net) = entry.parse::<IpNet>() {
            return Ok(Self::Network(net.trunc()));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Network(IpNet::from(ip)));
        }
        let host = entry.trim_end_matches('.').to_ascii_lowercase();
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok) {
            return Ok(Self::Host(host));
        }
        Err(format!(
            "egress.allow: {text:?} is not a network (10.1.2.3/32), an address or a host name \
             (internal.example)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_networks_addresses_or_host_names() {
        let net = |s: &str| EgressAllow::Network(s.parse().unwrap());
        assert_eq!(EgressAllow::parse("10.1.2.3/32"), Ok(net("10.1.2.3/32")));
        assert_eq!(EgressAllow::parse("10.1.2.3/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(EgressAllow::parse("127.0.0.1"), Ok(net("127.0.0.1/32")));
        assert_eq!(EgressAllow::parse("::1"), Ok(net("::1/128")));
        assert_eq!(
            EgressAllow::parse("Internal.Example."),
            Ok(EgressAllow::Host("internal.example".into()))
        );
        for bad in [
            "",
            "http://x",
            "a b",
            "x:80",
            "10.0.0.0/33",
            "-x.example",
            "a..b",
        ] {
            let e = EgressAllow::parse(bad).unwrap_err();
            assert!(e.starts_with("egress.allow: "), "{bad}: {e}");
        }
    }

    #[test]
    fn the_section_reads_from_toml() {
        let c: Config =
            toml::from_str("[egress]\nallow = [\"10.1.2.3/32\", \"hooks.internal\"]\n").unwrap();
        assert_eq!(c.egress.allow.len(), 2);
        let e = toml::from_str::<Config>("[egress]\nallow = [\"no way\"]\n").unwrap_err();
        assert!(e.to_string().contains("egress.allow"), "{e}");
    }
}
