//! What weftd knows about its node, for `weftctl`, the flannel plugin's
//! errors and `GET /state` (the format is the `weft-node-state` crate's).
//!
//! [`Status`] is a cheap handle: the agent, the data plane and the masq
//! worker report what happens (etcd failing or back, the config missing,
//! the lease, the peers, masquerade and programming errors) and never
//! block on I/O. Readiness itself stays where /readyz takes it from
//! ([`Metrics::not_ready_reason`]); the status adds the cause in words.
//! A writer thread keeps the root-only state file current: it writes on
//! every report and whenever readiness changes (checked every 200 ms).
//!
//! The handle rides on [`Metrics`] because every part of weftd already
//! holds that `Arc`.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_netlink::format_mac;
use weft_node_state::{now_unix, Failure, KernelEntry, NodeState, NotReady, Peer, StateFile};

use super::metrics::Metrics;
use crate::backends::Entry as Programmed;
use crate::config::{BackendKind, NetConfig};
use crate::store::attrs::LeaseAttrs;
use crate::store::etcd::{Entry, LeaseError, OwnLease};

/// How often the writer re-checks readiness, and the longest a state
/// file's `last_sync` may lag.
const POLL: Duration = Duration::from_millis(200);
const REFRESH: u64 = 30;

#[derive(Debug, Default)]
struct Inner {
    state: NodeState,
    config_missing: Option<(String, u64)>,
    lease_failure: Option<(bool, Failure)>,
    setup_error: Option<String>,
    fatal: Option<NotReady>,
    /// Per peer subnet (either family): the entries the data plane wants,
    /// or why it programs none.
    programmed: BTreeMap<IpNetwork, Result<Vec<KernelEntry>, String>>,
    /// Bumped on every report, so the writer knows to write.
    version: u64,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Debug, Clone, Default)]
pub struct Status(Arc<Shared>);

/// The cause in words. etcd-client's text for a refused connection is a
/// Debug dump of tonic's error chain; its gRPC status message and the OS
/// error underneath ("tcp connect error: Connection refused") say it.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(etcd_client::Error::GRpcStatus(st)) = c.downcast_ref::<etcd_client::Error>() {
            return match innermost_io(st) {
                Some(io) => format!("{}: {io}", st.message()),
                None => format!("{:?}: {}", st.code(), st.message()),
            };
        }
        if let Some(io) = innermost_io(c) {
            return io;
        }
        cur = c.source();
    }
    e.to_string()
}

fn innermost_io(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.to_string());
        }
        cur = c.source();
    }
    None
}

