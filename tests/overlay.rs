//! weftd's overlay end to end on the simulated cluster
//! (`scripts/lib/cluster.sh`): flag and config refusal, subnet.env, the
//! VXLAN device and its per-peer entries, drift repair, reservations, both
//! masquerade backends, restarts, lease loss and renewal, an etcd outage,
//! dual stack, and etcd over mutual TLS. (These were the shell scripts
//! daemon/tests/{netns,dualstack,tls}.sh; every check they made is here.)
//!
//! Needs root and etcd; each test has its own cluster. Waits are conditions
//! with deadlines; a "does not happen" check first waits for weftd's
//! reconcile pass counter to move.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use weft_tests::*;

const PREFIX: &str = Cluster::ETCD_PREFIX;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `10.244.7.0/24` -> `10.244.7.0` (flannel's gateway on flannel.1).
fn net_addr(subnet: &str) -> &str {
    subnet.split('/').next().unwrap()
}

/// The etcd key of a lease subnet (`10.244.7.0/24` -> `.../10.244.7.0-24`).
fn lease_key(subnet: &str) -> String {
    format!("{PREFIX}/subnets/{}", subnet.replace('/', "-"))
}

/// Waits up to `timeout` for `script` to succeed in netns `ns`.
#[track_caller]
fn wait_ns(c: &Cluster, ns: &str, what: &str, timeout: Duration, script: &str) {
    let ok = c.wait_for(timeout, || {
        c.check(&format!(
            "ip netns exec '{ns}' sh -c {}",
            shell_quote(script)
        ))
    });
    assert!(
        ok,
        "timed out waiting until {what} ({script}):\n{}",
        c.log_tails()
    );
}

/// `script` succeeds in netns `ns` now.
#[track_caller]
fn assert_ns(c: &Cluster, ns: &str, what: &str, script: &str) {
    assert!(
        c.check(&format!(
            "ip netns exec '{ns}' sh -c {}",
            shell_quote(script)
        )),
        "{what}: `{script}` failed:\n{}",
        c.log_tails()
    );
}

fn subnet_env(c: &Cluster, n: u32) -> String {
    std::fs::read_to_string(c.subnet_file(n)).unwrap_or_default()
}

/// The variable names of a subnet.env, in order.
fn env_keys(c: &Cluster, n: u32) -> Vec<String> {
    subnet_env(c, n)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect()
}

fn lease_of<'a>(
    leases: &'a [(String, String, serde_json::Value)],
    subnet: &str,
) -> Option<&'a (String, String, serde_json::Value)> {
    leases.iter().find(|(s, _, _)| s == subnet)
}

#[test]
#[ignore = "needs root"]
fn bad_flags_and_bad_configs_are_refused_with_one_clear_line() {
    if !require_root() {
        return;
    }
    let out = std::process::Command::new(plugin_path("weftd"))
        .arg("--subnet-lease-renew-margin=0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one line: {text}");

    let c = Cluster::new("--reconcile-interval=1");
    c.node_create(1);
    for (config, message) in [
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
            r#"Backend.Type "udp" is not supported"#,
        ),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#,
            "IPv6Network is missing",
        ),
    ] {
        c.write_config(Some(config));
        let out = c.weftd_once(1, "", 20);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(
            code != Some(0) && code != Some(124),
            "{config}: exit {code:?}\n{stderr}"
        );
        let last = stderr.trim_end().lines().last().unwrap_or("");
        assert!(last.contains(message), "{config}: last line {last:?}");
        assert!(!c.node_dir(1).join("once.env").exists());
    }
}

/// Two nodes on `{"Network":"10.244.0.0/16","SubnetLen":24,vxlan VNI 1}`,
/// n1 with nftables masquerade.
fn two_nodes() -> Cluster {
    let c = Cluster::new("--reconcile-interval=1 --iptables-resync=1");
    c.write_config(Some(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}"#,
    ));
    c.node_add_with(1, "--ip-masq");
    c.node_add(2);
    c
}

