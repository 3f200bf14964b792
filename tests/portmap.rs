//! Black-box tests of weft's `portmap` plugin, chained after weft's bridge
//! (host-local IPAM, dual-stack) on a node netns. A client netns on an
//! underlay veth stands for the outside world; traffic is real TCP and UDP
//! through the kernel's NAT, answered by a small echo server in the pod
//! that replies with the source address it saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "pmnet";
const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const NODE_V4: &str = "198.51.100.1";
const NODE_V4_EXTRA: &str = "198.51.100.3";
const CLIENT_V4: &str = "198.51.100.2";
const NODE_V6: &str = "2001:db8:100::1";
const CLIENT_V6: &str = "2001:db8:100::2";
const GATEWAY_V4: &str = "10.244.1.1";
const TABLE: &str = "weft_portmap";

/// Echo server: TCP and UDP on `port`, both families; answers
/// `<tag> <peer address>`.
const SERVER: &str = r#"
import socket, sys, threading
tag, port = sys.argv[1], int(sys.argv[2])
def peer(a):
    return a[0].removeprefix('::ffff:')
def tcp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('::', port)); s.listen(64)
    while True:
        c, a = s.accept(); c.sendall(f'{tag} {peer(a)}'.encode()); c.close()
def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(('::', port))
    while True:
        d, a = s.recvfrom(100); s.sendto(f'{tag} {peer(a)}'.encode(), a)
threading.Thread(target=tcp, daemon=True).start()
udp()
"#;

/// Client: one TCP connection or one UDP request; prints the answer.
const CLIENT: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ':' in host else socket.AF_INET
kind = socket.SOCK_STREAM if proto == 'tcp' else socket.SOCK_DGRAM
s = socket.socket(fam, kind); s.settimeout(1)
if len(sys.argv) > 4:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('', int(sys.argv[4])))
s.connect((host, port))
if proto == 'udp': s.send(b'hi')
print(s.recv(100).decode())
"#;

struct Env {
    node: Node,
    client: Netns,
    data: TempDir,
}

impl Env {
    /// A node with an underlay veth to a client netns (both families).
    fn new() -> Env {
        let node = Node::new();
        let client = Netns::with_tag("c");
        let up = format!("{}u", client.name);
        node.sh(&format!(
            "ip link add {up} type veth peer name eth0 netns {c} && \
             ip addr add {NODE_V4}/24 dev {up} && ip addr add {NODE_V4_EXTRA}/24 dev {up} && \
             ip addr add {NODE_V6}/64 dev {up} nodad && ip link set {up} up",
            c = client.name
        ));
        client.sh(&format!(
            "ip link set lo up && ip addr add {CLIENT_V4}/24 dev eth0 && \
             ip addr add {CLIENT_V6}/64 dev eth0 nodad && ip link set eth0 up"
        ));
        Env {
            node,
            client,
            data: TempDir::new(),
        }
    }

