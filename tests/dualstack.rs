//! IPv6 and dual-stack coverage of weft's `bridge` (with weft's `host-local`)
//! and of `host-local` on its own: results in 0.4.0 / 1.0.0, the addresses,
//! routes, sysctls and gateways in the kernel, DAD, reachability over v4 and
//! v6, CHECK / DEL / GC of both families, and host-local's IPv6 ranges
//! (rangeStart/rangeEnd, the all-ones rangeEnd, exhaustion, requested IPs).
//!
//! Pods use 10.244.0.0/16 and fd00:10:244::/48, only inside the namespaces
//! each test creates (its own node, so the bridge name `cni0` is private).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::OnceCell;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::*;

/// The network name; also the store's subdirectory under dataDir.
const NET: &str = "weftdual";
const BRIDGE: &str = "cni0";
const V4_SUBNET: &str = "10.244.2.0/24";
const V4_GW: &str = "10.244.2.1";
const V6_SUBNET: &str = "fd00:10:244:2::/64";
const V6_GW: &str = "fd00:10:244:2::1";

// ---------------------------------------------------------------------------
// Fixture and helpers
// ---------------------------------------------------------------------------

/// weft's bridge in one node netns (the shared [`BridgeEnv`]) plus this
/// suite's dual-stack configs and direct host-local calls.
struct Env {
    base: BridgeEnv,
    /// A pod netns passed as CNI_NETNS to host-local called directly (it
    /// refuses the node's own netns); created on first use.
    sandbox: OnceCell<Netns>,
}

impl std::ops::Deref for Env {
    type Target = BridgeEnv;
    fn deref(&self) -> &BridgeEnv {
        &self.base
    }
}

impl Env {
    fn new() -> Env {
        let env = Env {
            base: BridgeEnv::new(NET),
            sandbox: OnceCell::new(),
        };
        // Make the forwarding assertions meaningful whatever the node inherited.
        env.node
            .sh("sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0");
        env
    }

    /// host-local's `ipam` section with the given range sets and routes.
    fn ipam(&self, sets: Value, routes: Value) -> Value {
        json!({
            "type": "host-local",
            "dataDir": self.data.path(),
            "ranges": sets,
            "routes": routes
        })
    }

    /// Dual-stack bridge network: one v4 and one v6 range set, isGateway,
    /// isDefaultGateway, and default routes of both families from IPAM.
    fn dual_conf(&self, version: &str) -> Value {
        let ipam = self.ipam(
            json!([[subnet_range(V4_SUBNET)], [subnet_range(V6_SUBNET)]]),
            json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]),
        );
        network(
            version,
            NET,
            merged(
                &bridge_plugin(BRIDGE, ipam),
                json!({"isDefaultGateway": true}),
            ),
        )
    }

    /// IPv6-only bridge network with a v6 default route from IPAM.
    fn v6_conf(&self, version: &str) -> Value {
        let ipam = self.ipam(json!([[subnet_range(V6_SUBNET)]]), json!([{"dst": "::/0"}]));
        network(version, NET, bridge_plugin(BRIDGE, ipam))
    }

    /// A plain host-local network config (called directly, not via bridge).
    fn host_local_conf(&self, version: &str, sets: Value) -> Value {
        network(
            version,
            NET,
            json!({"type": "host-local", "ipam": self.ipam(sets, json!([]))}),
        )
    }

    /// host-local called directly for attachment (`id`, eth0), with one
    /// shared pod netns as CNI_NETNS (host-local never enters it).
    fn host_local(&self, command: &str, id: &str, conf: &Value) -> CniOutput {
        let sandbox = self.sandbox.get_or_init(|| self.node.pod());
        CniCall::new(command, conf.clone())
            .container_id(id)
            .netns(sandbox.path_str())
            .run_in(&self.node, &plugin_path("host-local"))
    }
}

