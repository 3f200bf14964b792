//! The flannel plugin: kube-flannel's cni-conf.json (conf/10-weft.conflist:
//! flannel, then the reference portmap) works unchanged through the real
//! libcni: ADD and DEL (the list is cniVersion 0.3.1, which has no CHECK),
//! with flannel's default paths (/run/flannel/subnet.env, /var/lib/cni/...)
//! backed by tmpfs in a private mount namespace so the host's files are
//! never touched. Then the plugin alone, as a runtime calls it, against a
//! hand-written subnet.env: CHECK, GC, a failed ADD and its DEL, stored
//! config names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde_json::{json, Value};
use weft_tests::*;

#[test]
#[ignore = "needs root"]
fn kube_flannel_conflist_works_unchanged_through_libcni() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let tmp = TempDir::new();
    let conflist = workspace_root().join("conf/10-weft.conflist");
    let cni_path = format!(
        "{}:{}",
        plugin_dir().display(),
        reference_plugin_dir().display()
    );
    let script = format!(
        r#"set -eu
pod={tmp}/podns
touch "$pod" && mount --bind {pod_path} "$pod"
mount -t tmpfs tmpfs /run && mkdir -p /run/flannel
printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.61.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n' > /run/flannel/subnet.env
mount -t tmpfs tmpfs /var/lib
drive() {{ {driver} "$1" --conflist {conflist} --netns "$pod" --container-id kf1 --ifname eth0 --cni-path {cni_path} --cache-dir /var/lib/cni/cache; }}
drive add > {tmp}/result.json
echo "stored: $(cat /var/lib/cni/flannel/kf1)"
echo "reserved: $(ls /var/lib/cni/networks/cbr0 | grep -v -e lock -e last_reserved | tr '\n' ' ')"
echo "hairpin: $(cat /sys/class/net/$(ip -j link show master cni0 | sed -n 's/.*"ifname":"\([^"]*\)".*/\1/p')/brport/hairpin_mode)"
echo "pod: $(nsenter --net="$pod" ip -4 -o addr show eth0 | awk '{{print $4}}') $(nsenter --net="$pod" ip -o link show eth0 | grep -o 'mtu [0-9]*')"
echo "routes: $(nsenter --net="$pod" ip -4 route | tr '\n' ';')"
drive del
echo "after-del stored: $(ls /var/lib/cni/flannel | tr '\n' ' ')"
echo "after-del reserved: $(ls /var/lib/cni/networks/cbr0 | grep -v -e lock -e last_reserved | tr '\n' ' ')"
echo "after-del veths: $(ip -o link show type veth | wc -l)"
"#,
        tmp = tmp.path().display(),
        pod_path = pod.path_str(),
        driver = driver_path().display(),
        conflist = conflist.display(),
    );
    let out = node.exec(
        "unshare",
        &["-m", "--propagation", "private", "sh", "-c", &script],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "libcni run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .trim()
            .to_string()
    };

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["cniVersion"], "0.3.1");
    let ip = result["ips"][0]["address"].as_str().unwrap();
    assert!(ip.starts_with("10.244.61.") && ip.ends_with("/24"), "{ip}");
    assert_eq!(result["ips"][0]["version"], "4");

    // The delegate flannel stored is flannel's: bridge, isGateway, ipMasq = !FLANNEL_IPMASQ.
    let stored: serde_json::Value = serde_json::from_str(&line("stored:")).unwrap();
    assert_eq!(stored["type"], "bridge");
    assert_eq!(stored["isGateway"], true);
    assert_eq!(stored["ipMasq"], false);
    assert_eq!(stored["mtu"], 1450);
    assert_eq!(
        stored["ipam"]["ranges"],
        serde_json::json!([[{"subnet": "10.244.61.0/24"}]])
    );
    assert_eq!(line("reserved:"), ip.trim_end_matches("/24"));
    assert_eq!(line("hairpin:"), "1");
    let pod_line = line("pod:");
    assert!(
        pod_line.contains(ip) && pod_line.ends_with("mtu 1450"),
        "{pod_line}"
    );
    let routes = line("routes:");
    assert!(
        routes.contains("default via 10.244.61.1"),
        "isDefaultGateway: {routes}"
    );
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.61.1"),
        "route to the Network: {routes}"
    );

    assert_eq!(line("after-del stored:"), "");
    assert_eq!(line("after-del reserved:"), "");
    // Host veth deletion finishes in the background (assert_no_veths waits).
    assert_no_veths(&node);
}

/// A node with a hand-written subnet.env (10.244.42.0/24) and private
/// flannel dataDir and host-local dataDir.
struct FlannelNode {
    node: Node,
    dir: TempDir,
}

