//! weftd end-to-end tests on the simulated cluster (`scripts/lib/cluster.sh`):
//! what weftd does with hostile or broken leases, readiness, masquerade
//! ordering and device loss, checked against the real kernel and etcd.
//!
//! Needs root and etcd; each test has its own cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use weft_tests::*;

const FAST: &str = "--reconcile-interval=1 --ip-masq";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn two_nodes(weftd_args: &str) -> Cluster {
    let c = Cluster::new(weftd_args);
    c.write_config(None);
    c.node_add(1);
    c.node_add(2);
    c.wait_converged();
    c
}

/// Routes on flannel.1 of node `n`, one per line.
fn overlay_routes(c: &Cluster, n: u32) -> String {
    c.ns_sh(&c.node_ns(n), "ip -4 route show dev flannel.1")
}

#[test]
fn leases_outside_the_network_are_never_programmed_and_old_entries_are_removed() {
    if !require_root() {
        return;
    }
    let c = two_nodes(FAST);
    let ns1 = c.node_ns(1);
    // What an older weftd programmed for a hand-written lease 198.51.100.0-26:
    // a route that sends the underlay (etcd is 198.51.100.1) into flannel.1.
    c.ns_sh(
        &ns1,
        "ip neigh replace 198.51.100.0 lladdr 02:00:00:00:00:66 dev flannel.1 nud permanent && \
         bridge fdb replace 02:00:00:00:00:66 dev flannel.1 dst 198.51.100.66 self permanent && \
         ip route replace 198.51.100.0/26 via 198.51.100.0 dev flannel.1 onlink",
    );
    let bad = [
        ("198.51.100.0/26", "198.51.100.66", "02:00:00:00:00:66"),
        ("0.0.0.0/0", "198.51.100.67", "02:00:00:00:00:67"),
        ("10.244.200.0/24", "0.0.0.0", "02:00:00:00:00:68"),
        ("10.244.201.0/24", "198.51.100.69", "01:00:5e:00:00:69"),
    ];
    for (subnet, ip, mac) in bad {
        c.sh(&format!("cluster_lease_put {subnet} {ip} {mac}"));
    }
    // The stale entries go (they are ours by their signature, not their address).
    let t = Instant::now();
    assert!(
        c.wait_for(secs(10), || c.lacks_peer(1, "198.51.100.0/26", "198.51.100.66")),
        "stale underlay route not removed:\n{}\n{}",
        c.sh("cluster_node_show 1"),
        c.weftd_log(1)
    );
    note(&format!("stale 198.51.100.0/26 entries removed in {:?}", t.elapsed()));
    // A good lease added afterwards is programmed everywhere: etcd is
    // reachable and the data plane keeps going.
    c.sh("cluster_lease_put 10.244.202.0/24 198.51.100.70 02:00:00:00:00:70");
    for n in [1, 2] {
        assert!(
            c.wait_for(secs(10), || c.has_peer(n, "10.244.202.0/24", "198.51.100.70")),
            "n{n} did not program the good lease:\n{}",
            c.sh(&format!("cluster_node_show {n}"))
        );
    }
    // Several reconcile passes later: none of the bad leases is in the
    // kernel, every node is ready, each bad lease was logged exactly once.
    std::thread::sleep(secs(3));
    for n in [1, 2] {
        let routes = overlay_routes(&c, n);
        for bad_route in ["198.51.100.0/26", "default", "10.244.200.0/24", "10.244.201.0/24"] {
            assert!(!routes.contains(bad_route), "n{n} has {bad_route}:\n{routes}");
        }
        let neigh = c.ns_sh(&c.node_ns(n), "ip neigh show dev flannel.1");
        assert!(!neigh.contains("198.51.100.0 "), "{neigh}");
        let fdb = c.ns_sh(&c.node_ns(n), "bridge fdb show dev flannel.1");
        for (_, ip, mac) in bad {
            assert!(!fdb.contains(mac) && !fdb.contains(&format!("dst {ip} ")), "{fdb}");
        }
        let (code, body) = c.readyz(n);
        assert_eq!(code, 200, "n{n} /readyz: {body}");
        assert_eq!(c.metric(n, "weftd_leases_rejected"), Some(4));
        let log = c.weftd_log(n);
        for (subnet, _, _) in bad {
            let key = subnet.replace('/', "-");
            let times = log
                .lines()
                .filter(|l| l.contains("ignoring lease") && l.contains(&format!("lease={key} ")))
                .count();
            assert_eq!(times, 1, "n{n}: lease {key} logged {times} times:\n{log}");
        }
        assert!(!log.contains("programming failed"), "n{n}:\n{log}");
    }
    // The bad leases go away: nothing to undo, the good one stays.
    for (subnet, _, _) in bad {
        c.sh(&format!("cluster_lease_del {subnet}"));
    }
    assert!(c.wait_for(secs(5), || c.metric(1, "weftd_leases_rejected") == Some(0)));
    assert!(c.has_peer(1, "10.244.202.0/24", "198.51.100.70"));
    assert!(c.has_peer(1, &c.subnet(2), &c.node_ip(2)));
}
