//! Black-box tests of weft's `tuning` plugin chained after weft's
//! `bridge`: sysctls in the pod netns and the pod interface's MAC, MTU,
//! promisc, allmulti and txqueuelen, saved in the reference's backup file
//! and restored at DEL (compared with the Go reference), CHECK, refused
//! sysctl names, GC, rollback and the libcni driver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "tunet";
const BRIDGE: &str = "cni0";
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

struct Env {
    node: Node,
    data: TempDir,
    backups: TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            node: Node::new(),
            data: TempDir::new(),
            backups: TempDir::new(),
        }
    }

    fn bridge_conf(&self, version: &str) -> Value {
        network(
            version,
            NET,
            bridge_plugin(
                BRIDGE,
                host_local_ipam(self.data.path(), subnet_range("10.244.8.0/24")),
            ),
        )
    }

    fn tuning_conf(&self, version: &str, settings: Value) -> Value {
        merged(
            &network(
                version,
                NET,
                json!({"type": "tuning", "dataDir": self.backups.path()}),
            ),
            settings,
        )
    }

    fn attach(&self, pod: &Netns, version: &str) -> Value {
        CniCall::add(pod, self.bridge_conf(version))
            .run_in(&self.node, &plugin_path("bridge"))
            .expect_ok()
    }

    fn tuning(&self, call: CniCall) -> CniOutput {
        call.run_in(&self.node, &plugin_path("tuning"))
    }

    fn backup(&self, pod: &Netns) -> PathBuf {
        self.backups.join(format!("ctr-{}_eth0.json", pod.name))
    }
}

/// What tuning may change on eth0 and in the pod's netns.
fn state(pod: &Netns) -> Value {
    let l = link(pod, "eth0").unwrap();
    json!({
        "mac": l["address"], "mtu": l["mtu"], "txqlen": l["txqlen"],
        "promisc": l["promiscuity"].as_u64().unwrap_or(0) > 0,
        "allmulti": has_flag(&l, "ALLMULTI"),
        "arp_ignore": pod.sh("cat /proc/sys/net/ipv4/conf/eth0/arp_ignore").trim(),
        "somaxconn": pod.sh("cat /proc/sys/net/core/somaxconn").trim(),
    })
}

fn everything() -> Value {
    json!({
        "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net.core.somaxconn": "512"},
        "mac": "02:11:22:33:44:55", "mtu": 1400, "promisc": true,
        "allmulti": true, "txQLen": 500,
    })
}

#[test]
#[ignore = "needs root"]
fn add_sets_everything_check_verifies_and_del_restores_it() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for version in VERSIONS {
        let pod = env.node.pod();
        let prev = env.attach(&pod, version);
        let before = state(&pod);
        let conf = with_prev(&env.tuning_conf(version, everything()), &prev);
        let result = env.tuning(CniCall::add(&pod, conf.clone())).expect_ok();
        assert_eq!(
            state(&pod),
            json!({"mac": "02:11:22:33:44:55", "mtu": 1400, "txqlen": 500, "promisc": true,
                   "allmulti": true, "arp_ignore": "1", "somaxconn": "512"}),
            "{version}"
        );
        // The result reports the new MAC on the pod interface.
        let eth0 = result["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "eth0")
            .unwrap();
        assert_eq!(eth0["mac"], "02:11:22:33:44:55");
        // The backup holds the original values, in the reference's format.
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(env.backup(&pod)).unwrap()).unwrap();
        assert_eq!(saved["mtu"], before["mtu"]);
        assert_eq!(saved["mac"], before["mac"]);
        assert_eq!(saved["promisc"], false);
        assert_eq!(saved["txQLen"], before["txqlen"]);
        if version >= "0.4.0" {
            env.tuning(CniCall::check(&pod, with_prev(&conf, &result)))
                .expect_ok();
            pod.sh("ip link set eth0 mtu 1300");
            env.tuning(CniCall::check(&pod, with_prev(&conf, &result)))
                .expect_error(105);
            pod.sh("ip link set eth0 mtu 1400 && echo 0 > /proc/sys/net/core/somaxconn");
            env.tuning(CniCall::check(&pod, with_prev(&conf, &result)))
                .expect_error(105);
            pod.sh("echo 512 > /proc/sys/net/core/somaxconn");
        }
        env.tuning(CniCall::del(&pod, with_prev(&conf, &result)))
            .expect_ok();
        assert_eq!(state(&pod), before, "{version}: restored");
        assert!(!env.backup(&pod).exists());
        env.tuning(CniCall::del(&pod, conf)).expect_ok();
    }
}

