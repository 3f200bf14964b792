//! weftctl and weftd's state on the simulated cluster (`scripts/lib/cluster.sh`):
//! every doctor check green on a healthy node and red on one broken on
//! purpose; status and the flannel plugin's errors naming etcd and its
//! endpoint while etcd is down; status turning ready with weftd.
//!
//! Needs root and etcd; each test has its own cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::*;

const FAST: &str = "--reconcile-interval=1 --ip-masq";
const ETCD: &str = "http://198.51.100.1:2379";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `weftctl ARGS` inside node `n` with the node's paths: (exit code, stdout, stderr).
fn weftctl(c: &Cluster, n: u32, args: &[&str]) -> (i32, String, String) {
    let subnet_file = c.subnet_file(n);
    let ipam = c.node_dir(n).join("ipam");
    let out = run_with_timeout(
        Command::new("ip")
            .args(["netns", "exec", &c.node_ns(n)])
            .arg(plugin_path("weftctl"))
            .arg("--subnet-file")
            .arg(&subnet_file)
            .arg("--ipam-dir")
            .arg(&ipam)
            .args(args),
        None,
        secs(20),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(c: &Cluster, n: u32, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = weftctl(c, n, &all);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}{err}"));
    (code, v)
}

/// (status, detail + fix) of one doctor check on node `n`.
fn check(c: &Cluster, n: u32, name: &str) -> (String, String) {
    let (_, v) = json_of(c, n, &["doctor"]);
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
        .clone();
    (
        row["status"].as_str().unwrap().to_string(),
        format!("{} / fix: {}", row["detail"], row["fix"]),
    )
}

fn assert_check(c: &Cluster, n: u32, name: &str, want: &str, mentions: &[&str]) {
    let (status, detail) = check(c, n, name);
    assert_eq!(
        status,
        want,
        "{name}: {detail}\n{}",
        weftctl(c, n, &["doctor"]).1
    );
    for m in mentions {
        assert!(
            detail.contains(m),
            "{name} does not mention {m:?}: {detail}"
        );
    }
    note(&format!("{name}: {status}: {detail}"));
}

/// Waits until check `name` on node `n` is `want`.
fn wait_check(c: &Cluster, n: u32, name: &str, want: &str) {
    assert!(
        c.wait_for(secs(15), || check(c, n, name).0 == want),
        "{name} never became {want}: {:?}\n{}",
        check(c, n, name),
        c.weftd_log(n)
    );
}

fn two_nodes_with_pods() -> Cluster {
    two_nodes_with_pods_on("vxlan")
}

fn two_nodes_with_pods_on(backend: &'static str) -> Cluster {
    let c = Cluster::with_backend(FAST, backend);
    c.write_config(None);
    c.node_add(1);
    c.node_add(2);
    c.pod_add(1, "a");
    c.pod_add(2, "a");
    c.wait_converged();
    c
}

fn ns(c: &Cluster, n: u32, script: &str) -> String {
    c.ns_sh(&c.node_ns(n), script)
}

#[test]
#[ignore = "needs root"]
fn a_healthy_node_passes_every_check_and_status_and_peers_agree() {
    if !require_root() {
        return;
    }
    let c = two_nodes_with_pods();
    // status becomes ready with weftd (the state file follows /readyz).
    assert!(c.wait_for(secs(5), || weftctl(&c, 1, &["status"]).0 == 0));
    let (code, text, _) = weftctl(&c, 1, &["status"]);
    note(&format!("weftctl status:\n{text}"));
    assert_eq!(code, 0);
    let subnet1 = c.subnet(1);
    let subnet2 = c.subnet(2);
    assert!(text.contains("ready:      yes"), "{text}");
    assert!(text.contains(&subnet1) && text.contains(ETCD), "{text}");
    assert!(text.contains("installed (nftables)"), "{text}");
    let (_, v) = json_of(&c, 1, &["status"]);
    assert_eq!(v["ready"], true);
    assert_eq!(v["peers_programmed"], 1);
    assert_eq!(v["state"]["lease"]["public_ip"], c.node_ip(1));

    // The same state over the health port.
    let url = format!("http://127.0.0.1:{}", 10001);
    let (code, v2) = json_of(&c, 1, &["status", "--endpoint", &url]);
    assert_eq!((code, &v2["state"]["lease"]), (0, &v["state"]["lease"]));

    let (code, text, _) = weftctl(&c, 1, &["peers"]);
    note(&format!("weftctl peers:\n{text}"));
    assert_eq!(code, 0);
    let line = text.lines().find(|l| l.starts_with(&subnet2)).unwrap();
    assert!(
        line.contains(&c.node_ip(2)) && line.contains(&c.vtep_mac(2)),
        "{line}"
    );
    assert!(
        line.contains(" ok ") && line.ends_with("programmed"),
        "{line}"
    );

    let (code, text, _) = weftctl(&c, 1, &["doctor"]);
    note(&format!("weftctl doctor:\n{text}"));
    assert_eq!(code, 0, "{text}");
    let (_, v) = json_of(&c, 1, &["doctor"]);
    for row in v["checks"].as_array().unwrap() {
        assert_eq!(row["status"], "ok", "{row}");
    }
    assert_eq!(v["checks"].as_array().unwrap().len(), 11);
}

/// Every check green on a node of `backend`, and `peers` finding the
/// peer's entries (`want`: the peer's route as `ip` shows it) present.
fn green_on(backend: &'static str, want: impl Fn(&Cluster) -> String) -> Cluster {
    let c = two_nodes_with_pods_on(backend);
    assert!(c.wait_for(secs(5), || weftctl(&c, 1, &["status"]).0 == 0));
    let (_, v) = json_of(&c, 1, &["status"]);
    let network = &v["state"]["network"];
    let vxlan = backend != "host-gw";
    assert_eq!(
        network["backend_type"],
        if vxlan { "vxlan" } else { "host-gw" }
    );
    assert_eq!(network["direct_routing"], backend == "directrouting");
    assert_eq!(v["peers_programmed"], 1, "{v}");
    let (code, text, _) = weftctl(&c, 1, &["peers"]);
    note(&format!("weftctl peers ({backend}):\n{text}"));
    assert_eq!(code, 0);
    let line = text.lines().find(|l| l.starts_with(&c.subnet(2))).unwrap();
    assert!(
        line.contains(" ok ") && line.ends_with("programmed"),
        "{line}"
    );
    let (_, v) = json_of(&c, 1, &["peers"]);
    let row = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subnet"] == c.subnet(2))
        .unwrap()
        .clone();
    let entries: Vec<&str> = row["kernel_entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"].as_str().unwrap())
        .collect();
    // host-gw and DirectRouting to an on-link peer: one route, no
    // neighbour or FDB entry.
    assert_eq!(entries, [want(&c).as_str()], "{row}");
    let (code, text, _) = weftctl(&c, 1, &["doctor"]);
    note(&format!("weftctl doctor ({backend}):\n{text}"));
    assert_eq!(code, 0, "{text}");
    c
}

