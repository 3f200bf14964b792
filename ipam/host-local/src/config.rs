//! The host-local config: decoding (serde, see `decode.rs`), then
//! canonicalization and validation, with every error naming the offending
//! field and value. Keys host-local does not read are ignored, as the
//! reference ignores them.
//!
//! Range sets come, in this order (which fixes the `last_reserved_ip.N`
//! index N, as in the reference): `runtimeConfig.ipRanges`, then the legacy
//! top-level `ipam.subnet` range, then `ipam.ranges`.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use weft_cni::args::CniArgs;
use weft_cni::{Error, Route};

use crate::decode::{self, decode, object, parse_cidr, parse_ip, required, shaped, Kind};
use crate::range::{from_u128, to_u128, Range, RangeSet};

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

/// What every command reads of the network config.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNet {
    #[serde(default, deserialize_with = "object")]
    ipam: Option<RawIpam>,
    #[serde(default, deserialize_with = "object")]
    runtime_config: Option<RawRuntime>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntime {
    /// The `ipRanges` capability.
    #[serde(default, deserialize_with = "range_sets")]
    ip_ranges: Option<Vec<RawRangeSet>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default, deserialize_with = "range_sets")]
    ranges: Option<Vec<RawRangeSet>>,
    #[serde(default, deserialize_with = "routes")]
    routes: Option<Vec<RawRoute>>,
    #[serde(default, deserialize_with = "decode::text")]
    data_dir: Option<String>,
    #[serde(default, deserialize_with = "decode::text")]
    resolv_conf: Option<String>,
}

/// The legacy single range: a range's keys at the top of `ipam`, decoded
/// on their own so that errors name them `ipam.subnet` and so on.
#[derive(Deserialize)]
struct RawLegacy {
    #[serde(default, deserialize_with = "object")]
    ipam: Option<RawRange>,
}

/// One range set: a list of ranges.
struct RawRangeSet(Vec<RawRange>);

/// One `{subnet, rangeStart, rangeEnd, gateway}` object, each key decoded
/// but not yet checked against the others.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    #[serde(default, deserialize_with = "subnet")]
    subnet: Option<IpNetwork>,
    #[serde(default, deserialize_with = "decode::ip")]
    range_start: Option<IpAddr>,
    #[serde(default, deserialize_with = "decode::ip")]
    range_end: Option<IpAddr>,
    #[serde(default, deserialize_with = "decode::ip")]
    gateway: Option<IpAddr>,
}

#[derive(Deserialize)]
struct RawRoute {
    #[serde(default, deserialize_with = "decode::cidr")]
    dst: Option<IpNetwork>,
    #[serde(default, deserialize_with = "decode::ip")]
    gw: Option<IpAddr>,
    #[serde(default, deserialize_with = "decode::uint")]
    mtu: Option<u32>,
    #[serde(default, deserialize_with = "decode::uint")]
    advmss: Option<u32>,
    #[serde(default, deserialize_with = "decode::uint")]
    priority: Option<u32>,
    #[serde(default, deserialize_with = "decode::uint")]
    table: Option<u32>,
    #[serde(default, deserialize_with = "decode::uint")]
    scope: Option<u32>,
}

fn range_sets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawRangeSet>>, D::Error> {
    shaped(d, Kind::List, "a list of range sets")
}

impl<'de> Deserialize<'de> for RawRangeSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let ranges: Vec<RangeItem> = required(d, Kind::List, "a list of ranges")?;
        Ok(RawRangeSet(ranges.into_iter().map(|r| r.0).collect()))
    }
}

/// A range as an item of a range set, where it must be an object.
struct RangeItem(RawRange);

impl<'de> Deserialize<'de> for RangeItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        required(d, Kind::Object, "an object with a subnet").map(RangeItem)
    }
}

fn routes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawRoute>>, D::Error> {
    let items: Option<Vec<RouteItem>> = shaped(d, Kind::List, "a list of routes")?;
    Ok(items.map(|routes| routes.into_iter().map(|r| r.0).collect()))
}

/// A route as an item of `routes`, where it must be an object.
struct RouteItem(RawRoute);

impl<'de> Deserialize<'de> for RouteItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        required(d, Kind::Object, "an object with a dst").map(RouteItem)
    }
}

/// A range's subnet: a CIDR written as its network address, IPv4 as IPv4,
/// with room for at least two addresses. Unset as `decode::text`.
fn subnet<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNetwork>, D::Error> {
    decode::text(d)?
        .map(|s| check_subnet(&s).map_err(D::Error::custom))
        .transpose()
}

