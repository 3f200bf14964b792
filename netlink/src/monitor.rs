//! Link notifications: a NETLINK_ROUTE socket subscribed to the RTNLGRP_LINK
//! multicast group, so a daemon learns at once that a link was deleted or
//! changed instead of at its next poll; [`LinkMonitor::with_entries`] adds
//! route, neighbour and FDB notifications ([`KernelEvent`]).

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLMSG_OVERRUN};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};
use nix::errno::Errno;

use crate::link::link_from_msg;
use crate::neigh::{fdb_from_msg, neighbour_from_msg};
use crate::route::route_from_msg;
use crate::socket::split;
use crate::{Error, FdbEntry, Link, Neighbour, Route};
use netlink_packet_route::AddressFamily;

/// RTMGRP_LINK: the bind-time group mask of RTNLGRP_LINK.
const RTMGRP_LINK: u32 = 1;
/// RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE.
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;
const RECV_BUF: usize = 64 * 1024;

/// One link notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// RTM_NEWLINK: a link appeared or changed (flags, MTU, address...).
    New(Link),
    /// RTM_DELLINK: a link is gone.
    Del(Link),
    /// Notifications were lost (socket buffer overrun or a truncated
    /// datagram): the listener must re-read the state it cares about.
    Lost,
}

/// One notification of a [`LinkMonitor::with_entries`] socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    LinkNew(Link),
    LinkDel(Link),
    /// RTM_NEWROUTE / RTM_DELROUTE of a unicast route (any table).
    RouteNew(Route),
    RouteDel(Route),
    /// RTM_DELNEIGH of an IPv4/IPv6 neighbour.
    NeighDel(Neighbour),
    /// RTM_DELNEIGH of a bridge/VXLAN FDB entry.
    FdbDel(FdbEntry),
    /// Notifications were lost: re-read the state.
    Lost,
}

/// A socket receiving link notifications of the namespace it was created in.
#[derive(Debug)]
pub struct LinkMonitor {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribe in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        Self::subscribe(RTMGRP_LINK)
    }

    /// Links, routes (IPv4 and IPv6), neighbours and FDB entries, in the
    /// calling thread's network namespace; read with [`Self::recv_all`].
    pub fn with_entries() -> Result<Self, Error> {
        Self::subscribe(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
    }

    fn subscribe(groups: u32) -> Result<Self, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)
            .map_err(|e| Error::io("open NETLINK_ROUTE socket", e))?;
        sock.bind(&SocketAddr::new(0, groups))
            .map_err(|e| Error::io("subscribe to link notifications", e))?;
        Ok(LinkMonitor {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Block until the next datagram; its link events, in order. An
    /// overrun (ENOBUFS) is reported as [`LinkEvent::Lost`], not an error.
    pub fn recv(&mut self) -> Result<Vec<LinkEvent>, Error> {
        Ok(self
            .recv_all()?
            .into_iter()
            .filter_map(|e| match e {
                KernelEvent::LinkNew(l) => Some(LinkEvent::New(l)),
                KernelEvent::LinkDel(l) => Some(LinkEvent::Del(l)),
                KernelEvent::Lost => Some(LinkEvent::Lost),
                _ => None,
            })
            .collect())
    }

    /// Block until the next datagram; every event in it, in order.
    pub fn recv_all(&mut self) -> Result<Vec<KernelEvent>, Error> {
        self.buf.clear();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                    return Ok(vec![KernelEvent::Lost]);
                }
                r => break r.map_err(|e| Error::io("receive link notifications", e))?,
            }
        };
        if n > self.buf.len() {
            return Ok(vec![KernelEvent::Lost]);
        }
        Ok(parse_events(&self.buf))
    }
}

/// The events in one notification datagram; anything undecodable counts as lost.
fn parse_events(buf: &[u8]) -> Vec<KernelEvent> {
    use RouteNetlinkMessage as M;
    let mut out = Vec::new();
    for item in split(buf) {
        let Ok((hdr, raw)) = item else {
            out.push(KernelEvent::Lost);
            break;
        };
        if hdr.kind == NLMSG_OVERRUN {
            out.push(KernelEvent::Lost);
            continue;
        }
        let ev = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map(|m| m.payload) {
            Ok(NetlinkPayload::InnerMessage(m)) => match m {
                M::NewLink(m) => Some(KernelEvent::LinkNew(link_from_msg(&m))),
                M::DelLink(m) => Some(KernelEvent::LinkDel(link_from_msg(&m))),
                M::NewRoute(m) => route_from_msg(&m).map(KernelEvent::RouteNew),
                M::DelRoute(m) => route_from_msg(&m).map(KernelEvent::RouteDel),
                M::DelNeighbour(m) if m.header.family == AddressFamily::Bridge => {
                    fdb_from_msg(&m).map(KernelEvent::FdbDel)
                }
                M::DelNeighbour(m) => neighbour_from_msg(&m).map(KernelEvent::NeighDel),
                _ => None,
            },
            Ok(_) => None,
            Err(_) => Some(KernelEvent::Lost),
        };
        out.extend(ev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn encoded(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut b = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut b);
        b
    }

    #[test]
    fn new_and_del_link_notifications_decode() {
        let mut m = LinkMessage::default();
        m.header.index = 7;
        m.attributes.push(LinkAttribute::IfName("flannel.1".into()));
        let mut buf = encoded(RouteNetlinkMessage::DelLink(m.clone()));
        buf.extend(encoded(RouteNetlinkMessage::NewLink(m)));
        let ev = parse_events(&buf);
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[0], KernelEvent::LinkDel(l) if l.name == "flannel.1" && l.index == 7));
        assert!(matches!(&ev[1], KernelEvent::LinkNew(l) if l.name == "flannel.1"));
        assert_eq!(parse_events(&buf[..10]), vec![KernelEvent::Lost]);
    }
}
