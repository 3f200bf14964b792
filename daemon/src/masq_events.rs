//! Noticing at once that the firewall touched weft's masquerade/forward
//! rules (`nft flush ruleset`, an iptables flush, a firewalld reload),
//! instead of at the next `--iptables-resync` pass.
//!
//! nftables and iptables-nft both program nf_tables, which announces every
//! table, chain and rule change on NETLINK_NETFILTER (NFNLGRP_NFTABLES).
//! weftd subscribes with one socket ([`weft_netlink::NftMonitor`]) rather
//! than running `nft monitor` as a child: no process to supervise and
//! restart, no text output to parse (its format is for people), and the
//! kernel's own message types to filter on. iptables-legacy (x_tables)
//! announces nothing: its nat and filter tables' rule counts are read every
//! [`LEGACY_POLL`] with one getsockopt each (no process run either).
//!
//! An event only says "look now": the worker then runs its full check
//! (the same as the timer's) and re-applies when it fails.

use crate::masq::{Backend, Request, NFT_TABLE, NFT_TABLE_V6};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;
use weft_netlink::{NftChange, NftEvent};

/// How often the iptables-legacy tables' rule counts are read.
pub const LEGACY_POLL: Duration = Duration::from_millis(200);
/// How long a burst of notifications (one reload) is let to finish before
/// the check.
const SETTLE: Duration = Duration::from_millis(20);
/// nfproto numbers of nf_tables' `ip` and `ip6` families.
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// The iptables chains weft uses or jumps from.
const IPTABLES_CHAINS: [&str; 4] = ["POSTROUTING", "FORWARD", "FLANNEL-POSTRTG", "FLANNEL-FWD"];

/// What wakes the masquerade worker.
pub enum Wake {
    /// A rule set to install (from the agent).
    Install(Request),
    /// The firewall reported a change that may concern our rules, or
    /// notifications were lost: check now.
    Changed,
    /// The agent is gone.
    Stopped,
}

/// The worker's wake-up channel: the agent's requests, forwarded, and the
/// firewall's change reports (a thread each).
pub fn start(backend: Backend, requests: Receiver<Request>) -> Receiver<Wake> {
    let (tx, rx) = std::sync::mpsc::channel();
    let fwd = tx.clone();
    let spawned = std::thread::Builder::new()
        .name("masq-requests".into())
        .spawn(move || {
            for r in requests {
                if fwd.send(Wake::Install(r)).is_err() {
                    return;
                }
            }
            let _ = fwd.send(Wake::Stopped);
        })
        .and_then(|_| {
            std::thread::Builder::new()
                .name("masq-events".into())
                .spawn(move || watch(backend, tx))
        });
    if let Err(e) = spawned {
        crate::error!("cannot start the firewall watch thread", error = e);
    }
    rx
}

/// After a [`Wake::Changed`]: wait [`SETTLE`], then swallow the changes
/// queued meanwhile. Returns the first other wake-up found (an install
/// re-applies everything anyway), or None: check now.
pub fn settle(rx: &Receiver<Wake>) -> Option<Wake> {
    std::thread::sleep(SETTLE);
    while let Ok(w) = rx.try_recv() {
        if !matches!(w, Wake::Changed) {
            return Some(w);
        }
    }
    None
}

