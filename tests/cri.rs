//! Pods started the kubelet's way: over CRI, by one containerd per
//! simulated node (Debian's containerd 1.6 with its CRI plugin, runc, a
//! busybox sandbox image), which runs weft's plugins through its own libcni
//! with kube-flannel's conflist, while weftd runs the overlay on every node.
//! Every plugin call containerd makes is recorded (a wrapper in its
//! bin_dir) so the tests check what it really sends.
//!
//! Needs root, etcd, containerd and runc (scripts/setup.sh).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::*;

const WEFTD_ARGS: &str = "--reconcile-interval=1 --ip-masq";

/// A cluster of `nodes` nodes running weftd, converged.
fn cluster(nodes: u32) -> Cluster {
    let c = Cluster::new(WEFTD_ARGS);
    c.write_config(None);
    for n in 1..=nodes {
        c.node_add(n);
    }
    c.wait_converged();
    c
}

/// Where the portmap and bandwidth binaries containerd runs come from:
/// weft's once they are built, else the reference plugins.
fn chain_plugin(name: &str) -> PathBuf {
    let weft = plugin_dir().join(name);
    if weft.exists() {
        weft
    } else {
        reference_plugin_dir().join(name)
    }
}

/// The binary a recorded call of `plugin` must have run.
fn expected_binary(plugin: &str) -> PathBuf {
    match plugin {
        "portmap" | "bandwidth" => chain_plugin(plugin),
        _ => plugin_dir().join(plugin),
    }
}

/// kube-flannel's conflist with `extra` plugins appended to its chain.
fn flannel_conflist_with(dir: &TempDir, extra: &[Value]) -> PathBuf {
    let text = std::fs::read_to_string(workspace_root().join("conf/10-weft.conflist")).unwrap();
    let mut conf: Value = serde_json::from_str(&text).unwrap();
    let plugins = conf["plugins"].as_array_mut().unwrap();
    plugins.extend(extra.iter().cloned());
    let path = dir.join("10-weft.conflist");
    std::fs::write(&path, serde_json::to_string_pretty(&conf).unwrap()).unwrap();
    path
}

/// Asserts that every recorded call exited 0 and ran the expected binary.
fn assert_weft_handled_every_call(calls: &[RecordedCall]) {
    assert!(!calls.is_empty(), "no plugin call was recorded");
    for call in calls {
        assert_eq!(
            call.rc,
            0,
            "{} {} failed: {}",
            call.plugin,
            call.command(),
            call.stdout
        );
        assert_eq!(
            call.real.canonicalize().unwrap(),
            expected_binary(&call.plugin).canonicalize().unwrap(),
            "{} was handled by {}",
            call.plugin,
            call.real.display()
        );
    }
}

