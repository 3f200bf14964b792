//! What weftd knows about its node, as one JSON document: this node's
//! lease, readiness and (when not ready) why in words, etcd's state, the
//! masquerade rules, the peers it knows (programmed or rejected, with the
//! reason) and the last sync.
//!
//! weftd keeps it in a root-only state file next to subnet.env
//! ([`path_for_subnet_file`]) and serves the same JSON on its health port
//! (`GET /state`). weftctl and the flannel CNI plugin read it with
//! [`observe`], which also tells whether weftd is running: while it runs,
//! weftd holds an open-file-description lock on the sibling lock file
//! ([`lock_path`]); the kernel drops it when weftd exits, however it
//! exits, and the check works across PID namespaces (weftd in a
//! DaemonSet pod, the plugin on the host), which a PID would not.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The state file weftd writes by default (next to flannel's default subnet.env).
pub const DEFAULT_PATH: &str = "/run/flannel/weftd-state.json";
const FILE_NAME: &str = "weftd-state.json";
/// Bumped when a field changes meaning; readers refuse newer versions.
pub const SCHEMA: u32 = 1;

/// The state file for a given subnet.env: in the same directory.
pub fn path_for_subnet_file(subnet_file: &Path) -> PathBuf {
    match subnet_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir.join(FILE_NAME),
        None => PathBuf::from(FILE_NAME),
    }
}

/// The lock file weftd holds while it runs: `<state>.lock`.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Everything weftd reports. Times are Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeState {
    pub schema: u32,
    /// weftd's PID in its own PID namespace (informational).
    pub pid: u32,
    pub started_at: u64,
    pub updated_at: u64,
    pub ready: bool,
    /// Why not ready; `None` when ready.
    pub reason: Option<NotReady>,
    /// `reason` in words, rendered when the state was taken.
    pub reason_text: Option<String>,
    pub etcd: Etcd,
    pub network: Option<Network>,
    pub underlay: Option<Underlay>,
    pub lease: Option<Lease>,
    pub subnet_file: SubnetFile,
    /// Overlay devices weftd manages (e.g. `flannel.1`); empty for backends without one.
    pub devices: Vec<String>,
    pub masq: Masq,
    /// Every other lease weftd knows, sorted by key.
    pub peers: Vec<Peer>,
    /// Last time the kernel was found to match the peers.
    pub last_sync: Option<u64>,
    /// The last data-plane programming error, while it lasts.
    pub sync_error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Etcd {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The last etcd call succeeded.
    pub connected: bool,
    /// The current failure, while etcd calls fail.
    pub failure: Option<Failure>,
}

/// A condition that has lasted since `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    pub since: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Network {
    /// `<prefix>/config`.
    pub config_key: String,
    pub network: String,
    pub ipv6_network: Option<String>,
    /// `Backend.Type`: "vxlan", "host-gw", ...
    pub backend_type: String,
    /// vxlan's `DirectRouting`: on-link peers get a direct route.
    pub direct_routing: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Underlay {
    pub iface: String,
    pub ip: String,
    pub mtu: u32,
}

/// This node's lease.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Lease {
    pub key: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub public_ip: String,
    pub public_ipv6: Option<String>,
    pub backend_type: String,
    /// The lease's `BackendData` as stored in etcd (vxlan: VNI, VtepMAC).
    pub backend_data: Value,
    /// `None` for a reservation (no TTL).
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SubnetFile {
    pub path: String,
    pub written: bool,
    /// `FLANNEL_MTU` as written.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Masq {
    /// `--ip-masq`.
    pub enabled: bool,
    /// The rules were installed and found intact by the last check.
    pub installed: bool,
    /// "nftables" or "iptables".
    pub backend: Option<String>,
    pub error: Option<String>,
}

/// Another node's lease as weftd sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peer {
    /// The key's last segment, e.g. `10.244.3.0-24`.
    pub key: String,
    pub subnet: String,
    pub subnet6: Option<String>,
    pub public_ip: Option<String>,
    pub public_ipv6: Option<String>,
    pub backend_type: String,
    /// `BackendData` as stored (vxlan: VNI, VtepMAC).
    pub backend_data: Value,
    /// Handed to the data plane (not rejected).
    pub accepted: bool,
    /// Why it is never programmed.
    pub rejected: Option<String>,
    /// The kernel entries weftd's backend wants for it (both families).
    pub entries: Vec<KernelEntry>,
    /// Accepted, but the backend cannot program it (e.g. host-gw and a
    /// peer that is not on-link), and why.
    pub unprogrammable: Option<String>,
}

/// One kernel entry weftd programs for a peer, as `ip` would name it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelEntry {
    /// A permanent neighbour `ip lladdr mac dev`.
    Neighbour {
        dev: String,
        ip: String,
        mac: String,
    },
    /// A permanent `self` FDB entry `mac dev dst`.
    Fdb {
        dev: String,
        mac: String,
        dst: String,
    },
    /// A main-table route `dst via gw dev [onlink]`.
    Route {
        dst: String,
        gw: String,
        dev: String,
        onlink: bool,
    },
}

