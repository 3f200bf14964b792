//! Black-box tests of weft's `bandwidth` plugin chained after weft's
//! `bridge`: shaping measured with iperf3 between namespaces, the tc
//! objects (`tc -j`) compared with the Go reference's, DEL (also with the
//! netns gone), CHECK, GC, bad input, rollback of a half-done ADD and the
//! libcni driver with the `bandwidth` capability; shapedSubnets and
//! unshapedSubnets measured per destination, both families.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "bwnet";
const BRIDGE: &str = "cni0";
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const V6_SUBNET: &str = "fd00:10:244:7::/64";
/// The node's addresses on the bridge (the ranges' gateways).
const NODE_V4: &str = "10.244.7.1";
const NODE_V6: &str = "fd00:10:244:7::1";

struct Env {
    node: Node,
    data: TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            node: Node::new(),
            data: TempDir::new(),
        }
    }

    fn bridge_conf(&self, version: &str) -> Value {
        network(
            version,
            NET,
            bridge_plugin(
                BRIDGE,
                host_local_ipam(self.data.path(), subnet_range("10.244.7.0/24")),
            ),
        )
    }

    fn bw_conf(&self, version: &str, limits: Value) -> Value {
        merged(&network(version, NET, json!({"type": "bandwidth"})), limits)
    }

    /// bridge ADD for `pod`; returns its result.
    fn attach(&self, pod: &Netns, version: &str) -> Value {
        CniCall::add(pod, self.bridge_conf(version))
            .run_in(&self.node, &plugin_path("bridge"))
            .expect_ok()
    }

    /// bridge ADD for `pod` with an IPv4 and an IPv6 address.
    fn attach_dual(&self, pod: &Netns) -> Value {
        let mut conf = self.bridge_conf("1.0.0");
        conf["ipam"]["ranges"] =
            json!([[subnet_range("10.244.7.0/24")], [subnet_range(V6_SUBNET)]]);
        CniCall::add(pod, conf)
            .run_in(&self.node, &plugin_path("bridge"))
            .expect_ok()
    }

    fn bw(&self, call: CniCall) -> CniOutput {
        self.bw_with(call, &plugin_path("bandwidth"))
    }

    fn bw_with(&self, call: CniCall, plugin: &Path) -> CniOutput {
        call.run_in(&self.node, plugin)
    }

    /// bridge + bandwidth ADD with `limits`; returns (bridge result, final result).
    fn add_shaped(&self, pod: &Netns, version: &str, limits: Value) -> (Value, Value) {
        let prev = self.attach(pod, version);
        let conf = with_prev(&self.bw_conf(version, limits), &prev);
        let result = self.bw(CniCall::add(pod, conf)).expect_ok();
        (prev, result)
    }
}

fn host_veth(prev: &Value) -> String {
    prev["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i.get("sandbox").is_none() && i["name"] != BRIDGE)
        .map(|i| i["name"].as_str().unwrap().to_string())
        .expect("a host veth in the bridge result")
}

fn pod_ip(prev: &Value) -> String {
    pod_ip_n(prev, 0)
}

/// The `n`-th address of a result, without its prefix length.
fn pod_ip_n(prev: &Value, n: usize) -> String {
    let addr = prev["ips"][n]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().to_string()
}

/// `tc -j qdisc show dev <dev>` in `ns`, without the kernel's defaults.
fn qdiscs(ns: &Netns, dev: &str) -> Vec<Value> {
    let out = ns.exec("tc", &["-j", "qdisc", "show", "dev", dev]);
    if !out.status.success() {
        return Vec::new(); // the device is gone
    }
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    all.into_iter()
        .filter(|q| {
            !matches!(
                q["kind"].as_str(),
                Some("noqueue" | "pfifo_fast" | "fq_codel")
            )
        })
        .collect()
}

/// The ifbs in the node (`ip -d link` kind ifb).
fn ifbs(node: &Netns) -> Vec<Value> {
    links(node)
        .into_iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "ifb")
        .collect()
}