    fn bridge_conf(&self, version: &str) -> Value {
        let ipam = json!({
            "type": "host-local",
            "dataDir": self.data.path(),
            "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        });
        network(
            version,
            NET,
            merged(&bridge_plugin("cni0", ipam), json!({"hairpinMode": true})),
        )
    }

    /// ADD bridge, then run a server tagged `tag` on `port` in the pod.
    fn pod_with_server(&self, version: &str, tag: &str, port: u16) -> (Netns, Value, Background) {
        let pod = self.node.pod();
        let prev = CniCall::add(&pod, self.bridge_conf(version))
            .run_in(&self.node, &plugin_path("bridge"))
            .expect_ok();
        pod.sh("ip link set lo up");
        let server = pod.spawn("python3", &["-c", SERVER, tag, &port.to_string()]);
        (pod, prev, server)
    }

    /// The conflist bridge + portmap (with the portMappings capability).
    fn chain(&self, version: &str) -> Value {
        let mut bridge = self.bridge_conf(version);
        bridge.as_object_mut().unwrap().remove("cniVersion");
        bridge.as_object_mut().unwrap().remove("name");
        let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
        conflist(version, NET, vec![bridge, portmap])
    }

    fn run(&self, call: &CniCall) -> CniOutput {
        call.run_in(&self.node, &plugin_path("portmap"))
    }

    fn add(&self, pod: &Netns, conf: &Value, prev: &Value) -> CniOutput {
        self.run(&CniCall::add(pod, with_prev(conf, prev)))
    }

    fn check(&self, pod: &Netns, conf: &Value, prev: &Value) -> CniOutput {
        self.run(&CniCall::check(pod, with_prev(conf, prev)))
    }

    fn del(&self, pod: &Netns, conf: &Value) -> CniOutput {
        self.run(&CniCall::del(pod, conf.clone()))
    }

    fn ruleset(&self) -> String {
        nft_ruleset(&self.node)
    }
}

fn portmap_conf(version: &str, mappings: Value) -> Value {
    json!({
        "cniVersion": version,
        "name": NET,
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings}
    })
}

fn tcp_udp(host_port: u16, container_port: u16) -> Value {
    json!([
        {"hostPort": host_port, "containerPort": container_port, "protocol": "tcp"},
        {"hostPort": host_port, "containerPort": container_port, "protocol": "udp"}
    ])
}

/// One request from `ns`; the answer, or None.
fn ask(ns: &Netns, proto: &str, host: &str, port: u16) -> Option<String> {
    let out = ns.exec("python3", &["-c", CLIENT, proto, host, &port.to_string()]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One UDP request from source port `sport` (one 5-tuple, one conntrack
/// entry); the answer, or None.
fn ask_from(ns: &Netns, host: &str, port: u16, sport: u16) -> Option<String> {
    let args = [
        "-c",
        CLIENT,
        "udp",
        host,
        &port.to_string(),
        &sport.to_string(),
    ];
    let out = ns.exec("python3", &args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Like [`ask_from`], but a lost request (no answer at all, e.g. while the
/// node resolves the pod's neighbour on a loaded machine) is sent again
/// for up to 10 s. An answer, from whoever, is final: the same 5-tuple
/// keeps its conntrack entry, so a retry cannot hide a stale one.
fn answer_from(ns: &Netns, host: &str, port: u16, sport: u16) -> Option<String> {
    let mut got = None;
    wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        got = ask_from(ns, host, port, sport);
        got.is_some()
    });
    got
}

/// Waits (the server may still be starting) for an answer.
#[track_caller]
fn answer(ns: &Netns, proto: &str, host: &str, port: u16) -> String {
    let mut got = None;
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        got = ask(ns, proto, host, port);
        got.is_some()
    });
    assert!(ok, "no answer from {proto} {host}:{port}");
    got.unwrap()
}

fn pod_ip(prev: &Value, v4: bool) -> String {
    prev["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .find(|a| a.contains('.') == v4)
        .unwrap()
}

#[test]
#[ignore = "needs root"]
fn external_tcp_and_udp_over_both_families() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let conf = portmap_conf("1.0.0", tcp_udp(8080, 80));
    let out = env.add(&pod, &conf, &prev).expect_ok();
    assert_eq!(out["ips"], prev["ips"], "portmap passes prevResult through");
    for proto in ["tcp", "udp"] {
        for (host, client) in [(NODE_V4, CLIENT_V4), (NODE_V6, CLIENT_V6)] {
            // External traffic keeps its source address (no masquerade).
            assert_eq!(
                answer(&env.client, proto, host, 8080),
                format!("podA {client}")
            );
        }
    }
    env.check(&pod, &conf, &prev).expect_ok();
    env.del(&pod, &with_prev(&conf, &prev)).expect_ok();
    assert!(
        !env.ruleset().contains(TABLE),
        "table left:\n{}",
        env.ruleset()
    );
    assert_eq!(ask(&env.client, "tcp", NODE_V4, 8080), None);
}

#[test]
#[ignore = "needs root"]
fn hairpin_localhost_and_node_address() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let conf = portmap_conf("1.0.0", tcp_udp(8080, 80));
    env.add(&pod, &conf, &prev).expect_ok();
    // Another pod on the same bridge: its flow is masqueraded to the
    // gateway, so the answer comes back through the node.
    let (other, _, _s2) = env.pod_with_server("1.0.0", "podB", 81);
    for proto in ["tcp", "udp"] {
        assert_eq!(
            answer(&other, proto, NODE_V4, 8080),
            format!("podA {GATEWAY_V4}")
        );
        let seen = answer(&other, proto, NODE_V6, 8080);
        assert!(seen.starts_with("podA fd00:10:244:1::"), "{seen}");
        // The pod reaches itself through its own host port (hairpin mode).
        assert_eq!(
            answer(&pod, proto, NODE_V4, 8080),
            format!("podA {GATEWAY_V4}")
        );
    }
    // The node itself: its own addresses, and 127.0.0.1 (route_localnet).
    for host in [NODE_V4, "127.0.0.1", NODE_V6] {
        let seen = answer(&env.node, "tcp", host, 8080);
        assert!(seen.starts_with("podA "), "{host}: {seen}");
    }
    assert_eq!(
        env.node
            .sh("sysctl -n net.ipv4.conf.cni0.route_localnet")
            .trim(),
        "1"
    );
}

#[test]
#[ignore = "needs root"]
fn host_ip_limits_the_mapping_to_that_address() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let conf = portmap_conf(
        "1.0.0",
        json!([
            {"hostPort": 9090, "containerPort": 80, "protocol": "tcp", "hostIP": NODE_V4_EXTRA},
            {"hostPort": 9091, "containerPort": 80, "protocol": "udp", "hostIP": NODE_V6}
        ]),
    );
    env.add(&pod, &conf, &prev).expect_ok();
    assert!(answer(&env.client, "tcp", NODE_V4_EXTRA, 9090).starts_with("podA"));
    assert!(answer(&env.client, "udp", NODE_V6, 9091).starts_with("podA"));
    // Having seen the mapping work, the other address and family do not map.
    assert_eq!(ask(&env.client, "tcp", NODE_V4, 9090), None);
    assert_eq!(ask(&env.client, "udp", NODE_V4, 9091), None);
    // A forwarded packet to the pod's own address on 9090 is not hijacked.
    let v4 = pod_ip(&prev, true);
    assert_eq!(ask(&env.node, "tcp", &v4, 9090), None);
    env.check(&pod, &conf, &prev).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn every_version_add_check_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    for (i, version) in VERSIONS.iter().enumerate() {
        let (pod, prev, _server) = env.pod_with_server(version, "pod", 80);
        let port = 8100 + i as u16;
        let conf = portmap_conf(version, tcp_udp(port, 80));
        let out = env.add(&pod, &conf, &prev).expect_ok();
        assert_eq!(out["cniVersion"], *version);
        assert_eq!(out["ips"], prev["ips"]);
        assert!(answer(&env.client, "tcp", NODE_V4, port).starts_with("pod"));
        if *version >= "0.4.0" {
            env.check(&pod, &conf, &prev).expect_ok();
        } else {
            env.check(&pod, &conf, &prev).expect_error(1);
        }
        env.del(&pod, &conf).expect_ok();
        env.del(&pod, &conf).expect_ok();
        CniCall::del(&pod, env.bridge_conf(version))
            .run_in(&env.node, &plugin_path("bridge"))
            .expect_ok();
    }
    assert!(!env.ruleset().contains(TABLE));
    let v = env
        .run(&CniCall::version(json!({"cniVersion": "1.1.0"})))
        .expect_ok();
    assert_eq!(
        v["supportedVersions"].as_array().unwrap().len(),
        VERSIONS.len()
    );
    env.run(&CniCall::status(portmap_conf("1.1.0", json!([]))))
        .expect_ok();
}

#[test]
#[ignore = "needs root"]
fn no_mappings_passes_through_and_needs_prev_result() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "pod", 80);
    let conf = json!({"cniVersion": "1.0.0", "name": NET, "type": "portmap"});
    let out = env.add(&pod, &conf, &prev).expect_ok();
    assert_eq!(out["ips"], prev["ips"]);
    assert!(!env.ruleset().contains(TABLE));
    env.run(&CniCall::add(&pod, conf.clone())).expect_error(7);
    env.check(&pod, &conf, &prev).expect_ok();
    env.del(&pod, &conf).expect_ok();
}

