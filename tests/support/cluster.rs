//! A whole weft cluster (etcd, nodes running weftd, pods attached by the
//! flannel CNI plugin) in network namespaces, driven through
//! `scripts/lib/cluster.sh` so tests, `scripts/cluster.sh` and
//! `scripts/demo.sh` share one implementation.
//!
//! Each [`Cluster`] has its own [`unique_prefix`] (netns names, cluster name)
//! and state dir, so clusters can run side by side; its `Drop` runs
//! `cluster_teardown` (kills weftd and etcd, deletes every namespace) and
//! reaps the daemons, also when the test panics.
//!
//! ```no_run
//! use weft_tests::*;
//! if !require_root() { return; }
//! let c = Cluster::new("--reconcile-interval=1 --ip-masq");
//! c.write_config(None);
//! c.node_add(1);
//! c.node_add(2);
//! c.pod_add(1, "a");
//! c.pod_add(2, "a");
//! c.wait_converged();
//! assert!(c.ping(1, "a", 2, "a"));
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cni::workspace_root;
use crate::netns::TempDir;
use crate::process::run_with_timeout;
use crate::{note, unique_prefix};

/// How many clusters may run at once in one test process (2-core VMs:
/// each cluster is an etcd plus a weftd per node).
const MAX_CLUSTERS: usize = 2;

static SLOTS: Mutex<usize> = Mutex::new(0);
static SLOT_FREED: Condvar = Condvar::new();
static SUBREAPER: Once = Once::new();

/// A slot among [`MAX_CLUSTERS`]; released on drop.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let mut used = SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while *used >= MAX_CLUSTERS {
            used = SLOT_FREED
                .wait(used)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut used: MutexGuard<'_, usize> = SLOTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *used -= 1;
        SLOT_FREED.notify_one();
    }
}

/// Path of `scripts/lib/cluster.sh`.
pub fn cluster_lib() -> PathBuf {
    workspace_root().join("scripts/lib/cluster.sh")
}

/// A running cluster: etcd up (no config yet), no nodes.
pub struct Cluster {
    /// Cluster name (also the netns prefix, plus `-`).
    pub name: String,
    /// The state dir of scripts/lib/cluster.sh.
    pub state: PathBuf,
    weftd_args: String,
    /// `WC_BACKEND`: vxlan, host-gw or directrouting.
    pub backend: &'static str,
    /// Every daemon pid seen, reaped on drop.
    pids: Mutex<BTreeSet<i32>>,
    _tmp: TempDir,
    _slot: Slot,
}

impl Cluster {
    /// A new cluster (hub, etcd netns, etcd running). `weftd_args` are the
    /// flags every weftd of this cluster gets, on top of the fixed ones
    /// (endpoints, iface, public IP, subnet file, healthz).
    pub fn new(weftd_args: &str) -> Cluster {
        Cluster::with_backend(weftd_args, "vxlan")
    }

