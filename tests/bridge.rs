//! Black-box tests of weft's `bridge` plugin (with weft's `host-local` as
//! IPAM): every CNI command, every supported cniVersion, the options, and
//! rollback of failed ADDs, asserted against live kernel state (`ip -j`,
//! sysfs, `nft -j`) and the host-local store on disk.
//!
//! Each test builds its own node netns (so the fixed bridge name `cni0` is
//! private to it) and its own dataDir.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use serde_json::{json, Value};
use weft_tests::*;

/// The network name; also the store's subdirectory under dataDir.
const NET: &str = "weftnet";
const BRIDGE: &str = "cni0";
const SUBNET: &str = "10.244.1.0/24";
const GATEWAY: &str = "10.244.1.1";
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const CHECK_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

// ---------------------------------------------------------------------------
// Fixture and helpers
// ---------------------------------------------------------------------------

/// weft's bridge in one node netns (the shared [`BridgeEnv`]) plus this
/// suite's configs and leak checks.
struct Env(BridgeEnv);

impl std::ops::Deref for Env {
    type Target = BridgeEnv;
    fn deref(&self) -> &BridgeEnv {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(BridgeEnv::new(NET))
    }

    /// A bridge + host-local network on `subnet` with a default route from
    /// IPAM and `isGateway`, in `version`.
    fn conf_on(&self, version: &str, subnet: &str) -> Value {
        network(
            version,
            NET,
            bridge_plugin(
                BRIDGE,
                host_local_ipam(self.data.path(), subnet_range(subnet)),
            ),
        )
    }

    fn conf(&self, version: &str) -> Value {
        self.conf_on(version, SUBNET)
    }

    /// Contents of the reservation file of `ip`.
    fn reservation(&self, ip: IpAddr) -> Option<String> {
        self.store_file(&ip.to_string())
    }

    fn host_veth_names(&self) -> Vec<String> {
        veth_names(&self.node)
    }

    /// The firewall rules (any table) whose comment names `container_id`.
    fn rules_tagged(&self, container_id: &str) -> Vec<Value> {
        nft_rules(&self.node)
            .into_iter()
            .filter(|rule| {
                rule["comment"]
                    .as_str()
                    .is_some_and(|c| c.contains(container_id))
            })
            .collect()
    }

    /// Waits until the node has no veth left (see [`assert_no_veths`]).
    #[track_caller]
    fn assert_no_veths(&self) {
        assert_no_veths(&self.node);
    }

    /// Asserts a failed ADD (or a DEL) left nothing for `pod`: no veth in
    /// the node, no `eth0` in the pod, no reservation, no firewall rule.
    #[track_caller]
    fn assert_nothing_left(&self, pod: &Netns) {
        self.assert_no_veths();
        eventually("eth0 is gone from the pod", || link(pod, "eth0").is_none());
        assert_eq!(
            self.reserved(),
            Vec::<IpAddr>::new(),
            "IP reservation leaked"
        );
        assert_eq!(
            self.rules_tagged(&container_id(pod)),
            Vec::<Value>::new(),
            "firewall rule left behind"
        );
    }
}

/// The first IP of an ADD result, without its prefix.
fn result_ip(result: &Value) -> IpAddr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    addr.split('/')
        .next()
        .unwrap()
        .parse()
        .expect("an IP address")
}

fn sysfs(ns: &Netns, path: &str) -> String {
    ns.sh(&format!("cat {path}")).trim().to_string()
}

// ---------------------------------------------------------------------------
// ADD in every version: result shape and live state
// ---------------------------------------------------------------------------