/// The result's `ips[]` entry of the given family (exactly one expected).
fn result_entry(result: &Value, v6: bool) -> Value {
    let all: Vec<&Value> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .filter(|ip| ip["address"].as_str().expect("address").contains(':') == v6)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "one IPv{} entry expected: {result}",
        if v6 { 6 } else { 4 }
    );
    all[0].clone()
}

/// The address (without prefix) of the result's entry of that family.
fn result_ip(result: &Value, v6: bool) -> IpAddr {
    let entry = result_entry(result, v6);
    entry["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .expect("an IP address")
}

/// Every address of every family the result holds (sorted, no prefix).
fn result_ips(result: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    ips.sort();
    ips
}

/// The `addr_info` entries of `ifname` in `ns` of `family` ("inet"/"inet6")
/// with global scope.
fn global_addrs(ns: &Netns, ifname: &str, family: &str) -> Vec<Value> {
    addrs(ns)
        .into_iter()
        .filter(|l| l["ifname"] == ifname)
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == family && a["scope"] == "global")
        .collect()
}

/// `local/prefixlen` of the global IPv6 addresses of `ifname`.
fn ipv6_addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    global_addrs(ns, ifname, "inet6")
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The global IPv6 addresses of `ifname` that are still tentative or failed
/// DAD, as `addr (flags)`.
fn unsettled_v6(ns: &Netns, ifname: &str) -> Vec<String> {
    global_addrs(ns, ifname, "inet6")
        .iter()
        .filter(|a| a["tentative"] == true || a["dadfailed"] == true)
        .map(|a| a.to_string())
        .collect()
}

fn sysctl(ns: &Netns, key: &str) -> String {
    ns.sh(&format!("sysctl -n {key}")).trim().to_string()
}

/// The default route of the given family in `ns`, if any.
fn default_route(ns: &Netns, v6: bool) -> Option<Value> {
    let all = if v6 { routes6(ns) } else { routes(ns) };
    all.into_iter().find(|r| r["dst"] == "default")
}

/// Waits until the node's v6 gateway on the bridge has finished DAD (the
/// node side keeps the kernel default accept_dad=1).
fn wait_bridge_v6_settled(env: &Env) {
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
            unsettled_v6(&env.node, BRIDGE).is_empty()
        }),
        "bridge v6 gateway still tentative: {:?}",
        unsettled_v6(&env.node, BRIDGE)
    );
}

// ---------------------------------------------------------------------------
// Dual-stack ADD: result and live state, 0.4.0 and 1.0.0
// ---------------------------------------------------------------------------

