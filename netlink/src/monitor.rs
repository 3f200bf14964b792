//! Link notifications: a NETLINK_ROUTE socket subscribed to the RTNLGRP_LINK
//! multicast group, so a daemon learns at once that a link was deleted or
//! changed instead of at its next poll.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLMSG_OVERRUN};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};
use nix::errno::Errno;

use crate::link::link_from_msg;
use crate::socket::split;
use crate::{Error, Link};

/// RTMGRP_LINK: the bind-time group mask of RTNLGRP_LINK.
const RTMGRP_LINK: u32 = 1;
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

/// A socket receiving link notifications of the namespace it was created in.
#[derive(Debug)]
pub struct LinkMonitor {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl LinkMonitor {
    /// Subscribe in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)
            .map_err(|e| Error::io("open NETLINK_ROUTE socket", e))?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))
            .map_err(|e| Error::io("subscribe to link notifications", e))?;
        Ok(LinkMonitor {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Block until the next datagram; its link events, in order. An
    /// overrun (ENOBUFS) is reported as [`LinkEvent::Lost`], not an error.
    pub fn recv(&mut self) -> Result<Vec<LinkEvent>, Error> {
        self.buf.clear();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                    return Ok(vec![LinkEvent::Lost]);
                }
                r => break r.map_err(|e| Error::io("receive link notifications", e))?,
            }
        };
        if n > self.buf.len() {
            return Ok(vec![LinkEvent::Lost]);
        }
        Ok(parse_events(&self.buf))
    }
}

/// Link events in one notification datagram; anything undecodable counts as lost.
fn parse_events(buf: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    for item in split(buf) {
        let Ok((hdr, raw)) = item else {
            out.push(LinkEvent::Lost);
            break;
        };
        if hdr.kind == NLMSG_OVERRUN {
            out.push(LinkEvent::Lost);
            continue;
        }
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw).map(|m| m.payload) {
            Ok(NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m))) => {
                out.push(LinkEvent::New(link_from_msg(&m)))
            }
            Ok(NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m))) => {
                out.push(LinkEvent::Del(link_from_msg(&m)))
            }
            Ok(_) => {}
            Err(_) => out.push(LinkEvent::Lost),
        }
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
        assert!(matches!(&ev[0], LinkEvent::Del(l) if l.name == "flannel.1" && l.index == 7));
        assert!(matches!(&ev[1], LinkEvent::New(l) if l.name == "flannel.1"));
        assert_eq!(parse_events(&buf[..10]), vec![LinkEvent::Lost]);
    }
}
