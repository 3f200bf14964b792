//! The plugin-test fixture shared by the suites that drive weft's bridge
//! (tests/bridge.rs, tests/dualstack.rs): a node netns, a private
//! host-local dataDir and the network name that names the store.

use std::net::IpAddr;
use std::path::PathBuf;

use serde_json::Value;

use crate::cni::{plugin_path, CniCall, CniOutput};
use crate::config::with_prev;
use crate::netns::{Netns, Node, TempDir};
use crate::store::{reservation, reserved_addrs, store_dir};

/// One node netns running weft's `bridge` (with host-local as IPAM), a
/// private dataDir, and `net`, the network name (the store's subdirectory
/// under dataDir). Suites wrap it (`struct Env(BridgeEnv)` + `Deref`) and
/// add their own config builders.
#[derive(Debug)]
pub struct BridgeEnv {
    pub node: Node,
    pub data: TempDir,
    pub net: String,
}

impl BridgeEnv {
    pub fn new(net: &str) -> BridgeEnv {
        BridgeEnv {
            node: Node::new(),
            data: TempDir::new(),
            net: net.to_string(),
        }
    }

    /// Runs weft's bridge inside the node.
    pub fn run(&self, call: &CniCall) -> CniOutput {
        call.run_in(&self.node, &plugin_path("bridge"))
    }

    pub fn add(&self, pod: &Netns, conf: &Value) -> CniOutput {
        self.run(&CniCall::add(pod, conf.clone()))
    }

    /// ADD that must succeed; returns the result.
    pub fn add_ok(&self, pod: &Netns, conf: &Value) -> Value {
        self.add(pod, conf).expect_ok()
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(&self, pod: &Netns, conf: &Value, prev: &Value) -> CniOutput {
        self.run(&CniCall::check(pod, with_prev(conf, prev)))
    }

    pub fn del(&self, pod: &Netns, conf: &Value) -> CniOutput {
        self.run(&CniCall::del(pod, conf.clone()))
    }

    /// The store directory `<dataDir>/<net>`.
    pub fn store_dir(&self) -> PathBuf {
        store_dir(self.data.path(), &self.net)
    }

    /// The IPs reserved in the store (file names that parse as addresses;
    /// `lock` and `last_reserved_ip.*` are not reservations).
    pub fn reserved(&self) -> Vec<IpAddr> {
        reserved_addrs(self.data.path(), &self.net)
    }

    /// Contents of the store file `name` (a reservation's IP, or
    /// `last_reserved_ip.0`), `None` when absent.
    pub fn store_file(&self, name: &str) -> Option<String> {
        reservation(self.data.path(), &self.net, name)
    }
}

/// The container ID `CniCall::add/check/del` use for `pod`.
pub fn container_id(pod: &Netns) -> String {
    CniCall::add(pod, Value::Null)
        .container_id
        .expect("CniCall::add sets a container ID")
}

/// The host veth's name from a bridge ADD result (`interfaces[1]`).
pub fn host_veth(result: &Value) -> String {
    result["interfaces"][1]["name"]
        .as_str()
        .expect("interfaces[1].name")
        .to_string()
}

/// Pings `dst` (v4 or v6 by its syntax) from `from`; keeps sending for up to
/// 10 s until one reply arrives (a node-side v6 address may still be in DAD).
#[track_caller]
pub fn assert_ping(from: &Netns, dst: &str) {
    assert!(
        from.try_sh("command -v ping").status.success(),
        "`ping` is not installed: install iputils-ping (scripts/setup.sh does)"
    );
    let family = if dst.contains(':') { "-6" } else { "-4" };
    let out = from.try_sh(&format!("ping {family} -c 1 -w 10 {dst}"));
    assert!(
        out.status.success(),
        "ping {family} {dst} from {} failed:\n{}{}",
        from.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
