//! The main loop: hold a lease, keep subnet.env and masq rules in line with
//! it, and feed the data plane the full set of peers from list + watch.

use crate::backends::{Backend, Peer, PeerData};
use crate::backoff::Backoff;
use crate::config::NetConfig;
use crate::local::metrics::Metrics;
use crate::reconcile::peers::{Rejections, Scopes};
use crate::reconcile::Command;
use crate::store::attrs::LeaseAttrs;
use crate::store::etcd::{entry_from_kv, renew_after, Entry, OwnLease, Registry, Rng};
use anyhow::Context;
use etcd_client::{EventType, WatchOptions};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, Instant};

pub struct Agent {
    pub reg: Registry,
    pub cfg: NetConfig,
    /// The backend: what we publish, which leases it can program, the MTU.
    pub backend: Arc<dyn Backend>,
    pub public_ip: Ipv4Addr,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub renew_margin_secs: i64,
    pub previous: Option<Ipv4Network>,
    /// The IPv6 subnet from subnet.env (dual-stack only).
    pub previous6: Option<Ipv6Network>,
    pub dataplane: std::sync::mpsc::Sender<Command>,
    pub masq: Option<std::sync::mpsc::Sender<crate::masq::Request>>,
    pub masq_forward: bool,
    pub masq_fully_random: bool,
    pub metrics: Arc<Metrics>,
    /// What a peer's lease must stay clear of (see [`crate::reconcile::peers`]).
    pub scopes: Scopes,
    pub rejections: Rejections,
    /// The peers the data plane was last sent, to send it only changes.
    pub sent: Option<Sent>,
}

/// A watch that has lived this long without being cancelled is healthy.
const WATCH_HEALTHY_AFTER: Duration = Duration::from_secs(10);

enum Inner {
    /// Re-list and watch again (gap, compaction, error).
    Relist,
    /// Our lease is gone: acquire again.
    Reacquire,
}

impl Agent {
    /// Our subnets became (or changed to) `subnet`/`subnet6`: masquerade
    /// rules first (and wait until they are in: subnet.env's
    /// FLANNEL_IPMASQ=true tells the CNI plugin not to masquerade, so the
    /// rules must exist before anyone reads it), then subnet.env, then the
    /// data plane. Not ready while this runs.
    async fn on_subnet(
        &mut self,
        subnet: Ipv4Network,
        subnet6: Option<Ipv6Network>,
    ) -> anyhow::Result<()> {
        self.metrics.subnet_env_written.store(false, Relaxed);
        let network6 = self.cfg.ipv6.as_ref().map(|c| c.network);
        if let Some(tx) = &self.masq {
            let (done, installed) = tokio::sync::oneshot::channel();
            let rules = crate::masq::Rules {
                pod: subnet,
                cluster: self.cfg.network,
                forward: self.masq_forward,
                fully_random: self.masq_fully_random,
                v6: subnet6.zip(network6),
            };
            tx.send(crate::masq::Request { rules, done })
                .map_err(|_| anyhow::anyhow!("the masquerade worker has stopped"))?;
            installed
                .await
                .map_err(|_| anyhow::anyhow!("the masquerade worker has stopped"))?
                .context("installing masquerade rules")?;
        }
        let env = flannel_env::SubnetEnv {
            networks: vec![self.cfg.network],
            subnet: Some(subnet),
            ipv6_networks: subnet6.and(network6).into_iter().collect(),
            ipv6_subnet: subnet6.filter(|_| network6.is_some()),
            mtu: self.backend.mtu(),
            ipmasq: self.ip_masq,
        };
        let path = self.subnet_file.clone();
        tokio::task::spawn_blocking(move || env.write(&path))
            .await?
            .with_context(|| format!("writing {}", self.subnet_file.display()))?;
        self.metrics.subnet_env_written.store(true, Relaxed);
        crate::info!(
            "wrote subnet file",
            path = self.subnet_file.display(),
            subnet = flannel_env::gateway_cidr(&subnet),
            mtu = self.backend.mtu()
        );
        if let Some(s6) = subnet6 {
            crate::info!("IPv6 subnet", subnet6 = flannel_env::gateway_cidr_v6(&s6));
        }
        let _ = self.dataplane.send(Command::Local { subnet, subnet6 });
        Ok(())
    }