/// ADD with mtu 1400 in `version`, then checks the result and the kernel.
fn add_and_verify(version: &str) {
    let env = Env::new();
    let pod = env.node.pod();
    // Make the ip_forward assertion meaningful whatever the node inherited.
    env.node.sh("sysctl -qw net.ipv4.ip_forward=0");
    let conf = merged(&env.conf(version), json!({"mtu": 1400}));

    let r = env.add_ok(&pod, &conf);

    // Result shape.
    assert_eq!(r["cniVersion"], version, "{r}");
    let ifaces = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 3, "{r}");
    assert_eq!(ifaces[0]["name"], BRIDGE);
    let veth = host_veth(&r);
    assert!(veth.starts_with("veth"), "host veth name {veth}");
    for host_side in &ifaces[..2] {
        assert!(
            host_side["sandbox"].as_str().unwrap_or("").is_empty(),
            "host-side interface with a sandbox: {host_side}"
        );
        assert!(host_side["mac"].is_string(), "{host_side}");
    }
    assert_eq!(ifaces[2]["name"], "eth0");
    assert_eq!(ifaces[2]["sandbox"], pod.path_str());
    if version == "1.1.0" {
        assert_eq!(ifaces[2]["mtu"], 1400, "1.1.0 reports the mtu: {r}");
    } else {
        assert!(ifaces[2].get("mtu").is_none(), "mtu is new in 1.1.0: {r}");
    }
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 1, "{r}");
    assert_eq!(ips[0]["interface"], 2);
    assert_eq!(ips[0]["gateway"], GATEWAY);
    let address = ips[0]["address"].as_str().unwrap();
    assert!(
        address.starts_with("10.244.1.") && address.ends_with("/24"),
        "{address}"
    );
    if version < "1.0.0" {
        assert_eq!(
            ips[0]["version"], "4",
            "{version} tags IPs with a version: {r}"
        );
    } else {
        assert!(
            ips[0].get("version").is_none(),
            "{version} has no ips[].version: {r}"
        );
    }
    assert!(
        r["routes"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|x| x["dst"] == "0.0.0.0/0")),
        "IPAM's default route missing from the result: {r}"
    );

    // The pod.
    let eth0 = link(&pod, "eth0").expect("eth0 exists in the pod");
    assert_eq!(eth0["mtu"], 1400);
    assert_eq!(eth0["address"], ifaces[2]["mac"]);
    assert!(has_flag(&eth0, "UP"), "{eth0}");
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec![address.to_string()]);
    assert!(
        routes(&pod)
            .iter()
            .any(|rt| rt["dst"] == "default" && rt["gateway"] == GATEWAY && rt["dev"] == "eth0"),
        "no default route via {GATEWAY}: {:?}",
        routes(&pod)
    );

    // The node.
    let host = link(&env.node, &veth).expect("host veth exists in the node");
    assert_eq!(host["master"], BRIDGE);
    assert_eq!(host["mtu"], 1400);
    assert!(has_flag(&host, "UP"), "{host}");
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), vec![format!("{GATEWAY}/24")]);
    assert_eq!(sysfs(&env.node, "/proc/sys/net/ipv4/ip_forward"), "1");

    // The store.
    let ip = result_ip(&r);
    assert_eq!(env.reserved(), vec![ip]);
    assert_eq!(
        env.reservation(ip).as_deref(),
        Some(format!("{}\r\neth0", container_id(&pod)).as_str())
    );

    assert_ping(&pod, GATEWAY);
}

#[test]
#[ignore = "needs root"]
fn add_v0_3_0_result_and_live_state() {
    if !require_root() {
        return;
    }
    add_and_verify("0.3.0");
}

#[test]
#[ignore = "needs root"]
fn add_v0_3_1_result_and_live_state() {
    if !require_root() {
        return;
    }
    add_and_verify("0.3.1");
}

#[test]
#[ignore = "needs root"]
fn add_v0_4_0_result_and_live_state() {
    if !require_root() {
        return;
    }
    add_and_verify("0.4.0");
}

#[test]
#[ignore = "needs root"]
fn add_v1_0_0_result_and_live_state() {
    if !require_root() {
        return;
    }
    add_and_verify("1.0.0");
}

#[test]
#[ignore = "needs root"]
fn add_v1_1_0_result_and_live_state() {
    if !require_root() {
        return;
    }
    add_and_verify("1.1.0");
}

#[test]
#[ignore = "needs root"]
fn two_pods_share_the_bridge_and_reach_each_other() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.node.pod(), env.node.pod());
    let conf = env.conf("1.0.0");
    let ra = env.add_ok(&a, &conf);
    let rb = env.add_ok(&b, &conf);
    assert_ne!(result_ip(&ra), result_ip(&rb));
    assert_eq!(env.host_veth_names().len(), 2);
    assert_ping(&a, &result_ip(&rb).to_string());
}

// ---------------------------------------------------------------------------
// CHECK
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn check_passes_after_a_fresh_add() {
    if !require_root() {
        return;
    }
    for version in CHECK_VERSIONS {
        let env = Env::new();
        let pod = env.node.pod();
        let conf = env.conf(version);
        let r = env.add_ok(&pod, &conf);
        assert_eq!(
            env.check(&pod, &conf, &r).expect_ok(),
            Value::Null,
            "{version}"
        );
    }
}

