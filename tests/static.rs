//! The static IPAM plugin: standalone (against the reference
//! /usr/lib/cni/static, same config and CNI_ARGS, same result), every
//! spec version and command, and under bridge through CniCall and through
//! libcni (capability `ips`, CNI_ARGS `IP=` as podman sends them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "wtstatic";
const BRIDGE: &str = "wtbrs0";

fn static_ipam(addresses: Value) -> Value {
    json!({"type": "static", "addresses": addresses})
}

/// A result with Go's always-printed empty `dns` removed (weft leaves an
/// empty dns out from 1.0.0 on, as the spec's Go types do since 1.2).
fn normalized(mut v: Value) -> Value {
    if v.get("dns") == Some(&json!({})) {
        v.as_object_mut().unwrap().remove("dns");
    }
    v
}

/// (cniVersion, ipam and runtime keys, CNI_ARGS) that both implementations
/// accept; they must answer the same.
fn accepted_cases() -> Vec<(&'static str, Value, &'static str)> {
    let full = json!({"ipam": {"type": "static",
        "addresses": [{"address": "10.244.5.10/24", "gateway": "10.244.5.1"},
                      {"address": "fd00:5::10/64", "gateway": "fd00:5::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.1/8", "gw": "10.244.5.254"}],
        "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local",
                "search": ["svc.cluster.local"], "options": ["ndots:5"]}}});
    let one = json!({"ipam": static_ipam(json!([{"address": "10.244.5.10/24"}]))});
    let replaced = json!({"ipam": static_ipam(json!([{"address": "bogus"}])),
        "args": {"cni": {"ips": ["10.244.6.10/24"]}},
        "runtimeConfig": {"ips": ["10.244.7.10/24", "fd00:7::10/64"]}});
    let by_args = json!({"ipam": static_ipam(json!([{"address": "10.244.5.10/24"}])),
        "args": {"cni": {"ips": ["10.244.6.10/24"]}}, "runtimeConfig": {"ips": []}});
    let mut cases = Vec::new();
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0"] {
        cases.push((version, full.clone(), ""));
        cases.push((
            version,
            one.clone(),
            "IP=10.244.8.10/24,10.244.9.10/24;GATEWAY=10.244.8.1",
        ));
        cases.push((
            version,
            replaced.clone(),
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.244.8.10/24",
        ));
        cases.push((version, by_args.clone(), ""));
    }
    cases.push(("1.0.0", json!({"ipam": {"type": "static"}}), ""));
    cases.push((
        "1.0.0",
        json!({"ipam": static_ipam(json!([{"address": "10.244.5.0/24", "gateway": "10.9.9.9"}]))}),
        "",
    ));
    cases
}

fn add_with(
    node: &Node,
    pod: &Netns,
    plugin: &std::path::Path,
    conf: &Value,
    args: &str,
) -> CniOutput {
    let mut call = CniCall::add(pod, conf.clone());
    if !args.is_empty() {
        call = call.cni_args(args);
    }
    call.run_in(node, plugin)
}