#[test]
#[ignore = "needs root"]
fn check_in_a_chain_with_bridge_sees_only_its_own_rules() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    // An IPv4-only pod: the reference's CHECK fails on it (no ipv6 dnat).
    let v4_only = merged(
        &env.bridge_conf("1.0.0"),
        json!({"ipam": host_local_ipam(env.data.path(), subnet_range("10.244.1.0/24"))}),
    );
    let pod_a = env.node.pod();
    let prev_a = CniCall::add(&pod_a, v4_only.clone())
        .run_in(&env.node, &plugin_path("bridge"))
        .expect_ok();
    let pod_b = env.node.pod();
    let prev_b = CniCall::add(&pod_b, v4_only.clone())
        .run_in(&env.node, &plugin_path("bridge"))
        .expect_ok();
    let conf_a = portmap_conf("1.0.0", tcp_udp(8080, 80));
    let conf_b = portmap_conf("1.0.0", tcp_udp(8081, 80));
    env.add(&pod_a, &conf_a, &prev_a).expect_ok();
    env.add(&pod_b, &conf_b, &prev_b).expect_ok();
    CniCall::check(&pod_a, with_prev(&v4_only, &prev_a))
        .run_in(&env.node, &plugin_path("bridge"))
        .expect_ok();
    env.check(&pod_a, &conf_a, &prev_a).expect_ok();

    // Drop one of B's mappings: B's CHECK fails, A's still passes.
    env.node.sh(&format!(
        "nft delete element inet {TABLE} ports4 {{ udp . 8081 }}"
    ));
    env.check(&pod_b, &conf_b, &prev_b).expect_error(105);
    env.check(&pod_a, &conf_a, &prev_a).expect_ok();
}

/// A host port another attachment maps already (say a pod whose DEL
/// never came) is taken over by the newer ADD: traffic goes to the new
/// pod, the old attachment's CHECK fails, and its DEL leaves the new
/// mapping alone.
#[test]
#[ignore = "needs root"]
fn a_newer_attachment_takes_a_host_port_over() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod_a, prev_a, _server_a) = env.pod_with_server("1.0.0", "a", 80);
    let (pod_b, prev_b, _server_b) = env.pod_with_server("1.0.0", "b", 80);
    let conf = portmap_conf("1.0.0", tcp_udp(8080, 80));
    env.add(&pod_a, &conf, &prev_a).expect_ok();
    assert!(answer(&env.client, "tcp", NODE_V4, 8080).starts_with('a'));
    env.add(&pod_b, &conf, &prev_b).expect_ok();
    for (proto, node) in [("tcp", NODE_V4), ("udp", NODE_V4), ("tcp", NODE_V6)] {
        assert!(answer(&env.client, proto, node, 8080).starts_with('b'));
    }
    env.check(&pod_a, &conf, &prev_a).expect_error(105);
    env.check(&pod_b, &conf, &prev_b).expect_ok();
    env.del(&pod_a, &with_prev(&conf, &prev_a)).expect_ok();
    assert!(answer(&env.client, "tcp", NODE_V4, 8080).starts_with('b'));
    env.check(&pod_b, &conf, &prev_b).expect_ok();
    env.del(&pod_b, &with_prev(&conf, &prev_b)).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

#[test]
#[ignore = "needs root"]
fn del_without_netns_or_mappings_and_gc() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let mut pods = Vec::new();
    for (i, tag) in ["a", "b", "c"].iter().enumerate() {
        let (pod, prev, server) = env.pod_with_server("1.1.0", tag, 80);
        let conf = portmap_conf("1.1.0", tcp_udp(8080 + i as u16, 80));
        env.add(&pod, &conf, &prev).expect_ok();
        pods.push((pod, prev, server, conf));
    }
    // DEL of "a" with the netns gone and no mappings: all of a's rules go.
    let (pod_a, _, server_a, _) = pods.remove(0);
    let id_a = format!("ctr-{}", pod_a.name);
    let path_a = pod_a.path_str().to_string();
    drop(server_a);
    drop(pod_a);
    let bare = json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap"});
    env.run(
        &CniCall::new("DEL", bare.clone())
            .container_id(&id_a)
            .netns(&path_a),
    )
    .expect_ok();
    assert!(!env.ruleset().contains("8080"), "{}", env.ruleset());
    assert!(answer(&env.client, "tcp", NODE_V4, 8081).starts_with('b'));

    // GC keeps the valid attachment (b) and drops c.
    let id = |p: &Netns| format!("ctr-{}", p.name);
    let gc = merged(
        &bare,
        json!({"cni.dev/valid-attachments": [{"containerID": id(&pods[0].0), "ifname": "eth0"}]}),
    );
    env.run(&CniCall::gc(gc)).expect_ok();
    assert!(!env.ruleset().contains("8082"), "{}", env.ruleset());
    assert!(answer(&env.client, "tcp", NODE_V4, 8081).starts_with('b'));
    env.check(&pods[0].0, &pods[0].3, &pods[0].1).expect_ok();
    // Another network's GC leaves our rules alone.
    env.run(&CniCall::gc(merged(&bare, json!({"name": "othernet"}))))
        .expect_ok();
    assert!(env.ruleset().contains("8081"));
    // GC with nothing valid: nothing of weft's is left.
    env.run(&CniCall::gc(bare)).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

