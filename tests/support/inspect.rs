//! Reading live kernel state of a namespace through `ip -j`.

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
