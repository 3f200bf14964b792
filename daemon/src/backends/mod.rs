//! The backend seam. A backend decides what this node publishes in its
//! lease, which remote leases it can program, the device it needs, the
//! kernel entries for each peer and the MTU pods get. The data-plane loop
//! (`crate::reconcile`), the lease store and the agent see only
//! [`Backend`]; vxlan (with or without DirectRouting) and host-gw are its
//! implementations. Kernel entries are plain values ([`Entry`]), so the
//! diff between wanted and programmed ([`diff`]) is one function for all.

pub mod host_gw;
pub mod underlay;
pub mod vxlan;

use crate::config::{BackendKind, NetConfig};
use crate::store::attrs::LeaseAttrs;
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::net::IpAddr;
use underlay::{Reach, Underlay};
use weft_netlink::IpFamily;

pub use vxlan::DeviceSpec;

#[derive(thiserror::Error, Debug)]
pub enum BackendError {
    #[error(transparent)]
    Netlink(#[from] weft_netlink::Error),
    #[error("{0}")]
    Setup(String),
}

/// What a backend needs from a peer's lease beyond its subnet and public
/// IP (one address family's side of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerData {
    /// host-gw: nothing.
    None,
    /// vxlan: the MAC of the peer's VXLAN device (BackendData.VtepMAC).
    Vtep([u8; 6]),
}

/// A remote node's lease, one family's side, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub subnet: IpNetwork,
    pub public_ip: IpAddr,
    pub data: PeerData,
}

/// One kernel entry weftd manages. The derived order (neighbours, FDB
/// entries, routes) is the order entries are added in, so a route never
/// needs ARP/ND; routes are removed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entry {
    /// A permanent neighbour on `dev`.
    Neigh { dev: u32, ip: IpAddr, mac: [u8; 6] },
    /// A permanent `self` FDB entry on a VXLAN `dev`.
    Fdb { dev: u32, mac: [u8; 6], dst: IpAddr },
    /// A main-table route.
    Route {
        dst: IpNetwork,
        gw: IpAddr,
        dev: u32,
        onlink: bool,
    },
}

