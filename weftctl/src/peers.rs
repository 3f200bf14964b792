//! `weftctl peers`, and what each lease needs in the kernel: for vxlan a
//! route `<subnet> via <subnet base> dev flannel.<VNI> onlink`, a permanent
//! neighbour `<base> -> VtepMAC` and an FDB entry `VtepMAC dst PublicIP`;
//! for host-gw a route `<subnet> via <PublicIP>`.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use weft_netlink::{format_mac, nud, parse_mac};
use weft_node_state::Peer;

use crate::kernel::{has_route, Kernel};
use crate::source::Seen;

/// One kernel entry a lease needs.
pub struct Entry {
    pub what: String,
    pub present: bool,
}

/// What a vxlan lease's BackendData says.
pub struct Vxlan {
    pub device: String,
    pub mac: [u8; 6],
}

pub fn vxlan_of(backend_type: &str, data: &Value) -> Option<Vxlan> {
    if backend_type != "vxlan" {
        return None;
    }
    let vni = data.get("VNI").and_then(Value::as_u64).unwrap_or(1);
    let mac = parse_mac(data.get("VtepMAC")?.as_str()?)?;
    Some(Vxlan {
        device: format!("flannel.{vni}"),
        mac,
    })
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

/// The kernel entries an IPv4 lease needs, or None when its backend is
/// one weftctl does not know (or its data is unusable).
pub fn expected(p: &Peer, k: &Kernel) -> Option<Vec<Entry>> {
    let subnet: Ipv4Network = p.subnet.parse().ok()?;
    let public_ip: Ipv4Addr = p.public_ip.as_deref()?.parse().ok()?;
    let base = subnet.network();
    if p.backend_type == "host-gw" {
        return Some(vec![Entry {
            what: format!("route {subnet} via {public_ip}"),
            present: has_route(k, subnet, IpAddr::V4(public_ip), None),
        }]);
    }
    let v = vxlan_of(&p.backend_type, &p.backend_data)?;
    let dev = k.link(&v.device).map(|l| l.index);
    let mac = format_mac(&v.mac);
    let neigh = dev.and_then(|i| k.neighbours.get(&i)).is_some_and(|ns| {
        ns.iter().any(|n| {
            n.ip == IpAddr::V4(base) && n.mac == Some(v.mac) && n.state & nud::PERMANENT != 0
        })
    });
    let fdb = dev.and_then(|i| k.fdb.get(&i)).is_some_and(|fs| {
        fs.iter()
            .any(|f| f.mac == v.mac && f.dst == Some(IpAddr::V4(public_ip)) && f.is_self)
    });
    let route = dev.is_some() && has_route(k, subnet, IpAddr::V4(base), dev);
    Some(vec![
        Entry {
            what: format!("neighbour {base} lladdr {mac} dev {}", v.device),
            present: neigh,
        },
        Entry {
            what: format!("fdb {mac} dev {} dst {public_ip}", v.device),
            present: fdb,
        },
        Entry {
            what: format!("route {subnet} via {base} dev {} onlink", v.device),
            present: route,
        },
    ])
}

/// "ok", "missing: ...", "absent" (rejected, nothing programmed) or "-".
fn kernel_column(p: &Peer, entries: &Option<Vec<Entry>>) -> (String, Value) {
    let Some(es) = entries else {
        return ("-".into(), Value::Null);
    };
    let present: Vec<&Entry> = es.iter().filter(|e| e.present).collect();
    let missing: Vec<&str> = es
        .iter()
        .filter(|e| !e.present)
        .map(|e| e.what.split(' ').next().unwrap_or(""))
        .collect();
    let text = match (p.accepted, missing.is_empty(), present.is_empty()) {
        (true, true, _) => "ok".to_string(),
        (true, false, _) => format!("missing {}", missing.join(",")),
        (false, _, true) => "absent".to_string(),
        (false, _, false) => "stale entries".to_string(),
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
        let entries = kernel.as_ref().ok().and_then(|k| expected(p, k));
        let (kcol, kdetail) = kernel_column(p, &entries);
        let status = match &p.rejected {
            Some(why) => format!("rejected: {why}"),
            None => "programmed".into(),
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
            "rejected": p.rejected, "kernel": kcol, "kernel_entries": kdetail}),
        );
    }
    if let Err(e) = &kernel {
        text.push_str(&format!("(kernel entries not checked: {e})\n"));
    }
    let code = if seen.running { 0 } else { 2 };
    (text, json!({"running": seen.running, "peers": rows}), code)
}
