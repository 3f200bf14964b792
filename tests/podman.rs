//! weft's chain plugins as podman 4.3's CNI backend really calls them: a
//! container on weft's bridge + host-local, then tuning and bandwidth,
//! checked from the outside (the container's netns, the node's veth and
//! ifb, the stores on disk) and against what podman sent (recorded by a
//! wrapper, tests/support/podman.rs). portmap's podman test is in
//! tests/portmap.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Output;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "pdnet";
/// What `podman network create` writes (podman 4.3.1, CNI backend).
const VERSION: &str = "0.4.0";
const MAC: &str = "02:77:70:64:00:01";
/// bits/s and bits in the config; tc prints bytes/s and bytes.
const INGRESS_RATE: u64 = 8_000_000;
const INGRESS_BURST: u64 = 800_000;
const EGRESS_RATE: u64 = 16_000_000;
const EGRESS_BURST: u64 = 1_600_000;

/// bridge + host-local, tuning (sysctls, MTU, txqueuelen, and a MAC that
/// podman's CNI_ARGS `MAC=` must override, as in the reference: bridge sets
/// podman's MAC too, so only this shows tuning reads it) and bandwidth
/// (static rates). Both chain plugins declare
/// the capabilities the reference knows, so the test sees whether podman
/// fills them.
fn chain(data: &TempDir, backups: &TempDir) -> Value {
    conflist(
        VERSION,
        NET,
        vec![
            bridge_plugin(
                "cni0",
                host_local_ipam(data.path(), subnet_range("10.244.12.0/24")),
            ),
            json!({"type": "tuning", "dataDir": backups.path(),
                   "capabilities": {"mac": true},
                   "sysctl": {"net.core.somaxconn": "512",
                              "net.ipv4.conf.eth0.rp_filter": "2"},
                   "mac": "02:77:70:64:00:99", "mtu": 1400, "txQLen": 500}),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true},
                   "ingressRate": INGRESS_RATE, "ingressBurst": INGRESS_BURST,
                   "egressRate": EGRESS_RATE, "egressBurst": EGRESS_BURST}),
        ],
    )
}

/// `nsenter --net=<netns> sh -c script`: in the container's netns with
/// the host's tools (the container has only busybox).
fn in_netns(netns: &str, script: &str) -> Output {
    let net = format!("--net={netns}");
    run_with_timeout(
        std::process::Command::new("nsenter").args([net.as_str(), "sh", "-c", script]),
        None,
        DEFAULT_TIMEOUT,
    )
}

fn in_netns_ok(netns: &str, script: &str) -> String {
    let out = in_netns(netns, script);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `tc -j qdisc show dev <dev>` in `ns`: (kind, handle, rate, burst) of
/// each qdisc but the kernel's defaults.
fn qdiscs(ns: &Netns, dev: &str) -> Vec<(String, String, u64, u64)> {
    let out = ns.exec("tc", &["-j", "qdisc", "show", "dev", dev]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    all.iter()
        .filter(|q| !matches!(q["kind"].as_str(), Some("noqueue" | "fq_codel")))
        .map(|q| {
            let num = |k: &str| q["options"][k].as_u64().unwrap_or(0);
            let text = |k: &str| q[k].as_str().unwrap_or_default().to_string();
            (text("kind"), text("handle"), num("rate"), num("burst"))
        })
        .collect()
}

fn ifb_names(node: &Netns) -> Vec<String> {
    links(node)
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "ifb")
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect()
}

/// The tbf on `dev` shapes at `rate`/`burst` (bits/s, bits), fed from the
/// root; with `ingress`, an ingress qdisc redirects the other way too.
fn assert_shaped(node: &Netns, dev: &str, rate: u64, burst: u64, ingress: bool) {
    let got = qdiscs(node, dev);
    let tbf = got.iter().find(|q| q.0 == "tbf" && q.1 == "1:");
    let (_, _, bytes_per_s, bucket) = tbf.unwrap_or_else(|| panic!("no tbf 1: on {dev}: {got:?}"));
    assert_eq!(*bytes_per_s, rate / 8, "{dev}: {got:?}");
    // tc prints the bucket back from kernel ticks: equal up to rounding.
    assert!(
        bucket.abs_diff(burst / 8) * 100 <= burst / 8,
        "{dev}: {got:?}"
    );
    let has_ingress = got.iter().any(|q| q.0 == "ingress" && q.1 == "ffff:");
    assert_eq!(has_ingress, ingress, "{dev}: {got:?}");
}

#[test]
#[ignore = "needs root"]
fn podman_cni_backend_runs_tuning_and_bandwidth_from_weft() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let (data, backups) = (TempDir::new(), TempDir::new());
    let podman = Podman::new(&node, &chain(&data, &backups), &["tuning", "bandwidth"]);
    let id = podman.run_container(
        "pd",
        &["--network", NET, "--mac-address", MAC],
        &["/bin/busybox", "sleep", "3600"],
    );
    let netns = podman.run_ok(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}}",
        "pd",
    ]);

    // tuning, inside the container's netns.
    let eth0: Vec<Value> =
        serde_json::from_str(&in_netns_ok(&netns, "ip -j link show dev eth0")).unwrap();
    assert_eq!(eth0[0]["mtu"], 1400, "{eth0:?}");
    assert_eq!(eth0[0]["txqlen"], 500, "{eth0:?}");
    assert_eq!(eth0[0]["address"], MAC, "{eth0:?}");
    let sysctls = in_netns_ok(
        &netns,
        "cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/conf/eth0/rp_filter",
    );
    assert_eq!(sysctls.split_whitespace().collect::<Vec<_>>(), ["512", "2"]);
    assert!(backups.join(format!("{id}_eth0.json")).exists());
    // podman reports the MAC from the chain's result (tuning's).
    let format = format!("{{{{(index .NetworkSettings.Networks \"{NET}\").MacAddress}}}}");
    let mac = podman.run_ok(&["inspect", "--format", &format, "pd"]);
    assert_eq!(mac, MAC);

    // bandwidth, on the node: the host veth and the ifb.
    let veths = veth_names(&node);
    assert_eq!(veths.len(), 1, "{veths:?}");
    let ifbs = ifb_names(&node);
    assert_eq!(ifbs.len(), 1, "{ifbs:?}");
    assert_shaped(&node, &veths[0], INGRESS_RATE, INGRESS_BURST, true);
    assert_shaped(&node, &ifbs[0], EGRESS_RATE, EGRESS_BURST, false);
    assert_eq!(reserved_ips(data.path(), NET).len(), 1);

    podman.run_ok(&["rm", "-f", "pd"]);
    assert!(!std::path::Path::new(&netns).exists(), "{netns} left");
    assert_no_veths(&node);
    assert!(ifb_names(&node).is_empty(), "{:?}", links(&node));
    let left = node.sh("tc qdisc show | grep -E 'tbf|ingress|htb' || true");
    assert!(left.is_empty(), "{left}");
    assert!(
        std::fs::read_dir(backups.path()).unwrap().next().is_none(),
        "tuning backup left"
    );
    assert!(reserved_ips(data.path(), NET).is_empty());

    assert_what_podman_sent(&podman);
}