/// ADD in 1.0.0, break something with `sabotage`, then CHECK must say 105.
fn check_detects(sabotage: impl Fn(&Env, &Netns, &Value)) {
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    let r = env.add_ok(&pod, &conf);
    env.check(&pod, &conf, &r).expect_ok();
    sabotage(&env, &pod, &r);
    env.check(&pod, &conf, &r).expect_error(105);
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_container_address_is_removed() {
    if !require_root() {
        return;
    }
    check_detects(|_, pod, r| {
        let addr = r["ips"][0]["address"].as_str().unwrap();
        pod.sh(&format!("ip addr del {addr} dev eth0"));
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_host_veth_is_deleted() {
    if !require_root() {
        return;
    }
    check_detects(|env, _, r| {
        env.node.sh(&format!("ip link del {}", host_veth(r)));
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_container_mac_changes() {
    if !require_root() {
        return;
    }
    check_detects(|_, pod, _| {
        pod.sh("ip link set eth0 address 02:de:ad:be:ef:01");
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_host_veth_leaves_the_bridge() {
    if !require_root() {
        return;
    }
    check_detects(|env, _, r| {
        env.node
            .sh(&format!("ip link set {} nomaster", host_veth(r)));
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_default_route_is_removed() {
    if !require_root() {
        return;
    }
    check_detects(|_, pod, _| {
        pod.sh("ip route del default");
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_ip_reservation_is_gone() {
    if !require_root() {
        return;
    }
    check_detects(|env, _, r| {
        std::fs::remove_file(env.store_dir().join(result_ip(r).to_string())).unwrap();
    });
}

#[test]
#[ignore = "needs root"]
fn check_below_0_4_0_is_an_incompatible_version() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    for version in ["0.3.0", "0.3.1"] {
        let conf = env.conf(version);
        let r = env.add_ok(&pod, &conf);
        env.check(&pod, &conf, &r).expect_error(1);
        env.del(&pod, &conf).expect_ok();
    }
}

// ---------------------------------------------------------------------------
// DEL
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn del_removes_the_veth_pair_and_releases_the_ip() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    let r = env.add_ok(&pod, &conf);
    assert_eq!(env.reserved(), vec![result_ip(&r)]);

    assert_eq!(
        env.run(&CniCall::del(&pod, with_prev(&conf, &r)))
            .expect_ok(),
        Value::Null
    );

    assert!(link(&pod, "eth0").is_none(), "eth0 still in the pod");
    env.assert_no_veths();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
    assert!(
        link(&env.node, BRIDGE).is_some(),
        "DEL never removes the bridge"
    );
}

#[test]
#[ignore = "needs root"]
fn add_then_del_leaves_nothing_in_every_version() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for version in VERSIONS {
        let pod = env.node.pod();
        let conf = env.conf(version);
        let r = env.add_ok(&pod, &conf);
        // DEL gets prevResult from 0.4.0 on.
        let del_conf = if version >= "0.4.0" {
            with_prev(&conf, &r)
        } else {
            conf
        };
        env.run(&CniCall::del(&pod, del_conf)).expect_ok();
        env.assert_nothing_left(&pod);
    }
}

#[test]
#[ignore = "needs root"]
fn del_is_idempotent() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    env.add_ok(&pod, &conf);
    env.del(&pod, &conf).expect_ok();
    env.del(&pod, &conf).expect_ok();
    env.assert_no_veths();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

#[test]
#[ignore = "needs root"]
fn del_of_an_attachment_never_added_succeeds() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    env.del(&pod, &env.conf("1.1.0")).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn del_after_the_pod_netns_is_gone_releases_the_ip() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    let r = env.add_ok(&pod, &conf);
    let del = CniCall::del(&pod, with_prev(&conf, &r));
    drop(pod);

    env.run(&del).expect_ok();

    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
    env.assert_no_veths();
}

#[test]
#[ignore = "needs root"]
fn del_without_cni_netns_releases_the_ip() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    env.add_ok(&pod, &conf);
    let mut del = CniCall::del(&pod, conf.clone());
    del.netns = None;

    env.run(&del).expect_ok();

    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
    // With no netns there is nothing the plugin can tear down in the pod;
    // a later DEL with the netns cleans the rest up.
    env.del(&pod, &conf).expect_ok();
    env.assert_no_veths();
}

// ---------------------------------------------------------------------------
// ipMasq
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn ip_masq_rule_exists_after_add_and_is_gone_after_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let cid = container_id(&pod);
    let conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    let r = env.add_ok(&pod, &conf);

    let rules = env.rules_tagged(&cid);
    assert!(!rules.is_empty(), "no nftables rule tagged with {cid}");
    let text = serde_json::to_string(&rules).unwrap();
    assert!(text.contains("masquerade"), "{text}");
    assert!(
        text.contains(&result_ip(&r).to_string()),
        "rule does not match the pod IP: {text}"
    );

    env.del(&pod, &conf).expect_ok();
    assert_eq!(env.rules_tagged(&cid), Vec::<Value>::new());
}

#[test]
#[ignore = "needs root"]
fn ip_masq_rule_is_removed_even_when_the_netns_is_gone_before_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let cid = container_id(&pod);
    let conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    let r = env.add_ok(&pod, &conf);
    assert!(!env.rules_tagged(&cid).is_empty());
    let del = CniCall::del(&pod, with_prev(&conf, &r));
    drop(pod);

    env.run(&del).expect_ok();

    assert_eq!(env.rules_tagged(&cid), Vec::<Value>::new());
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

#[test]
#[ignore = "needs root"]
fn ip_masq_rules_of_other_pods_survive_a_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.node.pod(), env.node.pod());
    let conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    env.add_ok(&a, &conf);
    env.add_ok(&b, &conf);
    env.del(&a, &conf).expect_ok();
    assert_eq!(env.rules_tagged(&container_id(&a)), Vec::<Value>::new());
    assert!(!env.rules_tagged(&container_id(&b)).is_empty());
}

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn is_default_gateway_adds_a_default_route_via_the_gateway() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = merged(
        &env.conf("1.0.0"),
        json!({"isGateway": false, "isDefaultGateway": true}),
    );
    conf["ipam"]["routes"] = json!([]);

    let r = env.add_ok(&pod, &conf);

    assert!(
        r["routes"].as_array().is_some_and(|rs| rs
            .iter()
            .any(|x| x["dst"] == "0.0.0.0/0" && x["gw"] == GATEWAY)),
        "no default route via {GATEWAY} in {r}"
    );
    assert!(
        routes(&pod)
            .iter()
            .any(|rt| rt["dst"] == "default" && rt["gateway"] == GATEWAY),
        "{:?}",
        routes(&pod)
    );
    // isDefaultGateway implies isGateway.
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), vec![format!("{GATEWAY}/24")]);
}

#[test]
#[ignore = "needs root"]
fn ipam_routes_are_installed_in_the_pod() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = env.conf("1.0.0");
    conf["ipam"]["routes"] = json!([{"dst": "10.244.128.0/17", "gw": "10.244.1.254"}]);

    env.add_ok(&pod, &conf);

    let all = routes(&pod);
    assert!(
        all.iter()
            .any(|rt| rt["dst"] == "10.244.128.0/17" && rt["gateway"] == "10.244.1.254"),
        "{all:?}"
    );
    assert!(
        !all.iter().any(|rt| rt["dst"] == "default"),
        "unexpected default route: {all:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn without_is_gateway_the_bridge_gets_no_address() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = merged(&env.conf("1.0.0"), json!({"isGateway": false}));
    conf["ipam"]["routes"] = json!([]);
    env.add_ok(&pod, &conf);
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), Vec::<String>::new());
}

#[test]
#[ignore = "needs root"]
fn mtu_applies_to_both_veth_ends_and_the_bridge() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(&env.conf("1.0.0"), json!({"mtu": 1280}));
    let r = env.add_ok(&pod, &conf);
    assert_eq!(link(&pod, "eth0").unwrap()["mtu"], 1280);
    assert_eq!(link(&env.node, &host_veth(&r)).unwrap()["mtu"], 1280);
    assert_eq!(link(&env.node, BRIDGE).unwrap()["mtu"], 1280);
}

#[test]
#[ignore = "needs root"]
fn hairpin_mode_sets_hairpin_on_the_bridge_port() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (plain, hairpin) = (env.node.pod(), env.node.pod());
    let conf = env.conf("1.0.0");
    let r_plain = env.add_ok(&plain, &conf);
    let r_hairpin = env.add_ok(&hairpin, &merged(&conf, json!({"hairpinMode": true})));
    let mode = |r: &Value| {
        sysfs(
            &env.node,
            &format!("/sys/class/net/{}/brport/hairpin_mode", host_veth(r)),
        )
    };
    assert_eq!(mode(&r_plain), "0");
    assert_eq!(mode(&r_hairpin), "1");
}

#[test]
#[ignore = "needs root"]
fn promisc_mode_puts_the_bridge_in_promiscuous_mode() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(&env.conf("1.0.0"), json!({"promiscMode": true}));
    let r = env.add_ok(&pod, &conf);
    let br = link(&env.node, BRIDGE).unwrap();
    assert!(
        has_flag(&br, "PROMISC") || br["promiscuity"].as_u64().unwrap_or(0) > 0,
        "bridge is not promiscuous: {br}"
    );
    env.check(&pod, &conf, &r).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn hairpin_and_promisc_together_are_rejected() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(
        &env.conf("1.0.0"),
        json!({"hairpinMode": true, "promiscMode": true}),
    );
    env.add(&pod, &conf).expect_error(7);
    env.assert_nothing_left(&pod);
}