/// The watch thread body; returns when the worker is gone.
fn watch(backend: Backend, tx: Sender<Wake>) {
    if backend == Backend::Iptables && iptables_is_legacy() {
        crate::info!(
            "iptables-legacy: polling its rule counts",
            every_ms = LEGACY_POLL.as_millis()
        );
        return poll_legacy(&tx);
    }
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut mon = match weft_netlink::NftMonitor::new() {
            Ok(m) => m,
            Err(e) => {
                crate::error!(
                    "cannot subscribe to nf_tables notifications; retrying (rules are still checked every --iptables-resync)",
                    error = e
                );
                backoff.wait_blocking();
                continue;
            }
        };
        loop {
            let events = match mon.recv() {
                Ok(ev) => ev,
                Err(e) => {
                    crate::error!("nf_tables notifications failed; resubscribing", error = e);
                    backoff.wait_blocking();
                    break;
                }
            };
            backoff.reset();
            if let Some(ev) = events.iter().find(|e| concerns_us(backend, e)) {
                crate::debug!("firewall changed", event = format!("{ev:?}"));
                if tx.send(Wake::Changed).is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether an nf_tables event may have touched our rules.
fn concerns_us(backend: Backend, ev: &NftEvent) -> bool {
    let NftEvent::Changed {
        change,
        family,
        table,
        chain,
    } = ev
    else {
        return true; // lost notifications: look
    };
    match backend {
        // Our own tables: any change is drift (our own applies included,
        // which costs one check that finds them intact).
        Backend::Nftables => {
            (*family == NFPROTO_IPV4 && table == NFT_TABLE)
                || (*family == NFPROTO_IPV6 && table == NFT_TABLE_V6)
        }
        // iptables-nft: deletions in nat/filter that reach our chains or
        // the jumps into them (other programs' rules come and go).
        Backend::Iptables => {
            matches!(*family, NFPROTO_IPV4 | NFPROTO_IPV6)
                && change.is_delete()
                && (table == "nat" || table == "filter")
                && (*change == NftChange::DelTable
                    || chain
                        .as_deref()
                        .is_some_and(|c| IPTABLES_CHAINS.contains(&c)))
        }
    }
}

fn iptables_is_legacy() -> bool {
    crate::masq::run("iptables", &["-V"], None).is_ok_and(|v| v.contains("legacy"))
}

/// iptables-legacy: report a change whenever a nat or filter table's rule
/// count or size moves.
fn poll_legacy(tx: &Sender<Wake>) {
    let mut last = legacy_counts();
    loop {
        std::thread::sleep(LEGACY_POLL);
        let now = legacy_counts();
        if now != last && tx.send(Wake::Changed).is_err() {
            return;
        }
        last = now;
    }
}

/// (family, table, rule count, size) of the legacy nat and filter tables
/// that exist in this namespace (listed in /proc, so none is created by
/// asking).
fn legacy_counts() -> Vec<(bool, String, u32, u32)> {
    let mut out = Vec::new();
    for (v6, list) in [
        (false, "/proc/net/ip_tables_names"),
        (true, "/proc/net/ip6_tables_names"),
    ] {
        let names = std::fs::read_to_string(list).unwrap_or_default();
        for t in names.lines().filter(|t| *t == "nat" || *t == "filter") {
            if let Ok((n, size)) = weft_netlink::xtables_entries(t, v6) {
                out.push((v6, t.to_string(), n, size));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(change: NftChange, family: u8, table: &str, chain: Option<&str>) -> NftEvent {
        NftEvent::Changed {
            change,
            family,
            table: table.into(),
            chain: chain.map(String::from),
        }
    }

    #[test]
    fn only_changes_that_can_touch_our_rules_wake_the_worker() {
        use NftChange::*;
        let nft = Backend::Nftables;
        assert!(concerns_us(nft, &ev(DelTable, 2, "flannel-ipv4", None)));
        assert!(concerns_us(
            nft,
            &ev(NewRule, 10, "flannel-ipv6", Some("postrtg"))
        ));
        assert!(!concerns_us(nft, &ev(DelTable, 10, "flannel-ipv4", None)));
        assert!(!concerns_us(nft, &ev(DelTable, 2, "weft-etcd-cut", None)));
        assert!(concerns_us(nft, &NftEvent::Lost));
        let ipt = Backend::Iptables;
        assert!(concerns_us(ipt, &ev(DelTable, 2, "nat", None)));
        assert!(concerns_us(
            ipt,
            &ev(DelRule, 2, "nat", Some("FLANNEL-POSTRTG"))
        ));
        assert!(concerns_us(
            ipt,
            &ev(DelRule, 10, "filter", Some("FORWARD"))
        ));
        assert!(concerns_us(
            ipt,
            &ev(DelChain, 2, "filter", Some("FLANNEL-FWD"))
        ));
        assert!(!concerns_us(
            ipt,
            &ev(NewRule, 2, "nat", Some("POSTROUTING"))
        ));
        assert!(!concerns_us(
            ipt,
            &ev(DelRule, 2, "nat", Some("KUBE-SERVICES"))
        ));
        assert!(!concerns_us(ipt, &ev(DelTable, 2, "mangle", None)));
        assert!(!concerns_us(ipt, &ev(DelTable, 1, "nat", None)));
    }
}
