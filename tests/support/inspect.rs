//! Reading live kernel state of a namespace through `ip -j` and `nft`, and
//! waiting for it to settle.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::Netns;

/// Runs `ip -j <args>` inside `ns` and returns the JSON array (empty when
/// `ip` prints nothing). Panics when `ip` fails.
fn ip_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = ns.exec("ip", &full);
    assert!(
        out.status.success(),
        "in netns {}: ip {} failed: {}",
        ns.name,
        full.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(text.trim()) {
        Ok(Value::Array(items)) => items,
        Ok(other) => panic!("ip {}: expected a JSON array, got {other}", full.join(" ")),
        Err(e) => panic!("ip {}: bad JSON ({e}): {text}", full.join(" ")),
    }
}

/// All links with details (`ip -j -d link show`): `ifname`, `mtu`,
/// `operstate`, `flags`, `address`, `master`, `linkinfo.info_kind`, ...
pub fn links(ns: &Netns) -> Vec<Value> {
    ip_json(ns, &["-d", "link", "show"])
}

/// One link by name (from [`links`]), `None` when absent.
pub fn link(ns: &Netns, name: &str) -> Option<Value> {
    links(ns)
        .into_iter()
        .find(|l| l.get("ifname").and_then(Value::as_str) == Some(name))
}

/// Whether a link (from [`links`] / [`link`]) has `flag` (e.g. `"UP"`,
/// `"PROMISC"`) among its `flags`.
pub fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

/// Whether `ifname` exists in `ns` and is administratively up.
pub fn is_up(ns: &Netns, ifname: &str) -> bool {
    link(ns, ifname).is_some_and(|l| has_flag(&l, "UP"))
}

/// All addresses (`ip -j addr show`): per link, `addr_info[]` with `local`,
/// `prefixlen`, `family`, `scope`.
pub fn addrs(ns: &Netns) -> Vec<Value> {
    ip_json(ns, &["addr", "show"])
}

/// IPv4 addresses of `ifname` as `a.b.c.d/len`.
pub fn ipv4_addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    addrs(ns)
        .iter()
        .filter(|l| l.get("ifname").and_then(Value::as_str) == Some(ifname))
        .flat_map(|l| {
            l.get("addr_info")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
        .filter_map(|a| {
            let local = a.get("local")?.as_str()?;
            let len = a.get("prefixlen")?.as_u64()?;
            Some(format!("{local}/{len}"))
        })
        .collect()
}

/// IPv4 routes of the main table (`ip -j route show`): `dst` ("default" for
/// 0.0.0.0/0), `gateway`, `dev`, `scope`, `protocol`, `prefsrc`, ...
pub fn routes(ns: &Netns) -> Vec<Value> {
    ip_json(ns, &["route", "show"])
}

/// IPv6 routes of the main table (`ip -j -6 route show`).
pub fn routes6(ns: &Netns) -> Vec<Value> {
    ip_json(ns, &["-6", "route", "show"])
}

/// The veth links in `node` (the host ends of pod interfaces).
pub fn veths_on_host(node: &Netns) -> Vec<Value> {
    links(node)
        .into_iter()
        .filter(|l| l.pointer("/linkinfo/info_kind").and_then(Value::as_str) == Some("veth"))
        .collect()
}

/// The names of the veth links in `node`.
pub fn veth_names(node: &Netns) -> Vec<String> {
    veths_on_host(node)
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The whole nftables ruleset of `ns` as text (`nft list ruleset`; with
/// iptables-nft this covers iptables rules too).
pub fn nft_ruleset(ns: &Netns) -> String {
    ns.sh("nft list ruleset")
}

/// Every rule of every table in `ns`, as `nft -j list ruleset` prints it
/// (`family`, `table`, `chain`, `expr`, `comment`, ...).
pub fn nft_rules(ns: &Netns) -> Vec<Value> {
    let text = ns.sh("nft -j list ruleset");
    let ruleset: Value = serde_json::from_str(&text).expect("nft -j prints JSON");
    ruleset["nftables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|item| item.get("rule").cloned())
        .collect()
}

/// Calls `cond` every `interval` until it returns true (then true) or
/// `timeout` has passed (then false).
pub fn wait_until(timeout: Duration, interval: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// Polls `cond` every 50 ms for up to 5 s (kernel cleanup, e.g. after a
/// netns or one end of a veth pair goes away, is asynchronous); panics with
/// "timed out waiting until {what}" when it never holds.
#[track_caller]
pub fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(50), cond),
        "timed out waiting until {what}"
    );
}

/// Waits until `node` has exactly `n` veths. A count right after DEL or GC
/// holds only eventually: bridge's DEL leaves the host end to a detached
/// reaper (plugins/bridge/src/del.rs), and deleting one end of a pair
/// removes the other end (in another netns) asynchronously on recent
/// kernels (seen on 6.18). The deadline is generous because dozens of
/// reapers share the rtnl lock on a loaded machine.
#[track_caller]
pub fn assert_veth_count(node: &Netns, n: usize) {
    let mut last = Vec::new();
    let settled = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        last = veth_names(node);
        last.len() == n
    });
    assert!(
        settled,
        "expected {n} veths in {}, still have {last:?}",
        node.name
    );
}

/// Waits ([`assert_veth_count`]) until `node` has no veth left.
#[track_caller]
pub fn assert_no_veths(node: &Netns) {
    assert_veth_count(node, 0);
}
