//! Many pods on one node at once, as kubelet does after a node restart or a
//! big rollout: ADDs and DELs of weft's bridge + host-local race each other
//! on the same bridge, the same host-local store and the same nftables table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "wtnet";
const BRIDGE: &str = "wtbr0";
const WORKERS: usize = 16;

fn bridge_conf(data: &Path, range: Value) -> Value {
    let bridge = bridge_plugin(BRIDGE, host_local_ipam(data, range));
    network("1.0.0", NET, merged(&bridge, json!({"ipMasq": true})))
}

/// Runs `job(i)` for i in 0..n on `WORKERS` threads, each taking the next
/// index as it becomes free; returns the results in index order.
fn parallel<T: Send>(n: usize, job: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let r = job(i);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every job ran"))
        .collect()
}

/// The weft masquerade rules (tagged with the network) in the node.
fn masq_rules(node: &Node) -> Vec<String> {
    nft_ruleset(node)
        .lines()
        .filter(|l| l.contains(&format!("weft net={NET} ")))
        .map(str::to_string)
        .collect()
}

fn call(command: &str, pod: &Netns, conf: &Value) -> CniCall {
    CniCall::for_pod(command, pod, conf.clone())
}

#[test]
#[ignore = "needs root"]
fn hundred_pods_added_and_deleted_sixteen_at_a_time() {
    if !require_root() {
        return;
    }
    const PODS: usize = 100;
    let node = Node::new();
    let data = TempDir::new();
    let conf = bridge_conf(data.path(), subnet_range("10.244.16.0/24"));
    let bridge = plugin_path("bridge");
    let pods: Vec<Netns> = parallel(PODS, |_| node.pod());

    let results = parallel(PODS, |i| {
        call("ADD", &pods[i], &conf).run_in(&node, &bridge)
    });
    let mut ips = Vec::new();
    for (pod, out) in pods.iter().zip(&results) {
        let result = out.expect_ok();
        let address = result["ips"][0]["address"].as_str().unwrap().to_string();
        // Each pod really has the address it was told about.
        assert_eq!(
            ipv4_addrs(pod, "eth0"),
            vec![address.clone()],
            "{}",
            pod.name
        );
        ips.push(address);
    }
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        PODS,
        "duplicate addresses handed out: {ips:?}"
    );
    assert!(
        !ips.iter().any(|ip| ip == "10.244.16.1/24"),
        "the gateway was handed out"
    );

    let reserved: HashSet<String> = reserved_ips(data.path(), NET).into_iter().collect();
    let expected: HashSet<String> = ips
        .iter()
        .map(|a| a.trim_end_matches("/24").to_string())
        .collect();
    assert_eq!(reserved, expected);
    let veths = veths_on_host(&node);
    assert_eq!(veths.len(), PODS);
    assert!(veths.iter().all(|v| v["master"] == BRIDGE), "{veths:?}");
    assert_eq!(masq_rules(&node).len(), PODS);
    // Each reservation names its own pod.
    for (pod, ip) in pods.iter().zip(&ips) {
        let owner = reservation(data.path(), NET, ip.trim_end_matches("/24")).unwrap();
        assert_eq!(owner, format!("ctr-{}\r\neth0", pod.name));
    }
    // The pods can all reach the gateway (one probe per pod would be slow;
    // sample a few).
    for pod in pods.iter().step_by(25) {
        pod.sh("ping -c1 -W2 10.244.16.1 >/dev/null");
    }

    for out in parallel(PODS, |i| {
        call("DEL", &pods[i], &conf).run_in(&node, &bridge)
    }) {
        out.expect_ok();
    }
    assert!(
        reserved_ips(data.path(), NET).is_empty(),
        "{:?}",
        reserved_ips(data.path(), NET)
    );
    let left = store_files(data.path(), NET);
    assert!(
        left.iter()
            .all(|f| f == "lock" || f.starts_with("last_reserved_ip.")),
        "{left:?}"
    );
    assert_no_veths(&node);
    assert!(masq_rules(&node).is_empty(), "{:?}", masq_rules(&node));
    for pod in &pods {
        assert!(link(pod, "eth0").is_none(), "{}", pod.name);
    }
}