    pub async fn run(
        mut self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut rng = Rng::new();
        let mut own: Option<OwnLease> = None;
        let mut current_subnet: Option<(Ipv4Network, Option<Ipv6Network>)> = None;
        let mut backoff = Backoff::etcd();
        let mut renew_at = Instant::now();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if own.is_none() {
                let prev = current_subnet.map(|c| c.0).or(self.previous);
                let prev6 = current_subnet.and_then(|c| c.1).or(self.previous6);
                match self
                    .reg
                    .acquire(
                        &self.cfg,
                        self.backend.lease_attrs(),
                        self.public_ip,
                        prev,
                        prev6,
                        &mut rng,
                    )
                    .await
                {
                    Ok(l) => {
                        self.metrics.status.lease(&l, self.backend.lease_attrs());
                        self.metrics.lease_acquisitions.fetch_add(1, Relaxed);
                        renew_at = Instant::now() + renew_after(l.ttl, self.renew_margin_secs);
                        if current_subnet != Some((l.subnet, l.subnet6)) {
                            if let Some((old, _)) = current_subnet {
                                crate::warn!("our subnet changed", old = old, new = l.subnet);
                            }
                            // subnet.env must be written before anything depends on us.
                            let mut setup_errors =
                                crate::logging::Repeats::new(Duration::from_secs(60));
                            let mut retry =
                                Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
                            while let Err(e) = self.on_subnet(l.subnet, l.subnet6).await {
                                self.metrics.status.setup(Some(format!("{e:#}")));
                                if let Some(n) = setup_errors.check(&format!("{e:#}")) {
                                    crate::error!(
                                        "setting up our subnet failed; retrying",
                                        error = format!("{e:#}"),
                                        repeats_suppressed = n
                                    );
                                }
                                tokio::select! {
                                    _ = retry.wait() => {}
                                    _ = shutdown.changed() => return Ok(()),
                                }
                            }
                            self.metrics.status.setup(None);
                            current_subnet = Some((l.subnet, l.subnet6));
                        }
                        own = Some(l);
                    }
                    Err(e) => {
                        self.metrics.status.lease_failed(&e);
                        crate::error!("acquiring a subnet lease failed; retrying", error = e);
                        tokio::select! {
                            _ = backoff.wait() => {}
                            _ = shutdown.changed() => return Ok(()),
                        }
                        continue;
                    }
                }
            }
            match self
                .session(&mut own, &mut renew_at, &mut shutdown, &mut backoff)
                .await
            {
                Ok(None) => return Ok(()),
                Ok(Some(Inner::Reacquire)) => {
                    own = None;
                }
                // Back off here too: a watch that is cancelled as soon as it
                // is created must not turn into a list+watch loop. The
                // backoff is reset only once a watch has proven healthy.
                Ok(Some(Inner::Relist)) => {
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
                Err(e) => {
                    self.metrics.status.etcd_failed(e.as_ref());
                    self.metrics.etcd_reconnects.fetch_add(1, Relaxed);
                    crate::warn!(
                        "etcd list/watch failed; reconnecting",
                        error = e,
                        backoff_ms = backoff.window().as_millis()
                    );
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                }
            }
        }
    }