fn dual_stack_add_and_verify(version: &str) {
    let env = Env::new();
    let (pod, other) = (env.node.pod(), env.node.pod());
    let conf = env.dual_conf(version);

    let r = env.add_ok(&pod, &conf);

    // Result: one v4 and one v6 IP on the container interface, with gateways.
    assert_eq!(r["cniVersion"], version, "{r}");
    assert_eq!(r["ips"].as_array().expect("ips").len(), 2, "{r}");
    let v4 = result_entry(&r, false);
    let v6 = result_entry(&r, true);
    assert_eq!(v4["address"], "10.244.2.2/24", "{r}");
    assert_eq!(v6["address"], "fd00:10:244:2::2/64", "{r}");
    assert_eq!(v4["gateway"], V4_GW, "{r}");
    assert_eq!(v6["gateway"], V6_GW, "{r}");
    assert_eq!(v4["interface"], 2, "{r}");
    assert_eq!(v6["interface"], 2, "{r}");
    if version == "0.4.0" {
        assert_eq!(v4["version"], "4", "{r}");
        assert_eq!(v6["version"], "6", "{r}");
    } else {
        assert!(
            v4.get("version").is_none(),
            "no `version` in {version}: {r}"
        );
        assert!(
            v6.get("version").is_none(),
            "no `version` in {version}: {r}"
        );
    }
    assert_eq!(r["interfaces"][2]["sandbox"], pod.path_str(), "{r}");
    // Default routes of both families: either from IPAM (no gw: the family's
    // gateway) or appended by isDefaultGateway (via the gateway).
    let result_routes = r["routes"].as_array().expect("routes");
    for (dst, gw) in [("0.0.0.0/0", V4_GW), ("::/0", V6_GW)] {
        let defaults: Vec<&Value> = result_routes.iter().filter(|rt| rt["dst"] == dst).collect();
        assert!(!defaults.is_empty(), "no {dst} route in the result: {r}");
        for d in defaults {
            assert!(
                d.get("gw").is_none() || d["gw"] == gw,
                "{dst} route via a foreign gateway: {r}"
            );
        }
    }

    // Pod: both addresses on eth0, the v6 one usable right away (DAD off).
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.2.2/24"]);
    assert_eq!(ipv6_addrs(&pod, "eth0"), vec!["fd00:10:244:2::2/64"]);
    assert_eq!(
        unsettled_v6(&pod, "eth0"),
        Vec::<String>::new(),
        "v6 address tentative after ADD"
    );
    assert!(is_up(&pod, "eth0"));
    assert_eq!(sysctl(&pod, "net.ipv6.conf.eth0.disable_ipv6"), "0");
    assert_eq!(sysctl(&pod, "net.ipv6.conf.lo.disable_ipv6"), "0");
    assert_eq!(sysctl(&pod, "net.ipv6.conf.eth0.keep_addr_on_down"), "1");
    assert_eq!(sysctl(&pod, "net.ipv6.conf.eth0.accept_dad"), "0");
    let d4 = default_route(&pod, false).expect("v4 default route in the pod");
    assert_eq!(d4["gateway"], V4_GW, "{d4}");
    assert_eq!(d4["dev"], "eth0", "{d4}");
    let d6 = default_route(&pod, true).expect("v6 default route in the pod");
    assert_eq!(d6["gateway"], V6_GW, "{d6}");
    assert_eq!(d6["dev"], "eth0", "{d6}");

    // Node: both gateways on the bridge, forwarding on for both families.
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), vec!["10.244.2.1/24"]);
    assert_eq!(ipv6_addrs(&env.node, BRIDGE), vec!["fd00:10:244:2::1/64"]);
    assert_eq!(sysctl(&env.node, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&env.node, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        link(&env.node, &host_veth(&r)).expect("host veth")["master"],
        BRIDGE
    );

    // Store: one reservation per family, both owned by (container, eth0).
    let owner = format!("{}\r\neth0", container_id(&pod));
    assert_eq!(env.reserved(), result_ips(&r));
    for ip in result_ips(&r) {
        assert_eq!(
            env.store_file(&ip.to_string()).as_deref(),
            Some(owner.as_str()),
            "{ip}"
        );
    }
    assert_eq!(
        env.store_file("last_reserved_ip.0").as_deref(),
        Some("10.244.2.2")
    );
    assert_eq!(
        env.store_file("last_reserved_ip.1").as_deref(),
        Some("fd00:10:244:2::2")
    );

    // CHECK passes on the fresh attachment.
    env.check(&pod, &conf, &r).expect_ok();

    // Reachability: gateways of both families and a second pod over both.
    let r2 = env.add_ok(&other, &conf);
    wait_bridge_v6_settled(&env);
    assert_ping(&pod, V4_GW);
    assert_ping(&pod, V6_GW);
    assert_ping(&pod, &result_ip(&r2, false).to_string());
    assert_ping(&pod, &result_ip(&r2, true).to_string());
    assert_ping(&other, &result_ip(&r, true).to_string());

    env.del(&pod, &conf).expect_ok();
    env.del(&other, &conf).expect_ok();
    assert_no_veths(&env.node);
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

#[test]
#[ignore = "needs root"]
fn dual_stack_add_v0_4_0_result_live_state_and_reachability() {
    if !require_root() {
        return;
    }
    dual_stack_add_and_verify("0.4.0");
}

#[test]
#[ignore = "needs root"]
fn dual_stack_add_v1_0_0_result_live_state_and_reachability() {
    if !require_root() {
        return;
    }
    dual_stack_add_and_verify("1.0.0");
}

// ---------------------------------------------------------------------------
// DAD
// ---------------------------------------------------------------------------

/// With enabledad the pod runs (enhanced) DAD on its v6 address. Like the
/// reference (ConfigureIface waits for tentative addresses to clear when a
/// v6 gateway exists), ADD must not return before the address is usable.
#[test]
#[ignore = "needs root"]
fn enabledad_add_returns_with_a_settled_v6_address() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(&env.dual_conf("1.0.0"), json!({"enabledad": true}));

    let r = env.add_ok(&pod, &conf);

    // Inspect before anything else can let time pass.
    let unsettled = unsettled_v6(&pod, "eth0");
    assert_eq!(ipv6_addrs(&pod, "eth0"), vec!["fd00:10:244:2::2/64"]);
    assert_eq!(sysctl(&pod, "net.ipv6.conf.eth0.accept_dad"), "1");
    assert_eq!(sysctl(&pod, "net.ipv6.conf.eth0.enhanced_dad"), "1");
    assert_eq!(
        unsettled,
        Vec::<String>::new(),
        "ADD returned while the pod's v6 address was still tentative"
    );
    wait_bridge_v6_settled(&env);
    assert_ping(&pod, V6_GW);
    env.check(&pod, &conf, &r).expect_ok();
    env.del(&pod, &conf).expect_ok();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

// ---------------------------------------------------------------------------
// IPv6-only
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn ipv6_only_network_add_check_ping_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, other) = (env.node.pod(), env.node.pod());
    let conf = env.v6_conf("1.0.0");

    let r = env.add_ok(&pod, &conf);

    assert_eq!(r["ips"].as_array().expect("ips").len(), 1, "{r}");
    let v6 = result_entry(&r, true);
    assert_eq!(v6["address"], "fd00:10:244:2::2/64", "{r}");
    assert_eq!(v6["gateway"], V6_GW, "{r}");
    assert_eq!(v6["interface"], 2, "{r}");
    assert_eq!(ipv6_addrs(&pod, "eth0"), vec!["fd00:10:244:2::2/64"]);
    assert_eq!(ipv4_addrs(&pod, "eth0"), Vec::<String>::new());
    assert_eq!(unsettled_v6(&pod, "eth0"), Vec::<String>::new());
    // IPAM's ::/0 has no gw: it goes via the v6 gateway.
    let d6 = default_route(&pod, true).expect("v6 default route in the pod");
    assert_eq!(d6["gateway"], V6_GW, "{d6}");
    assert_eq!(default_route(&pod, false), None, "no v4 default route");

    assert_eq!(ipv6_addrs(&env.node, BRIDGE), vec!["fd00:10:244:2::1/64"]);
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), Vec::<String>::new());
    assert_eq!(sysctl(&env.node, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(
        sysctl(&env.node, "net.ipv4.ip_forward"),
        "0",
        "v4 forwarding untouched"
    );
    assert_eq!(env.reserved(), result_ips(&r));

    env.check(&pod, &conf, &r).expect_ok();

    let r2 = env.add_ok(&other, &conf);
    assert_eq!(result_ip(&r2, true).to_string(), "fd00:10:244:2::3");
    wait_bridge_v6_settled(&env);
    assert_ping(&pod, V6_GW);
    assert_ping(&pod, "fd00:10:244:2::3");

    env.del(&pod, &conf).expect_ok();
    assert_eq!(env.reserved(), result_ips(&r2));
    env.del(&other, &conf).expect_ok();
    assert_no_veths(&env.node);
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

// ---------------------------------------------------------------------------
// CHECK, DEL, GC
// ---------------------------------------------------------------------------

fn dual_check_detects(sabotage: &str) {
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.dual_conf("1.0.0");
    let r = env.add_ok(&pod, &conf);
    env.check(&pod, &conf, &r).expect_ok();
    pod.sh(sabotage);
    env.check(&pod, &conf, &r).expect_error(105);
}

#[test]
#[ignore = "needs root"]
fn dual_stack_check_fails_when_the_v6_address_is_removed() {
    if !require_root() {
        return;
    }
    dual_check_detects("ip -6 addr del fd00:10:244:2::2/64 dev eth0");
}

#[test]
#[ignore = "needs root"]
fn dual_stack_check_fails_when_the_v6_default_route_is_removed() {
    if !require_root() {
        return;
    }
    dual_check_detects("ip -6 route del default");
}

#[test]
#[ignore = "needs root"]
fn dual_stack_check_fails_when_the_v6_reservation_is_gone() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = env.dual_conf("0.4.0");
    let r = env.add_ok(&pod, &conf);
    env.check(&pod, &conf, &r).expect_ok();
    std::fs::remove_file(store_dir(env.data.path(), NET).join(result_ip(&r, true).to_string()))
        .expect("remove the v6 reservation");
    // host-local's CHECK looks for the attachment in every range set; the
    // v4 file alone must not satisfy it.
    let out = env.check(&pod, &conf, &r);
    assert!(
        !out.success(),
        "CHECK passed although the v6 reservation is gone: {}",
        out.stdout
    );
}

#[test]
#[ignore = "needs root"]
fn dual_stack_del_releases_both_ips_and_removes_the_veth() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, keep) = (env.node.pod(), env.node.pod());
    let conf = env.dual_conf("1.0.0");
    let r_keep = env.add_ok(&keep, &conf);
    let r = env.add_ok(&pod, &conf);
    assert_eq!(env.reserved().len(), 4);

    env.del(&pod, &conf).expect_ok();

    assert_eq!(
        env.reserved(),
        result_ips(&r_keep),
        "only the other pod's IPs stay"
    );
    for ip in result_ips(&r) {
        assert_eq!(env.store_file(&ip.to_string()), None, "{ip} not released");
    }
    eventually("the pod's host veth is gone", || {
        veth_names(&env.node) == vec![host_veth(&r_keep)]
    });
    eventually("eth0 is gone from the pod", || link(&pod, "eth0").is_none());
    // The gateways stay on the bridge for the remaining pod.
    assert_eq!(ipv6_addrs(&env.node, BRIDGE), vec!["fd00:10:244:2::1/64"]);
    assert_eq!(ipv4_addrs(&env.node, BRIDGE), vec!["10.244.2.1/24"]);
    env.check(&keep, &conf, &r_keep).expect_ok();
    // DEL again is fine.
    env.del(&pod, &conf).expect_ok();
    assert_eq!(env.reserved(), result_ips(&r_keep));
}