impl FlannelNode {
    fn new() -> FlannelNode {
        let f = FlannelNode {
            node: Node::new(),
            dir: TempDir::new(),
        };
        std::fs::write(
            f.dir.join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.42.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        f
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version, "name": "cbr0", "type": "flannel",
            "subnetFile": self.dir.join("subnet.env"), "dataDir": self.data_dir(),
            "ipam": {"dataDir": self.dir.join("ipam")}
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("flannel")
    }

    fn stored(&self, cid: &str) -> PathBuf {
        self.data_dir().join(cid)
    }

    /// Every file name in the flannel dataDir.
    fn stored_names(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.data_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn reserved(&self) -> Vec<String> {
        reserved_ips(&self.dir.join("ipam"), "cbr0")
    }

    fn run(&self, call: &CniCall) -> CniOutput {
        call.run_in(&self.node, &plugin_path("flannel"))
    }

    fn add_ok(&self, pod: &Netns, conf: &Value) -> Value {
        self.run(&CniCall::add(pod, conf.clone())).expect_ok()
    }
}

fn cid(pod: &Netns) -> String {
    format!("ctr-{}", pod.name)
}

fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "needs root"]
fn check_passes_on_a_healthy_pod_and_reports_105_once_its_address_is_flushed() {
    if !require_root() {
        return;
    }
    let f = FlannelNode::new();
    let pod = f.node.pod();
    let conf = f.conf("1.0.0");
    let result = f.add_ok(&pod, &conf);
    let ip = result_ip(&result);
    assert!(ip.starts_with("10.244.42."), "{result}");
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec![format!("{ip}/24")]);

    // CHECK delegates to bridge with the stored config: healthy passes.
    f.run(&CniCall::check(&pod, with_prev(&conf, &result)))
        .expect_ok();

    pod.sh("ip addr flush dev eth0");
    assert!(ipv4_addrs(&pod, "eth0").is_empty());
    let err = f
        .run(&CniCall::check(&pod, with_prev(&conf, &result)))
        .expect_error(105);
    let text = err.to_string();
    assert!(
        text.contains(&ip),
        "the error should name the missing address: {text}"
    );

    f.run(&CniCall::del(&pod, with_prev(&conf, &result)))
        .expect_ok();
    assert!(f.reserved().is_empty(), "{:?}", f.reserved());
    assert!(!f.stored(&cid(&pod)).exists());
    // Without a stored config (never added, or deleted) CHECK fails too.
    f.run(&CniCall::check(&pod, with_prev(&conf, &result)))
        .expect_error(105);
}

#[test]
#[ignore = "needs root"]
fn gc_removes_the_stored_config_and_ip_of_dead_attachments_and_keeps_live_ones() {
    if !require_root() {
        return;
    }
    let f = FlannelNode::new();
    let conf = f.conf("1.1.0");
    let (live, dead) = (f.node.pod(), f.node.pod());
    let r_live = f.add_ok(&live, &conf);
    let r_dead = f.add_ok(&dead, &conf);
    let (ip_live, ip_dead) = (result_ip(&r_live), result_ip(&r_dead));
    let mut both = vec![ip_live.clone(), ip_dead.clone()];
    both.sort();
    assert_eq!(f.reserved(), both);
    assert_eq!(veth_names(&f.node).len(), 2);
    // A config whose attachment the runtime forgot entirely, and a temp
    // file of an ADD in flight (the name write_atomic uses): GC must
    // remove the first and leave the second alone.
    std::fs::write(f.stored("forgotten.a.b"), "{}").unwrap();
    let in_flight = format!(".{}.{}.0.tmp", cid(&live), std::process::id());
    std::fs::write(f.data_dir().join(&in_flight), "{").unwrap();

    let gc = merged(
        &conf,
        json!({"cni.dev/valid-attachments": [{"containerID": cid(&live), "ifname": "eth0"}]}),
    );
    assert_eq!(f.run(&CniCall::gc(gc)).expect_ok(), Value::Null);

    assert_eq!(f.stored_names(), BTreeSet::from([cid(&live), in_flight]));
    assert_eq!(
        f.reserved(),
        vec![ip_live.clone()],
        "GC kept the dead attachment's IP {ip_dead}"
    );
    // bridge's GC (run as flannel's delegate) removes the dead one's host veth.
    eventually("the dead attachment's host veth is gone", || {
        veth_names(&f.node).len() == 1
    });
    // The live pod is untouched: CHECK passes and it still has its address.
    f.run(&CniCall::check(&live, with_prev(&conf, &r_live)))
        .expect_ok();
    assert_eq!(ipv4_addrs(&live, "eth0"), vec![format!("{ip_live}/24")]);

    // The dead pod's DEL after GC is a no-op success; the live one's cleans up.
    f.run(&CniCall::del(&dead, with_prev(&conf, &r_dead)))
        .expect_ok();
    f.run(&CniCall::del(&live, with_prev(&conf, &r_live)))
        .expect_ok();
    assert!(f.reserved().is_empty());
    assert!(!f.stored(&cid(&live)).exists());
}