#[test]
#[ignore = "needs root"]
fn racing_for_a_small_range_gives_each_address_once_and_cleans_up_losers() {
    if !require_root() {
        return;
    }
    // 40 pods race for 13 addresses (.2 to .14 of a /28).
    const PODS: usize = 40;
    const FREE: usize = 13;
    let node = Node::new();
    let data = TempDir::new();
    let conf = bridge_conf(data.path(), subnet_range("10.244.17.0/28"));
    let bridge = plugin_path("bridge");
    let pods: Vec<Netns> = parallel(PODS, |_| node.pod());

    let results = parallel(PODS, |i| {
        call("ADD", &pods[i], &conf).run_in(&node, &bridge)
    });
    let mut winners = Vec::new();
    let mut ips = HashSet::new();
    for (i, out) in results.iter().enumerate() {
        if out.success() {
            let r = out.expect_ok();
            assert!(ips.insert(r["ips"][0]["address"].as_str().unwrap().to_string()));
            winners.push(i);
        } else {
            let err = out.expect_error(101);
            assert!(err["msg"].as_str().unwrap().contains("10.244.17."), "{err}");
            // A loser keeps nothing: no interface in its pod.
            assert!(link(&pods[i], "eth0").is_none(), "{}", pods[i].name);
        }
    }
    assert_eq!(winners.len(), FREE, "{ips:?}");
    assert_eq!(reserved_ips(data.path(), NET).len(), FREE);
    assert_eq!(veths_on_host(&node).len(), FREE);
    assert_eq!(masq_rules(&node).len(), FREE);

    // DEL everything, losers included (kubelet DELs failed sandboxes too).
    let outs = parallel(PODS, |i| {
        call("DEL", &pods[i], &conf).run_in(&node, &bridge)
    });
    for out in outs {
        out.expect_ok();
    }
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
    assert!(masq_rules(&node).is_empty());
}

#[test]
#[ignore = "needs root"]
fn interleaved_adds_and_dels_keep_the_store_consistent() {
    if !require_root() {
        return;
    }
    // Half the pods come up while the other half go away.
    const PODS: usize = 48;
    let node = Node::new();
    let data = TempDir::new();
    let conf = bridge_conf(data.path(), subnet_range("10.244.18.0/24"));
    let bridge = plugin_path("bridge");
    let pods: Vec<Netns> = parallel(PODS, |_| node.pod());
    let (old, new) = pods.split_at(PODS / 2);
    for out in parallel(old.len(), |i| {
        call("ADD", &old[i], &conf).run_in(&node, &bridge)
    }) {
        out.expect_ok();
    }
    let outs = parallel(PODS, |i| {
        if i % 2 == 0 {
            call("DEL", &old[i / 2], &conf).run_in(&node, &bridge)
        } else {
            call("ADD", &new[i / 2], &conf).run_in(&node, &bridge)
        }
    });
    for out in outs {
        out.expect_ok();
    }
    let reserved = reserved_ips(data.path(), NET);
    assert_eq!(reserved.len(), new.len(), "{reserved:?}");
    assert_veth_count(&node, new.len());
    for pod in old {
        assert!(link(pod, "eth0").is_none());
    }
    for pod in new {
        let addr = ipv4_addrs(pod, "eth0");
        assert_eq!(addr.len(), 1, "{}", pod.name);
        assert!(reserved.contains(&addr[0].trim_end_matches("/24").to_string()));
    }
    for out in parallel(new.len(), |i| {
        call("DEL", &new[i], &conf).run_in(&node, &bridge)
    }) {
        out.expect_ok();
    }
    assert!(reserved_ips(data.path(), NET).is_empty());
    assert_no_veths(&node);
    assert!(masq_rules(&node).is_empty());
}