impl std::fmt::Display for KernelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelEntry::Neighbour { dev, ip, mac } => {
                write!(f, "neighbour {ip} lladdr {mac} dev {dev}")
            }
            KernelEntry::Fdb { dev, mac, dst } => write!(f, "fdb {mac} dev {dev} dst {dst}"),
            KernelEntry::Route {
                dst,
                gw,
                dev,
                onlink,
            } => {
                let onlink = if *onlink { " onlink" } else { "" };
                write!(f, "route {dst} via {gw} dev {dev}{onlink}")
            }
        }
    }
}

/// Why weftd is not ready, most fundamental first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NotReady {
    Starting,
    EtcdUnreachable {
        endpoints: Vec<String>,
        error: String,
        since: u64,
    },
    NoNetworkConfig {
        key: String,
        since: u64,
    },
    InvalidNetworkConfig {
        key: String,
        error: String,
    },
    InterfaceNotFound {
        iface: String,
        error: String,
    },
    SubnetExhausted {
        network: String,
        error: String,
        since: u64,
    },
    LeaseFailed {
        error: String,
        since: u64,
    },
    MasqueradeMissing {
        error: Option<String>,
    },
    SubnetFileNotWritten {
        path: String,
        error: Option<String>,
    },
    PeersNotSynced {
        error: Option<String>,
    },
    /// weftd stopped on an error it cannot retry.
    Fatal {
        error: String,
    },
}

/// `12 s`, `3 min 20 s`, `2 h 5 min`.
pub fn format_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

fn with_error(text: String, error: &Option<String>) -> String {
    match error {
        Some(e) => format!("{text}: {e}"),
        None => text,
    }
}

