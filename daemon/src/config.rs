//! The network config stored at `<prefix>/config`, lease keys and lease
//! values. Everything here is pure: parsing, flannel's defaults, validation
//! and IPv4 subnet arithmetic.

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Bytes VXLAN over IPv4 adds to every packet (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// The same over an IPv6 underlay (outer header 40 instead of 20), used by
/// `flannel-v6.<VNI>` (flannel subtracts only 50 there: its bug #1781).
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// flannel's (and the Linux kernel's) VXLAN port.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    #[error("network config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The validated config with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub backend: BackendConfig,
    /// The IPv6 half of a dual-stack config (`EnableIPv6: true`).
    pub ipv6: Option<V6Config>,
}

/// `IPv6Network` and its subnet range, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Config {
    pub network: Ipv6Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Addr,
    pub subnet_max: Ipv6Addr,
}

/// `Backend.Type`: which backend programs the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `vxlan`; `DirectRouting: true` routes directly to on-link peers.
    Vxlan { direct_routing: bool },
    /// `host-gw`: a plain route per peer, no encapsulation.
    HostGw,
}

/// `Backend`, defaults filled in (the vxlan fields are unused by host-gw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendKind,
    pub vni: u32,
    /// UDP port; flannel's 0 means the kernel default, 8472.
    pub port: u16,
    /// Underlay MTU override (flannel's `Backend.MTU`); `None` = the interface's MTU.
    pub mtu: Option<u32>,
}

/// Case-insensitive field lookup, as Go's encoding/json does it.
pub(crate) fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn get_str(
    obj: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<String>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(invalid(format!("{name} must be a string, got {v}"))),
    }
}

fn get_uint(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<u64>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| invalid(format!("{name} must be a non-negative integer, got {n}"))),
        Some(v) => Err(invalid(format!("{name} must be a number, got {v}"))),
    }
}

fn get_bool(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(format!("{name} must be true or false, got {v}"))),
    }
}

fn parse_v4_cidr(name: &str, s: &str) -> Result<Ipv4Network, ConfigError> {
    let n: Ipv4Network = s
        .parse()
        .map_err(|_| invalid(format!("{name} {s:?} is not an IPv4 CIDR")))?;
    // Host bits are masked off, as flannel does.
    Ipv4Network::new(n.network(), n.prefix()).map_err(|e| invalid(format!("{name}: {e}")))
}

fn parse_v4_addr(name: &str, s: &str) -> Result<Ipv4Addr, ConfigError> {
    // flannel's IP4 type accepts a plain address; tolerate a CIDR too.
    let a = s.split('/').next().unwrap_or(s);
    a.parse()
        .map_err(|_| invalid(format!("{name} {s:?} is not an IPv4 address")))
}

