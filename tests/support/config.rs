//! Builders for the network configurations the suites send to plugins:
//! bridge + host-local entries, whole configs and conflists. Every suite
//! passes its own names, bridges, subnets and dataDir, so tests stay
//! independent when they run in parallel.

use std::path::Path;

use serde_json::{json, Value};

/// One host-local range: `{"subnet": cidr}`.
pub fn subnet_range(cidr: &str) -> Value {
    json!({ "subnet": cidr })
}

/// host-local's `ipam` section: store under `data`, one range set holding
/// `range` (e.g. [`subnet_range`], or with `rangeStart`/`rangeEnd`), and a
/// default route (`{"dst": "0.0.0.0/0"}`, no gateway: the range's).
pub fn host_local_ipam(data: &Path, range: Value) -> Value {
    json!({
        "type": "host-local",
        "dataDir": data,
        "ranges": [[range]],
        "routes": [{"dst": "0.0.0.0/0"}]
    })
}

/// The bridge plugin's entry (no `cniVersion`/`name`, as in a conflist):
/// bridge `bridge` with `isGateway` and the given `ipam`. Other options
/// (`ipMasq`, `mtu`, ...) go on with [`merged`].
pub fn bridge_plugin(bridge: &str, ipam: Value) -> Value {
    json!({
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipam": ipam
    })
}

/// A single-plugin network configuration: `plugin` (an object) with
/// `cniVersion` and `name` added.
pub fn network(version: &str, name: &str, plugin: Value) -> Value {
    merged(&plugin, json!({ "cniVersion": version, "name": name }))
}

/// A conflist: `{"cniVersion": version, "name": name, "plugins": plugins}`.
pub fn conflist(version: &str, name: &str, plugins: Vec<Value>) -> Value {
    json!({ "cniVersion": version, "name": name, "plugins": plugins })
}

/// `conf` with its top-level keys overridden (or added) by `patch`'s.
pub fn merged(conf: &Value, patch: Value) -> Value {
    let mut out = conf.clone();
    for (k, v) in patch.as_object().expect("patch is an object") {
        out[k] = v.clone();
    }
    out
}

/// `conf` as a runtime sends it on CHECK/DEL or down a chain: with
/// `prevResult` set to `prev`.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    merged(conf, json!({ "prevResult": prev }))
}