    /// The same with another backend (`WC_BACKEND` of scripts/lib/cluster.sh:
    /// vxlan, host-gw or directrouting): its default config, and what
    /// `has_peer` checks.
    pub fn with_backend(weftd_args: &str, backend: &'static str) -> Cluster {
        // Daemons are started by short-lived bash processes; make this
        // process their reaper so killed daemons do not stay <defunct>.
        SUBREAPER.call_once(|| {
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                note(&format!("warning: cannot become a child subreaper: {e}"));
            }
        });
        let slot = Slot::take();
        let name = unique_prefix();
        let tmp = TempDir::new();
        let c = Cluster {
            state: tmp.join("cluster"),
            name,
            weftd_args: weftd_args.to_string(),
            backend,
            pids: Mutex::new(BTreeSet::new()),
            _tmp: tmp,
            _slot: slot,
        };
        c.sh("cluster_create");
        c
    }

    /// Runs `script` in bash after sourcing the library and selecting this
    /// cluster; no check.
    pub fn try_sh(&self, script: &str) -> Output {
        let full = format!(
            "source '{}' && cluster_init '{}' '{}' || exit 99\n{script}",
            cluster_lib().display(),
            self.name,
            self.state.display()
        );
        let out = run_with_timeout(
            Command::new("bash")
                .args(["-c", &full])
                .env("WC_PREFIX", format!("{}-", self.name))
                .env("WC_BACKEND", self.backend)
                .env("WC_WEFTD_ARGS", &self.weftd_args)
                .env("WC_QUIET", "1"),
            None,
            Duration::from_secs(90),
        );
        self.record_pids();
        out
    }

    /// Runs `script` (see [`try_sh`](Cluster::try_sh)); panics with its
    /// output and the daemons' log tails when it fails. Returns stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.try_sh(script);
        assert!(
            out.status.success(),
            "cluster {}: `{script}` failed ({}):\n{}{}\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tails()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// True when `script` exits 0.
    pub fn check(&self, script: &str) -> bool {
        self.try_sh(script).status.success()
    }

    /// The last lines of every daemon log (for failure messages).
    pub fn log_tails(&self) -> String {
        let mut s = String::new();
        if let Ok(entries) = std::fs::read_dir(self.state.join("logs")) {
            let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s.push_str(&format!("--- {}:\n", p.display()));
                for l in &lines[lines.len().saturating_sub(12)..] {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    fn record_pids(&self) {
        let Ok(entries) = std::fs::read_dir(self.state.join("pids")) else {
            return;
        };
        let mut pids = self
            .pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for e in entries.flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
            {
                pids.insert(pid);
            }
        }
    }

    /// Writes `<prefix>/config` (flannel's default for 10.244.0.0/16 + vxlan
    /// when `None`).
    pub fn write_config(&self, json: Option<&str>) {
        match json {
            Some(j) => self.sh(&format!("cluster_write_config '{j}'")),
            None => self.sh("cluster_write_config"),
        };
    }

    /// Adds node `n` and waits until its weftd is ready.
    pub fn node_add(&self, n: u32) {
        self.sh(&format!("cluster_node_add {n}"));
    }

    /// Removes node `n` (weftd stopped, lease deleted, netns removed).
    pub fn node_remove(&self, n: u32) {
        self.sh(&format!("cluster_node_remove {n}"));
    }

    pub fn weftd_stop(&self, n: u32) {
        self.sh(&format!("cluster_weftd_stop {n}"));
    }

    /// (Re)starts weftd on node `n` and waits until it is ready.
    pub fn weftd_restart(&self, n: u32) {
        self.sh(&format!(
            "cluster_weftd_stop {n} && cluster_weftd_start {n} && cluster_node_wait_ready {n}"
        ));
    }

    pub fn weftd_running(&self, n: u32) -> bool {
        self.check(&format!("cluster_weftd_pid {n}"))
    }

    /// Adds pod `pod` on node `n` through the flannel plugin; returns its IP.
    pub fn pod_add(&self, n: u32, pod: &str) -> String {
        self.sh(&format!("cluster_pod_add {n} {pod}"))
            .trim()
            .to_string()
    }

    /// The pod's IP as recorded at ADD.
    pub fn pod_ip(&self, n: u32, pod: &str) -> String {
        self.sh(&format!("cluster_pod_ip {n} {pod}"))
            .trim()
            .to_string()
    }

    /// `<prefix>-n<N>`.
    pub fn node_ns(&self, n: u32) -> String {
        format!("{}-n{n}", self.name)
    }

    /// `<prefix>-n<N>-<pod>`.
    pub fn pod_ns(&self, n: u32, pod: &str) -> String {
        format!("{}-n{n}-{pod}", self.name)
    }

    /// 198.51.100.(10+N); nodes 101.. sit behind the router at 203.0.113.(N-90).
    pub fn node_ip(&self, n: u32) -> String {
        if n > 100 {
            format!("203.0.113.{}", n - 90)
        } else {
            format!("198.51.100.{}", 10 + n)
        }
    }

    pub fn node_dir(&self, n: u32) -> PathBuf {
        self.state.join("nodes").join(n.to_string())
    }

    pub fn subnet_file(&self, n: u32) -> PathBuf {
        self.node_dir(n).join("subnet.env")
    }

    /// The node's lease subnet (from its subnet.env), e.g. `10.244.7.0/24`.
    pub fn subnet(&self, n: u32) -> String {
        self.sh(&format!("cluster_node_subnet {n}"))
            .trim()
            .to_string()
    }

    pub fn wait_converged(&self) {
        self.sh("cluster_wait_converged 30");
    }

    /// One ping from pod (n1, p1) to pod (n2, p2).
    pub fn ping(&self, n1: u32, p1: &str, n2: u32, p2: &str) -> bool {
        self.check(&format!("cluster_ping {n1} {p1} {n2} {p2}"))
    }

    /// The entries of that lease's form on node `n` (vxlan: route, permanent
    /// neighbour and FDB entry; host-gw and DirectRouting to an on-link
    /// peer: a route via its public IP on eth0), and none of the other.
    pub fn has_peer(&self, n: u32, subnet: &str, public_ip: &str) -> bool {
        self.check(&format!("cluster_node_has_peer {n} {subnet} {public_ip}"))
    }

    /// No entry for that lease on node `n`, in either form.
    pub fn lacks_peer(&self, n: u32, subnet: &str, public_ip: &str) -> bool {
        self.check(&format!("cluster_node_lacks_peer {n} {subnet} {public_ip}"))
    }

    /// Leases in etcd: (subnet, lease id hex, value JSON).
    pub fn leases(&self) -> Vec<(String, String, Value)> {
        self.sh("cluster_leases_raw")
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let subnet = it.next()?.to_string();
                let lease = it.next()?.to_string();
                let value = serde_json::from_str(it.next()?).ok()?;
                Some((subnet, lease, value))
            })
            .collect()
    }

    /// `ip netns exec <ns> sh -c script`, stdout; panics on failure.
    pub fn ns_sh(&self, ns: &str, script: &str) -> String {
        self.sh(&format!(
            "ip netns exec '{ns}' sh -c {}",
            shell_quote(script)
        ))
    }

    /// The flannel.1 MAC address of node `n`.
    pub fn vtep_mac(&self, n: u32) -> String {
        self.ns_sh(&self.node_ns(n), "cat /sys/class/net/flannel.1/address")
            .trim()
            .to_string()
    }

    /// Polls `f` every 200 ms until it returns true or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, f: impl FnMut() -> bool) -> bool {
        crate::inspect::wait_until(timeout, Duration::from_millis(200), f)
    }

    fn reap(&self) {
        let pids: Vec<i32> = self
            .pids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        let end = Instant::now() + Duration::from_secs(5);
        for pid in pids {
            loop {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                // StillAlive: teardown killed it, give it time; Err: not
                // our child (or already reaped); anything else: reaped.
                let r = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                if !matches!(r, Ok(WaitStatus::StillAlive)) || Instant::now() >= end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("WEFT_KEEP_CLUSTER_LOGS").is_some() || std::thread::panicking() {
            note(&format!(
                "cluster {} logs:\n{}",
                self.name,
                self.log_tails()
            ));
        }
        let out = self.try_sh("cluster_teardown");
        if !out.status.success() {
            note(&format!(
                "warning: teardown of cluster {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.reap();
    }
}

impl Cluster {
    /// Drops node `n`'s traffic to and from etcd (nftables inside the node
    /// netns); the data plane is untouched.
    pub fn etcd_cut(&self, n: u32) {
        self.sh(&format!("cluster_node_etcd_cut {n}"));
    }

    /// Undoes [`etcd_cut`](Cluster::etcd_cut).
    pub fn etcd_restore(&self, n: u32) {
        self.sh(&format!("cluster_node_etcd_restore {n}"));
    }
}

/// Single-quotes `s` for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Helpers for the weftd end-to-end tests (tests/weftd.rs).
impl Cluster {
    /// weftd's log on node `n` (all runs).
    pub fn weftd_log(&self, n: u32) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("weftd-n{n}.log")))
            .unwrap_or_default()
    }

    /// Waits up to `within` for weftd on node `n` to log `needle`; panics
    /// with the log when it does not.
    pub fn wait_for_log(&self, n: u32, needle: &str, within: Duration) {
        assert!(
            self.wait_for(within, || self.weftd_log(n).contains(needle)),
            "weftd on n{n} never logged {needle:?}:\n{}",
            self.weftd_log(n)
        );
    }

    /// The value of an unlabelled metric from node `n`'s /metrics.
    pub fn metric(&self, n: u32, name: &str) -> Option<u64> {
        let out = self.try_sh(&format!(
            "ip netns exec '{}' curl -sf --max-time 2 http://127.0.0.1:$(cluster_node_healthz_port {n})/metrics",
            self.node_ns(n)
        ));
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// (HTTP status, body) of node `n`'s /readyz; status 0 when unreachable.
    pub fn readyz(&self, n: u32) -> (u16, String) {
        let out = self.try_sh(&format!(
            "ip netns exec '{}' curl -s --max-time 2 -w '\\n%{{http_code}}' http://127.0.0.1:$(cluster_node_healthz_port {n})/readyz",
            self.node_ns(n)
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

/// Helpers for the overlay end-to-end tests (tests/overlay.rs).
impl Cluster {
    /// etcd key prefix of the cluster (scripts/lib/cluster.sh's default).
    pub const ETCD_PREFIX: &'static str = "/coreos.com/network";

    /// Adds node `n` with extra weftd flags (after the cluster's) and waits
    /// until it is ready.
    pub fn node_add_with(&self, n: u32, weftd_args: &str) {
        self.sh(&format!("cluster_node_add {n} {weftd_args}"));
    }

    /// Creates node `n` (netns on the underlay, CNI config) without
    /// starting weftd.
    pub fn node_create(&self, n: u32) {
        self.sh(&format!("cluster_node_create {n}"));
    }

    /// Starts weftd on node `n` with these extra flags (empty: the node's
    /// own) and waits until it is ready.
    pub fn weftd_start(&self, n: u32, weftd_args: &str) {
        self.sh(&format!(
            "cluster_weftd_start {n} {weftd_args} && cluster_node_wait_ready {n}"
        ));
    }

    /// Runs weftd in the foreground in node `n`'s netns against the
    /// cluster's etcd (subnet file in the node dir, `once.env`), killed after
    /// `timeout_s` (exit 124); for flags and configs it must refuse.
    pub fn weftd_once(&self, n: u32, args: &str, timeout_s: u32) -> Output {
        self.try_sh(&format!(
            "ip netns exec \"$(cluster_node_ns {n})\" timeout {timeout_s} \"$(_wc_bin)/weftd\" \
             --etcd-endpoints=\"$WC_ETCD_EP\" --etcd-prefix=\"$WC_ETCD_PREFIX\" --iface=eth0 \
             --subnet-file=\"$(cluster_node_dir {n})/once.env\" {args}"
        ))
    }

    /// `etcdctl put key value`.
    pub fn etcd_put(&self, key: &str, value: &str) {
        self.sh(&format!(
            "cluster_etcd_put {} {}",
            shell_quote(key),
            shell_quote(value)
        ));
    }

    /// `etcdctl del key`.
    pub fn etcd_del(&self, key: &str) {
        self.sh(&format!("cluster_etcd_del {}", shell_quote(key)));
    }

    pub fn etcd_stop(&self) {
        self.sh("cluster_etcd_stop");
    }

    /// Starts etcd again (same data dir) and waits until it is healthy.
    pub fn etcd_start(&self) {
        self.sh("cluster_etcd_start");
    }

    /// Waits up to `timeout` until node `n`'s unlabelled metric `name`
    /// reaches `min`; returns its last value.
    pub fn wait_metric(&self, n: u32, name: &str, min: u64, timeout: Duration) -> Option<u64> {
        let mut last = None;
        self.wait_for(timeout, || {
            last = self.metric(n, name);
            last.is_some_and(|v| v >= min)
        });
        last
    }

    /// Waits until node `n` completed `passes` more reconcile passes than
    /// now (`weftd_reconcile_passes_total`): the positive signal that weftd
    /// had its chance before a test asserts something did not happen.
    pub fn wait_reconcile_passes(&self, n: u32, passes: u64) {
        let now = self.metric(n, "weftd_reconcile_passes_total").unwrap_or(0);
        let got = self.wait_metric(
            n,
            "weftd_reconcile_passes_total",
            now + passes,
            Duration::from_secs(30),
        );
        assert!(
            got.is_some_and(|v| v >= now + passes),
            "n{n}: {passes} reconcile passes after {now} not seen (last {got:?}):\n{}",
            self.log_tails()
        );
    }
}