#[test]
#[ignore = "needs root"]
fn standalone_add_matches_the_reference() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let go = reference_plugin_dir().join("static");
    for (version, keys, args) in accepted_cases() {
        let conf = merged(&keys, json!({"cniVersion": version, "name": NET}));
        let weft = add_with(&node, &pod, &plugin_path("static"), &conf, args).expect_ok();
        let reference = add_with(&node, &pod, &go, &conf, args).expect_ok();
        assert_eq!(
            normalized(weft.clone()),
            normalized(reference),
            "{version} {conf} CNI_ARGS={args}"
        );
        assert!(weft["ips"]
            .as_array()
            .is_none_or(|ips| ips.iter().all(|ip| ip.get("interface").is_none())));
    }
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_refused_by_both_with_a_spec_code_from_weft() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let go = reference_plugin_dir().join("static");
    let one = |address: Value| json!({"ipam": static_ipam(json!([address]))});
    let cases = [
        (
            one(json!({"address": "10.244.5.10"})),
            "",
            7,
            "ipam.addresses[0].address \"10.244.5.10\"",
        ),
        (
            one(json!({"address": "10.244.5.10/33"})),
            "",
            7,
            "ipam.addresses[0].address",
        ),
        (
            one(json!({"address": "10.244.5.10/24", "gateway": "nope"})),
            "",
            7,
            "ipam.addresses[0].gateway \"nope\"",
        ),
        (
            json!({"ipam": {"type": "static"}, "runtimeConfig": {"ips": ["10.1.1.1"]}}),
            "",
            7,
            "runtimeConfig.ips[0] \"10.1.1.1\"",
        ),
        (
            json!({"ipam": {"type": "static"}, "args": {"cni": {"ips": ["x/8"]}}}),
            "",
            7,
            "args.cni.ips[0]",
        ),
        (
            json!({"ipam": {"type": "static"}}),
            "IP=10.1.1.1",
            4,
            "CNI_ARGS IP \"10.1.1.1\"",
        ),
        (
            json!({"ipam": {"type": "static"}}),
            "K8S_POD_NAME=p",
            4,
            "K8S_POD_NAME",
        ),
        (json!({"type": "static"}), "", 7, "\"ipam\""),
    ];
    for (keys, args, code, needle) in cases {
        let conf = merged(&keys, json!({"cniVersion": "1.0.0", "name": NET}));
        let err = add_with(&node, &pod, &plugin_path("static"), &conf, args).expect_error(code);
        let msg = err["msg"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg} lacks {needle}");
        assert!(
            !add_with(&node, &pod, &go, &conf, args).success(),
            "Go accepted {conf} {args}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn every_version_and_command() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let bin = plugin_path("static");
    let ipam = static_ipam(json!([{"address": "10.244.5.10/24", "gateway": "10.244.5.1"}]));
    for version in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = json!({"cniVersion": version, "name": NET, "ipam": ipam});
        let result = CniCall::add(&pod, conf.clone())
            .run_in(&node, &bin)
            .expect_ok();
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["ips"][0]["address"], "10.244.5.10/24");
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version < "1.0.0",
            "{result}"
        );
        if version >= "0.4.0" {
            let check = with_prev(&conf, &result);
            assert_eq!(
                CniCall::check(&pod, check.clone())
                    .run_in(&node, &bin)
                    .expect_ok(),
                Value::Null
            );
            let mut wrong = result.clone();
            wrong["ips"][0]["address"] = json!("10.244.5.10/16");
            CniCall::check(&pod, with_prev(&conf, &wrong))
                .run_in(&node, &bin)
                .expect_error(105);
            CniCall::check(&pod, conf.clone())
                .run_in(&node, &bin)
                .expect_error(7);
        } else {
            CniCall::check(&pod, conf.clone())
                .run_in(&node, &bin)
                .expect_error(1);
        }
        // DEL is a no-op that succeeds, twice, with or without the netns.
        for _ in 0..2 {
            assert_eq!(
                CniCall::del(&pod, conf.clone())
                    .run_in(&node, &bin)
                    .expect_ok(),
                Value::Null
            );
        }
        let gone = CniCall::del(&pod, conf.clone()).netns("/run/netns/wt-gone");
        assert_eq!(gone.run_in(&node, &bin).expect_ok(), Value::Null);
        let gate = if version == "1.1.0" { None } else { Some(1) };
        for call in [CniCall::gc(conf.clone()), CniCall::status(conf.clone())] {
            let out = call.run_in(&node, &bin);
            match gate {
                None => assert_eq!(out.expect_ok(), Value::Null),
                Some(code) => drop(out.expect_error(code)),
            }
        }
        let v = CniCall::version(conf).run_in(&node, &bin).expect_ok();
        assert_eq!(v["cniVersion"], version);
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0")));
    }
    let bad = json!({"cniVersion": "1.1.0", "name": NET, "ipam": {"type": "static", "addresses": [{"address": "x"}]}});
    CniCall::status(bad).run_in(&node, &bin).expect_error(7);
}