/// What podman 4.3 really sends the chain plugins: ADD then DEL only (no
/// CHECK, no GC, no STATUS), the conflist's cniVersion, a 0.4.0-shaped
/// prevResult ("version" per IP), no runtimeConfig (it fills neither
/// `mac` nor `bandwidth`), and the MAC as CNI_ARGS `MAC=`.
fn assert_what_podman_sent(podman: &Podman) {
    for plugin in ["tuning", "bandwidth"] {
        let calls = podman.sent(plugin);
        let cmds: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
        assert!(cmds.len() >= 2 && cmds[0] == "ADD", "{plugin}: {cmds:?}");
        assert!(cmds[1..].iter().all(|c| *c == "DEL"), "{plugin}: {cmds:?}");
        for (cmd, stdin) in &calls {
            assert_eq!(stdin["cniVersion"], VERSION, "{plugin} {cmd}: {stdin}");
            assert_eq!(stdin["name"], NET, "{plugin} {cmd}: {stdin}");
            assert!(
                stdin.get("runtimeConfig").is_none(),
                "{plugin} {cmd}: {stdin}"
            );
            let prev = &stdin["prevResult"];
            assert_eq!(prev["ips"][0]["version"], "4", "{plugin} {cmd}: {stdin}");
            assert!(prev["interfaces"].is_array(), "{plugin} {cmd}: {stdin}");
        }
    }
    // The MAC is already in bridge's result (weft's bridge reads CNI_ARGS
    // `MAC=` too); DEL's prevResult is libcni's cached final result, the
    // ifb included.
    let tuning = podman.sent("tuning");
    let prev_ifaces = |stdin: &Value| {
        stdin["prevResult"]["interfaces"]
            .as_array()
            .unwrap()
            .clone()
    };
    let add_ifaces = prev_ifaces(&tuning[0].1);
    assert!(
        add_ifaces
            .iter()
            .any(|i| i["name"] == "eth0" && i["mac"] == MAC),
        "{add_ifaces:?}"
    );
    let is_ifb = |i: &Value| i["name"].as_str().unwrap().starts_with("bwp");
    assert!(!add_ifaces.iter().any(is_ifb), "{add_ifaces:?}");
    let del_ifaces = prev_ifaces(&tuning[1].1);
    assert!(del_ifaces.iter().any(is_ifb), "{del_ifaces:?}");
    // The same CNI_ARGS to both plugins on ADD and DEL.
    let expected = ["IgnoreUnknown=1", "K8S_POD_NAME=pd", &format!("MAC={MAC}")].join(";");
    for plugin in ["tuning", "bandwidth"] {
        for call in podman
            .calls(plugin)
            .iter()
            .filter(|c| c.command != "VERSION")
        {
            assert_eq!(call.cni_args, expected, "{plugin} {}", call.command);
        }
    }
}
