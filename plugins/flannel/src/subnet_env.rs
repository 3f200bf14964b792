//! /run/flannel/subnet.env, as written by flanneld or weftd.

use std::path::Path;

use ipnetwork::IpNetwork;
use weft_cni::{Error, ErrorCode};

#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK (a comma-separated list) and FLANNEL_IPV6_NETWORK.
    pub networks: Vec<IpNetwork>,
    /// FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET: the node's gateway/prefix.
    pub subnets: Vec<IpNetwork>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    pub fn read(path: &Path) -> Result<SubnetEnv, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorCode::TryAgainLater, format!("cannot read {}: {e} (is weftd/flanneld running?)", path.display()))
        })?;
        Self::parse(&text).map_err(|msg| Error::config(format!("{}: {msg}", path.display())))
    }

    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut env = SubnetEnv { networks: vec![], subnets: vec![], mtu: 0, ipmasq: false };
        let (mut has_net, mut has_subnet, mut has_mtu, mut has_masq) = (false, false, false, false);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line \"{line}\" is not KEY=VALUE"));
            };
            let value = value.trim().trim_matches('"');
            let cidr = |v: &str| v.trim().parse::<IpNetwork>().map_err(|_| format!("{key}=\"{v}\" is not a CIDR"));
            match key.trim() {
                "FLANNEL_NETWORK" | "FLANNEL_IPV6_NETWORK" => {
                    for part in value.split(',').filter(|p| !p.trim().is_empty()) {
                        env.networks.push(cidr(part)?);
                    }
                    has_net = true;
                }
                "FLANNEL_SUBNET" | "FLANNEL_IPV6_SUBNET" => {
                    env.subnets.push(cidr(value)?);
                    has_subnet = true;
                }
                "FLANNEL_MTU" => {
                    env.mtu = value.parse().map_err(|_| format!("FLANNEL_MTU=\"{value}\" is not a number"))?;
                    has_mtu = true;
                }
                "FLANNEL_IPMASQ" => {
                    env.ipmasq = value.parse().map_err(|_| format!("FLANNEL_IPMASQ=\"{value}\" is not true or false"))?;
                    has_masq = true;
                }
                _ => {}
            }
        }
        let missing: Vec<&str> = [
            (has_net, "FLANNEL_NETWORK"),
            (has_subnet, "FLANNEL_SUBNET"),
            (has_mtu, "FLANNEL_MTU"),
            (has_masq, "FLANNEL_IPMASQ"),
        ]
        .iter()
        .filter(|(present, _)| !present)
        .map(|(_, name)| *name)
        .collect();
        if !missing.is_empty() {
            return Err(format!("{} is missing", missing.join(", ")));
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flannels_format() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\n\
             FLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(env.networks.len(), 2);
        assert_eq!(env.subnets[0].to_string(), "10.5.52.1/24");
        assert_eq!(env.mtu, 1450);
        assert!(env.ipmasq);
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_MTU=1450\n").unwrap_err();
        assert!(e.contains("FLANNEL_SUBNET") && e.contains("FLANNEL_IPMASQ"), "{e}");
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/99\n").unwrap_err();
        assert!(e.contains("10.5.0.0/99"), "{e}");
    }
}
