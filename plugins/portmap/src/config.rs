//! portmap's configuration: the reference plugin's keys and defaults, and
//! `runtimeConfig.portMappings`, validated in full before anything changes.

use std::net::IpAddr;

use serde::Deserialize;
use weft_cni::{Error, Request};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default)]
    mark_masq_bit: Option<i64>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default)]
    conditions_v4: Option<Vec<String>>,
    #[serde(default)]
    conditions_v6: Option<Vec<String>>,
    #[serde(default)]
    masq_all: bool,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    runtime_config: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntime {
    #[serde(default)]
    port_mappings: Option<Vec<RawMapping>>,
}

/// One entry of `runtimeConfig.portMappings`. The reference decodes it with
/// Go's case-insensitive JSON matching, and containerd's CRI (go-cni's
/// untagged struct) sends `HostPort`, `ContainerPort`, `Protocol`,
/// `HostIP`: those spellings are accepted too.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    #[serde(alias = "HostPort")]
    host_port: i64,
    #[serde(alias = "ContainerPort")]
    container_port: i64,
    #[serde(default, alias = "Protocol")]
    protocol: String,
    #[serde(default, rename = "hostIP", alias = "HostIP")]
    host_ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
    /// None: every local address. `0.0.0.0` / `::` mean every address of
    /// that family only.
    pub host_ip: Option<IpAddr>,
}

impl Mapping {
    /// Whether this mapping applies to IPv4 (`v4`) or IPv6 traffic.
    pub fn applies_to(&self, v4: bool) -> bool {
        self.host_ip.is_none_or(|ip| ip.is_ipv4() == v4)
    }

    /// The destination address to match, if any (wildcards match all).
    pub fn daddr(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    /// Whether `self` and `other` would catch the same packets.
    fn overlaps(&self, other: &Mapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && [true, false]
                .iter()
                .any(|v4| self.applies_to(*v4) && other.applies_to(*v4))
            && match (self.daddr(), other.daddr()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

#[derive(Debug)]
pub struct PortmapConfig {
    pub snat: bool,
    /// The mark `1 << markMasqBit` (iptables); None with externalSetMarkChain.
    pub masq_mark: Option<u32>,
    pub external_set_mark_chain: Option<String>,
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    pub masq_all: bool,
    /// None: nftables where it works, else iptables.
    pub backend: Option<Backend>,
    pub mappings: Vec<Mapping>,
}

const DEFAULT_MASQ_BIT: i64 = 13;

impl PortmapConfig {
    pub fn parse(req: &Request) -> Result<PortmapConfig, Error> {
        let raw: Raw = req.parse_config()?;
        if raw.external_set_mark_chain.is_some() && raw.mark_masq_bit.is_some() {
            return Err(Error::config(
                "cannot specify externalSetMarkChain and markMasqBit",
            ));
        }
        let bit = raw.mark_masq_bit.unwrap_or(DEFAULT_MASQ_BIT);
        if !(0..=31).contains(&bit) {
            return Err(Error::config(format!(
                "markMasqBit must be between 0 and 31, not {bit}"
            )));
        }
        let conditions_v4 = conditions("conditionsV4", raw.conditions_v4)?;
        let conditions_v6 = conditions("conditionsV6", raw.conditions_v6)?;
        let backend = backend(
            raw.backend.as_deref(),
            raw.external_set_mark_chain.is_some(),
            &conditions_v4,
            &conditions_v6,
        )?;
        if let Some(chain) = &raw.external_set_mark_chain {
            if chain.is_empty() || !chain.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::config(format!(
                    "externalSetMarkChain {chain:?} is not a chain name"
                )));
            }
        }
        let mappings = raw
            .runtime_config
            .port_mappings
            .unwrap_or_default()
            .iter()
            .map(mapping)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, m) in mappings.iter().enumerate() {
            if let Some(earlier) = mappings[..i].iter().find(|e| e.overlaps(m)) {
                return Err(Error::config(format!(
                    "duplicate host port: {}/{} is mapped to container ports {} and {}",
                    m.host_port,
                    m.protocol.as_str(),
                    earlier.container_port,
                    m.container_port
                )));
            }
        }
        Ok(PortmapConfig {
            snat: raw.snat.unwrap_or(true),
            masq_mark: raw.external_set_mark_chain.is_none().then(|| 1u32 << bit),
            external_set_mark_chain: raw.external_set_mark_chain,
            conditions_v4,
            conditions_v6,
            masq_all: raw.masq_all,
            backend,
            mappings,
        })
    }
}

impl PortmapConfig {
    /// What DEL falls back to when the config does not parse: the default
    /// backend and no mappings (rules are found by key anyway).
    pub fn teardown_only() -> PortmapConfig {
        PortmapConfig {
            snat: true,
            masq_mark: None,
            external_set_mark_chain: None,
            conditions_v4: Vec::new(),
            conditions_v6: Vec::new(),
            masq_all: false,
            backend: None,
            mappings: Vec::new(),
        }
    }
}

/// Conditions are spliced into rules: refuse what could end a rule or
/// start another (a newline, `;`, a comment).
fn conditions(key: &str, raw: Option<Vec<String>>) -> Result<Vec<String>, Error> {
    let list = raw.unwrap_or_default();
    for c in &list {
        if c.trim().is_empty() || c.contains(['\n', '\r', ';', '#', '\0']) {
            return Err(Error::config(format!("{key}: invalid condition {c:?}")));
        }
    }
    Ok(list)
}

/// iptables conditions start with an option (`-s`, `! -d`, ...).
fn is_iptables_condition(c: &str) -> bool {
    c.trim_start().starts_with(['-', '!'])
}

fn backend(
    name: Option<&str>,
    external_chain: bool,
    v4: &[String],
    v6: &[String],
) -> Result<Option<Backend>, Error> {
    let all = || v4.iter().chain(v6);
    let iptables_only = external_chain || all().any(|c| is_iptables_condition(c));
    let nft_only = all().any(|c| !is_iptables_condition(c));
    if iptables_only && nft_only {
        return Err(Error::config(
            "the configuration mixes iptables-specific and nftables-specific options",
        ));
    }
    let conflict = |asked: &str, other: &str| {
        Err(Error::config(format!(
            "{asked} backend was requested but the configuration contains {other}-specific options"
        )))
    };
    match name {
        None | Some("") if iptables_only => Ok(Some(Backend::Iptables)),
        None | Some("") if nft_only => Ok(Some(Backend::Nftables)),
        None | Some("") => Ok(None),
        Some("nftables") if iptables_only => conflict("nftables", "iptables"),
        Some("nftables") => Ok(Some(Backend::Nftables)),
        Some("iptables") if nft_only => conflict("iptables", "nftables"),
        Some("iptables") => Ok(Some(Backend::Iptables)),
        Some(other) => Err(Error::config(format!(
            "unrecognized backend {other:?}: expected \"nftables\" or \"iptables\""
        ))),
    }
}

fn port(what: &str, n: i64) -> Result<u16, Error> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::config(format!("invalid {what} port number: {n} (1-65535)")))
}

