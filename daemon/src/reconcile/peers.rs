//! Which remote leases become peers. Any node (or anyone with write access
//! to etcd) can put any lease under `<prefix>/subnets/`; a lease is only
//! programmed when its subnet lies inside `Network` (`IPv6Network`), does
//! not overlap our own subnet, the underlay or an older lease, and it has a
//! usable PublicIP and the backend accepts it (vxlan: a unicast VtepMAC;
//! host-gw: BackendType host-gw). Everything else is rejected with a reason,
//! logged once ([`Rejections`]), and never reaches the data plane, so it
//! can neither black-hole the underlay nor keep the node unready.

use super::family::Subnet;
use crate::backends::{Backend, Peer, PeerData};
use crate::store::etcd::Entry;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_netlink::IpFamily;

/// What a peer must stay clear of, for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope<N: Subnet> {
    /// `Network` / `IPv6Network`: peers' subnets must lie inside it.
    pub network: N,
    /// Networks of the underlay interface's addresses.
    pub underlay: Vec<N>,
    /// Our own public address: never inside a peer's subnet, never a peer's PublicIP.
    pub public_ip: Option<N::Addr>,
}

/// Both families' scopes (IPv6 only when dual-stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    pub v4: Scope<Ipv4Network>,
    pub v6: Option<Scope<Ipv6Network>>,
}

impl Scopes {
    /// Scopes from the config networks, the underlay's addresses and our public IPs.
    pub fn new(
        network: Ipv4Network,
        network6: Option<Ipv6Network>,
        underlay: &[IpNetwork],
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Scopes {
        fn nets<N: Subnet>(all: &[IpNetwork]) -> Vec<N> {
            all.iter()
                .filter_map(|n| IpNetwork::new(n.network(), n.prefix()).ok())
                .filter_map(N::from_ip_network)
                .collect()
        }
        Scopes {
            v4: Scope {
                network,
                underlay: nets(underlay),
                public_ip: Some(public_ip),
            },
            v6: network6.map(|network| Scope {
                network,
                underlay: nets(underlay),
                public_ip: public_ipv6,
            }),
        }
    }
}

/// The peers to program and the leases rejected (lease key name -> reason).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    pub v4: Vec<Peer>,
    pub v6: Vec<Peer>,
    pub rejected: BTreeMap<String, String>,
}

/// One family's side of a lease, before validation.
struct Candidate<N: Subnet> {
    name: String,
    subnet: N,
    public_ip: Option<N::Addr>,
    /// What the backend needs from the lease, or why it cannot use it.
    data: Result<PeerData, String>,
    create_revision: i64,
}

fn inside<N: Subnet>(outer: &N, inner: &N) -> bool {
    outer.has(inner.base()) && outer.ip_network().prefix() <= inner.ip_network().prefix()
}

fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback())
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
    }
}

/// Why this candidate cannot be a peer, ignoring the others.
fn reject_alone<N: Subnet>(c: &Candidate<N>, own: Option<&N>, s: &Scope<N>) -> Option<String> {
    let net = &s.network;
    if !inside(net, &c.subnet) {
        return Some(format!("subnet {} is outside the network {net}", c.subnet));
    }
    if let Some(own) = own.filter(|o| o.overlaps(&c.subnet)) {
        return Some(format!("subnet {} overlaps our own subnet {own}", c.subnet));
    }
    if let Some(u) = s.underlay.iter().find(|u| u.overlaps(&c.subnet)) {
        return Some(format!(
            "subnet {} overlaps the underlay network {u}",
            c.subnet
        ));
    }
    if let Some(ip) = s.public_ip.filter(|ip| c.subnet.has(*ip)) {
        return Some(format!("subnet {} contains our public IP {ip}", c.subnet));
    }
    let Some(ip) = c.public_ip else {
        return Some("no valid PublicIP".into());
    };
    if !unicast(ip.into()) || net.has(ip) {
        return Some(format!("PublicIP {ip} is not a usable underlay address"));
    }
    if s.public_ip == Some(ip) {
        return Some(format!("PublicIP {ip} is this node's"));
    }
    c.data.as_ref().err().cloned()
}