fn check_subnet(s: &str) -> Result<IpNetwork, String> {
    let net = parse_cidr(s).ok_or_else(|| format!("\"{s}\" is not a valid CIDR"))?;
    if let IpAddr::V6(v6) = net.ip() {
        if v6.to_ipv4_mapped().is_some() {
            return Err(format!(
                "\"{s}\" is an IPv4-mapped IPv6 subnet; write it as an IPv4 subnet"
            ));
        }
    }
    let bits: u8 = if net.is_ipv4() { 32 } else { 128 };
    if net.prefix() > bits - 2 {
        return Err(format!(
            "\"{s}\" is too small to allocate from: the prefix must be at most /{}",
            bits - 2
        ));
    }
    if net.network() != net.ip() {
        return Err(format!(
            "\"{s}\" has host bits set: for a /{} the network address is {}",
            net.prefix(),
            net.network()
        ));
    }
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| format!("\"{s}\": {e}"))
}

impl IpamConfig {
    /// Parse the full network config (`name`, `ipam`, `runtimeConfig`).
    pub fn parse(name: &str, config: &Value) -> Result<IpamConfig, Error> {
        let net: RawNet = decode(config)?;
        let ipam = net
            .ipam
            .ok_or_else(|| Error::config("the network config has no \"ipam\" section"))?;
        let mut sets: Vec<(String, RangeSet)> = Vec::new();
        if let Some(runtime) = net.runtime_config.and_then(|r| r.ip_ranges) {
            sets.extend(parse_range_sets(&runtime, "runtimeConfig.ipRanges")?);
        }
        let legacy: RawLegacy = decode(config)?;
        if let Some(range) = legacy.ipam.filter(|r| r.subnet.is_some()) {
            let ranges = vec![parse_range(&range, "ipam")?];
            sets.push(("ipam.subnet".into(), RangeSet { ranges }));
        }
        if let Some(ranges) = &ipam.ranges {
            sets.extend(parse_range_sets(ranges, "ipam.ranges")?);
        }
        if sets.is_empty() {
            return Err(Error::config(
                "no IP ranges specified: set ipam.ranges (or ipam.subnet)",
            ));
        }
        refuse_overlapping_sets(&sets)?;
        let routes = ipam
            .routes
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| parse_route(r, &format!("ipam.routes[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(IpamConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(ipam.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)),
            range_sets: sets.into_iter().map(|(_, s)| s).collect(),
            routes,
            resolv_conf: ipam.resolv_conf.map(PathBuf::from),
        })
    }

    /// The directory holding this network's reservations.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

fn refuse_overlapping_sets(sets: &[(String, RangeSet)]) -> Result<(), Error> {
    for (i, (path_a, a)) in sets.iter().enumerate() {
        for (path_b, b) in sets.iter().skip(i + 1) {
            if a.overlaps(b) {
                return Err(Error::config(format!(
                    "range set {path_a} ({a}) overlaps range set {path_b} ({b})"
                )));
            }
        }
    }
    Ok(())
}

/// What ADD reads of the network config besides [`IpamConfig`]: the
/// addresses asked for in `args.cni.ips` and `runtimeConfig.ips`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequests {
    #[serde(default, deserialize_with = "object")]
    args: Option<RawArgs>,
    #[serde(default, deserialize_with = "object")]
    runtime_config: Option<RawIps>,
}

#[derive(Deserialize)]
struct RawArgs {
    #[serde(default, deserialize_with = "object")]
    cni: Option<RawIps>,
}

#[derive(Deserialize)]
struct RawIps {
    #[serde(default, deserialize_with = "addresses")]
    ips: Option<Vec<Address>>,
}

fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Address>>, D::Error> {
    shaped(d, Kind::List, "a list of addresses")
}

/// A requested address: "ip" or "ip/prefix" (the prefix is checked, then dropped).
struct Address(IpAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let item = Value::deserialize(d)?;
        let Some(s) = item.as_str() else {
            return Err(D::Error::custom(format!("must be a string, not {item}")));
        };
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        let valid_prefix = s.split_once('/').is_none() || parse_cidr(s).is_some();
        match parse_ip(addr) {
            Some(ip) if valid_prefix => Ok(Address(ip)),
            _ => Err(D::Error::custom(format!(
                "\"{s}\" is not a valid IP address"
            ))),
        }
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
    let raw: RawRequests = decode(config)?;
    let from_args = raw.args.and_then(|a| a.cni).and_then(|c| c.ips);
    let from_runtime = raw.runtime_config.and_then(|r| r.ips);
    out.extend(
        from_args
            .into_iter()
            .chain(from_runtime)
            .flatten()
            .map(|a| a.0),
    );
    let mut unique = Vec::with_capacity(out.len());
    for ip in out {
        if !unique.contains(&ip) {
            unique.push(ip);
        }
    }
    Ok(unique)
}

