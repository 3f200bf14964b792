//! ARP/NDP neighbours and bridge/VXLAN forwarding-database entries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{format_mac, mac_from_slice, Error, Netlink};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    /// None while unresolved (INCOMPLETE/FAILED).
    pub mac: Option<[u8; 6]>,
    /// NUD_* bits, see [`crate::nud`].
    pub state: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    pub index: u32,
    pub mac: [u8; 6],
    /// Remote VTEP for VXLAN entries.
    pub dst: Option<IpAddr>,
    pub vlan: Option<u16>,
    /// NUD_* bits, see [`crate::nud`].
    pub state: u16,
    /// NTF_SELF: the entry belongs to the device itself (VXLAN FDB), not to
    /// a bridge master.
    pub is_self: bool,
}

fn addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// NDA_DST as an IP. In AF_BRIDGE replies it arrives as raw bytes.
fn ip_from(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        NeighbourAddress::Other(b) => {
            if let Ok(v4) = <[u8; 4]>::try_from(b.as_slice()) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else if let Ok(v6) = <[u8; 16]>::try_from(b.as_slice()) {
                Some(IpAddr::V6(Ipv6Addr::from(v6)))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

pub(crate) fn neigh_msg(index: u32, ip: IpAddr, mac: Option<[u8; 6]>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family_of(ip);
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    m.attributes.push(NeighbourAttribute::Destination(addr(ip)));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

pub(crate) fn fdb_msg(index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = index;
    m.header.state = NeighbourState::Permanent;
    // NTF_SELF: program the VXLAN device's own FDB, not a bridge's.
    m.header.flags = NeighbourFlags::Own;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(addr(dst)));
    m
}

pub(crate) fn neighbour_from_msg(m: &NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(d) => ip = ip_from(d),
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from_slice(b),
            _ => {}
        }
    }
    Some(Neighbour {
        index: m.header.ifindex,
        ip: ip?,
        mac,
        state: u16::from(m.header.state),
    })
}

pub(crate) fn fdb_from_msg(m: &NeighbourMessage) -> Option<FdbEntry> {
    let mut mac = None;
    let mut dst = None;
    let mut vlan = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => mac = mac_from_slice(b),
            NeighbourAttribute::Destination(d) => dst = ip_from(d),
            NeighbourAttribute::Vlan(v) => vlan = Some(*v),
            _ => {}
        }
    }
    Some(FdbEntry {
        index: m.header.ifindex,
        mac: mac?,
        dst,
        vlan,
        state: u16::from(m.header.state),
        is_self: m.header.flags.contains(NeighbourFlags::Own),
    })
}

impl Netlink {
    fn dump_neigh(
        &mut self,
        family: AddressFamily,
        op: &str,
    ) -> Result<Vec<NeighbourMessage>, Error> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        let msgs = self.sock.dump(RouteNetlinkMessage::GetNeighbour(req), op)?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// IPv4 and IPv6 neighbours of one link.
    pub fn neighbours(&mut self, index: u32) -> Result<Vec<Neighbour>, Error> {
        let msgs = self.dump_neigh(AddressFamily::Unspec, "dump neighbours")?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == index
                    && matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            })
            .filter_map(neighbour_from_msg)
            .collect())
    }

    /// Add or replace a permanent neighbour entry.
    pub fn replace_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::NewNeighbour(neigh_msg(index, ip, Some(mac))),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!(
                    "replace neighbour {ip} lladdr {} on #{index}",
                    format_mac(&mac)
                ),
            )
            .map(drop)
    }

    pub fn del_neighbour(&mut self, index: u32, ip: IpAddr) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::DelNeighbour(neigh_msg(index, ip, None)),
                0,
                &format!("delete neighbour {ip} on #{index}"),
            )
            .map(drop)
    }

    /// Forwarding-database entries of one device (AF_BRIDGE dump).
    pub fn fdb(&mut self, index: u32) -> Result<Vec<FdbEntry>, Error> {
        let msgs = self.dump_neigh(AddressFamily::Bridge, "dump fdb")?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.family == AddressFamily::Bridge)
            .filter_map(fdb_from_msg)
            .collect())
    }

    /// Add or replace a permanent `mac -> dst` entry in a VXLAN device's FDB.
    pub fn replace_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::NewNeighbour(fdb_msg(index, mac, dst)),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!("replace fdb {} dst {dst} on #{index}", format_mac(&mac)),
            )
            .map(drop)
    }

    pub fn del_fdb(&mut self, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::DelNeighbour(fdb_msg(index, mac, dst)),
                0,
                &format!("delete fdb {} dst {dst} on #{index}", format_mac(&mac)),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bridge_dst_is_converted() {
        assert_eq!(
            ip_from(&NeighbourAddress::Other(vec![198, 51, 100, 7])),
            Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)))
        );
        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        assert_eq!(
            ip_from(&NeighbourAddress::Other(v6)),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(ip_from(&NeighbourAddress::Other(vec![1, 2, 3])), None);
    }

    #[test]
    fn fdb_message_shape() {
        let mac = [0x0a, 0, 0, 0, 0, 1];
        let dst = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
        let m = fdb_msg(9, mac, dst);
        assert_eq!(m.header.family, AddressFamily::Bridge);
        assert!(m.header.flags.contains(NeighbourFlags::Own));
        assert_eq!(u16::from(m.header.state), crate::nud::PERMANENT);
        let e = fdb_from_msg(&m);
        assert_eq!(
            e.as_ref().map(|e| (e.mac, e.dst, e.is_self)),
            Some((mac, Some(dst), true))
        );
    }

    #[test]
    fn neighbour_message_shape() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 244, 3, 0));
        let m = neigh_msg(4, ip, Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(m.header.family, AddressFamily::Inet);
        let n = neighbour_from_msg(&m);
        assert_eq!(
            n.map(|n| (n.ip, n.mac)),
            Some((ip, Some([1, 2, 3, 4, 5, 6])))
        );
    }
}
