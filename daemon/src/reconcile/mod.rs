//! The data plane: one dedicated std::thread with a synchronous netlink
//! socket (weftd runs in the node's netns, so no setns ever happens) that
//! keeps the kernel in line with the validated peers, through whatever
//! [`Backend`] runs.
//!
//! Two ways to get there:
//! - a lease event ([`Command::Upsert`], [`Command::Remove`]) applies its
//!   own delta: the peer's entries now against what was programmed for it,
//!   without reading the kernel, so its cost does not grow with the cluster;
//! - a full compare-and-repair ([`Dataplane::reconcile`]) at start, on a
//!   snapshot (a watch gap), on a kernel notification and every `interval`:
//!   the kernel's entries that carry weftd's signature against every
//!   peer's wanted entries, and only the difference is applied. Nothing is
//!   flushed, so pods lose no packet across a restart, and entries of
//!   another backend (a node restarted with another type) are removed.

pub mod family;
pub mod kernel;
pub mod peers;

use crate::backends::underlay::{Underlay, UnderlayRoutes};
use crate::backends::{Backend, BackendError, Context, Entry, Op, Peer};
use crate::local::metrics::{now_unix, Metrics};
use crate::logging::Repeats;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use weft_netlink::{IpFamily, Netlink};

/// Commands to the data-plane thread.
#[derive(Debug, Clone)]
pub enum Command {
    /// Our own lease subnets (set first, and again whenever they change).
    Local {
        subnet: Ipv4Network,
        subnet6: Option<Ipv6Network>,
    },
    /// The complete set of peers (both families): replaces the previous
    /// set and triggers a full compare-and-repair.
    Peers(Vec<Peer>),
    /// One peer appeared or changed: its own delta only.
    Upsert(Peer),
    /// One peer went away (its subnet): its own delta only.
    Remove(IpNetwork),
    /// The kernel changed under us (a device, an underlay route, or lost
    /// notifications): full compare-and-repair now.
    Kernel,
    /// One entry was deleted (a kernel notification): put it back if it
    /// is wanted.
    Deleted(Entry),
    /// A neighbour was deleted (the kernel does not say its MAC): put back
    /// the wanted one for that address, if any.
    NeighGone { dev: u32, ip: std::net::IpAddr },
    /// A route into the pod networks was added or replaced (a kernel
    /// notification): when a peer's wanted route for that destination is
    /// another one, put ours back.
    RouteChanged(weft_netlink::Route),
}

/// How often one repeating error is logged at most.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

pub struct Dataplane {
    nl: Netlink,
    backend: Arc<dyn Backend>,
    underlay: Underlay,
    /// `Network` and `IPv6Network`: underlay routes inside them are ours.
    pod_networks: Vec<IpNetwork>,
    metrics: Arc<Metrics>,
    local: Option<(Ipv4Network, Option<Ipv6Network>)>,
    peers: Option<BTreeMap<IpNetwork, Peer>>,
    /// Each peer's entries as last programmed.
    programmed: BTreeMap<IpNetwork, Vec<Entry>>,
    /// How many peers want each entry (two subnets behind one VTEP share
    /// its FDB entry).
    wanted: BTreeMap<Entry, usize>,
    /// Peers that get no entries, and why (logged once).
    unprogrammable: BTreeMap<IpNetwork, String>,
    /// Our device's index per family, once made.
    devices: [Option<u32>; 2],
    /// The main table's underlay routes at the last full pass.
    routes: UnderlayRoutes,
    errors: Repeats,
}

