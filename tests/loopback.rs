//! Black-box tests of weft's `loopback` plugin: ADD in every cniVersion
//! brings `lo` up and reports it (or passes prevResult through), DEL brings
//! it down and tolerates a vanished netns, CHECK reports a down `lo`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use weft_tests::*;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const CHECK_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

fn conf(version: &str) -> Value {
    network(version, "weftlo", json!({"type": "loopback"}))
}

/// `conf` carrying a previous result, as in a chain or on CHECK/DEL.
fn conf_with_prev(version: &str, prev: &Value) -> Value {
    with_prev(&conf(version), prev)
}

/// Runs weft's loopback inside `node` for `pod` (CNI_IFNAME `lo`, as
/// runtimes send it).
fn run(node: &Node, call: CniCall) -> CniOutput {
    call.ifname("lo").run_in(node, &plugin_path("loopback"))
}

fn lo_is_up(pod: &Netns) -> bool {
    has_flag(&link(pod, "lo").expect("every netns has lo"), "UP")
}

fn set_lo(pod: &Netns, state: &str) {
    pod.sh(&format!("ip link set lo {state}"));
}

/// A result as the bridge plugin would hand it down a chain, in `version`.
fn bridge_like_result(version: &str) -> Value {
    let mut ip = json!({"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2});
    if version < "1.0.0" {
        ip["version"] = json!("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
            {"name": "veth0123abcd", "mac": "8e:11:22:33:44:55"},
            {"name": "eth0", "mac": "0a:58:0a:f4:01:07", "sandbox": "/run/netns/somepod"}
        ],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    })
}

#[test]
#[ignore = "needs root"]
fn add_brings_lo_up_and_reports_it_in_every_version() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    for version in VERSIONS {
        let pod = node.pod();
        assert!(!lo_is_up(&pod), "a fresh netns starts with lo down");

        let r = run(&node, CniCall::add(&pod, conf(version))).expect_ok();

        assert!(lo_is_up(&pod), "{version}: lo is not up after ADD");
        assert_eq!(r["cniVersion"], version);
        let ifaces = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 1, "{version}: {r}");
        assert_eq!(ifaces[0]["name"], "lo");
        assert_eq!(ifaces[0]["mac"], "00:00:00:00:00:00");
        assert_eq!(ifaces[0]["sandbox"], pod.path_str());
        let v4 = r["ips"]
            .as_array()
            .and_then(|ips| ips.iter().find(|ip| ip["address"] == "127.0.0.1/8"))
            .unwrap_or_else(|| panic!("{version}: no 127.0.0.1/8 in {r}"));
        assert_eq!(v4["interface"], 0, "{version}: {r}");
        assert!(
            v4.get("gateway").is_none_or(Value::is_null),
            "{version}: {r}"
        );
        if version < "1.0.0" {
            assert_eq!(v4["version"], "4", "{version}: {r}");
        } else {
            assert!(v4.get("version").is_none(), "{version}: {r}");
        }
    }
}

#[test]
#[ignore = "needs root"]
fn add_passes_prev_result_through_unchanged() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    for version in VERSIONS {
        let pod = node.pod();
        let prev = bridge_like_result(version);

        let r = run(&node, CniCall::add(&pod, conf_with_prev(version, &prev))).expect_ok();

        assert_eq!(
            r, prev,
            "{version}: prevResult was not passed through unchanged"
        );
        assert!(
            lo_is_up(&pod),
            "{version}: lo is not up after a chained ADD"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn add_refuses_a_lo_with_a_non_loopback_address() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    pod.sh("ip addr add 10.244.9.9/32 dev lo");
    run(&node, CniCall::add(&pod, conf("1.0.0"))).expect_error(7);
}

#[test]
#[ignore = "needs root"]
fn add_ignores_cni_ifname() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let r = CniCall::add(&pod, conf("1.0.0"))
        .ifname("eth0")
        .run_in(&node, &plugin_path("loopback"))
        .expect_ok();
    assert_eq!(r["interfaces"][0]["name"], "lo");
    assert!(lo_is_up(&pod));
    assert!(link(&pod, "eth0").is_none());
}

#[test]
#[ignore = "needs root"]
fn del_sets_lo_down() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    for version in VERSIONS {
        let pod = node.pod();
        let r = run(&node, CniCall::add(&pod, conf(version))).expect_ok();
        assert!(lo_is_up(&pod));

        let out = run(&node, CniCall::del(&pod, conf_with_prev(version, &r))).expect_ok();

        assert_eq!(out, Value::Null, "DEL prints nothing");
        assert!(!lo_is_up(&pod), "{version}: lo still up after DEL");
        // A repeated DEL is fine.
        run(&node, CniCall::del(&pod, conf(version))).expect_ok();
    }
}

#[test]
#[ignore = "needs root"]
fn del_with_a_missing_netns_succeeds() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    run(&node, CniCall::add(&pod, conf("1.0.0"))).expect_ok();
    let del = CniCall::del(&pod, conf("1.0.0"));
    drop(pod);
    run(&node, del).expect_ok();
}

/// A runtime that crashed between unmounting the netns and unlinking its
/// file leaves a plain placeholder at CNI_NETNS: DEL must treat it as gone.
#[test]
#[ignore = "needs root"]
fn del_with_an_unmounted_netns_placeholder_succeeds() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    run(&node, CniCall::add(&pod, conf("1.0.0"))).expect_ok();
    let umount = std::process::Command::new("umount")
        .arg(&pod.path)
        .status()
        .unwrap();
    assert!(
        umount.success() && pod.path.is_file(),
        "placeholder file left at {}",
        pod.path.display()
    );
    run(&node, CniCall::del(&pod, conf("1.0.0"))).expect_ok();
    // ADD and CHECK still refuse it.
    run(&node, CniCall::add(&pod, conf("1.0.0"))).expect_error(4);
}

#[test]
#[ignore = "needs root"]
fn del_without_cni_netns_succeeds() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let mut del = CniCall::del(&pod, conf("1.0.0"));
    del.netns = None;
    run(&node, del).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn check_passes_while_lo_is_up() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    for version in CHECK_VERSIONS {
        let pod = node.pod();
        let r = run(&node, CniCall::add(&pod, conf(version))).expect_ok();
        let out = run(&node, CniCall::check(&pod, conf_with_prev(version, &r))).expect_ok();
        assert_eq!(out, Value::Null, "{version}: CHECK prints nothing");
    }
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_lo_is_down() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    for version in CHECK_VERSIONS {
        let pod = node.pod();
        let r = run(&node, CniCall::add(&pod, conf(version))).expect_ok();
        set_lo(&pod, "down");
        run(&node, CniCall::check(&pod, conf_with_prev(version, &r))).expect_error(105);
        set_lo(&pod, "up");
        run(&node, CniCall::check(&pod, conf_with_prev(version, &r))).expect_ok();
    }
}

#[test]
#[ignore = "needs root"]
fn check_below_0_4_0_is_an_incompatible_version() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    for version in ["0.3.0", "0.3.1"] {
        let r = run(&node, CniCall::add(&pod, conf(version))).expect_ok();
        run(&node, CniCall::check(&pod, conf_with_prev(version, &r))).expect_error(1);
    }
}

#[test]
#[ignore = "needs root"]
fn version_lists_the_five_supported_versions() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let out = run(&node, CniCall::version(json!({"cniVersion": "0.4.0"}))).expect_ok();
    assert_eq!(out["supportedVersions"], json!(VERSIONS));
    assert_eq!(out["cniVersion"], "0.4.0");
}
