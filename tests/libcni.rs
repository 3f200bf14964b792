//! weft's plugins driven by a real CNI client: the Go libcni driver
//! (tests/libcni-driver) runs ADD, CHECK, DEL and GC on conflists exactly as
//! a container runtime (containerd, CRI-O) would, with its result cache,
//! capability args and CNI_ARGS.
//!
//! A runtime keeps the pod's `lo` in its own network list (containerd's
//! "loopback" list), so the tests use two conflists: bridge + host-local for
//! eth0 and loopback for lo.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "wtnet";
const BRIDGE: &str = "wtbr0";

/// The bridge plugin's entry of a conflist (no cniVersion/name: libcni
/// injects them): bridge `BRIDGE` with host-local on 10.244.<third>.0/24.
fn bridge_entry(data: &Path, third: u8) -> Value {
    let ipam = host_local_ipam(data, subnet_range(&format!("10.244.{third}.0/24")));
    merged(&bridge_plugin(BRIDGE, ipam), json!({"ipMasq": true}))
}

fn pod_network(data: &Path, third: u8) -> Value {
    conflist("1.0.0", NET, vec![bridge_entry(data, third)])
}

fn loopback_network() -> Value {
    conflist("1.0.0", "cni-loopback", vec![json!({"type": "loopback"})])
}

/// The host veths enslaved to `BRIDGE`.
fn bridge_ports(node: &Node) -> Vec<Value> {
    veths_on_host(node)
        .into_iter()
        .filter(|l| l["master"] == BRIDGE)
        .collect()
}

#[test]
#[ignore = "needs root"]
fn runtime_add_check_del_lifecycle() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let data = TempDir::new();
    let plugins = plugin_dir();
    let net = Driver::new(&pod_network(data.path(), 1), &[&plugins]);
    let lo = Driver::new(&loopback_network(), &[&plugins]);
    // What kubelet passes through containerd/CRI-O.
    let k8s_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                    K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=1234";
    let mut net = net;
    net.cni_args = Some(k8s_args.to_string());

    // ADD: loopback first, then the pod network (containerd's order).
    let lo_result = lo.add(&node, &pod, "c1", "lo").expect_ok();
    assert_eq!(lo_result["cniVersion"], "1.0.0");
    assert_eq!(lo_result["interfaces"][0]["name"], "lo");
    assert!(is_up(&pod, "lo"));
    assert!(ipv4_addrs(&pod, "lo").contains(&"127.0.0.1/8".to_string()));

    let result = net.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(result["cniVersion"], "1.0.0", "{result}");
    assert_eq!(result["ips"][0]["address"], "10.244.1.2/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.244.1.1", "{result}");
    assert_eq!(result["ips"][0]["interface"], 2, "{result}");
    assert!(
        result["ips"][0].get("version").is_none(),
        "1.0.0 has no ips[].version: {result}"
    );
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 3, "{result}");
    assert_eq!(ifaces[0]["name"], BRIDGE);
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pod.path_str());
    let host_veth = ifaces[1]["name"].as_str().unwrap().to_string();

    // libcni cached exactly what the plugin returned.
    let cached = net
        .cached(NET, "c1", "eth0")
        .expect("libcni caches the ADD result");
    assert_eq!(cached["result"], result, "cache: {cached}");
    assert_eq!(cached["netns"], pod.path_str());
    assert_eq!(cached["ifName"], "eth0");
    assert_eq!(cached["containerId"], "c1");
    assert!(lo.cached("cni-loopback", "c1", "lo").is_some());

    // Live state: address, MAC and default route in the pod; the host veth on
    // the bridge; the gateway on the bridge; the reservation on disk.
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.1.2/24"]);
    assert!(is_up(&pod, "eth0"));
    let eth0 = link(&pod, "eth0").unwrap();
    assert_eq!(eth0["address"], ifaces[2]["mac"], "{eth0}");
    assert!(routes(&pod)
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == "10.244.1.1" && r["dev"] == "eth0"));
    let ports = bridge_ports(&node);
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["ifname"], host_veth.as_str());
    assert!(is_up(&node, &host_veth));
    assert!(ipv4_addrs(&node, BRIDGE).contains(&"10.244.1.1/24".to_string()));
    assert_eq!(reserved_ips(data.path(), NET), vec!["10.244.1.2"]);
    assert_eq!(
        reservation(data.path(), NET, "10.244.1.2").unwrap(),
        "c1\r\neth0"
    );
    assert!(
        nft_ruleset(&node).contains("id=c1"),
        "ipMasq rule missing:\n{}",
        nft_ruleset(&node)
    );

    // CHECK passes on both lists.
    net.check(&node, &pod, "c1", "eth0").expect_ok();
    lo.check(&node, &pod, "c1", "lo").expect_ok();

    // CHECK notices a lost address (and its default route) ...
    pod.sh("ip addr del 10.244.1.2/24 dev eth0");
    let err = net.check(&node, &pod, "c1", "eth0").expect_error(105);
    assert!(err["msg"].as_str().unwrap().contains("10.244.1.2"), "{err}");
    // ... and passes again once it is restored.
    pod.sh("ip addr add 10.244.1.2/24 dev eth0 && ip route add default via 10.244.1.1");
    net.check(&node, &pod, "c1", "eth0").expect_ok();

    // DEL (reverse order) removes everything but the bridge.
    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    lo.del(&node, Some(&pod), "c1", "lo").expect_ok();
    assert!(link(&pod, "eth0").is_none());
    assert_no_veths(&node);
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert!(
        !nft_ruleset(&node).contains("id=c1"),
        "ipMasq rule left:\n{}",
        nft_ruleset(&node)
    );
    assert!(
        net.cached(NET, "c1", "eth0").is_none(),
        "libcni drops the cache on DEL"
    );
    assert!(!is_up(&pod, "lo"));
    assert!(link(&node, BRIDGE).is_some(), "the bridge is never removed");

    // A second DEL, with and without the netns, is fine.
    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    net.del(&node, None, "c1", "eth0").expect_ok();
    lo.del(&node, Some(&pod), "c1", "lo").expect_ok();

    // The attachment can be created again, with the next address.
    let again = net.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(again["ips"][0]["address"], "10.244.1.3/24");
    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    assert!(reserved_ips(data.path(), NET).is_empty());
}

