//! weftd's runtime behaviour on the simulated cluster: masquerade rules
//! repaired from firewall events (nftables, iptables-nft, iptables-legacy),
//! /readyz while they are missing, catching up after etcd returns, the
//! data plane's netlink socket reopened when it breaks, and logs through
//! tracing.
//!
//! Needs root and etcd; each test has its own cluster.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use weft_tests::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// `sh -c script` inside `ns`, directly (no cluster library: this is
/// polled in tight loops); whether it exited 0.
fn ns_ok(ns: &str, script: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A PATH dir whose iptables tools are iptables-legacy.
fn legacy_iptables(dir: &TempDir) -> String {
    for (name, target) in [
        ("iptables", "iptables-legacy"),
        ("iptables-save", "iptables-legacy-save"),
        ("iptables-restore", "iptables-legacy-restore"),
        ("ip6tables", "ip6tables-legacy"),
        ("ip6tables-save", "ip6tables-legacy-save"),
        ("ip6tables-restore", "ip6tables-legacy-restore"),
    ] {
        std::os::unix::fs::symlink(format!("/usr/sbin/{target}"), dir.join(name)).unwrap();
    }
    dir.path().display().to_string()
}

/// The whole iptables rule set of weft is in place (`ipt` = the iptables
/// command to ask).
fn iptables_intact(ipt: &str) -> String {
    format!(
        "[ \"$({ipt} -w -t nat -S FLANNEL-POSTRTG | grep -c 'flanneld masq')\" = 6 ] && \
         {ipt} -w -t nat -S POSTROUTING | grep -q -- '-j FLANNEL-POSTRTG' && \
         [ \"$({ipt} -w -t filter -S FLANNEL-FWD | grep -c 'flanneld forward')\" = 2 ] && \
         {ipt} -w -t filter -S FORWARD | grep -q -- '-j FLANNEL-FWD'"
    )
}

const NFT_INTACT: &str = "t=$(nft list table ip flannel-ipv4) && \
     [ \"$(echo \"$t\" | grep -c masquerade)\" = 2 ] && echo \"$t\" | grep -q 'hook forward'";

/// Breaks the rules with `flush` on node `n`, then waits (1 s at most)
/// until `intact` holds again; returns how long that took.
fn repaired_within_a_second(c: &Cluster, n: u32, flush: &str, intact: &str) -> Duration {
    let ns = c.node_ns(n);
    assert!(
        ns_ok(&ns, intact),
        "n{n}: rules not intact before `{flush}`"
    );
    c.ns_sh(&ns, flush);
    let t = Instant::now();
    let back = wait_until(secs(1), ms(10), || ns_ok(&ns, intact));
    let took = t.elapsed();
    assert!(
        back,
        "n{n}: rules not back 1 s after `{flush}`:\n{}\n{}",
        c.ns_sh(
            &ns,
            "nft list ruleset; iptables-legacy-save 2>/dev/null || true"
        ),
        c.weftd_log(n)
    );
    note(&format!("n{n}: `{flush}` repaired in {took:?}"));
    took
}

#[test]
#[ignore = "needs root"]
fn masquerade_rules_flushed_by_a_firewall_reload_are_back_within_a_second() {
    if !require_root() {
        return;
    }
    // The timers are a minute: only an event can explain a prompt repair.
    let c = Cluster::new("--reconcile-interval=60 --ip-masq --iptables-resync=60");
    c.write_config(None);
    let legacy = TempDir::new();
    let legacy_path = legacy_iptables(&legacy);
    c.sh("cluster_node_create 1 --masq-backend=nftables && cluster_weftd_start 1");
    c.sh("cluster_node_create 2 --masq-backend=iptables && cluster_weftd_start 2");
    c.sh(&format!(
        "cluster_node_create 3 --masq-backend=iptables && \
         export PATH='{legacy_path}':\"$PATH\" && cluster_weftd_start 3"
    ));
    for n in [1, 2, 3] {
        c.sh(&format!("cluster_node_wait_ready {n}"));
    }
    assert!(
        c.weftd_log(3).contains("iptables-legacy"),
        "{}",
        c.weftd_log(3)
    );
    let repairs: Vec<u64> = (1..=3)
        .map(|n| c.metric(n, "weftd_masq_repairs_total").unwrap())
        .collect();

    // nftables: the whole ruleset flushed, then our table deleted.
    repaired_within_a_second(&c, 1, "nft flush ruleset", NFT_INTACT);
    repaired_within_a_second(&c, 1, "nft delete table ip flannel-ipv4", NFT_INTACT);
    // iptables-nft: a chain flushed, a firewalld-style restore of
    // everything but ours, and an nft flush of the tables under it.
    let nft_ipt = iptables_intact("iptables");
    repaired_within_a_second(&c, 2, "iptables -w -t nat -F FLANNEL-POSTRTG", &nft_ipt);
    repaired_within_a_second(
        &c,
        2,
        "iptables-save | grep -v FLANNEL | iptables-restore -w",
        &nft_ipt,
    );
    repaired_within_a_second(&c, 2, "nft flush ruleset", &nft_ipt);
    // iptables-legacy (no notifications: polled rule counts).
    let leg = iptables_intact("iptables-legacy");
    repaired_within_a_second(&c, 3, "iptables-legacy -w -t filter -F FLANNEL-FWD", &leg);
    repaired_within_a_second(
        &c,
        3,
        "iptables-legacy-save | grep -v FLANNEL | iptables-legacy-restore -w",
        &leg,
    );
    for n in 1..=3u32 {
        let now = c.metric(n, "weftd_masq_repairs_total").unwrap();
        assert!(now > repairs[n as usize - 1], "n{n}: repairs not counted");
        assert!(
            c.weftd_log(n).contains("trigger=event"),
            "{}",
            c.weftd_log(n)
        );
        assert!(
            !c.weftd_log(n).contains("trigger=resync"),
            "{}",
            c.weftd_log(n)
        );
        assert_eq!(c.readyz(n).0, 200);
    }
}

/// A fake `nft` in front of the real one: with `<dir>/broken` present only
/// `nft list tables` works (so weftd picks nftables), everything else fails.
fn breakable_nft(dir: &TempDir) -> String {
    let real = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nft");
    std::fs::write(
        dir.join("nft"),
        format!(
            "#!/bin/sh\nif [ -e '{d}/broken' ] && [ \"$*\" != 'list tables' ]; then echo 'nft: broken for the test' >&2; exit 1; fi\nexec {real} \"$@\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        dir.join("nft"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir.path().display().to_string()
}

#[test]
#[ignore = "needs root"]
fn readyz_is_503_within_a_second_of_the_rules_going_missing() {
    if !require_root() {
        return;
    }
    let c = Cluster::new(
        "--reconcile-interval=60 --ip-masq --masq-backend=nftables --iptables-resync=60",
    );
    c.write_config(None);
    let fake = TempDir::new();
    let bin = breakable_nft(&fake);
    c.sh(&format!(
        "cluster_node_create 1 && export PATH='{bin}':\"$PATH\" && cluster_weftd_start 1 && cluster_node_wait_ready 1"
    ));
    // The rules vanish and cannot be put back: not ready, at once.
    std::fs::write(fake.join("broken"), "").unwrap();
    c.ns_sh(&c.node_ns(1), "/usr/sbin/nft delete table ip flannel-ipv4");
    let t = Instant::now();
    assert!(
        wait_until(secs(1), ms(20), || c.readyz(1).0 == 503),
        "still ready 1 s after the masquerade rules went missing:\n{}",
        c.weftd_log(1)
    );
    note(&format!("/readyz 503 after {:?}", t.elapsed()));
    assert_eq!(c.readyz(1).1.trim(), "masquerade rules not installed");
    // The tool works again: the failed repair is retried (not a resync
    // later) and readiness comes back.
    std::fs::remove_file(fake.join("broken")).unwrap();
    assert!(
        c.wait_for(secs(5), || c.readyz(1).0 == 200),
        "{}",
        c.weftd_log(1)
    );
    assert!(ns_ok(&c.node_ns(1), NFT_INTACT));
}

/// Cuts `n` off from etcd, changes a lease while it is cut, waits until it
/// noticed (its reconnect counter moved), restores it; returns how long it
/// took to learn the change afterwards.
fn catch_up_after_cut(c: &Cluster, n: u32, round: u32) -> Duration {
    let before = c.metric(n, "weftd_etcd_reconnects_total").unwrap();
    c.etcd_cut(n);
    let subnet = format!("10.244.{}.0/24", 150 + round);
    let ip = format!("198.51.100.{}", 150 + round);
    c.sh(&format!(
        "cluster_lease_put {subnet} {ip} 02:00:00:00:01:{:02x}",
        round
    ));
    assert!(
        c.wait_for(secs(60), || c
            .metric(n, "weftd_etcd_reconnects_total")
            .is_some_and(|r| r > before)),
        "n{n} never noticed the cut:\n{}",
        c.weftd_log(n)
    );
    // Let it spend a while in its reconnect loop (attempts time out).
    let noticed = Instant::now();
    while noticed.elapsed() < ms(1500 + 700 * u64::from(round)) {
        assert!(
            c.lacks_peer(n, &subnet, &ip),
            "n{n} learnt a lease while cut off"
        );
    }
    c.etcd_restore(n);
    let t = Instant::now();
    let caught_up = wait_until(secs(10), ms(20), || c.has_peer(n, &subnet, &ip));
    let took = t.elapsed();
    assert!(caught_up, "n{n} did not catch up:\n{}", c.weftd_log(n));
    took
}

#[test]
#[ignore = "needs root"]
fn after_etcd_returns_a_node_catches_up_within_two_seconds() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--reconcile-interval=1");
    c.write_config(None);
    c.node_add(1);
    c.node_add(2);
    c.wait_converged();
    let mut worst = Duration::ZERO;
    for round in 0..3 {
        let took = catch_up_after_cut(&c, 1, round);
        note(&format!(
            "round {round}: n1 caught up {took:?} after the cut ended"
        ));
        worst = worst.max(took);
    }
    // etcd itself restarts: both nodes reconnect and learn a lease put
    // right after it is back.
    c.sh("cluster_etcd_stop");
    // A few failed attempts each: their backoff has grown to its cap.
    for n in [1, 2] {
        let before = c.metric(n, "weftd_etcd_reconnects_total").unwrap();
        assert!(c.wait_for(secs(30), || c
            .metric(n, "weftd_etcd_reconnects_total")
            .is_some_and(|r| r >= before + 4)));
    }
    c.sh(
        "cluster_etcd_start && cluster_lease_put 10.244.160.0/24 198.51.100.160 02:00:00:00:01:60",
    );
    let t = Instant::now();
    for n in [1, 2] {
        assert!(
            wait_until(secs(10), ms(20), || c.has_peer(
                n,
                "10.244.160.0/24",
                "198.51.100.160"
            )),
            "n{n} did not catch up after the etcd restart:\n{}",
            c.weftd_log(n)
        );
    }
    let restart = t.elapsed();
    note(&format!(
        "after the etcd restart both nodes caught up in {restart:?}"
    ));
    worst = worst.max(restart);
    assert!(
        worst <= secs(2),
        "a node took {worst:?} to catch up after etcd returned"
    );
}

/// The thread id of weftd's `name` thread on node `n`.
fn weftd_thread(c: &Cluster, n: u32, name: &str) -> String {
    let pid = c.sh(&format!("cluster_weftd_pid {n}")).trim().to_string();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return t.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("weftd on n{n} has no {name} thread");
}

#[test]
#[ignore = "needs root"]
fn a_broken_netlink_socket_is_reopened_and_programming_goes_on() {
    if !require_root() {
        return;
    }
    let c = Cluster::new("--reconcile-interval=1");
    c.write_config(None);
    c.node_add(1);
    c.node_add(2);
    c.wait_converged();
    // The data plane thread's next netlink send fails (strace injects EIO
    // into the first sendto of that thread only).
    let tid = weftd_thread(&c, 1, "dataplane");
    let mut strace = Command::new("strace")
        .args([
            "-qq",
            "-o",
            "/dev/null",
            "-p",
            &tid,
            "-e",
            "trace=sendto",
            "-e",
            "inject=sendto:error=EIO:when=1",
        ])
        .spawn()
        .expect("strace (apt-get install strace)");
    let traced = wait_until(secs(5), ms(20), || {
        std::fs::read_to_string(format!("/proc/{tid}/status"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("TracerPid:") && l.trim() != "TracerPid:\t0")
    });
    assert!(traced, "strace did not attach to {tid}");
    c.sh("cluster_lease_put 10.244.170.0/24 198.51.100.170 02:00:00:00:01:70");
    let reopened = c.wait_for(secs(10), || {
        c.weftd_log(1)
            .contains("netlink socket broken; reopened it")
    });
    let _ = strace.kill();
    let _ = strace.wait();
    assert!(reopened, "no reopen:\n{}", c.weftd_log(1));
    // The new socket programs: the lease, and a later one.
    assert!(c.wait_for(secs(5), || c.has_peer(
        1,
        "10.244.170.0/24",
        "198.51.100.170"
    )));
    c.sh("cluster_lease_put 10.244.171.0/24 198.51.100.171 02:00:00:00:01:71");
    assert!(c.wait_for(secs(5), || c.has_peer(
        1,
        "10.244.171.0/24",
        "198.51.100.171"
    )));
    assert!(c.wait_for(secs(5), || c.readyz(1).0 == 200));
}
