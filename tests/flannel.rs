//! kube-flannel's cni-conf.json (conf/10-weft.conflist: flannel, then the
//! reference portmap) works unchanged through the real libcni: ADD and DEL
//! (the list is cniVersion 0.3.1, which has no CHECK), with flannel's default paths (/run/flannel/subnet.env,
//! /var/lib/cni/...) backed by tmpfs in a private mount namespace so the
//! host's files are never touched.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use weft_tests::*;

#[test]
fn kube_flannel_conflist_works_unchanged_through_libcni() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let tmp = TempDir::new();
    let conflist = workspace_root().join("conf/10-weft.conflist");
    let cni_path = format!("{}:{}", plugin_dir().display(), reference_plugin_dir().display());
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
    let out = node.exec("unshare", &["-m", "--propagation", "private", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "libcni run failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let line = |key: &str| stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("no {key} in:\n{stdout}")).trim().to_string();

    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("result.json")).unwrap()).unwrap();
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
    assert_eq!(stored["ipam"]["ranges"], serde_json::json!([[{"subnet": "10.244.61.0/24"}]]));
    assert_eq!(line("reserved:"), ip.trim_end_matches("/24"));
    assert_eq!(line("hairpin:"), "1");
    let pod_line = line("pod:");
    assert!(pod_line.contains(ip) && pod_line.ends_with("mtu 1450"), "{pod_line}");
    let routes = line("routes:");
    assert!(routes.contains("default via 10.244.61.1"), "isDefaultGateway: {routes}");
    assert!(routes.contains("10.244.0.0/16 via 10.244.61.1"), "route to the Network: {routes}");

    assert_eq!(line("after-del stored:"), "");
    assert_eq!(line("after-del reserved:"), "");
    // Host veth deletion finishes in the background; give it a moment.
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        veths_on_host(&node).is_empty()
    });
    assert!(gone, "a host veth was left behind");
}