#[test]
#[ignore = "needs root"]
fn doctor_on_host_gw_checks_the_route_via_the_public_ip() {
    if !require_root() {
        return;
    }
    let direct = |c: &Cluster| format!("route {} via {} dev eth0", c.subnet(2), c.node_ip(2));
    let c = green_on("host-gw", direct);
    let (subnet2, ip2) = (c.subnet(2), c.node_ip(2));
    assert_check(&c, 1, "mtu", "ok", &["eth0"]);
    assert_check(&c, 1, "rp_filter", "ok", &["on eth0"]);

    // weftd stopped: a missing route, then a stale one on the underlay.
    c.weftd_stop(1);
    ns(&c, 1, &format!("ip route del {subnet2}"));
    assert_check(
        &c,
        1,
        "kernel entries",
        "problem",
        &["1 missing", &format!("route {subnet2} via {ip2} dev eth0")],
    );
    ns(
        &c,
        1,
        &format!("ip route replace {subnet2} via {ip2} dev eth0"),
    );
    assert_check(&c, 1, "kernel entries", "ok", &[]);
    ns(
        &c,
        1,
        &format!("ip route replace 10.244.251.0/24 via {ip2} dev eth0"),
    );
    assert_check(
        &c,
        1,
        "kernel entries",
        "problem",
        &[
            "1 stale",
            &format!("route 10.244.251.0/24 via {ip2} dev eth0"),
            "ip route del 10.244.251.0/24 dev eth0",
        ],
    );
    // weftd back: it removes the stale route itself.
    c.weftd_restart(1);
    wait_check(&c, 1, "kernel entries", "ok");
    wait_check(&c, 1, "weftd", "ok");
}