/// The sets and maps of the node's weft table, as `nft -j list ruleset`
/// prints them: (name, elements).
fn weft_sets(node: &Netns) -> Vec<(String, Vec<Value>)> {
    let ruleset: Value = serde_json::from_str(&node.sh("nft -j list ruleset")).unwrap();
    ruleset["nftables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| item.get("set").or_else(|| item.get("map")).cloned())
        .filter(|set| set["table"] == TABLE)
        .map(|set| {
            let elements = set["elem"].as_array().cloned().unwrap_or_default();
            (
                set["name"].as_str().unwrap_or_default().to_string(),
                elements,
            )
        })
        .collect()
}

/// An element's comment: a map element is `[key, value]`.
fn element_comment(element: &Value) -> Option<&str> {
    let key = element.get(0).unwrap_or(element);
    key["elem"]["comment"].as_str()
}

/// This attachment's entries in the node's weft table: its DNAT map
/// elements (with its conditioned DNAT rules), and its masquerade
/// elements.
fn rules_of(node: &Netns, id: &str) -> (usize, usize) {
    let tagged = format!("id={id} ");
    let mine = |c: Option<&str>| c.is_some_and(|c| c.contains(&tagged));
    let (mut dnat, mut masq) = (0, 0);
    for (set, elements) in weft_sets(node) {
        let n = elements.iter().filter(|e| mine(element_comment(e))).count();
        if set.starts_with("masq") {
            masq += n;
        } else {
            dnat += n;
        }
    }
    dnat += nft_rules(node)
        .iter()
        .filter(|r| r["table"] == TABLE && r["chain"] == "conditioned")
        .filter(|r| mine(r["comment"].as_str()))
        .count();
    (dnat, masq)
}

/// Attachment `i` on `pod`'s bridge: its container ID and a portmap
/// config with a prevResult of its own addresses (10.244.1.100 + i).
fn extra_attachment(pod: &Netns, prev: &Value, i: u16) -> (String, Value) {
    let mut prev = prev.clone();
    for ip in prev["ips"].as_array_mut().unwrap() {
        let v4 = ip["address"].as_str().unwrap().contains('.');
        ip["address"] = json!(if v4 {
            format!("10.244.1.{}/24", 100 + i)
        } else {
            format!("fd00:10:244:1::{:x}/64", 0x100 + i)
        });
    }
    let conf = with_prev(&portmap_conf("1.0.0", tcp_udp(20000 + i, 80)), &prev);
    (format!("ctr-{}-{i}", pod.name), conf)
}

/// An extra attachment's entries when intact: 2 mappings, dual-stack, so
/// 4 DNAT elements; masquerade 2 + 2 (IPv4 pod subnet and 127.0.0.1) and
/// 2 (IPv6 subnet).
const INTACT: (usize, usize) = (4, 6);

/// Many ADD, CHECK and DEL at once on one node, without the portmap lock:
/// the table is emptied (and deleted) and recreated again and again under
/// concurrent ADDs, yet every ADD's rules survive until its own DEL, and
/// nothing is left at the end.
#[test]
#[ignore = "needs root"]
fn concurrent_add_and_del_keep_every_attachment_intact() {
    if !require_root() {
        return;
    }
    const WORKERS: u16 = 16;
    const ROUNDS: usize = 5;
    let env = Env::new();
    // One real pod gives the bridge and the routes; the others are
    // attachments with addresses of their own on the same bridge.
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "real", 80);
    let call = |make: fn(&Netns, Value) -> CniCall, id: &str, conf: &Value| {
        env.run(&make(&pod, conf.clone()).container_id(id))
    };
    std::thread::scope(|scope| {
        for i in 0..WORKERS {
            let (id, conf) = extra_attachment(&pod, &prev, i);
            let call = &call;
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    call(CniCall::add, &id, &conf).expect_ok();
                    call(CniCall::check, &id, &conf).expect_ok();
                    // Half the workers keep their last attachment.
                    if round + 1 < ROUNDS || i % 2 == 1 {
                        call(CniCall::del, &id, &conf).expect_ok();
                    }
                }
            });
        }
    });
    for i in 0..WORKERS {
        let (id, conf) = extra_attachment(&pod, &prev, i);
        let want = if i % 2 == 0 { INTACT } else { (0, 0) };
        assert_eq!(rules_of(&env.node, &id), want, "{id}: {}", env.ruleset());
        if i % 2 == 0 {
            call(CniCall::check, &id, &conf).expect_ok();
        }
    }
    std::thread::scope(|scope| {
        for i in (0..WORKERS).step_by(2) {
            let (id, conf) = extra_attachment(&pod, &prev, i);
            let call = &call;
            scope.spawn(move || call(CniCall::del, &id, &conf).expect_ok());
        }
    });
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

/// A second ADD of the same attachment (a runtime retrying) adds rules its
/// record cannot hold alone: DEL must still remove both ADDs' rules.
#[test]
#[ignore = "needs root"]
fn del_after_a_repeated_add_removes_both_adds_rules() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "real", 80);
    let (id, conf) = extra_attachment(&pod, &prev, 0);
    let mut again = conf.clone();
    again["runtimeConfig"]["portMappings"] =
        json!([{"hostPort": 20100, "containerPort": 80, "protocol": "tcp"}]);
    let call = |make: fn(&Netns, Value) -> CniCall, conf: &Value| {
        env.run(&make(&pod, conf.clone()).container_id(&id))
    };
    call(CniCall::add, &conf).expect_ok();
    call(CniCall::add, &again).expect_ok();
    // 4 + 2 DNAT elements (dual-stack); the masquerade elements are per
    // pod port, and the first ADD's cover the second's.
    assert_eq!(rules_of(&env.node, &id), (6, 6), "{}", env.ruleset());
    call(CniCall::del, &conf).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