fn parse_range_sets(sets: &[RawRangeSet], path: &str) -> Result<Vec<(String, RangeSet)>, Error> {
    let mut out = Vec::with_capacity(sets.len());
    for (i, RawRangeSet(ranges)) in sets.iter().enumerate() {
        let set_path = format!("{path}[{i}]");
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

/// Canonicalize the range found at `path`: defaults filled in, its keys
/// checked against each other.
fn parse_range(raw: &RawRange, path: &str) -> Result<Range, Error> {
    let subnet_path = format!("{path}.subnet");
    let subnet = raw
        .subnet
        .ok_or_else(|| Error::config(format!("{subnet_path} is missing")))?;
    let network = to_u128(subnet.network());
    let broadcast = to_u128(subnet.broadcast());
    let first = from_u128(network + 1, subnet.ip());
    let last = if subnet.is_ipv4() {
        from_u128(broadcast - 1, subnet.ip())
    } else {
        subnet.broadcast()
    };
    let check = |key: &str, ip: IpAddr| -> Result<IpAddr, Error> {
        if ip.is_ipv4() != subnet.is_ipv4() || !subnet.contains(ip) {
            return Err(Error::config(format!(
                "{path}.{key} {ip} is not in {subnet_path} {subnet}"
            )));
        }
        Ok(ip)
    };
    let start = raw
        .range_start
        .map(|ip| check("rangeStart", ip))
        .transpose()?
        .unwrap_or(first);
    let end = raw
        .range_end
        .map(|ip| check("rangeEnd", ip))
        .transpose()?
        .unwrap_or(last);
    if to_u128(start) > to_u128(end) {
        return Err(Error::config(format!(
            "{path}.rangeStart {start} is after {path}.rangeEnd {end}"
        )));
    }
    let gateway = match raw.gateway {
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

fn parse_route(raw: &RawRoute, path: &str) -> Result<Route, Error> {
    let dst = raw
        .dst
        .ok_or_else(|| Error::config(format!("{path}.dst is missing")))?;
    let scope = raw
        .scope
        .map(|s| {
            u8::try_from(s)
                .map_err(|_| Error::config(format!("{path}.scope {s} is out of range 0-255")))
        })
        .transpose()?;
    Ok(Route {
        dst,
        gw: raw.gw,
        mtu: raw.mtu,
        adv_mss: raw.advmss,
        priority: raw.priority,
        table: raw.table,
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
    fn decode_errors_name_the_field_and_the_value() {
        let cases = [
            (
                json!({"ranges": {}}),
                "ipam.ranges must be a list of range sets, not {}",
            ),
            (
                json!({"ranges": [{"subnet": "10.0.0.0/24"}]}),
                r#"ipam.ranges[0] must be a list of ranges, not {"subnet":"10.0.0.0/24"}"#,
            ),
            (
                json!({"ranges": [["10.0.0.0/24"]]}),
                r#"ipam.ranges[0][0] must be an object with a subnet, not "10.0.0.0/24""#,
            ),
            (
                json!({"ranges": [[null]]}),
                "ipam.ranges[0][0] must be an object with a subnet, not null",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.1/24"}]]}),
                r#"ipam.ranges[0][0].subnet "10.0.0.1/24" has host bits set: for a /24 the network address is 10.0.0.0"#,
            ),
            (
                json!({"subnet": "10.0.0.0/24", "gateway": 7}),
                "ipam.gateway must be a string, not 7",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "mtu": -1}]}),
                "ipam.routes[0].mtu must be a non-negative integer, not -1",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "scope": 300}]}),
                "ipam.routes[0].scope 300 is out of range 0-255",
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "routes": ["0.0.0.0/0"]}),
                r#"ipam.routes[0] must be an object with a dst, not "0.0.0.0/0""#,
            ),
            (
                json!({"ranges": [[{"subnet": "10.0.0.0/24"}]], "dataDir": ["/x"]}),
                r#"ipam.dataDir must be a string, not ["/x"]"#,
            ),
        ];
        for (ipam, want) in cases {
            assert_eq!(err(ipam), want);
        }
        let e = IpamConfig::parse("n", &json!({"ipam": 5})).unwrap_err();
        assert_eq!(e.to_string(), "ipam must be an object, not 5");
        let e = IpamConfig::parse("n", &json!({"ipam": {}, "runtimeConfig": true})).unwrap_err();
        assert_eq!(e.to_string(), "runtimeConfig must be an object, not true");
        let e = requested_ips(&json!({"runtimeConfig": {"ips": ["10.0.0.1", 5]}}), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtimeConfig.ips[1] must be a string, not 5"
        );
        let e = requested_ips(&json!({"args": {"cni": {"ips": [""]}}}), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"args.cni.ips[0] "" is not a valid IP address"#
        );
    }

    #[test]
    fn unknown_keys_are_ignored_like_the_reference() {
        let conf = json!({
            "name": "net", "type": "bridge", "bridge": "cni0",
            "args": {"mesos": {"x": 1}, "cni": {"labels": [{"key": "a"}]}},
            "runtimeConfig": {"portMappings": [{"hostPort": 80}]},
            "ipam": {"type": "host-local", "extra": [1, {"a": null}],
                     "ranges": [[{"subnet": "10.0.0.0/24", "note": "x"}]],
                     "routes": [{"dst": "0.0.0.0/0", "via": "?"}]}
        });
        let c = IpamConfig::parse("net", &conf).unwrap();
        assert_eq!(c.range_sets.len(), 1);
        assert_eq!(c.routes.len(), 1);
        assert!(requested_ips(&conf, "").unwrap().is_empty());
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
