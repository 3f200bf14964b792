//! Running CNI plugin binaries exactly as a container runtime would.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use crate::netns::Netns;
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};

/// The target triple named in .cargo/config.toml.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// PATH given to plugins (runtimes pass their own environment; Go plugins
/// look up iptables and friends through it).
pub const PLUGIN_PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Cargo workspace root.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Path of one of weft's plugin binaries.
///
/// `WEFT_PLUGIN_DIR` wins when set; otherwise
/// `target/x86_64-unknown-linux-gnu/release/<name>`, then `.../debug/<name>`.
/// Panics when none exists: build first (`scripts/setup.sh`, or
/// `cargo build --release --workspace`). `cargo test` alone does not
/// (re)build other packages' binaries.
pub fn plugin_path(name: &str) -> PathBuf {
    let mut tried = Vec::new();
    for dir in candidate_dirs() {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
        tried.push(p);
    }
    panic!(
        "plugin binary {name:?} not found (tried {tried:?}); run scripts/setup.sh \
         or cargo build --release --workspace"
    );
}

/// The directory holding weft's plugins: what tests put in CNI_PATH so that
/// bridge finds weft's host-local. Same search order as [`plugin_path`]
/// (the first directory that has a `bridge` binary, else the first existing).
pub fn plugin_dir() -> PathBuf {
    find_plugin_dir().unwrap_or_else(|| {
        panic!(
            "no plugin directory among {:?}; run scripts/setup.sh",
            candidate_dirs()
        )
    })
}