/// ADD with `call` must give eth0 the MAC `mac`, in the result and live.
fn assert_mac_applied(env: &Env, pod: &Netns, call: &CniCall, mac: &str) {
    let r = env.run(call).expect_ok();
    assert_eq!(r["interfaces"][2]["mac"], mac, "{r}");
    assert_eq!(link(pod, "eth0").unwrap()["address"], mac);
}

#[test]
#[ignore = "needs root"]
fn mac_from_cni_args_is_applied() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mac = "02:42:0a:f4:01:99";
    let call = CniCall::add(&pod, env.conf("1.0.0"))
        .cni_args(&format!("IgnoreUnknown=1;K8S_POD_NAME=web;MAC={mac}"));
    assert_mac_applied(&env, &pod, &call, mac);
}

#[test]
#[ignore = "needs root"]
fn mac_from_runtime_config_is_applied() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mac = "02:42:0a:f4:01:9a";
    let conf = merged(&env.conf("1.0.0"), json!({"runtimeConfig": {"mac": mac}}));
    assert_mac_applied(&env, &pod, &CniCall::add(&pod, conf), mac);
}

#[test]
#[ignore = "needs root"]
fn runtime_config_mac_wins_over_cni_args() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mac = "02:42:0a:f4:01:9b";
    let conf = merged(&env.conf("1.0.0"), json!({"runtimeConfig": {"mac": mac}}));
    // IgnoreUnknown: host-local, which gets the same CNI_ARGS, knows no MAC.
    let call = CniCall::add(&pod, conf).cni_args("IgnoreUnknown=1;MAC=02:42:0a:f4:01:01");
    assert_mac_applied(&env, &pod, &call, mac);
}