/// Kind, handle, root-ness and the tbf's rate, burst and latency as `tc`
/// prints them: what two plugins must agree on.
fn shape_of(q: &Value) -> Value {
    json!({
        "kind": q["kind"], "handle": q["handle"], "root": q["root"],
        "rate": q["options"]["rate"], "burst": q["options"]["burst"], "lat": q["options"]["lat"],
    })
}

/// One iperf3 run at a time in this suite: two shaped streams sharing the
/// 2 cores with each other cost the shapers tokens and the rates 10 %.
static IPERF: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// iperf3 throughput in bits/s: the client in `from` sends to `server_ip`
/// (a server in `to`); with `reverse`, the server sends. None when the run
/// failed.
fn iperf(from: &Netns, to: &Netns, server_ip: &str, reverse: bool) -> Option<f64> {
    let _alone = IPERF.lock().unwrap_or_else(|e| e.into_inner());
    let _server = to.spawn("iperf3", &["-s", "-1", "-B", server_ip]);
    assert!(
        wait_until(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(50),
            || to.sh("ss -ltnH 'sport = :5201'").contains("5201"),
        ),
        "iperf3 server did not start"
    );
    let mut args = vec!["-c", server_ip, "-t", "5", "-O", "1", "-J"];
    if reverse {
        args.push("-R");
    }
    let out = from.exec("iperf3", &args);
    if !out.status.success() {
        eprintln!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout));
        return None;
    }
    iperf3_received_bps(&serde_json::from_slice(&out.stdout).ok()?)
}

#[test]
#[ignore = "needs root"]
fn shaped_tcp_runs_within_ten_percent_of_the_rate_both_ways() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let ingress = 30_000_000u64;
    let egress = 20_000_000u64;
    let (prev, result) = env.add_shaped(
        &pod,
        "1.0.0",
        json!({"ingressRate": ingress, "ingressBurst": 400_000,
               "egressRate": egress, "egressBurst": 400_000}),
    );
    let ip = pod_ip(&prev);
    // Into the pod: the node sends, the pod's server receives.
    assert_shaped_within_10_percent(ingress as f64, "into the pod", || {
        iperf(&env.node, &pod, &ip, false)
    });
    // Out of the pod: the pod's server sends (-R).
    assert_shaped_within_10_percent(egress as f64, "out of the pod", || {
        iperf(&env.node, &pod, &ip, true)
    });
    // The ifb is in the result as a host interface.
    let ifb = result["interfaces"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(ifb["name"].as_str().unwrap().starts_with("bwp"));
    assert!(ifb.get("sandbox").is_none());
}

#[test]
#[ignore = "needs root"]
fn the_qdiscs_match_the_reference_plugins() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let limits = json!({"ingressRate": 1_000_000, "ingressBurst": 80_000,
                        "egressRate": 2_000_000, "egressBurst": 160_000});
    let mut seen = Vec::new();
    for plugin in [
        plugin_path("bandwidth"),
        reference_plugin_dir().join("bandwidth"),
    ] {
        let pod = env.node.pod();
        let prev = env.attach(&pod, "1.0.0");
        let conf = with_prev(&env.bw_conf("1.0.0", limits.clone()), &prev);
        let result = env
            .bw_with(CniCall::add(&pod, conf.clone()), &plugin)
            .expect_ok();
        let veth = host_veth(&prev);
        let ifb = result["interfaces"].as_array().unwrap().last().unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string();
        let on_veth: Vec<Value> = qdiscs(&env.node, &veth).iter().map(shape_of).collect();
        let on_ifb: Vec<Value> = qdiscs(&env.node, &ifb).iter().map(shape_of).collect();
        let ifb_link = link(&env.node, &ifb).unwrap();
        seen.push((
            on_veth,
            on_ifb,
            ifb_link["mtu"].clone(),
            ifb_link["txqlen"].clone(),
            ifb,
        ));
        env.bw_with(CniCall::del(&pod, conf), &plugin).expect_ok();
    }
    assert_eq!(seen[0].0, seen[1].0, "host veth qdiscs");
    assert_eq!(seen[0].1, seen[1].1, "ifb qdiscs");
    assert_eq!(seen[0].2, seen[1].2, "ifb mtu");
    assert_eq!(seen[0].3, seen[1].3, "ifb txqlen");
    assert_eq!(seen[0].0[0]["burst"], json!(10000), "{:?}", seen[0].0);
    assert!(seen[0].0.iter().any(|q| q["kind"] == "ingress"));
    assert_ne!(seen[0].4, seen[1].4, "one ifb per container");
}