#[test]
#[ignore = "needs root"]
fn dual_stack_gc_keeps_valid_and_releases_stale_attachments_of_both_families() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (keep, stale) = (env.node.pod(), env.node.pod());
    let conf = env.dual_conf("1.1.0");
    let r_keep = env.add_ok(&keep, &conf);
    let r_stale = env.add_ok(&stale, &conf);
    assert_eq!(env.reserved().len(), 4);

    let gc = merged(
        &conf,
        json!({"cni.dev/valid-attachments": [{"containerID": container_id(&keep), "ifname": "eth0"}]}),
    );
    assert_eq!(env.run(&CniCall::gc(gc)).expect_ok(), Value::Null);

    assert_eq!(env.reserved(), result_ips(&r_keep));
    for ip in result_ips(&r_stale) {
        assert_eq!(env.store_file(&ip.to_string()), None, "{ip} not released");
    }
    eventually("the stale host veth is gone", || {
        veth_names(&env.node) == vec![host_veth(&r_keep)]
    });
    env.check(&keep, &conf, &r_keep).expect_ok();

    // An empty valid list releases the rest.
    let gc_all = merged(&conf, json!({"cni.dev/valid-attachments": []}));
    env.run(&CniCall::gc(gc_all)).expect_ok();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

// ---------------------------------------------------------------------------
// Exhaustion and requested addresses through the bridge
// ---------------------------------------------------------------------------

