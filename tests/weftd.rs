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
#[ignore = "needs root"]
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
        c.wait_for(secs(10), || c.lacks_peer(
            1,
            "198.51.100.0/26",
            "198.51.100.66"
        )),
        "stale underlay route not removed:\n{}\n{}",
        c.sh("cluster_node_show 1"),
        c.weftd_log(1)
    );
    note(&format!(
        "stale 198.51.100.0/26 entries removed in {:?}",
        t.elapsed()
    ));
    // A good lease added afterwards is programmed everywhere: etcd is
    // reachable and the data plane keeps going.
    c.sh("cluster_lease_put 10.244.202.0/24 198.51.100.70 02:00:00:00:00:70");
    for n in [1, 2] {
        assert!(
            c.wait_for(secs(10), || c.has_peer(
                n,
                "10.244.202.0/24",
                "198.51.100.70"
            )),
            "n{n} did not program the good lease:\n{}",
            c.sh(&format!("cluster_node_show {n}"))
        );
    }
    // Several reconcile passes later: none of the bad leases is in the
    // kernel, every node is ready, each bad lease was logged exactly once.
    for n in [1, 2] {
        c.wait_reconcile_passes(n, 3);
    }
    for n in [1, 2] {
        let routes = overlay_routes(&c, n);
        for bad_route in [
            "198.51.100.0/26",
            "default",
            "10.244.200.0/24",
            "10.244.201.0/24",
        ] {
            assert!(
                !routes.contains(bad_route),
                "n{n} has {bad_route}:\n{routes}"
            );
        }
        let neigh = c.ns_sh(&c.node_ns(n), "ip neigh show dev flannel.1");
        assert!(!neigh.contains("198.51.100.0 "), "{neigh}");
        let fdb = c.ns_sh(&c.node_ns(n), "bridge fdb show dev flannel.1");
        for (_, ip, mac) in bad {
            assert!(
                !fdb.contains(mac) && !fdb.contains(&format!("dst {ip} ")),
                "{fdb}"
            );
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

/// A fake `nft` in front of the real one: with `<dir>/broken` present only
/// `nft list tables` works (so weftd picks nftables), everything else fails.
fn broken_nft(dir: &TempDir) -> String {
    let nft = dir.join("nft");
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nft");
    std::fs::write(
        &nft,
        format!(
            "#!/bin/sh\nif [ -e '{d}/broken' ] && [ \"$*\" != 'list tables' ]; then echo 'nft: broken for the test' >&2; exit 1; fi\nexec {real} \"$@\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("broken"), "").unwrap();
    dir.path().display().to_string()
}

#[test]
#[ignore = "needs root"]
fn subnet_env_is_written_only_once_masquerade_rules_are_in_and_readyz_follows_them() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(
        "--reconcile-interval=1 --ip-masq --masq-backend=nftables --iptables-resync=1",
    );
    c.write_config(None);
    let fake = TempDir::new();
    let bin = broken_nft(&fake);
    c.sh("cluster_node_create 1");
    c.sh(&format!(
        "export PATH='{bin}':\"$PATH\"; cluster_weftd_start 1"
    ));
    // The rules cannot go in: no subnet.env (it would say FLANNEL_IPMASQ=true
    // and the CNI plugin would not masquerade either), not ready; checked
    // once weftd has tried and failed to install them.
    c.wait_for_log(1, "installing masquerade rules failed", secs(20));
    assert!(c.weftd_running(1), "{}", c.weftd_log(1));
    assert!(
        !c.subnet_file(1).exists(),
        "subnet.env written without masquerade rules"
    );
    let (code, body) = c.readyz(1);
    assert_eq!((code, body.trim()), (503, "subnet.env not written yet"));
    let log = c.weftd_log(1);
    assert!(log.contains("installing masquerade rules"), "{log}");
    // nft works again: rules, then subnet.env, then ready.
    std::fs::remove_file(fake.join("broken")).unwrap();
    c.sh("cluster_node_wait_ready 1 15");
    let ruleset = c.ns_sh(&c.node_ns(1), "nft list ruleset");
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    let env = std::fs::read_to_string(c.subnet_file(1)).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true\n"), "{env}");
    // The rules get lost and cannot be restored: /readyz says so, and
    // recovers once they are back.
    std::fs::write(fake.join("broken"), "").unwrap();
    c.ns_sh(&c.node_ns(1), "nft list tables | grep -E 'weft|flannel' | while read -r _ fam t; do nft delete table $fam $t; done");
    assert!(
        c.wait_for(secs(10), || c.readyz(1).0 == 503),
        "still ready without masquerade rules"
    );
    assert_eq!(c.readyz(1).1.trim(), "masquerade rules not installed");
    std::fs::remove_file(fake.join("broken")).unwrap();
    assert!(
        c.wait_for(secs(10), || c.readyz(1).0 == 200),
        "{}",
        c.weftd_log(1)
    );
    assert!(c
        .ns_sh(&c.node_ns(1), "nft list ruleset")
        .contains("masquerade"));
}

#[test]
#[ignore = "needs root"]
fn ip_masq_without_a_working_firewall_tool_fails_at_start() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--ip-masq");
    c.write_config(None);
    c.sh("cluster_node_create 1");
    let empty = TempDir::new();
    let out = c.try_sh(&format!(
        "ip netns exec \"$(cluster_node_ns 1)\" env PATH='{}' \"$(_wc_bin)/weftd\" --etcd-endpoints=\"$WC_ETCD_EP\" \
         --iface=eth0 --subnet-file=\"$(cluster_node_subnet_file 1)\" --ip-masq",
        empty.path().display()
    ));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("neither nftables nor iptables works"), "{err}");
    assert!(!c.subnet_file(1).exists());
}

#[test]
#[ignore = "needs root"]
fn acquire_failures_are_not_counted_as_etcd_reconnects() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--reconcile-interval=1");
    // Exactly one subnet, and someone else holds it: "out of subnets".
    c.write_config(Some(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.5.0","SubnetMax":"10.244.5.0","Backend":{"Type":"vxlan"}}"#,
    ));
    c.sh("cluster_lease_put 10.244.5.0/24 198.51.100.99 02:00:00:00:00:99");
    c.sh("cluster_node_create 1 && cluster_weftd_start 1");
    assert!(
        c.wait_for(secs(10), || c
            .weftd_log(1)
            .matches("out of subnets")
            .count()
            >= 3),
        "{}",
        c.weftd_log(1)
    );
    assert_eq!(c.metric(1, "weftd_etcd_reconnects_total"), Some(0));
    assert_eq!(c.metric(1, "weftd_lease_acquisitions_total"), Some(0));
    assert_eq!(c.readyz(1).0, 503);
    // The subnet frees up: the node takes it.
    c.sh("cluster_lease_del 10.244.5.0/24");
    c.sh("cluster_node_wait_ready 1 20");
    assert_eq!(c.subnet(1), "10.244.5.0/24");
    assert_eq!(c.metric(1, "weftd_etcd_reconnects_total"), Some(0));
}