#[test]
#[ignore = "needs root"]
fn del_removes_the_ifb_and_the_qdiscs_and_is_idempotent() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for version in VERSIONS {
        let pod = env.node.pod();
        let limits = json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
                            "egressRate": 8_000_000, "egressBurst": 80_000});
        let (prev, _) = env.add_shaped(&pod, version, limits.clone());
        let veth = host_veth(&prev);
        assert_eq!(qdiscs(&env.node, &veth).len(), 2, "{version}");
        assert_eq!(ifbs(&env.node).len(), 1);
        let conf = with_prev(&env.bw_conf(version, limits), &prev);
        env.bw(CniCall::del(&pod, conf.clone())).expect_ok();
        assert!(qdiscs(&env.node, &veth).is_empty(), "{version}");
        assert!(ifbs(&env.node).is_empty());
        env.bw(CniCall::del(&pod, conf.clone())).expect_ok();
        CniCall::del(&pod, env.bridge_conf(version))
            .run_in(&env.node, &plugin_path("bridge"))
            .expect_ok();
    }
}

#[test]
#[ignore = "needs root"]
fn del_with_the_netns_gone_removes_the_ifb() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let limits = json!({"egressRate": 8_000_000, "egressBurst": 80_000});
    let (prev, _) = env.add_shaped(&pod, "1.0.0", limits.clone());
    let conf = with_prev(&env.bw_conf("1.0.0", limits), &prev);
    let call = CniCall::del(&pod, conf);
    drop(pod);
    assert_eq!(ifbs(&env.node).len(), 1);
    env.bw(call.clone()).expect_ok();
    assert!(ifbs(&env.node).is_empty());
    env.bw(call.netns("")).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn without_limits_the_result_passes_through_and_check_passes() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for version in VERSIONS {
        let pod = env.node.pod();
        let prev = env.attach(&pod, version);
        for limits in [json!({}), json!({"runtimeConfig": {"bandwidth": {}}})] {
            let conf = with_prev(&env.bw_conf(version, limits), &prev);
            let out = env.bw(CniCall::add(&pod, conf.clone())).expect_ok();
            assert_eq!(out, prev, "{version}");
            if version >= "0.4.0" {
                env.bw(CniCall::check(&pod, conf.clone())).expect_ok();
            }
        }
        assert!(ifbs(&env.node).is_empty());
        assert!(qdiscs(&env.node, &host_veth(&prev)).is_empty());
    }
}

#[test]
#[ignore = "needs root"]
fn check_verifies_the_shaper() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let limits = json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
                        "egressRate": 4_000_000, "egressBurst": 80_000});
    let (prev, result) = env.add_shaped(&pod, "1.0.0", limits.clone());
    let conf = with_prev(&env.bw_conf("1.0.0", limits.clone()), &result);
    env.bw(CniCall::check(&pod, conf.clone())).expect_ok();
    // A different rate in the config no longer matches.
    let other = with_prev(
        &env.bw_conf("1.0.0", merged(&limits, json!({"egressRate": 5_000_000}))),
        &result,
    );
    env.bw(CniCall::check(&pod, other)).expect_error(105);
    // The redirect filter is checked too.
    let veth = host_veth(&prev);
    env.node
        .sh(&format!("tc filter del dev {veth} parent ffff:"));
    env.bw(CniCall::check(&pod, conf.clone())).expect_error(105);
    env.node.sh(&format!("tc qdisc del dev {veth} root"));
    env.bw(CniCall::check(&pod, conf.clone())).expect_error(105);
    // No prevResult.
    env.bw(CniCall::check(&pod, env.bw_conf("1.0.0", limits)))
        .expect_error(7);
}