/// The v6 set of a dual-stack network runs out: ADD fails with 101 and the
/// v4 address reserved in the same host-local call is released again.
#[test]
#[ignore = "needs root"]
fn dual_stack_add_on_an_exhausted_v6_range_fails_and_leaks_no_v4_address() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (a, b, c) = (env.node.pod(), env.node.pod(), env.node.pod());
    let mut conf = env.dual_conf("1.0.0");
    conf["ipam"]["ranges"] = json!([
        [subnet_range(V4_SUBNET)],
        [subnet_range("fd00:10:244:2::/126")]
    ]);
    let ra = env.add_ok(&a, &conf);
    let rb = env.add_ok(&b, &conf);
    assert_eq!(result_ip(&ra, true).to_string(), "fd00:10:244:2::2");
    assert_eq!(
        result_ip(&rb, true).to_string(),
        "fd00:10:244:2::3",
        "all-ones is allocatable in v6"
    );
    assert_eq!(result_entry(&rb, true)["address"], "fd00:10:244:2::3/126");

    env.add(&c, &conf).expect_error(101);

    let mut want = result_ips(&ra);
    want.extend(result_ips(&rb));
    want.sort();
    assert_eq!(env.reserved(), want, "the failed ADD left a reservation");
    eventually("eth0 is gone from the failed pod", || {
        link(&c, "eth0").is_none()
    });
    assert_eq!(veth_names(&env.node).len(), 2);
    env.check(&a, &conf, &ra).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn requested_ipv6_via_args_cni_ips_lands_in_the_pod() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let conf = merged(
        &env.dual_conf("1.0.0"),
        json!({"args": {"cni": {"ips": ["fd00:10:244:2::50"]}}}),
    );

    let r = env.add_ok(&pod, &conf);

    assert_eq!(
        result_entry(&r, true)["address"],
        "fd00:10:244:2::50/64",
        "{r}"
    );
    // The v4 set had no request: normal allocation.
    assert_eq!(result_entry(&r, false)["address"], "10.244.2.2/24", "{r}");
    assert_eq!(ipv6_addrs(&pod, "eth0"), vec!["fd00:10:244:2::50/64"]);
    assert_eq!(env.reserved(), result_ips(&r));
    env.check(&pod, &conf, &r).expect_ok();
    env.del(&pod, &conf).expect_ok();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

