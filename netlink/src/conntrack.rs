//! Conntrack entries over ctnetlink (NETLINK_NETFILTER), so a plugin can
//! flush stale flows without the `conntrack` tool. Only what portmap needs:
//! dump one family's table, match on the original tuple's protocol and
//! destination port (plus an address), and delete each match by its tuple.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use nix::errno::Errno;

use crate::nfnetlink::{attrs, find, Nfnl};
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

/// Delete every entry matching `filter`; returns how many went. An entry
/// that vanished meanwhile is not an error.
pub fn delete_conntrack(filter: &ConntrackFilter) -> Result<usize, Error> {
    let mut ct = Nfnl::new()?;
    let af = match filter.family {
        IpFamily::V4 => libc::AF_INET as u8,
        IpFamily::V6 => libc::AF_INET6 as u8,
    };
    let mut doomed: Vec<Vec<u8>> = Vec::new();
    ct.exchange(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        af,
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
            (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            af,
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
