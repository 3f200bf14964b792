//! The VXLAN data plane: the `flannel.<VNI>` device and, per remote vxlan
//! lease, a permanent neighbour (`<subnet .0> -> VtepMAC`), an FDB entry
//! (`VtepMAC -> PublicIP`, self, permanent) and a route
//! (`<subnet> via <.0> dev flannel.N onlink`). With a dual-stack config the
//! same is done for IPv6 on a second device, `flannel-v6.<VNI>` (local =
//! our PublicIPv6, MTU = underlay − 70, the v6 lease base as /128), from
//! the peers' IPv6 subnets, PublicIPv6 and BackendV6Data.VtepMAC.
//!
//! It runs on one dedicated std::thread with a synchronous netlink socket
//! (weftd runs in the node's netns, so no setns ever happens). The thread
//! holds the full desired state and, on every change and every
//! `interval`, diffs it against what the kernel has ([`diff`], pure and
//! generic over the address family through [`Subnet`]) and applies only
//! the difference. Nothing is flushed on start: entries that are already
//! right stay untouched, so pods do not lose packets across a restart.

use crate::config::{VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6};
use crate::logging::Repeats;
use crate::metrics::{now_unix, Metrics};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Debug, Display};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use weft_netlink::{format_mac, nud, IpFamily, LinkEvent, Netlink, Route, VxlanSpec};

#[derive(thiserror::Error, Debug)]
pub enum DataplaneError {
    #[error(transparent)]
    Netlink(#[from] weft_netlink::Error),
    #[error("{0}")]
    Setup(String),
}

const RTPROT_KERNEL: u8 = 2;

/// What the shared data-plane code needs from an address family's subnet
/// type (implemented for `Ipv4Network` and `Ipv6Network`).
pub trait Subnet: Copy + Ord + Debug + Display + Send + 'static {
    type Addr: Copy + Ord + Debug + Display + Into<IpAddr> + Send + 'static;
    const FAMILY: IpFamily;
    /// The network (base) address: the peer's VTEP address and gateway.
    fn base(&self) -> Self::Addr;
    fn has(&self, a: Self::Addr) -> bool;
    /// ipnetwork's `overlaps`, for code generic over the family.
    fn overlaps(&self, other: &Self) -> bool;
    fn ip_network(&self) -> IpNetwork;
    /// The base address as a host prefix (/32 or /128).
    fn host(&self) -> Result<IpNetwork, DataplaneError>;
    fn from_ip_network(n: IpNetwork) -> Option<Self>;
    fn addr_from_ip(a: IpAddr) -> Option<Self::Addr>;
}

