//! Routes (main table unless `table` is set).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Netlink};

const RT_TABLE_MAIN: u32 = 254;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
/// In a delete request, "any scope".
const RT_SCOPE_NOWHERE: u8 = 255;
/// Protocol used when the caller does not choose one (same as `ip route add`).
const RTPROT_BOOT: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn af(self) -> AddressFamily {
        match self {
            IpFamily::V4 => AddressFamily::Inet,
            IpFamily::V6 => AddressFamily::Inet6,
        }
    }
}

/// A unicast route. Build with `Route::new(dst)` and set what you need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Gateway is reachable on `oif` even without a matching subnet.
    pub onlink: bool,
    /// RT_SCOPE_*; default: link for device routes, universe otherwise.
    pub scope: Option<u8>,
    /// Routing table; default main (254).
    pub table: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    /// RTPROT_*; default boot (3) on add, "any" on delete.
    pub protocol: Option<u8>,
}

/// The IPv4 default route (0.0.0.0/0) with nothing else set, so callers can
/// write `Route { dst, oif, ..Default::default() }`.
impl Default for Route {
    fn default() -> Self {
        // new_checked(0.0.0.0, 0) cannot fail; the fallback only avoids a panic path.
        let any = Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0)
            .unwrap_or_else(|| Ipv4Network::from(Ipv4Addr::UNSPECIFIED));
        Route::new(IpNetwork::V4(any))
    }
}

impl Route {
    pub fn new(dst: IpNetwork) -> Route {
        Route {
            dst,
            gateway: None,
            oif: None,
            onlink: false,
            scope: None,
            table: None,
            priority: None,
            mtu: None,
            advmss: None,
            protocol: None,
        }
    }

    pub fn family(&self) -> IpFamily {
        match self.dst {
            IpNetwork::V4(_) => IpFamily::V4,
            IpNetwork::V6(_) => IpFamily::V6,
        }
    }

    fn describe(&self) -> String {
        let mut s = self.dst.to_string();
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev #{oif}"));
        }
        if self.onlink {
            s.push_str(" onlink");
        }
        if let Some(t) = self.table {
            s.push_str(&format!(" table {t}"));
        }
        s
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Add,
    Delete,
}