/// The race the lock used to prevent, forced: a DEL of the last
/// attachment reads the table (nothing else left: delete it), and an ADD
/// commits before the DEL's transaction. strace slows each of the DEL's
/// netlink requests (0.5 s) so that the ADD lands in between; the kernel
/// refuses the DEL's first transaction (the ruleset changed), the DEL
/// reads again and deletes only its own rules.
#[test]
#[ignore = "needs root"]
fn del_of_the_last_attachment_spares_an_add_in_between() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "real", 80);
    let call = |make: fn(&Netns, Value) -> CniCall, id: &str, conf: &Value, plugin: &Path| {
        make(&pod, conf.clone())
            .container_id(id)
            .run_in(&env.node, plugin)
    };
    // x maps one TCP port: few requests to slow down, and no conntrack.
    let (x, mut x_conf) = extra_attachment(&pod, &prev, 0);
    x_conf["runtimeConfig"]["portMappings"] =
        json!([{"hostPort": 20000, "containerPort": 80, "protocol": "tcp"}]);
    let (y, y_conf) = extra_attachment(&pod, &prev, 1);
    let portmap = plugin_path("portmap");
    call(CniCall::add, &x, &x_conf, &portmap).expect_ok();
    let log = env.data.path().join("del.strace");
    let slow = env.data.path().join("slow-portmap");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nexec strace -qq -tt -o {} -e trace=sendto -e inject=sendto:delay_enter=500000 {} \"$@\"\n",
            log.display(),
            portmap.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sent = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    std::thread::scope(|scope| {
        let del = scope.spawn(|| call(CniCall::del, &x, &x_conf, &slow));
        // The DEL has walked its chains and the table (only x's rules: the table
        // is to go) and is asking whether the table exists (strace prints
        // a request before delaying it): its transaction is yet to come.
        let decided = || sent("NFT_MSG_GETTABLE") > 0;
        assert!(wait_until(
            Duration::from_secs(30),
            Duration::from_millis(5),
            decided
        ));
        call(CniCall::add, &y, &y_conf, &portmap).expect_ok();
        del.join().unwrap().expect_ok();
    });
    assert_eq!(rules_of(&env.node, &y), INTACT, "{}", env.ruleset());
    assert_eq!(rules_of(&env.node, &x), (0, 0), "{}", env.ruleset());
    assert!(
        sent("NFNL_MSG_BATCH_BEGIN") >= 2,
        "the ADD did not land between the DEL's read and its transaction: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    call(CniCall::check, &y, &y_conf, &portmap).expect_ok();
    call(CniCall::del, &y, &y_conf, &portmap).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_refused_and_changes_nothing() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "pod", 80);
    env.add(&pod, &portmap_conf("1.0.0", tcp_udp(8080, 80)), &prev)
        .expect_ok();
    let v4_only_prev = json!({
        "cniVersion": "1.0.0",
        "interfaces": prev["interfaces"],
        "ips": [prev["ips"].as_array().unwrap().iter().find(|i| i["address"].as_str().unwrap().contains('.')).unwrap()]
    });
    let before = env.ruleset();
    let m = |v: Value| portmap_conf("1.0.0", json!([v]));
    let cases: Vec<(Value, Value, u64)> = vec![
        (
            m(json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 65536, "containerPort": 80, "protocol": "tcp"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": -1, "containerPort": 80, "protocol": "tcp"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 9000, "containerPort": 0, "protocol": "tcp"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "icmp"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 9000, "containerPort": 80, "protocol": ""})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp", "hostIP": "nope"})),
            prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp", "hostIP": "::1"})),
            v4_only_prev.clone(),
            7,
        ),
        (
            m(json!({"hostPort": "9000", "containerPort": 80, "protocol": "tcp"})),
            prev.clone(),
            6,
        ),
        (
            portmap_conf(
                "1.0.0",
                json!([
                    {"hostPort": 9000, "containerPort": 80, "protocol": "tcp"},
                    {"hostPort": 9000, "containerPort": 81, "protocol": "TCP"}
                ]),
            ),
            prev.clone(),
            7,
        ),
        (
            merged(
                &m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp"})),
                json!({"markMasqBit": 32}),
            ),
            prev.clone(),
            7,
        ),
        (
            merged(
                &m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp"})),
                json!({"backend": "pf"}),
            ),
            prev.clone(),
            7,
        ),
        (
            merged(
                &m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp"})),
                json!({"backend": "nftables", "externalSetMarkChain": "X"}),
            ),
            prev.clone(),
            7,
        ),
        (
            merged(
                &m(json!({"hostPort": 9000, "containerPort": 80, "protocol": "tcp"})),
                json!({"conditionsV4": ["ip saddr 1.2.3.4; add table ip evil"]}),
            ),
            prev.clone(),
            7,
        ),
    ];
    for (conf, prev, code) in cases {
        let err = env.add(&pod, &conf, &prev).expect_error(code);
        assert!(!err["msg"].as_str().unwrap().is_empty());
        assert_eq!(env.ruleset(), before, "after {conf}");
    }
    // No prevResult at all.
    env.run(&CniCall::add(
        &pod,
        portmap_conf("1.0.0", tcp_udp(9000, 80)),
    ))
    .expect_error(7);
    assert_eq!(env.ruleset(), before);
    // DEL is best-effort: a mapping ADD would refuse does not stop it.
    let bad = m(json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}));
    env.del(&pod, &bad).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

#[test]
#[ignore = "needs root"]
fn libcni_chain_with_port_mappings_capability() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let list = env.chain("1.0.0");
    let mut driver = Driver::new(&list, &[&plugin_dir()]);
    driver.cap_args = Some(json!({"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 8080, "containerPort": 80, "protocol": "udp"}
    ]}));
    let pod = env.node.pod();
    driver.add(&env.node, &pod, "c1", "eth0").expect_ok();
    pod.sh("ip link set lo up");
    let _server = pod.spawn("python3", &["-c", SERVER, "lib", "80"]);
    assert_eq!(
        answer(&env.client, "udp", NODE_V4, 8080),
        format!("lib {CLIENT_V4}")
    );
    driver.check(&env.node, &pod, "c1", "eth0").expect_ok();
    driver.del(&env.node, Some(&pod), "c1", "eth0").expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}