#[test]
#[ignore = "needs root"]
fn two_nodes_write_flannels_subnet_env_and_program_each_other() {
    if !require_root() {
        return;
    }
    let c = two_nodes();
    let (s1, s2) = (c.subnet(1), c.subnet(2));
    assert_ne!(s1, s2);
    assert_eq!(
        env_keys(&c, 1),
        [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ]
    );
    let env1 = subnet_env(&c, 1);
    assert!(env1.lines().any(|l| l == "FLANNEL_MTU=1450"), "{env1}");
    assert!(env1.lines().any(|l| l == "FLANNEL_IPMASQ=true"), "{env1}");
    let mode = std::fs::metadata(c.subnet_file(1))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let ns1 = c.node_ns(1);
    let (g1, g2) = (net_addr(&s1), net_addr(&s2));
    assert!(
        c.wait_for(secs(15), || c.has_peer(1, &s2, &c.node_ip(2))),
        "n1 lacks n2's route, neighbour or FDB entry:\n{}",
        c.sh("cluster_node_show 1")
    );
    let link = c.ns_sh(&ns1, "ip -d link show flannel.1");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(
        link.contains("dstport 8472") && link.contains("nolearning"),
        "{link}"
    );
    let addr = c.ns_sh(&ns1, "ip -4 addr show flannel.1");
    assert!(addr.contains(&format!("inet {g1}/32")), "{addr}");
    wait_ns(
        &c,
        &ns1,
        "n1 pings n2 over the overlay",
        secs(10),
        &format!("ping -c1 -W1 -I {g1} {g2}"),
    );
    assert_eq!(c.readyz(1).0, 200);
    assert_ns(
        &c,
        &ns1,
        "healthz",
        "curl -sf http://127.0.0.1:10001/healthz",
    );
    assert_eq!(c.metric(1, "weftd_leases_known"), Some(1));
    let nft = c.ns_sh(&ns1, "nft list table ip flannel-ipv4");
    assert!(nft.contains("masquerade"), "{nft}");

    // Drift repair: a route, the masquerade chain, the device itself.
    c.ns_sh(&ns1, &format!("ip route del {s2}"));
    wait_ns(
        &c,
        &ns1,
        "the deleted route is restored",
        secs(10),
        &format!("ip route show {s2} | grep -q onlink"),
    );
    c.ns_sh(&ns1, "nft flush chain ip flannel-ipv4 postrtg");
    wait_ns(
        &c,
        &ns1,
        "the flushed masq chain is restored",
        secs(10),
        "nft list chain ip flannel-ipv4 postrtg | grep -q masquerade",
    );
    c.ns_sh(&ns1, "ip link del flannel.1");
    wait_ns(
        &c,
        &ns1,
        "flannel.1 is recreated with its entries",
        secs(15),
        &format!(
            "ip route show {s2} | grep -q onlink && bridge fdb show dev flannel.1 | grep -q {}",
            c.node_ip(2)
        ),
    );
    wait_ns(
        &c,
        &ns1,
        "n1 pings n2 after the recreation",
        secs(10),
        &format!("ping -c1 -W1 -I {g1} {g2}"),
    );
}