// ---------------------------------------------------------------------------
// host-local on its own: IPv6 ranges
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn host_local_v6_range_start_and_end_bound_the_allocation() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let conf = env.host_local_conf(
        "1.0.0",
        json!([[{
            "subnet": "fd00:10:244:3::/64",
            "rangeStart": "fd00:10:244:3::100",
            "rangeEnd": "fd00:10:244:3::102"
        }]]),
    );
    let mut got = Vec::new();
    for id in ["c1", "c2", "c3"] {
        let r = env.host_local("ADD", id, &conf).expect_ok();
        assert_eq!(r["ips"][0]["gateway"], "fd00:10:244:3::1", "{r}");
        got.push(r["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(
        got,
        [
            "fd00:10:244:3::100/64",
            "fd00:10:244:3::101/64",
            "fd00:10:244:3::102/64"
        ]
    );
    env.host_local("ADD", "c4", &conf).expect_error(101);
    assert_eq!(env.reserved().len(), 3);

    // Free the middle one: round-robin wraps past rangeEnd back into range.
    env.host_local("DEL", "c2", &conf).expect_ok();
    let r = env.host_local("ADD", "c5", &conf).expect_ok();
    assert_eq!(r["ips"][0]["address"], "fd00:10:244:3::101/64", "{r}");
    assert_eq!(
        env.store_file("fd00:10:244:3::101").as_deref(),
        Some("c5\r\neth0")
    );
}

/// /126 is the smallest v6 subnet host-local accepts (prefix ≤ bits − 2):
/// ::1 is the gateway, ::2 and ::3 (all-ones, unlike v4's broadcast) are
/// allocatable, then the range is full (101).
#[test]
#[ignore = "needs root"]
fn host_local_v6_slash_126_gives_two_addresses_then_is_exhausted() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let conf = env.host_local_conf("1.0.0", json!([[subnet_range("fd00:10:244:4::/126")]]));
    let a = env.host_local("ADD", "c1", &conf).expect_ok();
    let b = env.host_local("ADD", "c2", &conf).expect_ok();
    assert_eq!(a["ips"][0]["address"], "fd00:10:244:4::2/126", "{a}");
    assert_eq!(b["ips"][0]["address"], "fd00:10:244:4::3/126", "{b}");
    assert_eq!(a["ips"][0]["gateway"], "fd00:10:244:4::1", "{a}");

    env.host_local("ADD", "c3", &conf).expect_error(101);
    assert_eq!(
        env.reserved(),
        vec![
            "fd00:10:244:4::2".parse::<IpAddr>().unwrap(),
            "fd00:10:244:4::3".parse().unwrap()
        ]
    );

    env.host_local("DEL", "c1", &conf).expect_ok();
    let c = env.host_local("ADD", "c3", &conf).expect_ok();
    assert_eq!(c["ips"][0]["address"], "fd00:10:244:4::2/126", "{c}");
}

