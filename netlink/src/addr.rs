//! Interface addresses.

use std::net::Ipv4Addr;

use ipnetwork::{IpNetwork, Ipv4Network};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Netlink};

/// One address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub net: IpNetwork,
    /// IFA_F_* bits (full 32-bit IFA_FLAGS when present).
    pub flags: u32,
    /// RT_SCOPE_*: 0 universe, 253 link, 254 host.
    pub scope: u8,
}

impl Address {
    pub const F_SECONDARY: u32 = 0x01;
    pub const F_NODAD: u32 = 0x02;
    pub const F_DADFAILED: u32 = 0x08;
    pub const F_TENTATIVE: u32 = 0x40;
    pub const F_PERMANENT: u32 = 0x80;

    /// IPv6 DAD still running.
    pub fn is_tentative(&self) -> bool {
        self.flags & Self::F_TENTATIVE != 0
    }
    pub fn is_dadfailed(&self) -> bool {
        self.flags & Self::F_DADFAILED != 0
    }
    pub fn is_permanent(&self) -> bool {
        self.flags & Self::F_PERMANENT != 0
    }
}

fn address_from_msg(m: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = Some(f.bits()),
            _ => {}
        }
    }
    // For IPv4, IFA_LOCAL is our address and IFA_ADDRESS the peer on
    // point-to-point links; IPv6 only has IFA_ADDRESS.
    let ip = local.or(address)?;
    let net = IpNetwork::new(ip, m.header.prefix_len).ok()?;
    Some(Address {
        index: m.header.index,
        net,
        flags: flags.unwrap_or(u32::from(m.header.flags.bits())),
        scope: m.header.scope.into(),
    })
}

pub(crate) fn addr_msg(index: u32, net: IpNetwork, with_broadcast: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = net.prefix();
    m.header.family = match net {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    };
    let ip = net.ip();
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(ip));
    }
    m.attributes.push(AddressAttribute::Address(ip));
    if let (true, IpNetwork::V4(n)) = (with_broadcast, net) {
        if let Some(b) = broadcast(n) {
            m.attributes.push(AddressAttribute::Broadcast(b));
        }
    }
    m
}

/// Like `ip addr add ... brd +`: no broadcast for /31 and /32.
fn broadcast(n: Ipv4Network) -> Option<Ipv4Addr> {
    (n.prefix() < 31).then(|| n.broadcast())
}

impl Netlink {
    /// Addresses of one link (`Some(index)`) or of all links.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<Address>, Error> {
        let msgs = self.sock.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "dump addresses",
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) => address_from_msg(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }

    /// Add an address (EEXIST if it is already there).
    pub fn add_address(&mut self, index: u32, net: IpNetwork) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::NewAddress(addr_msg(index, net, true)),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add address {net} on #{index}"),
            )
            .map(drop)
    }

    /// Add an IPv6 address without duplicate address detection.
    pub fn add_address_nodad(&mut self, index: u32, net: IpNetwork) -> Result<(), Error> {
        let mut m = addr_msg(index, net, true);
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.sock
            .request(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add address {net} (nodad) on #{index}"),
            )
            .map(drop)
    }

    pub fn del_address(&mut self, index: u32, net: IpNetwork) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::DelAddress(addr_msg(index, net, false)),
                0,
                &format!("delete address {net} on #{index}"),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_message_has_local_and_broadcast() -> Result<(), ipnetwork::IpNetworkError> {
        let net: IpNetwork = "10.244.1.5/24".parse()?;
        let m = addr_msg(7, net, true);
        assert_eq!(m.header.prefix_len, 24);
        assert_eq!(m.header.index, 7);
        assert!(m.attributes.contains(&AddressAttribute::Local(net.ip())));
        assert!(m
            .attributes
            .contains(&AddressAttribute::Broadcast(Ipv4Addr::new(10, 244, 1, 255))));
        let p2p = addr_msg(7, "198.51.100.1/32".parse()?, true);
        assert!(!p2p
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        let back = address_from_msg(&m);
        assert_eq!(back.map(|a| a.net), Some(net));
        Ok(())
    }

    #[test]
    fn v6_message_has_no_local() -> Result<(), ipnetwork::IpNetworkError> {
        let m = addr_msg(2, "fd00::5/64".parse()?, true);
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert_eq!(m.attributes.len(), 1);
        Ok(())
    }
}
