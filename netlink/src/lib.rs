//! weft-netlink: all of weft's netlink, behind a small synchronous API.
//!
//! Short-lived CNI plugins use this, so there is no async runtime: one
//! blocking NETLINK_ROUTE socket, one request at a time (or one pipelined
//! batch of changes, [`Netlink::apply`], for weftd). A [`Netlink`] is
//! bound to the network namespace it was created in (sockets keep their
//! namespace), so a plugin opens one per namespace instead of moving threads.
//!
//! ```no_run
//! # fn main() -> Result<(), weft_netlink::Error> {
//! use weft_netlink::{Netlink, Netns};
//! let host = Netns::current()?;
//! let cont = Netns::open("/run/netns/c1".as_ref())?;
//! let mut nl = Netlink::in_netns(&cont)?;
//! nl.create_veth("eth0", Some(1450), None, "veth1234", &host)?;
//! # Ok(()) }
//! ```

mod addr;
mod batch;
mod conntrack;
mod error;
mod link;
mod monitor;
mod neigh;
mod netfilter;
pub mod netns;
mod nfnetlink;
mod nft_expr;
mod nftables;
mod route;
mod socket;
pub mod tc;

pub use addr::Address;
pub use batch::Change;
pub use conntrack::{delete_conntrack, ConntrackFilter};
pub use error::Error;
pub use link::{BridgeVlan, Link, VxlanInfo, VxlanSpec};
pub use monitor::{KernelEvent, LinkEvent, LinkMonitor};
pub use neigh::{FdbEntry, Neighbour};
pub use netfilter::{xtables_entries, NftChange, NftEvent, NftMonitor};
pub use netns::{read_sysctl, write_sysctl, Netns};
pub use nft_expr::{nft_concat, NftAddr, NftExpr, NftField};
pub use nftables::{
    nf_tables_usable, nft_list_rules, NftCommand, NftDeletion, NftElement, NftHook, NftRuleRef,
    NftSet, NftTable, NftWatch,
};
pub use route::{IpFamily, Route};
pub use tc::{Class, Filter, Htb, HtbClass, IpField, Qdisc, Tbf};

/// Neighbour (NUD_*) states, as reported in [`Neighbour::state`] / [`FdbEntry::state`].
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;
}

/// One NETLINK_ROUTE socket, bound to the namespace it was created in.
/// It can be used from any thread afterwards (it is `Send`).
#[derive(Debug)]
pub struct Netlink {
    sock: socket::Socket,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, Error> {
        Ok(Netlink {
            sock: socket::Socket::new()?,
        })
    }

    /// A socket created inside `ns` (on a helper thread), usable from any
    /// thread; everything it does happens in `ns`.
    pub fn in_netns(ns: &Netns) -> Result<Self, Error> {
        ns.run(Netlink::new)?
    }
}

/// Parse "aa:bb:cc:dd:ee:ff" (also accepts '-' separators). Case-insensitive.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Format as lowercase "aa:bb:cc:dd:ee:ff".
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A MAC from a netlink attribute, if it is exactly 6 bytes.
pub(crate) fn mac_from_slice(b: &[u8]) -> Option<[u8; 6]> {
    b.try_into().ok()
}

/// Interface names the kernel accepts: 1..=15 bytes, no '/', ':' or
/// whitespace, not "." or "..". Checked before sending so errors are clear.
pub(crate) fn check_ifname(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|c| c == b'/' || c == b':' || c == 0 || c.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("bad interface name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_roundtrip() {
        let m = parse_mac("0A:1b:2c:3D:4e:5f");
        assert_eq!(m, Some([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        assert_eq!(
            format_mac(&[0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
            "0a:1b:2c:3d:4e:5f"
        );
        assert_eq!(
            parse_mac("00-11-22-33-44-55"),
            Some([0, 0x11, 0x22, 0x33, 0x44, 0x55])
        );
        for bad in [
            "",
            "00:11:22:33:44",
            "00:11:22:33:44:55:66",
            "0:11:22:33:44:55",
            "00:11:22:33:44:5g",
            "+0:11:22:33:44:55",
            "00:11:22:33:44:555",
            "00::11:22:33:44:55",
            "é0:11:22:33:44:55",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(mac_from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn ifnames() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("veth0123456789a").is_ok());
        for bad in ["", "veth0123456789ab", "a/b", "a b", ".", "..", "a:b"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn netlink_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Netlink>();
        assert_send::<Netns>();
    }
}
