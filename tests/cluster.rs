//! End-to-end cluster tests: etcd, several nodes running weftd (flannel-
//! compatible leases, VXLAN overlay) and pods attached by the flannel CNI
//! plugin exactly as a runtime would, all in network namespaces (see
//! `scripts/lib/cluster.sh`, which these tests drive through `Cluster`).
//!
//! Needs root and etcd; each test has its own cluster (unique netns prefix
//! and state dir), at most two run at once. The scenarios run for every
//! backend (modules `vxlan`, `host_gw`, `direct_routing`, see
//! [`for_each_backend`]); `direct_routing_across_a_router` adds a second
//! underlay segment behind a router.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::*;

const FAST: &str = "--reconcile-interval=1 --ip-masq";

/// A cluster with `nodes` nodes, the given pods on every node, converged.
fn cluster_with(backend: &'static str, nodes: u32, pods: &[&str], weftd_args: &str) -> Cluster {
    let c = Cluster::with_backend(weftd_args, backend);
    c.write_config(None);
    for n in 1..=nodes {
        c.node_add(n);
    }
    for n in 1..=nodes {
        for p in pods {
            c.pod_add(n, p);
        }
    }
    c.wait_converged();
    c
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Pings both ways between (n1, p1) and (n2, p2); panics with context.
fn assert_pings(c: &Cluster, n1: u32, p1: &str, n2: u32, p2: &str) {
    for (a, pa, b, pb) in [(n1, p1, n2, p2), (n2, p2, n1, p1)] {
        // The first packet to a freshly learnt peer may race the last entry.
        assert!(
            c.wait_for(secs(5), || c.ping(a, pa, b, pb)),
            "ping n{a}/{pa} -> n{b}/{pb} ({}) failed\n{}\n{}",
            c.pod_ip(b, pb),
            c.sh(&format!("cluster_node_show {a}; cluster_node_show {b}")),
            c.log_tails()
        );
    }
}

fn assert_has_peer(c: &Cluster, on: u32, subnet: &str, ip: &str, within: Duration) {
    assert!(
        c.wait_for(within, || c.has_peer(on, subnet, ip)),
        "n{on} did not program {subnet} via {ip}:\n{}",
        c.sh(&format!("cluster_node_show {on}"))
    );
}

fn assert_lacks_peer(c: &Cluster, on: u32, subnet: &str, ip: &str, within: Duration) {
    assert!(
        c.wait_for(within, || c.lacks_peer(on, subnet, ip)),
        "n{on} still has entries for {subnet} via {ip}:\n{}",
        c.sh(&format!("cluster_node_show {on}"))
    );
}

fn pods_on_different_nodes_reach_each_other_both_ways(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = cluster_with(backend, 3, &["a", "b"], FAST);
    let leases = c.leases();
    assert_eq!(leases.len(), 3, "{leases:?}");
    let mut subnets: Vec<String> = (1..=3).map(|n| c.subnet(n)).collect();
    subnets.dedup();
    assert_eq!(subnets.len(), 3);
    // Every pod pings every pod on the other nodes: 6 pods x 4 = 24 pairs.
    let out = c.try_sh("cluster_ping_all");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", c.log_tails());
    assert!(text.contains("24 ok, 0 failed"), "{text}");
    // Replies come from the peer pod's own address (no NAT on the way).
    let ip_b = c.pod_ip(2, "b");
    let from = c.ns_sh(
        &c.pod_ns(1, "a"),
        &format!("ping -n -c1 -W2 {ip_b} | head -2"),
    );
    assert!(from.contains(&format!("from {ip_b}")), "{from}");
}

fn a_node_joining_later_is_learnt_by_the_others(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = cluster_with(backend, 2, &["a"], FAST);
    c.node_add(3);
    c.pod_add(3, "a");
    let (s3, ip3) = (c.subnet(3), c.node_ip(3));
    for n in [1, 2] {
        assert_has_peer(&c, n, &s3, &ip3, secs(10));
        // ... and the newcomer learnt the others from its initial listing.
        assert_has_peer(&c, 3, &c.subnet(n), &c.node_ip(n), secs(10));
    }
    assert_pings(&c, 1, "a", 3, "a");
    assert_pings(&c, 2, "a", 3, "a");
    assert_pings(&c, 1, "a", 2, "a");
}

fn a_node_leaving_with_its_lease_is_forgotten_by_the_others(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = cluster_with(backend, 3, &["a"], FAST);
    let (s3, ip3) = (c.subnet(3), c.node_ip(3));
    for n in [1, 2] {
        assert!(c.has_peer(n, &s3, &ip3));
    }
    // Node 3 leaves: weftd stopped, its lease deleted from etcd, netns gone.
    c.node_remove(3);
    assert!(!c.leases().iter().any(|(s, _, _)| *s == s3));
    for n in [1, 2] {
        // Route, neighbour and FDB entry all go.
        assert_lacks_peer(&c, n, &s3, &ip3, secs(10));
        // ... and only those: the remaining peer is intact.
        let other = 3 - n;
        assert!(c.has_peer(n, &c.subnet(other), &c.node_ip(other)));
    }
    assert_pings(&c, 1, "a", 2, "a");
}

/// A background `ping` whose summary is read at the end; killed on drop.
struct Pinger {
    child: Option<Child>,
}

impl Pinger {
    fn start(ns: &str, dst: &str, interval: &str, count: u32) -> Pinger {
        let child = Command::new("ip")
            .args([
                "netns", "exec", ns, "ping", "-n", "-q", "-i", interval, "-W", "2",
            ])
            .args(["-c", &count.to_string(), dst])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ping");
        Pinger { child: Some(child) }
    }

    /// Waits for ping to finish; returns (transmitted, received, summary).
    fn finish(mut self, timeout: Duration) -> (u32, u32, String) {
        let mut child = self.child.take().unwrap();
        let end = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ping did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary in {out:?}"))
            .to_string();
        let num = |word: &str| -> u32 {
            line.split(',')
                .find(|part| part.contains(word))
                .and_then(|part| part.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("cannot parse {word:?} in {line:?}"))
        };
        (num("transmitted"), num("received"), line)
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Packets received on eth0 in netns `ns`.
fn rx_packets(c: &Cluster, ns: &str) -> u64 {
    c.ns_sh(ns, "cat /sys/class/net/eth0/statistics/rx_packets")
        .trim()
        .parse()
        .unwrap_or(0)
}

fn weftd_restarts_keep_the_subnet_and_lose_no_packet(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = cluster_with(backend, 3, &["a"], FAST);
    let before: Vec<String> = (1..=3).map(|n| c.subnet(n)).collect();
    let leases_before: Vec<String> = c.leases().into_iter().map(|(s, _, _)| s).collect();
    // 200 pings 50 ms apart (10 s) n1/a -> n2/a while weftd restarts on
    // every node, sender and receiver included.
    let dst = c.pod_ip(2, "a");
    let pinger = Pinger::start(&c.pod_ns(1, "a"), &dst, "0.05", 200);
    // Each restart happens while pings are flowing: the receiving pod has
    // counted fresh packets since the last step.
    let receiver = c.pod_ns(2, "a");
    let flowing = |since: u64| {
        assert!(
            c.wait_for(secs(10), || rx_packets(&c, &receiver) >= since + 5),
            "no pings arriving at n2/a"
        );
    };
    flowing(rx_packets(&c, &receiver));
    for n in [1, 2, 3] {
        let started = Instant::now();
        c.weftd_restart(n);
        note(&format!(
            "weftd on n{n} restarted and ready in {:?}",
            started.elapsed()
        ));
        flowing(rx_packets(&c, &receiver));
    }
    // One restart without waiting for readiness, with SIGKILL (a crash).
    c.sh("cluster_weftd_stop 1 KILL && cluster_weftd_start 1");
    let (tx, rx, line) = pinger.finish(secs(30));
    assert_eq!(tx, 200, "{line}");
    assert_eq!(rx, tx, "packets lost across weftd restarts: {line}");
    c.sh("cluster_node_wait_ready 1");
    let after: Vec<String> = (1..=3).map(|n| c.subnet(n)).collect();
    assert_eq!(before, after, "subnets changed across restarts");
    let leases_after: Vec<String> = c.leases().into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(leases_before, leases_after);
    c.wait_converged();
    assert_pings(&c, 3, "a", 1, "a");
}

fn entries_deleted_by_hand_are_repaired(backend: &'static str) {
    if !require_root() {
        return;
    }
    // A 30 s reconcile timer: only kernel notifications can repair in time.
    let c = cluster_with(backend, 3, &["a"], "--reconcile-interval=30 --ip-masq");
    let ns1 = c.node_ns(1);
    let (s2, ip2) = (c.subnet(2), c.node_ip(2));
    let mut cases = vec![("route", format!("ip route del {s2}"))];
    if backend == "vxlan" {
        let gw2 = s2.split('/').next().unwrap().to_string();
        let mac2 = c.vtep_mac(2);
        cases.extend([
            ("neighbour", format!("ip neigh del {gw2} dev flannel.1")),
            (
                "fdb",
                format!("bridge fdb del {mac2} dev flannel.1 dst {ip2} self"),
            ),
            (
                "all three",
                format!(
                    "ip route del {s2} && ip neigh del {gw2} dev flannel.1 && \
                     bridge fdb del {mac2} dev flannel.1 dst {ip2} self"
                ),
            ),
        ]);
    }
    const REPAIRS: &str = "weftd_reconcile_repairs_total";
    for (what, script) in cases {
        let repairs = c.metric(1, REPAIRS).expect("n1 exposes the repair counter");
        let t = Instant::now();
        // ns_sh fails unless every deletion took (the repair can be faster
        // than any check afterwards).
        c.ns_sh(&ns1, &script);
        // Repaired from the kernel's deletion notice (target: 1 s; the
        // deadline leaves room for the shell checks on a loaded machine).
        assert_has_peer(&c, 1, &s2, &ip2, secs(3));
        assert!(
            c.metric(1, REPAIRS).is_some_and(|r| r > repairs),
            "{what}: nothing was repaired"
        );
        note(&format!(
            "{what} deleted by hand: repaired in {:?}",
            t.elapsed()
        ));
    }
    // The other peer was never touched, and traffic flows again.
    assert!(c.has_peer(1, &c.subnet(3), &c.node_ip(3)));
    assert_pings(&c, 1, "a", 2, "a");
}

const RECONNECTS: &str = "weftd_etcd_reconnects_total";

fn etcd_outage_keeps_traffic_and_weftd_catches_up_afterwards(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = cluster_with(backend, 3, &["a"], FAST);
    // A hand-written lease every node knows before the outage.
    c.sh("cluster_lease_put 10.244.98.0/24 198.51.100.98 02:00:00:00:00:98");
    for n in [1, 2, 3] {
        assert_has_peer(&c, n, "10.244.98.0/24", "198.51.100.98", secs(10));
    }
    let (s3, ip3) = (c.subnet(3), c.node_ip(3));
    let reconnects_before = c
        .metric(1, RECONNECTS)
        .expect("n1 exposes the reconnect counter");

    // n1 is cut off from etcd (dropped packets, like a partition). Every
    // change below is made while it is, so none can reach n1 before it
    // is reconnected: no race with its reconnect.
    let dst = c.pod_ip(2, "a");
    let pinger = Pinger::start(&c.pod_ns(1, "a"), &dst, "0.1", 150);
    c.etcd_cut(1);
    c.sh("cluster_lease_put 10.244.99.0/24 198.51.100.99 02:00:00:00:00:99 && cluster_lease_del 10.244.98.0/24");
    c.node_remove(3);
    // n2, still connected, sees the changes: they happened.
    assert_has_peer(&c, 2, "10.244.99.0/24", "198.51.100.99", secs(10));
    assert_lacks_peer(&c, 2, "10.244.98.0/24", "198.51.100.98", secs(10));
    assert_lacks_peer(&c, 2, &s3, &ip3, secs(10));
    // weftd on n1 notices the lost connection (HTTP/2 keepalive) and
    // keeps running, and keeps its kernel state: nothing is flushed,
    // nothing learnt.
    assert!(
        c.wait_for(secs(45), || c
            .metric(1, RECONNECTS)
            .is_some_and(|r| r > reconnects_before)),
        "n1's {RECONNECTS} stayed at {reconnects_before} while cut off from etcd\n{}",
        c.log_tails()
    );
    assert!(
        c.weftd_running(1),
        "weftd on n1 exited while cut off\n{}",
        c.log_tails()
    );
    assert!(
        c.has_peer(1, "10.244.98.0/24", "198.51.100.98"),
        "n1 dropped a lease while cut off"
    );
    assert!(
        c.has_peer(1, &s3, &ip3),
        "n1 dropped n3's entries while cut off"
    );
    assert!(
        c.lacks_peer(1, "10.244.99.0/24", "198.51.100.99"),
        "n1 learnt a lease while cut off: the cut does not work"
    );
    // Pod traffic across nodes never depended on etcd.
    let (tx, rx, line) = pinger.finish(secs(60));
    assert_eq!(
        rx, tx,
        "pod packets lost while n1 was cut off from etcd: {line}"
    );
    assert_pings(&c, 2, "a", 1, "a");

    c.etcd_restore(1);
    // n1 catches up: the new lease appears, the removed ones go.
    assert_has_peer(&c, 1, "10.244.99.0/24", "198.51.100.99", secs(20));
    assert_lacks_peer(&c, 1, "10.244.98.0/24", "198.51.100.98", secs(20));
    assert_lacks_peer(&c, 1, &s3, &ip3, secs(20));
    assert!(c.has_peer(1, &c.subnet(2), &c.node_ip(2)));
    assert_pings(&c, 1, "a", 2, "a");
    note(&format!(
        "n1 {RECONNECTS}: {reconnects_before} before the cut, {:?} after",
        c.metric(1, RECONNECTS)
    ));

    // etcd itself stops: traffic flows, weftd waits, and after the restart
    // changes reach every node, and a newcomer learns and is learnt.
    c.sh("cluster_etcd_stop");
    // weftd had its chance to give up: several passes with etcd gone.
    for n in [1, 2] {
        c.wait_reconcile_passes(n, 3);
    }
    for n in [1, 2] {
        assert!(
            c.weftd_running(n),
            "weftd on n{n} exited while etcd was down\n{}",
            c.log_tails()
        );
    }
    assert_pings(&c, 1, "a", 2, "a");
    c.sh("cluster_etcd_start && cluster_lease_del 10.244.99.0/24");
    for n in [1, 2] {
        assert_lacks_peer(&c, n, "10.244.99.0/24", "198.51.100.99", secs(20));
    }
    c.node_add(4);
    c.pod_add(4, "a");
    for n in [1, 2] {
        assert_has_peer(&c, n, &c.subnet(4), &c.node_ip(4), secs(10));
    }
    assert_pings(&c, 1, "a", 4, "a");
    assert_pings(&c, 2, "a", 4, "a");
}

/// A hand-written lease in flannel's format for `backend`.
fn flannel_lease(backend: &str, ip: &str, mac: &str) -> String {
    match backend {
        "host-gw" => format!(r#"{{"PublicIP":"{ip}","BackendType":"host-gw"}}"#),
        _ => format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        ),
    }
}

fn flannel_format_config_and_hand_written_leases_are_honoured(backend: &'static str) {
    if !require_root() {
        return;
    }
    let c = Cluster::with_backend(FAST, backend);
    // Exactly what one would put in etcd for flanneld.
    let config = match backend {
        "host-gw" => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
        "directrouting" => {
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#
        }
        _ => r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    };
    c.sh(&format!(
        r#"cluster_etcd_put "$WC_ETCD_PREFIX/config" '{config}'"#
    ));
    // A node configured by hand, as flanneld would have set it up, at
    // 198.51.100.77 (= node 67 of the library): flannel.1 with a known MAC
    // (vxlan) or nothing (host-gw), the lease's network address as /32,
    // and its lease written by hand.
    let mac77 = "02:42:c6:33:64:4d";
    c.sh("cluster_node_create 67");
    let ns77 = c.node_ns(67);
    let vxlan = backend != "host-gw";
    if vxlan {
        c.ns_sh(
            &ns77,
            &format!(
                "ip link add flannel.1 address {mac77} type vxlan id 1 local 198.51.100.77 dev eth0 \
                 dstport 8472 nolearning && ip addr add 10.244.77.0/32 dev flannel.1 && \
                 ip link set flannel.1 mtu 1450 up"
            ),
        );
    } else {
        c.ns_sh(&ns77, "ip addr add 10.244.77.0/32 dev lo");
    }
    let lease77 = flannel_lease(backend, "198.51.100.77", mac77);
    c.sh(&format!(
        r#"cluster_etcd_put "$WC_ETCD_PREFIX/subnets/10.244.77.0-24" '{lease77}'"#
    ));
    for n in [1, 2, 3] {
        c.node_add(n);
        c.pod_add(n, "a");
    }
    c.wait_converged();
    for n in [1, 2, 3] {
        assert_ne!(
            c.subnet(n),
            "10.244.77.0/24",
            "n{n} took the hand-written lease's subnet"
        );
        // The lease's entries (vxlan: neighbour -> the hand-written
        // VtepMAC, FDB and route; else a route via 198.51.100.77).
        assert_has_peer(&c, n, "10.244.77.0/24", "198.51.100.77", secs(10));
        if backend == "vxlan" {
            let neigh = c.ns_sh(&c.node_ns(n), "ip neigh show dev flannel.1 10.244.77.0");
            assert!(neigh.contains(mac77), "{neigh}");
            let fdb = c.ns_sh(&c.node_ns(n), "bridge fdb show dev flannel.1");
            assert!(
                fdb.contains(&format!("{mac77} dst 198.51.100.77 self permanent")),
                "{fdb}"
            );
        }
    }
    // Give the hand-made node the entries flanneld would have for n1, then
    // ping across: pod on n1 <-> the hand-made node's 10.244.77.0.
    let s1 = c.subnet(1);
    if backend == "vxlan" {
        let mac1 = c.vtep_mac(1);
        let gw1 = s1.split('/').next().unwrap().to_string();
        c.ns_sh(
            &ns77,
            &format!(
                "ip neigh replace {gw1} lladdr {mac1} dev flannel.1 nud permanent && \
                 bridge fdb replace {mac1} dev flannel.1 dst 198.51.100.11 self permanent && \
                 ip route replace {s1} via {gw1} dev flannel.1 onlink"
            ),
        );
    } else {
        c.ns_sh(
            &ns77,
            &format!("ip route replace {s1} via 198.51.100.11 dev eth0"),
        );
    }
    let pod1 = c.pod_ip(1, "a");
    c.ns_sh(
        &c.pod_ns(1, "a"),
        "ping -n -c2 -i 0.2 -W2 10.244.77.0 >/dev/null",
    );
    c.ns_sh(&ns77, &format!("ping -n -c2 -i 0.2 -W2 {pod1} >/dev/null"));

    // weftd's own leases and subnet.env are in flannel's format.
    let leases = c.leases();
    assert_eq!(leases.len(), 4, "{leases:?}");
    let mtu = if vxlan { 1450 } else { 1500 };
    for n in [1, 2, 3] {
        let subnet = c.subnet(n);
        let (_, lease_id, value) = leases.iter().find(|(s, _, _)| *s == subnet).unwrap();
        assert_ne!(lease_id, "0", "weftd's lease has no etcd lease (TTL)");
        let want = if vxlan {
            json!({"PublicIP": c.node_ip(n), "PublicIPv6": null, "BackendType": "vxlan",
                   "BackendData": {"VNI": 1, "VtepMAC": c.vtep_mac(n)}})
        } else {
            json!({"PublicIP": c.node_ip(n), "PublicIPv6": null, "BackendType": "host-gw"})
        };
        assert_eq!(*value, want);
        let env = std::fs::read_to_string(c.subnet_file(n)).unwrap();
        let gw = subnet.replace(".0/24", ".1/24");
        assert_eq!(
            env,
            format!("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={gw}\nFLANNEL_MTU={mtu}\nFLANNEL_IPMASQ=true\n")
        );
    }

    // A hand-written lease appearing and vanishing while the nodes run.
    let lease78 = flannel_lease(backend, "198.51.100.78", "02:42:c6:33:64:4e");
    c.sh(&format!(
        r#"cluster_etcd_put "$WC_ETCD_PREFIX/subnets/10.244.78.0-24" '{lease78}'"#
    ));
    for n in [1, 2, 3] {
        assert_has_peer(&c, n, "10.244.78.0/24", "198.51.100.78", secs(10));
    }
    c.sh(r#"cluster_etcd_del "$WC_ETCD_PREFIX/subnets/10.244.78.0-24""#);
    for n in [1, 2, 3] {
        assert_lacks_peer(&c, n, "10.244.78.0/24", "198.51.100.78", secs(10));
        assert!(c.has_peer(n, "10.244.77.0/24", "198.51.100.77"));
    }
}

#[test]
#[ignore = "needs root"]
fn flannel_plugin_del_removes_veth_ip_and_stored_config() {
    if !require_root() {
        return;
    }
    let c = cluster_with("vxlan", 1, &["a", "b"], FAST);
    let node = c.node_ns(1);
    let ip = c.pod_ip(1, "a");
    let cid = c.sh("cluster_pod_cid 1 a").trim().to_string();
    let stored = c.node_dir(1).join("flannel").join(&cid);
    let reserved = c.node_dir(1).join("ipam").join("cbr0").join(&ip);
    let veths = || {
        c.ns_sh(&node, "ip -o link show type veth master cni0 | wc -l")
            .trim()
            .parse::<u32>()
            .unwrap()
    };
    assert_eq!(veths(), 2);
    assert!(
        reserved.exists(),
        "no host-local reservation {}",
        reserved.display()
    );
    // The stored delegate config is flannel's bridge + host-local config.
    let delegate: Value = serde_json::from_str(&std::fs::read_to_string(&stored).unwrap()).unwrap();
    assert_eq!(delegate["type"], "bridge");
    assert_eq!(delegate["name"], "cbr0");
    assert_eq!(delegate["ipMasq"], false);
    assert_eq!(delegate["mtu"], 1450);
    assert_eq!(delegate["hairpinMode"], true);
    assert_eq!(delegate["isDefaultGateway"], true);
    assert_eq!(delegate["ipam"]["type"], "host-local");
    assert_eq!(
        delegate["ipam"]["ranges"],
        json!([[{"subnet": c.subnet(1)}]])
    );
    assert_eq!(
        delegate["ipam"]["routes"],
        json!([{"dst": "10.244.0.0/16"}])
    );
    assert_eq!(
        delegate["ipam"]["dataDir"],
        c.node_dir(1).join("ipam").to_str().unwrap()
    );

    c.sh("cluster_cni 1 DEL a >/dev/null");
    assert!(!stored.exists(), "stored delegate config survives DEL");
    assert!(!reserved.exists(), "IP {ip} still reserved after DEL");
    let pod_links = c.ns_sh(&c.pod_ns(1, "a"), "ip -o link show");
    assert!(
        !pod_links.contains("eth0"),
        "pod still has eth0: {pod_links}"
    );
    // The host end goes too (bridge deletes the pair in the background).
    assert!(
        c.wait_for(secs(5), || veths() == 1),
        "host veth survives DEL"
    );
    // DEL again is a no-op success (stored config gone).
    c.sh("cluster_cni 1 DEL a >/dev/null");
    // The other pod is untouched and still reachable through cni0.
    let ip_b = c.pod_ip(1, "b");
    assert!(c.node_dir(1).join("ipam/cbr0").join(&ip_b).exists());
    c.ns_sh(&node, &format!("ping -n -c1 -W2 {ip_b} >/dev/null"));
    // Removing the pod netns and adding another pod works as usual
    // (host-local hands out addresses round-robin, like the reference).
    c.sh("cluster_pod_del 1 a");
    let ip_c = c.pod_add(1, "c");
    assert_ne!(ip_c, ip_b);
    assert!(c.node_dir(1).join("ipam/cbr0").join(&ip_c).exists());
}

#[test]
#[ignore = "needs root"]
fn flannel_plugin_status_waits_for_subnet_env() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(FAST);
    // A node whose weftd has no config yet: it waits, no subnet.env.
    c.sh("cluster_node_create 1 && cluster_weftd_start 1");
    let status = r#"WC_CNI_CONF=$(jq -c '.cniVersion="1.1.0"' "$(cluster_node_dir 1)/cni.conf") cluster_cni 1 STATUS"#;
    c.wait_for_log(1, "network config not found in etcd; waiting", secs(20));
    assert!(!c.subnet_file(1).exists());
    let out = c.try_sh(status);
    assert!(!out.status.success(), "STATUS succeeded without subnet.env");
    let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "STATUS output not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        c.weftd_running(1),
        "weftd must wait for the config\n{}",
        c.log_tails()
    );

    c.write_config(None);
    c.sh("cluster_node_wait_ready 1");
    let out = c.try_sh(status);
    assert!(
        out.status.success(),
        "STATUS failed with subnet.env present: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the node is usable: a pod gets an address in the node's subnet.
    let ip = c.pod_add(1, "a");
    let prefix = c.subnet(1).replace(".0/24", ".");
    assert!(ip.starts_with(&prefix), "{ip} not in {}", c.subnet(1));
}

#[test]
#[ignore = "needs root"]
fn weftd_takes_flanneld_environment_fallbacks_and_flags_win_over_them() {
    if !require_root() {
        return;
    }
    // No --ip-masq among the flags; the library always passes --subnet-file.
    let c = Cluster::new("--reconcile-interval=1");
    c.write_config(None);
    c.node_add(1);
    let env_subnet_file = c.node_dir(2).join("from-env.env");
    // weftd inherits the library shell's environment.
    c.sh(&format!(
        "export FLANNELD_IP_MASQ=true FLANNELD_SUBNET_FILE={} && cluster_node_add 2",
        shell_quote(env_subnet_file.to_str().unwrap())
    ));
    let masq_rules = |n: u32| {
        c.ns_sh(&c.node_ns(n), "nft list ruleset")
            .matches("masquerade")
            .count()
    };

    // FLANNELD_IP_MASQ=true stands in for --ip-masq ...
    let env2 = std::fs::read_to_string(c.subnet_file(2)).unwrap();
    assert!(env2.contains("FLANNEL_IPMASQ=true\n"), "{env2}");
    assert!(
        c.wait_for(secs(10), || masq_rules(2) > 0),
        "FLANNELD_IP_MASQ=true installed no masquerade rule"
    );
    // ... while --subnet-file, given on the command line, wins over
    // FLANNELD_SUBNET_FILE, as in flanneld.
    assert!(
        !env_subnet_file.exists(),
        "FLANNELD_SUBNET_FILE overrode --subnet-file"
    );
    // The node without the variables: no masquerading.
    let env1 = std::fs::read_to_string(c.subnet_file(1)).unwrap();
    assert!(env1.contains("FLANNEL_IPMASQ=false\n"), "{env1}");
    assert_eq!(
        masq_rules(1),
        0,
        "{}",
        c.ns_sh(&c.node_ns(1), "nft list ruleset")
    );
    // Both nodes work together.
    c.pod_add(1, "a");
    c.pod_add(2, "a");
    c.wait_converged();
    assert_pings(&c, 1, "a", 2, "a");
}

/// Runs each scenario once per backend: `vxlan::<scenario>`,
/// `host_gw::<scenario>` and `direct_routing::<scenario>` (all nodes on one
/// segment, so DirectRouting routes every peer directly).
macro_rules! for_each_backend {
    ($($scenario:ident),* $(,)?) => {
        mod vxlan {
            $(#[test] #[ignore = "needs root"] fn $scenario() { super::$scenario("vxlan") })*
        }
        mod host_gw {
            $(#[test] #[ignore = "needs root"] fn $scenario() { super::$scenario("host-gw") })*
        }
        mod direct_routing {
            $(#[test] #[ignore = "needs root"] fn $scenario() { super::$scenario("directrouting") })*
        }
    };
}

for_each_backend!(
    pods_on_different_nodes_reach_each_other_both_ways,
    a_node_joining_later_is_learnt_by_the_others,
    a_node_leaving_with_its_lease_is_forgotten_by_the_others,
    weftd_restarts_keep_the_subnet_and_lose_no_packet,
    entries_deleted_by_hand_are_repaired,
    etcd_outage_keeps_traffic_and_weftd_catches_up_afterwards,
    flannel_format_config_and_hand_written_leases_are_honoured,
);

fn route_of(c: &Cluster, n: u32, subnet: &str) -> String {
    c.ns_sh(&c.node_ns(n), &format!("ip route show {subnet}"))
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn direct_routing_across_a_router() {
    if !require_root() {
        return;
    }
    // n1, n2 on 198.51.100.0/24; n101, n102 on 203.0.113.0/24 behind the router.
    let c = Cluster::with_backend(FAST, "directrouting");
    c.write_config(None);
    for n in [1, 2, 101, 102] {
        c.node_add(n);
        c.pod_add(n, "a");
    }
    c.wait_converged();
    let direct = |on: u32, to: u32| {
        route_of(&c, on, &c.subnet(to))
            == format!("{} via {} dev eth0", c.subnet(to), c.node_ip(to))
    };
    // Same segment: a plain route; across the router: VXLAN (checked by
    // has_peer, which wants the form `ip route get` implies).
    assert!(direct(1, 2) && direct(2, 1) && direct(101, 102) && direct(102, 101));
    for (a, b) in [(1, 101), (101, 1), (2, 102), (102, 2)] {
        assert!(
            !direct(a, b),
            "n{a} -> n{b}: {}",
            route_of(&c, a, &c.subnet(b))
        );
        assert!(c.has_peer(a, &c.subnet(b), &c.node_ip(b)));
    }
    for (a, b) in [(1, 2), (1, 101), (1, 102), (101, 2), (102, 101)] {
        assert_pings(&c, a, "a", b, "a");
    }
    // The underlay changes: n1 reaches n101 directly (an on-link route to
    // 203.0.113.0/24 on n1's eth0 and the router proxying ARP for it is
    // not needed: the check is on the entries' form). n101's entries on n1
    // move to the direct form, with no VXLAN entry left, and back when the
    // route goes.
    let ns1 = c.node_ns(1);
    let (s101, ip101) = (c.subnet(101), c.node_ip(101));
    c.ns_sh(&ns1, "ip route replace 203.0.113.0/24 dev eth0");
    assert!(
        c.wait_for(secs(3), || direct(1, 101) && c.has_peer(1, &s101, &ip101)),
        "n1 kept n101's VXLAN form after the underlay route changed:\n{}",
        c.sh("cluster_node_show 1")
    );
    c.ns_sh(
        &ns1,
        "ip route replace 203.0.113.0/24 via 198.51.100.254 dev eth0",
    );
    assert!(
        c.wait_for(secs(3), || !direct(1, 101) && c.has_peer(1, &s101, &ip101)),
        "n1 did not return n101 to the VXLAN form:\n{}",
        c.sh("cluster_node_show 1")
    );
    assert_pings(&c, 1, "a", 101, "a");
}

#[test]
#[ignore = "needs root"]
fn host_gw_leaves_a_peer_behind_a_router_unrouted_and_says_so() {
    if !require_root() {
        return;
    }
    let c = Cluster::with_backend(FAST, "host-gw");
    c.write_config(None);
    for n in [1, 2] {
        c.node_add(n);
    }
    // n101 is never ready (n1 and n2 are not on-link for it): wait for its subnet.
    c.sh("cluster_node_create 101 && cluster_weftd_start 101");
    assert!(
        c.wait_for(secs(20), || c.subnet_file(101).exists()),
        "{}",
        c.log_tails()
    );
    let s101 = c.subnet(101);
    assert_has_peer(&c, 1, &c.subnet(2), &c.node_ip(2), secs(10));
    // n101 is behind the router: no route (a route via the router would
    // black-hole pod traffic), a metric, and readiness says why.
    assert!(
        c.wait_for(secs(10), || c.metric(1, "weftd_peers_unprogrammable")
            == Some(1)),
        "{}",
        c.log_tails()
    );
    assert_eq!(route_of(&c, 1, &s101), "");
    let (code, body) = c.readyz(1);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not on-link"), "{body}");
    let log = c.weftd_log(1);
    assert_eq!(log.matches("not on-link").count(), 1, "logged once:\n{log}");
    // The lease goes: so does the complaint.
    c.node_remove(101);
    assert!(c.wait_for(secs(10), || c.readyz(1).0 == 200));
    assert_eq!(c.metric(1, "weftd_peers_unprogrammable"), Some(0));
}

#[test]
#[ignore = "needs root"]
fn host_gw_replaces_a_conflicting_route() {
    if !require_root() {
        return;
    }
    let c = cluster_with("host-gw", 2, &["a"], "--reconcile-interval=30 --ip-masq");
    let (s2, ip2) = (c.subnet(2), c.node_ip(2));
    let ns1 = c.node_ns(1);
    // Someone points n2's subnet elsewhere: weftd puts its route back.
    c.ns_sh(
        &ns1,
        &format!("ip route replace {s2} via 198.51.100.99 dev eth0"),
    );
    assert_has_peer(&c, 1, &s2, &ip2, secs(3));
    c.ns_sh(&ns1, &format!("ip route replace {s2} dev eth0"));
    assert_has_peer(&c, 1, &s2, &ip2, secs(3));
    assert_pings(&c, 1, "a", 2, "a");
}

#[test]
#[ignore = "needs root"]
fn a_node_restarted_with_another_backend_keeps_nothing_of_the_old_one() {
    if !require_root() {
        return;
    }
    let c = cluster_with("vxlan", 2, &["a"], FAST);
    let ns1 = c.node_ns(1);
    assert!(c.ns_sh(&ns1, "ip -o link show").contains("flannel.1"));
    // Every node restarts with host-gw.
    c.write_config(Some(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    ));
    for n in [1, 2] {
        c.weftd_restart(n);
    }
    let (s2, ip2) = (c.subnet(2), c.node_ip(2));
    assert!(
        c.wait_for(secs(10), || route_of(&c, 1, &s2)
            == format!("{s2} via {ip2} dev eth0")),
        "{}",
        c.sh("cluster_node_show 1")
    );
    assert!(
        !c.ns_sh(&ns1, "ip -o link show").contains("flannel.1"),
        "the vxlan device survived the switch to host-gw"
    );
    assert_pings(&c, 1, "a", 2, "a");
    // And back to vxlan: the host-gw route becomes the onlink VXLAN route.
    c.write_config(None);
    for n in [1, 2] {
        c.weftd_restart(n);
    }
    assert!(
        c.wait_for(secs(10), || route_of(&c, 1, &s2).contains("dev flannel.1")),
        "{}",
        c.sh("cluster_node_show 1")
    );
    assert!(!route_of(&c, 1, &s2).contains("eth0"));
    assert_pings(&c, 1, "a", 2, "a");
}