#[test]
#[ignore = "needs root"]
fn a_reserved_subnet_iptables_masquerade_restarts_and_lease_loss() {
    if !require_root() {
        return;
    }
    let c = two_nodes();
    let (s1, s2) = (c.subnet(1), c.subnet(2));
    let (ns1, ns2, ns3) = (c.node_ns(1), c.node_ns(2), c.node_ns(3));
    let (g1, g2) = (net_addr(&s1), net_addr(&s2));

    // A third node with a reservation (a lease without etcd TTL) and
    // iptables masquerade.
    let reserved = "10.244.200.0/24";
    c.etcd_put(
        &lease_key(reserved),
        r#"{"PublicIP":"198.51.100.13","PublicIPv6":null}"#,
    );
    c.node_add_with(3, "--ip-masq --masq-backend=iptables");
    assert!(subnet_env(&c, 3)
        .lines()
        .any(|l| l == "FLANNEL_SUBNET=10.244.200.1/24"));
    let leases = c.leases();
    let (_, lease_id, _) = lease_of(&leases, reserved).expect("reservation kept");
    assert_eq!(lease_id, "0", "the reservation has no etcd lease");
    let six_rules = "test $(iptables -w -t nat -S FLANNEL-POSTRTG | grep -c 'flanneld masq') -eq 6";
    wait_ns(
        &c,
        &ns3,
        "flannel's 6 masq rules on n3",
        secs(10),
        six_rules,
    );
    assert_ns(
        &c,
        &ns3,
        "FORWARD accepts",
        "iptables -w -S FLANNEL-FWD | grep -q ACCEPT",
    );
    c.ns_sh(&ns3, "iptables -w -t nat -F FLANNEL-POSTRTG");
    wait_ns(
        &c,
        &ns3,
        "the flushed iptables chain is restored",
        secs(10),
        six_rules,
    );
    wait_ns(
        &c,
        &ns1,
        "n1 learns n3's route",
        secs(15),
        &format!("ip route show {reserved} | grep -q onlink"),
    );
    wait_ns(
        &c,
        &ns1,
        "n1 pings n3",
        secs(10),
        &format!("ping -c1 -W1 -I {g1} 10.244.200.0"),
    );

    // A restart keeps the subnet and does not flush.
    c.weftd_stop(2);
    assert_ns(
        &c,
        &ns2,
        "n2 keeps its routes while down",
        &format!("ip route show {s1} | grep -q onlink"),
    );
    c.weftd_start(2, "");
    assert_eq!(c.subnet(2), s2, "n2's subnet after restart");
    assert_eq!(c.leases().len(), 3, "{:?}", c.leases());
    wait_ns(
        &c,
        &ns2,
        "n2 pings n1 after its restart",
        secs(10),
        &format!("ping -c1 -W1 -I {g2} {g1}"),
    );

    // Its lease deleted, a node re-acquires it and the peers follow.
    c.etcd_del(&lease_key(&s2));
    assert!(
        c.wait_for(secs(15), || c
            .leases()
            .iter()
            .any(|(_, _, v)| v["PublicIP"] == "198.51.100.12")),
        "n2 did not re-acquire a lease:\n{}",
        c.log_tails()
    );
    assert!(c.wait_for(secs(15), || c.has_peer(1, &c.subnet(2), &c.node_ip(2))));

    // A node leaves: its lease vanishes, the peers drop all three entries.
    c.weftd_stop(3);
    c.etcd_del(&lease_key(reserved));
    assert!(
        c.wait_for(secs(10), || c.lacks_peer(1, reserved, "198.51.100.13")),
        "n1 kept n3's entries:\n{}",
        c.sh("cluster_node_show 1")
    );
}

#[test]
#[ignore = "needs root"]
fn short_leases_are_renewed_and_an_etcd_outage_leaves_the_data_plane_alone() {
    if !require_root() {
        return;
    }
    let c = two_nodes();
    let (s1, s2) = (c.subnet(1), c.subnet(2));
    let ns1 = c.node_ns(1);

    // A 10 s TTL: renewals (CAS onto a fresh etcd lease) keep the subnet.
    c.weftd_stop(1);
    c.weftd_start(1, "--ip-masq --subnet-lease-ttl=10");
    let renewed = |c: &Cluster| {
        let log = c.weftd_log(1);
        let last_start = log.rfind("weftd start").unwrap_or(0);
        log[last_start..].matches("renewed lease").count()
    };
    assert!(
        c.wait_for(secs(30), || renewed(&c) >= 2),
        "n1 renewed its 10 s lease {} times:\n{}",
        renewed(&c),
        c.weftd_log(1)
    );
    assert!(
        lease_of(&c.leases(), &s1).is_some(),
        "n1 lost {s1}: {:?}",
        c.leases()
    );

    // etcd goes away: once weftd has seen it gone and reconciled since,
    // its entries are still there.
    let reconnects = c.metric(1, "weftd_etcd_reconnects_total").unwrap_or(0);
    c.etcd_stop();
    c.wait_reconcile_passes(1, 3);
    assert_ns(
        &c,
        &ns1,
        "n1 keeps n2's route while etcd is down",
        &format!("ip route show {s2} | grep -q onlink"),
    );
    c.etcd_start();
    c.etcd_put(
        &lease_key("10.244.201.0/24"),
        r#"{"PublicIP":"198.51.100.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}"#,
    );
    wait_ns(
        &c,
        &ns1,
        "n1 programs a lease written after the outage",
        secs(20),
        "ip route show 10.244.201.0/24 | grep -q onlink",
    );
    assert!(
        c.metric(1, "weftd_etcd_reconnects_total").unwrap_or(0) > reconnects,
        "reconnect not counted"
    );
    assert_ns(
        &c,
        &ns1,
        "n1's FDB entry for the new peer",
        "bridge fdb show dev flannel.1 | grep -q '02:00:00:00:00:99 dst 198.51.100.99 self permanent'",
    );
}

