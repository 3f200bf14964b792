//! `weftctl peers`, and whether each lease's kernel entries are present:
//! the entries weftd's backend wants for it (weftd's state lists them, so
//! weftctl never re-derives a backend's logic) against the kernel's.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use weft_netlink::parse_mac;
use weft_node_state::{KernelEntry, Peer};

use crate::kernel::Kernel;
use crate::source::Seen;

/// One kernel entry a lease needs.
pub struct Entry {
    pub what: String,
    pub present: bool,
}

/// A vxlan lease's VtepMAC.
pub fn vtep_mac_of(backend_type: &str, data: &Value) -> Option<[u8; 6]> {
    if backend_type != "vxlan" {
        return None;
    }
    parse_mac(data.get("VtepMAC")?.as_str()?)
}

/// The backend data in one short phrase (vxlan: VNI and VTEP MAC).
pub fn describe_backend(backend_type: &str, data: &Value) -> String {
    match (backend_type, data) {
        ("vxlan", d) => format!(
            "vxlan VNI {} VtepMAC {}",
            d.get("VNI").and_then(Value::as_u64).unwrap_or(1),
            d.get("VtepMAC").and_then(Value::as_str).unwrap_or("-")
        ),
        (t, Value::Null) => t.to_string(),
        (t, d) => format!("{t} {d}"),
    }
}

/// The kernel entries weftd's backend wants for a lease (whatever the
/// backend: vxlan's neighbour, FDB entry and route, a direct route, or
/// host-gw's route via the public IP), each with whether it is present.
pub fn expected(p: &Peer, present: &BTreeSet<KernelEntry>) -> Vec<Entry> {
    p.entries
        .iter()
        .map(|e| Entry {
            what: e.to_string(),
            present: present.contains(e),
        })
        .collect()
}

/// "ok", "missing ...", "none" (not programmable) or "-" (rejected, or
/// not synced yet).
fn kernel_column(p: &Peer, es: &[Entry]) -> (String, Value) {
    let missing: Vec<&str> = es
        .iter()
        .filter(|e| !e.present)
        .map(|e| e.what.split(' ').next().unwrap_or(""))
        .collect();
    let text = match (p.accepted, &p.unprogrammable, es.is_empty()) {
        (false, _, _) => "-".to_string(),
        (true, Some(_), _) => "none".to_string(),
        (true, None, true) => "-".to_string(),
        (true, None, false) if missing.is_empty() => "ok".to_string(),
        (true, None, false) => format!("missing {}", missing.join(",")),
    };
    let detail: Vec<Value> = es
        .iter()
        .map(|e| json!({"entry": e.what, "present": e.present}))
        .collect();
    (text, Value::Array(detail))
}

pub fn run(seen: &Seen) -> (String, Value, u8) {
    let Some(state) = &seen.state else {
        let why = seen.unreachable.clone().unwrap_or_default();
        return (format!("{why}\n"), json!({"error": why}), 2);
    };
    let kernel = Kernel::read(&state.devices);
    let present: BTreeSet<KernelEntry> = kernel
        .as_ref()
        .map(|k| k.entries().into_iter().collect())
        .unwrap_or_default();
    let mut text = String::new();
    if let Some(why) = &seen.unreachable {
        text.push_str(&format!("note: {why}; these are its last known leases\n"));
    }
    text.push_str(&format!(
        "{:<18} {:<15} {:<44} {:<16} STATUS\n",
        "SUBNET", "PUBLIC IP", "BACKEND", "KERNEL"
    ));
    let mut rows = Vec::new();
    if let Some(l) = &state.lease {
        let backend = describe_backend(&l.backend_type, &l.backend_data);
        text.push_str(&format!(
            "{:<18} {:<15} {:<44} {:<16} this node\n",
            l.subnet, l.public_ip, backend, "-"
        ));
        rows.push(
            json!({"key": l.key, "subnet": l.subnet, "public_ip": l.public_ip,
            "backend": backend, "backend_data": l.backend_data, "this_node": true}),
        );
    }
    for p in &state.peers {
        let entries = expected(p, &present);
        let (kcol, kdetail) = kernel_column(p, &entries);
        let status = match (&p.rejected, &p.unprogrammable) {
            (Some(why), _) => format!("rejected: {why}"),
            (None, Some(why)) => format!("not programmed: {why}"),
            (None, None) => "programmed".into(),
        };
        let backend = describe_backend(&p.backend_type, &p.backend_data);
        text.push_str(&format!(
            "{:<18} {:<15} {:<44} {:<16} {status}\n",
            p.subnet,
            p.public_ip.as_deref().unwrap_or("-"),
            backend,
            kcol
        ));
        rows.push(
            json!({"key": p.key, "subnet": p.subnet, "public_ip": p.public_ip,
            "backend": backend, "backend_data": p.backend_data, "accepted": p.accepted,
            "rejected": p.rejected, "unprogrammable": p.unprogrammable, "kernel": kcol, "kernel_entries": kdetail}),
        );
    }
    if let Err(e) = &kernel {
        text.push_str(&format!("(kernel entries not checked: {e})\n"));
    }
    let code = if seen.running { 0 } else { 2 };
    (text, json!({"running": seen.running, "peers": rows}), code)
}
