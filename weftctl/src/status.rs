//! `weftctl status`: exit 0 when weftd is ready, 1 when it is not, 2 when
//! it cannot be reached (not running, no state, unreadable).

use std::collections::BTreeSet;

use serde_json::{json, Value};
use weft_node_state::{format_duration, now_unix, KernelEntry, NodeState};

use crate::kernel::Kernel;
use crate::peers::expected;
use crate::source::Seen;

fn ago(now: u64, t: u64) -> String {
    format!("{} ago", format_duration(now.saturating_sub(t)))
}

fn lease_line(s: &NodeState, now: u64) -> String {
    let Some(l) = &s.lease else {
        return "none yet".into();
    };
    let mut line = format!("{} (public IP {}", l.subnet, l.public_ip);
    if let Some(s6) = &l.subnet6 {
        line.push_str(&format!(", IPv6 {s6}"));
    }
    match l.expires_at {
        Some(t) => line.push_str(&format!(
            ", expires in {})",
            format_duration(t.saturating_sub(now))
        )),
        None => line.push_str(", a reservation: never expires)"),
    }
    line
}

fn etcd_line(s: &NodeState, now: u64) -> String {
    let eps = s.etcd.endpoints.join(", ");
    match &s.etcd.failure {
        Some(f) => format!(
            "{eps}: failing for {}: {}",
            format_duration(now.saturating_sub(f.since)),
            f.error
        ),
        None if s.etcd.connected => format!("{eps}: connected (prefix {})", s.etcd.prefix),
        None => format!("{eps}: not connected yet"),
    }
}

fn masq_line(s: &NodeState) -> String {
    let m = &s.masq;
    let backend = m.backend.as_deref().unwrap_or("?");
    match (m.enabled, m.installed, &m.error) {
        (false, _, _) => "off (--ip-masq not set; the bridge plugin masquerades)".into(),
        (true, true, _) => format!("installed ({backend})"),
        (true, false, Some(e)) => format!("MISSING ({backend}): {e}"),
        (true, false, None) => format!("not installed yet ({backend})"),
    }
}

/// (programmed in the kernel, accepted, rejected), the first when the kernel is readable.
fn peer_counts(s: &NodeState) -> (Option<usize>, usize, usize) {
    let accepted = s.peers.iter().filter(|p| p.accepted).count();
    let rejected = s.peers.iter().filter(|p| p.rejected.is_some()).count();
    let programmed = Kernel::read(&s.devices).ok().map(|k| {
        let present: BTreeSet<KernelEntry> = k.entries().into_iter().collect();
        s.peers
            .iter()
            .filter(|p| p.accepted && !p.entries.is_empty())
            .filter(|p| expected(p, &present).iter().all(|e| e.present))
            .count()
    });
    (programmed, accepted, rejected)
}

pub fn run(seen: &Seen) -> (String, Value, u8) {
    let now = now_unix();
    let Some(s) = &seen.state else {
        let why = seen.unreachable.clone().unwrap_or_default();
        return (
            format!("weftd:      unreachable: {why}\n"),
            json!({"running": false, "ready": false, "error": why}),
            2,
        );
    };
    let mut text = String::new();
    let mut put = |k: &str, v: String| text.push_str(&format!("{:<12}{v}\n", format!("{k}:")));
    match &seen.unreachable {
        Some(why) => put(
            "weftd",
            format!("NOT RUNNING: {why}; last known state below"),
        ),
        None => put(
            "weftd",
            format!(
                "running (pid {}, up {})",
                s.pid,
                format_duration(now.saturating_sub(s.started_at))
            ),
        ),
    }
    let reason = s.reason_at(now);
    put(
        "ready",
        match &reason {
            None => "yes".into(),
            Some(why) => format!("no: {why}"),
        },
    );
    put("lease", lease_line(s, now));
    if let Some(n) = &s.network {
        put("network", format!("{} ({})", n.network, n.backend_type));
    }
    put("etcd", etcd_line(s, now));
    let (programmed, accepted, rejected) = peer_counts(s);
    let prog = programmed.map_or("?".to_string(), |n| n.to_string());
    put(
        "peers",
        format!(
            "{} known, {accepted} accepted, {prog} programmed in the kernel, {rejected} rejected",
            s.peers.len()
        ),
    );
    put("masquerade", masq_line(s));
    put(
        "subnet.env",
        format!(
            "{} {}",
            s.subnet_file.path,
            if s.subnet_file.written {
                "written"
            } else {
                "not written by this run"
            }
        ),
    );
    put(
        "last sync",
        match s.last_sync {
            Some(t) => ago(now, t),
            None => "never".into(),
        },
    );
    if let Some(e) = &s.sync_error {
        put("sync error", e.clone());
    }
    let code = match (seen.running, reason.is_none()) {
        (false, _) => 2,
        (true, true) => 0,
        (true, false) => 1,
    };
    let json = json!({
        "running": seen.running,
        "ready": seen.running && reason.is_none(),
        "reason": reason,
        "unreachable": seen.unreachable,
        "peers_programmed": programmed,
        "peers_accepted": accepted,
        "peers_rejected": rejected,
        "state": s,
    });
    (text, json, code)
}