    /// List, publish, watch until something forces a re-list or re-acquire.
    /// `Ok(None)` = shutdown.
    async fn session(
        &mut self,
        own_slot: &mut Option<OwnLease>,
        renew_at: &mut Instant,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Option<Inner>> {
        let Some(own) = own_slot.as_mut() else {
            return Ok(Some(Inner::Reacquire));
        };
        let (list, rev) = self.reg.list().await?;
        self.metrics.status.etcd_ok();
        let mut entries: BTreeMap<Ipv4Network, Entry> = BTreeMap::new();
        for e in list {
            entries.insert(e.subnet, e);
        }
        match entries.get(&own.subnet) {
            Some(e) if e.create_revision == own.create_revision => {
                own.mod_revision = e.mod_revision;
            }
            _ => {
                crate::warn!(
                    "our lease is gone from etcd; acquiring again",
                    subnet = own.subnet
                );
                return Ok(Some(Inner::Reacquire));
            }
        }
        let own_subnets = (own.subnet, own.subnet6);
        // A fresh listing (start, watch gap, compaction): a full compare-and-repair.
        self.sent = None;
        self.publish(&entries, own_subnets);

        let prefix = crate::store::keys::subnets_prefix(&self.reg.prefix);
        let mut stream = self
            .reg
            .client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await?;
        crate::debug!("watching leases", revision = rev + 1, known = entries.len());
        // The watch counts as healthy (and the reconnect backoff is reset)
        // once it delivers a response or has lived WATCH_HEALTHY_AFTER.
        let mut healthy = false;
        let healthy_after = sleep(WATCH_HEALTHY_AFTER);
        tokio::pin!(healthy_after);
        let mut progress = tokio::time::interval(Duration::from_secs(30));
        progress.tick().await;
        loop {
            let reservation = own_slot.as_ref().is_some_and(|o| o.is_reservation());
            // Reservations never expire: park the renew timer far away.
            let deadline = if reservation {
                Instant::now() + Duration::from_secs(86400)
            } else {
                *renew_at
            };
            tokio::select! {
                _ = shutdown.changed() => return Ok(None),
                _ = tokio::time::sleep_until(deadline) => {
                    if let Some(inner) = self.renew_now(own_slot, renew_at).await {
                        return Ok(Some(inner));
                    }
                }
                _ = &mut healthy_after, if !healthy => {
                    healthy = true;
                    backoff.reset();
                }
                _ = progress.tick() => {
                    // Detect a dead stream (etcd-client#48): a progress request must not fail.
                    stream.request_progress().await?;
                }
                msg = stream.message() => {
                    let Some(resp) = msg? else {
                        anyhow::bail!("watch stream closed");
                    };
                    // The "created" answer proves nothing: a watch can be
                    // cancelled right after it.
                    if !healthy && !resp.created() && !resp.canceled() {
                        healthy = true;
                        backoff.reset();
                    }
                    if let Some(inner) = self.on_watch_response(&resp, own_slot, &mut entries, own_subnets) {
                        return Ok(Some(inner));
                    }
                }
            }
        }
    }

    /// Renew our lease now; `Some` when it is lost and must be acquired again.
    async fn renew_now(
        &mut self,
        own_slot: &mut Option<OwnLease>,
        renew_at: &mut Instant,
    ) -> Option<Inner> {
        let Some(cur) = own_slot.clone() else {
            return Some(Inner::Reacquire);
        };
        match self.reg.renew(&cur, self.backend.lease_attrs()).await {
            Ok(Some(n)) => {
                self.metrics.status.lease(&n, self.backend.lease_attrs());
                self.metrics.lease_renewals.fetch_add(1, Relaxed);
                crate::info!("renewed lease", subnet = n.subnet, ttl = n.ttl);
                *renew_at = Instant::now() + renew_after(n.ttl, self.renew_margin_secs);
                *own_slot = Some(n);
                None
            }
            Ok(None) => {
                crate::warn!(
                    "our lease changed or vanished before renewal; acquiring again",
                    subnet = cur.subnet
                );
                Some(Inner::Reacquire)
            }
            Err(e) => {
                self.metrics.status.etcd_failed(&e);
                let retry = Duration::from_secs((cur.ttl / 4).clamp(1, 60) as u64);
                crate::error!(
                    "lease renewal failed; retrying",
                    error = e,
                    retry_s = retry.as_secs()
                );
                *renew_at = Instant::now() + retry;
                None
            }
        }
    }

    /// One watch response: events on our own key, then everyone else's
    /// (published to the data plane once per response). `Some` ends the
    /// session.
    fn on_watch_response(
        &mut self,
        resp: &etcd_client::WatchResponse,
        own_slot: &mut Option<OwnLease>,
        entries: &mut BTreeMap<Ipv4Network, Entry>,
        own: (Ipv4Network, Option<Ipv6Network>),
    ) -> Option<Inner> {
        if resp.canceled() || resp.compact_revision() > 0 {
            crate::warn!(
                "watch canceled; re-listing",
                compact_revision = resp.compact_revision(),
                reason = resp.cancel_reason()
            );
            self.metrics.etcd_reconnects.fetch_add(1, Relaxed);
            return Some(Inner::Relist);
        }
        let mut changed = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(subnet) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| crate::store::keys::parse_lease_key(&self.reg.prefix, k))
            else {
                continue;
            };
            if subnet == own.0 {
                if let Some(inner) = self.on_own_key(ev.event_type(), kv, own_slot) {
                    return Some(inner);
                }
            } else {
                if on_lease(&self.reg.prefix, ev.event_type(), kv, subnet, entries) {
                    changed.push(subnet);
                }
            }
        }
        let fast = changed
            .iter()
            .all(|s| self.publish_one(entries.get(s), *s, own));
        if !fast {
            self.publish(entries, own);
        }
        None
    }

    /// An event on our own key: deleted, or rewritten by someone else, and
    /// we acquire again; a renewal of ours only moves its revision.
    fn on_own_key(
        &self,
        kind: EventType,
        kv: &etcd_client::KeyValue,
        own_slot: &mut Option<OwnLease>,
    ) -> Option<Inner> {
        let o = own_slot.as_mut()?;
        if kind == EventType::Delete {
            crate::warn!(
                "our lease was deleted or expired; acquiring again",
                subnet = o.subnet
            );
            return Some(Inner::Reacquire);
        }
        let still_ours =
            LeaseAttrs::parse(kv.value()).and_then(|a| a.public_ipv4()) == Some(self.public_ip);
        if kv.create_revision() != o.create_revision || !still_ours {
            crate::warn!(
                "our lease key was rewritten by someone else; acquiring again",
                subnet = o.subnet
            );
            return Some(Inner::Reacquire);
        }
        o.mod_revision = kv.mod_revision();
        None
    }

    /// Send the data plane the validated peers: all of them after a fresh
    /// listing, else only what changed (each event costs its own delta in
    /// the data plane); log rejected leases once.
    fn publish(
        &mut self,
        entries: &BTreeMap<Ipv4Network, Entry>,
        own: (Ipv4Network, Option<Ipv6Network>),
    ) {
        let sel = crate::reconcile::peers::select(
            entries.values(),
            Some(own),
            &self.scopes,
            &*self.backend,
        );
        self.rejections.report(&sel.rejected);
        self.metrics.status.peers(entries, own.0, &sel.rejected);
        self.metrics.leases_known.store(
            entries.keys().filter(|s| **s != own.0).count() as u64,
            Relaxed,
        );
        self.metrics
            .leases_rejected
            .store(sel.rejected.len() as u64, Relaxed);
        let now: BTreeMap<IpNetwork, Peer> = sel
            .v4
            .into_iter()
            .chain(sel.v6)
            .map(|p| (p.subnet, p))
            .collect();
        if let Some(sent) = &self.sent {
            for (s, p) in &now {
                if sent.peers.get(s) != Some(p) {
                    let _ = self.dataplane.send(Command::Upsert(*p));
                }
            }
            for s in sent.peers.keys().filter(|s| !now.contains_key(s)) {
                let _ = self.dataplane.send(Command::Remove(*s));
            }
        } else {
            let _ = self
                .dataplane
                .send(Command::Peers(now.values().copied().collect()));
        }
        self.sent = Some(Sent::new(now, entries));
    }

    /// One lease changed (`entry`: its new value, `None` when deleted):
    /// send its own delta in O(log n), without validating every lease
    /// again. Only when nothing conflicts: with any lease rejected, or this
    /// one overlapping or sharing a VtepMAC with a peer, or changing an
    /// accepted peer, it returns false and the caller re-validates all.
    fn publish_one(
        &mut self,
        entry: Option<&Entry>,
        subnet: Ipv4Network,
        own: (Ipv4Network, Option<Ipv6Network>),
    ) -> bool {
        let Some(sent) = self.sent.as_mut() else {
            return false;
        };
        if !self.rejections.is_empty() {
            return false;
        }
        self.metrics.status.peer(subnet, entry);
        let Some(e) = entry else {
            for s in sent.by_lease.remove(&subnet).unwrap_or_default() {
                sent.peers.remove(&s);
                let _ = self.dataplane.send(Command::Remove(s));
            }
            self.metrics.leases_known.fetch_sub(1, Relaxed);
            return true;
        };
        let sel = crate::reconcile::peers::select([e], Some(own), &self.scopes, &*self.backend);
        let new: Vec<Peer> = sel.v4.into_iter().chain(sel.v6).collect();
        let had = sent.by_lease.get(&subnet).cloned().unwrap_or_default();
        if !sel.rejected.is_empty() || new.len() != had.len() && !had.is_empty() {
            return false;
        }
        if !had.is_empty() {
            // Known and accepted: a renewal is a no-op; any change re-validates.
            return new.iter().all(|p| sent.peers.get(&p.subnet) == Some(p));
        }
        if new.iter().any(|p| sent.conflicts(p)) {
            return false;
        }
        for p in &new {
            sent.add(subnet, *p);
            let _ = self.dataplane.send(Command::Upsert(*p));
        }
        self.metrics.leases_known.fetch_add(1, Relaxed);
        true
    }
}