/// Parse and validate `<prefix>/config`, applying flannel's defaults.
pub fn parse_config(json: &str) -> Result<NetConfig, ConfigError> {
    let v: Value = serde_json::from_str(json).map_err(|e| ConfigError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("must be a JSON object"))?;

    let enable_ipv4 = get_bool(obj, "EnableIPv4")?.unwrap_or(true);
    let enable_ipv6 = get_bool(obj, "EnableIPv6")?.unwrap_or(false);
    if !enable_ipv4 {
        return Err(invalid(
            "EnableIPv4=false (IPv6-only) is not supported by weft",
        ));
    }
    let ipv6_network = match get_str(obj, "IPv6Network")? {
        Some(s) => Some(
            s.parse::<ipnetwork::Ipv6Network>()
                .map_err(|_| invalid(format!("IPv6Network {s:?} is not an IPv6 CIDR")))?,
        ),
        None => None,
    };
    let ipv6 = match (enable_ipv6, ipv6_network) {
        (false, _) => None,
        (true, None) => return Err(invalid("EnableIPv6 is true but IPv6Network is missing")),
        (true, Some(n)) => Some(parse_v6_range(obj, n)?),
    };

    let network = match get_str(obj, "Network")? {
        Some(s) => parse_v4_cidr("Network", &s)?,
        None => {
            return Err(invalid(
                "Network is missing (required when IPv4 is enabled)",
            ))
        }
    };
    let plen = network.prefix();
    if plen > 28 {
        return Err(invalid(format!(
            "Network {network} is too small: the prefix must be /28 or shorter"
        )));
    }

    let subnet_len = match get_uint(obj, "SubnetLen")? {
        None | Some(0) => {
            if plen <= 22 {
                24
            } else {
                plen + 2
            }
        }
        Some(n) => {
            let n =
                u8::try_from(n).map_err(|_| invalid(format!("SubnetLen {n} is out of range")))?;
            if n > 30 {
                return Err(invalid(format!("SubnetLen {n} is too long: at most 30")));
            }
            if n < plen + 2 {
                return Err(invalid(format!(
                    "SubnetLen {n} is too short for Network {network}: at least {}",
                    plen + 2
                )));
            }
            n
        }
    };
    let size = subnet_size(subnet_len);
    let net_start = u32::from(network.network());
    let net_last_subnet = u32::from(network.broadcast()) - (size - 1);

    let check_bound = |name: &str, a: Ipv4Addr| -> Result<Ipv4Addr, ConfigError> {
        if !network.contains(a) {
            return Err(invalid(format!(
                "{name} {a} is not inside Network {network}"
            )));
        }
        if u32::from(a) % size != 0 {
            return Err(invalid(format!(
                "{name} {a} is not aligned to SubnetLen /{subnet_len}"
            )));
        }
        Ok(a)
    };
    let subnet_min = match get_str(obj, "SubnetMin")? {
        Some(s) => check_bound("SubnetMin", parse_v4_addr("SubnetMin", &s)?)?,
        None => Ipv4Addr::from(net_start + size),
    };
    let subnet_max = match get_str(obj, "SubnetMax")? {
        Some(s) => check_bound("SubnetMax", parse_v4_addr("SubnetMax", &s)?)?,
        None => Ipv4Addr::from(net_last_subnet),
    };
    if u32::from(subnet_min) > u32::from(subnet_max) {
        return Err(invalid(format!(
            "SubnetMin {subnet_min} is above SubnetMax {subnet_max}"
        )));
    }

    let backend = parse_backend(field(obj, "Backend"))?;
    Ok(NetConfig {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
        backend,
        ipv6,
    })
}

fn parse_v6_addr(name: &str, s: &str) -> Result<Ipv6Addr, ConfigError> {
    let a = s.split('/').next().unwrap_or(s);
    a.parse()
        .map_err(|_| invalid(format!("{name} {s:?} is not an IPv6 address")))
}

/// flannel's IPv6 defaults and checks: IPv6SubnetLen defaults to 64 for a
/// /62 or shorter network (else prefix + 2), is at most 126 and at least
/// prefix + 2 (so the network is at most /124); IPv6SubnetMin defaults to
/// the second subnet, IPv6SubnetMax to the last; both inside and aligned.
fn parse_v6_range(
    obj: &serde_json::Map<String, Value>,
    n: Ipv6Network,
) -> Result<V6Config, ConfigError> {
    let network = Ipv6Network::new(n.network(), n.prefix())
        .map_err(|e| invalid(format!("IPv6Network: {e}")))?;
    let plen = network.prefix();
    if plen > 124 {
        return Err(invalid(format!(
            "IPv6Network {network} is too small: the prefix must be /124 or shorter"
        )));
    }
    let subnet_len = match get_uint(obj, "IPv6SubnetLen")? {
        None | Some(0) => {
            if plen <= 62 {
                64
            } else {
                plen + 2
            }
        }
        Some(l) => {
            let l = u8::try_from(l)
                .map_err(|_| invalid(format!("IPv6SubnetLen {l} is out of range")))?;
            if l > 126 {
                return Err(invalid(format!(
                    "IPv6SubnetLen {l} is too long: at most 126"
                )));
            }
            if l < plen + 2 {
                return Err(invalid(format!(
                    "IPv6SubnetLen {l} is too short for IPv6Network {network}: at least {}",
                    plen + 2
                )));
            }
            l
        }
    };
    let size = subnet_size_v6(subnet_len);
    let start = u128::from(network.network());
    let last = u128::from(network.broadcast()) - (size - 1);
    let check = |name: &str, a: Ipv6Addr| -> Result<Ipv6Addr, ConfigError> {
        if !network.contains(a) {
            return Err(invalid(format!(
                "{name} {a} is not inside IPv6Network {network}"
            )));
        }
        if u128::from(a) % size != 0 {
            return Err(invalid(format!(
                "{name} {a} is not aligned to IPv6SubnetLen /{subnet_len}"
            )));
        }
        Ok(a)
    };
    let subnet_min = match get_str(obj, "IPv6SubnetMin")? {
        Some(s) => check("IPv6SubnetMin", parse_v6_addr("IPv6SubnetMin", &s)?)?,
        None => Ipv6Addr::from(start + size),
    };
    let subnet_max = match get_str(obj, "IPv6SubnetMax")? {
        Some(s) => check("IPv6SubnetMax", parse_v6_addr("IPv6SubnetMax", &s)?)?,
        None => Ipv6Addr::from(last),
    };
    if u128::from(subnet_min) > u128::from(subnet_max) {
        return Err(invalid(format!(
            "IPv6SubnetMin {subnet_min} is above IPv6SubnetMax {subnet_max}"
        )));
    }
    Ok(V6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    })
}