#[test]
#[ignore = "needs root"]
fn a_non_bridge_link_named_like_the_bridge_is_a_config_error() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    env.node.sh(&format!(
        "ip link add {BRIDGE} type veth peer name {BRIDGE}p"
    ));

    env.add(&pod, &env.conf("1.0.0")).expect_error(7);

    assert!(link(&pod, "eth0").is_none(), "eth0 left behind in the pod");
    assert_eq!(
        env.reserved(),
        Vec::<IpAddr>::new(),
        "IP reservation leaked"
    );
    // Only the pre-existing veth pair, no pod veth.
    assert_eq!(
        env.host_veth_names().len(),
        2,
        "{:?}",
        env.host_veth_names()
    );
    let kept = link(&env.node, BRIDGE).expect("the veth named like the bridge is not removed");
    assert_eq!(
        kept.pointer("/linkinfo/info_kind").and_then(Value::as_str),
        Some("veth")
    );
}

#[test]
#[ignore = "needs root"]
fn an_existing_container_interface_is_already_exists() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    pod.sh("ip link add eth0 type veth peer name eth0p");

    env.add(&pod, &env.conf("1.0.0")).expect_error(103);

    assert_eq!(env.host_veth_names(), Vec::<String>::new());
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
    let kept = link(&pod, "eth0").expect("the pod's own eth0 is untouched");
    assert_eq!(
        kept["link"], "eth0p",
        "eth0 is still the pod's own veth: {kept}"
    );
    assert!(
        link(&env.node, BRIDGE).is_none(),
        "bridge left behind by a failed ADD"
    );
}

#[test]
#[ignore = "needs root"]
fn a_second_add_of_the_same_attachment_fails_and_keeps_the_first() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf("1.0.0");
    let r = env.add_ok(&pod, &conf);
    env.add(&pod, &conf).expect_error(103);
    assert_eq!(env.reserved(), vec![result_ip(&r)]);
    assert_eq!(env.host_veth_names(), vec![host_veth(&r)]);
    env.check(&pod, &conf, &r).expect_ok();
}

/// A node whose bridge already exists, up, with 10.244.1.5/24.
fn env_with_addressed_bridge() -> Env {
    let env = Env::new();
    env.node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add 10.244.1.5/24 dev {BRIDGE} && ip link set {BRIDGE} up"
    ));
    env
}

#[test]
#[ignore = "needs root"]
fn a_foreign_bridge_address_in_the_subnet_fails_without_force_address() {
    if !require_root() {
        return;
    }
    let env = env_with_addressed_bridge();
    let pod = env.node.pod();

    env.add(&pod, &env.conf("1.0.0")).expect_error(7);

    assert_eq!(
        ipv4_addrs(&env.node, BRIDGE),
        vec!["10.244.1.5/24".to_string()]
    );
    env.assert_nothing_left(&pod);
}

#[test]
#[ignore = "needs root"]
fn force_address_replaces_a_foreign_bridge_address() {
    if !require_root() {
        return;
    }
    let env = env_with_addressed_bridge();
    let pod = env.node.pod();

    env.add_ok(
        &pod,
        &merged(&env.conf("1.0.0"), json!({"forceAddress": true})),
    );

    assert_eq!(ipv4_addrs(&env.node, BRIDGE), vec![format!("{GATEWAY}/24")]);
    assert_ping(&pod, GATEWAY);
}

#[test]
#[ignore = "needs root"]
fn a_failed_add_never_deletes_a_pre_existing_bridge() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    // Created by an administrator, still down, with a conflicting address.
    env.node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip addr add 10.244.1.5/24 dev {BRIDGE}"
    ));

    env.add(&pod, &env.conf("1.0.0")).expect_error(7);

    assert!(
        link(&env.node, BRIDGE).is_some(),
        "the pre-existing bridge was deleted"
    );
    assert_eq!(
        ipv4_addrs(&env.node, BRIDGE),
        vec!["10.244.1.5/24".to_string()]
    );
}

// ---------------------------------------------------------------------------
// Rollback of failed ADDs
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn add_on_an_exhausted_range_fails_and_leaves_nothing() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (first, second) = (env.node.pod(), env.node.pod());
    // A /30 has one address besides the gateway (and the broadcast).
    let conf = merged(
        &env.conf_on("1.0.0", "10.244.1.0/30"),
        json!({"ipMasq": true}),
    );
    let r = env.add_ok(&first, &conf);
    assert_eq!(result_ip(&r).to_string(), "10.244.1.2");

    env.add(&second, &conf).expect_error(101);

    assert_eq!(
        env.host_veth_names(),
        vec![host_veth(&r)],
        "only the first pod's veth"
    );
    eventually("eth0 is gone from the second pod", || {
        link(&second, "eth0").is_none()
    });
    assert_eq!(env.reserved(), vec![result_ip(&r)], "no new reservation");
    assert_eq!(
        env.rules_tagged(&container_id(&second)),
        Vec::<Value>::new()
    );
    // The first pod is untouched.
    env.check(&first, &conf, &r).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn add_with_a_route_the_kernel_refuses_rolls_everything_back() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    // The gateway lies outside every subnet the pod is on: unreachable.
    conf["ipam"]["routes"] = json!([{"dst": "10.244.128.0/17", "gw": "10.244.99.1"}]);

    env.add(&pod, &conf).expect_error(100);

    env.assert_nothing_left(&pod);
}