#[test]
#[ignore = "needs root"]
fn del_after_the_pod_netns_is_gone_releases_everything() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let data = TempDir::new();
    let net = Driver::new(&pod_network(data.path(), 2), &[&plugin_dir()]);
    let pod = node.pod();
    net.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(reserved_ips(data.path(), NET), vec!["10.244.2.2"]);
    let pod_path = pod.path_str().to_string();
    // The runtime removed the sandbox first (crash, reboot): the veth pair
    // dies with the netns; DEL still must release the IP and the rules.
    drop(pod);
    assert!(!Path::new(&pod_path).exists());
    let out = net.run(
        &node,
        "del",
        &[
            "--container-id".into(),
            "c1".into(),
            "--ifname".into(),
            "eth0".into(),
            "--netns".into(),
            pod_path,
        ],
    );
    out.expect_ok();
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
    assert!(
        !nft_ruleset(&node).contains("id=c1"),
        "{}",
        nft_ruleset(&node)
    );
}

#[test]
#[ignore = "needs root"]
fn capability_args_set_ip_and_mac() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let data = TempDir::new();
    let mut bridge = bridge_entry(data.path(), 3);
    bridge["capabilities"] = json!({"ips": true, "mac": true});
    let mut net = Driver::new(&conflist("1.0.0", NET, vec![bridge]), &[&plugin_dir()]);
    net.cap_args = Some(json!({"ips": ["10.244.3.77/24"], "mac": "0a:58:0a:f4:03:4d"}));

    let result = net.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(result["ips"][0]["address"], "10.244.3.77/24", "{result}");
    assert_eq!(
        result["interfaces"][2]["mac"], "0a:58:0a:f4:03:4d",
        "{result}"
    );
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.3.77/24"]);
    assert_eq!(link(&pod, "eth0").unwrap()["address"], "0a:58:0a:f4:03:4d");
    assert_eq!(reserved_ips(data.path(), NET), vec!["10.244.3.77"]);
    net.check(&node, &pod, "c1", "eth0").expect_ok();
    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
}