impl Status {
    fn update(&self, f: impl FnOnce(&mut Inner)) {
        let mut g = self.lock();
        f(&mut g);
        g.version += 1;
        drop(g);
        self.0.changed.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known before anything runs.
    pub fn start(&self, endpoints: &[String], prefix: &str, subnet_file: &std::path::Path) {
        self.update(|i| {
            i.state = NodeState::starting(std::process::id(), now_unix());
            i.state.etcd.endpoints = endpoints.to_vec();
            i.state.etcd.prefix = prefix.to_string();
            i.state.subnet_file.path = subnet_file.display().to_string();
        });
    }

    pub fn underlay(&self, iface: &str, ip: std::net::Ipv4Addr, mtu: u32) {
        self.update(|i| {
            i.state.underlay = Some(weft_node_state::Underlay {
                iface: iface.into(),
                ip: ip.to_string(),
                mtu,
            })
        });
    }

    /// `--iface` matched nothing: weftd is about to exit.
    pub fn interface_not_found(&self, ifaces: &[String], error: &dyn std::fmt::Display) {
        let iface = match ifaces {
            [] => "of the default route".to_string(),
            l => l.join(", "),
        };
        self.fatal_reason(NotReady::InterfaceNotFound {
            iface,
            error: error.to_string(),
        });
    }

    /// `<prefix>/config` does not parse: weftd is about to exit.
    pub fn invalid_config(&self, key: &str, error: &dyn std::fmt::Display) {
        self.fatal_reason(NotReady::InvalidNetworkConfig {
            key: key.into(),
            error: error.to_string(),
        });
    }

    /// weftd stops on `error`.
    pub fn fatal(&self, error: &dyn std::fmt::Display) {
        self.fatal_reason(NotReady::Fatal {
            error: error.to_string(),
        });
    }

    fn fatal_reason(&self, r: NotReady) {
        self.update(|i| {
            if i.fatal.is_none() {
                i.fatal = Some(r);
            }
        });
    }

    pub fn etcd_failed(&self, error: &(dyn std::error::Error + 'static)) {
        let error = error_chain(error);
        self.update(|i| {
            let since = i
                .state
                .etcd
                .failure
                .as_ref()
                .map_or(now_unix(), |f| f.since);
            i.state.etcd.connected = false;
            i.state.etcd.failure = Some(Failure { error, since });
        });
    }

    pub fn etcd_ok(&self) {
        let changed = !self.lock().state.etcd.connected;
        if changed {
            self.update(|i| {
                i.state.etcd.connected = true;
                i.state.etcd.failure = None;
            });
        }
    }

    /// `Ok(None)` from reading the config: connected, but no config at `key`.
    pub fn config_missing(&self, key: &str) {
        self.etcd_ok();
        self.update(|i| {
            let since = i.config_missing.as_ref().map_or(now_unix(), |c| c.1);
            i.config_missing = Some((key.to_string(), since));
        });
    }

    /// The network config at `<prefix>/config`.
    pub fn config(&self, prefix: &str, cfg: &NetConfig) {
        let (backend_type, direct_routing) = match cfg.backend.kind {
            BackendKind::Vxlan { direct_routing } => ("vxlan", direct_routing),
            BackendKind::HostGw => (crate::backends::host_gw::HOST_GW, false),
        };
        self.update(|i| {
            i.config_missing = None;
            i.state.network = Some(weft_node_state::Network {
                config_key: crate::store::keys::config_key(prefix),
                network: cfg.network.to_string(),
                ipv6_network: cfg.ipv6.as_ref().map(|c| c.network.to_string()),
                backend_type: backend_type.into(),
                direct_routing,
            });
        });
    }

    pub fn devices(&self, names: Vec<String>, mtu: u32) {
        self.update(|i| {
            i.state.devices = names;
            i.state.subnet_file.mtu = Some(mtu);
        });
    }

    pub fn masq_enabled(&self, backend: &str) {
        self.update(|i| {
            i.state.masq.enabled = true;
            i.state.masq.backend = Some(backend.to_lowercase());
        });
    }

    /// The masq worker's last result.
    pub fn masq(&self, result: Result<(), String>) {
        let (installed, error) = match result {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        };
        let g = self.lock();
        if g.state.masq.installed == installed && g.state.masq.error == error {
            return;
        }
        drop(g);
        self.update(|i| {
            i.state.masq.installed = installed;
            i.state.masq.error = error;
        });
    }

    /// Acquiring a lease failed: etcd, or no free subnet, or races.
    pub fn lease_failed(&self, e: &LeaseError) {
        if let LeaseError::Etcd(etcd) = e {
            return self.etcd_failed(etcd);
        }
        let exhausted = matches!(e, LeaseError::OutOfSubnets);
        let error = error_chain(e);
        self.update(|i| {
            let since = i.lease_failure.as_ref().map_or(now_unix(), |f| f.1.since);
            i.lease_failure = Some((exhausted, Failure { error, since }));
        });
    }

    /// We hold `l` (just acquired or renewed).
    pub fn lease(&self, l: &OwnLease, attrs: &LeaseAttrs) {
        let now = now_unix();
        self.update(|i| {
            i.lease_failure = None;
            i.state.etcd.connected = true;
            i.state.etcd.failure = None;
            i.state.lease = Some(weft_node_state::Lease {
                key: l.key.clone(),
                subnet: l.subnet.to_string(),
                subnet6: l.subnet6.map(|s| s.to_string()),
                public_ip: attrs.public_ip.clone(),
                public_ipv6: attrs.public_ipv6.clone(),
                backend_type: attrs.backend_type.clone(),
                backend_data: attrs
                    .backend_data
                    .as_ref()
                    .and_then(|d| d.value())
                    .unwrap_or_default(),
                expires_at: (!l.is_reservation()).then(|| now + l.ttl.max(0) as u64),
            });
        });
    }

    /// Writing our subnet's masquerade rules or subnet.env failed (None: done).
    pub fn setup(&self, error: Option<String>) {
        self.update(|i| i.setup_error = error);
    }

    /// Every other lease, and why some are rejected (by key name).
    pub fn peers(
        &self,
        entries: &BTreeMap<Ipv4Network, Entry>,
        own: Ipv4Network,
        rejected: &BTreeMap<String, String>,
    ) {
        let peers: Vec<Peer> = entries
            .values()
            .filter(|e| e.subnet != own)
            .map(|e| peer_of(e, rejected))
            .collect();
        self.update(|i| i.state.peers = peers);
    }

    /// One lease changed without conflicts (`None`: deleted).
    pub fn peer(&self, subnet: Ipv4Network, entry: Option<&Entry>) {
        let subnet_text = subnet.to_string();
        let new = entry.map(|e| peer_of(e, &BTreeMap::new()));
        self.update(|i| {
            let peers = &mut i.state.peers;
            let at = peers.iter().position(|p| p.subnet == subnet_text);
            match (at, new) {
                (Some(at), Some(p)) => peers[at] = p,
                (Some(at), None) => drop(peers.remove(at)),
                (None, Some(p)) => peers.push(p),
                (None, None) => {}
            }
        });
    }

    /// What the data plane now wants for one peer subnet: its entries
    /// (device indices named by `dev_name`), or why none; `None` when the
    /// peer is gone.
    pub fn programmed(
        &self,
        subnet: IpNetwork,
        wanted: Option<Result<&[Programmed], &str>>,
        dev_name: &dyn Fn(u32) -> String,
    ) {
        let wanted = wanted.map(|w| described(w, dev_name));
        let unchanged = self.lock().programmed.get(&subnet) == wanted.as_ref();
        if !unchanged {
            self.update(|i| match wanted {
                Some(w) => drop(i.programmed.insert(subnet, w)),
                None => drop(i.programmed.remove(&subnet)),
            });
        }
    }

    /// The same for every peer after a full pass (others are gone).
    pub fn programmed_all<'a>(
        &self,
        all: impl Iterator<Item = (IpNetwork, Result<&'a [Programmed], &'a str>)>,
        dev_name: &dyn Fn(u32) -> String,
    ) {
        let all: BTreeMap<_, _> = all.map(|(s, w)| (s, described(w, dev_name))).collect();
        if self.lock().programmed != all {
            self.update(|i| i.programmed = all);
        }
    }

    /// The data plane's last pass: Err with its error, Ok when it succeeded.
    pub fn sync(&self, result: Result<(), String>) {
        let error = result.err();
        if self.lock().state.sync_error != error {
            self.update(|i| i.state.sync_error = error);
        }
    }

    /// The state now, readiness from `m`.
    pub fn snapshot(&self, m: &Metrics) -> NodeState {
        let i = self.lock();
        let mut s = i.state.clone();
        for p in &mut s.peers {
            let of = |net: &Option<String>| {
                let net: IpNetwork = net.as_deref()?.parse().ok()?;
                i.programmed.get(&net)
            };
            for w in [of(&Some(p.subnet.clone())), of(&p.subnet6)]
                .into_iter()
                .flatten()
            {
                match w {
                    Ok(es) => p.entries.extend(es.iter().cloned()),
                    Err(why) => p.unprogrammable = Some(why.clone()),
                }
            }
        }
        s.ready = i.fatal.is_none() && m.ready();
        s.reason = if s.ready { None } else { Some(reason(&i, m)) };
        s.subnet_file.written = m
            .subnet_env_written
            .load(std::sync::atomic::Ordering::Relaxed);
        s.masq.installed = s.masq.enabled && m.masq_ok.load(std::sync::atomic::Ordering::Relaxed);
        let last = m
            .last_sync_seconds
            .load(std::sync::atomic::Ordering::Relaxed);
        s.last_sync = (last > 0).then_some(last);
        s
    }

    /// The state as served on `GET /state`.
    pub fn json(&self, m: &Metrics) -> String {
        self.snapshot(m).to_json(now_unix())
    }

    /// Writes the state file now (before exiting).
    pub fn flush(&self, file: &StateFile, m: &Metrics) {
        if let Err(e) = file.write(&self.snapshot(m), now_unix()) {
            crate::warn!(
                "cannot write the state file",
                path = file.path().display(),
                error = e
            );
        }
    }

    /// Keeps `file` current until the process exits.
    pub fn spawn_writer(&self, file: Arc<StateFile>, m: Arc<Metrics>) -> std::io::Result<()> {
        let status = self.clone();
        std::thread::Builder::new()
            .name("state".into())
            .spawn(move || status.write_loop(&file, &m))
            .map(drop)
    }

    fn write_loop(&self, file: &StateFile, m: &Metrics) {
        let mut written: Option<(u64, Option<NotReady>, u64)> = None;
        loop {
            let version = {
                let g = self.lock();
                let (g, _) = self
                    .0
                    .changed
                    .wait_timeout(g, POLL)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                g.version
            };
            let s = self.snapshot(m);
            let now = now_unix();
            let stale = written
                .as_ref()
                .is_none_or(|(v, r, at)| *v != version || *r != s.reason || now >= at + REFRESH);
            if stale {
                if let Err(e) = file.write(&s, now) {
                    crate::warn!(
                        "cannot write the state file",
                        path = file.path().display(),
                        error = e
                    );
                }
                written = Some((version, s.reason, now));
            }
        }
    }
}

/// A lease as a peer in the state, rejected when its key is in `rejected`.
fn peer_of(e: &Entry, rejected: &BTreeMap<String, String>) -> Peer {
    let key = crate::store::keys::lease_key_name_dual(&e.subnet, e.subnet6.as_ref());
    let why = rejected.get(&key).cloned();
    let a = e.attrs.as_ref();
    Peer {
        subnet: e.subnet.to_string(),
        subnet6: e.subnet6.map(|s| s.to_string()),
        public_ip: a.map(|a| a.public_ip.clone()),
        public_ipv6: a.and_then(|a| a.public_ipv6.clone()),
        backend_type: a.map(|a| a.backend_type.clone()).unwrap_or_default(),
        backend_data: a
            .and_then(|a| a.backend_data.as_ref())
            .and_then(|d| d.value())
            .unwrap_or_default(),
        accepted: why.is_none() && a.is_some(),
        rejected: why.or_else(|| a.is_none().then(|| "unparsable lease value".into())),
        key,
        ..Peer::default()
    }
}

fn described(
    w: Result<&[Programmed], &str>,
    dev_name: &dyn Fn(u32) -> String,
) -> Result<Vec<KernelEntry>, String> {
    match w {
        Ok(es) => Ok(es.iter().map(|e| describe(e, dev_name)).collect()),
        Err(why) => Err(why.to_string()),
    }
}

/// A backend's entry as the state names it.
fn describe(e: &Programmed, dev_name: &dyn Fn(u32) -> String) -> KernelEntry {
    match *e {
        Programmed::Neigh { dev, ip, mac } => KernelEntry::Neighbour {
            dev: dev_name(dev),
            ip: ip.to_string(),
            mac: format_mac(&mac),
        },
        Programmed::Fdb { dev, mac, dst } => KernelEntry::Fdb {
            dev: dev_name(dev),
            mac: format_mac(&mac),
            dst: dst.to_string(),
        },
        Programmed::Route {
            dst,
            gw,
            dev,
            onlink,
        } => KernelEntry::Route {
            dst: dst.to_string(),
            gw: gw.to_string(),
            dev: dev_name(dev),
            onlink,
        },
    }
}

/// Why not ready, the most fundamental cause first.
fn reason(i: &Inner, m: &Metrics) -> NotReady {
    use std::sync::atomic::Ordering::Relaxed;
    if let Some(f) = &i.fatal {
        return f.clone();
    }
    if let Some(f) = &i.state.etcd.failure {
        return NotReady::EtcdUnreachable {
            endpoints: i.state.etcd.endpoints.clone(),
            error: f.error.clone(),
            since: f.since,
        };
    }
    if let Some((key, since)) = &i.config_missing {
        return NotReady::NoNetworkConfig {
            key: key.clone(),
            since: *since,
        };
    }
    if let Some((exhausted, f)) = &i.lease_failure {
        let network = i
            .state
            .network
            .as_ref()
            .map(|n| n.network.clone())
            .unwrap_or_default();
        return match exhausted {
            true => NotReady::SubnetExhausted {
                network,
                error: f.error.clone(),
                since: f.since,
            },
            false => NotReady::LeaseFailed {
                error: f.error.clone(),
                since: f.since,
            },
        };
    }
    if !m.subnet_env_written.load(Relaxed) {
        if i.state.lease.is_none() {
            return NotReady::Starting;
        }
        return NotReady::SubnetFileNotWritten {
            path: i.state.subnet_file.path.clone(),
            error: i.setup_error.clone(),
        };
    }
    if m.masq_enabled.load(Relaxed) && !m.masq_ok.load(Relaxed) {
        return NotReady::MasqueradeMissing {
            error: i.state.masq.error.clone(),
        };
    }
    NotReady::PeersNotSynced {
        error: i.state.sync_error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn reason_follows_the_most_fundamental_cause() {
        let m = Metrics::default();
        let s = &m.status;
        s.start(
            &["http://198.51.100.1:2379".into()],
            "/coreos.com/network",
            "/run/flannel/subnet.env".as_ref(),
        );
        assert_eq!(s.snapshot(&m).reason, Some(NotReady::Starting));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        s.etcd_failed(&refused);
        let text = s.snapshot(&m).reason_at(now_unix()).unwrap();
        assert!(
            text.starts_with(
                "etcd at http://198.51.100.1:2379 has failed for 0 s: connection refused"
            ),
            "{text}"
        );
        s.config_missing("/coreos.com/network/config");
        assert!(matches!(
            s.snapshot(&m).reason,
            Some(NotReady::NoNetworkConfig { .. })
        ));
        m.subnet_env_written.store(true, Relaxed);
        m.peers_synced.store(true, Relaxed);
        let cfg = crate::config::parse_config(
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        )
        .unwrap();
        s.config("/coreos.com/network", &cfg);
        assert_eq!(
            s.snapshot(&m).network.map(|n| n.backend_type),
            Some("host-gw".into())
        );
        let snap = s.snapshot(&m);
        assert!(snap.ready && snap.reason.is_none(), "{snap:?}");
        m.peers_synced.store(false, Relaxed);
        s.sync(Err("route 10.244.3.0/24: File exists".into()));
        assert_eq!(
            s.snapshot(&m).reason,
            Some(NotReady::PeersNotSynced {
                error: Some("route 10.244.3.0/24: File exists".into())
            })
        );
        s.fatal(&"boom");
        assert_eq!(
            s.snapshot(&m).reason,
            Some(NotReady::Fatal {
                error: "boom".into()
            })
        );
    }
}