#[test]
#[ignore = "needs root"]
fn masquerade_rules_replace_flannels_instead_of_adding_a_second_set() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--reconcile-interval=1 --ip-masq --iptables-resync=1");
    c.write_config(None);
    // n1: nftables, with flanneld's table (for an old subnet) and an
    // earlier weft's table present. n2: iptables, with flanneld's chain.
    c.sh("cluster_node_create 1 && cluster_node_create 2 --masq-backend=iptables");
    c.ns_sh(
        &c.node_ns(1),
        "nft add table ip flannel-ipv4 && \
         nft add chain ip flannel-ipv4 postrtg '{ type nat hook postrouting priority srcnat; }' && \
         nft add rule ip flannel-ipv4 postrtg ip saddr 10.244.99.0/24 ip daddr 10.244.0.0/16 return && \
         nft add table ip weft-ipv4 && \
         nft add chain ip weft-ipv4 postrtg '{ type nat hook postrouting priority srcnat; }'",
    );
    c.ns_sh(
        &c.node_ns(2),
        "iptables -w -t nat -N FLANNEL-POSTRTG && \
         iptables -w -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG && \
         iptables -w -t nat -A FLANNEL-POSTRTG -s 10.244.99.0/24 -d 10.244.0.0/16 -m comment --comment 'flanneld masq' -j RETURN",
    );
    c.sh("cluster_weftd_start 1 && cluster_weftd_start 2 && cluster_node_wait_ready 1 && cluster_node_wait_ready 2");
    let (s1, s2) = (c.subnet(1), c.subnet(2));

    let tables = c.ns_sh(&c.node_ns(1), "nft list tables");
    assert_eq!(
        tables.matches("table ip flannel-ipv4").count(),
        1,
        "{tables}"
    );
    assert!(!tables.contains("weft-ipv4"), "{tables}");
    let t = c.ns_sh(&c.node_ns(1), "nft list table ip flannel-ipv4");
    assert!(!t.contains("10.244.99.0"), "{t}");
    assert!(
        t.contains(&format!("ip saddr {s1} ip daddr 10.244.0.0/16 return")),
        "{t}"
    );
    assert!(
        t.contains(&format!("ip saddr != {s1} ip daddr 10.244.0.0/16 return")),
        "{t}"
    );
    assert_eq!(t.matches("masquerade").count(), 2, "{t}");

    let post = c.ns_sh(&c.node_ns(2), "iptables -w -t nat -S POSTROUTING");
    assert_eq!(post.matches("-j FLANNEL-POSTRTG").count(), 1, "{post}");
    let chain = c.ns_sh(&c.node_ns(2), "iptables -w -t nat -S FLANNEL-POSTRTG");
    assert!(!chain.contains("10.244.99.0"), "{chain}");
    assert_eq!(chain.matches("flanneld masq").count(), 6, "{chain}");
    assert!(
        chain.contains(&format!("-s {s2} -d 10.244.0.0/16")),
        "{chain}"
    );
    // Restarting does not add a second jump either.
    c.weftd_restart(2);
    let post = c.ns_sh(&c.node_ns(2), "iptables -w -t nat -S POSTROUTING");
    assert_eq!(post.matches("-j FLANNEL-POSTRTG").count(), 1, "{post}");
}