#[test]
#[ignore = "needs root"]
fn restores_the_same_link_values_as_the_reference_and_reads_its_backups() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    // Debian's reference is 1.1.1, which has no txQLen yet.
    let settings = json!({"mac": "02:11:22:33:44:66", "mtu": 1280, "promisc": true,
                          "allmulti": true});
    let link_state = |pod: &Netns| {
        let mut s = state(pod);
        s.as_object_mut().unwrap().remove("somaxconn");
        s.as_object_mut().unwrap().remove("arp_ignore");
        s
    };
    let run = |plugin: &Path, call: CniCall| call.run_in(&env.node, plugin).expect_ok();
    let go = reference_plugin_dir().join("tuning");
    let weft = plugin_path("tuning");
    let mut files = Vec::new();
    for (adder, deleter) in [(&weft, &weft), (&go, &go), (&go, &weft), (&weft, &go)] {
        let pod = env.node.pod();
        let prev = env.attach(&pod, "1.0.0");
        let before = link_state(&pod);
        let conf = with_prev(&env.tuning_conf("1.0.0", settings.clone()), &prev);
        let result = run(adder, CniCall::add(&pod, conf.clone()));
        let changed = link_state(&pod);
        assert_eq!(changed["mac"], "02:11:22:33:44:66");
        assert_eq!(changed["mtu"], 1280);
        assert_eq!(changed["promisc"], true);
        assert_eq!(changed["allmulti"], true);
        files.push(std::fs::read_to_string(env.backup(&pod)).unwrap());
        run(deleter, CniCall::del(&pod, with_prev(&conf, &result)));
        assert_eq!(link_state(&pod), before, "{adder:?} then {deleter:?}");
        assert!(!env.backup(&pod).exists());
    }
    // Same keys, same formatting (one-space indent); weft adds `network`.
    let keys = |text: &str| {
        let v: Value = serde_json::from_str(text).unwrap();
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.retain(|k| k != "network");
        k.sort();
        k
    };
    assert_eq!(keys(&files[0]), keys(&files[1]));
    assert!(files[0].starts_with("{\n \"mac\""), "{}", files[0]);
    assert!(files[1].starts_with("{\n \"mac\""), "{}", files[1]);
}

#[test]
#[ignore = "needs root"]
fn sysctls_outside_the_pod_netns_are_refused_and_nothing_is_written() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let prev = env.attach(&pod, "1.0.0");
    let before = state(&pod);
    let host_forward = env.node.sh("cat /proc/sys/net/ipv4/ip_forward");
    for bad in [
        "kernel.hostname",
        "vm.swappiness",
        "net/ipv4/ip_forward",
        "net.ipv4.conf.eth0/../../../kernel.hostname",
        "net.ipv4..conf.all.forwarding",
        "net.ipv4.conf.all.forwarding.",
        ".net.core.somaxconn",
        // Exists only in the node's (initial) netns, not in a pod's.
        "net.core.rmem_max",
        "net.ipv4.no_such_thing",
    ] {
        let settings = json!({
            "sysctl": {bad: "1", "net.core.somaxconn": "99"},
            "mtu": 1300,
        });
        let conf = with_prev(&env.tuning_conf("1.0.0", settings), &prev);
        env.tuning(CniCall::add(&pod, conf)).expect_error(7);
        assert_eq!(state(&pod), before, "{bad}");
        assert!(!env.backup(&pod).exists(), "{bad}");
    }
    // Through args.cni too, and without a sysctl map in the config (the
    // reference panics there).
    let conf = with_prev(
        &env.tuning_conf(
            "1.0.0",
            json!({"args": {"cni": {"sysctl": {"kernel.hostname": "x"}}}}),
        ),
        &prev,
    );
    env.tuning(CniCall::add(&pod, conf)).expect_error(7);
    let conf = with_prev(
        &env.tuning_conf(
            "1.0.0",
            json!({"args": {"cni": {"sysctl": {"net.core.somaxconn": "98"}}}}),
        ),
        &prev,
    );
    env.tuning(CniCall::add(&pod, conf.clone())).expect_ok();
    assert_eq!(pod.sh("cat /proc/sys/net/core/somaxconn").trim(), "98");
    env.tuning(CniCall::del(&pod, conf)).expect_ok();
    assert_eq!(state(&pod), before);
    assert_eq!(
        env.node.sh("cat /proc/sys/net/ipv4/ip_forward"),
        host_forward
    );
    // Bad MAC, MTU, txQLen; no prevResult.
    for (settings, code) in [
        (json!({"mac": "zz"}), 7),
        (json!({"mac": "01:00:5e:00:00:01"}), 7),
        (json!({"mtu": 10}), 7),
        (json!({"txQLen": -1}), 7),
        (json!({"mtu": "big"}), 6),
    ] {
        let conf = with_prev(&env.tuning_conf("1.0.0", settings.clone()), &prev);
        env.tuning(CniCall::add(&pod, conf)).expect_error(code);
        assert_eq!(state(&pod), before, "{settings}");
    }
    env.tuning(CniCall::add(
        &pod,
        env.tuning_conf("1.0.0", json!({"mtu": 1300})),
    ))
    .expect_error(7);
    assert_eq!(state(&pod), before);
}