// ---------------------------------------------------------------------------
// GC, STATUS, VERSION (1.1.0)
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn gc_releases_attachments_missing_from_valid_attachments() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (keep, stale) = (env.node.pod(), env.node.pod());
    let conf = merged(&env.conf("1.1.0"), json!({"ipMasq": true}));
    let r_keep = env.add_ok(&keep, &conf);
    let r_stale = env.add_ok(&stale, &conf);
    assert_eq!(env.reserved().len(), 2);
    assert!(!env.rules_tagged(&container_id(&stale)).is_empty());

    let gc = merged(
        &conf,
        json!({"cni.dev/valid-attachments": [{"containerID": container_id(&keep), "ifname": "eth0"}]}),
    );
    assert_eq!(env.run(&CniCall::gc(gc)).expect_ok(), Value::Null);

    assert_eq!(env.reserved(), vec![result_ip(&r_keep)]);
    assert!(env.reservation(result_ip(&r_stale)).is_none());
    // The stale attachment's host veth and masquerade rule go too; the
    // valid one's stay.
    assert_eq!(env.host_veth_names(), vec![host_veth(&r_keep)]);
    assert_eq!(env.rules_tagged(&container_id(&stale)), Vec::<Value>::new());
    assert!(!env.rules_tagged(&container_id(&keep)).is_empty());
    env.check(&keep, &conf, &r_keep).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn gc_below_1_1_0_is_an_incompatible_version() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    env.run(&CniCall::gc(env.conf("1.0.0"))).expect_error(1);
}

#[test]
#[ignore = "needs root"]
fn status_is_ok_on_a_fresh_network() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    assert_eq!(
        env.run(&CniCall::status(env.conf("1.1.0"))).expect_ok(),
        Value::Null
    );
}

#[test]
#[ignore = "needs root"]
fn status_reports_not_available_when_the_range_is_exhausted() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.conf_on("1.1.0", "10.244.1.0/30");
    env.run(&CniCall::status(conf.clone())).expect_ok();
    env.add_ok(&pod, &conf);

    env.run(&CniCall::status(conf.clone())).expect_error(50);

    env.del(&pod, &conf).expect_ok();
    env.run(&CniCall::status(conf)).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn version_lists_the_five_supported_versions() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let out = env
        .run(&CniCall::version(json!({"cniVersion": "1.0.0"})))
        .expect_ok();
    assert_eq!(out["supportedVersions"], json!(VERSIONS));
    assert_eq!(out["cniVersion"], "1.0.0");
}

#[test]
#[ignore = "needs root"]
fn unsupported_cni_version_is_rejected() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    for version in ["0.2.0", "1.2.0"] {
        env.add(&pod, &env.conf(version)).expect_error(1);
    }
    env.assert_nothing_left(&pod);
}

// ---------------------------------------------------------------------------
// Regressions: unpinned bridge MAC, firewall keys, iptables, CNI_ARGS on
// DEL, rollback of any netlink failure, unsupported fields, CHECK of rules
// ---------------------------------------------------------------------------

/// The nft rules (any table) whose JSON mentions `needle` (a pod IP or a
/// host veth name, quoted so 10.244.1.2 does not match 10.244.1.20).
fn rules_mentioning(node: &Netns, needle: &str) -> Vec<Value> {
    let quoted = format!("\"{needle}\"");
    nft_rules(node)
        .into_iter()
        .filter(|r| r.to_string().contains(&quoted))
        .collect()
}

/// The rules of weft's own nft tables.
fn weft_nft_rules(node: &Netns) -> Vec<Value> {
    nft_rules(node)
        .into_iter()
        .filter(|r| r["table"].as_str().is_some_and(|t| t.starts_with("weft_")))
        .collect()
}

/// The lines of the node's `iptables -t nat -S` (or ip6tables) that
/// mention weft's per-attachment chains.
fn iptables_weft_lines(node: &Netns, v6: bool) -> Vec<String> {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    node.sh(&format!("{tool} -w -t nat -S"))
        .lines()
        .filter(|l| l.contains("WEFT-MASQ"))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root"]
fn check_passes_on_an_unpinned_bridge_after_its_lowest_port_leaves() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (a, b) = (env.node.pod(), env.node.pod());
    let mut conf = merged(&env.conf("1.0.0"), json!({"isGateway": false}));
    conf["ipam"]["routes"] = json!([]);
    let ra = env.add_ok(&a, &conf);
    // Make A's port the lowest MAC, so the bridge takes it while A is there.
    let low = "02:00:00:00:00:01";
    env.node
        .sh(&format!("ip link set {} address {low}", host_veth(&ra)));
    let rb = env.add_ok(&b, &conf);
    assert_eq!(rb["interfaces"][0]["mac"], low, "{rb}");

    env.del(&a, &conf).expect_ok();
    eventually("A's host veth is gone", || {
        link(&env.node, &host_veth(&ra)).is_none()
    });
    assert_ne!(link(&env.node, BRIDGE).unwrap()["address"], low);

    env.check(&b, &conf, &rb).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn ip_masq_and_macspoofchk_work_with_long_names() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let net = format!("weft-{}", "n".repeat(95));
    let cid = "c".repeat(64);
    let conf = network(
        "1.0.0",
        &net,
        merged(
            &bridge_plugin(
                BRIDGE,
                host_local_ipam(env.data.path(), subnet_range(SUBNET)),
            ),
            json!({"ipMasq": true, "macspoofchk": true}),
        ),
    );

    let r = env
        .run(&CniCall::add(&pod, conf.clone()).container_id(&cid))
        .expect_ok();

    let rules = weft_nft_rules(&env.node);
    assert_eq!(
        rules.len(),
        2,
        "one masquerade and one spoof rule: {rules:?}"
    );
    for rule in &rules {
        let comment = rule["comment"].as_str().unwrap_or("");
        assert!(comment.len() <= 128, "comment too long: {comment}");
    }
    env.run(&CniCall::check(&pod, with_prev(&conf, &r)).container_id(&cid))
        .expect_ok();

    env.run(&CniCall::del(&pod, conf).container_id(&cid))
        .expect_ok();
    assert_eq!(weft_nft_rules(&env.node), Vec::<Value>::new());
    assert_eq!(reserved_addrs(env.data.path(), &net), Vec::<IpAddr>::new());
    env.assert_no_veths();
}