#[test]
#[ignore = "needs root"]
fn gc_removes_the_ifbs_of_dead_attachments_only() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let limits = json!({"egressRate": 8_000_000, "egressBurst": 80_000});
    let live = env.node.pod();
    let dead = env.node.pod();
    env.add_shaped(&live, "1.1.0", limits.clone());
    env.add_shaped(&dead, "1.1.0", limits.clone());
    // An ifb a killed ADD left before labelling it (down, no alias), and a
    // reference-made one of another network (up, no alias).
    env.node.sh("ip link add bwp0000000000aa type ifb");
    env.node
        .sh("ip link add bwp0000000000bb type ifb && ip link set bwp0000000000bb up");
    assert_eq!(ifbs(&env.node).len(), 4);
    let gc = merged(
        &env.bw_conf("1.1.0", json!({})),
        json!({"cni.dev/valid-attachments": [
            {"containerID": format!("ctr-{}", live.name), "ifname": "eth0"}
        ]}),
    );
    env.bw(CniCall::gc(gc.clone())).expect_ok();
    let left: Vec<String> = ifbs(&env.node)
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&"bwp0000000000bb".to_string()));
    let alias = link(&env.node, left.iter().find(|n| !n.ends_with("bb")).unwrap()).unwrap();
    assert_eq!(
        alias["ifalias"],
        json!(format!("weft/{NET}/ctr-{}/eth0", live.name))
    );
    // An empty list: the live one goes too; another network's stays.
    env.bw(CniCall::gc(merged(
        &gc,
        json!({"cni.dev/valid-attachments": []}),
    )))
    .expect_ok();
    assert_eq!(ifbs(&env.node).len(), 1);
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_a_spec_error_and_makes_nothing() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let prev = env.attach(&pod, "1.0.0");
    let veth = host_veth(&prev);
    let cases = [
        (json!({"ingressRate": 1_000_000}), 7),
        (json!({"egressBurst": 1_000_000}), 7),
        (json!({"ingressRate": 0, "ingressBurst": 80_000}), 7),
        (json!({"egressRate": -8, "egressBurst": 80_000}), 7),
        (json!({"egressRate": 8_000, "egressBurst": -1}), 7),
        (json!({"ingressRate": 4, "ingressBurst": 80_000}), 7),
        (
            json!({"egressRate": 8_000, "egressBurst": 34_359_738_360u64}),
            7,
        ),
        (json!({"egressRate": "1M", "egressBurst": 80_000}), 7),
        (
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 8_000}}}),
            7,
        ),
        (
            json!({"ingressRate": 8_000, "ingressBurst": 80_000,
                   "shapedSubnets": ["10.0.0.0/8"], "unshapedSubnets": ["fd00::/8"]}),
            7,
        ),
        (
            json!({"egressRate": 8_000, "egressBurst": 80_000,
                   "shapedSubnets": ["10.0.0.0/8", "10.0.0.0/33"]}),
            7,
        ),
        (
            json!({"egressRate": 8_000, "egressBurst": 80_000, "unshapedSubnets": ["10.1.1.1"]}),
            7,
        ),
        (
            json!({"runtimeConfig": {"bandwidth": {"egressRate": 8_000, "egressBurst": 80_000,
                   "unshapedSubnets": ["fd00::/200"]}}}),
            7,
        ),
        // A valid egress limit with an invalid ingress one: nothing either.
        (
            json!({"egressRate": 8_000, "egressBurst": 80_000, "ingressBurst": 5}),
            7,
        ),
    ];
    for (limits, code) in cases {
        let conf = with_prev(&env.bw_conf("1.0.0", limits.clone()), &prev);
        env.bw(CniCall::add(&pod, conf)).expect_error(code);
        assert!(qdiscs(&env.node, &veth).is_empty(), "{limits}");
        assert!(ifbs(&env.node).is_empty(), "{limits}");
    }
    // Not chained: no prevResult.
    let lone = env.bw_conf("1.0.0", json!({"egressRate": 8_000, "egressBurst": 80_000}));
    env.bw(CniCall::add(&pod, lone)).expect_error(7);
    assert!(ifbs(&env.node).is_empty());
}