fn mapping(raw: &RawMapping) -> Result<Mapping, Error> {
    let protocol = match raw.protocol.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => {
            return Err(Error::config(format!(
                "unknown protocol {:?} for host port {}: expected tcp, udp or sctp",
                raw.protocol, raw.host_port
            )))
        }
    };
    let host_ip = match raw.host_ip.as_deref() {
        None | Some("") => None,
        Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
            Error::config(format!(
                "hostIP {s:?} of host port {} is not an IP address",
                raw.host_port
            ))
        })?),
    };
    Ok(Mapping {
        host_port: port("host", raw.host_port)?,
        container_port: port("container", raw.container_port)?,
        protocol,
        host_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(host_port: u16, protocol: Protocol, host_ip: Option<&str>) -> Mapping {
        Mapping {
            host_port,
            container_port: 80,
            protocol,
            host_ip: host_ip.map(|s| s.parse().unwrap()),
        }
    }

    #[test]
    fn containerds_capitalised_mapping_keys_are_read() {
        // What containerd 1.6 sends for a hostPort (measured in tests/cri.rs).
        let raw: RawMapping = serde_json::from_value(serde_json::json!(
            {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}
        ))
        .unwrap();
        let m = mapping(&raw).unwrap();
        assert_eq!((m.host_port, m.container_port), (8080, 80));
        assert_eq!((m.protocol, m.host_ip), (Protocol::Tcp, None));
    }

    #[test]
    fn overlaps_by_protocol_port_and_address() {
        let any = m(8080, Protocol::Tcp, None);
        assert!(any.overlaps(&m(8080, Protocol::Tcp, Some("10.0.0.1"))));
        assert!(!any.overlaps(&m(8080, Protocol::Udp, None)));
        assert!(!any.overlaps(&m(8081, Protocol::Tcp, None)));
        let a = m(8080, Protocol::Tcp, Some("10.0.0.1"));
        assert!(!a.overlaps(&m(8080, Protocol::Tcp, Some("10.0.0.2"))));
        assert!(a.overlaps(&m(8080, Protocol::Tcp, Some("0.0.0.0"))));
        assert!(!a.overlaps(&m(8080, Protocol::Tcp, Some("::"))));
    }

    #[test]
    fn backend_selection() {
        let ipt = vec!["! -s 10.0.0.0/8".to_string()];
        let nft = vec!["ip saddr != 10.0.0.0/8".to_string()];
        assert_eq!(backend(None, false, &[], &[]).unwrap(), None);
        assert_eq!(
            backend(None, false, &ipt, &[]).unwrap(),
            Some(Backend::Iptables)
        );
        assert_eq!(
            backend(None, false, &[], &nft).unwrap(),
            Some(Backend::Nftables)
        );
        assert!(backend(Some("nftables"), true, &[], &[]).is_err());
        assert!(backend(Some("iptables"), false, &nft, &[]).is_err());
        assert!(backend(Some("pf"), false, &[], &[]).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(port("host", 1).unwrap(), 1);
        assert_eq!(port("host", 65535).unwrap(), 65535);
        for bad in [0, -1, 65536, 70000] {
            assert_eq!(port("host", bad).unwrap_err().code(), 7);
        }
    }
}