#[test]
#[ignore = "needs root"]
fn gc_removes_the_backups_of_dead_attachments_of_its_network_only() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let live = env.node.pod();
    let dead = env.node.pod();
    for pod in [&live, &dead] {
        let prev = env.attach(pod, "1.1.0");
        let conf = with_prev(&env.tuning_conf("1.1.0", json!({"mtu": 1300})), &prev);
        env.tuning(CniCall::add(pod, conf)).expect_ok();
    }
    // The reference's file (no network key) and another network's.
    std::fs::write(env.backups.join("goctr_eth0.json"), "{\n \"mtu\": 1500\n}").unwrap();
    std::fs::write(
        env.backups.join("other_eth0.json"),
        "{\"mtu\": 1500, \"network\": \"othernet\"}",
    )
    .unwrap();
    let gc = merged(
        &env.tuning_conf("1.1.0", json!({})),
        json!({"cni.dev/valid-attachments": [
            {"containerID": format!("ctr-{}", live.name), "ifname": "eth0"}
        ]}),
    );
    env.tuning(CniCall::gc(gc)).expect_ok();
    assert!(env.backup(&live).exists());
    assert!(!env.backup(&dead).exists());
    assert!(env.backups.join("goctr_eth0.json").exists());
    assert!(env.backups.join("other_eth0.json").exists());
}

/// Each netlink request of ADD fails in turn (strace injects EIO on the
/// n-th sendto): every failed ADD must leave the pod as it was, and no file.
#[test]
#[ignore = "needs root"]
fn a_failing_add_restores_everything_it_changed() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let pod = env.node.pod();
    let prev = env.attach(&pod, "1.0.0");
    let before = state(&pod);
    let conf = with_prev(&env.tuning_conf("1.0.0", everything()), &prev);
    let wrappers = TempDir::new();
    let mut failed = 0;
    for n in 1..=20 {
        let wrapper = sendto_failing_wrapper(wrappers.path(), "tuning", n, true);
        let out = CniCall::add(&pod, conf.clone()).run_in(&env.node, &wrapper);
        if out.success() {
            break;
        }
        failed += 1;
        out.expect_error(100);
        assert_eq!(state(&pod), before, "failure {n}");
        assert!(!env.backup(&pod).exists(), "failure {n}");
    }
    assert!(failed >= 5, "only {failed} netlink calls failed");
}

/// libcni with podman's way of asking for a MAC (CNI_ARGS MAC=, with
/// IgnoreUnknown) and the `mac` capability, which wins.
#[test]
#[ignore = "needs root"]
fn libcni_mac_from_cni_args_and_capability() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let list = conflist(
        "1.0.0",
        NET,
        vec![
            bridge_plugin(
                BRIDGE,
                host_local_ipam(env.data.path(), subnet_range("10.244.8.0/24")),
            ),
            json!({"type": "tuning", "dataDir": env.backups.path(),
                   "capabilities": {"mac": true}, "sysctl": {"net.core.somaxconn": "256"}}),
        ],
    );
    let mut driver = Driver::new(&list, &[&plugin_dir()]);
    driver.cni_args = Some("IgnoreUnknown=1;K8S_POD_NAME=p;MAC=02:aa:bb:cc:dd:01".into());
    let pod = env.node.pod();
    driver.add(&env.node, &pod, "cid1", "eth0").expect_ok();
    assert_eq!(link(&pod, "eth0").unwrap()["address"], "02:aa:bb:cc:dd:01");
    driver.check(&env.node, &pod, "cid1", "eth0").expect_ok();
    driver
        .del(&env.node, Some(&pod), "cid1", "eth0")
        .expect_ok();
    assert!(!env.backups.join("cid1_eth0.json").exists());

    driver.cap_args = Some(json!({"mac": "02:aa:bb:cc:dd:02"}));
    let pod = env.node.pod();
    let result = driver.add(&env.node, &pod, "cid2", "eth0").expect_ok();
    assert_eq!(link(&pod, "eth0").unwrap()["address"], "02:aa:bb:cc:dd:02");
    assert_eq!(pod.sh("cat /proc/sys/net/core/somaxconn").trim(), "256");
    assert!(result["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["mac"] == "02:aa:bb:cc:dd:02"));
    driver.check(&env.node, &pod, "cid2", "eth0").expect_ok();
    driver
        .del(&env.node, Some(&pod), "cid2", "eth0")
        .expect_ok();
}