/// Validate one family. Among leases that conflict with each other
/// (overlapping subnets, one VtepMAC behind two PublicIPs), the older one
/// (lower create revision) wins, as it does when leases are acquired.
/// O(n log n): accepted subnets never overlap, so only the nearest
/// accepted bases below and above a candidate's base can conflict with it.
fn select_family<N: Subnet>(
    mut cands: Vec<Candidate<N>>,
    own: Option<&N>,
    s: &Scope<N>,
    rejected: &mut BTreeMap<String, String>,
) -> Vec<Peer> {
    cands.sort_by(|a, b| (a.create_revision, &a.name).cmp(&(b.create_revision, &b.name)));
    let mut by_base: BTreeMap<N::Addr, (N, Peer, String)> = BTreeMap::new();
    let mut by_mac: BTreeMap<[u8; 6], (N::Addr, String)> = BTreeMap::new();
    for c in cands {
        if let Some(why) = reject_alone(&c, own, s) {
            rejected.insert(c.name, why);
            continue;
        }
        let (Some(public_ip), Ok(data)) = (c.public_ip, c.data) else {
            continue; // reject_alone covers both
        };
        let base = c.subnet.base();
        let below = by_base.range(..=base).next_back().map(|(_, v)| v);
        let above = by_base.range(base..).next().map(|(_, v)| v);
        let overlapping = below
            .filter(|(s, _, _)| s.overlaps(&c.subnet))
            .or(above.filter(|(s, _, _)| c.subnet.has(s.base())));
        let conflict = if let Some((_, _, name)) = overlapping {
            Some(format!(
                "subnet {} overlaps the older lease {name}",
                c.subnet
            ))
        } else {
            let mac = match data {
                PeerData::Vtep(m) => Some(m),
                PeerData::None => None,
            };
            match mac.and_then(|m| by_mac.get(&m).map(|v| (m, v))) {
                Some((mac, (ip, name))) if *ip != public_ip => Some(format!(
                    "VtepMAC {} is already used by the older lease {name}",
                    weft_netlink::format_mac(&mac)
                )),
                _ => None,
            }
        };
        if let Some(why) = conflict {
            rejected.insert(c.name, why);
            continue;
        }
        if let PeerData::Vtep(mac) = data {
            by_mac.entry(mac).or_insert((public_ip, c.name.clone()));
        }
        let peer = Peer {
            subnet: c.subnet.ip_network(),
            public_ip: public_ip.into(),
            data,
        };
        by_base.insert(base, (c.subnet, peer, c.name));
    }
    let mut peers: Vec<Peer> = by_base.into_values().map(|(_, p, _)| p).collect();
    peers.sort();
    peers
}

/// The peers among `entries` (every lease but ours), validated against `scopes`.
pub fn select<'a>(
    entries: impl IntoIterator<Item = &'a Entry> + Clone,
    own: Option<(Ipv4Network, Option<Ipv6Network>)>,
    scopes: &Scopes,
    backend: &dyn Backend,
) -> Selection {
    let own4 = own.map(|o| o.0);
    let theirs = || {
        entries
            .clone()
            .into_iter()
            .filter(move |e| Some(e.subnet) != own4)
    };
    let mut rejected = BTreeMap::new();
    let name = |e: &Entry| crate::store::keys::lease_key_name_dual(&e.subnet, e.subnet6.as_ref());
    let v4 = theirs()
        .map(|e| Candidate {
            name: name(e),
            subnet: e.subnet,
            public_ip: e.attrs.as_ref().and_then(|a| a.public_ipv4()),
            data: accept(backend, e, IpFamily::V4),
            create_revision: e.create_revision,
        })
        .collect();
    let v4 = select_family(v4, own4.as_ref(), &scopes.v4, &mut rejected);
    let v6 = match &scopes.v6 {
        None => Vec::new(),
        Some(s6) => {
            // A v4-only lease is a v4-only peer, not a rejection.
            let cands = theirs()
                .filter_map(|e| {
                    Some(Candidate {
                        name: name(e),
                        subnet: e.subnet6?,
                        public_ip: e.attrs.as_ref().and_then(|a| a.public_ipv6_addr()),
                        data: accept(backend, e, IpFamily::V6),
                        create_revision: e.create_revision,
                    })
                })
                .collect();
            let mut rej6 = BTreeMap::new();
            let v6 = select_family(cands, own.and_then(|o| o.1).as_ref(), s6, &mut rej6);
            for (k, why) in rej6 {
                rejected
                    .entry(k)
                    .and_modify(|w: &mut String| {
                        w.push_str("; IPv6: ");
                        w.push_str(&why)
                    })
                    .or_insert(format!("IPv6: {why}"));
            }
            v6
        }
    };
    Selection { v4, v6, rejected }
}

fn accept(backend: &dyn Backend, e: &Entry, family: IpFamily) -> Result<PeerData, String> {
    match &e.attrs {
        None => Err("the lease value is not flannel's JSON".into()),
        Some(a) => backend.accept(a, family),
    }
}

/// Remembers which leases were rejected so that each is logged once (and
/// again only when its reason changes), not on every pass.
#[derive(Debug, Default)]
pub struct Rejections(BTreeMap<String, String>);

