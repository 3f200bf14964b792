//! podman 4.3 with its CNI backend driving weft's plugins, with private
//! storage and config under a temp dir, run inside a node netns (nsenter
//! keeps /sys, so runc finds the cgroup mounts; `ip netns exec` would
//! remount it). Chosen plugins run behind a wrapper that records what
//! podman sends them, so suites can assert it rather than assume it.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use serde_json::Value;

use crate::cni::plugin_path;
use crate::netns::{Node, TempDir};

/// The plugins podman finds in its plugin dir (weft's builds).
const PLUGINS: [&str; 6] = [
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "tuning",
    "bandwidth",
];

/// One call podman made to a recorded plugin.
#[derive(Debug, Clone)]
pub struct PodmanCall {
    /// CNI_COMMAND.
    pub command: String,
    /// CNI_ARGS as podman set it (empty when unset).
    pub cni_args: String,
    /// The config podman wrote to the plugin's stdin.
    pub stdin: Value,
}

/// A private podman: `dir` holds its storage (`root`, `runroot`, `tmp`),
/// the conflist (`net/<name>.conflist`), the plugin dir (`bin`) and a
/// busybox rootfs (`rootfs`, with `/www/index.html` for httpd).
pub struct Podman {
    pub dir: TempDir,
    node: String,
}

impl Podman {
    /// A podman whose only network is `conflist` (named by its `name`),
    /// running in `node`; the plugins in `recorded` run behind a wrapper
    /// that logs each call ([`Podman::calls`]).
    pub fn new(node: &Node, conflist: &Value, recorded: &[&str]) -> Podman {
        let dir = TempDir::new();
        for sub in [
            "root",
            "runroot",
            "tmp",
            "net",
            "bin",
            "rootfs/bin",
            "rootfs/www",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::copy("/usr/bin/busybox", dir.join("rootfs/bin/busybox")).unwrap();
        std::fs::write(dir.join("rootfs/www/index.html"), "hello-from-podman").unwrap();
        for plugin in PLUGINS {
            let path = dir.join("bin").join(plugin);
            if recorded.contains(&plugin) {
                write_recording_wrapper(&path, &dir.join(format!("sent-{plugin}")), plugin);
            } else {
                std::os::unix::fs::symlink(plugin_path(plugin), path).unwrap();
            }
        }
        let name = conflist["name"].as_str().expect("the conflist has a name");
        std::fs::write(
            dir.join(format!("net/{name}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
                 [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                dir.join("bin").display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            node: node.path_str().to_string(),
        }
    }

    /// `podman <args>` inside the node, on this podman's storage and config.
    pub fn run(&self, args: &[&str]) -> Output {
        let d = |p: &str| self.dir.join(p).display().to_string();
        let net = format!("--net={}", self.node);
        let mut cmd = Command::new("nsenter");
        cmd.args([
            net.as_str(),
            "podman",
            "--root",
            &d("root"),
            "--runroot",
            &d("runroot"),
        ])
        .args([
            "--tmpdir",
            &d("tmp"),
            "--storage-driver",
            "vfs",
            "--runtime",
            "runc",
        ])
        .args([
            "--network-backend",
            "cni",
            "--network-config-dir",
            &d("net"),
        ])
        .args(args)
        .env("CONTAINERS_CONF", d("containers.conf"));
        cmd.output().unwrap()
    }

    /// `podman run -d --name <name> <flags> --rootfs <busybox rootfs>
    /// <command>`, which must succeed; the container's id. The ulimits only because podman's defaults exceed what
    /// some sandboxes allow; flags must precede the rootfs path (the first
    /// positional).
    pub fn run_container(&self, name: &str, flags: &[&str], command: &[&str]) -> String {
        let rootfs = self.dir.join("rootfs").display().to_string();
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(&[
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--rootfs", &rootfs]);
        args.extend_from_slice(command);
        self.run_ok(&args)
    }

    /// `podman <args>` that must succeed; its stdout, trimmed.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Every call podman made to the recorded `plugin`, VERSION included.
    pub fn calls(&self, plugin: &str) -> Vec<PodmanCall> {
        std::fs::read_to_string(self.dir.join(format!("sent-{plugin}")))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let mut fields = line.splitn(3, '\t');
                let mut next = || fields.next().unwrap_or_default().to_string();
                let (command, cni_args, stdin) = (next(), next(), next());
                PodmanCall {
                    command,
                    cni_args,
                    stdin: serde_json::from_str(&stdin)
                        .unwrap_or_else(|e| panic!("{plugin} got {stdin:?}: {e}")),
                }
            })
            .collect()
    }

    /// What podman sent to the recorded `plugin`: (command, stdin) per
    /// call, without VERSION.
    pub fn sent(&self, plugin: &str) -> Vec<(String, Value)> {
        self.calls(plugin)
            .into_iter()
            .filter(|c| c.command != "VERSION")
            .map(|c| (c.command, c.stdin))
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-a"]);
    }
}

/// `plugin` behind a shell script that appends
/// `CNI_COMMAND<TAB>CNI_ARGS<TAB>stdin` to `log` and then runs it.
/// (libcni writes its JSON on one line, without tabs.)
fn write_recording_wrapper(path: &std::path::Path, log: &std::path::Path, plugin: &str) {
    let wrapper = format!(
        "#!/bin/sh\nin=$(cat)\nprintf '%s\\t%s\\t%s\\n' \"$CNI_COMMAND\" \"$CNI_ARGS\" \"$in\" >> {log}\n\
         printf '%s' \"$in\" | exec {bin}\n",
        log = log.display(),
        bin = plugin_path(plugin).display()
    );
    std::fs::write(path, wrapper).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