impl NotReady {
    /// The reason in words; durations are counted up to `now`.
    pub fn describe(&self, now: u64) -> String {
        let ago = |since: &u64| format_duration(now.saturating_sub(*since));
        match self {
            NotReady::Starting => "weftd is starting".into(),
            NotReady::EtcdUnreachable {
                endpoints,
                error,
                since,
            } => format!(
                "etcd at {} has failed for {}: {error}",
                endpoints.join(", "),
                ago(since)
            ),
            NotReady::NoNetworkConfig { key, since } => format!(
                "no network config in etcd at {key} (waiting for {}); write it with `etcdctl put {key} '{{\"Network\":\"10.244.0.0/16\",\"Backend\":{{\"Type\":\"vxlan\"}}}}'`",
                ago(since)
            ),
            NotReady::InvalidNetworkConfig { key, error } => {
                format!("the network config at {key} is invalid: {error}")
            }
            NotReady::InterfaceNotFound { iface, error } => {
                format!("interface {iface} not found: {error}")
            }
            NotReady::SubnetExhausted {
                network,
                error,
                since,
            } => format!(
                "no free subnet left in {network} (for {}): {error}",
                ago(since)
            ),
            NotReady::LeaseFailed { error, since } => format!(
                "cannot take a subnet lease (for {}): {error}",
                ago(since)
            ),
            NotReady::MasqueradeMissing { error } => {
                with_error("masquerade rules not installed".into(), error)
            }
            NotReady::SubnetFileNotWritten { path, error } => {
                with_error(format!("{path} not written yet"), error)
            }
            NotReady::PeersNotSynced { error } => {
                with_error("peers not programmed yet".into(), error)
            }
            NotReady::Fatal { error } => format!("weftd stopped: {error}"),
        }
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NodeState {
    /// A state for a weftd that has just started.
    pub fn starting(pid: u32, now: u64) -> NodeState {
        NodeState {
            schema: SCHEMA,
            pid,
            started_at: now,
            updated_at: now,
            reason: Some(NotReady::Starting),
            ..NodeState::default()
        }
    }

    /// The reason in words as of `now`, or None when ready.
    pub fn reason_at(&self, now: u64) -> Option<String> {
        self.reason.as_ref().map(|r| r.describe(now))
    }

    /// The JSON served and stored: `reason_text` rendered as of `now`.
    pub fn to_json(&self, now: u64) -> String {
        let mut s = self.clone();
        s.updated_at = now;
        s.reason_text = s.reason_at(now);
        serde_json::to_string_pretty(&s).unwrap_or_else(|_| "{}".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not weftd's state: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} has schema {found}; this reader knows {SCHEMA}", path.display())]
    Schema { path: PathBuf, found: u32 },
    #[error("{} is held by another weftd", path.display())]
    Locked { path: PathBuf },
}

/// What a reader finds.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// No state file: weftd never ran with this state path (or is too old to write one).
    Missing,
    /// A state file, but no weftd holds its lock: weftd has exited; this is what it last knew.
    Stopped(Box<NodeState>),
    /// weftd is running and this is its current state.
    Running(Box<NodeState>),
}

/// Parses state JSON (from the file or the health port).
pub fn parse(text: &[u8], origin: &Path) -> Result<NodeState, StateError> {
    let state: NodeState = serde_json::from_slice(text).map_err(|source| StateError::Parse {
        path: origin.into(),
        source,
    })?;
    if state.schema > SCHEMA {
        return Err(StateError::Schema {
            path: origin.into(),
            found: state.schema,
        });
    }
    Ok(state)
}

fn whole_file_lock(kind: libc::c_int) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// True while some process holds the lock on `lock` (weftd runs).
pub fn weftd_running(lock: &Path) -> Result<bool, StateError> {
    let io = |source| StateError::Io {
        path: lock.into(),
        source,
    };
    let f = match File::open(lock) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    // F_OFD_GETLK only asks: it never takes the lock, so a reader cannot
    // make a starting weftd fail to take it.
    let mut probe = whole_file_lock(libc::F_WRLCK);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe))
        .map_err(|e| io(e.into()))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// Reads the state file at `path` and whether weftd is running.
pub fn observe(path: &Path) -> Result<Observed, StateError> {
    let running = weftd_running(&lock_path(path))?;
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Observed::Missing),
        Err(source) => {
            return Err(StateError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let state = Box::new(parse(&text, path)?);
    Ok(if running {
        Observed::Running(state)
    } else {
        Observed::Stopped(state)
    })
}

/// weftd's side: the lock held for the process's lifetime, and the writes.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

impl StateFile {
    /// Takes the lock (creating the directory, 0755 as subnet.env's, and
    /// the lock file, 0600). Fails when another weftd holds it.
    pub fn open(path: &Path) -> Result<StateFile, StateError> {
        let lock = lock_path(path);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| StateError::Io { path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io(dir))?;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io(&lock))?;
        let want = whole_file_lock(libc::F_WRLCK);
        match nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_OFD_SETLK(&want)) {
            Ok(_) => Ok(StateFile {
                path: path.into(),
                _lock: f,
            }),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => {
                Err(StateError::Locked { path: lock })
            }
            Err(e) => Err(io(&lock)(e.into())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file atomically, root-only (0600).
    pub fn write(&self, state: &NodeState, now: u64) -> std::io::Result<()> {
        flannel_env::write_atomic(&self.path, state.to_json(now).as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("node-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn state_sits_next_to_subnet_env() {
        assert_eq!(
            path_for_subnet_file(Path::new("/run/flannel/subnet.env")),
            Path::new(DEFAULT_PATH)
        );
        assert_eq!(
            lock_path(Path::new("/x/weftd-state.json")),
            Path::new("/x/weftd-state.json.lock")
        );
        assert_eq!(
            path_for_subnet_file(Path::new("subnet.env")),
            Path::new(FILE_NAME)
        );
    }

    #[test]
    fn reasons_read_as_sentences() {
        let r = NotReady::EtcdUnreachable {
            endpoints: vec!["http://198.51.100.1:2379".into()],
            error: "connection refused".into(),
            since: 100,
        };
        assert_eq!(
            r.describe(140),
            "etcd at http://198.51.100.1:2379 has failed for 40 s: connection refused"
        );
        let r = NotReady::NoNetworkConfig {
            key: "/coreos.com/network/config".into(),
            since: 0,
        };
        assert!(r.describe(200).starts_with(
            "no network config in etcd at /coreos.com/network/config (waiting for 3 min 20 s)"
        ));
        assert_eq!(format_duration(7500), "2 h 5 min");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["kind"], "no_network_config");
    }

    #[test]
    fn written_state_is_root_only_and_reads_back_with_liveness() {
        let dir = tmp("rw");
        let path = dir.join("run/weftd-state.json");
        assert_eq!(observe(&path).unwrap(), Observed::Missing);
        let file = StateFile::open(&path).unwrap();
        // A second weftd cannot take the lock.
        assert!(matches!(
            StateFile::open(&path),
            Err(StateError::Locked { .. })
        ));
        let mut s = NodeState::starting(42, 1000);
        s.etcd.endpoints = vec!["http://e:2379".into()];
        file.write(&s, 1005).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let Observed::Running(got) = observe(&path).unwrap() else {
            panic!("not running")
        };
        assert_eq!(got.updated_at, 1005);
        assert_eq!(got.reason_text.as_deref(), Some("weftd is starting"));
        assert_eq!(got.etcd.endpoints, s.etcd.endpoints);
        drop(file);
        assert!(matches!(observe(&path).unwrap(), Observed::Stopped(_)));
        std::fs::write(&path, b"{\"schema\": 99}").unwrap();
        assert!(matches!(observe(&path), Err(StateError::Schema { .. })));
        std::fs::write(&path, b"nope").unwrap();
        assert!(matches!(observe(&path), Err(StateError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
