//! Process-wide counters and gauges, rendered as Prometheus text.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Remote leases currently known (excluding ours).
    pub leases_known: AtomicU64,
    /// Remote leases ignored because they fail validation (see `peers`).
    pub leases_rejected: AtomicU64,
    /// Remote vxlan leases currently programmed (neighbour + FDB + route all present).
    pub peers_programmed: AtomicU64,
    /// Kernel entries (neighbours, FDB entries, routes) currently desired and present.
    pub entries_programmed: AtomicU64,
    /// Valid peers the backend cannot program (host-gw: not on-link).
    pub peers_unprogrammable: AtomicU64,
    pub etcd_reconnects: AtomicU64,
    pub programming_errors: AtomicU64,
    pub lease_acquisitions: AtomicU64,
    pub lease_renewals: AtomicU64,
    pub reconcile_repairs: AtomicU64,
    /// Completed data-plane reconcile passes: tests wait on it to know that
    /// weftd had its chance to act before asserting it did not.
    pub reconcile_passes: AtomicU64,
    pub device_recreations: AtomicU64,
    pub masq_repairs: AtomicU64,
    /// Unix time (seconds) of the last successful data-plane sync; 0 = never.
    pub last_sync_seconds: AtomicU64,
    pub subnet_env_written: AtomicBool,
    pub peers_synced: AtomicBool,
    /// `--ip-masq` is set: readiness needs `masq_ok` too.
    pub masq_enabled: AtomicBool,
    /// The masquerade rules were installed (and found intact by the last resync).
    pub masq_ok: AtomicBool,
    /// What weftd knows, in words (weftctl, the plugin's errors, /state).
    pub status: super::status::Status,
}

impl Metrics {
    pub fn ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Why /readyz answers 503, or None when ready. Every condition is
    /// current state: each can become false again.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.subnet_env_written.load(Relaxed) {
            Some("subnet.env not written yet")
        } else if self.masq_enabled.load(Relaxed) && !self.masq_ok.load(Relaxed) {
            Some("masquerade rules not installed")
        } else if !self.peers_synced.load(Relaxed) {
            Some("peers not synced")
        } else if self.peers_unprogrammable.load(Relaxed) > 0 {
            Some("peers not programmable by the backend (host-gw: not on-link; see the log)")
        } else {
            None
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut put = |name: &str, kind: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
            ));
        };
        put(
            "weftd_leases_known",
            "gauge",
            "Remote subnet leases known from etcd.",
            self.leases_known.load(Relaxed),
        );
        put(
            "weftd_leases_rejected",
            "gauge",
            "Remote subnet leases ignored as invalid (outside Network, overlapping, bad PublicIP or VtepMAC).",
            self.leases_rejected.load(Relaxed),
        );
        put(
            "weftd_peers_programmed",
            "gauge",
            "Remote leases fully programmed in the kernel.",
            self.peers_programmed.load(Relaxed),
        );
        put(
            "weftd_peers_unprogrammable",
            "gauge",
            "Valid remote leases the backend cannot program (host-gw: the peer is not on-link).",
            self.peers_unprogrammable.load(Relaxed),
        );
        put(
            "weftd_entries_programmed",
            "gauge",
            "Desired neighbour, FDB and route entries present in the kernel.",
            self.entries_programmed.load(Relaxed),
        );
        put(
            "weftd_etcd_reconnects_total",
            "counter",
            "etcd list/watch sessions re-established after an error or a cancelled watch.",
            self.etcd_reconnects.load(Relaxed),
        );
        put(
            "weftd_programming_errors_total",
            "counter",
            "Failed kernel programming operations.",
            self.programming_errors.load(Relaxed),
        );
        put(
            "weftd_lease_acquisitions_total",
            "counter",
            "Subnet leases acquired.",
            self.lease_acquisitions.load(Relaxed),
        );
        put(
            "weftd_lease_renewals_total",
            "counter",
            "Subnet lease renewals.",
            self.lease_renewals.load(Relaxed),
        );
        put(
            "weftd_reconcile_repairs_total",
            "counter",
            "Kernel operations applied to repair drift or follow lease changes.",
            self.reconcile_repairs.load(Relaxed),
        );
        put(
            "weftd_reconcile_passes_total",
            "counter",
            "Data-plane reconcile passes completed.",
            self.reconcile_passes.load(Relaxed),
        );
        put(
            "weftd_device_recreations_total",
            "counter",
            "VXLAN device (re)creations.",
            self.device_recreations.load(Relaxed),
        );
        put(
            "weftd_masq_repairs_total",
            "counter",
            "Masquerade/forward rule set (re)applications.",
            self.masq_repairs.load(Relaxed),
        );
        put(
            "weftd_last_sync_timestamp_seconds",
            "gauge",
            "Unix time of the last successful data-plane sync.",
            self.last_sync_seconds.load(Relaxed),
        );
        put(
            "weftd_ready",
            "gauge",
            "1 while subnet.env is written, masquerade rules (with --ip-masq) are in place and peers are programmed.",
            u64::from(self.ready()),
        );
        s
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.leases_known.store(3, Relaxed);
        let t = m.render();
        assert!(t.contains("# TYPE weftd_leases_known gauge\nweftd_leases_known 3\n"));
        assert!(t.contains("weftd_ready 0\n"));
        m.subnet_env_written.store(true, Relaxed);
        m.peers_synced.store(true, Relaxed);
        assert!(m.ready());
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let mut p = line.split(' ');
            assert!(p.next().unwrap().starts_with("weftd_"));
            p.next().unwrap().parse::<u64>().unwrap();
        }
    }
}
