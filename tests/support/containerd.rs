//! containerd on the nodes of a [`Cluster`], driven over CRI as the kubelet
//! drives it (`scripts/lib/containerd.sh` starts it; [`CriClient`] talks to
//! it). Each node's containerd runs in the node's netns with a private
//! mount namespace; its pods' netns are reached through their sandbox pid.
//!
//! ```no_run
//! use weft_tests::*;
//! if !require_root() { return; }
//! let c = Cluster::new("--ip-masq");
//! c.write_config(None);
//! c.node_add(1);
//! let rt = Containerd::start(&c, 1, None);
//! let pod = rt.run_pod(&SandboxSpec::new("a"));
//! rt.stop_and_remove(&pod);
//! rt.assert_nothing_left();
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{shell_quote, Cluster};
use crate::cni::workspace_root;
use crate::cri::{CriClient, SandboxSpec};
use crate::inspect::wait_until;
use crate::note;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};

/// Path of `scripts/lib/containerd.sh`.
pub fn containerd_lib() -> PathBuf {
    workspace_root().join("scripts/lib/containerd.sh")
}

/// One node's containerd; stopped on drop (containerd, shims, pods, mount
/// namespace, cgroups), before the cluster it borrows is torn down.
pub struct Containerd<'c> {
    pub cluster: &'c Cluster,
    pub node: u32,
    /// Its state dir (see scripts/lib/containerd.sh).
    pub dir: PathBuf,
    pub cri: CriClient,
    /// The pods' cgroup parent, set in every [`SandboxSpec`] run here.
    pub cgroup_parent: String,
}

/// A pod sandbox started through CRI.
#[derive(Clone, Debug)]
pub struct CriPod {
    pub id: String,
    pub name: String,
    pub ip: String,
    /// The sandbox process: `/proc/<pid>/ns/net` is the pod's netns.
    pub pid: u32,
}

/// One plugin call recorded by the wrappers in the node's CNI bin_dir.
#[derive(Clone, Debug)]
pub struct RecordedCall {
    /// The plugin type (the wrapper's name).
    pub plugin: String,
    /// The binary that handled it.
    pub real: PathBuf,
    pub rc: i32,
    /// Start, in ns since the epoch (calls sort by it).
    pub start: u64,
    /// The `CNI_*` environment.
    pub env: BTreeMap<String, String>,
    /// stdin, parsed.
    pub stdin: Value,
    pub stdout: String,
}

impl RecordedCall {
    pub fn command(&self) -> &str {
        self.env.get("CNI_COMMAND").map_or("", String::as_str)
    }

    pub fn ifname(&self) -> &str {
        self.env.get("CNI_IFNAME").map_or("", String::as_str)
    }