/// bridge (isGateway) with static handing out `addresses` and a default route.
fn bridge_static(addresses: Value) -> Value {
    let ipam = json!({"type": "static", "addresses": addresses, "routes": [{"dst": "0.0.0.0/0"}]});
    bridge_plugin(BRIDGE, ipam)
}

#[test]
#[ignore = "needs root"]
fn bridge_with_static_matches_bridge_with_the_reference_static() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let addresses = json!([{"address": "10.244.5.10/24", "gateway": "10.244.5.1"}]);
    let conf = network("1.0.0", NET, bridge_static(addresses));
    let mut results = Vec::new();
    for dir in [plugin_dir(), reference_plugin_dir()] {
        let pod = node.pod();
        // weft's bridge either way; only static changes.
        let call = CniCall::add(&pod, conf.clone()).cni_path(&[&dir]);
        let result = call.run_in(&node, &plugin_path("bridge")).expect_ok();
        assert_eq!(ipv4_addrs(&pod, "eth0"), ["10.244.5.10/24"]);
        assert!(
            routes(&pod)
                .iter()
                .any(|r| r["dst"] == "default" && r["gateway"] == "10.244.5.1"),
            "{:?}",
            routes(&pod)
        );
        pod.sh("ping -c1 -W2 10.244.5.1 >/dev/null");
        let check = CniCall::check(&pod, with_prev(&conf, &result)).cni_path(&[&dir]);
        assert_eq!(
            check.run_in(&node, &plugin_path("bridge")).expect_ok(),
            Value::Null
        );
        let del = CniCall::del(&pod, with_prev(&conf, &result)).cni_path(&[&dir]);
        del.run_in(&node, &plugin_path("bridge")).expect_ok();
        results.push(result);
    }
    assert_no_veths(&node);
    assert_eq!(results[0]["ips"], results[1]["ips"]);
    assert_eq!(results[0]["routes"], results[1]["routes"]);
}

#[test]
#[ignore = "needs root"]
fn bridge_with_a_bad_static_config_leaves_nothing() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let conf = network(
        "1.0.0",
        NET,
        bridge_static(json!([{"address": "10.244.5.10"}])),
    );
    let out = CniCall::add(&pod, conf).run_in(&node, &plugin_path("bridge"));
    let err = out.expect_error(7);
    assert!(err["msg"].as_str().unwrap().contains("CIDR"), "{err}");
    assert!(link(&pod, "eth0").is_none());
    assert_no_veths(&node);
}

#[test]
#[ignore = "needs root"]
fn libcni_runs_bridge_and_static_with_ips_capability_and_cni_args() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let plugins = plugin_dir();
    let entry = merged(
        &bridge_static(json!([{"address": "10.244.5.10/24"}])),
        json!({"capabilities": {"ips": true}}),
    );
    let list = conflist("1.0.0", NET, vec![entry]);
    let mut net = Driver::new(&list, &[&plugins]);

    // podman: one static IP in CNI_ARGS IP=, more through the capability.
    net.cni_args = Some("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.6.10/24".into());
    let pod = node.pod();
    let result = net.add(&node, &pod, "c1", "eth0").expect_ok();
    let mut got: Vec<String> = ipv4_addrs(&pod, "eth0");
    got.sort();
    assert_eq!(got, ["10.244.5.10/24", "10.244.6.10/24"], "{result}");
    net.check(&node, &pod, "c1", "eth0").expect_ok();
    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();

    net.cap_args = Some(json!({"ips": ["10.244.7.10/24"]}));
    let pod2 = node.pod();
    let result = net.add(&node, &pod2, "c2", "eth0").expect_ok();
    assert_eq!(ipv4_addrs(&pod2, "eth0"), ["10.244.7.10/24"], "{result}");
    assert_eq!(
        result["ips"][0]["gateway"], "10.244.7.1",
        "bridge fills in isGateway's .1: {result}"
    );
    net.check(&node, &pod2, "c2", "eth0").expect_ok();
    net.del(&node, Some(&pod2), "c2", "eth0").expect_ok();
    net.del(&node, Some(&pod2), "c2", "eth0").expect_ok();
    assert_no_veths(&node);
}
