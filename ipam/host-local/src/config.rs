//! The host-local config: parsing, canonicalization and validation, with
//! every error naming the offending field and value.
//!
//! Range sets come, in this order (which fixes the `last_reserved_ip.N`
//! index N, as in the reference): `runtimeConfig.ipRanges`, then the legacy
//! top-level `ipam.subnet` range, then `ipam.ranges`.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use weft_cni::args::CniArgs;
use weft_cni::{Error, Route};

use crate::range::{canonical_ip, from_u128, to_u128, Range, RangeSet};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

#[derive(Debug, Clone, PartialEq)]
pub struct IpamConfig {
    /// The network name; the store lives in `<data_dir>/<name>/`.
    pub name: String,
    pub data_dir: PathBuf,
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    pub resolv_conf: Option<PathBuf>,
}

impl IpamConfig {
    /// Parse the full network config (`name`, `ipam`, `runtimeConfig`).
    pub fn parse(name: &str, config: &Value) -> Result<IpamConfig, Error> {
        let ipam = match config.get("ipam") {
            Some(Value::Object(m)) => m,
            None | Some(Value::Null) => {
                return Err(Error::config("the network config has no \"ipam\" section"))
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "ipam must be an object, not {other}"
                )))
            }
        };

        let mut sets: Vec<(String, RangeSet)> = Vec::new();
        if let Some(runtime) = object_field(config, "runtimeConfig", "runtimeConfig")? {
            if let Some(v) = non_null(runtime.get("ipRanges")) {
                sets.extend(parse_range_sets(v, "runtimeConfig.ipRanges")?);
            }
        }
        if non_empty_str(ipam.get("subnet")) {
            let range = parse_range(&Value::Object(ipam.clone()), "ipam")?;
            sets.push((
                "ipam.subnet".into(),
                RangeSet {
                    ranges: vec![range],
                },
            ));
        }
        if let Some(v) = non_null(ipam.get("ranges")) {
            sets.extend(parse_range_sets(v, "ipam.ranges")?);
        }
        if sets.is_empty() {
            return Err(Error::config(
                "no IP ranges specified: set ipam.ranges (or ipam.subnet)",
            ));
        }
        for (i, (path_a, a)) in sets.iter().enumerate() {
            for (path_b, b) in sets.iter().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(Error::config(format!(
                        "range set {path_a} ({a}) overlaps range set {path_b} ({b})"
                    )));
                }
            }
        }

        let routes = match non_null(ipam.get("routes")) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, r)| parse_route(r, &format!("ipam.routes[{i}]")))
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(Error::config(format!(
                    "ipam.routes must be a list, not {other}"
                )))
            }
        };
        let data_dir =
            optional_str(ipam.get("dataDir"), "ipam.dataDir")?.unwrap_or(DEFAULT_DATA_DIR);
        let resolv_conf =
            optional_str(ipam.get("resolvConf"), "ipam.resolvConf")?.map(PathBuf::from);

        Ok(IpamConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(data_dir),
            range_sets: sets.into_iter().map(|(_, s)| s).collect(),
            routes,
            resolv_conf,
        })
    }

    /// The directory holding this network's reservations.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// The addresses the runtime asked for: CNI_ARGS `IP=a,b`, `args.cni.ips`
/// and `runtimeConfig.ips` (each "ip" or "ip/prefix"), without duplicates,
/// in that order.
pub fn requested_ips(config: &Value, cni_args: &str) -> Result<Vec<IpAddr>, Error> {
    let mut out: Vec<IpAddr> = Vec::new();
    let args = CniArgs::parse(cni_args, &["IP"])?;
    if let Some(list) = args.get("IP") {
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip = parse_ip(item).ok_or_else(|| {
                Error::env(format!("CNI_ARGS IP \"{item}\" is not a valid IP address"))
            })?;
            out.push(ip);
        }
    }
    let from_args = config
        .get("args")
        .and_then(|a| a.get("cni"))
        .and_then(|c| c.get("ips"));
    out.extend(parse_ip_list(from_args, "args.cni.ips")?);
    out.extend(parse_ip_list(
        config.get("runtimeConfig").and_then(|r| r.get("ips")),
        "runtimeConfig.ips",
    )?);
    let mut unique = Vec::with_capacity(out.len());
    for ip in out {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    Ok(unique)
}