#[test]
#[ignore = "needs root"]
fn doctor_on_direct_routing_checks_the_direct_route() {
    if !require_root() {
        return;
    }
    let c = green_on("directrouting", |c: &Cluster| {
        format!("route {} via {} dev eth0", c.subnet(2), c.node_ip(2))
    });
    c.weftd_stop(1);
    ns(&c, 1, &format!("ip route del {}", c.subnet(2)));
    assert_check(
        &c,
        1,
        "kernel entries",
        "problem",
        &["1 missing", "dev eth0"],
    );
}

#[test]
#[ignore = "needs root"]
fn each_check_turns_red_on_a_node_broken_on_purpose() {
    if !require_root() {
        return;
    }
    let c = two_nodes_with_pods();
    let (subnet2, ip2, mac2) = (c.subnet(2), c.node_ip(2), c.vtep_mac(2));
    let gw2 = subnet2.split('/').next().unwrap().to_string();
    wait_check(&c, 1, "weftd", "ok");

    // subnet.env that disagrees with the lease.
    let env_path = c.subnet_file(1);
    let good_env = std::fs::read_to_string(&env_path).unwrap();
    std::fs::write(
        &env_path,
        good_env
            .replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1400")
            .replace("FLANNEL_SUBNET=10.244.", "FLANNEL_SUBNET=10.245."),
    )
    .unwrap();
    assert_check(
        &c,
        1,
        "subnet.env",
        "problem",
        &[
            "FLANNEL_SUBNET is 10.245.",
            "FLANNEL_MTU is 1400",
            "restart weftd",
        ],
    );
    std::fs::write(&env_path, &good_env).unwrap();
    assert_check(&c, 1, "subnet.env", "ok", &[]);

    // A pod interface with a bigger MTU than the overlay.
    let veth = ns(
        &c,
        1,
        "ip -o link show master cni0 | awk -F': ' '{print $2}' | cut -d@ -f1 | head -1",
    );
    let veth = veth.trim();
    ns(&c, 1, &format!("ip link set {veth} mtu 1500"));
    assert_check(
        &c,
        1,
        "mtu",
        "problem",
        &[veth, "1500", "flannel.1 MTU 1450"],
    );
    ns(&c, 1, &format!("ip link set {veth} mtu 1450"));
    assert_check(&c, 1, "mtu", "ok", &[]);

    // Forwarding off, then a forward chain that drops (another table's
    // accept does not help in nftables).
    ns(&c, 1, "sysctl -qw net.ipv4.ip_forward=0");
    assert_check(
        &c,
        1,
        "ip_forward",
        "problem",
        &["sysctl -w net.ipv4.ip_forward=1"],
    );
    ns(&c, 1, "sysctl -qw net.ipv4.ip_forward=1");
    assert_check(&c, 1, "ip_forward", "ok", &[]);
    ns(&c, 1, "nft add table ip dropper && nft add chain ip dropper forward '{ type filter hook forward priority 10; policy drop; }'");
    assert_check(
        &c,
        1,
        "forward chain",
        "problem",
        &[
            "policy drop of chain ip dropper forward",
            "nft insert rule ip dropper forward ip saddr 10.244.0.0/16 accept",
        ],
    );
    ns(&c, 1, "nft insert rule ip dropper forward ip daddr 10.244.0.0/16 accept && nft insert rule ip dropper forward ip saddr 10.244.0.0/16 accept");
    assert_check(&c, 1, "forward chain", "ok", &[]);
    ns(&c, 1, "nft delete table ip dropper");

    // Checksum offload, judged as a pre-5.7 kernel: on by default.
    let (status, detail) = {
        let v = json_of(&c, 1, &["doctor", "--kernel-release", "5.4.0-150-generic"]).1;
        let row = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["check"] == "checksum offload")
            .unwrap()
            .clone();
        (row["status"].as_str().unwrap().to_string(), row.to_string())
    };
    assert_eq!(status, "problem", "{detail}");
    assert!(
        detail.contains("ethtool -K flannel.1 tx-checksum-ip-generic off"),
        "{detail}"
    );
    assert_check(
        &c,
        1,
        "checksum offload",
        "ok",
        &["has the VXLAN checksum fix"],
    );
    ns(&c, 1, "ethtool -K flannel.1 tx-checksum-ip-generic off");
    let v = json_of(&c, 1, &["doctor", "--kernel-release", "5.4.0-150-generic"]).1;
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["check"] == "checksum offload")
        .unwrap()
        .clone();
    assert_eq!(row["status"], "ok", "{row}");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("offload is off on flannel.1"),
        "{row}"
    );

    // An IP leak in the making: the pod's netns is gone but DEL never ran.
    let ip_b = c.pod_add(1, "b");
    assert_check(&c, 1, "ipam leaks", "ok", &[]);
    c.sh(&format!("ip netns del {}", c.pod_ns(1, "b")));
    assert!(c.wait_for(secs(5), || check(&c, 1, "ipam leaks").0 == "problem"));
    assert_check(
        &c,
        1,
        "ipam leaks",
        "problem",
        &[&ip_b, "container is gone"],
    );
    c.sh("cluster_pod_del 1 b");
    assert_check(&c, 1, "ipam leaks", "ok", &[]);

    // Two leases with one PublicIP, then one VtepMAC.
    c.sh(&format!(
        "cluster_lease_put 10.244.250.0/24 {ip2} 02:00:00:00:02:50"
    ));
    wait_check(&c, 1, "duplicate leases", "problem");
    assert_check(
        &c,
        1,
        "duplicate leases",
        "problem",
        &[&format!("PublicIP {ip2}"), "10.244.250.0-24", "etcdctl del"],
    );
    c.sh(&format!(
        "cluster_lease_put 10.244.250.0/24 198.51.100.250 {mac2}"
    ));
    assert!(c.wait_for(secs(10), || check(&c, 1, "duplicate leases")
        .1
        .contains("VtepMAC")));
    c.sh("cluster_lease_del 10.244.250.0/24");
    wait_check(&c, 1, "duplicate leases", "ok");

    // With weftd stopped nothing repairs: missing and stale kernel entries,
    // masquerade rules gone, strict rp_filter with the route moved.
    wait_check(&c, 1, "kernel entries", "ok");
    c.weftd_stop(1);
    assert_check(&c, 1, "weftd", "problem", &["weftd is not running"]);
    ns(&c, 1, &format!("ip route del {subnet2}"));
    assert_check(
        &c,
        1,
        "kernel entries",
        "problem",
        &[
            "missing",
            &format!("route {subnet2} via {gw2} dev flannel.1 onlink"),
        ],
    );
    ns(
        &c,
        1,
        &format!("ip route replace {subnet2} via {gw2} dev flannel.1 onlink"),
    );
    assert_check(&c, 1, "kernel entries", "ok", &[]);
    ns(
        &c,
        1,
        "ip neigh replace 10.244.251.0 lladdr 02:00:00:00:02:51 dev flannel.1 nud permanent && \
        bridge fdb append 02:00:00:00:02:51 dev flannel.1 dst 198.51.100.251 self permanent",
    );
    assert_check(
        &c,
        1,
        "kernel entries",
        "problem",
        &[
            "2 stale",
            "neighbour 10.244.251.0",
            "fdb 02:00:00:00:02:51 dev flannel.1 dst 198.51.100.251",
            "bridge fdb del 02:00:00:00:02:51 dev flannel.1 dst 198.51.100.251",
        ],
    );
    ns(
        &c,
        1,
        "ip neigh del 10.244.251.0 dev flannel.1 && \
        bridge fdb del 02:00:00:00:02:51 dev flannel.1 dst 198.51.100.251 self",
    );
    assert_check(&c, 1, "kernel entries", "ok", &[]);

    assert_check(&c, 1, "masquerade", "ok", &[]);
    ns(&c, 1, "nft delete table ip flannel-ipv4");
    assert_check(
        &c,
        1,
        "masquerade",
        "problem",
        &["FLANNEL_IPMASQ=true", "not masqueraded"],
    );
    // The forward accepts went with the table: still fine without a drop policy.
    assert_check(&c, 1, "forward chain", "ok", &[]);

    assert_check(&c, 1, "rp_filter", "ok", &[]);
    ns(
        &c,
        1,
        &format!("sysctl -qw net.ipv4.conf.all.rp_filter=1 && ip route replace {subnet2} dev eth0"),
    );
    assert_check(
        &c,
        1,
        "rp_filter",
        "problem",
        &["rp_filter=1", &subnet2, "leaves via eth0"],
    );

    // weftd back: it repairs the kernel and the rules; the checks go green.
    ns(&c, 1, "sysctl -qw net.ipv4.conf.all.rp_filter=0");
    c.weftd_restart(1);
    for name in ["weftd", "kernel entries", "masquerade", "rp_filter"] {
        wait_check(&c, 1, name, "ok");
    }
    let (code, text, _) = weftctl(&c, 1, &["doctor"]);
    assert_eq!(code, 0, "{text}");
}