pub fn subnet_size_v6(len: u8) -> u128 {
    1u128 << (128 - u32::from(len))
}

impl V6Config {
    pub fn fits(&self, s: &Ipv6Network) -> bool {
        s.prefix() == self.subnet_len
            && u128::from(s.network()) >= u128::from(self.subnet_min)
            && u128::from(s.network()) <= u128::from(self.subnet_max)
            && self.network.contains(s.network())
    }

    /// Up to `limit` free subnets in [IPv6SubnetMin, IPv6SubnetMax].
    pub fn free_subnets(&self, taken: &[Ipv6Network], limit: usize) -> Vec<Ipv6Network> {
        let size = subnet_size_v6(self.subnet_len);
        let max = u128::from(self.subnet_max);
        let mut a = u128::from(self.subnet_min);
        let mut out = Vec::new();
        while a <= max && out.len() < limit {
            if let Ok(s) = Ipv6Network::new(Ipv6Addr::from(a), self.subnet_len) {
                if !taken.iter().any(|t| t.overlaps(s)) {
                    out.push(s);
                }
            }
            match a.checked_add(size) {
                Some(n) => a = n,
                None => break,
            }
        }
        out
    }
}

fn parse_backend(v: Option<&Value>) -> Result<BackendConfig, ConfigError> {
    let obj = match v {
        None | Some(Value::Null) => {
            // flannel's code defaults a missing Backend to "udp" (its docs say vxlan).
            return Err(invalid(
                "Backend is missing; flannel then defaults to type \"udp\", which weft does not support: \
                 set \"Backend\": {\"Type\": \"vxlan\"}",
            ));
        }
        Some(Value::Object(o)) => o,
        Some(v) => return Err(invalid(format!("Backend must be an object, got {v}"))),
    };
    let ty = get_str(obj, "Type")?.unwrap_or_else(|| "udp".to_string());
    let kind = match ty.as_str() {
        "vxlan" => BackendKind::Vxlan {
            direct_routing: get_bool(obj, "DirectRouting")?.unwrap_or(false),
        },
        "host-gw" => BackendKind::HostGw,
        _ => {
            return Err(invalid(format!(
                "Backend.Type {ty:?} is not supported: weft supports \"vxlan\" (with or without DirectRouting) and \"host-gw\""
            )))
        }
    };
    let vni = get_uint(obj, "VNI")?.unwrap_or(1);
    if vni == 0 || vni >= 1 << 24 {
        return Err(invalid(format!(
            "Backend.VNI {vni} is out of range 1..16777215"
        )));
    }
    let port = match get_uint(obj, "Port")?.unwrap_or(0) {
        0 => DEFAULT_VXLAN_PORT,
        p => u16::try_from(p).map_err(|_| invalid(format!("Backend.Port {p} is out of range")))?,
    };
    let mtu = match get_uint(obj, "MTU")?.unwrap_or(0) {
        0 => None,
        m if (VXLAN_OVERHEAD_V4 as u64 + 68..=65535).contains(&m) => Some(m as u32),
        m => {
            return Err(invalid(format!(
                "Backend.MTU {m} is out of range 118..65535"
            )))
        }
    };
    if get_bool(obj, "GBP")?.unwrap_or(false) {
        return Err(invalid("Backend.GBP=true is not supported by weft"));
    }
    Ok(BackendConfig {
        kind,
        vni: vni as u32,
        port,
        mtu,
    })
}