fn parse_ip_list(value: Option<&Value>, path: &str) -> Result<Vec<IpAddr>, Error> {
    let items = match non_null(value) {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(Error::config(format!(
                "{path} must be a list of addresses, not {other}"
            )))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let s = item.as_str().ok_or_else(|| {
                Error::config(format!("{path}[{i}] must be a string, not {item}"))
            })?;
            let addr = s.split_once('/').map_or(s, |(a, _)| a);
            let valid_prefix = s.split_once('/').is_none() || parse_cidr(s).is_some();
            match parse_ip(addr) {
                Some(ip) if valid_prefix => Ok(ip),
                _ => Err(Error::config(format!(
                    "{path}[{i}] \"{s}\" is not a valid IP address"
                ))),
            }
        })
        .collect()
}

fn non_null(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

fn non_empty_str(v: Option<&Value>) -> bool {
    match non_null(v) {
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
        None => false,
    }
}

fn object_field<'a>(
    v: &'a Value,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>, Error> {
    match non_null(v.get(key)) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(Error::config(format!(
            "{path} must be an object, not {other}"
        ))),
    }
}

/// A string field; absent, null and "" all mean unset (as Go's net.IP
/// decoding treats "").
fn optional_str<'a>(v: Option<&'a Value>, path: &str) -> Result<Option<&'a str>, Error> {
    match non_null(v) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::config(format!(
            "{path} must be a string, not {other}"
        ))),
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical_ip)
}

/// `addr/prefix` with the address as written (host bits kept).
fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ip = addr.parse::<IpAddr>().ok()?;
    IpNetwork::new(ip, prefix.parse::<u8>().ok()?).ok()
}

fn optional_ip(obj: &Value, key: &str, path: &str) -> Result<Option<IpAddr>, Error> {
    let field = format!("{path}.{key}");
    match optional_str(obj.get(key), &field)? {
        None => Ok(None),
        Some(s) => parse_ip(s)
            .map(Some)
            .ok_or_else(|| Error::config(format!("{field} \"{s}\" is not a valid IP address"))),
    }
}

fn parse_range_sets(v: &Value, path: &str) -> Result<Vec<(String, RangeSet)>, Error> {
    let Value::Array(sets) = v else {
        return Err(Error::config(format!(
            "{path} must be a list of range sets, not {v}"
        )));
    };
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let set_path = format!("{path}[{i}]");
        let Value::Array(ranges) = set else {
            return Err(Error::config(format!(
                "{set_path} must be a list of ranges, not {set}"
            )));
        };
        if ranges.is_empty() {
            return Err(Error::config(format!("{set_path} is an empty range set")));
        }
        let mut parsed: Vec<Range> = Vec::with_capacity(ranges.len());
        for (j, r) in ranges.iter().enumerate() {
            let range_path = format!("{set_path}[{j}]");
            let range = parse_range(r, &range_path)?;
            if let Some(first) = parsed.first() {
                if first.is_ipv4() != range.is_ipv4() {
                    return Err(Error::config(format!(
                        "{range_path}.subnet {} is not of the same IP family as {set_path}[0].subnet {}: one range set hands out one address",
                        range.subnet, first.subnet
                    )));
                }
            }
            if let Some((k, other)) = parsed.iter().enumerate().find(|(_, o)| o.overlaps(&range)) {
                return Err(Error::config(format!(
                    "{range_path} ({range}) overlaps {set_path}[{k}] ({other})"
                )));
            }
            parsed.push(range);
        }
        out.push((set_path, RangeSet { ranges: parsed }));
    }
    Ok(out)
}