#[test]
#[ignore = "needs root"]
fn gc_releases_stale_attachments_and_keeps_valid_ones() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let data = TempDir::new();
    let list = pod_network(data.path(), 4);
    let net = Driver::new(&list, &[&plugin_dir()]);
    let pods: Vec<Netns> = (0..3).map(|_| node.pod()).collect();
    for (i, pod) in pods.iter().enumerate() {
        net.add(&node, pod, &format!("c{i}"), "eth0").expect_ok();
    }
    assert_eq!(
        reserved_ips(data.path(), NET),
        vec!["10.244.4.2", "10.244.4.3", "10.244.4.4"]
    );
    assert_eq!(veths_on_host(&node).len(), 3);

    // c2's cache entry is lost (a runtime restarted with a fresh cache):
    // only the plugins' own GC can find it.
    let c2_cache = net.cache_dir.join(format!("results/{NET}-c2-eth0"));
    std::fs::remove_file(&c2_cache).unwrap();

    // GC keeping only c0. At 1.0.0 libcni just DELs the stale cached
    // attachment (c1); at 1.1.0 it also sends GC to the plugins.
    net.gc(&node, Some(&[("c0", "eth0")])).expect_ok();
    assert!(net.cached(NET, "c1", "eth0").is_none());
    assert!(link(&pods[1], "eth0").is_none());
    assert_eq!(
        reserved_ips(data.path(), NET),
        vec!["10.244.4.2", "10.244.4.4"]
    );

    let mut v11 = list.clone();
    v11["cniVersion"] = json!("1.1.0");
    net.set_conflist(&v11);
    net.gc(&node, Some(&[("c0", "eth0")])).expect_ok();
    // host-local released c2's address, bridge removed its host veth (and so
    // the pod end) and its masquerade rule.
    assert_eq!(reserved_ips(data.path(), NET), vec!["10.244.4.2"]);
    assert_veth_count(&node, 1);
    assert!(link(&pods[2], "eth0").is_none());
    let rules = nft_ruleset(&node);
    assert!(rules.contains("id=c0"), "{rules}");
    assert!(
        !rules.contains("id=c1") && !rules.contains("id=c2"),
        "{rules}"
    );
    // STATUS at 1.1.0 reaches weft's plugins (the reference ones reject it).
    net.status(&node).expect_ok();

    // The valid attachment is untouched.
    net.set_conflist(&list);
    net.check(&node, &pods[0], "c0", "eth0").expect_ok();
    assert_eq!(ipv4_addrs(&pods[0], "eth0"), vec!["10.244.4.2/24"]);

    // GC with an empty valid list releases everything.
    net.set_conflist(&v11);
    net.gc(&node, Some(&[])).expect_ok();
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
    assert!(!nft_ruleset(&node).contains("id=c0"));
}

#[test]
#[ignore = "needs root"]
fn disable_check_skips_check_but_not_add_or_del() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let data = TempDir::new();
    let mut list = pod_network(data.path(), 5);
    list["disableCheck"] = json!(true);
    let net = Driver::new(&list, &[&plugin_dir()]);
    net.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.5.2/24"]);

    // Break the attachment: with disableCheck the runtime never asks the
    // plugins, so CHECK still succeeds ...
    pod.sh("ip addr flush dev eth0");
    net.check(&node, &pod, "c1", "eth0").expect_ok();
    // ... while the same list without disableCheck reports it.
    list["disableCheck"] = json!(false);
    net.set_conflist(&list);
    net.check(&node, &pod, "c1", "eth0").expect_error(105);

    net.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
}