fn nat_rules(ns: &Netns) -> String {
    ns.sh("iptables-save -t nat; ip6tables-save -t nat")
}

#[test]
#[ignore = "needs root"]
fn iptables_backend_end_to_end() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let conf = merged(
        &portmap_conf("1.0.0", tcp_udp(8080, 80)),
        json!({"backend": "iptables", "conditionsV4": ["! -s 203.0.113.0/24"]}),
    );
    env.add(&pod, &conf, &prev).expect_ok();
    assert!(!env.ruleset().contains(TABLE));
    for proto in ["tcp", "udp"] {
        assert_eq!(
            answer(&env.client, proto, NODE_V4, 8080),
            format!("podA {CLIENT_V4}")
        );
        assert_eq!(
            answer(&env.client, proto, NODE_V6, 8080),
            format!("podA {CLIENT_V6}")
        );
    }
    let (other, prev_b, _s2) = env.pod_with_server("1.0.0", "podB", 81);
    assert_eq!(
        answer(&other, "tcp", NODE_V4, 8080),
        format!("podA {GATEWAY_V4}")
    );
    assert!(answer(&env.node, "tcp", "127.0.0.1", 8080).starts_with("podA"));
    env.check(&pod, &conf, &prev).expect_ok();
    let conf_b = merged(
        &portmap_conf("1.0.0", tcp_udp(8081, 81)),
        json!({"backend": "iptables"}),
    );
    env.add(&other, &conf_b, &prev_b).expect_ok();

    // DEL without mappings or netns removes only A; GC removes B and with
    // it every weft chain.
    let bare =
        json!({"cniVersion": "1.1.0", "name": NET, "type": "portmap", "backend": "iptables"});
    env.run(&CniCall::del(&pod, bare.clone()).netns("/run/netns/gone"))
        .expect_ok();
    assert_eq!(ask(&env.client, "tcp", NODE_V4, 8080), None);
    assert!(answer(&env.client, "tcp", NODE_V4, 8081).starts_with("podB"));
    env.run(&CniCall::gc(bare)).expect_ok();
    let nat = nat_rules(&env.node);
    assert!(!nat.contains("WEFT-H"), "weft chains left:\n{nat}");
}

#[test]
#[ignore = "needs root"]
fn reference_portmap_and_weft_side_by_side() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod_w, prev_w, _s1) = env.pod_with_server("1.0.0", "weft", 80);
    let (pod_r, prev_r, _s2) = env.pod_with_server("1.0.0", "ref", 80);
    let conf_w = portmap_conf("1.0.0", tcp_udp(8080, 80));
    let conf_r = portmap_conf("1.0.0", tcp_udp(8081, 80));
    let reference = reference_plugin_dir().join("portmap");
    env.add(&pod_w, &conf_w, &prev_w).expect_ok();
    CniCall::add(&pod_r, with_prev(&conf_r, &prev_r))
        .run_in(&env.node, &reference)
        .expect_ok();
    for (port, tag) in [(8080, "weft"), (8081, "ref")] {
        assert_eq!(
            answer(&env.client, "tcp", NODE_V4, port),
            format!("{tag} {CLIENT_V4}")
        );
        assert_eq!(
            answer(&env.client, "udp", NODE_V4, port),
            format!("{tag} {CLIENT_V4}")
        );
    }
    CniCall::del(&pod_r, with_prev(&conf_r, &prev_r))
        .run_in(&env.node, &reference)
        .expect_ok();
    assert!(answer(&env.client, "tcp", NODE_V4, 8080).starts_with("weft"));
    env.check(&pod_w, &conf_w, &prev_w).expect_ok();
    CniCall::add(&pod_r, with_prev(&conf_r, &prev_r))
        .run_in(&env.node, &reference)
        .expect_ok();
    env.del(&pod_w, &conf_w).expect_ok();
    assert!(answer(&env.client, "tcp", NODE_V4, 8081).starts_with("ref"));
}