/// Canonicalize one `{subnet, rangeStart, rangeEnd, gateway}` object found at `path`.
pub fn parse_range(v: &Value, path: &str) -> Result<Range, Error> {
    if !v.is_object() {
        return Err(Error::config(format!(
            "{path} must be an object with a subnet, not {v}"
        )));
    }
    let subnet_path = format!("{path}.subnet");
    let subnet_str = optional_str(v.get("subnet"), &subnet_path)?
        .ok_or_else(|| Error::config(format!("{subnet_path} is missing")))?;
    let net = parse_cidr(subnet_str).ok_or_else(|| {
        Error::config(format!(
            "{subnet_path} \"{subnet_str}\" is not a valid CIDR"
        ))
    })?;
    if let IpAddr::V6(v6) = net.ip() {
        if v6.to_ipv4_mapped().is_some() {
            return Err(Error::config(format!(
                "{subnet_path} \"{subnet_str}\" is an IPv4-mapped IPv6 subnet; write it as an IPv4 subnet"
            )));
        }
    }
    let bits: u8 = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() > bits - 2 {
        return Err(Error::config(format!(
            "{subnet_path} \"{subnet_str}\" is too small to allocate from: the prefix must be at most /{}",
            bits - 2
        )));
    }
    if net.network() != net.ip() {
        return Err(Error::config(format!(
            "{subnet_path} \"{subnet_str}\" has host bits set: for a /{} the network address is {}",
            net.prefix(),
            net.network()
        )));
    }
    let network = to_u128(net.network());
    let broadcast = to_u128(net.broadcast());
    let first = from_u128(network + 1, net.ip());
    let last = if net.is_ipv4() {
        from_u128(broadcast - 1, net.ip())
    } else {
        net.broadcast()
    };
    let subnet = IpNetwork::new(net.network(), net.prefix())
        .map_err(|e| Error::config(format!("{subnet_path} \"{subnet_str}\": {e}")))?;

    let check = |key: &str, ip: IpAddr| -> Result<IpAddr, Error> {
        if ip.is_ipv4() != subnet.is_ipv4() || !subnet.contains(ip) {
            return Err(Error::config(format!(
                "{path}.{key} {ip} is not in {subnet_path} {subnet}"
            )));
        }
        Ok(ip)
    };
    let start = optional_ip(v, "rangeStart", path)?
        .map(|ip| check("rangeStart", ip))
        .transpose()?
        .unwrap_or(first);
    let end = optional_ip(v, "rangeEnd", path)?
        .map(|ip| check("rangeEnd", ip))
        .transpose()?
        .unwrap_or(last);
    if to_u128(start) > to_u128(end) {
        return Err(Error::config(format!(
            "{path}.rangeStart {start} is after {path}.rangeEnd {end}"
        )));
    }
    let gateway = match optional_ip(v, "gateway", path)? {
        // The reference accepts a gateway outside the subnet; only the family must match.
        Some(gw) if gw.is_ipv4() != subnet.is_ipv4() => {
            return Err(Error::config(format!(
                "{path}.gateway {gw} is not of the same IP family as {subnet_path} {subnet}"
            )))
        }
        Some(gw) => gw,
        None => first,
    };
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_route(v: &Value, path: &str) -> Result<Route, Error> {
    if !v.is_object() {
        return Err(Error::config(format!(
            "{path} must be an object with a dst, not {v}"
        )));
    }
    let dst_path = format!("{path}.dst");
    let dst_str = optional_str(v.get("dst"), &dst_path)?
        .ok_or_else(|| Error::config(format!("{dst_path} is missing")))?;
    let dst = parse_cidr(dst_str)
        .ok_or_else(|| Error::config(format!("{dst_path} \"{dst_str}\" is not a valid CIDR")))?;
    let gw = optional_ip(v, "gw", path)?;
    let num = |key: &str| -> Result<Option<u32>, Error> {
        match non_null(v.get(key)) {
            None => Ok(None),
            Some(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::config(format!(
                        "{path}.{key} must be a non-negative integer, not {n}"
                    ))
                }),
        }
    };
    let scope = match num("scope")? {
        None => None,
        Some(s) => Some(
            u8::try_from(s)
                .map_err(|_| Error::config(format!("{path}.scope {s} is out of range 0-255")))?,
        ),
    };
    Ok(Route {
        dst,
        gw,
        mtu: num("mtu")?,
        adv_mss: num("advmss")?,
        priority: num("priority")?,
        table: num("table")?,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(ipam: Value) -> Result<IpamConfig, Error> {
        IpamConfig::parse(
            "net",
            &json!({ "cniVersion": "1.0.0", "name": "net", "ipam": ipam }),
        )
    }

    fn err(ipam: Value) -> String {
        let e = parse(ipam).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_v4_and_v6() {
        let c = parse(json!({"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]]})).unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.store_dir(), PathBuf::from("/var/lib/cni/networks/net"));
        let v4 = &c.range_sets[0].ranges[0];
        assert_eq!(
            (v4.start, v4.end, v4.gateway),
            (ip("10.244.1.1"), ip("10.244.1.254"), ip("10.244.1.1"))
        );
        let v6 = &c.range_sets[1].ranges[0];
        assert_eq!(
            (v6.start, v6.end, v6.gateway),
            (
                ip("fd00:1::1"),
                ip("fd00:1::ffff:ffff:ffff:ffff"),
                ip("fd00:1::1")
            )
        );
        assert_eq!(c.resolv_conf, None);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn explicit_fields_and_smallest_subnets() {
        let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/30", "rangeStart": "10.0.0.2", "rangeEnd": "10.0.0.2", "gateway": "10.0.0.1"}]],
                             "dataDir": "/tmp/x", "resolvConf": "/etc/r"}))
        .unwrap();
        let r = &c.range_sets[0].ranges[0];
        assert_eq!((r.start, r.end), (ip("10.0.0.2"), ip("10.0.0.2")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/r")));
        assert!(parse(json!({"ranges": [[{"subnet": "fd00::/126"}]]})).is_ok());
        // "" is unset, like Go's net.IP decoding.
        let c = parse(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "", "gateway": null}]]}),
        )
        .unwrap();
        assert_eq!(c.range_sets[0].ranges[0].start, ip("10.0.0.1"));
    }

    #[test]
    fn invalid_ranges_name_field_and_value() {
        assert_eq!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]})),
            "ipam.ranges[0][0].subnet \"10.0.0.0/33\" is not a valid CIDR"
        );
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.0/31"}]]})).contains("too small"));
        assert!(err(json!({"ranges": [[{"subnet": "fd00::/127"}]]})).contains("too small"));
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.1/24"}]]}))
            .contains("host bits set: for a /24 the network address is 10.0.0.0"));
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.0"}]]})).contains("not a valid CIDR"));
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.0/+8"}]]})).contains("not a valid CIDR"));
        assert!(err(json!({"ranges": [[{"gateway": "10.0.0.1"}]]}))
            .contains("ipam.ranges[0][0].subnet is missing"));
        assert!(err(json!({"ranges": [[{"subnet": 5}]]})).contains("must be a string"));
        assert_eq!(
            err(
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "rangeStart": "10.0.2.5"}]]})
            ),
            "ipam.ranges[0][1].rangeStart 10.0.2.5 is not in ipam.ranges[0][1].subnet 10.0.1.0/24"
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.0"}]]}))
                .contains("rangeEnd 10.0.1.0 is not in")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "fd00::1"}]]}))
                .contains("rangeEnd fd00::1 is not in")
        );
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.9", "rangeEnd": "10.0.0.8"}]]})).contains("is after"));
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": "bogus"}]]}))
                .contains("ipam.ranges[0][0].rangeStart \"bogus\" is not a valid IP address")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "fd00::1"}]]}))
                .contains("gateway fd00::1")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}))
                .contains("same IP family")
        );
        assert!(err(json!({"ranges": [[]]})).contains("ipam.ranges[0] is an empty range set"));
        assert!(err(json!({"ranges": []})).contains("no IP ranges"));
        assert!(err(json!({})).contains("no IP ranges"));
        assert!(err(json!({"ranges": {}})).contains("must be a list"));
        assert!(
            err(json!({"ranges": [[{"subnet": "::ffff:10.0.0.0/120"}]]})).contains("IPv4-mapped")
        );
        let e = IpamConfig::parse("net", &json!({"name": "net"})).unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn gateway_outside_subnet_is_accepted_like_the_reference() {
        let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "192.168.0.1"}]]}))
            .unwrap();
        assert_eq!(c.range_sets[0].ranges[0].gateway, ip("192.168.0.1"));
    }

    #[test]
    fn overlaps_are_errors() {
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.0/25"}]]}))
                .contains("ipam.ranges[0][1] (10.0.0.1-10.0.0.126) overlaps ipam.ranges[0][0]")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/16"}]]}))
                .contains(
                "range set ipam.ranges[0] (10.0.0.1-10.0.0.254) overlaps range set ipam.ranges[1]"
            )
        );
        // Disjoint slices of one subnet do not overlap.
        assert!(parse(
            json!({"ranges": [[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}],
                                          [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.101"}]]})
        )
        .is_ok());
    }

    #[test]
    fn set_order_runtime_then_legacy_then_ranges() {
        let conf = json!({
            "name": "net",
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.1.0.0/16"}]]},
            "ipam": {"subnet": "10.2.0.0/16", "rangeStart": "10.2.0.10", "gateway": "10.2.0.254",
                     "ranges": [[{"subnet": "10.3.0.0/16"}]]}
        });
        let c = IpamConfig::parse("net", &conf).unwrap();
        let subnets: Vec<String> = c
            .range_sets
            .iter()
            .map(|s| s.ranges[0].subnet.to_string())
            .collect();
        assert_eq!(subnets, ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"]);
        assert_eq!(c.range_sets[1].ranges[0].start, ip("10.2.0.10"));
        assert_eq!(c.range_sets[1].ranges[0].gateway, ip("10.2.0.254"));
        let bad = json!({"name": "n", "ipam": {"subnet": "10.2.0.0/16", "rangeEnd": "x"}});
        assert!(IpamConfig::parse("n", &bad)
            .unwrap_err()
            .to_string()
            .contains("ipam.rangeEnd \"x\""));
        let bad = json!({"name": "n", "runtimeConfig": {"ipRanges": [[{"subnet": "10.0.0.0/40"}]]}, "ipam": {}});
        assert!(IpamConfig::parse("n", &bad)
            .unwrap_err()
            .to_string()
            .contains("runtimeConfig.ipRanges[0][0].subnet"));
    }

    #[test]
    fn routes() {
        let c = parse(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.0.0.254", "priority": 10}]}))
        .unwrap();
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[0].gw, None);
        assert_eq!(c.routes[1].gw, Some(ip("10.0.0.254")));
        assert_eq!(c.routes[1].priority, Some(10));
        assert!(err(
            json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"gw": "10.0.0.1"}]})
        )
        .contains("ipam.routes[0].dst is missing"));
        assert!(
            err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "x"}]}))
                .contains("ipam.routes[0].dst \"x\"")
        );
        assert!(err(json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "1"}]})).contains("ipam.routes[0].gw"));
    }

    #[test]
    fn requested_ips_from_all_sources() {
        let conf = json!({"args": {"cni": {"ips": ["10.0.0.5/24", "10.0.0.6"]}}, "runtimeConfig": {"ips": ["fd00::5", "10.0.0.6"]}});
        let ips = requested_ips(
            &conf,
            "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.7, 10.0.0.8",
        )
        .unwrap();
        let want: Vec<IpAddr> = ["10.0.0.7", "10.0.0.8", "10.0.0.5", "10.0.0.6", "fd00::5"]
            .iter()
            .map(|s| ip(s))
            .collect();
        assert_eq!(ips, want);
        assert_eq!(
            requested_ips(&json!({}), "IP=::ffff:10.0.0.1").unwrap(),
            vec![ip("10.0.0.1")]
        );
        assert_eq!(requested_ips(&json!({}), "IP=nope").unwrap_err().code(), 4);
        assert_eq!(
            requested_ips(&json!({}), "K8S_POD_NAME=x")
                .unwrap_err()
                .code(),
            4
        );
        assert_eq!(
            requested_ips(&json!({"runtimeConfig": {"ips": ["10.0.0.1/99"]}}), "")
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            requested_ips(&json!({"args": {"cni": {"ips": "10.0.0.1"}}}), "")
                .unwrap_err()
                .code(),
            7
        );
        assert!(requested_ips(&json!({"args": {"cni": {"ips": null}}}), "")
            .unwrap()
            .is_empty());
    }
}
