//! Tests of the test harness itself: names, namespaces and their cleanup,
//! running plugins like a runtime, and the libcni driver (all against the Go
//! reference plugins in /usr/lib/cni, so they do not depend on weft's own
//! plugins being finished).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use weft_tests::*;

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
        || String::from_utf8_lossy(
            &Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn reference(name: &str) -> std::path::PathBuf {
    reference_plugin_dir().join(name)
}

/// A bridge + host-local network on 10.244.<third>.0/24 for the reference
/// plugins (cniVersion 1.0.0: the newest they and Debian's libcni speak).
fn bridge_conf(data: &Path, bridge: &str, third: u8) -> Value {
    network("1.0.0", "wtnet", bridge_entry(data, bridge, third))
}

/// [`bridge_conf`]'s plugin as a conflist entry (no cniVersion, no name).
fn bridge_entry(data: &Path, bridge: &str, third: u8) -> Value {
    let ipam = host_local_ipam(data, subnet_range(&format!("10.244.{third}.0/24")));
    merged(&bridge_plugin(bridge, ipam), json!({"ipMasq": false}))
}

#[test]
fn unique_prefixes_are_unique_short_and_parseable() {
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let p = unique_prefix();
        assert!(
            p.len() <= 12,
            "{p} leaves too little room for a link-name suffix"
        );
        assert!(p.is_ascii());
        assert_eq!(prefix_owner(&p), Some(std::process::id()), "{p}");
        assert_eq!(prefix_owner(&format!("{p}br")), Some(std::process::id()));
        assert!(seen.insert(p));
    }
    assert_eq!(prefix_owner("wtdrvnode1"), None);
    assert_eq!(prefix_owner("wt1fx"), None);
    assert_eq!(prefix_owner("cni-1234"), None);
}

#[test]
fn require_root_env_parsing() {
    // Only reads the variable; the test runner may or may not set it.
    let expected = matches!(
        std::env::var(REQUIRE_ROOT_ENV).as_deref(),
        Ok("1" | "true" | "yes")
    );
    assert_eq!(root_required_by_env(), expected);
}

#[test]
fn temp_dir_removed_on_drop() {
    let dir = TempDir::new();
    let path = dir.path().to_path_buf();
    std::fs::write(dir.join("f"), "x").unwrap();
    assert!(path.is_dir());
    drop(dir);
    assert!(!path.exists());
}

#[test]
#[ignore = "needs root"]
fn netns_lifecycle_and_exec() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let name = ns.name.clone();
    assert!(netns_exists(&name));
    assert_eq!(ns.path, Path::new("/run/netns").join(&name));
    // A fresh namespace has only a down loopback.
    let l = links(&ns);
    assert_eq!(l.len(), 1, "{l:?}");
    assert_eq!(l[0]["ifname"], "lo");
    assert!(!l[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // exec/sh really run inside it.
    assert_eq!(ns.sh("echo hi").trim(), "hi");
    // (This kernel may lack the dummy driver: use veth.)
    let out = ns.exec(
        "ip",
        &[
            "link", "add", "wtv0", "type", "veth", "peer", "name", "wtv1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(veths_on_host(&ns).len(), 2);
    assert!(link(&ns, "wtv0").is_some());
    assert!(!ns.try_sh("exit 3").status.success());
    drop(ns);
    assert!(!netns_exists(&name));
}

#[test]
#[ignore = "needs root"]
fn sh_failure_panics_with_stderr() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let err = catch_unwind(AssertUnwindSafe(|| ns.sh("echo oops >&2; exit 4"))).unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("oops"), "{msg}");
}

#[test]
#[ignore = "needs root"]
fn netns_removed_even_when_the_test_body_panics() {
    if !require_root() {
        return;
    }
    let mut names = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let node = Node::new();
        let pod = node.pod();
        names.push(node.name.clone());
        names.push(pod.name.clone());
        // Interfaces inside must not survive either.
        pod.sh("ip link add wtv0 type veth peer name wtv1");
        panic!("deliberate failure inside the test body");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 2);
    for name in &names {
        assert!(!netns_exists(name), "{name} survived a panicking test");
    }
}