#[test]
#[ignore = "needs root"]
fn host_local_v6_prefix_above_126_is_a_config_error() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for subnet in ["fd00:10:244:4::/127", "fd00:10:244:4::/128"] {
        let conf = env.host_local_conf("1.0.0", json!([[subnet_range(subnet)]]));
        let err = env.host_local("ADD", "c1", &conf).expect_error(7);
        assert!(
            err["msg"].as_str().unwrap_or("").contains("too small"),
            "{subnet}: {err}"
        );
    }
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}

#[test]
#[ignore = "needs root"]
fn host_local_requested_ipv6_via_args_cni_ips() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let base = env.host_local_conf(
        "1.0.0",
        json!([
            [subnet_range("10.244.5.0/24")],
            [subnet_range("fd00:10:244:5::/64")]
        ]),
    );
    let ask = |ips: Value| merged(&base, json!({"args": {"cni": {"ips": ips}}}));

    // Both families requested; a v6 with a prefix is accepted too.
    let r = env
        .host_local(
            "ADD",
            "c1",
            &ask(json!(["10.244.5.50", "fd00:10:244:5::50/64"])),
        )
        .expect_ok();
    let got: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["10.244.5.50/24", "fd00:10:244:5::50/64"], "{r}");
    assert_eq!(
        env.store_file("fd00:10:244:5::50").as_deref(),
        Some("c1\r\neth0")
    );

    // Taken, the gateway, outside every range: 102, and nothing reserved.
    for bad in ["fd00:10:244:5::50", "fd00:10:244:5::1", "fd00:10:244:6::7"] {
        env.host_local("ADD", "c2", &ask(json!([bad])))
            .expect_error(102);
        assert_eq!(
            env.reserved().len(),
            2,
            "{bad}: the failed ADD left a reservation"
        );
    }

    // A fresh v6 request, written non-canonically, is stored canonically.
    let r = env
        .host_local("ADD", "c3", &ask(json!(["fd00:0010:0244:0005:0:0:0:00ff"])))
        .expect_ok();
    assert_eq!(
        result_entry(&r, true)["address"],
        "fd00:10:244:5::ff/64",
        "{r}"
    );
    assert!(env.store_file("fd00:10:244:5::ff").is_some());

    env.host_local("DEL", "c1", &base).expect_ok();
    env.host_local("DEL", "c3", &base).expect_ok();
    assert_eq!(env.reserved(), Vec::<IpAddr>::new());
}
