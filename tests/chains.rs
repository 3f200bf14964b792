//! kube-flannel's and k3s's conflists, unchanged, end to end on the
//! simulated cluster (`scripts/lib/cluster.sh`): pods attached through the
//! libcni driver exactly as a runtime attaches them (capabilities
//! `portMappings` and `bandwidth` as containerd's CRI sends them), with
//! only weft's binaries on CNI_PATH. A hostPort is reached from another
//! node and from a client on the underlay, shaping is measured with
//! iperf3 through that hostPort, CHECK runs over the whole chain, and DEL
//! leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::*;

const FAST: &str = "--reconcile-interval=1 --ip-masq";
/// A node number whose netns is created without weftd: a plain host on the
/// underlay, outside every pod network.
const CLIENT: u32 = 50;
/// The plugins kube-flannel's and k3s's conflists need (flannel delegates
/// to bridge and host-local).
const PLUGINS: [&str; 5] = ["flannel", "bridge", "host-local", "portmap", "bandwidth"];
/// 20 Mbit/s each way.
const RATE: u64 = 20_000_000;
/// containerd's CRI always sends this burst (math.MaxUint32 bits).
const CONTAINERD_BURST: u64 = 4_294_967_295;

/// Answers every TCP connection with "<name> <peer address>".
const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, a = s.accept()
    c.sendall(("%s %s\n" % (sys.argv[2], a[0])).encode())
    c.close()
"#;
const ASK: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
print(s.recv(100).decode().strip())
"#;

/// kube-flannel's cni-conf.json as shipped (`conf/10-weft.conflist`).
fn kube_flannel_conflist() -> PathBuf {
    workspace_root().join("conf/10-weft.conflist")
}

/// k3s's conflist, byte for byte: the `cniConf` constant of k3s-io/k3s
/// `pkg/agent/flannel/setup_linux.go` (see tests/conflists/README.md).
fn k3s_conflist() -> PathBuf {
    workspace_root().join("tests/conflists/k3s-10-flannel.conflist")
}

/// Two nodes with weftd, a client host on the underlay, and a CNI_PATH
/// holding copies of weft's binaries and nothing else.
struct Env {
    c: Cluster,
    cni_path: TempDir,
}

impl Env {
    fn new() -> Env {
        let c = Cluster::new(FAST);
        c.write_config(None);
        c.node_add(1);
        c.node_add(2);
        c.sh(&format!("cluster_node_create {CLIENT}"));
        c.wait_converged();
        let cni_path = TempDir::new();
        for p in PLUGINS {
            std::fs::copy(plugin_path(p), cni_path.join(p)).unwrap();
        }
        let env = Env { c, cni_path };
        env.assert_weft_only_cni_path();
        env
    }

    /// CNI_PATH is one dir, not /usr/lib/cni, whose every file is
    /// byte-identical to weft's build: no Go plugin can be found.
    fn assert_weft_only_cni_path(&self) {
        let dir = self.cni_path.path();
        assert!(!dir.starts_with(reference_plugin_dir()));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want: Vec<String> = PLUGINS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(names, want);
        for p in PLUGINS {
            assert_eq!(
                std::fs::read(dir.join(p)).unwrap(),
                std::fs::read(plugin_path(p)).unwrap(),
                "{p} on CNI_PATH is not weft's"
            );
        }
    }

    /// `call` (a chain helper and its arguments up to the pod, e.g.
    /// `cluster_libcni 1 check`) with this env's CNI_PATH; the output.
    fn libcni(&self, call: &str, pod: &str, conflist: &Path, cap: &Value) -> Output {
        self.c.try_sh(&format!(
            "WC_CNI_PATH={} {call} {pod} {} {}",
            shell_quote(&self.cni_path.path().display().to_string()),
            shell_quote(&conflist.display().to_string()),
            shell_quote(&cap.to_string()),
        ))
    }