#[test]
#[ignore = "needs root"]
fn stored_configs_of_ids_that_differ_in_an_extension_do_not_collide() {
    if !require_root() {
        return;
    }
    // The temp file was once <id> with its extension replaced by "tmp":
    // ADD of "a.b" wrote through "a.tmp" and then renamed away the config
    // of container "a.tmp".
    let f = FlannelNode::new();
    let conf = f.conf("1.0.0");
    let (p1, p2) = (f.node.pod(), f.node.pod());
    let r1 = f
        .run(&CniCall::add(&p1, conf.clone()).container_id("a.tmp"))
        .expect_ok();
    let r2 = f
        .run(&CniCall::add(&p2, conf.clone()).container_id("a.b"))
        .expect_ok();
    assert_eq!(
        f.stored_names(),
        BTreeSet::from(["a.b".to_string(), "a.tmp".to_string()])
    );
    for (pod, id, r) in [(&p1, "a.tmp", &r1), (&p2, "a.b", &r2)] {
        let stored: Value =
            serde_json::from_str(&std::fs::read_to_string(f.stored(id)).unwrap()).unwrap();
        assert_eq!(stored["type"], "bridge", "{id}: {stored}");
        f.run(&CniCall::del(pod, with_prev(&conf, r)).container_id(id))
            .expect_ok();
    }
    assert!(f.stored_names().is_empty(), "{:?}", f.stored_names());
    assert!(
        f.reserved().is_empty(),
        "DEL through the stored configs released nothing: {:?}",
        f.reserved()
    );
}

#[test]
#[ignore = "needs root"]
fn a_failed_delegate_add_keeps_the_stored_config_so_del_can_clean_up() {
    if !require_root() {
        return;
    }
    let f = FlannelNode::new();
    // A delegate whose ADD fails and leaves something behind (as bridge
    // does when its own rollback fails): a marker file that only its DEL,
    // given the stored config, removes.
    let bin = TempDir::new();
    let leftovers = bin.join("leftovers");
    std::fs::create_dir(&leftovers).unwrap();
    let script = bin.join("leaky");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
conf=$(cat)
case "$CNI_COMMAND" in
ADD) echo "$conf" > {dir}/"$CNI_CONTAINERID"
     echo '{{"cniVersion":"1.0.0","code":100,"msg":"setup failed and so did the rollback"}}'; exit 1 ;;
DEL) rm -f {dir}/"$CNI_CONTAINERID" ;;
esac
"#,
            dir = leftovers.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = merged(&f.conf("1.0.0"), json!({"delegate": {"type": "leaky"}}));
    let pod = f.node.pod();
    let weft = plugin_dir();
    let path = [bin.path(), weft.as_path()];
    let leftover = leftovers.join(cid(&pod));

    let err = f
        .run(&CniCall::add(&pod, conf.clone()).cni_path(&path))
        .expect_error(100);
    assert!(err["msg"].as_str().unwrap().contains("rollback"), "{err}");
    assert!(leftover.exists(), "the delegate's ADD did not run");
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(f.stored(&cid(&pod))).unwrap()).unwrap();
    assert_eq!(stored["type"], "leaky");

    // The runtime's DEL after the failed ADD reaches the delegate.
    f.run(&CniCall::del(&pod, conf.clone()).cni_path(&path))
        .expect_ok();
    assert!(
        !leftover.exists(),
        "DEL did not reach the delegate: its leftovers stay"
    );
    assert!(f.stored_names().is_empty(), "{:?}", f.stored_names());
    f.run(&CniCall::del(&pod, conf).cni_path(&path)).expect_ok();

    // The same with the real bridge: ADD fails (eth0 already exists in the
    // pod), the config is kept, DEL removes it and no IP stays reserved.
    let conf = f.conf("1.0.0");
    pod.sh("ip link add eth0 type veth peer name other0");
    let out = f.run(&CniCall::add(&pod, conf.clone()));
    assert!(
        !out.success(),
        "ADD over an existing eth0 succeeded: {}",
        out.stdout
    );
    assert!(
        f.stored(&cid(&pod)).exists(),
        "stored config dropped after a failed ADD"
    );
    f.run(&CniCall::del(&pod, conf)).expect_ok();
    assert!(f.stored_names().is_empty(), "{:?}", f.stored_names());
    assert!(f.reserved().is_empty(), "{:?}", f.reserved());
}