/// Fails each netlink request of a shaping ADD with `limits` in turn
/// (strace injects EIO on the n-th sendto): every failed ADD must leave no
/// ifb and no qdisc (classes and filters live in them), and the first one
/// that gets through makes `qdiscs_made` qdiscs on the host veth. Returns
/// how many failed.
fn every_failing_add_rolls_back(limits: Value, qdiscs_made: usize) -> usize {
    let env = Env::new();
    let pod = env.node.pod();
    let prev = env.attach(&pod, "1.0.0");
    let veth = host_veth(&prev);
    let conf = with_prev(&env.bw_conf("1.0.0", limits), &prev);
    let wrappers = TempDir::new();
    for n in 1..=80 {
        let wrapper = sendto_failing_wrapper(wrappers.path(), "bandwidth", n, true);
        let out = env.bw_with(CniCall::add(&pod, conf.clone()), &wrapper);
        if out.success() {
            assert_eq!(qdiscs(&env.node, &veth).len(), qdiscs_made);
            return n - 1;
        }
        out.expect_error(100);
        assert!(qdiscs(&env.node, &veth).is_empty(), "failure {n}");
        assert!(ifbs(&env.node).is_empty(), "failure {n}");
    }
    panic!("the ADD never got through");
}

#[test]
#[ignore = "needs root"]
fn a_failing_add_leaves_no_ifb_and_no_qdisc() {
    if !require_root() {
        return;
    }
    let failed = every_failing_add_rolls_back(
        json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
               "egressRate": 8_000_000, "egressBurst": 80_000}),
        2,
    );
    assert!(
        failed >= 6,
        "only {failed} netlink calls failed: is strace injecting?"
    );
}

/// What libcni really sends for the `bandwidth` capability, and a full
/// ADD/CHECK/DEL through it.
#[test]
#[ignore = "needs root"]
fn libcni_runtime_config_shapes_and_tears_down() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let capture = TempDir::new();
    let list = conflist(
        "1.0.0",
        NET,
        vec![
            bridge_plugin(
                BRIDGE,
                host_local_ipam(env.data.path(), subnet_range("10.244.7.0/24")),
            ),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
        ],
    );
    // A recording wrapper named like the plugin, first on CNI_PATH.
    let spy_dir = capture.join("bin");
    std::fs::create_dir(&spy_dir).unwrap();
    let log = capture.join("stdin.json");
    let spy = spy_dir.join("bandwidth");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = ADD ]; then tee {} | {}; else exec {}; fi\n",
            log.display(),
            plugin_path("bandwidth").display(),
            plugin_path("bandwidth").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut driver = Driver::new(&list, &[&spy_dir, &plugin_dir()]);
    driver.cap_args = Some(json!({"bandwidth": {
        "ingressRate": 2_000_000, "ingressBurst": 4_294_967_295u64,
        "egressRate": 3_000_000, "egressBurst": 4_294_967_295u64}}));
    let pod = env.node.pod();
    let result = driver.add(&env.node, &pod, "cid1", "eth0").expect_ok();
    let sent: Value = serde_json::from_str(&std::fs::read_to_string(&log).unwrap()).unwrap();
    assert_eq!(sent["runtimeConfig"]["bandwidth"]["egressRate"], 3_000_000);
    // libcni 1.1.2 passes the plugin's `capabilities` on, although the
    // spec says it must not; the plugin ignores the key.
    assert_eq!(sent["capabilities"], json!({"bandwidth": true}), "{sent}");
    assert!(sent.get("prevResult").is_some());
    let veth = host_veth(&sent["prevResult"]);
    let q = qdiscs(&env.node, &veth);
    assert!(q.iter().any(|q| q["kind"] == "tbf"), "{q:?}");
    assert!(result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"].as_str().unwrap().starts_with("bwp")));
    driver.check(&env.node, &pod, "cid1", "eth0").expect_ok();
    driver
        .del(&env.node, Some(&pod), "cid1", "eth0")
        .expect_ok();
    assert!(ifbs(&env.node).is_empty());
    assert_no_veths(&env.node);
}

