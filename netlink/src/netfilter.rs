//! nf_tables notifications: a NETLINK_NETFILTER socket subscribed to
//! NFNLGRP_NFTABLES, so a daemon learns at once that a table, chain or
//! rule was added or deleted (by `nft`, by iptables-nft, by a firewall
//! reload) instead of at its next poll. Only what identifies the object
//! is decoded: the message kind, the family, the table and chain names.
//!
//! iptables-legacy (x_tables) sends no notifications; [`xtables_entries`]
//! reads a legacy table's rule count with one getsockopt, cheap enough to
//! poll.

use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};
use nix::errno::Errno;

use crate::socket::split;
use crate::Error;

/// NFNLGRP_NFTABLES (include/uapi/linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// NFNL_SUBSYS_NFTABLES: the high byte of an nf_tables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// struct nfgenmsg: family, version, res_id.
const NFGENMSG_LEN: usize = 4;
const NLMSG_HDRLEN: usize = 16;
const RECV_BUF: usize = 64 * 1024;
/// NFTA_TABLE_NAME, NFTA_CHAIN_TABLE and NFTA_RULE_TABLE are all 1.
const ATTR_TABLE: u16 = 1;
/// NFTA_RULE_CHAIN.
const NFTA_RULE_CHAIN: u16 = 2;
/// NFTA_CHAIN_NAME.
const NFTA_CHAIN_NAME: u16 = 3;

/// What happened to an nf_tables object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftChange {
    NewTable,
    DelTable,
    NewChain,
    DelChain,
    NewRule,
    DelRule,
}

impl NftChange {
    /// From the low byte of the message type (enum nf_tables_msg_types).
    /// The DESTROY* requests (kernel 6.3+) are notified as DEL*, but are
    /// mapped too in case a kernel echoes them.
    fn from_msg(m: u8) -> Option<Self> {
        Some(match m {
            0 => NftChange::NewTable,
            2 | 26 => NftChange::DelTable,
            3 => NftChange::NewChain,
            5 | 27 => NftChange::DelChain,
            6 => NftChange::NewRule,
            8 | 28 => NftChange::DelRule,
            _ => return None,
        })
    }

    pub fn is_delete(self) -> bool {
        matches!(
            self,
            NftChange::DelTable | NftChange::DelChain | NftChange::DelRule
        )
    }
}

/// One nf_tables notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftEvent {
    /// A table, chain or rule changed. `family` is the nfproto number
    /// (2 = ip, 10 = ip6, 1 = inet); `chain` is set for chains and rules.
    Changed {
        change: NftChange,
        family: u8,
        table: String,
        chain: Option<String>,
    },
    /// Notifications were lost (socket buffer overrun or a truncated
    /// datagram): the listener must re-read the state it cares about.
    Lost,
}

/// A socket receiving the nf_tables notifications of the namespace it was
/// created in.
#[derive(Debug)]
pub struct NftMonitor {
    sock: netlink_sys::Socket,
    buf: Vec<u8>,
}

impl NftMonitor {
    /// Subscribe in the calling thread's network namespace (needs
    /// CAP_NET_ADMIN).
    pub fn new() -> Result<Self, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::io("open NETLINK_NETFILTER socket", e))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("bind NETLINK_NETFILTER socket", e))?;
        sock.add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| Error::io("subscribe to nf_tables notifications", e))?;
        Ok(NftMonitor {
            sock,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Block until the next datagram; its events, in order (datagrams of
    /// other kinds, e.g. NEWGEN or sets, yield an empty list). An overrun
    /// (ENOBUFS) is reported as [`NftEvent::Lost`], not an error.
    pub fn recv(&mut self) -> Result<Vec<NftEvent>, Error> {
        self.buf.clear();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(Errno::ENOBUFS as i32) => {
                    return Ok(vec![NftEvent::Lost]);
                }
                r => break r.map_err(|e| Error::socket("receive nf_tables notifications", e))?,
            }
        };
        if n > self.buf.len() {
            return Ok(vec![NftEvent::Lost]);
        }
        Ok(parse_events(&self.buf))
    }
}

/// nf_tables events in one notification datagram; anything undecodable
/// counts as lost.
fn parse_events(buf: &[u8]) -> Vec<NftEvent> {
    let mut out = Vec::new();
    for item in split(buf) {
        let Ok((hdr, raw)) = item else {
            out.push(NftEvent::Lost);
            break;
        };
        let [msg, subsys] = hdr.kind.to_le_bytes();
        if u16::from(subsys) != NFNL_SUBSYS_NFTABLES {
            continue;
        }
        let Some(change) = NftChange::from_msg(msg) else {
            continue;
        };
        let Some(family) = raw.get(NLMSG_HDRLEN).copied() else {
            out.push(NftEvent::Lost);
            continue;
        };
        let attrs = raw.get(NLMSG_HDRLEN + NFGENMSG_LEN..).unwrap_or_default();
        let Some(table) = string_attr(attrs, ATTR_TABLE) else {
            out.push(NftEvent::Lost);
            continue;
        };
        let chain = match change {
            NftChange::NewChain | NftChange::DelChain => string_attr(attrs, NFTA_CHAIN_NAME),
            NftChange::NewRule | NftChange::DelRule => string_attr(attrs, NFTA_RULE_CHAIN),
            _ => None,
        };
        out.push(NftEvent::Changed {
            change,
            family,
            table,
            chain,
        });
    }
    out
}