fn find_plugin_dir() -> Option<PathBuf> {
    let dirs = candidate_dirs();
    dirs.iter()
        .find(|d| d.join("bridge").is_file())
        .or_else(|| dirs.iter().find(|d| d.is_dir()))
        .cloned()
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("WEFT_PLUGIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    let target = workspace_root().join("target").join(TARGET);
    dirs.push(target.join("release"));
    dirs.push(target.join("debug"));
    dirs
}

/// Where Debian's containernetworking-plugins (the Go reference) live.
pub fn reference_plugin_dir() -> PathBuf {
    PathBuf::from("/usr/lib/cni")
}

/// One CNI invocation: environment variables plus the stdin config.
///
/// Fields set to `None` are left out of the environment entirely (to test
/// "missing variable" errors). Build with [`CniCall::new`] or the
/// command-named helpers, adjust fields or use the chainable setters, then
/// [`run_in`](CniCall::run_in) a node.
#[derive(Clone, Debug)]
pub struct CniCall {
    /// CNI_COMMAND (ADD, DEL, CHECK, GC, STATUS, VERSION, or anything).
    pub command: String,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: Option<String>,
    /// CNI_PATH (`:`-separated).
    pub cni_path: Option<String>,
    /// CNI_ARGS (`K=V;K2=V2`).
    pub args: Option<String>,
    /// The network configuration, written to stdin.
    pub stdin: Value,
    /// Sent instead of `stdin` when set (malformed-input tests).
    pub raw_stdin: Option<Vec<u8>>,
    /// Extra environment variables (after the CNI ones; later entries win).
    pub env: Vec<(String, String)>,
    /// Kill the plugin and fail the test after this long.
    pub timeout: Duration,
}

impl CniCall {
    /// A call with CNI_CONTAINERID `weft-test`, CNI_IFNAME `eth0` and
    /// CNI_PATH = weft's plugin directory; no CNI_NETNS, no CNI_ARGS.
    pub fn new(command: &str, stdin: Value) -> CniCall {
        CniCall {
            command: command.to_string(),
            container_id: Some("weft-test".to_string()),
            netns: None,
            ifname: Some("eth0".to_string()),
            cni_path: Some(plugin_dir_string()),
            args: None,
            stdin,
            raw_stdin: None,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A call aimed at `pod`: CNI_NETNS is its path and CNI_CONTAINERID is
    /// derived from its name, so ADD/CHECK/DEL of the same pod match.
    pub fn for_pod(command: &str, pod: &Netns, stdin: Value) -> CniCall {
        let mut call = CniCall::new(command, stdin);
        call.container_id = Some(format!("ctr-{}", pod.name));
        call.netns = Some(pod.path_str().to_string());
        call
    }

    pub fn add(pod: &Netns, stdin: Value) -> CniCall {
        CniCall::for_pod("ADD", pod, stdin)
    }

    pub fn check(pod: &Netns, stdin: Value) -> CniCall {
        CniCall::for_pod("CHECK", pod, stdin)
    }

    pub fn del(pod: &Netns, stdin: Value) -> CniCall {
        CniCall::for_pod("DEL", pod, stdin)
    }

    /// GC as libcni sends it: only CNI_COMMAND and CNI_PATH.
    pub fn gc(stdin: Value) -> CniCall {
        CniCall::new("GC", stdin).bare()
    }

    /// STATUS as libcni sends it: only CNI_COMMAND and CNI_PATH.
    pub fn status(stdin: Value) -> CniCall {
        CniCall::new("STATUS", stdin).bare()
    }

    /// VERSION: only CNI_COMMAND (and CNI_PATH).
    pub fn version(stdin: Value) -> CniCall {
        CniCall::new("VERSION", stdin).bare()
    }

    fn bare(mut self) -> CniCall {
        self.container_id = None;
        self.ifname = None;
        self
    }

    pub fn container_id(mut self, id: &str) -> CniCall {
        self.container_id = Some(id.to_string());
        self
    }

    pub fn netns(mut self, path: &str) -> CniCall {
        self.netns = Some(path.to_string());
        self
    }

    pub fn ifname(mut self, ifname: &str) -> CniCall {
        self.ifname = Some(ifname.to_string());
        self
    }

    /// CNI_PATH from a list of directories.
    pub fn cni_path(mut self, dirs: &[&Path]) -> CniCall {
        self.cni_path = Some(join_paths(dirs));
        self
    }

    pub fn cni_args(mut self, args: &str) -> CniCall {
        self.args = Some(args.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> CniCall {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The environment the plugin gets (`env -i` clears everything else).
    pub fn environment(&self) -> Vec<(String, String)> {
        let mut env = vec![("PATH".to_string(), PLUGIN_PATH_ENV.to_string())];
        env.push(("CNI_COMMAND".to_string(), self.command.clone()));
        let optional = [
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", &self.ifname),
            ("CNI_ARGS", &self.args),
            ("CNI_PATH", &self.cni_path),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                env.push((key.to_string(), v.clone()));
            }
        }
        env.extend(self.env.iter().cloned());
        env
    }

    /// Runs `plugin` inside `node` the way a runtime would:
    /// `ip netns exec <node> env -i CNI_...=... <plugin>` with the config
    /// on stdin.
    pub fn run_in(&self, node: &Netns, plugin: &Path) -> CniOutput {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.name, "env", "-i"]);
        for (k, v) in self.environment() {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(plugin);
        let stdin = match &self.raw_stdin {
            Some(raw) => raw.clone(),
            None => serde_json::to_vec(&self.stdin).expect("stdin JSON serializes"),
        };
        let out = run_with_timeout(&mut cmd, Some(&stdin), self.timeout);
        CniOutput::new(
            format!("{} {} in {}", plugin.display(), self.command, node.name),
            out,
        )
    }
}

pub(crate) fn join_paths(dirs: &[&Path]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn plugin_dir_string() -> String {
    // Tests that only use reference plugins must work before weft's own
    // plugins exist, so a missing build is not an error here.
    find_plugin_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default()
}

/// What a plugin (or the libcni driver) did: exit status, output, and the
/// stdout parsed as JSON when it is JSON.
#[derive(Clone, Debug)]
pub struct CniOutput {
    /// Human description of the call, for failure messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub json: Option<Value>,
}

impl CniOutput {
    pub(crate) fn new(what: String, out: std::process::Output) -> CniOutput {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(stdout.trim()).ok();
        CniOutput {
            what,
            status: out.status,
            stdout,
            stderr,
            json,
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Asserts exit status 0 and returns the stdout JSON (`Null` when the
    /// plugin printed nothing, as CHECK/DEL/GC/STATUS should).
    #[track_caller]
    pub fn expect_ok(&self) -> Value {
        assert!(
            self.status.success(),
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.status,
            self.stdout.trim(),
            self.stderr.trim()
        );
        match &self.json {
            Some(v) => v.clone(),
            None => {
                assert!(
                    self.stdout.trim().is_empty(),
                    "{} succeeded but stdout is not JSON: {:?}",
                    self.what,
                    self.stdout
                );
                Value::Null
            }
        }
    }

    /// Asserts a non-zero exit with a CNI error object on stdout whose
    /// `code` is `code`; returns that object.
    #[track_caller]
    pub fn expect_error(&self, code: u64) -> Value {
        assert!(
            !self.status.success(),
            "{} succeeded, expected error code {code}:\nstdout: {}\nstderr: {}",
            self.what,
            self.stdout.trim(),
            self.stderr.trim()
        );
        let json = self.json.clone().unwrap_or_else(|| {
            panic!(
                "{} failed ({}) without a JSON error on stdout:\nstdout: {:?}\nstderr: {}",
                self.what,
                self.status,
                self.stdout,
                self.stderr.trim()
            )
        });
        assert_eq!(
            json.get("code").and_then(Value::as_u64),
            Some(code),
            "{}: wrong error code in {json}\nstderr: {}",
            self.what,
            self.stderr.trim()
        );
        json
    }
}