/// shapedSubnets: only traffic from/to these CIDRs is shaped. unshapedSubnets:
/// everything but. Pod A is shaped, pod B and the node (the bridge's
/// gateway addresses) are the two far ends; each pair is measured both
/// ways, the shaped pair over IPv4 and IPv6.
#[test]
#[ignore = "needs root"]
fn subnets_shape_only_the_selected_far_ends_both_ways_both_families() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let a = env.node.pod();
    let b = env.node.pod();
    let prev = env.attach_dual(&a);
    let prev_b = env.attach_dual(&b);
    let (a4, a6) = (pod_ip_n(&prev, 0), pod_ip_n(&prev, 1));
    let (b4, b6) = (pod_ip_n(&prev_b, 0), pod_ip_n(&prev_b, 1));
    let ingress = 30_000_000u64;
    let egress = 20_000_000u64;
    let rates = json!({"ingressRate": ingress, "ingressBurst": 400_000,
                       "egressRate": egress, "egressBurst": 400_000});
    let modes = [
        json!({"shapedSubnets": [format!("{b4}/32"), format!("{b6}/128")]}),
        json!({"unshapedSubnets": [format!("{NODE_V4}/32"), format!("{NODE_V6}/128")]}),
    ];
    for mode in modes {
        let conf = with_prev(&env.bw_conf("1.0.0", merged(&rates, mode.clone())), &prev);
        let result = env.bw(CniCall::add(&a, conf.clone())).expect_ok();
        let check = with_prev(&conf, &result);
        env.bw(CniCall::check(&a, check.clone())).expect_ok();
        for a_ip in [&a4, &a6] {
            // B sends into A; A's server sends to B (-R).
            assert_shaped_within_10_percent(ingress as f64, &format!("{mode} into {a_ip}"), || {
                iperf(&b, &a, a_ip, false)
            });
            assert_shaped_within_10_percent(
                egress as f64,
                &format!("{mode} out of {a_ip}"),
                || iperf(&b, &a, a_ip, true),
            );
        }
        // The node is not shaped: well above both rates either way.
        let into = iperf(&env.node, &a, &a4, false).expect("iperf3 node -> pod A");
        let out = iperf(&env.node, &a, &a4, true).expect("iperf3 pod A -> node");
        eprintln!("{mode}: node -> pod A {into:.0} bit/s, back {out:.0} bit/s");
        for (what, bits) in [("into", into), ("out of", out)] {
            assert!(
                bits > 3.0 * ingress as f64,
                "{mode}: node {what} the pod only {bits:.0} bit/s: it is shaped"
            );
        }
        env.bw(CniCall::del(&a, check)).expect_ok();
        assert!(qdiscs(&env.node, &host_veth(&prev)).is_empty(), "{mode}");
        assert!(ifbs(&env.node).is_empty(), "{mode}");
    }
}

