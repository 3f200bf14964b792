//! The VXLAN data plane: the `flannel.<VNI>` device and, per remote vxlan
//! lease, a permanent neighbour (`<subnet .0> -> VtepMAC`), an FDB entry
//! (`VtepMAC -> PublicIP`, self, permanent) and a route
//! (`<subnet> via <.0> dev flannel.N onlink`).
//!
//! It runs on one dedicated std::thread with a synchronous netlink socket
//! (weftd runs in the node's netns, so no setns ever happens). The thread
//! holds the full desired state and, on every change and every
//! `interval`, diffs it against what the kernel has ([`diff`], pure) and
//! applies only the difference. Nothing is flushed on start: entries that
//! are already right stay untouched, so pods do not lose packets across a
//! restart.

use crate::config::VXLAN_OVERHEAD_V4;
use crate::metrics::{now_unix, Metrics};
use ipnetwork::{IpNetwork, Ipv4Network};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use weft_netlink::{format_mac, nud, IpFamily, Netlink, Route, VxlanSpec};

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] weft_netlink::Error),
    #[error("{0}")]
    Setup(String),
}

/// A remote node, from its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    pub subnet: Ipv4Network,
    pub mac: [u8; 6],
    pub public_ip: Ipv4Addr,
}

/// What the kernel has on the device, reduced to what we manage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// IPv4 neighbours on the device: ip -> (mac, NUD state).
    pub neighbours: Vec<(Ipv4Addr, Option<[u8; 6]>, u16)>,
    /// FDB entries with a destination: (mac, dst, NUD state).
    pub fdb: Vec<([u8; 6], IpAddr, u16)>,
    /// Main-table IPv4 routes whose output device is ours: (dst, gateway, onlink).
    pub routes: Vec<(Ipv4Network, Option<IpAddr>, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetNeigh {
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
    SetFdb {
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
    SetRoute {
        dst: Ipv4Network,
        gw: Ipv4Addr,
    },
    DelRoute {
        dst: Ipv4Network,
        gw: Option<IpAddr>,
    },
    DelNeigh {
        ip: Ipv4Addr,
    },
    DelFdb {
        mac: [u8; 6],
        dst: IpAddr,
    },
}

/// Desired peers vs kernel entries -> the operations that make the kernel
/// match. Only entries inside `network` (neighbours, routes) or with a
/// destination (FDB) are considered ours. Order: stale routes go first, then
/// per peer neighbour, FDB, route (so the route never needs ARP), then stale
/// neighbour and FDB entries.
pub fn diff(network: &Ipv4Network, peers: &[Peer], k: &KernelState) -> Vec<Op> {
    let mut ops = Vec::new();
    let want_routes: BTreeMap<Ipv4Network, Ipv4Addr> = peers
        .iter()
        .map(|p| (p.subnet, p.subnet.network()))
        .collect();
    let want_neigh: BTreeMap<Ipv4Addr, [u8; 6]> =
        peers.iter().map(|p| (p.subnet.network(), p.mac)).collect();
    let want_fdb: BTreeSet<([u8; 6], IpAddr)> = peers
        .iter()
        .map(|p| (p.mac, IpAddr::V4(p.public_ip)))
        .collect();

    for (dst, gw, _) in &k.routes {
        if network.contains(dst.network()) && !want_routes.contains_key(dst) {
            ops.push(Op::DelRoute { dst: *dst, gw: *gw });
        }
    }
    // Index what the kernel has once, so the per-peer checks below are
    // lookups rather than scans (O(n log n) instead of O(n²): with 5,000
    // peers the scans cost ~75M comparisons per pass).
    let have_neigh: BTreeSet<(Ipv4Addr, [u8; 6])> = k
        .neighbours
        .iter()
        .filter(|(_, _, st)| st & nud::PERMANENT != 0)
        .filter_map(|(i, m, _)| m.map(|m| (*i, m)))
        .collect();
    let have_fdb: BTreeSet<([u8; 6], IpAddr)> = k
        .fdb
        .iter()
        .filter(|(_, _, st)| st & nud::PERMANENT != 0)
        .map(|(m, d, _)| (*m, *d))
        .collect();
    let have_routes: BTreeSet<(Ipv4Network, IpAddr)> = k
        .routes
        .iter()
        .filter(|(_, _, onlink)| *onlink)
        .filter_map(|(d, g, _)| g.map(|g| (*d, g)))
        .collect();
    for p in peers {
        let ip = p.subnet.network();
        if !have_neigh.contains(&(ip, p.mac)) {
            ops.push(Op::SetNeigh { ip, mac: p.mac });
        }
        if !have_fdb.contains(&(p.mac, IpAddr::V4(p.public_ip))) {
            ops.push(Op::SetFdb {
                mac: p.mac,
                dst: p.public_ip,
            });
        }
        if !have_routes.contains(&(p.subnet, IpAddr::V4(ip))) {
            ops.push(Op::SetRoute {
                dst: p.subnet,
                gw: ip,
            });
        }
    }
    for (ip, _, _) in &k.neighbours {
        if network.contains(*ip) && !want_neigh.contains_key(ip) {
            ops.push(Op::DelNeigh { ip: *ip });
        }
    }
    for (mac, dst, _) in &k.fdb {
        if *mac != [0; 6] && !want_fdb.contains(&(*mac, *dst)) {
            ops.push(Op::DelFdb {
                mac: *mac,
                dst: *dst,
            });
        }
    }
    ops
}

/// A deterministic VTEP MAC: FNV-1a over the public IP and VNI, made
/// locally administered unicast. Stable across restarts and reinstalls
/// without any state file, so peers' neighbour/FDB entries never go stale
/// while the node keeps its address; a node whose IP changes gets a new
/// subnet anyway (leases are matched by PublicIP).
pub fn vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"weft-vtep"
        .iter()
        .chain(public_ip.octets().iter())
        .chain(vni.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// The external interface weftd sends VXLAN through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub name: String,
    pub ip: Ipv4Addr,
    pub mtu: u32,
}

fn first_v4(nl: &mut Netlink, index: u32) -> Result<Option<Ipv4Addr>, weft_netlink::Error> {
    Ok(nl
        .addresses(Some(index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE
        .find_map(|a| match a.net {
            IpNetwork::V4(n) => Some(n.ip()),
            _ => None,
        }))
}

/// Pick the underlay: the first of `ifaces` (names or IPs) that exists,
/// else the interface of the IPv4 default route with the lowest metric.
pub fn find_underlay(nl: &mut Netlink, ifaces: &[String]) -> Result<Underlay, DataplaneError> {
    let links = nl.links()?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            let addrs = nl.addresses(None)?;
            if let Some(a) = addrs.iter().find(|a| a.net.ip() == ip) {
                if let (Some(l), IpAddr::V4(v4)) = (by_index(a.index), ip) {
                    return Ok(Underlay {
                        index: l.index,
                        name: l.name.clone(),
                        ip: v4,
                        mtu: l.mtu,
                    });
                }
            }
        } else if let Some(l) = links.iter().find(|l| &l.name == want) {
            let ip = first_v4(nl, l.index)?.ok_or_else(|| {
                DataplaneError::Setup(format!("interface {} has no global IPv4 address", l.name))
            })?;
            return Ok(Underlay {
                index: l.index,
                name: l.name.clone(),
                ip,
                mtu: l.mtu,
            });
        }
    }
    if !ifaces.is_empty() {
        return Err(DataplaneError::Setup(format!(
            "none of --iface {} matches an interface name or an IPv4 address on this node",
            ifaces.join(",")
        )));
    }
    let mut defaults: Vec<Route> = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .filter(|r| r.dst.prefix() == 0 && r.oif.is_some())
        .collect();
    defaults.sort_by_key(|r| r.priority.unwrap_or(0));
    let r = defaults.first().ok_or_else(|| {
        DataplaneError::Setup(
            "no IPv4 default route to pick the interface from; use --iface".into(),
        )
    })?;
    let oif = r.oif.unwrap_or_default();
    let l = by_index(oif).ok_or_else(|| {
        DataplaneError::Setup(format!("default route interface #{oif} not found"))
    })?;
    let ip = first_v4(nl, l.index)?.ok_or_else(|| {
        DataplaneError::Setup(format!("interface {} has no global IPv4 address", l.name))
    })?;
    Ok(Underlay {
        index: l.index,
        name: l.name.clone(),
        ip,
        mtu: l.mtu,
    })
}

/// Everything needed to build the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl DeviceSpec {
    pub fn new(
        vni: u32,
        port: u16,
        underlay: &Underlay,
        mtu_override: Option<u32>,
        mac: [u8; 6],
    ) -> Self {
        DeviceSpec {
            name: format!("flannel.{vni}"),
            vni,
            port,
            local: underlay.ip,
            underlay_index: underlay.index,
            mtu: mtu_override
                .unwrap_or(underlay.mtu)
                .saturating_sub(VXLAN_OVERHEAD_V4),
            mac,
        }
    }
}

/// Commands to the data-plane thread.
#[derive(Debug, Clone)]
pub enum Command {
    /// Our own lease subnet (set first, and again whenever it changes).
    Local { subnet: Ipv4Network },
    /// The complete set of remote vxlan peers (replaces the previous set).
    Peers(Vec<Peer>),
}

pub struct Dataplane {
    nl: Netlink,
    spec: DeviceSpec,
    network: Ipv4Network,
    metrics: Arc<Metrics>,
    local: Option<Ipv4Network>,
    peers: Option<Vec<Peer>>,
    /// Device index last seen, to notice a recreation.
    index: Option<u32>,
}

impl Dataplane {
    pub fn new(
        spec: DeviceSpec,
        network: Ipv4Network,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DataplaneError> {
        Ok(Dataplane {
            nl: Netlink::new()?,
            spec,
            network,
            metrics,
            local: None,
            peers: None,
            index: None,
        })
    }

    /// The thread body: apply commands, reconcile on each change and every `interval`.
    pub fn run(mut self, rx: Receiver<Command>, interval: Duration) {
        loop {
            let mut changed = false;
            match rx.recv_timeout(interval) {
                Ok(c) => {
                    self.apply(c);
                    changed = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Coalesce a burst of updates into one pass.
            while let Ok(c) = rx.try_recv() {
                self.apply(c);
                changed = true;
            }
            if let Err(e) = self.reconcile() {
                self.metrics.programming_errors.fetch_add(1, Relaxed);
                crate::error!("data plane reconcile failed", error = e, changed = changed);
                if matches!(e, DataplaneError::Netlink(weft_netlink::Error::Io { .. })) {
                    if let Ok(nl) = Netlink::new() {
                        self.nl = nl;
                    }
                }
            }
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Local { subnet } => self.local = Some(subnet),
            Command::Peers(p) => self.peers = Some(p),
        }
    }

    /// Make sure the device exists with the right attributes; returns its index.
    fn ensure_device(&mut self) -> Result<u32, DataplaneError> {
        let s = self.spec.clone();
        if let Some(l) = self.nl.link_by_name(&s.name)? {
            let ok = l.kind.as_deref() == Some("vxlan")
                && l.vxlan.as_ref().is_some_and(|v| {
                    v.vni == s.vni
                        && v.port == s.port
                        && v.local == Some(IpAddr::V4(s.local))
                        && v.dev == Some(s.underlay_index)
                        && !v.learning
                });
            if ok {
                if l.mtu != s.mtu {
                    self.nl.set_mtu(l.index, s.mtu)?;
                }
                if l.mac != Some(s.mac) {
                    crate::warn!(
                        "vxlan device MAC differs; fixing",
                        dev = s.name,
                        was = l.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                        mac = format_mac(&s.mac)
                    );
                    self.nl.set_mac(l.index, s.mac)?;
                }
                if !l.up {
                    self.nl.set_up(l.index)?;
                }
                return Ok(l.index);
            }
            crate::warn!(
                "vxlan device has incompatible attributes; recreating",
                dev = s.name,
                found = format!("{:?}", l.vxlan)
            );
            self.nl.delete_link(l.index)?;
        }
        self.nl.create_vxlan(&VxlanSpec {
            name: s.name.clone(),
            vni: s.vni,
            local: Some(IpAddr::V4(s.local)),
            dev: Some(s.underlay_index),
            port: s.port,
            mtu: Some(s.mtu),
            mac: Some(s.mac),
        })?;
        self.metrics.device_recreations.fetch_add(1, Relaxed);
        let idx = self.nl.link_index(&s.name)?;
        let _ = weft_netlink::write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", s.name), "0");
        self.nl.set_up(idx)?;
        crate::info!(
            "created vxlan device",
            dev = s.name,
            vni = s.vni,
            port = s.port,
            local = s.local,
            mtu = s.mtu,
            mac = format_mac(&s.mac)
        );
        Ok(idx)
    }

    /// The lease's network address as /32 on the device, and no other IPv4 address.
    fn ensure_address(&mut self, index: u32, subnet: &Ipv4Network) -> Result<(), DataplaneError> {
        let want = Ipv4Network::new(subnet.network(), 32)
            .map_err(|e| DataplaneError::Setup(e.to_string()))?;
        let mut have = false;
        for a in self.nl.addresses(Some(index))? {
            if let IpNetwork::V4(n) = a.net {
                if n == want {
                    have = true;
                } else {
                    crate::info!("removing stale address from vxlan device", addr = n);
                    self.nl.del_address(index, a.net)?;
                }
            }
        }
        if !have {
            match self.nl.add_address(index, IpNetwork::V4(want)) {
                Err(e) if e.is_exists() => {}
                r => r?,
            }
        }
        Ok(())
    }

    fn kernel_state(&mut self, index: u32) -> Result<KernelState, DataplaneError> {
        let neighbours = self
            .nl
            .neighbours(index)?
            .into_iter()
            .filter_map(|n| match n.ip {
                IpAddr::V4(ip) => Some((ip, n.mac, n.state)),
                _ => None,
            })
            .collect();
        let fdb = self
            .nl
            .fdb(index)?
            .into_iter()
            .filter(|e| e.is_self)
            .filter_map(|e| e.dst.map(|d| (e.mac, d, e.state)))
            .collect();
        let routes = self
            .nl
            .routes(IpFamily::V4)?
            .into_iter()
            .filter(|r| r.oif == Some(index))
            .filter_map(|r| match r.dst {
                IpNetwork::V4(d) => Some((d, r.gateway, r.onlink)),
                _ => None,
            })
            .collect();
        Ok(KernelState {
            neighbours,
            fdb,
            routes,
        })
    }

    fn exec(&mut self, index: u32, op: &Op) -> Result<(), weft_netlink::Error> {
        let r = match op {
            Op::SetNeigh { ip, mac } => self.nl.replace_neighbour(index, IpAddr::V4(*ip), *mac),
            Op::SetFdb { mac, dst } => self.nl.replace_fdb(index, *mac, IpAddr::V4(*dst)),
            Op::SetRoute { dst, gw } => {
                let mut r = Route::new(IpNetwork::V4(*dst));
                r.gateway = Some(IpAddr::V4(*gw));
                r.oif = Some(index);
                r.onlink = true;
                self.nl.replace_route(&r)
            }
            Op::DelRoute { dst, gw } => {
                let mut r = Route::new(IpNetwork::V4(*dst));
                r.gateway = *gw;
                r.oif = Some(index);
                self.nl.del_route(&r)
            }
            Op::DelNeigh { ip } => self.nl.del_neighbour(index, IpAddr::V4(*ip)),
            Op::DelFdb { mac, dst } => self.nl.del_fdb(index, *mac, *dst),
        };
        match r {
            // Already gone is fine for deletions.
            Err(e)
                if e.is_not_found()
                    && matches!(
                        op,
                        Op::DelRoute { .. } | Op::DelNeigh { .. } | Op::DelFdb { .. }
                    ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    /// One full pass: device, address, then peers (once known).
    pub fn reconcile(&mut self) -> Result<(), DataplaneError> {
        let Some(local) = self.local else {
            return Ok(());
        };
        let index = self.ensure_device()?;
        if self.index.is_some_and(|i| i != index) {
            crate::warn!(
                "vxlan device was recreated; replaying all entries",
                dev = self.spec.name,
                index = index
            );
        }
        self.index = Some(index);
        self.ensure_address(index, &local)?;
        let Some(peers) = self.peers.clone() else {
            return Ok(());
        };
        // Never program our own subnet, whatever the caller sent.
        let peers: Vec<Peer> = peers.into_iter().filter(|p| p.subnet != local).collect();
        let kernel = self.kernel_state(index)?;
        let ops = diff(&self.network, &peers, &kernel);
        let mut errors = 0u64;
        for op in &ops {
            match self.exec(index, op) {
                Ok(()) => {
                    self.metrics.reconcile_repairs.fetch_add(1, Relaxed);
                    crate::debug!("programmed", op = format!("{op:?}"));
                }
                Err(e) => {
                    errors += 1;
                    self.metrics.programming_errors.fetch_add(1, Relaxed);
                    crate::error!("programming failed", op = format!("{op:?}"), error = e);
                }
            }
        }
        if !ops.is_empty() {
            crate::info!(
                "data plane synced",
                peers = peers.len(),
                ops = ops.len(),
                errors = errors
            );
        }
        // Count what is really there now.
        let after = if ops.is_empty() {
            kernel
        } else {
            self.kernel_state(index)?
        };
        let missing = diff(&self.network, &peers, &after);
        let bad: BTreeSet<Ipv4Network> = missing
            .iter()
            .filter_map(|o| match o {
                Op::SetNeigh { ip, .. } => peers
                    .iter()
                    .find(|p| p.subnet.network() == *ip)
                    .map(|p| p.subnet),
                Op::SetFdb { mac, .. } => peers.iter().find(|p| p.mac == *mac).map(|p| p.subnet),
                Op::SetRoute { dst, .. } => Some(*dst),
                _ => None,
            })
            .collect();
        let set_ops = missing
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Op::SetNeigh { .. } | Op::SetFdb { .. } | Op::SetRoute { .. }
                )
            })
            .count() as u64;
        self.metrics
            .entries_programmed
            .store((peers.len() as u64 * 3).saturating_sub(set_ops), Relaxed);
        self.metrics
            .peers_programmed
            .store(peers.len().saturating_sub(bad.len()) as u64, Relaxed);
        if errors == 0 && missing.is_empty() {
            self.metrics.last_sync_seconds.store(now_unix(), Relaxed);
            self.metrics.peers_synced.store(true, Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn peer(sub: &str, mac_last: u8, ip: [u8; 4]) -> Peer {
        Peer {
            subnet: net(sub),
            mac: [2, 0, 0, 0, 0, mac_last],
            public_ip: Ipv4Addr::from(ip),
        }
    }
    fn programmed(peers: &[Peer]) -> KernelState {
        KernelState {
            neighbours: peers
                .iter()
                .map(|p| (p.subnet.network(), Some(p.mac), nud::PERMANENT))
                .collect(),
            fdb: peers
                .iter()
                .map(|p| (p.mac, IpAddr::V4(p.public_ip), nud::PERMANENT))
                .collect(),
            routes: peers
                .iter()
                .map(|p| (p.subnet, Some(IpAddr::V4(p.subnet.network())), true))
                .collect(),
        }
    }
    const NET: &str = "10.5.0.0/16";

    #[test]
    fn empty_kernel_gets_three_entries_per_peer_in_order() {
        let p = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let ops = diff(&net(NET), &[p], &KernelState::default());
        assert_eq!(
            ops,
            vec![
                Op::SetNeigh {
                    ip: Ipv4Addr::new(10, 5, 7, 0),
                    mac: p.mac
                },
                Op::SetFdb {
                    mac: p.mac,
                    dst: p.public_ip
                },
                Op::SetRoute {
                    dst: p.subnet,
                    gw: Ipv4Addr::new(10, 5, 7, 0)
                },
            ]
        );
    }

    #[test]
    fn converged_state_needs_nothing() {
        let peers = [
            peer("10.5.7.0/24", 7, [198, 51, 100, 7]),
            peer("10.5.8.0/24", 8, [198, 51, 100, 8]),
        ];
        assert!(diff(&net(NET), &peers, &programmed(&peers)).is_empty());
    }

    #[test]
    fn removed_peer_loses_all_three_route_first() {
        let a = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let b = peer("10.5.8.0/24", 8, [198, 51, 100, 8]);
        let ops = diff(&net(NET), &[a], &programmed(&[a, b]));
        assert_eq!(
            ops,
            vec![
                Op::DelRoute {
                    dst: b.subnet,
                    gw: Some(IpAddr::V4(b.subnet.network()))
                },
                Op::DelNeigh {
                    ip: b.subnet.network()
                },
                Op::DelFdb {
                    mac: b.mac,
                    dst: IpAddr::V4(b.public_ip)
                },
            ]
        );
    }

    #[test]
    fn mac_change_replaces_and_drops_stale_fdb() {
        let old = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let new = Peer {
            mac: [2, 0, 0, 0, 0, 0x77],
            ..old
        };
        let ops = diff(&net(NET), &[new], &programmed(&[old]));
        assert_eq!(
            ops,
            vec![
                Op::SetNeigh {
                    ip: old.subnet.network(),
                    mac: new.mac
                },
                Op::SetFdb {
                    mac: new.mac,
                    dst: new.public_ip
                },
                Op::DelFdb {
                    mac: old.mac,
                    dst: IpAddr::V4(old.public_ip)
                },
            ]
        );
    }

    #[test]
    fn public_ip_change_replaces_fdb() {
        let old = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let new = Peer {
            public_ip: Ipv4Addr::new(198, 51, 100, 70),
            ..old
        };
        let ops = diff(&net(NET), &[new], &programmed(&[old]));
        assert_eq!(
            ops,
            vec![
                Op::SetFdb {
                    mac: new.mac,
                    dst: new.public_ip
                },
                Op::DelFdb {
                    mac: old.mac,
                    dst: IpAddr::V4(old.public_ip)
                },
            ]
        );
    }

    #[test]
    fn drift_is_repaired() {
        let a = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let mut k = programmed(&[a]);
        k.routes.clear(); // someone deleted the route
        k.neighbours[0].2 = nud::STALE; // and the neighbour is no longer permanent
        k.routes
            .push((a.subnet, Some(IpAddr::V4(a.subnet.network())), false)); // not onlink
        let ops = diff(&net(NET), &[a], &k);
        assert_eq!(
            ops,
            vec![
                Op::SetNeigh {
                    ip: a.subnet.network(),
                    mac: a.mac
                },
                Op::SetRoute {
                    dst: a.subnet,
                    gw: a.subnet.network()
                },
            ]
        );
    }

    #[test]
    fn foreign_entries_outside_network_are_left_alone() {
        let mut k = KernelState::default();
        k.routes.push((net("192.168.0.0/24"), None, false));
        k.neighbours.push((
            Ipv4Addr::new(192, 168, 0, 1),
            Some([2, 1, 1, 1, 1, 1]),
            nud::REACHABLE,
        ));
        k.fdb.push((
            [0; 6],
            IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)),
            nud::PERMANENT,
        ));
        assert!(diff(&net(NET), &[], &k).is_empty());
    }

    #[test]
    fn mac_is_stable_local_unicast_and_distinct() {
        let ip = Ipv4Addr::new(198, 51, 100, 7);
        let m = vtep_mac(ip, 1);
        assert_eq!(m, vtep_mac(ip, 1));
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_ne!(m, vtep_mac(Ipv4Addr::new(198, 51, 100, 8), 1));
        assert_ne!(m, vtep_mac(ip, 2));
    }

    #[test]
    fn device_spec_mtu() {
        let u = Underlay {
            index: 2,
            name: "eth0".into(),
            ip: Ipv4Addr::new(198, 51, 100, 7),
            mtu: 1500,
        };
        let s = DeviceSpec::new(1, 8472, &u, None, [2, 0, 0, 0, 0, 1]);
        assert_eq!(s.name, "flannel.1");
        assert_eq!(s.mtu, 1450);
        assert_eq!(DeviceSpec::new(7, 8472, &u, Some(9000), [2; 6]).mtu, 8950);
    }
}
