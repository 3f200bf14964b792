//! The etcd subnet registry: read the config, acquire our lease atomically,
//! renew it with compare-and-swap, and list/watch everyone's leases.

use super::attrs::LeaseAttrs;
use super::keys::{config_key, lease_key_dual, parse_lease_key_dual, subnets_prefix};
use crate::config::NetConfig;
use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::Ipv4Addr;
use std::time::Duration;

#[derive(thiserror::Error, Debug)]
pub enum LeaseError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("out of subnets: every subnet between SubnetMin and SubnetMax is leased")]
    OutOfSubnets,
    #[error("lost the race for a subnet {0} times in a row")]
    TooManyRaces(u32),
    #[error("etcd response without a header")]
    NoHeader,
}

/// One key under `<prefix>/subnets/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub subnet: Ipv4Network,
    /// The IPv6 part of a dual-stack key (`10.5.1.0-24&fd00:0:0:1::-64`).
    pub subnet6: Option<Ipv6Network>,
    pub attrs: Option<LeaseAttrs>,
    /// Attached etcd lease id; 0 = a reservation (no TTL).
    pub etcd_lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// Our own lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    pub subnet: Ipv4Network,
    pub subnet6: Option<Ipv6Network>,
    pub key: String,
    pub etcd_lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// TTL of the etcd lease at grant time (0 for a reservation).
    pub ttl: i64,
}

impl OwnLease {
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }
}

pub fn entry_from_kv(prefix: &str, kv: &etcd_client::KeyValue) -> Option<Entry> {
    let key = std::str::from_utf8(kv.key()).ok()?;
    let (subnet, subnet6) = parse_lease_key_dual(prefix, key)?;
    Some(Entry {
        subnet,
        subnet6,
        attrs: LeaseAttrs::parse(kv.value()),
        etcd_lease: kv.lease(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

/// What to do to obtain a lease, decided from a listing (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A reservation with our PublicIP: use it as is (maybe refresh the value, never add a TTL).
    UseReservation(Entry),
    /// Our previous lease (same PublicIP): re-attach it to a fresh etcd lease via CAS.
    Reuse(Entry),
    /// Create this key (create_revision == 0); the IPv6 subnet when dual-stack.
    Create(Ipv4Network, Option<Ipv6Network>),
}

impl Entry {
    pub fn key(&self, prefix: &str) -> String {
        lease_key_dual(prefix, &self.subnet, self.subnet6.as_ref())
    }
}

/// Decide how to get a lease. `stale` receives our own leases that no
/// longer fit the config (to delete). `pick` chooses among free subnets.
pub fn plan(
    cfg: &NetConfig,
    entries: &[Entry],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Network>,
    previous6: Option<Ipv6Network>,
    pick: &mut dyn FnMut(usize) -> usize,
    stale: &mut Vec<Entry>,
) -> Result<Plan, LeaseError> {
    // With IPv6 enabled a lease must carry a fitting IPv6 subnet too.
    let fits = |e: &Entry| {
        cfg.fits(&e.subnet)
            && cfg
                .ipv6
                .as_ref()
                .is_none_or(|c6| e.subnet6.as_ref().is_some_and(|s| c6.fits(s)))
    };
    let ours = |e: &&Entry| {
        e.attrs
            .as_ref()
            .and_then(|a| a.public_ipv4())
            .is_some_and(|ip| ip == public_ip)
    };
    // A reservation for us wins over an ordinary lease.
    let mut mine: Vec<&Entry> = entries.iter().filter(ours).collect();
    mine.sort_by_key(|e| (e.etcd_lease != 0, e.create_revision));
    for e in mine {
        if !fits(e) {
            if e.etcd_lease != 0 {
                stale.push(e.clone());
            }
            continue;
        }
        return Ok(if e.etcd_lease == 0 {
            Plan::UseReservation(e.clone())
        } else {
            Plan::Reuse(e.clone())
        });
    }
    let taken: Vec<Ipv4Network> = entries.iter().map(|e| e.subnet).collect();
    let v4 = match previous {
        Some(p) if cfg.fits(&p) && !taken.iter().any(|t| t.overlaps(p)) => p,
        _ => {
            let free = cfg.free_subnets(&taken, 100);
            if free.is_empty() {
                return Err(LeaseError::OutOfSubnets);
            }
            free[pick(free.len()) % free.len()]
        }
    };
    let Some(c6) = &cfg.ipv6 else {
        return Ok(Plan::Create(v4, None));
    };
    let taken6: Vec<Ipv6Network> = entries.iter().filter_map(|e| e.subnet6).collect();
    let v6 = match previous6 {
        Some(p) if c6.fits(&p) && !taken6.iter().any(|t| t.overlaps(p)) => p,
        _ => {
            let free = c6.free_subnets(&taken6, 100);
            if free.is_empty() {
                return Err(LeaseError::OutOfSubnets);
            }
            free[pick(free.len()) % free.len()]
        }
    };
    Ok(Plan::Create(v4, Some(v6)))
}

/// After creating `key` (at `rev`): does an older key claim one of its
/// subnets? Keys differ when the prefix length or only the IPv6 part
/// differs, so the create transaction alone cannot stop two nodes taking
/// overlapping subnets.
pub fn lost_to_older(entries: &[Entry], prefix: &str, key: &str, rev: i64) -> bool {
    let Some(me) = entries.iter().find(|e| e.key(prefix) == key) else {
        return true;
    };
    entries.iter().any(|e| {
        e.key(prefix) != key
            && e.create_revision < rev
            && (e.subnet.overlaps(me.subnet)
                || matches!((e.subnet6, me.subnet6), (Some(a), Some(b)) if a.overlaps(b)))
    })
}

/// Cheap randomness for choosing a subnet (no crypto needed).
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t ^ (u64::from(std::process::id()) << 32) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v % n.max(1) as u64) as usize
    }
}