#[test]
#[ignore = "needs root"]
fn udp_conntrack_is_flushed_on_add_and_del() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    // Conntrack tracks a netns's flows only once some rule needs it (a
    // real node always has NAT rules): track from the first packet on.
    env.node.sh("nft add table inet ctcheck && \
         nft add chain inet ctcheck pre '{ type filter hook prerouting priority 0; }' && \
         nft add rule inet ctcheck pre ct state new counter");
    // A UDP service on the node itself (a hostNetwork pod) on the port.
    let _on_node = env.node.spawn("python3", &["-c", SERVER, "node", "8080"]);
    assert!(answer(&env.client, "udp", NODE_V4, 8080).starts_with("node"));
    // A flow from a fixed source port now has a conntrack entry to the node.
    assert!(answer_from(&env.client, NODE_V4, 8080, 40000).is_some_and(|a| a.starts_with("node")));
    assert!(answer_from(&env.client, NODE_V6, 8080, 40000).is_some_and(|a| a.starts_with("node")));

    // ADD flushes it: the same 5-tuple is DNATed to the pod at once.
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "pod", 80);
    let conf = portmap_conf("1.0.0", tcp_udp(8080, 80));
    env.add(&pod, &conf, &prev).expect_ok();
    assert!(answer(&pod, "udp", "::1", 80).starts_with("pod"));
    for host in [NODE_V4, NODE_V6] {
        let got = answer_from(&env.client, host, 8080, 40000);
        assert!(
            got.as_deref().is_some_and(|a| a.starts_with("pod ")),
            "{host}: {got:?}"
        );
    }
    // DEL flushes the flows DNATed to the pod: the node's service answers
    // the same 5-tuple again instead of a dead pod.
    env.del(&pod, &with_prev(&conf, &prev)).expect_ok();
    for host in [NODE_V4, NODE_V6] {
        let got = answer_from(&env.client, host, 8080, 40000);
        assert!(
            got.as_deref().is_some_and(|a| a.starts_with("node ")),
            "{host}: {got:?}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn podman_cni_backend_publishes_ports_through_weft() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let list = env.chain("0.4.0");
    let podman = Podman::new(&env.node, &list, &["portmap"]);
    podman.run_container(
        "pm",
        &[
            "--network",
            NET,
            "--publish",
            "8080:80/tcp",
            "--publish",
            "5353:53/udp",
        ],
        &["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
    );
    let fetched = wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        env.client
            .try_sh(&format!("curl -s --max-time 2 http://{NODE_V4}:8080/"))
            .stdout
            .starts_with(b"hello-from-podman")
    });
    assert!(fetched, "no answer through podman's port mapping");
    let out = podman.run(&["rm", "-f", "pm"]);
    assert!(
        out.status.success(),
        "podman rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());

    // What podman really sends: 0.4.0, prevResult with "version" per IP,
    // the portMappings on ADD and again on DEL, `capabilities` passed on.
    let sent = podman.sent("portmap");
    let cmds: Vec<&str> = sent.iter().map(|(c, _)| c.as_str()).collect();
    assert!(cmds.len() >= 2 && cmds[0] == "ADD", "{cmds:?}");
    assert!(cmds[1..].iter().all(|c| *c == "DEL"), "{cmds:?}");
    let expected = json!([
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
    ]);
    // podman lists the mappings in no fixed order.
    let sorted = |v: &Value| {
        let mut items: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(Value::to_string)
            .collect();
        items.sort();
        items
    };
    for (_, stdin) in &sent {
        assert_eq!(stdin["cniVersion"], "0.4.0");
        assert_eq!(
            sorted(&stdin["runtimeConfig"]["portMappings"]),
            sorted(&expected)
        );
        assert_eq!(stdin["capabilities"], json!({"portMappings": true}));
        assert_eq!(stdin["prevResult"]["ips"][0]["version"], "4");
    }
}

/// One mapping as the oracle script writes it: (protocol, host port,
/// container port, hostIP).
type OracleMapping = (&'static str, u16, u16, Option<&'static str>);

/// The table, sets and fixed chains portmap makes, as nft text.
fn oracle_skeleton() -> String {
    let t = format!("inet {TABLE}");
    format!(
        "add table {t}\n\
         add map {t} hostip4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} hostip6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add map {t} ports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
         add map {t} ports6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}\n\
         add set {t} masq4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }}\n\
         add set {t} masq6 {{ type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval; }}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         add chain {t} hostports\n\
         add chain {t} conditioned\n\
         add rule {t} prerouting fib daddr type local jump hostports\n\
         add rule {t} output fib daddr type local jump hostports\n\
         add rule {t} hostports dnat ip to ip daddr . meta l4proto . th dport map @hostip4\n\
         add rule {t} hostports dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6\n\
         add rule {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4\n\
         add rule {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6\n\
         add rule {t} hostports jump conditioned\n\
         add rule {t} postrouting ct status dnat ip saddr . ip daddr . meta l4proto . th dport @masq4 masquerade\n\
         add rule {t} postrouting ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @masq6 masquerade\n"
    )
}

/// The ruleset an ADD makes, as an `nft -f` script: the skeleton when the
/// table is new, then per family each mapping's DNAT element (a rule in
/// `conditioned` with a condition) and masquerade elements. Kept here as
/// the oracle the netlink ADD must match.
fn oracle_script(
    skeleton: bool,
    comment: &str,
    pods: [(&str, &str); 2],
    mappings: &[OracleMapping],
    snat: bool,
    masq_all: bool,
    condition_v4: Option<&str>,
) -> String {
    let t = format!("inet {TABLE}");
    let mut s = if skeleton {
        oracle_skeleton()
    } else {
        String::new()
    };
    let mut made = Vec::new();
    for (v4, (pod, subnet)) in [(true, pods[0]), (false, pods[1])] {
        let (fam, nfproto, n) = if v4 {
            ("ip", "ipv4", 4)
        } else {
            ("ip6", "ipv6", 6)
        };
        let to = if v4 {
            pod.to_string()
        } else {
            format!("[{pod}]")
        };
        for (proto, host, cont, host_ip) in mappings {
            if host_ip.is_some_and(|ip| ip.contains('.') != v4) {
                continue;
            }
            let daddr = host_ip
                .map(|ip| format!("{fam} daddr {ip} "))
                .unwrap_or_default();
            s += &match (condition_v4.filter(|_| v4), host_ip) {
                (Some(c), _) => format!(
                    "add rule {t} conditioned meta nfproto {nfproto} {c} {daddr}{proto} dport {host} \
                     dnat {fam} to {to}:{cont} comment \"{comment}\"\n"
                ),
                (None, Some(ip)) => format!(
                    "add element {t} hostip{n} {{ {ip} . {proto} . {host} comment \"{comment}\" : {pod} . {cont} }}\n"
                ),
                (None, None) => format!(
                    "add element {t} ports{n} {{ {proto} . {host} comment \"{comment}\" : {pod} . {cont} }}\n"
                ),
            };
            let mut sources = vec![subnet.to_string()];
            if v4 {
                sources.push("127.0.0.1".into());
            }
            if masq_all {
                sources = vec![if v4 { "0.0.0.0/0" } else { "::/0" }.into()];
            }
            for source in sources.iter().filter(|_| snat) {
                let element = format!("{source} . {pod} . {proto} . {cont}");
                if !made.contains(&element) {
                    s +=
                        &format!("add element {t} masq{n} {{ {element} comment \"{comment}\" }}\n");
                    made.push(element);
                }
            }
        }
    }
    s
}