fn slot(f: IpFamily) -> usize {
    match f {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

fn family_of(n: &IpNetwork) -> IpFamily {
    if n.is_ipv4() {
        IpFamily::V4
    } else {
        IpFamily::V6
    }
}

impl Dataplane {
    pub fn new(
        backend: Arc<dyn Backend>,
        underlay: Underlay,
        pod_networks: Vec<IpNetwork>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BackendError> {
        Ok(Dataplane {
            nl: Netlink::new()?,
            backend,
            underlay,
            pod_networks,
            metrics,
            local: None,
            peers: None,
            programmed: BTreeMap::new(),
            wanted: BTreeMap::new(),
            unprogrammable: BTreeMap::new(),
            devices: [None, None],
            routes: UnderlayRoutes::default(),
            errors: Repeats::new(ERROR_LOG_EVERY),
        })
    }

    /// What the kernel watcher needs to tell our notifications from others.
    pub fn watch_scope(&self) -> kernel::Scope {
        kernel::Scope {
            devices: [IpFamily::V4, IpFamily::V6]
                .iter()
                .filter_map(|f| self.backend.device(*f).map(|d| d.name.clone()))
                .collect(),
            pod_networks: self.pod_networks.clone(),
        }
    }

    /// The thread body: apply commands (deltas at once), and a full pass
    /// when one is due: on start, a snapshot, a kernel change and every
    /// `interval`. Readiness (`peers_synced`) follows every full pass.
    pub fn run(mut self, rx: Receiver<Command>, interval: Duration) {
        let mut full = true;
        loop {
            match rx.recv_timeout(interval) {
                Ok(c) => full |= self.apply(c),
                Err(RecvTimeoutError::Timeout) => full = true,
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Coalesce a burst of commands.
            while let Ok(c) = rx.try_recv() {
                full |= self.apply(c);
            }
            if full && self.local.is_some() {
                self.full_pass();
                full = false;
            }
        }
    }

    fn full_pass(&mut self) {
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
                        repeats_suppressed = n
                    );
                }
                if let BackendError::Netlink(n) = &e {
                    if n.is_socket_broken() {
                        self.reopen_socket(n);
                    }
                }
                false
            }
        };
        self.errors.sweep();
        self.metrics.peers_synced.store(synced, Relaxed);
    }

    /// Apply one command; true when it needs a full pass.
    fn apply(&mut self, c: Command) -> bool {
        match c {
            Command::Local { subnet, subnet6 } => {
                self.local = Some((subnet, subnet6));
                true
            }
            Command::Peers(all) => {
                self.peers = Some(all.into_iter().map(|p| (p.subnet, p)).collect());
                true
            }
            Command::Kernel => true,
            Command::Upsert(p) => {
                if let Some(peers) = &mut self.peers {
                    peers.insert(p.subnet, p);
                    self.apply_delta(p.subnet);
                }
                false
            }
            Command::Remove(subnet) => {
                if let Some(peers) = &mut self.peers {
                    peers.remove(&subnet);
                    self.apply_delta(subnet);
                }
                false
            }
            Command::NeighGone { dev, ip } => {
                let (lo, hi) = (
                    Entry::Neigh {
                        dev,
                        ip,
                        mac: [0; 6],
                    },
                    Entry::Neigh {
                        dev,
                        ip,
                        mac: [0xff; 6],
                    },
                );
                if let Some((e, _)) = self.wanted.range(lo..=hi).next() {
                    let e = *e;
                    crate::info!("neighbour deleted under us; restoring", ip = ip);
                    self.exec_all(&[Op::Set(e)]);
                }
                false
            }
            Command::RouteChanged(r) => {
                let ours = self.programmed.get(&r.dst).and_then(|es| {
                    es.iter()
                        .find(|e| matches!(e, Entry::Route { .. }))
                        .copied()
                });
                if let Some(
                    want @ Entry::Route {
                        gw, dev, onlink, ..
                    },
                ) = ours
                {
                    if (r.gateway, r.oif, r.onlink) != (Some(gw), Some(dev), onlink) {
                        crate::info!("route replaced under us; restoring", dst = r.dst);
                        self.exec_all(&[Op::Set(want)]);
                    }
                }
                false
            }
            Command::Deleted(e) => {
                if self.wanted.contains_key(&e) {
                    crate::info!(
                        "entry deleted under us; restoring",
                        entry = format!("{e:?}")
                    );
                    self.exec_all(&[Op::Set(e)]);
                }
                false
            }
        }
    }

    fn is_own(&self, subnet: &IpNetwork) -> bool {
        self.local.is_some_and(|(s4, s6)| {
            *subnet == IpNetwork::V4(s4) || s6.is_some_and(|s6| *subnet == IpNetwork::V6(s6))
        })
    }

    /// One peer's wanted entries, or why it has none.
    fn entries_of(&self, p: &Peer) -> Result<Vec<Entry>, String> {
        let routes = &self.routes;
        let index = self.underlay.index;
        let reach = |ip| routes.reach(index, ip);
        let cx = Context {
            underlay: &self.underlay,
            device: self.devices[slot(family_of(&p.subnet))],
            reach: &reach,
        };
        self.backend.entries(p, &cx).map_err(|e| e.0)
    }

    /// Note a peer that gets no entries; log it when the reason is new.
    fn note_unprogrammable(&mut self, subnet: IpNetwork, why: Option<String>) {
        match why {
            Some(why) => {
                if self.unprogrammable.get(&subnet) != Some(&why) {
                    crate::warn!("peer not programmed", subnet = subnet, reason = why);
                    self.unprogrammable.insert(subnet, why);
                }
            }
            None => {
                if self.unprogrammable.remove(&subnet).is_some() {
                    crate::info!("peer programmable again", subnet = subnet);
                }
            }
        }
    }

    /// A lease event: this peer's entries now against what was programmed
    /// for it. O(log n): no kernel read, no other peer looked at.
    fn apply_delta(&mut self, subnet: IpNetwork) {
        if self.local.is_none() {
            return;
        }
        let peer = self.peers.as_ref().and_then(|p| p.get(&subnet)).copied();
        let new = match peer.filter(|p| !self.is_own(&p.subnet)) {
            None => Vec::new(),
            Some(p) => match self.entries_of(&p) {
                Ok(v) => {
                    self.note_unprogrammable(subnet, None);
                    v
                }
                Err(why) => {
                    self.note_unprogrammable(subnet, Some(why));
                    Vec::new()
                }
            },
        };
        if peer.is_none() {
            self.note_unprogrammable(subnet, None);
        }
        let old = self.programmed.remove(&subnet).unwrap_or_default();
        for e in &old {
            if let Some(n) = self.wanted.get_mut(e) {
                *n -= 1;
                if *n == 0 {
                    self.wanted.remove(e);
                }
            }
        }
        // Entries another peer still wants are neither removed nor re-added.
        let still: BTreeSet<Entry> = old
            .iter()
            .chain(new.iter())
            .filter(|e| self.wanted.contains_key(e))
            .copied()
            .collect();
        let want: BTreeSet<Entry> = new.iter().filter(|e| !still.contains(e)).copied().collect();
        let had: BTreeSet<Entry> = old.iter().filter(|e| !still.contains(e)).copied().collect();
        let ops = self.backend.diff(&want, &had);
        for e in &new {
            *self.wanted.entry(*e).or_default() += 1;
        }
        if !new.is_empty() {
            self.programmed.insert(subnet, new);
        }
        let failed = self.exec_all(&ops);
        if failed > 0 {
            // The next full pass repairs it.
            self.metrics.peers_synced.store(false, Relaxed);
        }
        self.publish_counts(failed);
        // weftd's state shows what is wanted (weftctl checks the kernel against it).
        let known = peer.is_some_and(|p| !self.is_own(&p.subnet));
        let wanted = known.then(|| self.wanted_of(&subnet));
        let status = &self.metrics.status;
        status.programmed(subnet, wanted, &|i| self.dev_name(i));
    }

    /// A peer's entries as programmed, or why it has none.
    fn wanted_of(&self, subnet: &IpNetwork) -> Result<&[Entry], &str> {
        match (self.programmed.get(subnet), self.unprogrammable.get(subnet)) {
            (Some(es), _) => Ok(es),
            (None, Some(why)) => Err(why),
            (None, None) => Ok(&[]),
        }
    }

    /// A device index as `ip` names it: the underlay or one of ours.
    fn dev_name(&self, index: u32) -> String {
        if index == self.underlay.index {
            return self.underlay.name.clone();
        }
        [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .filter(|f| self.devices[slot(*f)] == Some(index))
            .find_map(|f| self.backend.device(f))
            .map_or_else(|| format!("if{index}"), |d| d.name.clone())
    }

    fn publish_counts(&self, failed: usize) {
        let m = &self.metrics;
        m.entries_programmed
            .store(self.wanted.len().saturating_sub(failed) as u64, Relaxed);
        m.peers_programmed
            .store(self.programmed.len() as u64, Relaxed);
        m.peers_unprogrammable
            .store(self.unprogrammable.len() as u64, Relaxed);
    }

    /// A send or receive on the netlink socket failed (not a kernel NACK):
    /// nothing more can go through it, so open a fresh one.
    fn reopen_socket(&mut self, why: &weft_netlink::Error) {
        match Netlink::new() {
            Ok(nl) => {
                self.nl = nl;
                crate::warn!("netlink socket broken; reopened it", error = why);
            }
            Err(e) => crate::error!("reopening the netlink socket failed", error = e),
        }
    }

    /// Execute operations in order; returns how many failed.
    fn exec_all(&mut self, ops: &[Op]) -> usize {
        if ops.is_empty() {
            return 0;
        }
        let results = match kernel::exec(&mut self.nl, ops) {
            Ok(r) => r,
            Err(e) => {
                // The batch did not go through: nothing is known done; the
                // next full pass repairs it.
                self.metrics
                    .programming_errors
                    .fetch_add(ops.len() as u64, Relaxed);
                if let Some(n) = self.errors.check(&e.to_string()) {
                    crate::error!("programming failed", error = e, repeats_suppressed = n);
                }
                if e.is_socket_broken() {
                    self.reopen_socket(&e);
                }
                return ops.len();
            }
        };
        let mut failed = 0;
        for (op, r) in ops.iter().zip(results) {
            match r {
                Ok(()) => {
                    self.metrics.reconcile_repairs.fetch_add(1, Relaxed);
                    crate::debug!("programmed", op = format!("{op:?}"));
                }
                Err(e) => {
                    failed += 1;
                    self.metrics.programming_errors.fetch_add(1, Relaxed);
                    let op_text = format!("{op:?}");
                    if let Some(n) = self.errors.check(&format!("{op_text} {e}")) {
                        crate::error!(
                            "programming failed",
                            op = op_text,
                            error = e,
                            repeats_suppressed = n
                        );
                    }
                }
            }
        }
        failed
    }

    /// Devices and their addresses: the backend's, per family in use;
    /// with a backend that needs none, any vxlan device weftd made goes.
    fn ensure_devices(&mut self) -> Result<(), BackendError> {
        let Some((s4, s6)) = self.local else {
            return Ok(());
        };
        let fams = [
            (IpFamily::V4, Some(IpNetwork::V4(s4))),
            (IpFamily::V6, s6.map(IpNetwork::V6)),
        ];
        for (f, local) in fams {
            let (Some(spec), Some(local)) = (self.backend.device(f).cloned(), local) else {
                self.devices[slot(f)] = None;
                continue;
            };
            let index = crate::backends::vxlan::ensure_device(&mut self.nl, &spec, &self.metrics)?;
            if self.devices[slot(f)].is_some_and(|i| i != index) {
                crate::warn!(
                    "vxlan device was recreated; replaying all entries",
                    dev = spec.name,
                    index = index
                );
            }
            self.devices[slot(f)] = Some(index);
            let host = IpNetwork::new(local.network(), if local.is_ipv4() { 32 } else { 128 })
                .map_err(|e| BackendError::Setup(e.to_string()))?;
            crate::backends::vxlan::ensure_address(&mut self.nl, index, host)?;
        }
        if self.backend.device(IpFamily::V4).is_none() {
            kernel::remove_vxlan_devices(&mut self.nl)?;
        }
        Ok(())
    }

    /// One full compare-and-repair. `Ok(true)`: every peer is programmed.
    pub fn reconcile(&mut self) -> Result<bool, BackendError> {
        self.ensure_devices()?;
        let Some(peers) = self.peers.clone() else {
            return Ok(false);
        };
        let fams: &[IpFamily] = if self.local.is_some_and(|l| l.1.is_some()) {
            &[IpFamily::V4, IpFamily::V6]
        } else {
            &[IpFamily::V4]
        };
        let read = kernel::read(
            &mut self.nl,
            fams,
            self.devices,
            self.underlay.index,
            &self.pod_networks,
        )?;
        self.routes = read.underlay_routes;
        let mut wanted_by_peer = BTreeMap::new();
        for p in peers.values() {
            if self.is_own(&p.subnet) {
                continue;
            }
            match self.entries_of(p) {
                Ok(v) => {
                    self.note_unprogrammable(p.subnet, None);
                    wanted_by_peer.insert(p.subnet, v);
                }
                Err(why) => self.note_unprogrammable(p.subnet, Some(why)),
            }
        }
        self.unprogrammable.retain(|s, _| peers.contains_key(s));
        let wanted: BTreeSet<Entry> = wanted_by_peer.values().flatten().copied().collect();
        let ops = self.backend.diff(&wanted, &read.ours);
        let failed = self.exec_all(&ops);
        if !ops.is_empty() {
            crate::info!(
                "data plane synced",
                backend = self.backend.kind(),
                peers = wanted_by_peer.len(),
                ops = ops.len(),
                errors = failed
            );
        }
        self.wanted.clear();
        for e in wanted_by_peer.values().flatten() {
            *self.wanted.entry(*e).or_default() += 1;
        }
        self.programmed = wanted_by_peer;
        self.publish_counts(failed);
        self.metrics.reconcile_passes.fetch_add(1, Relaxed);
        let wanted = peers.keys().filter(|s| !self.is_own(s));
        self.metrics
            .status
            .programmed_all(wanted.map(|s| (*s, self.wanted_of(s))), &|i| {
                self.dev_name(i)
            });
        let clean = failed == 0;
        if clean {
            self.metrics.last_sync_seconds.store(now_unix(), Relaxed);
        }
        Ok(clean)
    }
}