pub struct Registry {
    pub client: Client,
    pub prefix: String,
    pub ttl: i64,
}

#[derive(Clone)]
pub struct TlsFiles {
    pub ca: Option<Vec<u8>>,
    pub cert_key: Option<(Vec<u8>, Vec<u8>)>,
}

/// How long one connection attempt to etcd may take. Short, because it
/// adds to how long a node stays behind once etcd is back (see
/// [`crate::backoff::ETCD_CAP`]); etcd is on the node's network.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

pub fn connect_options(tls: Option<TlsFiles>, user: Option<(String, String)>) -> ConnectOptions {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(Duration::from_secs(15))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(t) = tls {
        let mut cfg = etcd_client::TlsOptions::new();
        if let Some(ca) = t.ca {
            cfg = cfg.ca_certificate(etcd_client::Certificate::from_pem(ca));
        }
        if let Some((c, k)) = t.cert_key {
            cfg = cfg.identity(etcd_client::Identity::from_pem(c, k));
        }
        o = o.with_tls(cfg);
    }
    if let Some((u, p)) = user {
        o = o.with_user(u, p);
    }
    o
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Result<i64, LeaseError> {
    h.map(|h| h.revision()).ok_or(LeaseError::NoHeader)
}

impl Registry {
    /// The raw config JSON, or None if the key does not exist.
    pub async fn get_config(&mut self) -> Result<Option<String>, LeaseError> {
        let r = self.client.get(config_key(&self.prefix), None).await?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// All leases and the revision of the snapshot.
    pub async fn list(&mut self) -> Result<(Vec<Entry>, i64), LeaseError> {
        let r = self
            .client
            .get(
                subnets_prefix(&self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let rev = header_rev(r.header())?;
        let entries = r
            .kvs()
            .iter()
            .filter_map(|kv| entry_from_kv(&self.prefix, kv))
            .collect();
        Ok((entries, rev))
    }

    /// Acquire a lease (see [`plan`]); retries lost races with a fresh listing.
    pub async fn acquire(
        &mut self,
        cfg: &NetConfig,
        attrs: &LeaseAttrs,
        public_ip: Ipv4Addr,
        previous: Option<Ipv4Network>,
        previous6: Option<Ipv6Network>,
        rng: &mut Rng,
    ) -> Result<OwnLease, LeaseError> {
        const RACE_RETRIES: u32 = 10;
        let value = attrs.to_json();
        for attempt in 0..RACE_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(
                    50 * u64::from(attempt) + rng.below(100) as u64,
                ))
                .await;
            }
            let (entries, _) = self.list().await?;
            let mut stale = Vec::new();
            let p = plan(
                cfg,
                &entries,
                public_ip,
                previous,
                previous6,
                &mut |n| rng.below(n),
                &mut stale,
            )?;
            self.delete_stale(stale).await?;
            let got = match p {
                Plan::UseReservation(e) => self.use_reservation(e, attrs, &value).await?,
                Plan::Reuse(e) => self.reuse(e, &value).await?,
                Plan::Create(subnet, subnet6) => {
                    self.create(subnet, subnet6, &value, attempt).await?
                }
            };
            if let Some(own) = got {
                return Ok(own);
            }
        }
        Err(LeaseError::TooManyRaces(RACE_RETRIES))
    }

    /// Delete our own leases that no longer fit the config.
    async fn delete_stale(&mut self, stale: Vec<Entry>) -> Result<(), LeaseError> {
        for e in stale {
            crate::info!(
                "deleting our old lease that no longer fits the config",
                subnet = e.subnet
            );
            let key = e.key(&self.prefix);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    e.mod_revision,
                )])
                .and_then([TxnOp::delete(key, None)]);
            self.client.txn(txn).await?;
        }
        Ok(())
    }

    /// Use a reservation with our PublicIP as it is (its value refreshed
    /// when the backend data differ, never a TTL). `None`: lost a race.
    async fn use_reservation(
        &mut self,
        e: Entry,
        attrs: &LeaseAttrs,
        value: &str,
    ) -> Result<Option<OwnLease>, LeaseError> {
        let value = value.to_string();
        let key = e.key(&self.prefix);
        let same_backend = e.attrs.as_ref().is_some_and(|a| {
            a.backend_type == attrs.backend_type && a.backend_data == attrs.backend_data
        });
        let mut mod_revision = e.mod_revision;
        if !same_backend {
            // Peers need our VTEP MAC; keep it a reservation (no lease).
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    e.mod_revision,
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            let r = self.client.txn(txn).await?;
            if !r.succeeded() {
                return Ok(None);
            }
            mod_revision = header_rev(r.header())?;
        }
        crate::info!("using reservation", subnet = e.subnet, key = key);
        Ok(Some(OwnLease {
            subnet: e.subnet,
            subnet6: e.subnet6,
            key,
            etcd_lease: 0,
            create_revision: e.create_revision,
            mod_revision,
            ttl: 0,
        }))
    }

    /// Put `value` at `key` on a fresh etcd lease if `cond` holds; the
    /// lease is revoked when it does not (`None`).
    async fn put_on_new_lease(
        &mut self,
        key: &str,
        value: &str,
        cond: Compare,
    ) -> Result<Option<(etcd_client::LeaseGrantResponse, etcd_client::TxnResponse)>, LeaseError>
    {
        let g = self.client.lease_grant(self.ttl, None).await?;
        let txn = Txn::new().when([cond]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(g.id())),
        )]);
        let r = self.client.txn(txn).await?;
        if !r.succeeded() {
            let _ = self.client.lease_revoke(g.id()).await;
            return Ok(None);
        }
        Ok(Some((g, r)))
    }

    /// Move our previous lease onto a fresh etcd lease. `None`: lost a race.
    async fn reuse(&mut self, e: Entry, value: &str) -> Result<Option<OwnLease>, LeaseError> {
        let key = e.key(&self.prefix);
        let cond = Compare::mod_revision(key.clone(), CompareOp::Equal, e.mod_revision);
        let Some((g, r)) = self.put_on_new_lease(&key, value, cond).await? else {
            crate::info!(
                "lost a race re-using our lease; retrying",
                subnet = e.subnet
            );
            return Ok(None);
        };
        crate::info!(
            "re-using our existing lease",
            subnet = e.subnet,
            ttl = g.ttl()
        );
        Ok(Some(OwnLease {
            subnet: e.subnet,
            subnet6: e.subnet6,
            key,
            etcd_lease: g.id(),
            create_revision: e.create_revision,
            mod_revision: header_rev(r.header())?,
            ttl: g.ttl(),
        }))
    }

    /// Create a new key for free subnets. `None`: lost a race (for this
    /// key, or to an older overlapping one).
    async fn create(
        &mut self,
        subnet: Ipv4Network,
        subnet6: Option<Ipv6Network>,
        value: &str,
        attempt: u32,
    ) -> Result<Option<OwnLease>, LeaseError> {
        let key = lease_key_dual(&self.prefix, &subnet, subnet6.as_ref());
        let cond = Compare::create_revision(key.clone(), CompareOp::Equal, 0);
        let Some((g, r)) = self.put_on_new_lease(&key, value, cond).await? else {
            crate::info!(
                "lost the race for a subnet; retrying",
                subnet = subnet,
                attempt = attempt + 1
            );
            return Ok(None);
        };
        let rev = header_rev(r.header())?;
        // The txn guards only this exact key: another key for an
        // overlapping subnet (other prefix length, other IPv6 part) may
        // have been created since our listing. The older key wins.
        let (now, _) = self.list().await?;
        if lost_to_older(&now, &self.prefix, &key, rev) {
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
                .and_then([TxnOp::delete(key.clone(), None)]);
            self.client.txn(txn).await?;
            let _ = self.client.lease_revoke(g.id()).await;
            crate::info!(
                "an older lease holds one of our subnets; retrying",
                key = key,
                attempt = attempt + 1
            );
            return Ok(None);
        }
        match subnet6 {
            Some(s6) => crate::info!(
                "acquired new lease",
                subnet = subnet,
                subnet6 = s6,
                ttl = g.ttl()
            ),
            None => crate::info!("acquired new lease", subnet = subnet, ttl = g.ttl()),
        }
        Ok(Some(OwnLease {
            subnet,
            subnet6,
            key,
            etcd_lease: g.id(),
            create_revision: rev,
            mod_revision: rev,
            ttl: g.ttl(),
        }))
    }

    /// Move our key onto a fresh etcd lease if nobody touched it since we
    /// last saw it. `Ok(None)`: the key changed or vanished; re-acquire.
    ///
    /// When the transaction fails in transport, it may still have been
    /// applied (the response was lost): the key is re-read and the outcome
    /// judged by its etcd lease id ([`judge_renewal`]). Revoking the new
    /// lease blindly would delete our key along with it.
    pub async fn renew(
        &mut self,
        own: &OwnLease,
        attrs: &LeaseAttrs,
    ) -> Result<Option<OwnLease>, LeaseError> {
        let g = self.client.lease_grant(self.ttl, None).await?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                own.key.clone(),
                CompareOp::Equal,
                own.mod_revision,
            )])
            .and_then([TxnOp::put(
                own.key.clone(),
                attrs.to_json(),
                Some(PutOptions::new().with_lease(g.id())),
            )]);
        let outcome = match self.client.txn(txn).await {
            Ok(r) if r.succeeded() => Renewal::Applied {
                mod_revision: header_rev(r.header())?,
            },
            Ok(_) => Renewal::Lost,
            Err(e) => {
                // If the key cannot be read either, leave the new lease
                // alone: if it holds our key it keeps it alive, if not it
                // expires by itself. The next attempt's compare-and-swap
                // sorts out which.
                let now = self.client.get(own.key.clone(), None).await?;
                let kv = now.kvs().first().map(|kv| KeySeen {
                    lease: kv.lease(),
                    create_revision: kv.create_revision(),
                    mod_revision: kv.mod_revision(),
                });
                let judged = judge_renewal(kv, own, g.id());
                crate::warn!(
                    "lease renewal transaction failed; judged from our key",
                    error = e,
                    outcome = format!("{judged:?}")
                );
                if judged == Renewal::NotApplied {
                    let _ = self.client.lease_revoke(g.id()).await;
                    return Err(e.into());
                }
                judged
            }
        };
        match outcome {
            Renewal::Applied { mod_revision } => {
                // The old etcd lease now holds no key; drop it rather than wait 24h.
                if own.etcd_lease != 0 {
                    let _ = self.client.lease_revoke(own.etcd_lease).await;
                }
                Ok(Some(OwnLease {
                    etcd_lease: g.id(),
                    mod_revision,
                    ttl: g.ttl(),
                    ..own.clone()
                }))
            }
            Renewal::NotApplied | Renewal::Lost => {
                let _ = self.client.lease_revoke(g.id()).await;
                Ok(None)
            }
        }
    }
}

