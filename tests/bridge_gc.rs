//! bridge GC after ADDs killed (SIGKILL) at random instants: whatever step
//! an ADD died at (before the veth, between creating and labelling the
//! pair, after the IP was reserved, just before printing), GC with an
//! empty `cni.dev/valid-attachments` leaves no veth and no IP of it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "wtgcnet";
const BRIDGE: &str = "wtbrg0";
const KILLED_ADDS: usize = 50;

/// Start `call` on `plugin` in `node` as `CniCall::run_in` would, without
/// waiting (`ip netns exec` and `env` exec, so the child is the plugin).
fn spawn(node: &Node, call: &CniCall, plugin: &std::path::Path) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name, "env", "-i"]);
    for (k, v) in call.environment() {
        cmd.arg(format!("{k}={v}"));
    }
    let mut child = cmd
        .arg(plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = serde_json::to_vec(&call.stdin).unwrap();
    child.stdin.take().unwrap().write_all(&stdin).unwrap();
    child
}

/// A small xorshift generator seeded from the clock; the seed is printed
/// so a failing run can be told apart.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("kill-instant seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

fn unlabelled_veths(node: &Node) -> usize {
    veths_on_host(node)
        .iter()
        .filter(|l| l.get("ifalias").is_none_or(Value::is_null))
        .count()
}

#[test]
#[ignore = "needs root"]
fn gc_removes_everything_of_adds_killed_at_any_instant() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let data = TempDir::new();
    let ipam = host_local_ipam(data.path(), subnet_range("10.244.40.0/24"));
    let conf = network("1.1.0", NET, bridge_plugin(BRIDGE, ipam));
    let bridge = plugin_path("bridge");

    // One ADD run to the end gives the span to pick kill instants from;
    // it is left in place, so GC has a completed attachment to remove too.
    let first = node.pod();
    let started = Instant::now();
    CniCall::add(&first, conf.clone())
        .container_id("gc-done")
        .run_in(&node, &bridge)
        .expect_ok();
    let span = started.elapsed().as_micros() as u64 * 3 / 2 + 500;

    let mut rng = Rng::new();
    let mut pods = Vec::new();
    let mut finished = 0;
    for i in 0..KILLED_ADDS {
        let pod = node.pod();
        let call = CniCall::add(&pod, conf.clone()).container_id(&format!("gc-{i}"));
        let mut child = spawn(&node, &call, &bridge);
        std::thread::sleep(Duration::from_micros(rng.below(span)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        finished += usize::from(status.success());
        pods.push(pod);
    }
    // A killed bridge leaves its early IPAM child running: let it end (a
    // runtime does not GC while a plugin of the network still runs).
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || node
            .pids()
            .is_empty()),
        "plugins still running in the node: {:?}",
        node.pids()
    );
    let before = veths_on_host(&node).len();
    eprintln!(
        "{KILLED_ADDS} ADDs killed within {span} µs: {finished} had finished; \
         before GC: {before} host veths ({} unlabelled), {} reserved IPs",
        unlabelled_veths(&node),
        reserved_ips(data.path(), NET).len()
    );
    assert!(
        before > 1,
        "no killed ADD got as far as the veth: the test had no chance"
    );

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(
        CniCall::gc(gc).run_in(&node, &bridge).expect_ok(),
        Value::Null
    );
    assert_no_veths(&node);
    assert!(
        reserved_ips(data.path(), NET).is_empty(),
        "{:?}",
        reserved_ips(data.path(), NET)
    );
    for pod in pods.iter().chain([&first]) {
        eventually("the pod end of every pair is gone", || {
            link(pod, "eth0").is_none()
        });
    }
}

#[test]
#[ignore = "needs root"]
fn gc_leaves_unlabelled_veths_of_other_networks_and_other_plugins() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    // A veth no weft ADD made (another plugin's, or by hand), on the bridge
    // and off it: GC must not take it for a killed ADD's.
    node.sh(&format!(
        "ip link add {BRIDGE} type bridge && ip link add wtgv0 type veth peer name wtgv1 \
         && ip link set wtgv0 master {BRIDGE} && ip link add wtgv2 group 7 type veth peer name wtgv3"
    ));
    let data = TempDir::new();
    let ipam = host_local_ipam(data.path(), subnet_range("10.244.41.0/24"));
    let conf = network("1.1.0", NET, bridge_plugin(BRIDGE, ipam.clone()));
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    // An attachment of another weft network on the same node.
    let other = network("1.1.0", "wtgcother", bridge_plugin("wtbrg1", ipam));
    CniCall::add(&pod, other)
        .run_in(&node, &plugin_path("bridge"))
        .expect_ok();
    CniCall::gc(gc)
        .run_in(&node, &plugin_path("bridge"))
        .expect_ok();
    let mut left = veth_names(&node);
    left.sort();
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(link(&pod, "eth0").is_some());
}
