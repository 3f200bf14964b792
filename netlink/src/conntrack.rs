//! Conntrack entries over ctnetlink (NETLINK_NETFILTER), so a plugin can
//! flush stale flows without the `conntrack` tool. Only what portmap needs:
//! dump one family's table, match on the original tuple's protocol and
//! destination port (plus an address), and delete each match by its tuple.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};
use nix::errno::Errno;

use crate::socket::split;
use crate::{Error, IpFamily};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const RECV_BUF: usize = 64 * 1024;

/// Which entries to delete: all of `protocol` (IPPROTO_*) in `family`
/// whose original destination port is `dst_port`, narrowed by addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackFilter {
    pub family: IpFamily,
    pub protocol: u8,
    pub dst_port: u16,
    /// The original destination (the address the client sent to).
    pub orig_dst: Option<IpAddr>,
    /// The reply's source: the address a flow was DNATed to.
    pub reply_src: Option<IpAddr>,
}

/// One attribute: (type without flags, payload, whole attribute bytes).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let whole = b.get(..len).filter(|_| len >= 4)?;
        b = b.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, &whole[4..], whole))
    })
}

fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _, _)| *k == kind).map(|(_, v, _)| v)
}

fn addr(tuple: &[u8], v4_kind: u16) -> Option<IpAddr> {
    let ip = find(tuple, CTA_TUPLE_IP)?;
    if let Some(v) = find(ip, v4_kind).and_then(|v| <[u8; 4]>::try_from(v).ok()) {
        return Some(IpAddr::V4(Ipv4Addr::from(v)));
    }
    let v = find(ip, v4_kind + 2).and_then(|v| <[u8; 16]>::try_from(v).ok())?;
    Some(IpAddr::V6(Ipv6Addr::from(v)))
}

/// Whether a dumped entry's attributes match `f`.
fn matches(entry: &[u8], f: &ConntrackFilter) -> bool {
    let (Some(orig), Some(reply)) = (find(entry, CTA_TUPLE_ORIG), find(entry, CTA_TUPLE_REPLY))
    else {
        return false;
    };
    let proto = find(orig, CTA_TUPLE_PROTO);
    let num = proto
        .and_then(|p| find(p, CTA_PROTO_NUM))
        .and_then(|v| v.first().copied());
    let port = proto
        .and_then(|p| find(p, CTA_PROTO_DST_PORT))
        .and_then(|v| <[u8; 2]>::try_from(v).ok())
        .map(u16::from_be_bytes);
    num == Some(f.protocol)
        && port == Some(f.dst_port)
        && f.orig_dst.is_none_or(|a| addr(orig, 2) == Some(a))
        && f.reply_src.is_none_or(|a| addr(reply, 1) == Some(a))
}

fn message(kind: u16, flags: u16, seq: u32, family: IpFamily, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    let af = match family {
        IpFamily::V4 => libc::AF_INET,
        IpFamily::V6 => libc::AF_INET6,
    };
    m.extend_from_slice(&[af as u8, 0, 0, 0]);
    m.extend_from_slice(body);
    m
}

struct Ctnl {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Ctnl {
    fn new() -> Result<Ctnl, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::io("open NETLINK_NETFILTER socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("bind ctnetlink socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect ctnetlink socket", e))?;
        Ok(Ctnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Send one request; call `each` with every reply message's payload
    /// (after the nfgenmsg) until the ACK or NLMSG_DONE.
    fn exchange(
        &mut self,
        kind: u16,
        flags: u16,
        family: IpFamily,
        body: &[u8],
        op: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = message(kind, flags, seq, family, body);
        self.sock
            .send(&req, 0)
            .map_err(|e| Error::io(format!("{op}: send"), e))?;
        loop {
            self.buf.clear();
            let n = self
                .sock
                .recv(&mut self.buf, libc::MSG_TRUNC)
                .map_err(|e| Error::io(format!("{op}: recv"), e))?;
            if n > self.buf.len() {
                return Err(Error::Protocol(format!(
                    "{op}: reply of {n} bytes truncated"
                )));
            }
            for item in split(&self.buf) {
                let (hdr, raw) = item.map_err(|e| Error::Decode(format!("{op}: {e}")))?;
                if hdr.seq != seq {
                    continue;
                }
                let payload = raw.get(NLMSG_HDRLEN..).unwrap_or_default();
                match hdr.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .and_then(|c| c.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(0);
                        return match code {
                            0 => Ok(()),
                            c => Err(Error::os(op, Errno::from_raw(c.saturating_abs()))),
                        };
                    }
                    _ => each(payload.get(NFGENMSG_LEN..).unwrap_or_default()),
                }
            }
        }
    }
}

/// Delete every entry matching `filter`; returns how many went. An entry
/// that vanished meanwhile is not an error.
pub fn delete_conntrack(filter: &ConntrackFilter) -> Result<usize, Error> {
    let mut ct = Ctnl::new()?;
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    ct.exchange(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        filter.family,
        &[],
        "dump conntrack",
        |entry| {
            if matches(entry, filter) {
                // The original tuple and zone identify the entry.
                doomed.push(
                    attrs(entry)
                        .filter(|(k, _, _)| *k == CTA_TUPLE_ORIG || *k == CTA_ZONE)
                        .flat_map(|(_, _, whole)| {
                            let mut a = whole.to_vec();
                            a.resize((a.len() + 3) & !3, 0);
                            a
                        })
                        .collect(),
                );
            }
        },
    )?;
    let mut deleted = 0;
    for body in &doomed {
        match ct.exchange(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            filter.family,
            body,
            "delete conntrack entry",
            |_| {},
        ) {
            Ok(()) => deleted += 1,
            Err(e) if e.errno() == Some(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