/// The comment of the first element or rule of the weft table whose
/// comment contains `tag`.
fn attachment_comment(node: &Netns, tag: &str) -> Option<String> {
    let elements = weft_sets(node).into_iter().flat_map(|(_, e)| e);
    let mut comments: Vec<String> = elements
        .filter_map(|e| element_comment(&e).map(String::from))
        .collect();
    comments.extend(
        nft_rules(node)
            .iter()
            .filter_map(|r| r["comment"].as_str().map(String::from)),
    );
    comments.into_iter().find(|c| c.contains(tag))
}

/// `nft -j list table` without the handles (which count differently in
/// another netns).
fn table_json(ns: &Netns) -> Value {
    // Elements list in their hash's order, which differs between netns.
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                o.remove("handle");
                if let Some(Value::Array(elements)) = o.get_mut("elem") {
                    elements.sort_by_key(|e| e.to_string());
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value =
        serde_json::from_str(&ns.sh(&format!("nft -j list table inet {TABLE}"))).unwrap();
    strip(&mut v);
    v
}

/// The netlink ADD writes what `nft -f` would: for each option set, the
/// table after weft's ADD reads the same (`nft -j list`, elements sorted)
/// as a fresh netns after the oracle script, also after a second ADD with
/// the table in place (the elements-only transaction). conditionsV4 (nft
/// text) still goes through `nft -f`; DEL finds those rules all the same.
#[test]
#[ignore = "needs root"]
fn netlink_add_writes_the_same_ruleset_as_nft_script() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let pods = [
        (pod_ip(&prev, true), "10.244.1.0/24"),
        (pod_ip(&prev, false), "fd00:10:244:1::/64"),
    ];
    let pods = [
        (pods[0].0.as_str(), pods[0].1),
        (pods[1].0.as_str(), pods[1].1),
    ];
    let mappings: [OracleMapping; 5] = [
        ("tcp", 8080, 80, None),
        ("udp", 8080, 80, None),
        ("sctp", 7070, 70, None),
        ("tcp", 9090, 80, Some(NODE_V4_EXTRA)),
        ("udp", 9091, 80, Some(NODE_V6)),
    ];
    let as_json: Vec<Value> = mappings
        .iter()
        .map(|(proto, host, cont, ip)| {
            let mut m = json!({"hostPort": host, "containerPort": cont, "protocol": proto});
            if let Some(ip) = ip {
                m["hostIP"] = json!(ip);
            }
            m
        })
        .collect();
    let condition = "ip saddr != 203.0.113.0/24";
    let cases = [
        (json!({}), true, false, None),
        (
            json!({"snat": false, "markMasqBit": 14}),
            false,
            false,
            None,
        ),
        (json!({"masqAll": true}), true, true, None),
        (
            json!({"conditionsV4": [condition]}),
            true,
            false,
            Some(condition),
        ),
    ];
    for (options, snat, masq_all, condition) in cases {
        let conf = merged(&portmap_conf("1.0.0", json!(as_json)), options.clone());
        env.add(&pod, &conf, &prev).expect_ok();
        let comment = attachment_comment(&env.node, "net=pmnet")
            .expect("a commented masquerade or DNAT element");
        assert!(comment.contains("net=pmnet"), "{comment}");
        let oracle = Netns::with_tag("o");
        let script = oracle_script(true, &comment, pods, &mappings, snat, masq_all, condition);
        oracle.sh(&format!("nft -f - <<'EOF'\n{script}EOF"));
        assert_eq!(
            table_json(&env.node),
            table_json(&oracle),
            "options {options}"
        );
        // A second attachment, with the table in place: elements only.
        let (id, other) = extra_attachment(&pod, &prev, 1);
        let other = merged(&other, options.clone());
        env.run(&CniCall::add(&pod, other.clone()).container_id(&id))
            .expect_ok();
        let comment2 = attachment_comment(&env.node, &id).expect("the second attachment's entries");
        let pods2 = ["10.244.1.101", "fd00:10:244:1::101"];
        let script = oracle_script(
            false,
            &comment2,
            [(pods2[0], pods[0].1), (pods2[1], pods[1].1)],
            &[("tcp", 20001, 80, None), ("udp", 20001, 80, None)],
            snat,
            masq_all,
            condition,
        );
        oracle.sh(&format!("nft -f - <<'EOF'\n{script}EOF"));
        assert_eq!(
            table_json(&env.node),
            table_json(&oracle),
            "options {options}, second ADD"
        );
        env.run(&CniCall::del(&pod, other).container_id(&id))
            .expect_ok();
        env.del(&pod, &with_prev(&conf, &prev)).expect_ok();
        assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
    }
}

/// One ADD of 400 mappings (803 elements in one transaction, more
/// acknowledgements than a socket's default buffer holds): every element
/// is made and CHECK and DEL find them.
#[test]
#[ignore = "needs root"]
fn an_add_of_many_mappings_is_one_transaction() {
    if !require_root() {
        return;
    }
    let env = Env::new();
    let (pod, prev, _server) = env.pod_with_server("1.0.0", "podA", 80);
    let mappings: Vec<Value> = (0..400)
        .map(|i| json!({"hostPort": 30000 + i, "containerPort": 80, "protocol": "tcp"}))
        .collect();
    let conf = portmap_conf("1.0.0", json!(mappings));
    env.add(&pod, &conf, &prev).expect_ok();
    let id = container_id(&pod);
    // Dual-stack: a DNAT element per family and mapping; masquerade per
    // pod port (all 80): 2 (IPv4) + 1 (IPv6).
    assert_eq!(rules_of(&env.node, &id), (800, 3));
    assert!(answer(&env.client, "tcp", NODE_V4, 30399).starts_with("podA"));
    env.check(&pod, &conf, &prev).expect_ok();
    env.del(&pod, &with_prev(&conf, &prev)).expect_ok();
    assert!(!env.ruleset().contains(TABLE), "{}", env.ruleset());
}