impl Entry {
    /// What the kernel keys the entry by: a new entry with the same key
    /// replaces the old one in place, so the old one needs no deletion.
    fn slot(&self) -> (u8, u32, IpNetwork) {
        match *self {
            Entry::Neigh { dev, ip, .. } => (0, dev, IpNetwork::from(ip)),
            Entry::Fdb { dev, dst, .. } => (1, dev, IpNetwork::from(dst)),
            Entry::Route { dst, .. } => (2, 0, dst),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Set(Entry),
    Del(Entry),
}

/// Why a lease's peer gets no kernel entries (counted and shown in
/// readiness, logged once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotProgrammable(pub String);

/// What a backend may look at when it computes a peer's entries.
pub struct Context<'a> {
    pub underlay: &'a Underlay,
    /// The index of the backend's device for the peer's family, once it exists.
    pub device: Option<u32>,
    /// How the underlay reaches an address (from the main table).
    pub reach: &'a dyn Fn(IpAddr) -> Reach,
}

/// One backend. Object-safe: the data plane holds a `Box<dyn Backend>`.
pub trait Backend: Send + Sync {
    /// `Backend.Type` as flannel spells it.
    fn kind(&self) -> &'static str;
    /// What this node publishes in its lease.
    fn lease_attrs(&self) -> &LeaseAttrs;
    /// The MTU pods get (FLANNEL_MTU).
    fn mtu(&self) -> u32;
    /// Which leases it can program: a remote lease's backend data for one
    /// family, or why it cannot be programmed.
    fn accept(&self, attrs: &LeaseAttrs, family: IpFamily) -> Result<PeerData, String>;
    /// The device it needs for a family (None: no device).
    fn device(&self, family: IpFamily) -> Option<&DeviceSpec>;
    /// The kernel entries for one peer.
    fn entries(&self, peer: &Peer, cx: &Context) -> Result<Vec<Entry>, NotProgrammable>;
    /// The operations that turn `programmed` into `wanted`.
    fn diff(&self, wanted: &BTreeSet<Entry>, programmed: &BTreeSet<Entry>) -> Vec<Op> {
        diff(wanted, programmed)
    }
}

/// The backend the config asks for.
pub fn from_config(
    cfg: &NetConfig,
    underlay: &Underlay,
    public_ip: std::net::Ipv4Addr,
    public_ipv6: Option<std::net::Ipv6Addr>,
) -> Result<Box<dyn Backend>, BackendError> {
    Ok(match cfg.backend.kind {
        BackendKind::Vxlan { direct_routing } => Box::new(vxlan::Vxlan::new(
            cfg,
            underlay,
            public_ip,
            public_ipv6,
            direct_routing,
        )?),
        BackendKind::HostGw => Box::new(host_gw::HostGw::new(underlay, public_ip, public_ipv6)?),
    })
}

/// Wanted vs programmed entries -> operations, in the order that keeps
/// traffic flowing: routes that go away first (unless a wanted route
/// replaces them in place), then every missing entry (neighbours, FDB,
/// routes), then neighbours and FDB entries that go away.
pub fn diff(wanted: &BTreeSet<Entry>, programmed: &BTreeSet<Entry>) -> Vec<Op> {
    let wanted_slots: BTreeSet<(u8, u32, IpNetwork)> = wanted.iter().map(Entry::slot).collect();
    let stale = programmed.difference(wanted).filter(|e| {
        !matches!(e, Entry::Route { .. } | Entry::Neigh { .. }) || !wanted_slots.contains(&e.slot())
    });
    let (stale_routes, stale_rest): (Vec<&Entry>, Vec<&Entry>) =
        stale.partition(|e| matches!(e, Entry::Route { .. }));
    let mut ops: Vec<Op> = stale_routes.into_iter().map(|e| Op::Del(*e)).collect();
    ops.extend(wanted.difference(programmed).map(|e| Op::Set(*e)));
    ops.extend(stale_rest.into_iter().map(|e| Op::Del(*e)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: &str, dev: u32, onlink: bool) -> Entry {
        Entry::Route {
            dst: dst.parse().unwrap(),
            gw: gw.parse().unwrap(),
            dev,
            onlink,
        }
    }

    #[test]
    fn missing_entries_are_added_neighbour_fdb_route() {
        let mac = [2, 0, 0, 0, 0, 7];
        let want: BTreeSet<Entry> = [
            route("10.5.7.0/24", "10.5.7.0", 5, true),
            Entry::Fdb {
                dev: 5,
                mac,
                dst: "198.51.100.7".parse().unwrap(),
            },
            Entry::Neigh {
                dev: 5,
                ip: "10.5.7.0".parse().unwrap(),
                mac,
            },
        ]
        .into();
        let ops = diff(&want, &BTreeSet::new());
        assert!(matches!(ops[0], Op::Set(Entry::Neigh { .. })));
        assert!(matches!(ops[1], Op::Set(Entry::Fdb { .. })));
        assert!(matches!(ops[2], Op::Set(Entry::Route { .. })));
        assert!(diff(&want, &want).is_empty());
        // Gone: route first.
        let ops = diff(&BTreeSet::new(), &want);
        assert!(matches!(ops[0], Op::Del(Entry::Route { .. })));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_route_changing_form_is_replaced_not_deleted_first() {
        // DirectRouting: the peer became directly reachable.
        let mac = [2, 0, 0, 0, 0, 7];
        let vx: BTreeSet<Entry> = [
            route("10.5.7.0/24", "10.5.7.0", 5, true),
            Entry::Neigh {
                dev: 5,
                ip: "10.5.7.0".parse().unwrap(),
                mac,
            },
        ]
        .into();
        let direct: BTreeSet<Entry> = [route("10.5.7.0/24", "198.51.100.7", 2, false)].into();
        let ops = diff(&direct, &vx);
        assert_eq!(
            ops,
            vec![
                Op::Set(route("10.5.7.0/24", "198.51.100.7", 2, false)),
                Op::Del(Entry::Neigh {
                    dev: 5,
                    ip: "10.5.7.0".parse().unwrap(),
                    mac
                }),
            ]
        );
    }

    #[test]
    fn a_neighbour_with_a_new_mac_is_replaced_and_the_old_fdb_entry_goes() {
        let (old, new) = ([2, 0, 0, 0, 0, 7], [2, 0, 0, 0, 0, 8]);
        let ip: IpAddr = "10.5.7.0".parse().unwrap();
        let dst: IpAddr = "198.51.100.7".parse().unwrap();
        let have: BTreeSet<Entry> = [
            Entry::Neigh {
                dev: 5,
                ip,
                mac: old,
            },
            Entry::Fdb {
                dev: 5,
                mac: old,
                dst,
            },
        ]
        .into();
        let want: BTreeSet<Entry> = [
            Entry::Neigh {
                dev: 5,
                ip,
                mac: new,
            },
            Entry::Fdb {
                dev: 5,
                mac: new,
                dst,
            },
        ]
        .into();
        assert_eq!(
            diff(&want, &have),
            vec![
                Op::Set(Entry::Neigh {
                    dev: 5,
                    ip,
                    mac: new
                }),
                Op::Set(Entry::Fdb {
                    dev: 5,
                    mac: new,
                    dst
                }),
                Op::Del(Entry::Fdb {
                    dev: 5,
                    mac: old,
                    dst
                }),
            ]
        );
    }
}