/// What the data plane was last sent: the accepted peers, which lease each
/// came from, and the public IP behind each VtepMAC (for conflict checks).
#[derive(Debug, Default)]
pub struct Sent {
    peers: BTreeMap<IpNetwork, Peer>,
    by_lease: BTreeMap<Ipv4Network, Vec<IpNetwork>>,
    macs: BTreeMap<[u8; 6], std::net::IpAddr>,
}

impl Sent {
    fn new(peers: BTreeMap<IpNetwork, Peer>, entries: &BTreeMap<Ipv4Network, Entry>) -> Sent {
        let mut sent = Sent::default();
        for e in entries.values() {
            let of_lease = std::iter::once(IpNetwork::V4(e.subnet))
                .chain(e.subnet6.map(IpNetwork::V6))
                .filter_map(|s| peers.get(&s));
            for p in of_lease {
                sent.add(e.subnet, *p);
            }
        }
        sent
    }

    fn add(&mut self, lease: Ipv4Network, p: Peer) {
        self.peers.insert(p.subnet, p);
        self.by_lease.entry(lease).or_default().push(p.subnet);
        if let PeerData::Vtep(m) = p.data {
            self.macs.entry(m).or_insert(p.public_ip);
        }
    }

    /// Would `p` conflict with an accepted peer? Accepted subnets never
    /// overlap, so only the nearest ones on either side of its base can.
    fn conflicts(&self, p: &Peer) -> bool {
        let overlaps = |q: &Peer| {
            q.subnet.contains(p.subnet.network()) || p.subnet.contains(q.subnet.network())
        };
        let below = self.peers.range(..=p.subnet).next_back().map(|(_, q)| q);
        let above = self.peers.range(p.subnet..).next().map(|(_, q)| q);
        let mac = match p.data {
            PeerData::Vtep(m) => self.macs.get(&m).is_some_and(|ip| *ip != p.public_ip),
            PeerData::None => false,
        };
        mac || below.is_some_and(overlaps) || above.is_some_and(overlaps)
    }
}

/// Another node's lease was put or deleted: update `entries`; true when
/// it changed.
fn on_lease(
    prefix: &str,
    kind: EventType,
    kv: &etcd_client::KeyValue,
    subnet: Ipv4Network,
    entries: &mut BTreeMap<Ipv4Network, Entry>,
) -> bool {
    match kind {
        EventType::Put => {
            let Some(e) = entry_from_kv(prefix, kv) else {
                return false;
            };
            if entries.get(&subnet) == Some(&e) {
                return false;
            }
            let public_ip = e.attrs.as_ref().map(|a| a.public_ip.clone());
            crate::info!(
                "lease added or updated",
                subnet = subnet,
                public_ip = public_ip.unwrap_or_default()
            );
            entries.insert(subnet, e);
            true
        }
        EventType::Delete => {
            let gone = entries.remove(&subnet).is_some();
            if gone {
                crate::info!("lease removed", subnet = subnet);
            }
            gone
        }
    }
}