/// The tree on each device, CHECK catching a missing classifier, leaf or
/// class, and DEL leaving nothing.
#[test]
#[ignore = "needs root"]
fn check_verifies_the_subnet_classes_and_filters() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let prev = env.attach(&pod, "1.0.0");
    let veth = host_veth(&prev);
    let limits = json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
                        "egressRate": 4_000_000, "egressBurst": 80_000,
                        "shapedSubnets": ["10.96.0.0/12", "fd00:96::/56"]});
    let conf = with_prev(&env.bw_conf("1.0.0", limits.clone()), &prev);
    let result = env.bw(CniCall::add(&pod, conf.clone())).expect_ok();
    let ifb = result["interfaces"].as_array().unwrap().last().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    for (dev, field) in [(&veth, "src"), (&ifb, "dst")] {
        let kinds: Vec<String> = qdiscs(&env.node, dev)
            .iter()
            .map(|q| {
                format!(
                    "{} {}",
                    q["kind"].as_str().unwrap(),
                    q["handle"].as_str().unwrap()
                )
            })
            .collect();
        for want in ["htb 1:", "tbf 30:", "pfifo 2:"] {
            assert!(kinds.contains(&want.to_string()), "{dev}: {kinds:?}");
        }
        let classes = env.node.sh(&format!("tc class show dev {dev}"));
        assert!(
            classes.contains("class htb 1:30 root leaf 30: prio 0 rate 100Gbit"),
            "{classes}"
        );
        assert!(
            classes.contains("class htb 1:1 root leaf 2: prio 0 rate 100Gbit"),
            "{classes}"
        );
        let filters = env.node.sh(&format!("tc filter show dev {dev} parent 1:"));
        assert_eq!(filters.matches("flowid 1:30").count(), 2, "{filters}");
        // 10.96.0.0/12 as one key on the source (12) or destination (16).
        let off = if field == "src" { 12 } else { 16 };
        assert!(
            filters.contains(&format!("match 0a600000/fff00000 at {off}")),
            "{filters}"
        );
    }
    let check = with_prev(&conf, &result);
    env.bw(CniCall::check(&pod, check.clone())).expect_ok();
    // The same CIDRs as unshapedSubnets are another tree.
    let mut other = check.clone();
    other["unshapedSubnets"] = other["shapedSubnets"].take();
    env.bw(CniCall::check(&pod, other)).expect_error(105);
    for (dev, break_it) in [
        (&ifb, format!("tc filter del dev {ifb} parent 1: prio 2")),
        (
            &veth,
            format!("tc qdisc del dev {veth} parent 1:30 handle 30:"),
        ),
        (&veth, format!("tc class del dev {veth} classid 1:1")),
    ] {
        env.bw(CniCall::add(&pod, conf.clone())).expect_ok();
        env.bw(CniCall::check(&pod, check.clone())).expect_ok();
        env.node.sh(&break_it);
        env.bw(CniCall::check(&pod, check.clone()))
            .expect_error(105);
        assert!(!qdiscs(&env.node, dev).is_empty());
    }
    // A repeated ADD without the subnets turns both trees back into tbfs.
    let mut plain = conf.clone();
    plain.as_object_mut().unwrap().remove("shapedSubnets");
    let result = env.bw(CniCall::add(&pod, plain.clone())).expect_ok();
    env.bw(CniCall::check(&pod, with_prev(&plain, &result)))
        .expect_ok();
    assert_eq!(qdiscs(&env.node, &ifb)[0]["kind"], "tbf");
    env.bw(CniCall::del(&pod, check.clone())).expect_ok();
    assert!(qdiscs(&env.node, &veth).is_empty());
    assert!(ifbs(&env.node).is_empty());
}

/// The same with unshapedSubnets: the HTB trees' classes, leaves and
/// classifiers are as many more failure points.
#[test]
#[ignore = "needs root"]
fn a_failing_subnet_add_leaves_nothing() {
    if !require_root() {
        return;
    }
    // On the veth: htb, its two leaves and the ingress qdisc.
    let failed = every_failing_add_rolls_back(
        json!({"ingressRate": 8_000_000, "ingressBurst": 80_000,
               "egressRate": 8_000_000, "egressBurst": 80_000,
               "unshapedSubnets": ["10.244.0.0/16", "fd00::/8"]}),
        4,
    );
    assert!(
        failed >= 20,
        "only {failed} netlink calls failed: is strace injecting?"
    );
}