/// `FLANNEL_IPV6_SUBNET=fd00:10:244:5::1/64` -> `fd00:10:244:5::/64`.
fn subnet6(c: &Cluster, n: u32) -> String {
    let env = subnet_env(c, n);
    let gw = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_IPV6_SUBNET="))
        .unwrap_or_else(|| panic!("n{n} has no FLANNEL_IPV6_SUBNET:\n{env}"));
    let (addr, len) = gw.split_once('/').unwrap();
    format!("{}/{len}", addr.strip_suffix('1').unwrap())
}

/// A dual-stack node: underlay 198.51.100.(10+n) and 2001:db8:100::(10+n).
fn dual_node(c: &Cluster, n: u32, weftd_args: &str) {
    c.node_create(n);
    c.ns_sh(
        &c.node_ns(n),
        &format!(
            "ip -6 addr add 2001:db8:100::{}/64 dev eth0 nodad && sysctl -qw net.ipv6.conf.all.forwarding=1",
            10 + n
        ),
    );
    c.weftd_start(n, weftd_args);
}

/// A pod on node `n` wired by hand: `<v4 subnet>.10/32` and `<v6 subnet>a/128`,
/// default routes via the node (proxy ARP, fe80::1).
fn dual_pod(c: &Cluster, n: u32) -> Netns {
    let pod = Netns::with_tag("p");
    let (s4, s6) = (c.subnet(n), subnet6(c, n));
    let ip4 = format!("{}.10", net_addr(&s4).rsplit_once('.').unwrap().0);
    let ip6 = format!("{}a", net_addr(&s6));
    let hv = format!("vp{n}");
    c.ns_sh(
        &c.node_ns(n),
        &format!(
            "ip link add {hv} type veth peer name eth0 netns {pod} && ip link set {hv} up && \
             ip -6 addr add fe80::1/64 dev {hv} nodad && ip addr add 169.254.1.1/32 dev {hv} && \
             ip route add {ip4}/32 dev {hv} && ip -6 route add {ip6}/128 dev {hv} && \
             sysctl -qw net.ipv4.conf.{hv}.proxy_arp=1",
            pod = pod.name
        ),
    );
    pod.sh(&format!(
        "ip link set lo up && ip link set eth0 up && ip addr add {ip4}/32 dev eth0 && \
         ip -6 addr add {ip6}/128 dev eth0 nodad && ip route add 169.254.1.1/32 dev eth0 && \
         ip route add default via 169.254.1.1 dev eth0 && ip -6 route add default via fe80::1 dev eth0"
    ));
    pod
}

