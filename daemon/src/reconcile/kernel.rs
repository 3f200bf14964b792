//! The kernel side of reconcile: read the entries that carry weftd's
//! signature, execute operations, and watch for changes made under us.

use crate::backends::underlay::UnderlayRoutes;
use crate::backends::{BackendError, Entry, Op};
use ipnetwork::IpNetwork;
use std::collections::BTreeSet;
use std::sync::mpsc::Sender;
use std::time::Duration;
use weft_netlink::{nud, Change, IpFamily, KernelEvent, LinkMonitor, Netlink, Route};

use super::Command;

const RTPROT_KERNEL: u8 = 2;
const RT_TABLE_MAIN: u32 = 254;

/// What one read of the kernel found.
pub struct Read {
    /// Entries weftd (any backend, or flanneld) programmed, recognised by
    /// their signature wherever their address lies, so anything it ever
    /// programmed can be removed: on our vxlan device, routes onlink via
    /// their own network address, permanent neighbours and FDB entries
    /// with a destination and a non-zero MAC; on the underlay interface,
    /// routes with a gateway into the pod networks (host-gw and
    /// DirectRouting's direct form).
    pub ours: BTreeSet<Entry>,
    pub underlay_routes: UnderlayRoutes,
}

fn inside(nets: &[IpNetwork], dst: &IpNetwork) -> bool {
    nets.iter()
        .any(|n| n.contains(dst.network()) && n.prefix() <= dst.prefix())
}

/// Read the families' routes and our devices' neighbours and FDB entries.
pub fn read(
    nl: &mut Netlink,
    families: &[IpFamily],
    devices: [Option<u32>; 2],
    underlay: u32,
    pod_networks: &[IpNetwork],
) -> Result<Read, BackendError> {
    let mut ours = BTreeSet::new();
    let mut all_routes = Vec::new();
    for f in families {
        all_routes.extend(nl.routes(*f)?);
    }
    for r in &all_routes {
        if let Some(e) = our_route(r, &devices, underlay, pod_networks) {
            ours.insert(e);
        }
    }
    for dev in devices.iter().flatten() {
        for n in nl.neighbours(*dev)? {
            if let (Some(mac), true) = (n.mac, n.state & nud::PERMANENT != 0) {
                ours.insert(Entry::Neigh {
                    dev: *dev,
                    ip: n.ip,
                    mac,
                });
            }
        }
        for e in nl.fdb(*dev)? {
            if let (Some(dst), true) = (e.dst, e.is_self && e.mac != [0; 6]) {
                if e.state & nud::PERMANENT != 0 {
                    ours.insert(Entry::Fdb {
                        dev: *dev,
                        mac: e.mac,
                        dst,
                    });
                }
            }
        }
    }
    Ok(Read {
        ours,
        underlay_routes: UnderlayRoutes::new(all_routes, pod_networks),
    })
}

/// A route as an [`Entry`] when it carries weftd's signature.
pub fn our_route(
    r: &Route,
    devices: &[Option<u32>; 2],
    underlay: u32,
    pod_networks: &[IpNetwork],
) -> Option<Entry> {
    let (gw, dev) = (r.gateway?, r.oif?);
    if r.protocol == Some(RTPROT_KERNEL) {
        return None;
    }
    let on_device = devices.contains(&Some(dev)) && r.onlink && gw == r.dst.network();
    let on_underlay = dev == underlay && inside(pod_networks, &r.dst);
    (on_device || on_underlay).then_some(Entry::Route {
        dst: r.dst,
        gw,
        dev,
        onlink: r.onlink,
    })
}

/// The netlink change that carries out one operation.
fn change_of(op: &Op) -> Change {
    let route = |dst, gw, dev, onlink| {
        let mut r = Route::new(dst);
        r.gateway = Some(gw);
        r.oif = Some(dev);
        r.onlink = onlink;
        r
    };
    match *op {
        Op::Set(Entry::Neigh { dev, ip, mac }) => Change::ReplaceNeighbour {
            index: dev,
            ip,
            mac,
        },
        Op::Set(Entry::Fdb { dev, mac, dst }) => Change::ReplaceFdb {
            index: dev,
            mac,
            dst,
        },
        Op::Set(Entry::Route {
            dst,
            gw,
            dev,
            onlink,
        }) => Change::ReplaceRoute(route(dst, gw, dev, onlink)),
        // Deleted by destination, gateway and device, whatever its flags.
        Op::Del(Entry::Route { dst, gw, dev, .. }) => Change::DelRoute(route(dst, gw, dev, false)),
        Op::Del(Entry::Neigh { dev, ip, .. }) => Change::DelNeighbour { index: dev, ip },
        Op::Del(Entry::Fdb { dev, mac, dst }) => Change::DelFdb {
            index: dev,
            mac,
            dst,
        },
    }
}