pub fn subnet_size(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

impl NetConfig {
    /// Does this subnet belong to the current config (inside the range, right length)?
    pub fn fits(&self, s: &Ipv4Network) -> bool {
        s.prefix() == self.subnet_len
            && u32::from(s.network()) >= u32::from(self.subnet_min)
            && u32::from(s.network()) <= u32::from(self.subnet_max)
            && self.network.contains(s.network())
    }

    /// Up to `limit` subnets in [SubnetMin, SubnetMax] that overlap none of `taken`.
    pub fn free_subnets(&self, taken: &[Ipv4Network], limit: usize) -> Vec<Ipv4Network> {
        let size = subnet_size(self.subnet_len);
        let mut out = Vec::new();
        let mut a = u64::from(u32::from(self.subnet_min));
        let max = u64::from(u32::from(self.subnet_max));
        while a <= max && out.len() < limit {
            let ip = Ipv4Addr::from(a as u32);
            if let Ok(s) = Ipv4Network::new(ip, self.subnet_len) {
                if !taken.iter().any(|t| t.overlaps(s)) {
                    out.push(s);
                }
            }
            a += u64::from(size);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn net6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }
    fn v6(extra: &str) -> Result<NetConfig, ConfigError> {
        parse_config(&format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,{extra}"Backend":{{"Type":"vxlan"}}}}"#
        ))
    }

    #[test]
    fn defaults_for_a_16() {
        let c = parse_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.network, net("10.5.0.0/16"));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendKind::Vxlan {
                    direct_routing: false
                },
                vni: 1,
                port: 8472,
                mtu: None
            }
        );
        assert!(c.ipv6.is_none());
    }

    #[test]
    fn subnet_len_default_for_small_networks() {
        let c = parse_config(r#"{"Network":"10.5.0.0/24","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 5, 0, 64));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 5, 0, 192));
        let c = parse_config(r#"{"Network":"10.0.0.0/22","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(c.subnet_len, 24);
    }

    #[test]
    fn host_bits_are_masked_and_fields_are_case_insensitive() {
        let c = parse_config(
            r#"{"network":"10.5.3.7/16","subnetlen":26,"backend":{"type":"vxlan","vni":42,"port":4789,"mtu":9000}}"#,
        )
        .unwrap();
        assert_eq!(c.network, net("10.5.0.0/16"));
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.backend.vni, 42);
        assert_eq!(c.backend.port, 4789);
        assert_eq!(c.backend.mtu, Some(9000));
    }

    #[test]
    fn validation_errors() {
        let bad = [
            r#"not json"#,
            r#"[]"#,
            r#"{"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/29","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16","SubnetLen":31,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16","SubnetLen":17,"Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16","SubnetMax":"10.5.3.128","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.3.0","Backend":{"Type":"vxlan"}}"#,
            r#"{"Network":"10.5.0.0/16"}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#,
        ];
        for b in bad {
            assert!(parse_config(b).is_err(), "accepted {b}");
        }
        let e = parse_config(r#"{"Network":"10.5.0.0/16"}"#).unwrap_err();
        assert!(e.to_string().contains("udp"), "{e}");
        let e = parse_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#).unwrap_err();
        assert!(e.to_string().contains("supports \"vxlan\""), "{e}");
    }

    #[test]
    fn backend_types() {
        let kind = |b: &str| {
            parse_config(&format!(r#"{{"Network":"10.5.0.0/16","Backend":{b}}}"#))
                .unwrap()
                .backend
                .kind
        };
        assert_eq!(kind(r#"{"Type":"host-gw"}"#), BackendKind::HostGw);
        assert_eq!(
            kind(r#"{"Type":"vxlan","DirectRouting":true}"#),
            BackendKind::Vxlan {
                direct_routing: true
            }
        );
        assert_eq!(
            kind(r#"{"type":"vxlan","directrouting":false}"#),
            BackendKind::Vxlan {
                direct_routing: false
            }
        );
    }

    #[test]
    fn explicit_range() {
        let c = parse_config(
            r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.12.0","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert!(c.fits(&net("10.5.10.0/24")));
        assert!(c.fits(&net("10.5.12.0/24")));
        assert!(!c.fits(&net("10.5.13.0/24")));
        assert!(!c.fits(&net("10.5.9.0/24")));
        assert!(!c.fits(&net("10.5.10.0/25")));
        let free = c.free_subnets(&[net("10.5.11.0/24")], 100);
        assert_eq!(free, vec![net("10.5.10.0/24"), net("10.5.12.0/24")]);
        assert_eq!(c.free_subnets(&[net("10.5.0.0/16")], 100), vec![]);
        assert_eq!(c.free_subnets(&[], 1), vec![net("10.5.10.0/24")]);
    }

    #[test]
    fn free_subnets_at_top_of_address_space() {
        let c =
            parse_config(r#"{"Network":"255.255.255.0/24","Backend":{"Type":"vxlan"}}"#).unwrap();
        let free = c.free_subnets(&[], 100);
        assert_eq!(free.len(), 3);
        assert_eq!(free[2], net("255.255.255.192/26"));
    }

    #[test]
    fn ipv6_defaults() {
        let c = v6(r#""IPv6Network":"fd00:10:244::/56","#).unwrap();
        let s = c.ipv6.unwrap();
        assert_eq!(s.network, net6("fd00:10:244::/56"));
        assert_eq!(s.subnet_len, 64);
        assert_eq!(s.subnet_min, "fd00:10:244:1::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            s.subnet_max,
            "fd00:10:244:ff::".parse::<Ipv6Addr>().unwrap()
        );
        // The IPv4 side is unchanged.
        assert_eq!(c.subnet_len, 24);
        // Longer than /62: prefix + 2; host bits masked; case-insensitive names.
        let c = v6(r#""ipv6network":"fd00::5/64","#).unwrap();
        let s = c.ipv6.unwrap();
        assert_eq!(s.network, net6("fd00::/64"));
        assert_eq!(s.subnet_len, 66);
        assert_eq!(
            s.subnet_min,
            "fd00::4000:0:0:0".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            s.subnet_max,
            "fd00::c000:0:0:0".parse::<Ipv6Addr>().unwrap()
        );
        // /124 is the smallest network.
        let s = v6(r#""IPv6Network":"fd00::/124","#).unwrap().ipv6.unwrap();
        assert_eq!(s.subnet_len, 126);
        assert_eq!(s.free_subnets(&[], 100).len(), 3);
        // EnableIPv6 false: IPv6Network is ignored.
        let c = parse_config(
            r#"{"Network":"10.5.0.0/16","IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.ipv6, None);
    }

    #[test]
    fn ipv6_explicit_range_and_checks() {
        let s = v6(r#""IPv6Network":"fd00::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fd00:0:0:a00::","IPv6SubnetMax":"fd00:0:0:c00::","#)
            .unwrap()
            .ipv6
            .unwrap();
        assert!(s.fits(&net6("fd00:0:0:a00::/56")));
        assert!(s.fits(&net6("fd00:0:0:c00::/56")));
        assert!(!s.fits(&net6("fd00:0:0:d00::/56")));
        assert!(!s.fits(&net6("fd00:0:0:a00::/64")));
        assert_eq!(
            s.free_subnets(&[net6("fd00:0:0:b00::/56")], 100),
            vec![net6("fd00:0:0:a00::/56"), net6("fd00:0:0:c00::/56")]
        );
        for bad in [
            r#""#,
            r#""IPv6Network":"10.0.0.0/8","#,
            r#""IPv6Network":"fd00::/125","#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetLen":127,"#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetLen":57,"#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetMin":"fd01::","#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:1::1","#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetMax":"fd00:0:0:1:8000::","#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::","#,
            r#""IPv6Network":"fd00::/56","IPv6SubnetLen":"64","#,
        ] {
            assert!(v6(bad).is_err(), "accepted {bad}");
        }
        let e = v6("").unwrap_err();
        assert!(e.to_string().contains("IPv6Network is missing"), "{e}");
    }
}
