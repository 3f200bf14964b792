//! static's config and the runtime's inputs, merged in the reference's order:
//!
//! 1. `ipam.addresses`, then CNI_ARGS `IP=` (a comma list of CIDRs)
//!    appended. CNI_ARGS `GATEWAY=` (a comma list) sets the gateway of each
//!    `IP=` address whose subnet contains it; the reference never applies
//!    it to the config's addresses, and neither does weft.
//! 2. A non-empty `args.cni.ips` replaces every address.
//! 3. A non-empty `runtimeConfig.ips` (capability `ips`) replaces them again.
//!
//! The list forms carry no gateways. Addresses are validated after the
//! merge, so a config address that a runtime list replaces is never looked
//! at (the reference behaves so); gateways are checked as they are read.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use weft_cni::args::CniArgs;
use weft_cni::{Dns, Error, IpConfig, Request, Route};

/// What ADD answers, before conversion to the request's version.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticConfig {
    pub addresses: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Deserialize)]
struct NetConf {
    #[serde(default)]
    ipam: Option<Ipam>,
    #[serde(default)]
    args: Option<ArgsSection>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<IpsList>,
}

#[derive(Deserialize)]
struct Ipam {
    #[serde(default)]
    addresses: Option<Vec<ConfAddress>>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Deserialize)]
struct ConfAddress {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct ArgsSection {
    #[serde(default)]
    cni: Option<IpsList>,
}

#[derive(Deserialize)]
struct IpsList {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

/// An address as given, validated once the merge has settled.
#[derive(Debug)]
struct Pending {
    /// Where it came from, for error messages: `ipam.addresses[0].address`.
    field: String,
    text: String,
    gateway: Option<IpAddr>,
}

impl StaticConfig {
    pub fn load(req: &Request) -> Result<StaticConfig, Error> {
        let conf: NetConf = req.parse_config()?;
        let ipam = conf
            .ipam
            .ok_or_else(|| Error::config("the network config has no \"ipam\" section"))?;
        let mut pending = config_addresses(ipam.addresses.unwrap_or_default())?;
        pending.extend(cni_args_addresses(&req.args)?);
        let lists = [
            (
                "args.cni.ips",
                conf.args.and_then(|a| a.cni).and_then(|c| c.ips),
            ),
            ("runtimeConfig.ips", conf.runtime_config.and_then(|r| r.ips)),
        ];
        for (path, list) in lists {
            if let Some(list) = list.filter(|l| !l.is_empty()) {
                pending = list
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| Pending {
                        field: format!("{path}[{i}]"),
                        text,
                        gateway: None,
                    })
                    .collect();
            }
        }
        let addresses = pending
            .into_iter()
            .map(validate)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StaticConfig {
            addresses,
            routes: ipam.routes.unwrap_or_default(),
            dns: ipam.dns.unwrap_or_default(),
        })
    }
}

fn config_addresses(list: Vec<ConfAddress>) -> Result<Vec<Pending>, Error> {
    list.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let gateway = match a.gateway.as_deref() {
                // "" is unset, as in Go's net.IP decoding.
                None | Some("") => None,
                Some(s) => Some(parse_ip(s).ok_or_else(|| {
                    Error::config(format!(
                        "ipam.addresses[{i}].gateway \"{s}\" is not a valid IP address"
                    ))
                })?),
            };
            Ok(Pending {
                field: format!("ipam.addresses[{i}].address"),
                text: a.address.unwrap_or_default(),
                gateway,
            })
        })
        .collect()
}

/// CNI_ARGS `IP=` addresses, with `GATEWAY=` applied to them.
fn cni_args_addresses(raw: &str) -> Result<Vec<Pending>, Error> {
    let args = CniArgs::parse(raw, &["IP", "GATEWAY"])?;
    let items = |key| {
        args.get(key)
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let mut out = Vec::new();
    for text in items("IP") {
        let net = parse_cidr(text).ok_or_else(|| {
            Error::env(format!(
                "CNI_ARGS IP \"{text}\" is not an address in CIDR notation (address/prefix)"
            ))
        })?;
        out.push((text, net, None));
    }
    for text in items("GATEWAY") {
        let gw = parse_ip(text).ok_or_else(|| {
            Error::env(format!(
                "CNI_ARGS GATEWAY \"{text}\" is not a valid IP address"
            ))
        })?;
        for (_, _, gateway) in out.iter_mut().filter(|(_, net, _)| net.contains(gw)) {
            *gateway = Some(gw);
        }
    }
    Ok(out
        .into_iter()
        .map(|(text, _, gateway)| Pending {
            field: "CNI_ARGS IP".into(),
            text: text.to_string(),
            gateway,
        })
        .collect())
}

fn validate(p: Pending) -> Result<IpConfig, Error> {
    let address = parse_cidr(&p.text).ok_or_else(|| {
        Error::config(format!(
            "{} \"{}\" is not an address in CIDR notation (address/prefix)",
            p.field, p.text
        ))
    })?;
    if let Some(gw) = p.gateway {
        // The reference hands such a gateway on and the interface plugin
        // fails later on it; refusing here names the field.
        if gw.is_ipv4() != address.is_ipv4() {
            return Err(Error::config(format!(
                "the gateway {gw} of {} \"{}\" is not of the address's IP family",
                p.field, p.text
            )));
        }
    }
    Ok(IpConfig {
        address,
        gateway: p.gateway,
        interface: None,
    })
}

/// An IPv4-mapped IPv6 address is IPv4, as in Go.
fn parse_ip(s: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
    }
}

/// `address/prefix`, host bits kept (the address is the pod's own). An
/// IPv4-mapped IPv6 address with a prefix of 96 or more is IPv4, as Go
/// prints it.
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix: u8 = prefix.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() && prefix >= 96 => {
            IpNetwork::new(IpAddr::V4(v6.to_ipv4_mapped()?), prefix - 96).ok()
        }
        ip => IpNetwork::new(ip, prefix).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_is_strict() {
        assert_eq!(
            parse_cidr("10.1.0.5/24").unwrap().to_string(),
            "10.1.0.5/24"
        );
        assert_eq!(
            parse_cidr("::ffff:10.0.0.1/120").unwrap().to_string(),
            "10.0.0.1/24"
        );
        assert_eq!(parse_cidr("fd00::5/64").unwrap().to_string(), "fd00::5/64");
        for bad in [
            "10.1.0.5",
            "10.1/24",
            "10.1.0.5/33",
            "10.1.0.5/+8",
            "10.1.0.5/",
            "x/8",
            "",
        ] {
            assert!(parse_cidr(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn gateway_applies_only_to_cni_args_addresses() {
        let got =
            cni_args_addresses("IP=10.2.0.5/24, 10.3.0.5/24;GATEWAY=10.2.0.1,10.9.0.1").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].gateway, Some("10.2.0.1".parse().unwrap()));
        assert_eq!(got[1].gateway, None);
        assert_eq!(cni_args_addresses("IP=10.2.0.5").unwrap_err().code(), 4);
        assert_eq!(cni_args_addresses("GATEWAY=x").unwrap_err().code(), 4);
        assert_eq!(cni_args_addresses("FOO=bar").unwrap_err().code(), 4);
        assert!(cni_args_addresses("IgnoreUnknown=1;FOO=bar")
            .unwrap()
            .is_empty());
    }
}