#[test]
#[ignore = "needs root"]
fn processes_inside_a_dropped_netns_are_killed() {
    if !require_root() {
        return;
    }
    let ns = Netns::new();
    let bg = ns.spawn("sleep", &["300"]);
    let pid = bg.pid();
    // Leak the guard on purpose: the namespace drop must still kill it.
    std::mem::forget(bg);
    for _ in 0..100 {
        if ns.pids().contains(&(pid as i32)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(ns.pids().contains(&(pid as i32)));
    drop(ns);
    // Reap our (killed) child and check it is gone.
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).unwrap();
    assert!(
        matches!(
            status,
            nix::sys::wait::WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "{status:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn node_has_lo_up_and_pods_are_separate() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    assert_ne!(node.name, pod.name);
    let lo = link(&node, "lo").unwrap();
    assert!(has_flag(&lo, "UP"));
    assert!(ipv4_addrs(&node, "lo").contains(&"127.0.0.1/8".to_string()));
    assert!(ipv4_addrs(&pod, "lo").is_empty());
    assert!(routes(&pod).is_empty());
}

#[test]
#[ignore = "needs root"]
fn stale_namespaces_of_dead_processes_are_swept() {
    if !require_root() {
        return;
    }
    // A pid that certainly existed and is now gone (barring reuse).
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = Netns::named(&format!("wt{dead:x}x0"));
    let stale_name = stale.name.clone();
    let live = Netns::new();
    // Keep the guard from deleting it: the sweep must.
    std::mem::forget(stale);
    // Another weft test process starting right now may sweep it first;
    // either way it must be gone afterwards.
    let removed = sweep_stale();
    assert!(
        !netns_exists(&stale_name),
        "{stale_name} not swept: {removed:?}"
    );
    assert!(netns_exists(&live.name), "a live process's netns was swept");
}

#[test]
#[ignore = "needs root"]
fn cni_call_runs_reference_plugins_like_a_runtime() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let data = TempDir::new();
    let refdir = reference_plugin_dir();

    // VERSION needs nothing but the command.
    let v = CniCall::version(json!({"cniVersion": "1.0.0"}))
        .run_in(&node, &reference("loopback"))
        .expect_ok();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "1.0.0"));

    // loopback brings the pod's lo up.
    let lo_conf = network("1.0.0", "lo", json!({"type": "loopback"}));
    CniCall::add(&pod, lo_conf.clone())
        .cni_path(&[&refdir])
        .run_in(&node, &reference("loopback"))
        .expect_ok();
    assert!(ipv4_addrs(&pod, "lo").contains(&"127.0.0.1/8".to_string()));

    // bridge + host-local: one veth on the node, an address in the pod.
    let conf = bridge_conf(data.path(), "wtbr0", 1);
    let result = CniCall::add(&pod, conf.clone())
        .cni_path(&[&refdir])
        .run_in(&node, &reference("bridge"))
        .expect_ok();
    assert_eq!(result["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.1.2/24"]);
    assert_eq!(veths_on_host(&node).len(), 1);
    assert!(routes(&pod)
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == "10.244.1.1"));

    let check_conf = with_prev(&conf, &result);
    CniCall::check(&pod, check_conf.clone())
        .cni_path(&[&refdir])
        .run_in(&node, &reference("bridge"))
        .expect_ok();

    // Errors come back as a CNI error object on stdout.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("9.9.9");
    let err = CniCall::add(&pod, bad)
        .cni_path(&[&refdir])
        .ifname("eth1")
        .run_in(&node, &reference("bridge"))
        .expect_error(1);
    assert!(
        err["msg"].as_str().unwrap().contains("incompatible"),
        "{err}"
    );

    CniCall::del(&pod, check_conf)
        .cni_path(&[&refdir])
        .run_in(&node, &reference("bridge"))
        .expect_ok();
    assert_no_veths(&node);
    assert!(link(&pod, "eth0").is_none());
}

#[test]
#[ignore = "needs root"]
fn libcni_driver_add_check_gc_del_status() {
    if !require_root() {
        return;
    }
    let node = Node::new();
    let pod = node.pod();
    let refdir = reference_plugin_dir();
    let data = TempDir::new();
    let bridge = bridge_entry(data.path(), "wtbr1", 2);
    let list = conflist("1.0.0", "wtnet", vec![bridge, json!({"type": "loopback"})]);
    let driver = Driver::new(&list, &[&refdir]);

    let result = driver.add(&node, &pod, "c1", "eth0").expect_ok();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.244.2.2/24");
    assert_eq!(ipv4_addrs(&pod, "eth0"), vec!["10.244.2.2/24"]);
    assert!(ipv4_addrs(&pod, "lo").contains(&"127.0.0.1/8".to_string()));
    let cached = driver
        .cached("wtnet", "c1", "eth0")
        .expect("libcni cached the result");
    assert_eq!(cached["netns"], pod.path_str());
    driver.check(&node, &pod, "c1", "eth0").expect_ok();

    // A second attachment, then GC keeping only the first: the stale one is
    // DELed (IPAM released, cache entry gone).
    driver.add(&node, &pod, "c2", "eth1").expect_ok();
    assert_eq!(veths_on_host(&node).len(), 2);
    driver.gc(&node, Some(&[("c1", "eth0")])).expect_ok();
    assert!(driver.cached("wtnet", "c2", "eth1").is_none());
    assert!(driver.cached("wtnet", "c1", "eth0").is_some());
    assert!(!data.join("wtnet/10.244.2.3").exists());
    assert!(data.join("wtnet/10.244.2.2").exists());
    assert!(link(&pod, "eth1").is_none());

    // STATUS is only sent for cniVersion >= 1.1.0: a no-op here.
    driver.status(&node).expect_ok();

    // Errors from plugins surface as their CNI error object.
    driver.add(&node, &pod, "c3", "eth0").expect_error(999);

    driver.del(&node, Some(&pod), "c1", "eth0").expect_ok();
    assert_no_veths(&node);
    assert!(!data.join("wtnet/10.244.2.2").exists());
    // DEL is idempotent, also without a netns.
    driver.del(&node, None, "c1", "eth0").expect_ok();

    // The reference plugins stop at spec 1.0.0: at 1.1.0 libcni sends
    // STATUS and the old skel rejects it.
    let mut v11 = list.clone();
    v11["cniVersion"] = json!("1.1.0");
    driver.set_conflist(&v11);
    assert!(!driver.status(&node).success());
}

#[test]
fn hung_commands_are_killed_at_the_deadline() {
    let start = std::time::Instant::now();
    let err = catch_unwind(|| {
        run_with_timeout(
            Command::new("sleep").arg("30"),
            None,
            std::time::Duration::from_millis(200),
        )
    })
    .unwrap_err();
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("did not finish"), "{msg}");
    // stdin is delivered and output captured.
    let out = run_with_timeout(&mut Command::new("cat"), Some(b"abc"), DEFAULT_TIMEOUT);
    assert_eq!(out.stdout, b"abc");
}