/// The NUL-terminated string attribute `kind` of a netlink attribute list.
fn string_attr(attrs: &[u8], kind: u16) -> Option<String> {
    let mut off = 0usize;
    while let Some(h) = attrs.get(off..off + 4) {
        let len = usize::from(u16::from_ne_bytes([h[0], h[1]]));
        let k = u16::from_ne_bytes([h[2], h[3]]) & 0x3fff;
        if len < 4 {
            return None;
        }
        let value = attrs.get(off + 4..off + len)?;
        if k == kind {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        off += (len + 3) & !3;
    }
    None
}

/// IPT_SO_GET_INFO / IP6T_SO_GET_INFO (x_tables' SO_GET_INFO).
const SO_GET_INFO: libc::c_int = 64;
/// XT_TABLE_MAXNAMELEN.
const TABLE_MAXNAMELEN: usize = 32;

/// struct ipt_getinfo (identical to ip6t_getinfo).
#[repr(C)]
struct XtGetInfo {
    name: [u8; TABLE_MAXNAMELEN],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

/// (rule count, blob size) of the iptables-legacy table `table` ("nat",
/// "filter") of the calling thread's namespace, IPv6 (`ip6tables`) when
/// `ipv6`. Any rule added, deleted or flushed changes it. One getsockopt
/// on a raw socket (needs CAP_NET_RAW): no process is run.
pub fn xtables_entries(table: &str, ipv6: bool) -> Result<(u32, u32), Error> {
    use std::os::fd::AsRawFd;
    if table.is_empty() || table.len() >= TABLE_MAXNAMELEN {
        return Err(Error::Invalid(format!("bad x_tables table name {table:?}")));
    }
    let (domain, level) = if ipv6 {
        (nix::sys::socket::AddressFamily::Inet6, libc::IPPROTO_IPV6)
    } else {
        (nix::sys::socket::AddressFamily::Inet, libc::IPPROTO_IP)
    };
    let fd = nix::sys::socket::socket(
        domain,
        nix::sys::socket::SockType::Raw,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        nix::sys::socket::SockProtocol::Raw,
    )
    .map_err(|e| Error::os("open raw socket for x_tables", e))?;
    let mut info = XtGetInfo {
        name: [0; TABLE_MAXNAMELEN],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    info.name[..table.len()].copy_from_slice(table.as_bytes());
    let mut len = std::mem::size_of::<XtGetInfo>() as libc::socklen_t;
    // SAFETY: `info` is a live, writable struct of exactly `len` bytes
    // with the kernel's layout; the fd is open for the whole call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            SO_GET_INFO,
            (&mut info as *mut XtGetInfo).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(Error::os(
            format!("x_tables info of table {table}"),
            Errno::last(),
        ));
    }
    Ok((info.num_entries, info.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        crate::nfnetlink::put_attr(&mut v, kind, value);
        v
    }

    fn msg(msg_type: u8, family: u8, attrs: &[u8]) -> Vec<u8> {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg_type);
        let len = (NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len()) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&[0; 10]); // flags, seq, pid
        v.extend_from_slice(&[family, 0, 0, 0]);
        v.extend_from_slice(attrs);
        v
    }

    #[test]
    fn table_chain_and_rule_notifications_decode() {
        let mut buf = msg(2, 2, &attr(ATTR_TABLE, b"flannel-ipv4\0"));
        let mut rule = attr(ATTR_TABLE, b"nat\0");
        rule.extend(attr(NFTA_RULE_CHAIN, b"FLANNEL-POSTRTG\0"));
        rule.extend(attr(4 | 0x8000, &[0; 8])); // a nested expression list
        buf.extend(msg(8, 10, &rule));
        let mut chain = attr(ATTR_TABLE, b"filter\0");
        chain.extend(attr(2, &[0; 8])); // handle
        chain.extend(attr(NFTA_CHAIN_NAME, b"FLANNEL-FWD\0"));
        buf.extend(msg(3, 2, &chain));
        buf.extend(msg(15, 0, &[])); // NEWGEN: not an object change
        let ev = parse_events(&buf);
        assert_eq!(
            ev,
            vec![
                NftEvent::Changed {
                    change: NftChange::DelTable,
                    family: 2,
                    table: "flannel-ipv4".into(),
                    chain: None
                },
                NftEvent::Changed {
                    change: NftChange::DelRule,
                    family: 10,
                    table: "nat".into(),
                    chain: Some("FLANNEL-POSTRTG".into())
                },
                NftEvent::Changed {
                    change: NftChange::NewChain,
                    family: 2,
                    table: "filter".into(),
                    chain: Some("FLANNEL-FWD".into())
                },
            ]
        );
        assert!(NftChange::DelRule.is_delete() && !NftChange::NewRule.is_delete());
        // Truncated or nameless: lost, never a panic.
        assert_eq!(parse_events(&buf[..10]), vec![NftEvent::Lost]);
        assert_eq!(parse_events(&msg(2, 2, &[])), vec![NftEvent::Lost]);
        assert_eq!(string_attr(&[2, 0, 1, 0], 1), None);
        assert_eq!(string_attr(&[200, 0, 1, 0, b'a'], 1), None);
    }
}