/// The flannel plugin's error for an ADD of pod `a` on node 1 (its netns
/// made for the call and removed after).
fn add_error(c: &Cluster) -> Value {
    let out = c.try_sh(
        "p=$(cluster_pod_ns 1 a); _wc_netns_add \"$p\"; cluster_cni 1 ADD a; rc=$?; _wc_netns_del \"$p\"; exit $rc",
    );
    assert!(!out.status.success(), "ADD succeeded");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn msg(v: &Value) -> String {
    v["msg"].as_str().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs root"]
fn with_etcd_down_status_and_the_plugin_name_etcd_then_status_is_ready_with_weftd() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(FAST);
    c.write_config(None);
    c.sh("cluster_etcd_stop && cluster_node_create 1");
    // weftd has never run here: the plugin says so.
    let e = add_error(&c);
    assert_eq!(e["code"], 11, "{e}");
    assert!(msg(&e).contains("weftd is not running (no state at"), "{e}");
    let (code, text, _) = weftctl(&c, 1, &["status"]);
    assert_eq!(code, 2, "{text}");

    c.sh("cluster_weftd_start 1");
    assert!(
        c.wait_for(secs(10), || json_of(&c, 1, &["status"]).1["state"]
            ["reason"]["kind"]
            == "etcd_unreachable"),
        "{:?}\n{}",
        weftctl(&c, 1, &["status"]),
        c.weftd_log(1)
    );
    let (code, text, _) = weftctl(&c, 1, &["status"]);
    note(&format!("weftctl status, etcd down:\n{text}"));
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("ready:      no: etcd at {ETCD} has failed for")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "{text}");

    // ADD (code 11) and STATUS (code 50) quote weftd's reason.
    let e = add_error(&c);
    note(&format!("flannel ADD, etcd down: {e}"));
    assert_eq!(e["code"], 11, "{e}");
    assert!(
        msg(&e).contains(&format!(
            "weftd is not ready: etcd at {ETCD} has failed for"
        )),
        "{e}"
    );
    let status = c.try_sh(
        "WC_CNI_CONF=$(jq -c '.cniVersion=\"1.1.0\"' \"$(cluster_node_dir 1)/cni.conf\") cluster_cni 1 STATUS ''",
    );
    let out = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(!status.status.success());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["code"], 50, "{out}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("etcd at {ETCD}")),
        "{out}"
    );

    // etcd up: status turns ready within a second of /readyz.
    c.sh("cluster_etcd_start");
    let t0 = Instant::now();
    let (mut ready_at, mut status_at) = (None, None);
    while t0.elapsed() < secs(30) && (ready_at.is_none() || status_at.is_none()) {
        if ready_at.is_none() && c.readyz(1).0 == 200 {
            ready_at = Some(t0.elapsed());
        }
        if status_at.is_none() && weftctl(&c, 1, &["status"]).0 == 0 {
            status_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ready_at, status_at) = (
        ready_at.expect("never ready"),
        status_at.expect("status never ready"),
    );
    note(&format!(
        "/readyz 200 after {ready_at:?}, weftctl status 0 after {status_at:?}"
    ));
    assert!(
        status_at <= ready_at + secs(1),
        "status lagged: {status_at:?} vs {ready_at:?}"
    );

    // weftd stopped: the plugin and status say it is not running.
    c.sh(&format!(
        "cluster_node_subnet 1 >/dev/null && rm -f {}",
        c.subnet_file(1).display()
    ));
    c.weftd_stop(1);
    let e = add_error(&c);
    assert!(msg(&e).contains("weftd is not running (it stopped"), "{e}");
    let (code, text, _) = weftctl(&c, 1, &["status"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("NOT RUNNING"), "{text}");
}