impl Rejections {
    /// Log newly rejected leases; forget those that are gone or accepted.
    pub fn report(&mut self, now: &BTreeMap<String, String>) {
        for (k, why) in now {
            if self.0.get(k) != Some(why) {
                crate::warn!("ignoring lease", lease = k, reason = why);
            }
        }
        for k in self.0.keys() {
            if !now.contains_key(k) {
                crate::info!("lease no longer ignored (accepted or gone)", lease = k);
            }
        }
        self.0.clone_from(now);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[cfg(test)]
    fn count(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::underlay::Underlay;
    use crate::backends::vxlan::Vxlan;
    use crate::store::attrs::LeaseAttrs;

    fn vxlan() -> Vxlan {
        let cfg = crate::config::parse_config(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        let u = Underlay {
            index: 2,
            name: "eth0".into(),
            ip: Ipv4Addr::new(198, 51, 100, 11),
            ip6: None,
            mtu: 1500,
            nets: Vec::new(),
        };
        let ip6 = "2001:db8:100::11".parse().unwrap();
        Vxlan::new(&cfg, &u, u.ip, Some(ip6), false).unwrap()
    }

    fn scopes(dual: bool) -> Scopes {
        Scopes::new(
            "10.5.0.0/16".parse().unwrap(),
            dual.then(|| "fd00:5::/56".parse().unwrap()),
            &[
                "198.51.100.11/24".parse().unwrap(),
                "2001:db8:100::11/64".parse().unwrap(),
            ],
            Ipv4Addr::new(198, 51, 100, 11),
            dual.then(|| "2001:db8:100::11".parse().unwrap()),
        )
    }

    fn lease(sub: &str, value: &str, rev: i64) -> Entry {
        let (subnet, subnet6) = crate::store::keys::parse_lease_key_name_dual(sub).unwrap();
        Entry {
            subnet,
            subnet6,
            attrs: LeaseAttrs::parse(value.as_bytes()),
            etcd_lease: 1,
            create_revision: rev,
            mod_revision: rev,
        }
    }

    fn vx(ip: &str, mac: &str) -> String {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    }

    const OWN: &str = "10.5.1.0/24";

    fn run(es: &[Entry]) -> Selection {
        select(
            es,
            Some((OWN.parse().unwrap(), None)),
            &scopes(false),
            &vxlan(),
        )
    }

    #[test]
    fn good_peers_pass() {
        let es = [
            lease("10.5.2.0-24", &vx("198.51.100.12", "02:00:00:00:00:02"), 5),
            lease("10.5.3.0-24", &vx("192.0.2.13", "02:00:00:00:00:03"), 6),
            lease("10.5.1.0-24", &vx("198.51.100.11", "02:00:00:00:00:01"), 4),
        ];
        let s = run(&es);
        assert_eq!(s.v4.len(), 2, "{s:?}");
        assert!(s.rejected.is_empty(), "{s:?}");
        assert_eq!(
            s.v4[0].public_ip,
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 12))
        );
    }

    #[test]
    fn leases_that_would_hurt_are_rejected_with_a_reason() {
        let good = vx("198.51.100.12", "02:00:00:00:00:02");
        let cases = [
            ("198.51.100.0-26", good.clone(), "outside the network"),
            ("0.0.0.0-0", good.clone(), "outside the network"),
            ("10.0.0.0-8", good.clone(), "outside the network"),
            ("10.5.1.0-25", good.clone(), "overlaps our own subnet"),
            ("10.5.0.0-16", good.clone(), "overlaps our own subnet"),
            (
                "10.5.9.0-24",
                vx("0.0.0.0", "02:00:00:00:00:09"),
                "not a usable",
            ),
            (
                "10.5.9.0-24",
                vx("224.0.0.1", "02:00:00:00:00:09"),
                "not a usable",
            ),
            (
                "10.5.9.0-24",
                vx("10.5.7.7", "02:00:00:00:00:09"),
                "not a usable",
            ),
            (
                "10.5.9.0-24",
                vx("198.51.100.11", "02:00:00:00:00:09"),
                "this node's",
            ),
            (
                "10.5.9.0-24",
                vx("nope", "02:00:00:00:00:09"),
                "no valid PublicIP",
            ),
            (
                "10.5.9.0-24",
                vx("198.51.100.19", "00:00:00:00:00:00"),
                "not a unicast MAC",
            ),
            (
                "10.5.9.0-24",
                vx("198.51.100.19", "03:00:00:00:00:09"),
                "not a unicast MAC",
            ),
            ("10.5.9.0-24", vx("198.51.100.19", "zz"), "VtepMAC"),
            (
                "10.5.9.0-24",
                r#"{"PublicIP":"198.51.100.19"}"#.into(),
                "not a vxlan lease",
            ),
        ];
        for (key, value, why) in cases {
            let s = run(&[lease(key, &value, 3)]);
            assert!(s.v4.is_empty(), "{key} {value}: {s:?}");
            let got = s.rejected.get(key).cloned().unwrap_or_default();
            assert!(got.contains(why), "{key} {value}: {got:?}, want {why:?}");
        }
    }

    #[test]
    fn network_overlapping_the_underlay_still_keeps_the_underlay_clear() {
        let mut sc = scopes(false);
        sc.v4.network = "198.51.0.0/16".parse().unwrap();
        let es = [lease(
            "198.51.100.0-24",
            &vx("192.0.2.1", "02:00:00:00:00:02"),
            3,
        )];
        let s = select(&es, None, &sc, &vxlan());
        assert!(s.v4.is_empty());
        assert!(s.rejected["198.51.100.0-24"].contains("underlay"));
    }

    #[test]
    fn the_older_of_two_conflicting_leases_wins() {
        let es = [
            lease("10.5.4.0-25", &vx("198.51.100.15", "02:00:00:00:00:05"), 9),
            lease("10.5.4.0-24", &vx("198.51.100.14", "02:00:00:00:00:04"), 7),
            lease("10.5.6.0-24", &vx("198.51.100.16", "02:00:00:00:00:04"), 8),
            // Same VTEP behind two subnets: fine.
            lease("10.5.7.0-24", &vx("198.51.100.14", "02:00:00:00:00:04"), 10),
        ];
        let s = run(&es);
        let subnets: Vec<String> = s.v4.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.5.4.0/24", "10.5.7.0/24"]);
        assert!(s.rejected["10.5.4.0-25"].contains("older lease 10.5.4.0-24"));
        assert!(s.rejected["10.5.6.0-24"].contains("VtepMAC"));
    }

    #[test]
    fn conflicts_are_found_on_both_sides_of_a_base() {
        let l = |sub: &str, n: u8, rev| {
            lease(
                sub,
                &vx(
                    &format!("198.51.100.{n}"),
                    &format!("02:00:00:00:00:{n:02x}"),
                ),
                rev,
            )
        };
        let es = [
            l("10.5.8.0-24", 20, 1),
            l("10.5.10.0-24", 21, 2),
            l("10.5.8.0-21", 22, 3),    // contains both older ones
            l("10.5.10.128-25", 23, 4), // inside an older one
            l("10.5.9.0-24", 24, 5),    // between them, free
        ];
        let s = run(&es);
        let subnets: Vec<String> = s.v4.iter().map(|p| p.subnet.to_string()).collect();
        assert_eq!(subnets, ["10.5.8.0/24", "10.5.9.0/24", "10.5.10.0/24"]);
        assert!(s.rejected["10.5.8.0-21"].contains("older lease 10.5.8.0-24"));
        assert!(s.rejected["10.5.10.128-25"].contains("older lease 10.5.10.0-24"));
    }

    #[test]
    fn ipv6_side_is_validated_separately() {
        let v = |ip6: &str| {
            format!(
                r#"{{"PublicIP":"198.51.100.12","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:02"}},"BackendV6Data":{{"VNI":1,"VtepMAC":"02:00:00:00:01:02"}}}}"#
            )
        };
        let es = [
            lease("10.5.2.0-24&fd00:5:0:2::-64", &v("2001:db8:100::12"), 3),
            lease("10.5.3.0-24&fd00:9::-64", &v("2001:db8:100::13"), 4),
            lease("10.5.4.0-24", &vx("198.51.100.14", "02:00:00:00:00:04"), 5),
        ];
        let own = (
            "10.5.1.0/24".parse().unwrap(),
            Some("fd00:5:0:1::/64".parse().unwrap()),
        );
        let s = select(&es, Some(own), &scopes(true), &vxlan());
        // .3 keeps its IPv4 side (same VTEP as .2, same PublicIP).
        assert_eq!(s.v4.len(), 3, "{s:?}");
        assert_eq!(s.v6.len(), 1);
        assert_eq!(
            s.v6[0].public_ip,
            "2001:db8:100::12".parse::<IpAddr>().unwrap()
        );
        assert_eq!(s.rejected.len(), 1);
        assert!(s.rejected["10.5.3.0-24&fd00:9::-64"]
            .starts_with("IPv6: subnet fd00:9::/64 is outside"));
    }

    #[test]
    fn rejections_are_remembered() {
        let mut r = Rejections::default();
        let mut now = BTreeMap::new();
        now.insert("a".to_string(), "x".to_string());
        r.report(&now);
        r.report(&now);
        assert_eq!(r.count(), 1);
        r.report(&BTreeMap::new());
        assert_eq!(r.count(), 0);
    }
}