#[test]
#[ignore = "needs root"]
fn two_attachments_of_one_container_keep_separate_firewall_rules() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let cid = container_id(&pod);
    let mut conf = merged(
        &env.conf("1.1.0"),
        json!({"ipMasq": true, "macspoofchk": true}),
    );
    // Both attachments would want the one default route.
    conf["ipam"]["routes"] = json!([]);
    let add = |ifname: &str| {
        env.run(&CniCall::add(&pod, conf.clone()).ifname(ifname))
            .expect_ok()
    };
    // Each attachment's rules: its masquerade rule (by address) and its
    // spoof check (by host veth).
    let rules_of = |r: &Value| {
        let mut rules = rules_mentioning(&env.node, &result_ip(r).to_string());
        rules.extend(rules_mentioning(&env.node, &host_veth(r)));
        rules
    };
    let r0 = add("eth0");
    let r1 = add("eth1");
    assert_eq!(rules_of(&r0).len(), 2, "{:?}", nft_rules(&env.node));
    assert_eq!(rules_of(&r1).len(), 2, "{:?}", nft_rules(&env.node));

    env.run(&CniCall::del(&pod, conf.clone()).ifname("eth0"))
        .expect_ok();
    assert_eq!(rules_of(&r0), Vec::<Value>::new());
    assert_eq!(rules_of(&r1).len(), 2, "DEL of eth0 removed eth1's rules");
    env.run(&CniCall::check(&pod, with_prev(&conf, &r1)).ifname("eth1"))
        .expect_ok();

    // GC keeps (cid, eth1) only: eth0's rules go although the container is valid.
    let r0 = add("eth0");
    let gc = merged(
        &conf,
        json!({"cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth1"}]}),
    );
    env.run(&CniCall::gc(gc)).expect_ok();
    assert_eq!(rules_of(&r0), Vec::<Value>::new());
    assert_eq!(
        rules_of(&r1).len(),
        2,
        "GC removed the valid attachment's rules"
    );
}

#[test]
#[ignore = "needs root"]
fn iptables_masq_covers_every_address_of_a_family_and_del_removes_it() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = merged(
        &env.conf("1.0.0"),
        json!({"ipMasq": true, "ipMasqBackend": "iptables"}),
    );
    conf["ipam"]["ranges"] = json!([[subnet_range(SUBNET)], [subnet_range("10.244.2.0/24")]]);
    let r = env.add_ok(&pod, &conf);
    assert_eq!(r["ips"].as_array().map(Vec::len), Some(2), "{r}");

    let lines = iptables_weft_lines(&env.node, false);
    for want in [
        "-d 10.244.1.0/24 -j ACCEPT",
        "-d 10.244.2.0/24 -j ACCEPT",
        "-j MASQUERADE",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "no `{want}` in {lines:#?}"
        );
    }
    let jumps = lines
        .iter()
        .filter(|l| l.starts_with("-A POSTROUTING"))
        .count();
    assert_eq!(jumps, 2, "{lines:#?}");
    env.check(&pod, &conf, &r).expect_ok();

    env.del(&pod, &conf).expect_ok();
    assert_eq!(iptables_weft_lines(&env.node, false), Vec::<String>::new());
    assert_eq!(iptables_weft_lines(&env.node, true), Vec::<String>::new());
    env.assert_nothing_left(&pod);
}

#[test]
#[ignore = "needs root"]
fn iptables_masq_gc_removes_ipv6_chains() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut conf = merged(
        &env.conf_on("1.1.0", "fd00:10:244:1::/64"),
        json!({"ipMasq": true, "ipMasqBackend": "iptables"}),
    );
    conf["ipam"]["routes"] = json!([{"dst": "::/0"}]);
    env.add_ok(&pod, &conf);
    assert!(!iptables_weft_lines(&env.node, true).is_empty());

    let gc = merged(&conf, json!({"cni.dev/valid-attachments": []}));
    env.run(&CniCall::gc(gc)).expect_ok();

    assert_eq!(iptables_weft_lines(&env.node, true), Vec::<String>::new());
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