/// Execute operations in order, pipelined (one netlink round trip per
/// batch, not per operation); one result per operation. A deletion of
/// something already gone succeeds. `Err`: the socket failed.
pub fn exec(
    nl: &mut Netlink,
    ops: &[Op],
) -> Result<Vec<Result<(), weft_netlink::Error>>, weft_netlink::Error> {
    // In slices, so a start with 30,000 operations holds 256 changes at a
    // time, not a second copy of them all.
    let mut out = Vec::with_capacity(ops.len());
    for slice in ops.chunks(256) {
        let changes: Vec<Change> = slice.iter().map(change_of).collect();
        let results = nl.apply(&changes)?;
        out.extend(slice.iter().zip(results).map(|(op, r)| match r {
            Err(e) if e.is_not_found() && matches!(op, Op::Del(_)) => Ok(()),
            r => r,
        }));
    }
    Ok(out)
}

/// The vxlan devices weftd (or flanneld) makes, `flannel.<VNI>` and
/// `flannel-v6.<VNI>`, deleted with every entry on them: a node restarted
/// with a backend that needs no device keeps nothing of the old one.
pub fn remove_vxlan_devices(nl: &mut Netlink) -> Result<(), BackendError> {
    for l in nl.links()? {
        let ours = l.name.starts_with("flannel.") || l.name.starts_with("flannel-v6.");
        if ours && l.kind.as_deref() == Some("vxlan") {
            crate::info!("removing the vxlan device of another backend", dev = l.name);
            match nl.delete_link(l.index) {
                Err(e) if e.is_not_found() => {}
                r => r?,
            }
        }
    }
    Ok(())
}

/// What the kernel watcher reports on.
#[derive(Debug, Clone)]
pub struct Scope {
    pub devices: Vec<String>,
    pub pod_networks: Vec<IpNetwork>,
}

impl Scope {
    /// The command a notification calls for, if any.
    fn command(&self, ev: &KernelEvent) -> Option<Command> {
        match ev {
            KernelEvent::LinkDel(l) if self.devices.contains(&l.name) => {
                crate::warn!("vxlan device deleted; recreating", dev = l.name);
                Some(Command::Kernel)
            }
            KernelEvent::LinkNew(l) if self.devices.contains(&l.name) && !l.up => {
                Some(Command::Kernel)
            }
            KernelEvent::Lost => Some(Command::Kernel),
            // An underlay route changed: reachability may have (host-gw,
            // DirectRouting).
            KernelEvent::RouteNew(r) | KernelEvent::RouteDel(r)
                if !inside(&self.pod_networks, &r.dst) =>
            {
                Some(Command::Kernel)
            }
            KernelEvent::RouteNew(r) if r.table == Some(RT_TABLE_MAIN) => {
                Some(Command::RouteChanged(r.clone()))
            }
            KernelEvent::RouteDel(r) => r.oif.and(r.gateway).map(|gw| {
                Command::Deleted(Entry::Route {
                    dst: r.dst,
                    gw,
                    dev: r.oif.unwrap_or_default(),
                    onlink: r.onlink,
                })
            }),
            // The kernel reports a deleted neighbour without its MAC.
            KernelEvent::NeighDel(n) => Some(Command::NeighGone {
                dev: n.index,
                ip: n.ip,
            }),
            KernelEvent::FdbDel(e) => e.dst.map(|dst| {
                Command::Deleted(Entry::Fdb {
                    dev: e.index,
                    mac: e.mac,
                    dst,
                })
            }),
            _ => None,
        }
    }
}

/// The kernel-watch thread body: link, route, neighbour and FDB
/// notifications become commands, so a deleted device is recreated and a
/// deleted entry restored at once instead of at the next
/// `--reconcile-interval` pass. Returns when the data plane is gone.
pub fn watch(scope: Scope, tx: Sender<Command>) {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut mon = match LinkMonitor::with_entries() {
            Ok(m) => m,
            Err(e) => {
                crate::error!(
                    "cannot subscribe to kernel notifications; retrying",
                    error = e
                );
                backoff.wait_blocking();
                continue;
            }
        };
        loop {
            let events = match mon.recv_all() {
                Ok(ev) => ev,
                Err(e) => {
                    crate::error!("kernel notifications failed; resubscribing", error = e);
                    backoff.wait_blocking();
                    break;
                }
            };
            backoff.reset();
            let mut full = false;
            for c in events.iter().filter_map(|ev| scope.command(ev)) {
                if matches!(c, Command::Kernel) {
                    full = true;
                } else if tx.send(c).is_err() {
                    return;
                }
            }
            if full && tx.send(Command::Kernel).is_err() {
                return;
            }
        }
    }
}