pub(crate) fn route_msg(r: &Route, purpose: Purpose) -> Result<RouteMessage, Error> {
    if let Some(gw) = r.gateway {
        if gw.is_ipv4() != r.dst.is_ipv4() {
            return Err(Error::Invalid(format!(
                "route {}: gateway family differs from destination",
                r.describe()
            )));
        }
    }
    let table = r.table.unwrap_or(RT_TABLE_MAIN);
    let mut m = RouteMessage::default();
    let h = &mut m.header;
    h.address_family = r.family().af();
    h.destination_prefix_length = r.dst.prefix();
    // Tables above 255 only fit in RTA_TABLE; the header says "unspec".
    h.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    match purpose {
        Purpose::Add => {
            h.protocol = RouteProtocol::from(r.protocol.unwrap_or(RTPROT_BOOT));
            let default_scope = if r.gateway.is_none() && r.oif.is_some() {
                RT_SCOPE_LINK
            } else {
                RT_SCOPE_UNIVERSE
            };
            h.scope = RouteScope::from(r.scope.unwrap_or(default_scope));
            h.kind = RouteType::Unicast;
        }
        Purpose::Delete => {
            // Unspecified fields are wildcards for the kernel's match.
            h.protocol = RouteProtocol::from(r.protocol.unwrap_or(0));
            h.scope = RouteScope::from(r.scope.unwrap_or(RT_SCOPE_NOWHERE));
            h.kind = RouteType::Unspec;
        }
    }
    if r.onlink {
        h.flags |= RouteFlags::Onlink;
    }
    if r.dst.prefix() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_addr(r.dst.network())));
    }
    m.attributes.push(RouteAttribute::Table(table));
    if let Some(gw) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(route_addr(gw)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(p) = r.priority {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    if purpose == Purpose::Add {
        let mut metrics = Vec::new();
        if let Some(mtu) = r.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(advmss) = r.advmss {
            metrics.push(RouteMetric::Advmss(advmss));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
    }
    Ok(m)
}

/// Decode a unicast route; other types (local, broadcast, blackhole...) and
/// cloned cache entries give `None`.
pub(crate) fn route_from_msg(m: &RouteMessage) -> Option<Route> {
    let h = &m.header;
    if h.kind != RouteType::Unicast || h.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst_ip = unspecified;
    let mut r = Route::new(IpNetwork::new(unspecified, 0).ok()?);
    r.onlink = h.flags.contains(RouteFlags::Onlink);
    r.scope = Some(h.scope.into());
    r.protocol = Some(h.protocol.into());
    r.table = Some(u32::from(h.table));
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_ip = ip_of(d)?,
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => r.table = Some(*t),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    match x {
                        RouteMetric::Mtu(v) => r.mtu = Some(*v),
                        RouteMetric::Advmss(v) => r.advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r.dst = IpNetwork::new(dst_ip, h.destination_prefix_length).ok()?;
    Some(r)
}

impl Netlink {
    /// Unicast routes of one family in the main table.
    pub fn routes(&mut self, family: IpFamily) -> Result<Vec<Route>, Error> {
        self.routes_in_table(family, Some(RT_TABLE_MAIN))
    }

    /// Unicast routes in `table`, or in every table when `None`.
    pub fn routes_in_table(
        &mut self,
        family: IpFamily,
        table: Option<u32>,
    ) -> Result<Vec<Route>, Error> {
        let mut req = RouteMessage::default();
        req.header.address_family = family.af();
        let msgs = self
            .sock
            .dump(RouteNetlinkMessage::GetRoute(req), "dump routes")?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) if r.header.address_family == family.af() => {
                    route_from_msg(r)
                }
                _ => None,
            })
            .filter(|r| table.is_none() || r.table == table)
            .collect())
    }

    /// Add a route; EEXIST if an identical one exists.
    pub fn add_route(&mut self, route: &Route) -> Result<(), Error> {
        let m = route_msg(route, Purpose::Add)?;
        self.sock
            .request(
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add route {}", route.describe()),
            )
            .map(drop)
    }

    /// Add or replace a route.
    pub fn replace_route(&mut self, route: &Route) -> Result<(), Error> {
        let m = route_msg(route, Purpose::Add)?;
        self.sock
            .request(
                RouteNetlinkMessage::NewRoute(m),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!("replace route {}", route.describe()),
            )
            .map(drop)
    }

    /// Delete a route; fields left `None` match anything (ESRCH if none matches).
    pub fn del_route(&mut self, route: &Route) -> Result<(), Error> {
        let m = route_msg(route, Purpose::Delete)?;
        self.sock
            .request(
                RouteNetlinkMessage::DelRoute(m),
                0,
                &format!("delete route {}", route.describe()),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn add_message_defaults() -> TestResult {
        let mut r = Route::new("10.244.1.0/24".parse()?);
        r.gateway = Some("198.51.100.2".parse()?);
        r.oif = Some(4);
        r.onlink = true;
        r.mtu = Some(1450);
        let m = route_msg(&r, Purpose::Add)?;
        assert_eq!(m.header.table, 254);
        assert_eq!(u8::from(m.header.scope), RT_SCOPE_UNIVERSE);
        assert_eq!(u8::from(m.header.protocol), RTPROT_BOOT);
        assert!(m.header.flags.contains(RouteFlags::Onlink));
        assert!(m
            .attributes
            .contains(&RouteAttribute::Metrics(vec![RouteMetric::Mtu(1450)])));
        // What we send decodes back to the same route (plus defaults).
        let mut back = route_from_msg(&m).ok_or("no route")?;
        assert_eq!(back.table, Some(254));
        back.table = None;
        back.scope = None;
        back.protocol = None;
        assert_eq!(back, r);
        Ok(())
    }

    #[test]
    fn device_route_is_link_scope_and_big_table() -> TestResult {
        let mut r = Route::new("10.244.0.0/16".parse()?);
        r.oif = Some(2);
        r.table = Some(1000);
        let m = route_msg(&r, Purpose::Add)?;
        assert_eq!(u8::from(m.header.scope), RT_SCOPE_LINK);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        Ok(())
    }

    #[test]
    fn delete_uses_wildcards_and_default_route_has_no_dst() -> TestResult {
        let r = Route::new("0.0.0.0/0".parse()?);
        let m = route_msg(&r, Purpose::Delete)?;
        assert_eq!(u8::from(m.header.scope), RT_SCOPE_NOWHERE);
        assert_eq!(u8::from(m.header.protocol), 0);
        assert!(!m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        Ok(())
    }

    #[test]
    fn default_is_v4_default_route() {
        let r = Route::default();
        assert_eq!(r.dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.oif, None);
    }

    #[test]
    fn mixed_family_gateway_is_rejected() -> TestResult {
        let mut r = Route::new("10.244.0.0/16".parse()?);
        r.gateway = Some("fe80::1".parse()?);
        assert!(matches!(
            route_msg(&r, Purpose::Add),
            Err(Error::Invalid(_))
        ));
        Ok(())
    }
}