#[test]
#[ignore = "needs root"]
fn del_and_check_ignore_cni_args_add_would_refuse() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    for args in ["FOO=x", "IgnoreUnknown=1;MAC=zz"] {
        let pod = env.node.pod();
        let r = env.add_ok(&pod, &conf);

        env.run(&CniCall::del(&pod, with_prev(&conf, &r)).cni_args(args))
            .expect_ok();

        env.assert_nothing_left(&pod);

        let pod = env.node.pod();
        let r = env.add_ok(&pod, &conf);
        env.run(&CniCall::check(&pod, with_prev(&conf, &r)).cni_args(args))
            .expect_ok();
        env.del(&pod, &conf).expect_ok();
    }
}

/// ADD with the n-th netlink request failing (every one the plugin makes is
/// a sendto; strace injects EIO), for n = 1, 2, ... until ADD gets through:
/// each failed ADD must leave nothing behind, including a bridge it made.
fn assert_rollback_on_each_netlink_failure(env: &Env, bridge_preexists: bool) {
    let wrappers = TempDir::new();
    let conf = merged(&env.conf("1.0.0"), json!({"ipMasq": true}));
    let mut failed = 0;
    for n in 1..=60 {
        let wrapper = sendto_failing_wrapper(wrappers.path(), "bridge", n, false);
        let pod = env.node.pod();
        let out = CniCall::add(&pod, conf.clone()).run_in(&env.node, &wrapper);
        if out.success() {
            env.del(&pod, &conf).expect_ok();
            env.assert_nothing_left(&pod);
            break;
        }
        failed += 1;
        assert_eq!(
            out.json.clone().unwrap_or_default()["code"],
            100,
            "failure {n}: {out:?}"
        );
        env.assert_nothing_left(&pod);
        assert_eq!(
            link(&env.node, BRIDGE).is_some(),
            bridge_preexists,
            "failure {n}: the bridge is left or gone"
        );
    }
    assert!(
        failed >= 8,
        "only {failed} netlink calls failed: is strace injecting?"
    );
}

#[test]
#[ignore = "needs root"]
fn add_rolls_back_whichever_netlink_call_fails() {
    if !require_root() {
        return;
    }
    assert_rollback_on_each_netlink_failure(&Env::new(), false);
}

#[test]
#[ignore = "needs root"]
fn add_on_an_existing_bridge_rolls_back_whichever_netlink_call_fails() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    env.node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip link set {BRIDGE} up"
    ));
    assert_rollback_on_each_netlink_failure(&env, true);
}

#[test]
#[ignore = "needs root"]
fn unsupported_fields_are_refused_with_code_2() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let mut l2 = env.conf("1.0.0");
    l2["ipam"] = json!({});
    for (conf, field) in [
        (
            merged(&env.conf("1.0.0"), json!({"vlanTrunk": [{"id": 5}]})),
            "vlanTrunk",
        ),
        (
            merged(
                &env.conf("1.0.0"),
                json!({"vlanTrunk": [{"minID": 2, "maxID": 9}]}),
            ),
            "vlanTrunk",
        ),
        (
            merged(&l2, json!({"disableContainerInterface": true})),
            "disableContainerInterface",
        ),
        (
            merged(&l2, json!({"disableContainerInterface": "yes"})),
            "disableContainerInterface",
        ),
    ] {
        let err = env.add(&pod, &conf).expect_error(2);
        assert!(err["msg"].as_str().unwrap_or("").contains(field), "{err}");
        env.assert_nothing_left(&pod);
    }
    // Absent, null and false are the defaults.
    for patch in [
        json!({"vlanTrunk": null, "disableContainerInterface": false}),
        json!({"disableContainerInterface": null}),
    ] {
        let conf = merged(&env.conf("1.0.0"), patch);
        env.add_ok(&pod, &conf);
        env.del(&pod, &conf).expect_ok();
    }
}

/// `check_detects` with `patch` applied to the config.
fn check_detects_with(patch: Value, sabotage: impl Fn(&Env, &Netns, &Value)) {
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(&env.conf("1.0.0"), patch);
    let r = env.add_ok(&pod, &conf);
    env.check(&pod, &conf, &r).expect_ok();
    sabotage(&env, &pod, &r);
    let err = env.check(&pod, &conf, &r).expect_error(105);
    assert!(err["msg"].as_str().unwrap_or("").contains("rules"), "{err}");
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_masquerade_rule_is_removed() {
    if !require_root() {
        return;
    }
    check_detects_with(json!({"ipMasq": true}), |env, _, _| {
        env.node
            .sh("nft flush chain inet weft_masquerade postrouting");
    });
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_iptables_masquerade_jump_is_removed() {
    if !require_root() {
        return;
    }
    check_detects_with(
        json!({"ipMasq": true, "ipMasqBackend": "iptables"}),
        |env, _, _| {
            env.node.sh("iptables -w -t nat -F POSTROUTING");
        },
    );
}

#[test]
#[ignore = "needs root"]
fn check_fails_when_the_spoof_check_rule_is_removed() {
    if !require_root() {
        return;
    }
    check_detects_with(json!({"macspoofchk": true}), |env, _, _| {
        env.node
            .sh("nft flush chain bridge weft_macspoof prerouting");
    });
}