#[test]
#[ignore = "needs root"]
fn a_deleted_vxlan_device_is_recreated_at_once_not_at_the_next_pass() {
    if !require_root() {
        return;
    }
    // A long reconcile interval: only the link notification can explain a
    // prompt recreation.
    let c = two_nodes("--reconcile-interval=60");
    let (s2, ip2) = (c.subnet(2), c.node_ip(2));
    let before = c.metric(1, "weftd_device_recreations_total").unwrap();
    for round in 0..2 {
        let t = Instant::now();
        c.ns_sh(&c.node_ns(1), "ip link del flannel.1");
        assert!(
            c.wait_for(secs(5), || c.has_peer(1, &s2, &ip2)),
            "round {round}: flannel.1 and n2's entries not back within 5 s:\n{}\n{}",
            c.sh("cluster_node_show 1"),
            c.weftd_log(1)
        );
        note(&format!(
            "round {round}: flannel.1 recreated and replayed in {:?}",
            t.elapsed()
        ));
        assert!(c.wait_for(secs(5), || c.readyz(1).0 == 200));
    }
    assert_eq!(
        c.metric(1, "weftd_device_recreations_total"),
        Some(before + 2)
    );
    // Set down by hand: back up at once too.
    c.ns_sh(&c.node_ns(1), "ip link set flannel.1 down");
    assert!(c.wait_for(secs(5), || c
        .ns_sh(&c.node_ns(1), "ip -o link show flannel.1")
        .contains(",UP")));
    let gw1 = c.subnet(1).split('/').next().unwrap().to_string();
    let gw2 = s2.split('/').next().unwrap().to_string();
    c.ns_sh(
        &c.node_ns(1),
        &format!("ping -n -c1 -W2 -I {gw1} {gw2} >/dev/null"),
    );
}