#[test]
#[ignore = "needs root"]
fn dual_stack_nodes_program_both_families_and_pods_reach_each_other() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--reconcile-interval=1");
    c.write_config(Some(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    ));
    dual_node(&c, 1, "--ip-masq");
    dual_node(&c, 2, "");
    dual_node(&c, 3, "--public-ipv6=2001:db8:100::13");

    assert_eq!(
        env_keys(&c, 1),
        [
            "FLANNEL_NETWORK",
            "FLANNEL_SUBNET",
            "FLANNEL_IPV6_NETWORK",
            "FLANNEL_IPV6_SUBNET",
            "FLANNEL_MTU",
            "FLANNEL_IPMASQ"
        ]
    );
    let env1 = subnet_env(&c, 1);
    assert!(env1
        .lines()
        .any(|l| l == "FLANNEL_IPV6_NETWORK=fd00:10:244::/56"));
    // The smaller of flannel.1's 1450 and flannel-v6.1's 1430.
    assert!(env1.lines().any(|l| l == "FLANNEL_MTU=1430"), "{env1}");
    let (s1, s2, s3) = (c.subnet(1), c.subnet(2), c.subnet(3));
    let (t1, t2, t3) = (subnet6(&c, 1), subnet6(&c, 2), subnet6(&c, 3));
    for t in [&t1, &t2, &t3] {
        let id = t
            .strip_prefix("fd00:10:244:")
            .and_then(|r| r.strip_suffix("::/64"))
            .unwrap_or_else(|| panic!("not a /64 of the network: {t}"));
        assert!(id.chars().all(|ch| ch.is_ascii_hexdigit()), "{t}");
    }
    assert!(t1 != t2 && t2 != t3 && t1 != t3, "{t1} {t2} {t3}");
    let dual_key =
        |s: &str, t: &str| format!("{PREFIX}/subnets/{}-24&{}-64", net_addr(s), net_addr(t));
    let value1 = c.sh(&format!(
        "cluster_etcdctl get --print-value-only {}",
        shell_quote(&dual_key(&s1, &t1))
    ));
    for part in [
        r#""PublicIPv6":"2001:db8:100::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":""#,
        r#""},"BackendV6Data":{"VNI":1,"VtepMAC":""#,
    ] {
        assert!(
            value1.contains(part),
            "n1's lease value {value1:?} lacks {part}"
        );
    }
    let value3 = c.sh(&format!(
        "cluster_etcdctl get --print-value-only {}",
        shell_quote(&dual_key(&s3, &t3))
    ));
    assert!(
        value3.contains(r#""PublicIPv6":"2001:db8:100::13""#),
        "{value3}"
    );

    let ns1 = c.node_ns(1);
    let (b1, b2, b3) = (net_addr(&t1), net_addr(&t2), net_addr(&t3));
    wait_ns(
        &c,
        &ns1,
        "flannel-v6.1 has mtu 1430",
        secs(10),
        "ip link show flannel-v6.1 | grep -q 'mtu 1430'",
    );
    assert_ns(
        &c,
        &ns1,
        "flannel-v6.1's local address and port",
        "ip -d link show flannel-v6.1 | grep -q 'local 2001:db8:100::11 .*dstport 8472'",
    );
    assert_ns(
        &c,
        &ns1,
        "flannel.1 keeps mtu 1450",
        "ip link show flannel.1 | grep -q 'mtu 1450'",
    );
    assert_ns(
        &c,
        &ns1,
        "flannel-v6.1's address",
        &format!("ip -6 addr show dev flannel-v6.1 | grep -q 'inet6 {b1}/128'"),
    );
    for (j, t, b) in [(2, &t2, b2), (3, &t3, b3)] {
        wait_ns(
            &c,
            &ns1,
            &format!("n1's v6 route to n{j}"),
            secs(15),
            &format!("ip -6 route show {t} | grep -q 'via {b} dev flannel-v6.1.*onlink'"),
        );
        assert_ns(
            &c,
            &ns1,
            "permanent v6 neighbour",
            &format!("ip -6 neigh show dev flannel-v6.1 | grep -q '^{b} lladdr .* PERMANENT'"),
        );
        assert_ns(&c, &ns1, "v6 FDB entry", &format!("bridge fdb show dev flannel-v6.1 | grep -q 'dst 2001:db8:100::1{j} self permanent'"));
    }
    assert_ns(
        &c,
        &ns1,
        "n1's v4 route to n2",
        &format!(
            "ip route show {s2} | grep -q 'via {} dev flannel.1 onlink'",
            net_addr(&s2)
        ),
    );
    wait_ns(
        &c,
        &ns1,
        "ping6 n1 -> n2",
        secs(10),
        &format!("ping -6 -c1 -W1 -I {b1} {b2}"),
    );
    wait_ns(
        &c,
        &c.node_ns(3),
        "ping6 n3 -> n1",
        secs(10),
        &format!("ping -6 -c1 -W1 -I {b3} {b1}"),
    );
    wait_ns(
        &c,
        &ns1,
        "ping n1 -> n2",
        secs(10),
        &format!("ping -c1 -W1 -I {} {}", net_addr(&s1), net_addr(&s2)),
    );
    wait_ns(
        &c,
        &ns1,
        "ip6 flannel-ipv6 masquerade",
        secs(10),
        "nft list table ip6 flannel-ipv6 | grep -q 'ip6 daddr != ff00::/8 masquerade'",
    );
    assert_ns(
        &c,
        &ns1,
        "ip flannel-ipv4 masquerade",
        "nft list table ip flannel-ipv4 | grep -q masquerade",
    );
    assert_eq!(c.readyz(1).0, 200);

    // Pod to pod across nodes, both families.
    let pod1 = dual_pod(&c, 1);
    let _pod2 = dual_pod(&c, 2);
    let pod2_v4 = format!("{}.10", net_addr(&s2).rsplit_once('.').unwrap().0);
    let pod_ping = |dst: &str| {
        assert!(
            wait_until(secs(10), Duration::from_millis(200), || pod1
                .try_sh(&format!("ping -c1 -W1 {dst}"))
                .status
                .success()),
            "pod on n1 cannot ping {dst}"
        );
    };
    pod_ping(&format!("{b2}a"));
    pod_ping(&pod2_v4);

    // Drift repair on the v6 side.
    c.ns_sh(&ns1, &format!("ip -6 route del {t2}"));
    wait_ns(
        &c,
        &ns1,
        "the deleted v6 route is restored",
        secs(10),
        &format!("ip -6 route show {t2} | grep -q onlink"),
    );
    c.ns_sh(&ns1, "ip link del flannel-v6.1");
    wait_ns(&c, &ns1, "flannel-v6.1 is recreated with its entries", secs(15), &format!("ip -6 route show {t2} | grep -q onlink && bridge fdb show dev flannel-v6.1 | grep -q 2001:db8:100::12"));
    wait_ns(
        &c,
        &ns1,
        "ping6 after the recreation",
        secs(10),
        &format!("ping -6 -c1 -W1 -I {b1} {b2}"),
    );

    // A restart keeps both subnets.
    c.weftd_stop(2);
    c.weftd_start(2, "");
    assert_eq!((c.subnet(2), subnet6(&c, 2)), (s2.clone(), t2.clone()));
    assert_eq!(c.leases().len(), 3);

    // A node leaves: the peers drop its v6 entries too.
    c.weftd_stop(3);
    c.etcd_del(&dual_key(&s3, &t3));
    wait_ns(
        &c,
        &ns1,
        "n3's v6 route is removed",
        secs(10),
        &format!("! ip -6 route show | grep -q '^{t3}'"),
    );
    assert_ns(
        &c,
        &ns1,
        "n3's v6 neighbour is removed",
        &format!("! ip -6 neigh show dev flannel-v6.1 | grep -q '^{b3} '"),
    );
    assert_ns(
        &c,
        &ns1,
        "n3's v6 FDB entry is removed",
        "! bridge fdb show dev flannel-v6.1 | grep -q 2001:db8:100::13",
    );
    assert_ns(
        &c,
        &ns1,
        "n3's v4 route is removed",
        &format!("! ip route show | grep -q '^{s3}'"),
    );
}