    /// `CNI_ARGS` as key/value pairs (their order is not significant).
    pub fn cni_args(&self) -> BTreeMap<String, String> {
        self.env
            .get("CNI_ARGS")
            .map(|a| {
                a.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl<'c> Containerd<'c> {
    /// Starts containerd on node `n` of `cluster` with `conflist` (a file)
    /// as its only CNI config (kube-flannel's conf/10-weft.conflist when
    /// `None`); every plugin call is recorded.
    pub fn start(cluster: &'c Cluster, n: u32, conflist: Option<&Path>) -> Containerd<'c> {
        let conf = conflist.map(|p| shell_quote(&p.display().to_string()));
        // The plugins the harness tests (plugin_dir) are the ones installed.
        cluster.sh(&format!(
            "source '{}' && WC_BIN={} ctrd_node_start {n} {}",
            containerd_lib().display(),
            shell_quote(&crate::cni::plugin_dir().display().to_string()),
            conf.unwrap_or_default()
        ));
        let dir = cluster.node_dir(n).join("containerd");
        let cgroup_parent = std::fs::read_to_string(dir.join("cgroup_parent"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let cri = CriClient::connect(&dir.join("containerd.sock"))
            .unwrap_or_else(|e| panic!("node {n}: {e}"));
        Containerd {
            cluster,
            node: n,
            dir,
            cri,
            cgroup_parent,
        }
    }

    /// Runs `script` (bash) with both libraries sourced; panics on failure.
    pub fn sh(&self, script: &str) -> String {
        self.cluster.sh(&format!(
            "source '{}' && {script}",
            containerd_lib().display()
        ))
    }

    /// RunPodSandbox (with this node's cgroup parent), then the sandbox's IP
    /// and pid from PodSandboxStatus.
    pub fn run_pod(&self, spec: &SandboxSpec) -> CriPod {
        let spec = spec.clone().cgroup_parent(&self.cgroup_parent);
        let id = self.cri.run_pod_sandbox(&spec).unwrap_or_else(|e| {
            panic!(
                "node {}: RunPodSandbox {}: {e}\n{}",
                self.node,
                spec.name,
                self.log_tail()
            )
        });
        let st = self
            .cri
            .sandbox_status(&id)
            .unwrap_or_else(|e| panic!("node {}: {e}", self.node));
        assert!(st.ready, "sandbox {id} is not ready: {st:?}");
        assert!(!st.ip.is_empty(), "sandbox {id} has no IP: {st:?}");
        CriPod {
            id,
            name: spec.name,
            ip: st.ip,
            pid: st
                .pid
                .unwrap_or_else(|| panic!("sandbox has no pid: {:?}", st.info)),
        }
    }

    /// StopPodSandbox then RemovePodSandbox, as the kubelet does.
    pub fn stop_and_remove(&self, pod: &CriPod) {
        self.cri
            .stop_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| panic!("node {}: {e}\n{}", self.node, self.log_tail()));
        self.cri
            .remove_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| panic!("node {}: {e}\n{}", self.node, self.log_tail()));
    }

    /// Runs `sh -c script` inside the pod's network namespace (entered
    /// through its sandbox pid); no check.
    pub fn pod_try_sh(&self, pod: &CriPod, script: &str) -> Output {
        run_with_timeout(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", pod.pid))
                .args(["--", "sh", "-c", script]),
            None,
            DEFAULT_TIMEOUT,
        )
    }

    /// Like [`pod_try_sh`](Containerd::pod_try_sh); panics on failure, returns stdout.
    pub fn pod_sh(&self, pod: &CriPod, script: &str) -> String {
        let out = self.pod_try_sh(pod, script);
        assert!(
            out.status.success(),
            "in pod {} ({}): `{script}` failed: {}{}",
            pod.name,
            pod.ip,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One ping from `from` to `ip` (retried for up to 5 s: the first
    /// packet to a new peer may race its overlay entries).
    pub fn ping(&self, from: &CriPod, ip: &str) -> bool {
        wait_until(Duration::from_secs(5), Duration::from_millis(200), || {
            self.pod_try_sh(from, &format!("ping -n -q -c1 -W1 {ip}"))
                .status
                .success()
        })
    }

    /// Restarts containerd (SIGTERM, then a new one in the same namespaces);
    /// the shims and pods keep running.
    pub fn restart(&mut self) {
        let old = self.pid();
        self.sh(&format!("ctrd_restart '{}'", self.dir.display()));
        reap(&[old]);
        self.cri = CriClient::connect(&self.dir.join("containerd.sock"))
            .unwrap_or_else(|e| panic!("node {}: {e}", self.node));
    }

    /// The containerd process id.
    pub fn pid(&self) -> i32 {
        self.sh(&format!("ctrd_pid '{}'", self.dir.display()))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("containerd pid: {e}"))
    }

    /// Every plugin call recorded so far, in start order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        let mut calls: Vec<RecordedCall> = std::fs::read_dir(self.dir.join("calls"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .filter_map(|p| std::fs::read_to_string(p).ok())
                    .filter_map(|t| serde_json::from_str::<Value>(&t).ok())
                    .map(|v| recorded_call(&v))
                    .collect()
            })
            .unwrap_or_default();
        calls.sort_by_key(|c| c.start);
        calls
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir.join("calls")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// `/var/lib/cni` as this node's plugins see it.
    pub fn cni_state(&self) -> PathBuf {
        self.dir.join("cni")
    }

    /// Names of the files under `/var/lib/cni/<sub>` (empty when absent).
    pub fn cni_state_files(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.cni_state().join(sub))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The node's host-local reservations of network `net` (IP-named files).
    pub fn reserved_ips(&self, net: &str) -> Vec<String> {
        self.cni_state_files(&format!("networks/{net}"))
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    /// The host ends of the pods' veths (attached to the bridge `cni0`).
    pub fn host_veths(&self) -> Vec<String> {
        let out = self.cluster.ns_sh(
            &self.cluster.node_ns(self.node),
            "ip -j link show type veth master cni0 2>/dev/null || echo []",
        );
        let links: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        links
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts that no pod left anything on the node: no host-local
    /// reservation, no flannel delegate config, no libcni cache entry, no
    /// veth, no firewall rule or chain of a pod, no sandbox process.
    pub fn assert_nothing_left(&self) {
        let node_ns = self.cluster.node_ns(self.node);
        for net in self.cni_state_files("networks") {
            let ips = self.reserved_ips(&net);
            assert!(
                ips.is_empty(),
                "node {}: {net} still holds {ips:?}",
                self.node
            );
        }
        let delegates = self.cni_state_files("flannel");
        assert!(
            delegates.is_empty(),
            "flannel delegate configs left: {delegates:?}"
        );
        let results = self.cni_state_files("results");
        assert!(results.is_empty(), "libcni cache entries left: {results:?}");
        // Pod veths only: the node's own eth0 is its underlay veth.
        let pod_veths = || {
            self.cluster.ns_sh(
                &node_ns,
                "ip -o link show type veth | grep -v ': eth0@' || true",
            )
        };
        let gone = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
            pod_veths().trim().is_empty()
        });
        assert!(gone, "veths left on node {}:\n{}", self.node, pod_veths());
        let rules = self.cluster.ns_sh(
            &node_ns,
            "nft list ruleset 2>/dev/null; iptables-save 2>/dev/null",
        );
        for needle in [
            "CNI-DN-",
            "CNI-HOSTPORT-DNAT -p",
            "dnat to 10.244.",
            "K8S_POD",
        ] {
            assert!(
                !rules.contains(needle),
                "node {}: firewall still has {needle:?}:\n{rules}",
                self.node
            );
        }
        let pids = self.sh(&format!("ctrd_sandbox_pids '{}'", self.dir.display()));
        assert!(pids.trim().is_empty(), "sandbox processes left: {pids}");
    }

    /// The last lines of containerd's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

fn recorded_call(v: &Value) -> RecordedCall {
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let stdin_text = text("stdin");
    RecordedCall {
        plugin: text("plugin"),
        real: PathBuf::from(text("real")),
        rc: v
            .get("rc")
            .and_then(Value::as_i64)
            .and_then(|r| i32::try_from(r).ok())
            .unwrap_or(-1),
        start: v.get("start").and_then(Value::as_u64).unwrap_or(0),
        env: v
            .get("env")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        stdin: serde_json::from_str(&stdin_text).unwrap_or(Value::String(stdin_text)),
        stdout: text("stdout"),
    }
}

/// Reaps those of `pids` that are our children (containerd, its shims and
/// pods end up as children of the test process, a child subreaper, once
/// the shell that started them is gone), waiting up to 5 s for them to die.
fn reap(pids: &[i32]) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let end = std::time::Instant::now() + Duration::from_secs(5);
    for &pid in pids {
        loop {
            let r = waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            if !matches!(r, Ok(WaitStatus::StillAlive)) || std::time::Instant::now() >= end {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        let lib = containerd_lib();
        let pids = self.cluster.try_sh(&format!(
            "source '{}' && ctrd_pids '{}'",
            lib.display(),
            self.dir.display()
        ));
        let out = self.cluster.try_sh(&format!(
            "source '{}' && ctrd_stop '{}'",
            lib.display(),
            self.dir.display()
        ));
        let pids: Vec<i32> = String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        reap(&pids);
        if !out.status.success() {
            note(&format!(
                "warning: stopping containerd on node {} failed: {}",
                self.node,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
}
