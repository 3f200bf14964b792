//! Test harness for weft's black-box tests.
//!
//! Every test works inside network namespaces it creates (via `ip netns`),
//! named from [`unique_prefix`], and removed again by `Drop` guards, also
//! when the test panics. Nothing here touches the root namespace's links,
//! routes or firewall.
//!
//! Typical use:
//!
//! ```no_run
//! use weft_tests::*;
//! use serde_json::json;
//!
//! if !require_root() { return; }
//! let node = Node::new();
//! let pod = node.pod();
//! let data = TempDir::new();
//! let conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge",
//!                   "ipam": {"type": "host-local", "dataDir": data.path(),
//!                            "ranges": [[{"subnet": "10.244.1.0/24"}]]}});
//! let out = CniCall::add(&pod, conf.clone()).run_in(&node, &plugin_path("bridge"));
//! let result = out.expect_ok();
//! assert_eq!(veths_on_host(&node).len(), 1);
//! CniCall::del(&pod, conf).run_in(&node, &plugin_path("bridge")).expect_ok();
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cluster;
mod cni;
mod config;
mod containerd;
pub mod cri;
mod driver;
mod fault;
mod fixture;
mod inspect;
mod netns;
mod podman;
mod process;
mod rate;
mod store;

pub use cluster::{cluster_lib, shell_quote, Cluster};
pub use cni::{plugin_dir, plugin_path, reference_plugin_dir, workspace_root, CniCall, CniOutput};
pub use config::{
    bridge_plugin, conflist, host_local_ipam, merged, network, subnet_range, with_prev,
};
pub use containerd::{containerd_lib, Containerd, CriPod, RecordedCall};
pub use cri::{CriClient, SandboxSpec};
pub use driver::{driver_path, Driver};
pub use fault::sendto_failing_wrapper;
pub use fixture::{assert_ping, container_id, host_veth, BridgeEnv};
pub use inspect::{
    addrs, assert_no_veths, assert_veth_count, eventually, has_flag, ipv4_addrs, is_up, link,
    links, nft_rules, nft_ruleset, routes, routes6, veth_names, veths_on_host, wait_until,
};
pub use netns::{sweep_stale, Background, Netns, Node, TempDir};
pub use podman::{Podman, PodmanCall};
pub use process::{run_with_timeout, DEFAULT_TIMEOUT};
pub use rate::{assert_shaped_within_10_percent, iperf3_received_bps};
pub use store::{
    is_reservation_name, last_reserved, reservation, reserved_addrs, reserved_ips, store_dir,
    store_files,
};

use std::sync::atomic::{AtomicU32, Ordering};

/// Environment variable that turns "skip when not root" into a failure (CI).
pub const REQUIRE_ROOT_ENV: &str = "WEFT_REQUIRE_ROOT";

/// True when the tests run as root. Otherwise prints
/// `skipping <test>: needs root` and returns false, or panics when
/// `WEFT_REQUIRE_ROOT=1` is set, so CI cannot silently skip.
///
/// The one root check of every root-only test in the workspace (with
/// [`Netns`] and [`TempDir`] as their guards). Each such test also carries
/// `#[ignore = "needs root"]`, so that a plain non-root `cargo test` counts
/// it as ignored rather than passed; `scripts/test.sh` includes them.
///
/// ```no_run
/// if !weft_tests::require_root() { return; }
/// ```
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if root_required_by_env() {
        panic!("{test}: needs root, and {REQUIRE_ROOT_ENV}=1 forbids skipping");
    }
    note(&format!("skipping {test}: needs root"));
    false
}

/// Whether the *effective* uid is 0. The kernel checks the effective uid
/// (and the capabilities that come with it) for what these tests do
/// (`ip netns add`, setns, netlink writes), so that is the one to test: under
/// `setpriv --euid=0` or a setuid wrapper the real uid is not 0 yet the
/// tests can run, and with a real uid 0 but an unprivileged effective uid
/// they cannot.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Prints a line on the real stderr, bypassing libtest's output capture
/// (which swallows `eprintln!` of passing tests), so skips and cleanup
/// warnings are always visible.
pub fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Whether `WEFT_REQUIRE_ROOT` asks root-only tests to fail instead of skip.
pub fn root_required_by_env() -> bool {
    matches!(
        std::env::var(REQUIRE_ROOT_ENV).as_deref().map(str::trim),
        Ok("1" | "true" | "yes")
    )
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, short name prefix: `wt<pid hex>x<counter hex>`, unique per
/// process and call, at most 15 bytes (usually ~8), so that a suffix of a
/// few characters still fits an interface name (IFNAMSIZ - 1 = 15).
///
/// The pid is part of the name so that leftovers of a killed test process
/// can be recognised and removed by [`sweep_stale`]; the first call in a
/// process runs that sweep.
pub fn unique_prefix() -> String {
    netns::sweep_once();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("wt{:x}x{:x}", std::process::id(), n)
}

/// Parses a name made by [`unique_prefix`] (possibly with a suffix) into the
/// pid of the process that made it.
pub fn prefix_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("wt")?;
    let (pid, rest) = rest.split_once('x')?;
    if pid.is_empty()
        || !pid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    let counter: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    if counter.is_empty() {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}
