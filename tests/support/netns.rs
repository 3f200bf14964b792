//! Network namespaces, nodes, background processes and temporary
//! directories, each removed by its `Drop`.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;

use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};
use crate::{note, prefix_owner, unique_prefix};

/// Runs `ip <args>` and returns its output (no check).
pub(crate) fn ip(args: &[&str]) -> Output {
    run_with_timeout(Command::new("ip").args(args), None, DEFAULT_TIMEOUT)
}

/// Runs `ip <args>` and panics with its stderr when it fails.
pub(crate) fn ip_ok(args: &[&str]) -> String {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop together
/// with every process still running inside it.
#[derive(Debug)]
pub struct Netns {
    /// Name under /run/netns.
    pub name: String,
    /// `/run/netns/<name>`, what CNI_NETNS expects.
    pub path: PathBuf,
}

impl Netns {
    /// A new namespace with a fresh [`unique_prefix`] name. Its `lo` is down.
    pub fn new() -> Netns {
        Netns::named(&unique_prefix())
    }

    /// A new namespace named `<unique prefix><tag>` (handy in `ip netns list`
    /// while debugging).
    pub fn with_tag(tag: &str) -> Netns {
        Netns::named(&format!("{}{tag}", unique_prefix()))
    }

    /// A new namespace with exactly this name. Panics if it already exists.
    pub fn named(name: &str) -> Netns {
        ip_ok(&["netns", "add", name]);
        Netns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
        }
    }

    /// `path` as a `&str` (for JSON and environment variables).
    pub fn path_str(&self) -> &str {
        self.path.to_str().expect("netns path is UTF-8")
    }

    /// Runs `cmd args...` inside the namespace (`ip netns exec`); no check.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        run_with_timeout(
            Command::new("ip")
                .args(["netns", "exec", &self.name, cmd])
                .args(args),
            None,
            DEFAULT_TIMEOUT,
        )
    }

    /// Runs `sh -c script` inside the namespace; no check.
    pub fn try_sh(&self, script: &str) -> Output {
        self.exec("sh", &["-c", script])
    }

    /// Runs `sh -c script` inside the namespace and returns its stdout;
    /// panics with the script and its stderr when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.try_sh(script);
        assert!(
            out.status.success(),
            "in netns {}: `{script}` failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd args...` in the background inside the namespace (e.g. an
    /// iperf3 server). The process is killed when the guard drops; if the
    /// guard leaks, dropping the namespace kills it too.
    pub fn spawn(&self, cmd: &str, args: &[&str]) -> Background {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd} in netns {}: {e}", self.name));
        Background { child }
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        let out = ip(&["netns", "pids", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes left inside (started by the test) would keep the
        // namespace and its interfaces alive after the name is gone.
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let out = ip(&["netns", "del", &self.name]);
        if !out.status.success() {
            // Never panic in drop (it may run while unwinding).
            note(&format!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
}

/// A node: a namespace with `lo` up, standing in for a Kubernetes node's
/// root namespace. Plugins run inside it; pods are further namespaces.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::with_tag("n");
        ns.sh("ip link set lo up");
        Node { ns }
    }

    /// A new pod namespace (lo left down: that is the loopback plugin's job).
    pub fn pod(&self) -> Netns {
        Netns::with_tag("p")
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

impl Deref for Node {
    type Target = Netns;
    fn deref(&self) -> &Netns {
        &self.ns
    }
}

/// A background process; killed and reaped on drop.
#[derive(Debug)]
pub struct Background {
    pub child: Child,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private temporary directory (e.g. host-local's dataDir, libcni's cache),
/// removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!("weft-{}", unique_prefix()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            note(&format!(
                "warning: cannot remove {}: {e}",
                self.path.display()
            ));
        }
    }
}

static SWEEP: Once = Once::new();

/// Runs [`sweep_stale`] once per process (as root only).
pub(crate) fn sweep_once() {
    SWEEP.call_once(|| {
        if crate::is_root() {
            sweep_stale();
        }
    });
}

fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0: existence check only. EPERM still means it exists.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// The safety net behind the `Drop` guards: removes namespaces and temporary
/// directories named by [`unique_prefix`] whose owning test process no longer
/// exists (it was killed, or aborted). Names of live processes, and any name
/// not in that exact format, are never touched. Returns what it removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let listing = ip(&["netns", "list"]);
    for line in String::from_utf8_lossy(&listing.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if prefix_owner(name).is_some_and(|pid| !pid_alive(pid)) {
            let out = ip(&["netns", "del", name]);
            if out.status.success() {
                note(&format!(
                    "weft-tests: removed stale netns {name} (its test process is gone)"
                ));
                removed.push(name.to_string());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("weft-") else {
                continue;
            };
            if prefix_owner(rest).is_some_and(|pid| !pid_alive(pid))
                && std::fs::remove_dir_all(entry.path()).is_ok()
            {
                note(&format!(
                    "weft-tests: removed stale temp dir {}",
                    entry.path().display()
                ));
                removed.push(name);
            }
        }
    }
    removed
}