impl Subnet for Ipv4Network {
    type Addr = Ipv4Addr;
    const FAMILY: IpFamily = IpFamily::V4;
    fn base(&self) -> Ipv4Addr {
        self.network()
    }
    fn has(&self, a: Ipv4Addr) -> bool {
        self.contains(a)
    }
    fn overlaps(&self, other: &Self) -> bool {
        Ipv4Network::overlaps(*self, *other)
    }
    fn ip_network(&self) -> IpNetwork {
        IpNetwork::V4(*self)
    }
    fn host(&self) -> Result<IpNetwork, DataplaneError> {
        Ipv4Network::new(self.network(), 32)
            .map(IpNetwork::V4)
            .map_err(|e| DataplaneError::Setup(e.to_string()))
    }
    fn from_ip_network(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }
    fn addr_from_ip(a: IpAddr) -> Option<Ipv4Addr> {
        match a {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl Subnet for Ipv6Network {
    type Addr = Ipv6Addr;
    const FAMILY: IpFamily = IpFamily::V6;
    fn base(&self) -> Ipv6Addr {
        self.network()
    }
    fn has(&self, a: Ipv6Addr) -> bool {
        self.contains(a)
    }
    fn overlaps(&self, other: &Self) -> bool {
        Ipv6Network::overlaps(*self, *other)
    }
    fn ip_network(&self) -> IpNetwork {
        IpNetwork::V6(*self)
    }
    fn host(&self) -> Result<IpNetwork, DataplaneError> {
        Ipv6Network::new(self.network(), 128)
            .map(IpNetwork::V6)
            .map_err(|e| DataplaneError::Setup(e.to_string()))
    }
    fn from_ip_network(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }
    fn addr_from_ip(a: IpAddr) -> Option<Ipv6Addr> {
        match a {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => None,
        }
    }
}

/// A remote node, from its lease (its IPv4 or IPv6 side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer<N: Subnet = Ipv4Network> {
    pub subnet: N,
    pub mac: [u8; 6],
    pub public_ip: N::Addr,
}

/// What the kernel has on the device, reduced to what we manage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelState<N: Subnet = Ipv4Network> {
    /// Neighbours of the family on the device: ip -> (mac, NUD state).
    pub neighbours: Vec<(N::Addr, Option<[u8; 6]>, u16)>,
    /// FDB entries with a destination: (mac, dst, NUD state).
    pub fdb: Vec<([u8; 6], IpAddr, u16)>,
    /// Main-table routes of the family whose output device is ours: (dst, gateway, onlink).
    pub routes: Vec<(N, Option<IpAddr>, bool)>,
}

impl<N: Subnet> Default for KernelState<N> {
    fn default() -> Self {
        KernelState {
            neighbours: Vec::new(),
            fdb: Vec::new(),
            routes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<N: Subnet = Ipv4Network> {
    SetNeigh { ip: N::Addr, mac: [u8; 6] },
    SetFdb { mac: [u8; 6], dst: N::Addr },
    SetRoute { dst: N, gw: N::Addr },
    DelRoute { dst: N, gw: Option<IpAddr> },
    DelNeigh { ip: N::Addr },
    DelFdb { mac: [u8; 6], dst: IpAddr },
}

/// Desired peers vs kernel entries -> the operations that make the kernel
/// match, for either address family. Kernel entries are recognised as ours
/// by their signature, wherever their address lies, so anything weftd (or
/// flanneld) ever programmed can be removed: routes that are onlink via
/// their own network address, permanent neighbours, and FDB entries with a
/// destination and a non-zero MAC (all on our device; the caller passes
/// only the device's entries).
/// Order: stale routes go first, then per peer neighbour, FDB, route (so the
/// route never needs ARP/ND), then stale neighbour and FDB entries.
pub fn diff<N: Subnet>(peers: &[Peer<N>], k: &KernelState<N>) -> Vec<Op<N>> {
    let mut ops = Vec::new();
    let want_routes: BTreeMap<N, N::Addr> =
        peers.iter().map(|p| (p.subnet, p.subnet.base())).collect();
    let want_neigh: BTreeMap<N::Addr, [u8; 6]> =
        peers.iter().map(|p| (p.subnet.base(), p.mac)).collect();
    let want_fdb: BTreeSet<([u8; 6], IpAddr)> =
        peers.iter().map(|p| (p.mac, p.public_ip.into())).collect();

    for (dst, gw, onlink) in &k.routes {
        let ours = *onlink && *gw == Some(dst.base().into());
        if ours && !want_routes.contains_key(dst) {
            ops.push(Op::DelRoute { dst: *dst, gw: *gw });
        }
    }
    // Index what the kernel has once, so the per-peer checks below are
    // lookups rather than scans (O(n log n) instead of O(n²): with 5,000
    // peers the scans cost ~75M comparisons per pass).
    let have_neigh: BTreeSet<(N::Addr, [u8; 6])> = k
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
    let have_routes: BTreeSet<(N, IpAddr)> = k
        .routes
        .iter()
        .filter(|(_, _, onlink)| *onlink)
        .filter_map(|(d, g, _)| g.map(|g| (*d, g)))
        .collect();
    for p in peers {
        let ip = p.subnet.base();
        if !have_neigh.contains(&(ip, p.mac)) {
            ops.push(Op::SetNeigh { ip, mac: p.mac });
        }
        if !have_fdb.contains(&(p.mac, p.public_ip.into())) {
            ops.push(Op::SetFdb {
                mac: p.mac,
                dst: p.public_ip,
            });
        }
        if !have_routes.contains(&(p.subnet, ip.into())) {
            ops.push(Op::SetRoute {
                dst: p.subnet,
                gw: ip,
            });
        }
    }
    for (ip, _, state) in &k.neighbours {
        if state & nud::PERMANENT != 0 && !want_neigh.contains_key(ip) {
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
    mac_from(&public_ip.octets(), vni)
}

/// The same for `flannel-v6.<VNI>`, from our PublicIPv6.
pub fn vtep_mac_v6(public_ipv6: Ipv6Addr, vni: u32) -> [u8; 6] {
    mac_from(&public_ipv6.octets(), vni)
}

fn mac_from(ip: &[u8], vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"weft-vtep"
        .iter()
        .chain(ip.iter())
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
    /// The interface's first global IPv6 address (the default PublicIPv6).
    pub ip6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Every global address on the interface, with its prefix: no peer
    /// subnet may overlap these.
    pub nets: Vec<IpNetwork>,
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

fn first_global_v6(nl: &mut Netlink, index: u32) -> Result<Option<Ipv6Addr>, weft_netlink::Error> {
    Ok(nl
        .addresses(Some(index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE: not link-local
        .find_map(|a| match a.net {
            IpNetwork::V6(n) if !n.ip().is_loopback() => Some(n.ip()),
            _ => None,
        }))
}

/// Pick the underlay: the first of `ifaces` (names or IPs) that exists,
/// else the interface of the IPv4 default route with the lowest metric.
/// `ip6` is that interface's first global IPv6 address, if any.
pub fn find_underlay(nl: &mut Netlink, ifaces: &[String]) -> Result<Underlay, DataplaneError> {
    let mut u = find_underlay_v4(nl, ifaces)?;
    u.ip6 = first_global_v6(nl, u.index)?;
    u.nets = nl
        .addresses(Some(u.index))?
        .into_iter()
        .filter(|a| a.scope == 0) // RT_SCOPE_UNIVERSE
        .map(|a| a.net)
        .collect();
    Ok(u)
}

fn find_underlay_v4(nl: &mut Netlink, ifaces: &[String]) -> Result<Underlay, DataplaneError> {
    let links = nl.links()?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    for want in ifaces {
        if let Ok(ip) = want.parse::<IpAddr>() {
            let addrs = nl.addresses(None)?;
            if let Some(a) = addrs.iter().find(|a| a.net.ip() == ip) {
                if let (Some(l), IpAddr::V4(v4)) = (by_index(a.index), ip) {
                    return Ok(Underlay {
                        index: l.index,
                        ip6: None,
                        name: l.name.clone(),
                        ip: v4,
                        mtu: l.mtu,
                        nets: Vec::new(),
                    });
                }
            }
        } else if let Some(l) = links.iter().find(|l| &l.name == want) {
            let ip = first_v4(nl, l.index)?.ok_or_else(|| {
                DataplaneError::Setup(format!("interface {} has no global IPv4 address", l.name))
            })?;
            return Ok(Underlay {
                index: l.index,
                ip6: None,
                name: l.name.clone(),
                ip,
                mtu: l.mtu,
                nets: Vec::new(),
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
        ip6: None,
        name: l.name.clone(),
        ip,
        mtu: l.mtu,
        nets: Vec::new(),
    })
}

/// Everything needed to build a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl DeviceSpec {
    /// `flannel.<VNI>`: local = the underlay's IPv4 address, MTU = underlay − 50.
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
            local: IpAddr::V4(underlay.ip),
            underlay_index: underlay.index,
            mtu: mtu_override
                .unwrap_or(underlay.mtu)
                .saturating_sub(VXLAN_OVERHEAD_V4),
            mac,
        }
    }

    /// `flannel-v6.<VNI>`: local = our PublicIPv6, MTU = underlay − 70 (the
    /// outer IPv6 header is 20 bytes longer; flannel's bug #1781 uses 50).
    pub fn new_v6(
        vni: u32,
        port: u16,
        underlay: &Underlay,
        local: Ipv6Addr,
        mtu_override: Option<u32>,
        mac: [u8; 6],
    ) -> Self {
        DeviceSpec {
            name: format!("flannel-v6.{vni}"),
            vni,
            port,
            local: IpAddr::V6(local),
            underlay_index: underlay.index,
            mtu: mtu_override
                .unwrap_or(underlay.mtu)
                .saturating_sub(VXLAN_OVERHEAD_V6),
            mac,
        }
    }
}

/// Commands to the data-plane thread.
#[derive(Debug, Clone)]
pub enum Command {
    /// Our own lease subnets (set first, and again whenever they change).
    Local {
        subnet: Ipv4Network,
        subnet6: Option<Ipv6Network>,
    },
    /// The complete set of remote vxlan peers, IPv4 and IPv6 sides
    /// (replaces the previous sets).
    Peers(Vec<Peer>, Vec<Peer<Ipv6Network>>),
    /// One of our devices was deleted or went down (see [`watch_links`]):
    /// reconcile now rather than at the next interval.
    LinkChanged,
}

/// The link-watch thread body: wake the data plane as soon as one of
/// `names` is deleted or set down, or notifications were lost, so a
/// deleted `flannel.<VNI>` is recreated and replayed at once instead of at
/// the next `--reconcile-interval` pass. Returns when the data plane is gone.
pub fn watch_links(names: Vec<String>, tx: std::sync::mpsc::Sender<Command>) {
    loop {
        let mut mon = match weft_netlink::LinkMonitor::new() {
            Ok(m) => m,
            Err(e) => {
                crate::error!(
                    "cannot subscribe to link notifications; retrying",
                    error = e
                );
                std::thread::sleep(Duration::from_secs(5));
                continue;
            }
        };
        loop {
            let events = match mon.recv() {
                Ok(ev) => ev,
                Err(e) => {
                    crate::error!("link notifications failed; resubscribing", error = e);
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            };
            let mut wake = false;
            for ev in &events {
                match ev {
                    LinkEvent::Del(l) if names.contains(&l.name) => {
                        crate::warn!("vxlan device deleted; recreating", dev = l.name);
                        wake = true;
                    }
                    LinkEvent::New(l) if names.contains(&l.name) && !l.up => wake = true,
                    LinkEvent::Lost => wake = true,
                    _ => {}
                }
            }
            if wake && tx.send(Command::LinkChanged).is_err() {
                return;
            }
        }
    }
}

/// One family's device and its desired state.
struct Overlay<N: Subnet> {
    spec: DeviceSpec,
    local: Option<N>,
    peers: Option<Vec<Peer<N>>>,
    /// Device index last seen, to notice a recreation.
    index: Option<u32>,
    /// Programming errors already logged (each is logged once a minute at most).
    errors: Repeats,
}

/// What one reconcile pass of one family achieved (for the metrics).
#[derive(Default)]
struct Outcome {
    peers: u64,
    peers_ok: u64,
    entries_ok: u64,
    clean: bool,
}

impl<N: Subnet> Overlay<N> {
    fn new(spec: DeviceSpec) -> Self {
        Overlay {
            spec,
            local: None,
            peers: None,
            index: None,
            errors: Repeats::new(ERROR_LOG_EVERY),
        }
    }

    /// Make sure the device exists with the right attributes; returns its index.
    fn ensure_device(
        &mut self,
        nl: &mut Netlink,
        metrics: &Metrics,
    ) -> Result<u32, DataplaneError> {
        let s = &self.spec;
        if let Some(l) = nl.link_by_name(&s.name)? {
            let ok = l.kind.as_deref() == Some("vxlan")
                && l.vxlan.as_ref().is_some_and(|v| {
                    v.vni == s.vni
                        && v.port == s.port
                        && v.local == Some(s.local)
                        && v.dev == Some(s.underlay_index)
                        && !v.learning
                });
            if ok {
                if l.mtu != s.mtu {
                    nl.set_mtu(l.index, s.mtu)?;
                }
                if l.mac != Some(s.mac) {
                    crate::warn!(
                        "vxlan device MAC differs; fixing",
                        dev = s.name,
                        was = l.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                        mac = format_mac(&s.mac)
                    );
                    nl.set_mac(l.index, s.mac)?;
                }
                if !l.up {
                    nl.set_up(l.index)?;
                }
                return Ok(l.index);
            }
            crate::warn!(
                "vxlan device has incompatible attributes; recreating",
                dev = s.name,
                found = format!("{:?}", l.vxlan)
            );
            nl.delete_link(l.index)?;
        }
        nl.create_vxlan(&VxlanSpec {
            name: s.name.clone(),
            vni: s.vni,
            local: Some(s.local),
            dev: Some(s.underlay_index),
            port: s.port,
            mtu: Some(s.mtu),
            mac: Some(s.mac),
        })?;
        metrics.device_recreations.fetch_add(1, Relaxed);
        let idx = nl.link_index(&s.name)?;
        let _ = weft_netlink::write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", s.name), "0");
        nl.set_up(idx)?;
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

    /// The lease's network address as /32 (/128) on the device, and no other
    /// address of the family (IPv6 link-local addresses are left alone).
    fn ensure_address(
        &mut self,
        nl: &mut Netlink,
        index: u32,
        subnet: &N,
    ) -> Result<(), DataplaneError> {
        let want = subnet.host()?;
        let mut have = false;
        for a in nl.addresses(Some(index))? {
            if N::from_ip_network(a.net).is_none() {
                continue;
            }
            if a.net == want {
                have = true;
            } else if N::FAMILY == IpFamily::V4 || a.scope == 0 {
                crate::info!("removing stale address from vxlan device", addr = a.net);
                nl.del_address(index, a.net)?;
            }
        }
        if !have {
            // No DAD for IPv6: the address must be usable at once.
            let r = match N::FAMILY {
                IpFamily::V4 => nl.add_address(index, want),
                IpFamily::V6 => nl.add_address_nodad(index, want),
            };
            match r {
                Err(e) if e.is_exists() => {}
                r => r?,
            }
        }
        Ok(())
    }

    fn kernel_state(&self, nl: &mut Netlink, index: u32) -> Result<KernelState<N>, DataplaneError> {
        let neighbours = nl
            .neighbours(index)?
            .into_iter()
            .filter_map(|n| N::addr_from_ip(n.ip).map(|ip| (ip, n.mac, n.state)))
            .collect();
        let fdb = nl
            .fdb(index)?
            .into_iter()
            .filter(|e| e.is_self)
            .filter_map(|e| e.dst.map(|d| (e.mac, d, e.state)))
            .collect();
        let routes = nl
            .routes(N::FAMILY)?
            .into_iter()
            .filter(|r| r.oif == Some(index))
            // IPv6 puts a kernel route for our own /128 in the main table: not ours to manage.
            .filter(|r| N::FAMILY == IpFamily::V4 || r.protocol != Some(RTPROT_KERNEL))
            .filter_map(|r| N::from_ip_network(r.dst).map(|d| (d, r.gateway, r.onlink)))
            .collect();
        Ok(KernelState {
            neighbours,
            fdb,
            routes,
        })
    }

    fn exec(nl: &mut Netlink, index: u32, op: &Op<N>) -> Result<(), weft_netlink::Error> {
        let r = match op {
            Op::SetNeigh { ip, mac } => nl.replace_neighbour(index, (*ip).into(), *mac),
            Op::SetFdb { mac, dst } => nl.replace_fdb(index, *mac, (*dst).into()),
            Op::SetRoute { dst, gw } => {
                let mut r = Route::new(dst.ip_network());
                r.gateway = Some((*gw).into());
                r.oif = Some(index);
                r.onlink = true;
                nl.replace_route(&r)
            }
            Op::DelRoute { dst, gw } => {
                let mut r = Route::new(dst.ip_network());
                r.gateway = *gw;
                r.oif = Some(index);
                nl.del_route(&r)
            }
            Op::DelNeigh { ip } => nl.del_neighbour(index, (*ip).into()),
            Op::DelFdb { mac, dst } => nl.del_fdb(index, *mac, *dst),
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

    /// One full pass: device, address, then peers (once known). The
    /// outcome is computed from the one kernel read and the result of each
    /// operation; the kernel is not read a second time.
    fn reconcile(
        &mut self,
        nl: &mut Netlink,
        metrics: &Metrics,
    ) -> Result<Outcome, DataplaneError> {
        let Some(local) = self.local else {
            return Ok(Outcome::default());
        };
        let index = self.ensure_device(nl, metrics)?;
        if self.index.is_some_and(|i| i != index) {
            crate::warn!(
                "vxlan device was recreated; replaying all entries",
                dev = self.spec.name,
                index = index
            );
        }
        self.index = Some(index);
        self.ensure_address(nl, index, &local)?;
        let Some(peers) = self.peers.clone() else {
            return Ok(Outcome::default());
        };
        // Never program our own subnet, whatever the caller sent.
        let peers: Vec<Peer<N>> = peers.into_iter().filter(|p| p.subnet != local).collect();
        let kernel = self.kernel_state(nl, index)?;
        let ops = diff(&peers, &kernel);
        let mut failed = Vec::new();
        for op in &ops {
            match Self::exec(nl, index, op) {
                Ok(()) => {
                    metrics.reconcile_repairs.fetch_add(1, Relaxed);
                    crate::debug!("programmed", dev = self.spec.name, op = format!("{op:?}"));
                }
                Err(e) => {
                    metrics.programming_errors.fetch_add(1, Relaxed);
                    let op_text = format!("{op:?}");
                    if let Some(n) = self.errors.check(&format!("{op_text} {e}")) {
                        crate::error!(
                            "programming failed",
                            dev = self.spec.name,
                            op = op_text,
                            error = e,
                            repeats_suppressed = n
                        );
                    }
                    failed.push(op);
                }
            }
        }
        self.errors.sweep();
        if !ops.is_empty() {
            crate::info!(
                "data plane synced",
                dev = self.spec.name,
                peers = peers.len(),
                ops = ops.len(),
                errors = failed.len()
            );
        }
        // A peer is programmed unless one of its entries failed to go in.
        let bad: BTreeSet<N> = failed
            .iter()
            .filter_map(|o| match o {
                Op::SetNeigh { ip, .. } => peers
                    .iter()
                    .find(|p| p.subnet.base() == *ip)
                    .map(|p| p.subnet),
                Op::SetFdb { mac, dst } => peers
                    .iter()
                    .find(|p| p.mac == *mac && p.public_ip == *dst)
                    .map(|p| p.subnet),
                Op::SetRoute { dst, .. } => Some(*dst),
                _ => None,
            })
            .collect();
        let failed_sets = failed
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Op::SetNeigh { .. } | Op::SetFdb { .. } | Op::SetRoute { .. }
                )
            })
            .count() as u64;
        Ok(Outcome {
            peers: peers.len() as u64,
            peers_ok: peers.len().saturating_sub(bad.len()) as u64,
            entries_ok: (peers.len() as u64 * 3).saturating_sub(failed_sets),
            clean: failed.is_empty(),
        })
    }
}

/// How often one repeating error is logged at most.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Dataplane {
    nl: Netlink,
    metrics: Arc<Metrics>,
    v4: Overlay<Ipv4Network>,
    /// `flannel-v6.<VNI>` when the config is dual-stack.
    v6: Option<Overlay<Ipv6Network>>,
    errors: Repeats,
}

impl Dataplane {
    pub fn new(
        spec: DeviceSpec,
        spec6: Option<DeviceSpec>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, DataplaneError> {
        Ok(Dataplane {
            nl: Netlink::new()?,
            metrics,
            v4: Overlay::new(spec),
            v6: spec6.map(Overlay::new),
            errors: Repeats::new(ERROR_LOG_EVERY),
        })
    }

    /// The device names, for [`watch_links`].
    pub fn device_names(&self) -> Vec<String> {
        std::iter::once(self.v4.spec.name.clone())
            .chain(self.v6.iter().map(|v| v.spec.name.clone()))
            .collect()
    }

    /// The thread body: apply commands, reconcile on each change and every
    /// `interval`. Readiness (`peers_synced`) follows every pass.
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
            let synced = match self.reconcile() {
                Ok(synced) => {
                    self.metrics.status.sync(Ok(()));
                    synced
                }
                Err(e) => {
                    self.metrics.status.sync(Err(e.to_string()));
                    self.metrics.programming_errors.fetch_add(1, Relaxed);
                    if let Some(n) = self.errors.check(&e.to_string()) {
                        crate::error!(
                            "data plane reconcile failed",
                            error = e,
                            changed = changed,
                            repeats_suppressed = n
                        );
                    }
                    if matches!(e, DataplaneError::Netlink(weft_netlink::Error::Io { .. })) {
                        if let Ok(nl) = Netlink::new() {
                            self.nl = nl;
                        }
                    }
                    false
                }
            };
            self.errors.sweep();
            self.metrics.peers_synced.store(synced, Relaxed);
        }
    }

    fn apply(&mut self, c: Command) {
        match c {
            Command::Local { subnet, subnet6 } => {
                self.v4.local = Some(subnet);
                if let Some(v6) = &mut self.v6 {
                    v6.local = subnet6;
                }
            }
            Command::Peers(p, p6) => {
                self.v4.peers = Some(p);
                if let Some(v6) = &mut self.v6 {
                    v6.peers = Some(p6);
                }
            }
            Command::LinkChanged => {}
        }
    }

    /// One full pass over both families; the IPv4 side first, and an IPv6
    /// failure does not stop it. `Ok(true)`: every peer is programmed.
    pub fn reconcile(&mut self) -> Result<bool, DataplaneError> {
        if self.v4.local.is_none() {
            return Ok(false);
        }
        let o4 = self.v4.reconcile(&mut self.nl, &self.metrics)?;
        let mut outcomes = vec![o4];
        let mut v6_err = None;
        if let Some(v6) = &mut self.v6 {
            match v6.reconcile(&mut self.nl, &self.metrics) {
                Ok(o) => outcomes.push(o),
                Err(e) => v6_err = Some(e),
            }
        }
        if self.v4.peers.is_none() {
            return v6_err.map_or(Ok(false), Err);
        }
        let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
        self.metrics
            .entries_programmed
            .store(sum(|o| o.entries_ok), Relaxed);
        self.metrics.peers_programmed.store(
            // A peer counts once: the v4 count, lowered by v6 peers that are not programmed.
            outcomes[0]
                .peers_ok
                .saturating_sub(outcomes.iter().skip(1).map(|o| o.peers - o.peers_ok).sum()),
            Relaxed,
        );
        if let Some(e) = v6_err {
            return Err(e);
        }
        let clean = outcomes.iter().all(|o| o.clean);
        if clean {
            self.metrics.last_sync_seconds.store(now_unix(), Relaxed);
        }
        Ok(clean)
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

    #[test]
    fn empty_kernel_gets_three_entries_per_peer_in_order() {
        let p = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let ops = diff(&[p], &KernelState::default());
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
        assert!(diff(&peers, &programmed(&peers)).is_empty());
    }

    #[test]
    fn removed_peer_loses_all_three_route_first() {
        let a = peer("10.5.7.0/24", 7, [198, 51, 100, 7]);
        let b = peer("10.5.8.0/24", 8, [198, 51, 100, 8]);
        let ops = diff(&[a], &programmed(&[a, b]));
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
        let ops = diff(&[new], &programmed(&[old]));
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
        let ops = diff(&[new], &programmed(&[old]));
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
        let ops = diff(&[a], &k);
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
    fn our_entries_are_removed_by_signature_wherever_they_are() {
        // What a bad lease `198.51.100.0-26` once made weftd install, and a
        // route/neighbour that merely sit on the device but are not ours.
        let bad = peer("198.51.100.0/26", 9, [198, 51, 100, 9]);
        let mut k = programmed(&[bad]);
        k.routes.push((net("10.5.9.0/24"), None, false));
        k.routes.push((
            net("10.5.8.0/24"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 5, 8, 1))),
            true,
        ));
        k.neighbours.push((
            Ipv4Addr::new(10, 5, 9, 1),
            Some([2, 1, 1, 1, 1, 1]),
            nud::REACHABLE,
        ));
        assert_eq!(
            diff(&[], &k),
            vec![
                Op::DelRoute {
                    dst: bad.subnet,
                    gw: Some(IpAddr::V4(bad.subnet.network()))
                },
                Op::DelNeigh {
                    ip: bad.subnet.network()
                },
                Op::DelFdb {
                    mac: bad.mac,
                    dst: IpAddr::V4(bad.public_ip)
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
        assert!(diff(&[], &k).is_empty());
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
            ip6: None,
            mtu: 1500,
            nets: Vec::new(),
        };
        let s = DeviceSpec::new(1, 8472, &u, None, [2, 0, 0, 0, 0, 1]);
        assert_eq!(s.name, "flannel.1");
        assert_eq!(s.mtu, 1450);
        assert_eq!(DeviceSpec::new(7, 8472, &u, Some(9000), [2; 6]).mtu, 8950);
        let l6: Ipv6Addr = "2001:db8:100::7".parse().unwrap();
        let s6 = DeviceSpec::new_v6(1, 8472, &u, l6, None, [2; 6]);
        assert_eq!(s6.name, "flannel-v6.1");
        assert_eq!(s6.mtu, 1430, "IPv6 underlay: 70 bytes of overhead");
        assert_eq!(s6.local, IpAddr::V6(l6));
        assert_eq!(
            DeviceSpec::new_v6(7, 8472, &u, l6, Some(9000), [2; 6]).mtu,
            8930
        );
    }

    fn peer6(sub: &str, mac_last: u8, ip: &str) -> Peer<Ipv6Network> {
        Peer {
            subnet: sub.parse().unwrap(),
            mac: [2, 0, 0, 0, 0, mac_last],
            public_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn the_same_diff_drives_ipv6() {
        let a = peer6("fd00:10:244:7::/64", 7, "2001:db8:100::7");
        let b = peer6("fd00:10:244:8::/64", 8, "2001:db8:100::8");
        let ops = diff(&[a], &KernelState::default());
        assert_eq!(
            ops,
            vec![
                Op::SetNeigh {
                    ip: a.subnet.network(),
                    mac: a.mac
                },
                Op::SetFdb {
                    mac: a.mac,
                    dst: a.public_ip
                },
                Op::SetRoute {
                    dst: a.subnet,
                    gw: a.subnet.network()
                },
            ]
        );
        let programmed = KernelState::<Ipv6Network> {
            neighbours: [a, b]
                .iter()
                .map(|p| (p.subnet.network(), Some(p.mac), nud::PERMANENT))
                .collect(),
            fdb: [a, b]
                .iter()
                .map(|p| (p.mac, IpAddr::V6(p.public_ip), nud::PERMANENT))
                .collect(),
            routes: [a, b]
                .iter()
                .map(|p| (p.subnet, Some(IpAddr::V6(p.subnet.network())), true))
                .collect(),
        };
        assert!(diff(&[a, b], &programmed).is_empty());
        // Lease removal drops all three, route first.
        assert_eq!(
            diff(&[a], &programmed),
            vec![
                Op::DelRoute {
                    dst: b.subnet,
                    gw: Some(IpAddr::V6(b.subnet.network()))
                },
                Op::DelNeigh {
                    ip: b.subnet.network()
                },
                Op::DelFdb {
                    mac: b.mac,
                    dst: IpAddr::V6(b.public_ip)
                },
            ]
        );
        // The kernel's own link-local route and neighbours are not ours.
        let mut k = programmed.clone();
        k.routes.push(("fe80::/64".parse().unwrap(), None, false));
        k.neighbours
            .push(("fe80::1".parse().unwrap(), Some([2; 6]), nud::REACHABLE));
        assert!(diff(&[a, b], &k).is_empty());
    }

    #[test]
    fn v6_mac_is_local_unicast_and_differs_from_v4() {
        let m = vtep_mac_v6("2001:db8:100::7".parse().unwrap(), 1);
        assert_eq!(m[0] & 0x03, 0x02);
        assert_ne!(m, vtep_mac(Ipv4Addr::new(198, 51, 100, 7), 1));
    }
}