/// A CA, an etcd server certificate for 198.51.100.1 and a client
/// certificate, made by openssl in `dir`.
fn make_certs(dir: &TempDir) {
    let script = "printf '[srv]\\nsubjectAltName=IP:198.51.100.1\\nextendedKeyUsage=serverAuth\\n[cli]\\nextendedKeyUsage=clientAuth\\n' > ext.cnf && \
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=weft-test-ca && \
        for n in srv cli; do \
          openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=$n && \
          openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile ext.cnf -extensions $n || exit 1; \
        done";
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root"]
fn weftd_takes_a_lease_over_etcd_mtls_and_is_refused_without_a_client_certificate() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new();
    make_certs(&dir);
    let d = dir.path().display();
    let (etcd_ns, node) = (Netns::with_tag("e"), Netns::with_tag("n"));
    etcd_ns.sh(&format!(
        "ip link set lo up && ip link add ve type veth peer name eth0 netns {} && \
         ip link set ve up && ip addr add 198.51.100.1/24 dev ve",
        node.name
    ));
    node.sh(
        "ip link set lo up && ip link set eth0 up && ip addr add 198.51.100.11/24 dev eth0 && \
         ip route add default via 198.51.100.1",
    );
    let url = "https://198.51.100.1:2379";
    // A plain listener on the etcd netns' loopback only, for the test's own
    // etcdctl; clients on the underlay must present a certificate.
    let _etcd = etcd_ns.spawn(
        "sh",
        &[
            "-c",
            &format!(
                "exec etcd --data-dir {d}/etcd --listen-client-urls {url},http://127.0.0.1:2379 \
             --advertise-client-urls {url} --listen-peer-urls http://127.0.0.1:2380 \
             --cert-file {d}/srv.pem --key-file {d}/srv.key --client-cert-auth \
             --trusted-ca-file {d}/ca.pem >{d}/etcd.log 2>&1"
            ),
        ],
    );
    let etcdctl = "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379";
    assert!(
        wait_until(secs(20), Duration::from_millis(100), || etcd_ns
            .try_sh(&format!("{etcdctl} endpoint health"))
            .status
            .success()),
        "etcd did not start"
    );
    etcd_ns.sh(&format!(
        "{etcdctl} put {PREFIX}/config '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'"
    ));
    let weftd = plugin_path("weftd");
    let weftd = weftd.display();
    let _w = node.spawn(
        "sh",
        &["-c", &format!(
            "exec {weftd} --etcd-endpoints={url} --etcd-cafile={d}/ca.pem --etcd-certfile={d}/cli.pem \
             --etcd-keyfile={d}/cli.key --subnet-file={d}/subnet.env >{d}/w.log 2>&1"
        )],
    );
    let env = dir.join("subnet.env");
    let leased = || {
        std::fs::read_to_string(&env)
            .is_ok_and(|t| t.lines().any(|l| l.starts_with("FLANNEL_SUBNET=10.244.")))
    };
    assert!(
        wait_until(secs(20), Duration::from_millis(100), leased),
        "no lease over mTLS:\n{}",
        std::fs::read_to_string(dir.join("w.log")).unwrap_or_default()
    );

    // Without a client certificate: wait for the refusal (weftd sees the
    // TLS alert, or under load only the closed connection, and etcd logs
    // why), then check that no subnet.env was written.
    let _refused = node.spawn(
        "sh",
        &["-c", &format!(
            "exec {weftd} --etcd-endpoints={url} --etcd-cafile={d}/ca.pem --subnet-file={d}/s2.env >{d}/w2.log 2>&1"
        )],
    );
    let refused = || {
        let w2 = std::fs::read_to_string(dir.join("w2.log")).unwrap_or_default();
        let etcd_log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
        w2.contains("BadCertificate")
            || etcd_log.lines().any(|l| {
                l.contains("from \"198.51.100.11:")
                    && l.contains("client didn't provide a certificate")
            })
    };
    assert!(
        wait_until(secs(20), Duration::from_millis(100), refused),
        "no refusal seen:\n{}",
        std::fs::read_to_string(dir.join("w2.log")).unwrap_or_default()
    );
    assert!(
        !dir.join("s2.env").exists(),
        "a lease without a client certificate"
    );
}
