//! The underlay: the external interface weftd sends pod traffic through,
//! and how the main table reaches a peer's public IP (directly, through a
//! gateway, or not at all), which host-gw and DirectRouting depend on.

use super::BackendError;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_netlink::{IpFamily, Netlink, Route};

/// The external interface weftd sends VXLAN through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub ip: Ipv4Addr,
    /// The interface's first global IPv6 address (the default PublicIPv6).
    pub ip6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Every global address on the interface, with its prefix: no peer
    /// subnet may overlap these.
    pub nets: Vec<IpNetwork>,
}

fn first_v4(nl: &mut Netlink, index: u32) -> Result<Option<Ipv4Addr>, weft_netlink::Error> {
    Ok(nl
        .addresses(Some(index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE
        .find_map(|a| match a.net {
            IpNetwork::V4(n) => Some(n.ip()),
            _ => None,
        }))
}

fn first_global_v6(nl: &mut Netlink, index: u32) -> Result<Option<Ipv6Addr>, weft_netlink::Error> {
    Ok(nl
        .addresses(Some(index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE: not link-local
        .find_map(|a| match a.net {
            IpNetwork::V6(n) if !n.ip().is_loopback() => Some(n.ip()),
            _ => None,
        }))
}

/// Pick the underlay: the first of `ifaces` (names or IPs) that exists,
/// else the interface of the IPv4 default route with the lowest metric.
/// `ip6` is that interface's first global IPv6 address, if any.
pub fn find_underlay(nl: &mut Netlink, ifaces: &[String]) -> Result<Underlay, BackendError> {
    let mut u = find_underlay_v4(nl, ifaces)?;
    u.ip6 = first_global_v6(nl, u.index)?;
    u.nets = nl
        .addresses(Some(u.index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE
        .map(|a| a.net)
        .collect();
    Ok(u)
}

fn find_underlay_v4(nl: &mut Netlink, ifaces: &[String]) -> Result<Underlay, BackendError> {
    let links = nl.links()?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            let addrs = nl.addresses(None)?;
            if let Some(a) = addrs.iter().find(|a| a.net.ip() == ip) {
                if let (Some(l), IpAddr::V4(v4)) = (by_index(a.index), ip) {
                    return Ok(Underlay::of(l, v4));
                }
            }
        } else if let Some(l) = links.iter().find(|l| &l.name == want) {
            let ip = first_v4(nl, l.index)?.ok_or_else(|| {
                BackendError::Setup(format!("interface {} has no global IPv4 address", l.name))
            })?;
            return Ok(Underlay::of(l, ip));
        }
    }
    if !ifaces.is_empty() {
        return Err(BackendError::Setup(format!(
            "none of --iface {} matches an interface name or an IPv4 address on this node",
            ifaces.join(",")
        )));
    }
    let mut defaults: Vec<Route> = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .filter(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .collect();
    defaults.sort_by_key(|r| r.priority.unwrap_or(0));
    let r = defaults.first().ok_or_else(|| {
        BackendError::Setup("no IPv4 default route to pick the interface from; use --iface".into())
    })?;
    let oif = r.oif.unwrap_or_default();
    let l = by_index(oif)
        .ok_or_else(|| BackendError::Setup(format!("default route interface #{oif} not found")))?;
    let ip = first_v4(nl, l.index)?.ok_or_else(|| {
        BackendError::Setup(format!("interface {} has no global IPv4 address", l.name))
    })?;
    Ok(Underlay::of(l, ip))
}

impl Underlay {
    /// The link and its IPv4 address; `ip6` and `nets` are filled in later.
    fn of(l: &weft_netlink::Link, ip: Ipv4Addr) -> Underlay {
        Underlay {
            index: l.index,
            name: l.name.clone(),
            ip,
            ip6: None,
            mtu: l.mtu,
            nets: Vec::new(),
        }
    }
}

/// How the underlay reaches an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On-link through the underlay interface (a route without gateway).
    Direct,
    /// Through a gateway, or through another interface.
    Routed,
    /// No route at all.
    None,
}

/// The underlay routes of the main table, for reachability: every route
/// that is not inside one of the pod networks (pod routes never hold a
/// public IP: leases whose PublicIP lies inside Network are rejected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnderlayRoutes(Vec<Route>);

impl UnderlayRoutes {
    pub fn new(routes: impl IntoIterator<Item = Route>, pod_networks: &[IpNetwork]) -> Self {
        let inside = |r: &Route| {
            pod_networks
                .iter()
                .any(|n| n.contains(r.dst.network()) && n.prefix() <= r.dst.prefix())
        };
        let mut v: Vec<Route> = routes.into_iter().filter(|r| !inside(r)).collect();
        // Longest prefix first, then lowest metric: the first match wins.
        v.sort_by_key(|r| (std::cmp::Reverse(r.dst.prefix()), r.priority.unwrap_or(0)));
        UnderlayRoutes(v)
    }

    /// What `ip route get ADDR` would use, reduced to what host-gw and
    /// DirectRouting need.
    pub fn reach(&self, underlay: u32, ip: IpAddr) -> Reach {
        match self.0.iter().find(|r| r.dst.contains(ip)) {
            None => Reach::None,
            Some(r) if r.gateway.is_none() && r.oif == Some(underlay) => Reach::Direct,
            Some(_) => Reach::Routed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dst: &str, gw: Option<&str>, oif: u32) -> Route {
        let mut r = Route::new(dst.parse().unwrap());
        r.gateway = gw.map(|g| g.parse().unwrap());
        r.oif = Some(oif);
        r
    }

    #[test]
    fn reach_follows_the_longest_prefix() {
        let rs = UnderlayRoutes::new(
            [
                r("198.51.100.0/24", None, 2),
                r("203.0.113.0/24", Some("198.51.100.1"), 2),
                r("192.0.2.0/24", None, 3),
                r("10.244.7.0/24", Some("198.51.100.7"), 2),
            ],
            &["10.244.0.0/16".parse().unwrap()],
        );
        let ip = |s: &str| s.parse().unwrap();
        assert_eq!(rs.reach(2, ip("198.51.100.7")), Reach::Direct);
        assert_eq!(rs.reach(2, ip("203.0.113.7")), Reach::Routed);
        assert_eq!(
            rs.reach(2, ip("192.0.2.7")),
            Reach::Routed,
            "another interface"
        );
        assert_eq!(rs.reach(2, ip("100.64.0.1")), Reach::None);
    }
}