    fn add(&self, pod: &str, conflist: &Path, cap: &Value) -> String {
        let out = self.libcni("cluster_chain_pod_add 1", pod, conflist, cap);
        assert!(out.status.success(), "ADD: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn check(&self, pod: &str, conflist: &Path, cap: &Value) -> Output {
        self.libcni("cluster_libcni 1 check", pod, conflist, cap)
    }

    fn del(&self, pod: &str, conflist: &Path, cap: &Value) {
        let out = self.libcni("cluster_chain_pod_del 1", pod, conflist, cap);
        assert!(out.status.success(), "DEL: {}", text(&out));
    }

    fn node1(&self) -> String {
        self.c.node_ns(1)
    }

    /// Starts `cmd` (a shell command line) in the background in `pod`'s
    /// netns; the pod's DEL (cluster_chain_pod_del) kills it.
    fn run_in_pod(&self, pod: &str, cmd: &str) {
        self.c.sh(&format!(
            "ip netns exec {} setsid {cmd} </dev/null >/dev/null 2>&1 &",
            self.c.pod_ns(1, pod)
        ));
    }

    /// Waits for an answer from node 1's address on `port`, asked from
    /// netns `from`.
    fn answer(&self, from: &str, port: u16) -> String {
        let script = format!(
            "python3 -c {} {} {port}",
            shell_quote(ASK),
            self.c.node_ip(1)
        );
        let mut got = String::new();
        let ok = self.c.wait_for(Duration::from_secs(10), || {
            let out = self.c.try_sh(&format!("ip netns exec {from} {script}"));
            got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            out.status.success() && !got.is_empty()
        });
        assert!(ok, "no answer on {}:{port} from {from}", self.c.node_ip(1));
        got
    }

    /// Node 1's state files as the plugins see them under /var/lib/cni:
    /// host-local reservations, flannel's delegate files, libcni's cache.
    fn var_lib_cni_files(&self) -> Vec<String> {
        let vlc = self.c.sh("cluster_node_var_lib_cni 1");
        self.c
            .sh(&format!(
                "cd {} && find . -type f ! -name lock ! -name 'last_reserved_ip.*' | sort",
                vlc.trim()
            ))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Host-side traces of a pod on node 1: its veths (eth0 is the
    /// underlay's), ifbs, non-default qdiscs, nft lines naming the pod's IP
    /// or weft's portmap table.
    fn traces(&self, pod_ip: &str) -> Vec<String> {
        let node = self.node1();
        let mut t: Vec<String> = Vec::new();
        let links = self.c.ns_sh(
            &node,
            "ip -o link show type veth | grep -v ' eth0@' ; ip -o link show type ifb",
        );
        t.extend(links.lines().map(|l| format!("link: {l}")));
        let qdiscs = self
            .c
            .ns_sh(&node, "tc qdisc show | grep -E 'tbf|ingress' || true");
        t.extend(qdiscs.lines().map(|l| format!("qdisc: {l}")));
        let ruleset = self.c.ns_sh(&node, "nft list ruleset");
        t.extend(
            ruleset
                .lines()
                .filter(|l| l.contains(pod_ip) || l.contains("weft_portmap"))
                .map(|l| format!("nft: {l}")),
        );
        t.extend(
            self.var_lib_cni_files()
                .into_iter()
                .map(|f| format!("file: {f}")),
        );
        t
    }

    /// DEL, then nothing of the pod is left on node 1.
    fn del_leaves_nothing(&self, pod: &str, pod_ip: &str, conflist: &Path, cap: &Value) {
        assert!(!self.traces(pod_ip).is_empty());
        self.del(pod, conflist, cap);
        let mut left = Vec::new();
        let clean = self.c.wait_for(Duration::from_secs(5), || {
            left = self.traces(pod_ip);
            left.is_empty()
        });
        assert!(clean, "left after DEL: {left:#?}");
        // DEL again (a runtime retries) is fine and still leaves nothing.
        let out = self.libcni("cluster_libcni 1 del", pod, conflist, cap);
        assert!(out.status.success(), "second DEL: {}", text(&out));
        assert_eq!(self.traces(pod_ip), Vec::<String>::new());
    }

    /// iperf3 through node 1's hostPort 5201, the client on the underlay;
    /// `reverse`: the pod sends. Bits per second received; None when no
    /// run succeeded.
    fn iperf_through_host_port(&self, reverse: bool) -> Option<f64> {
        let ns = self.c.node_ns(CLIENT);
        let mut args = format!("-c {} -p 5201 -t 6 -O 2 -J", self.c.node_ip(1));
        if reverse {
            args.push_str(" -R");
        }
        let mut bps = None;
        // The server (one test at a time, `-1`) was just started in the
        // pod: the client retries until it listens.
        self.c.wait_for(Duration::from_secs(10), || {
            let out = self.c.try_sh(&format!("ip netns exec {ns} iperf3 {args}"));
            let json: Option<Value> = serde_json::from_slice(&out.stdout).ok();
            bps = json.as_ref().and_then(iperf3_received_bps);
            out.status.success() && bps.is_some()
        });
        bps
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn port_mappings(ports: &[u16]) -> Value {
    let m: Vec<Value> = ports
        .iter()
        .map(|p| json!({"hostPort": p, "containerPort": p, "protocol": "tcp"}))
        .collect();
    Value::Array(m)
}

/// The hostPort answers from node 2 and from the client; the pod sees
/// each caller's own address (no SNAT from outside the node).
fn host_port_works_from_outside(env: &Env, pod: &str) {
    env.run_in_pod(
        pod,
        &format!("python3 -c {} 8080 {pod}", shell_quote(SERVER)),
    );
    let from_node2 = env.answer(&env.c.node_ns(2), 8080);
    assert_eq!(from_node2, format!("{pod} {}", env.c.node_ip(2)));
    let from_client = env.answer(&env.c.node_ns(CLIENT), 8080);
    assert_eq!(from_client, format!("{pod} {}", env.c.node_ip(CLIENT)));
}

#[test]
#[ignore = "needs root"]
fn kube_flannel_chain_host_port_check_and_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let list = kube_flannel_conflist();
    let cap = json!({"portMappings": port_mappings(&[8080])});
    let ip = env.add("a", &list, &cap);
    host_port_works_from_outside(&env, "a");

    // kube-flannel's conflist says cniVersion 0.3.1, which has no CHECK:
    // libcni refuses before calling any plugin (containerd never asks).
    let refused = env.check("a", &list, &cap);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("does not support the CHECK command"),
        "{}",
        text(&refused)
    );
    env.del_leaves_nothing("a", &ip, &list, &cap);

    // The same chain at 1.0.0 (the only change) CHECKs: flannel, bridge,
    // host-local and portmap each verify what they made. (A pod ADDed at
    // 0.3.1 cannot be CHECKed at 1.0.0: flannel's delegate file keeps the
    // version of the ADD.)
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    v["cniVersion"] = json!("1.0.0");
    let dir = TempDir::new();
    let list_v1 = dir.join("10-weft-1.0.0.conflist");
    std::fs::write(&list_v1, v.to_string()).unwrap();
    let ip = env.add("b", &list_v1, &cap);
    host_port_works_from_outside(&env, "b");
    let checked = env.check("b", &list_v1, &cap);
    assert!(checked.status.success(), "CHECK: {}", text(&checked));
    env.del_leaves_nothing("b", &ip, &list_v1, &cap);
}

#[test]
#[ignore = "needs root"]
fn k3s_chain_host_port_shaping_check_and_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let list = k3s_conflist();
    let cap = json!({
        "portMappings": port_mappings(&[8080, 5201]),
        "bandwidth": {
            "ingressRate": RATE, "ingressBurst": CONTAINERD_BURST,
            "egressRate": RATE, "egressBurst": CONTAINERD_BURST
        }
    });
    let ip = env.add("a", &list, &cap);
    host_port_works_from_outside(&env, "a");

    let check = env.check("a", &list, &cap);
    assert!(check.status.success(), "CHECK: {}", text(&check));

    for (reverse, what) in [(false, "into the pod"), (true, "out of the pod")] {
        assert_shaped_within_10_percent(RATE as f64, what, || {
            env.run_in_pod("a", "iperf3 -s -1 -p 5201");
            env.iperf_through_host_port(reverse)
        });
    }

    env.del_leaves_nothing("a", &ip, &list, &cap);
}
