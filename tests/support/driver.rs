//! The Go libcni driver (tests/libcni-driver), built by scripts/setup.sh.
//!
//! Debian's libcni is 1.1.2: it handles cniVersion up to 1.0.0 for
//! add/check/del (a 1.1.0 result is "unsupported CNI result version"), and
//! the driver implements gc/status itself following libcni >= 1.2 (GC and
//! STATUS are only sent for cniVersion >= 1.1.0). See main.go's header.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cni::{join_paths, CniOutput, PLUGIN_PATH_ENV};
use crate::netns::{Netns, TempDir};
use crate::process::{run_with_timeout, DEFAULT_TIMEOUT};

/// `tests/libcni-driver/bin/libcni-driver`; panics with a hint when missing.
pub fn driver_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("libcni-driver/bin/libcni-driver");
    assert!(
        p.is_file(),
        "{} not found: run scripts/setup.sh to build the libcni driver",
        p.display()
    );
    p
}

/// A runtime stand-in: one conflist, a CNI_PATH and a private libcni cache
/// directory (removed on drop), run inside a node namespace.
#[derive(Debug)]
pub struct Driver {
    /// The conflist file the driver reads (rewrite it with `set_conflist`).
    pub conflist: PathBuf,
    /// `:`-separated plugin directories.
    pub cni_path: String,
    /// libcni's cache directory (results/<net>-<cid>-<ifname>).
    pub cache_dir: PathBuf,
    /// `--cap-args`: capability args (runtimeConfig source) for add/check/del.
    pub cap_args: Option<Value>,
    /// `--args`: CNI_ARGS for add/check/del.
    pub cni_args: Option<String>,
    pub timeout: Duration,
    dir: TempDir,
}

impl Driver {
    pub fn new(conflist: &Value, cni_path: &[&Path]) -> Driver {
        let dir = TempDir::new();
        let driver = Driver {
            conflist: dir.join("net.conflist"),
            cni_path: join_paths(cni_path),
            cache_dir: dir.join("cache"),
            cap_args: None,
            cni_args: None,
            timeout: DEFAULT_TIMEOUT,
            dir,
        };
        driver.set_conflist(conflist);
        driver
    }

    /// Replaces the conflist (e.g. the same network at another cniVersion).
    pub fn set_conflist(&self, conflist: &Value) {
        let text = serde_json::to_string_pretty(conflist).expect("conflist serializes");
        std::fs::write(&self.conflist, text)
            .unwrap_or_else(|e| panic!("writing {}: {e}", self.conflist.display()));
    }

    /// The driver's private directory (also a good place for dataDir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cached ADD result libcni keeps for one attachment, if any.
    pub fn cached(&self, network: &str, container_id: &str, ifname: &str) -> Option<Value> {
        let file = self
            .cache_dir
            .join("results")
            .join(format!("{network}-{container_id}-{ifname}"));
        let text = std::fs::read_to_string(file).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn add(&self, node: &Netns, pod: &Netns, container_id: &str, ifname: &str) -> CniOutput {
        self.run(
            node,
            "add",
            &self.attachment_args(Some(pod), container_id, ifname),
        )
    }

    pub fn check(&self, node: &Netns, pod: &Netns, container_id: &str, ifname: &str) -> CniOutput {
        self.run(
            node,
            "check",
            &self.attachment_args(Some(pod), container_id, ifname),
        )
    }

    /// DEL; `pod` may be `None` (CNI_NETNS is optional for DEL).
    pub fn del(
        &self,
        node: &Netns,
        pod: Option<&Netns>,
        container_id: &str,
        ifname: &str,
    ) -> CniOutput {
        self.run(
            node,
            "del",
            &self.attachment_args(pod, container_id, ifname),
        )
    }

    /// GC. `valid = None` sends no valid-attachments key (like `cnitool gc`);
    /// `Some(&[])` sends an empty list.
    pub fn gc(&self, node: &Netns, valid: Option<&[(&str, &str)]>) -> CniOutput {
        let mut args = Vec::new();
        if let Some(valid) = valid {
            let list: Vec<Value> = valid
                .iter()
                .map(|(cid, ifname)| serde_json::json!({"containerID": cid, "ifname": ifname}))
                .collect();
            args.push("--valid-attachments".to_string());
            args.push(Value::Array(list).to_string());
        }
        self.run(node, "gc", &args)
    }

    pub fn status(&self, node: &Netns) -> CniOutput {
        self.run(node, "status", &[])
    }

    fn attachment_args(
        &self,
        pod: Option<&Netns>,
        container_id: &str,
        ifname: &str,
    ) -> Vec<String> {
        let mut args = vec![
            "--container-id".to_string(),
            container_id.to_string(),
            "--ifname".to_string(),
            ifname.to_string(),
        ];
        if let Some(pod) = pod {
            args.push("--netns".to_string());
            args.push(pod.path_str().to_string());
        }
        if let Some(cap) = &self.cap_args {
            args.push("--cap-args".to_string());
            args.push(cap.to_string());
        }
        if let Some(a) = &self.cni_args {
            args.push("--args".to_string());
            args.push(a.clone());
        }
        args
    }

    /// Runs `libcni-driver <command> --conflist .. --cni-path .. --cache-dir
    /// .. <extra>` inside `node` with a clean environment (PATH only).
    pub fn run(&self, node: &Netns, command: &str, extra: &[String]) -> CniOutput {
        let driver = driver_path();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.name, "env", "-i"])
            .arg(format!("PATH={PLUGIN_PATH_ENV}"))
            .arg(&driver)
            .arg(command)
            .arg("--conflist")
            .arg(&self.conflist)
            .arg("--cni-path")
            .arg(&self.cni_path)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(extra);
        let out = run_with_timeout(&mut cmd, None, self.timeout);
        CniOutput::new(format!("libcni-driver {command} in {}", node.name), out)
    }
}