/// Our key as read back after a renewal whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySeen {
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// What a renewal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Our key is on the new etcd lease.
    Applied { mod_revision: i64 },
    /// Our key is untouched: retry later (the new lease can go).
    NotApplied,
    /// The key is gone or someone else changed it: re-acquire.
    Lost,
}

/// Decide from the re-read key (`None`: absent) what a renewal onto
/// `new_lease` did. The lease id is ours alone, so a key on it is proof
/// the put went in.
pub fn judge_renewal(kv: Option<KeySeen>, own: &OwnLease, new_lease: i64) -> Renewal {
    match kv {
        Some(k) if k.create_revision == own.create_revision && k.lease == new_lease => {
            Renewal::Applied {
                mod_revision: k.mod_revision,
            }
        }
        Some(k)
            if k.create_revision == own.create_revision && k.mod_revision == own.mod_revision =>
        {
            Renewal::NotApplied
        }
        _ => Renewal::Lost,
    }
}

/// When to renew: `margin` before expiry, but never later than half the TTL
/// would allow if the margin is longer than the TTL.
pub fn renew_after(ttl: i64, margin_secs: i64) -> Duration {
    let ttl = ttl.max(1);
    let s = if margin_secs < ttl {
        ttl - margin_secs
    } else {
        ttl / 2
    };
    Duration::from_secs(s.max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;

    fn cfg() -> NetConfig {
        parse_config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","Backend":{"Type":"vxlan"}}"#).unwrap()
    }
    fn entry(sub: &str, ip: &str, lease: i64) -> Entry {
        Entry {
            subnet: sub.parse().unwrap(),
            subnet6: None,
            attrs: Some(LeaseAttrs::vxlan(
                ip.parse().unwrap(),
                1,
                &[2, 0, 0, 0, 0, 1],
            )),
            etcd_lease: lease,
            create_revision: 5,
            mod_revision: 7,
        }
    }
    const ME: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    fn run(entries: &[Entry], prev: Option<&str>) -> (Result<Plan, LeaseError>, Vec<Entry>) {
        let mut stale = vec![];
        let p = plan(
            &cfg(),
            entries,
            ME,
            prev.map(|p| p.parse().unwrap()),
            None,
            &mut |_| 0,
            &mut stale,
        );
        (p, stale)
    }

    #[test]
    fn reuses_lease_with_our_public_ip() {
        let e = entry("10.5.3.0/24", "198.51.100.1", 99);
        let (p, _) = run(
            &[entry("10.5.1.0/24", "198.51.100.2", 1), e.clone()],
            Some("10.5.2.0/24"),
        );
        assert_eq!(p.unwrap(), Plan::Reuse(e));
    }

    #[test]
    fn reservation_is_used_unchanged_and_preferred() {
        let r = entry("10.5.4.0/24", "198.51.100.1", 0);
        let (p, _) = run(&[entry("10.5.3.0/24", "198.51.100.1", 9), r.clone()], None);
        assert_eq!(p.unwrap(), Plan::UseReservation(r));
    }

    #[test]
    fn others_reservations_are_never_taken() {
        // Only 10.5.1-4 exist; 1..3 are reserved/leased by others, prev points at a reservation.
        let es = [
            entry("10.5.1.0/24", "198.51.100.2", 0),
            entry("10.5.2.0/24", "198.51.100.3", 0),
            entry("10.5.3.0/24", "198.51.100.4", 5),
        ];
        let (p, _) = run(&es, Some("10.5.1.0/24"));
        assert_eq!(
            p.unwrap(),
            Plan::Create("10.5.4.0/24".parse().unwrap(), None)
        );
        let mut full = es.to_vec();
        full.push(entry("10.5.4.0/24", "198.51.100.5", 0));
        assert!(matches!(run(&full, None).0, Err(LeaseError::OutOfSubnets)));
    }

    #[test]
    fn previous_subnet_is_preferred_when_free() {
        let (p, _) = run(
            &[entry("10.5.1.0/24", "198.51.100.2", 1)],
            Some("10.5.3.0/24"),
        );
        assert_eq!(
            p.unwrap(),
            Plan::Create("10.5.3.0/24".parse().unwrap(), None)
        );
        // Outside the range: ignored.
        let (p, _) = run(&[], Some("10.5.9.0/24"));
        assert_eq!(
            p.unwrap(),
            Plan::Create("10.5.1.0/24".parse().unwrap(), None)
        );
    }

    #[test]
    fn our_lease_outside_config_is_deleted_not_reused() {
        let old = entry("10.5.9.0/24", "198.51.100.1", 3);
        let (p, stale) = run(std::slice::from_ref(&old), None);
        assert_eq!(
            p.unwrap(),
            Plan::Create("10.5.1.0/24".parse().unwrap(), None)
        );
        assert_eq!(stale, vec![old]);
        // ...but a reservation outside the config is left alone.
        let (_, stale) = run(&[entry("10.5.9.0/24", "198.51.100.1", 0)], None);
        assert!(stale.is_empty());
    }

    #[test]
    fn a_renewal_with_a_lost_response_is_judged_from_the_key() {
        let own = OwnLease {
            subnet: "10.5.1.0/24".parse().unwrap(),
            subnet6: None,
            key: "/coreos.com/network/subnets/10.5.1.0-24".into(),
            etcd_lease: 100,
            create_revision: 5,
            mod_revision: 9,
            ttl: 60,
        };
        let seen = |lease, create_revision, mod_revision| {
            Some(KeySeen {
                lease,
                create_revision,
                mod_revision,
            })
        };
        // The put went in: the key is on the new lease. Keep it (revoking
        // the new lease would delete our key).
        assert_eq!(
            judge_renewal(seen(200, 5, 12), &own, 200),
            Renewal::Applied { mod_revision: 12 }
        );
        // Not applied: the key is as we left it; retry.
        assert_eq!(
            judge_renewal(seen(100, 5, 9), &own, 200),
            Renewal::NotApplied
        );
        // Gone, re-created, or rewritten by someone else: re-acquire.
        assert_eq!(judge_renewal(None, &own, 200), Renewal::Lost);
        assert_eq!(judge_renewal(seen(200, 11, 12), &own, 200), Renewal::Lost);
        assert_eq!(judge_renewal(seen(300, 5, 12), &own, 200), Renewal::Lost);
    }

    #[test]
    fn renew_timing() {
        assert_eq!(renew_after(86400, 3600), Duration::from_secs(82800));
        assert_eq!(renew_after(60, 3600), Duration::from_secs(30));
    }

    #[test]
    fn rng_in_range() {
        let mut r = Rng::new();
        for n in 1..50 {
            assert!(r.below(n) < n);
        }
    }

    fn cfg6() -> NetConfig {
        parse_config(r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.4.0","EnableIPv6":true,"IPv6Network":"fd00:5::/56","IPv6SubnetMax":"fd00:5:0:3::","Backend":{"Type":"vxlan"}}"#).unwrap()
    }
    fn entry6(sub: &str, sub6: &str, ip: &str, lease: i64) -> Entry {
        Entry {
            subnet6: Some(sub6.parse().unwrap()),
            attrs: Some(LeaseAttrs::vxlan_dual(
                ip.parse().unwrap(),
                "2001:db8:100::9".parse().unwrap(),
                1,
                &[2, 0, 0, 0, 0, 1],
                &[2, 0, 0, 0, 0, 2],
            )),
            ..entry(sub, ip, lease)
        }
    }
    fn run6(
        entries: &[Entry],
        prev: Option<&str>,
        prev6: Option<&str>,
    ) -> (Result<Plan, LeaseError>, Vec<Entry>) {
        let mut stale = vec![];
        let p = plan(
            &cfg6(),
            entries,
            ME,
            prev.map(|p| p.parse().unwrap()),
            prev6.map(|p| p.parse().unwrap()),
            &mut |_| 0,
            &mut stale,
        );
        (p, stale)
    }

    #[test]
    fn dual_stack_create_picks_both_families() {
        let others = [entry6("10.5.1.0/24", "fd00:5:0:1::/64", "198.51.100.2", 1)];
        let (p, _) = run6(&others, None, None);
        assert_eq!(
            p.unwrap(),
            Plan::Create(
                "10.5.2.0/24".parse().unwrap(),
                Some("fd00:5:0:2::/64".parse().unwrap())
            )
        );
        // Previous subnets from subnet.env are preferred when free.
        let (p, _) = run6(&others, Some("10.5.4.0/24"), Some("fd00:5:0:3::/64"));
        assert_eq!(
            p.unwrap(),
            Plan::Create(
                "10.5.4.0/24".parse().unwrap(),
                Some("fd00:5:0:3::/64".parse().unwrap())
            )
        );
        // ...but not when taken.
        let (p, _) = run6(&others, None, Some("fd00:5:0:1::/64"));
        assert_eq!(
            p.unwrap(),
            Plan::Create(
                "10.5.2.0/24".parse().unwrap(),
                Some("fd00:5:0:2::/64".parse().unwrap())
            )
        );
        // IPv6 range exhausted (3 subnets: :1, :2, :3).
        let full = [
            entry6("10.5.1.0/24", "fd00:5:0:1::/64", "198.51.100.2", 1),
            entry6("10.5.2.0/24", "fd00:5:0:2::/64", "198.51.100.3", 1),
            entry6("10.5.3.0/24", "fd00:5:0:3::/64", "198.51.100.4", 1),
        ];
        assert!(matches!(
            run6(&full, None, None).0,
            Err(LeaseError::OutOfSubnets)
        ));
    }

    #[test]
    fn dual_stack_reuse_needs_a_fitting_v6_part() {
        let mine = entry6("10.5.3.0/24", "fd00:5:0:2::/64", "198.51.100.1", 9);
        let (p, _) = run6(std::slice::from_ref(&mine), None, None);
        assert_eq!(p.unwrap(), Plan::Reuse(mine.clone()));
        assert_eq!(
            mine.key("/coreos.com/network"),
            "/coreos.com/network/subnets/10.5.3.0-24&fd00:5:0:2::-64"
        );
        // Our old v4-only lease does not fit a dual-stack config: deleted.
        let old = entry("10.5.3.0/24", "198.51.100.1", 9);
        let (p, stale) = run6(std::slice::from_ref(&old), None, None);
        assert_eq!(
            p.unwrap(),
            Plan::Create(
                "10.5.1.0/24".parse().unwrap(),
                Some("fd00:5:0:1::/64".parse().unwrap())
            )
        );
        assert_eq!(stale, vec![old]);
        // A dual-stack lease is reused as is by a v4-only config (same key).
        let (p, _) = run(std::slice::from_ref(&mine), None);
        assert_eq!(p.unwrap(), Plan::Reuse(mine));
    }

    #[test]
    fn older_key_wins_a_subnet_collision() {
        let p = "/coreos.com/network";
        let a = Entry {
            create_revision: 10,
            ..entry6("10.5.1.0/24", "fd00:5:0:1::/64", "198.51.100.2", 1)
        };
        let b = Entry {
            create_revision: 12,
            ..entry6("10.5.1.0/24", "fd00:5:0:2::/64", "198.51.100.1", 1)
        };
        let c = Entry {
            create_revision: 13,
            ..entry6("10.5.3.0/24", "fd00:5:0:1::/64", "198.51.100.3", 1)
        };
        let all = [a.clone(), b.clone(), c.clone()];
        assert!(!lost_to_older(&all, p, &a.key(p), 10));
        assert!(lost_to_older(&all, p, &b.key(p), 12));
        assert!(lost_to_older(&all, p, &c.key(p), 13));
        assert!(!lost_to_older(std::slice::from_ref(&b), p, &b.key(p), 12));
        // IPv4 only: a /25 inside an older /24 loses, the /24 does not.
        let big = Entry {
            create_revision: 20,
            ..entry("10.5.8.0/24", "198.51.100.2", 1)
        };
        let small = Entry {
            create_revision: 21,
            ..entry("10.5.8.128/25", "198.51.100.1", 1)
        };
        let both = [big.clone(), small.clone()];
        assert!(lost_to_older(&both, p, &small.key(p), 21));
        assert!(!lost_to_older(&both, p, &big.key(p), 20));
    }
}