fn summary(calls: &[RecordedCall]) -> String {
    calls
        .iter()
        .map(|c| format!("{} {} {}", c.command(), c.plugin, c.ifname()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root"]
fn cri_pods_reach_each_other_across_nodes_and_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let c = cluster(3);
    let runtimes: Vec<Containerd> = (1..=3).map(|n| Containerd::start(&c, n, None)).collect();
    let mut pods = Vec::new();
    for rt in &runtimes {
        let (_, _, api) = rt.cri.version().unwrap();
        assert_eq!(api, "v1");
        let conditions = rt.cri.status().unwrap();
        assert_eq!(conditions.is("NetworkReady"), Some(true), "{conditions:?}");
        for p in ["a", "b"] {
            let pod = rt.run_pod(&SandboxSpec::new(&format!("n{}-{p}", rt.node)));
            // The pod's address is in its node's lease.
            let subnet = c.subnet(rt.node);
            let prefix = subnet.rsplit_once('.').unwrap().0;
            assert!(
                pod.ip.starts_with(&format!("{prefix}.")),
                "{} not in {subnet}",
                pod.ip
            );
            pods.push((rt, pod));
        }
    }
    // Every pod pings every pod on the other nodes: 6 pods x 4 = 24 pairs.
    for (rt_a, a) in &pods {
        for (rt_b, b) in &pods {
            if rt_a.node == rt_b.node {
                continue;
            }
            assert!(
                rt_a.ping(a, &b.ip),
                "{} ({}) cannot reach {} ({})\n{}",
                a.name,
                a.ip,
                b.name,
                b.ip,
                c.log_tails()
            );
        }
    }
    for (rt, pod) in &pods {
        rt.stop_and_remove(pod);
    }
    for rt in &runtimes {
        assert!(rt.cri.list_pod_sandboxes().unwrap().is_empty());
        rt.assert_nothing_left();
        assert_weft_handled_every_call(&rt.calls());
    }
}

#[test]
#[ignore = "needs root"]
fn what_containerd_sends_on_run_stop_and_remove() {
    if !require_root() {
        return;
    }
    let c = cluster(1);
    let rt = Containerd::start(&c, 1, None);
    let spec = SandboxSpec::new("web")
        .namespace("shop")
        .uid("0b7f-uid")
        .port(8080, 80);
    let pod = rt.run_pod(&spec);
    let add = rt.calls();
    rt.clear_calls();

    // RunPodSandbox: containerd's own loopback call (concurrently with the
    // conflist: go-cni attaches its networks in parallel), and the conflist
    // in order, flannel delegating to bridge, bridge to host-local.
    let lo: Vec<&RecordedCall> = add.iter().filter(|c| c.plugin == "loopback").collect();
    assert_eq!(lo.len(), 1, "{}", summary(&add));
    let lo = lo[0];
    let add: Vec<RecordedCall> = add
        .iter()
        .filter(|c| c.plugin != "loopback")
        .cloned()
        .collect();
    let order: Vec<(&str, &str)> = add
        .iter()
        .map(|c| (c.command(), c.plugin.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("ADD", "flannel"),
            ("ADD", "bridge"),
            ("ADD", "host-local"),
            ("ADD", "portmap"),
        ],
        "{}",
        summary(&add)
    );
    assert_eq!(lo.command(), "ADD");
    assert_eq!(lo.ifname(), "lo");
    assert_eq!(lo.stdin["name"], "cni-loopback", "{}", lo.stdin);
    assert_eq!(lo.stdin["type"], "loopback");
    for call in add.iter().chain([lo]) {
        assert_eq!(call.env["CNI_CONTAINERID"], pod.id);
        assert!(!call.env["CNI_NETNS"].is_empty());
        let args = call.cni_args();
        assert_eq!(
            args,
            [
                ("IgnoreUnknown", "1"),
                ("K8S_POD_INFRA_CONTAINER_ID", pod.id.as_str()),
                ("K8S_POD_NAME", "web"),
                ("K8S_POD_NAMESPACE", "shop"),
                ("K8S_POD_UID", "0b7f-uid"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            "{}",
            call.env["CNI_ARGS"]
        );
        if call.plugin != "loopback" {
            assert_eq!(call.ifname(), "eth0");
            assert_eq!(call.stdin["name"], "cbr0");
        }
    }
    // runtimeConfig only for the capability the conflist declares
    // (portMappings, on portmap); go-cni's keys are capitalised.
    let flannel = &add[0];
    assert!(
        flannel.stdin.get("runtimeConfig").is_none(),
        "{}",
        flannel.stdin
    );
    assert_eq!(
        add[3].stdin["runtimeConfig"],
        json!({"portMappings": [{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]}),
        "{}",
        add[3].stdin
    );
    assert!(add[3].stdin.get("prevResult").is_some());

    // StopPodSandbox: DEL of loopback, then of the chain in reverse, each
    // with the netns. kube-flannel's conflist is cniVersion 0.3.1, so
    // libcni sends no prevResult on DEL (it does from 0.4.0).
    rt.cri.stop_pod_sandbox(&pod.id).unwrap();
    let stop = rt.calls();
    rt.clear_calls();
    let order: Vec<(&str, &str)> = stop
        .iter()
        .map(|c| (c.command(), c.plugin.as_str()))
        .collect();
    assert_eq!(order, stop_order(), "{}", summary(&stop));
    for call in &stop {
        assert!(!call.env["CNI_NETNS"].is_empty(), "{:?}", call.env);
    }
    for call in &stop {
        assert!(call.stdin.get("prevResult").is_none(), "{}", call.stdin);
    }
    // portmap still gets its mappings on DEL, from the runtime, not a cache.
    assert_eq!(
        stop[1].stdin["runtimeConfig"]["portMappings"][0]["HostPort"],
        8080
    );
    rt.assert_nothing_left();

    // RemovePodSandbox: a second DEL of everything, with CNI_NETNS set but
    // empty (the netns is gone). flannel's delegate config went with the
    // first DEL, so it succeeds without delegating.
    rt.cri.remove_pod_sandbox(&pod.id).unwrap();
    let remove = rt.calls();
    let order: Vec<(&str, &str)> = remove
        .iter()
        .map(|c| (c.command(), c.plugin.as_str()))
        .collect();
    assert_eq!(order, stop_order()[..3], "{}", summary(&remove));
    for call in &remove {
        assert_eq!(call.env.get("CNI_NETNS").map(String::as_str), Some(""));
        assert!(call.stdin.get("prevResult").is_none(), "{}", call.stdin);
        assert_eq!(call.env["CNI_CONTAINERID"], pod.id);
    }
    rt.assert_nothing_left();
    assert_weft_handled_every_call(std::slice::from_ref(lo));
    for calls in [&add, &stop, &remove] {
        assert_weft_handled_every_call(calls);
    }
    // containerd 1.6 never sends CHECK, GC or STATUS.
    assert!(add
        .iter()
        .chain([lo])
        .chain(&stop)
        .chain(&remove)
        .all(|c| matches!(c.command(), "ADD" | "DEL")));
}

/// containerd's DEL sequence: its loopback, then the conflist in reverse.
fn stop_order() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DEL", "loopback"),
        ("DEL", "portmap"),
        ("DEL", "flannel"),
        ("DEL", "bridge"),
        ("DEL", "host-local"),
    ]
}

#[test]
#[ignore = "needs root"]
fn a_host_port_answers_from_outside_the_node() {
    if !require_root() {
        return;
    }
    let c = cluster(2);
    let rt = Containerd::start(&c, 1, None);
    let pod = rt.run_pod(&SandboxSpec::new("web").port(8080, 80));
    let www = TempDir::new();
    std::fs::write(www.join("index.html"), format!("hello from {}\n", pod.ip)).unwrap();
    let _server = Background {
        child: std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", pod.pid))
            .args(["busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(www.path())
            .spawn()
            .unwrap(),
    };
    // The server answers inside the pod first (so a failure below is the
    // port mapping's).
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            rt.pod_try_sh(&pod, "busybox wget -q -O- http://127.0.0.1/")
                .status
                .success()
        }),
        "httpd did not start in the pod"
    );
    let url = format!("http://{}:8080/", c.node_ip(1));
    let curl = format!("curl -sf --max-time 3 {url}");
    // From outside the node: etcd's netns and another node, on the underlay.
    for ns in [format!("{}-etcd", c.name), c.node_ns(2)] {
        let body = c.ns_sh(&ns, &curl);
        assert_eq!(body, format!("hello from {}\n", pod.ip), "from {ns}");
    }
    rt.stop_and_remove(&pod);
    rt.assert_nothing_left();
    let out = c.try_sh(&format!("ip netns exec {}-etcd {curl}", c.name));
    assert!(!out.status.success(), "the host port still answers");
    assert_weft_handled_every_call(&rt.calls());
}

#[test]
#[ignore = "needs root"]
fn bandwidth_annotations_shape_the_pod() {
    if !require_root() {
        return;
    }
    let c = cluster(1);
    let tmp = TempDir::new();
    let conflist = flannel_conflist_with(
        &tmp,
        &[json!({"type": "bandwidth", "capabilities": {"bandwidth": true}})],
    );
    let rt = Containerd::start(&c, 1, Some(&conflist));
    let pod = rt.run_pod(
        &SandboxSpec::new("slow")
            .annotation("kubernetes.io/ingress-bandwidth", "8M")
            .annotation("kubernetes.io/egress-bandwidth", "16M"),
    );
    let bw = rt
        .calls()
        .into_iter()
        .find(|c| c.plugin == "bandwidth" && c.command() == "ADD")
        .expect("bandwidth ADD");
    // The annotations become bits/s; containerd sets no burst of its own
    // but the maximum (u32::MAX bits).
    assert_eq!(
        bw.stdin["runtimeConfig"]["bandwidth"],
        json!({"IngressRate": 8_000_000u64, "IngressBurst": 4_294_967_295u64,
               "EgressRate": 16_000_000u64, "EgressBurst": 4_294_967_295u64}),
        "{}",
        bw.stdin
    );
    // Ingress (to the pod) is shaped on the host veth; egress (from the
    // pod) on an ifb device the host veth's ingress is redirected to. tc
    // reports rates in bytes/s.
    let node_ns = c.node_ns(1);
    let veths = rt.host_veths();
    assert_eq!(veths.len(), 1, "{veths:?}");
    let qdiscs: Value = serde_json::from_str(&c.ns_sh(&node_ns, "tc -j qdisc show")).unwrap();
    let tbf_rate = |dev: &str| -> Option<u64> {
        qdiscs.as_array()?.iter().find_map(|q| {
            (q["kind"] == "tbf" && q["dev"] == dev)
                .then(|| q["options"]["rate"].as_u64())
                .flatten()
        })
    };
    assert_eq!(tbf_rate(&veths[0]), Some(1_000_000), "{qdiscs}");
    let filters: Value = serde_json::from_str(&c.ns_sh(
        &node_ns,
        &format!("tc -j filter show dev {} ingress", veths[0]),
    ))
    .unwrap();
    let ifb = filters
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["options"]["actions"].as_array().into_iter().flatten())
        .find_map(|a| {
            (a["kind"] == "mirred")
                .then(|| a["to_dev"].as_str())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no redirect on {}: {filters}", veths[0]))
        .to_string();
    assert_eq!(tbf_rate(&ifb), Some(2_000_000), "{qdiscs}");
    rt.stop_and_remove(&pod);
    rt.assert_nothing_left();
    let qdiscs = c.ns_sh(&node_ns, "tc qdisc show; ip -o link show type ifb");
    assert!(
        !qdiscs.contains("tbf") && !qdiscs.contains(&ifb),
        "shaping left behind:\n{qdiscs}"
    );
    assert_weft_handled_every_call(&rt.calls());
}

#[test]
#[ignore = "needs root"]
fn a_containerd_restart_keeps_pods_networked_and_stop_still_cleans_up() {
    if !require_root() {
        return;
    }
    let c = cluster(2);
    let mut rt1 = Containerd::start(&c, 1, None);
    let rt2 = Containerd::start(&c, 2, None);
    let a = rt1.run_pod(&SandboxSpec::new("a"));
    let b = rt2.run_pod(&SandboxSpec::new("b"));
    assert!(rt1.ping(&a, &b.ip));
    // A steady ping across the restart: no packet may be lost.
    let pinger = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", a.pid))
        .args([
            "ping", "-n", "-q", "-i", "0.05", "-c", "60", "-W", "1", &b.ip,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let old = rt1.pid();
    rt1.restart();
    assert_ne!(rt1.pid(), old);
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 0% packet loss"), "{text}");
    // The restarted containerd knows the pod, its IP and its process.
    let st = rt1.cri.sandbox_status(&a.id).unwrap();
    assert!(st.ready);
    assert_eq!(st.ip, a.ip);
    assert_eq!(st.pid, Some(a.pid));
    assert!(rt1.ping(&a, &b.ip));
    rt1.clear_calls();
    rt1.stop_and_remove(&a);
    let del = rt1.calls();
    assert!(
        del.iter()
            .any(|c| c.plugin == "host-local" && c.command() == "DEL"),
        "{}",
        summary(&del)
    );
    rt1.assert_nothing_left();
    assert_weft_handled_every_call(&del);
    rt2.stop_and_remove(&b);
    rt2.assert_nothing_left();
}
