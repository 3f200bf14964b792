//! `--ip-masq`: flannel's masquerade and FORWARD-accept rules, via nftables
//! (table `ip flannel-ipv4`, and `ip6 flannel-ipv6` when dual-stack) when
//! `nft` works, else iptables/ip6tables (chains FLANNEL-POSTRTG /
//! FLANNEL-FWD). Tables, chains, comments and rules are flannel's own, so
//! weft taking over a flannel node replaces flannel's rules instead of
//! adding a second set. IPv6 uses the same rules with ff00::/8 in place of
//! 224.0.0.0/4. The whole set is replaced atomically (one `nft -f`
//! transaction per table; one `iptables-restore --noflush` per family) on
//! a subnet change, and re-applied when a check finds it altered: at once
//! when the firewall reports a change (see [`crate::masq_events`]), and
//! every `--iptables-resync` as a backstop.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::process::{Command, Stdio};

pub const NFT_TABLE: &str = "flannel-ipv4";
pub const NFT_TABLE_V6: &str = "flannel-ipv6";
/// Table names of earlier weft versions, removed in the same transaction.
const OLD_NFT_TABLES: [&str; 2] = ["weft-ipv4", "weft-ipv6"];
const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";

#[derive(thiserror::Error, Debug)]
pub enum MasqError {
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
    #[error("neither nftables nor iptables works: {0}")]
    NoBackend(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub pod: Ipv4Network,
    pub cluster: Ipv4Network,
    pub forward: bool,
    pub fully_random: bool,
    /// (pod, cluster) IPv6 networks when dual-stack.
    pub v6: Option<(Ipv6Network, Ipv6Network)>,
}

/// One family's rule parameters.
struct Fam<'a> {
    /// nft family and address keyword: "ip" or "ip6".
    nft: &'static str,
    table: &'static str,
    iptables: &'static str,
    pod: String,
    cluster: String,
    mcast: &'a str,
}

fn fams(r: &Rules) -> Vec<Fam<'static>> {
    let mut v = vec![Fam {
        nft: "ip",
        table: NFT_TABLE,
        iptables: "iptables",
        pod: r.pod.to_string(),
        cluster: r.cluster.to_string(),
        mcast: "224.0.0.0/4",
    }];
    if let Some((pod, cluster)) = r.v6 {
        v.push(Fam {
            nft: "ip6",
            table: NFT_TABLE_V6,
            iptables: "ip6tables",
            pod: pod.to_string(),
            cluster: cluster.to_string(),
            mcast: "ff00::/8",
        });
    }
    v
}

/// The nftables script: creating then deleting the table makes the
/// re-definition that follows replace it in one atomic transaction.
#[cfg(test)]
pub fn nft_script(r: &Rules) -> String {
    nft_family(&fams(r)[0], r)
}

/// The `ip6 weft-ipv6` script, when dual-stack.
#[cfg(test)]
pub fn nft_script_v6(r: &Rules) -> Option<String> {
    fams(r).get(1).map(|f| nft_family(f, r))
}

fn nft_family(f: &Fam, r: &Rules) -> String {
    let (pod, cl, ip, m) = (&f.pod, &f.cluster, f.nft, f.mcast);
    let rnd = if r.fully_random { " fully-random" } else { "" };
    let old = OLD_NFT_TABLES[usize::from(ip == "ip6")];
    // Rule 5 is flannel's nftables form (`saddr != POD daddr CLUSTER`);
    // its iptables form differs (see rules_for).
    let mut s = format!(
        "table {ip} {old}\ndelete table {ip} {old}\n\
         table {ip} {t}\ndelete table {ip} {t}\ntable {ip} {t} {{\n\
         \tchain postrtg {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0x4000 return\n\
         \t\t{ip} saddr {pod} {ip} daddr {cl} return\n\
         \t\t{ip} saddr {cl} {ip} daddr {pod} return\n\
         \t\t{ip} saddr != {pod} {ip} daddr {cl} return\n\
         \t\t{ip} saddr {cl} {ip} daddr != {m} masquerade{rnd}\n\
         \t\t{ip} saddr != {cl} {ip} daddr {cl} masquerade{rnd}\n\
         \t}}\n",
        t = f.table
    );
    if r.forward {
        s.push_str(&format!(
            "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\t{ip} saddr {cl} accept\n\t\t{ip} daddr {cl} accept\n\t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// iptables rules as (table, chain, args), in flannel's order.
#[cfg(test)]
pub fn iptables_rules(r: &Rules) -> Vec<(&'static str, &'static str, Vec<String>)> {
    rules_for(&fams(r)[0], r)
}

/// The ip6tables rules, when dual-stack.
#[cfg(test)]
pub fn ip6tables_rules(r: &Rules) -> Option<Vec<(&'static str, &'static str, Vec<String>)>> {
    fams(r).get(1).map(|f| rules_for(f, r))
}

fn rules_for(f: &Fam, r: &Rules) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let (pod, cl) = (f.pod.clone(), f.cluster.clone());
    let c = |v: &[&str], comment: &str| -> Vec<String> {
        let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        a.extend(["-m", "comment", "--comment", comment].map(String::from));
        a
    };
    let mut masq = vec!["-j", "MASQUERADE"];
    if r.fully_random {
        masq.push("--random-fully");
    }
    let mut v = vec![
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(
                &["-m", "mark", "--mark", "0x4000/0x4000", "-j", "RETURN"],
                MASQ_COMMENT,
            ),
        ),
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(&["-s", &pod, "-d", &cl, "-j", "RETURN"], MASQ_COMMENT),
        ),
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(&["-s", &cl, "-d", &pod, "-j", "RETURN"], MASQ_COMMENT),
        ),
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(&["!", "-s", &cl, "-d", &pod, "-j", "RETURN"], MASQ_COMMENT),
        ),
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(
                &[&["-s", &cl, "!", "-d", f.mcast][..], &masq[..]].concat(),
                MASQ_COMMENT,
            ),
        ),
        (
            "nat",
            "FLANNEL-POSTRTG",
            c(
                &[&["!", "-s", &cl, "-d", &cl][..], &masq[..]].concat(),
                MASQ_COMMENT,
            ),
        ),
    ];
    if r.forward {
        v.push((
            "filter",
            "FLANNEL-FWD",
            c(&["-s", &cl, "-j", "ACCEPT"], FWD_COMMENT),
        ));
        v.push((
            "filter",
            "FLANNEL-FWD",
            c(&["-d", &cl, "-j", "ACCEPT"], FWD_COMMENT),
        ));
    }
    v
}

pub(crate) fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, MasqError> {
    let desc = format!("{cmd} {}", args.join(" "));
    let mut c = Command::new(cmd);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c.spawn().map_err(|e| MasqError::Command {
        cmd: desc.clone(),
        msg: e.to_string(),
    })?;
    if let (Some(input), Some(mut si)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        si.write_all(input.as_bytes())
            .map_err(|e| MasqError::Command {
                cmd: desc.clone(),
                msg: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| MasqError::Command {
        cmd: desc.clone(),
        msg: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(MasqError::Command {
            cmd: desc,
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The backend to use: `preference` (auto, nftables, iptables) checked to
/// work, for auto nftables if `nft list tables` works, else iptables. An
/// error when the chosen tool (or, for auto, neither) works: with
/// `--ip-masq` weftd must not start and announce masquerading it cannot do.
/// Blocking (runs the tools): call it before the async runtime starts.
pub fn detect(preference: &str) -> Result<Backend, MasqError> {
    let nft = || run("nft", &["list", "tables"], None).map(|_| Backend::Nftables);
    let ipt = || {
        run("iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"], None).map(|_| Backend::Iptables)
    };
    match preference {
        "nftables" => nft(),
        "iptables" => ipt(),
        _ => nft().or_else(|e_nft| {
            ipt().map_err(|e_ipt| MasqError::NoBackend(format!("{e_nft}; {e_ipt}")))
        }),
    }
}

/// A rule set for the worker, and where to report whether it went in.
pub struct Request {
    pub rules: Rules,
    pub done: tokio::sync::oneshot::Sender<Result<(), MasqError>>,
}

/// The masquerade worker (a dedicated thread: it runs nft/iptables).
/// Installs each requested rule set and answers the request with the
/// outcome. Between requests it repairs the rules as soon as the firewall
/// reports them touched (see [`crate::masq_events`]), and checks them
/// every `resync` anyway. `masq_ok` follows every check and attempt, so
/// /readyz is 503 from the moment rules are found missing until they are
/// back.
pub fn worker(
    mut m: Masq,
    rx: std::sync::mpsc::Receiver<Request>,
    resync: std::time::Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    use crate::masq_events::Wake;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::RecvTimeoutError;
    use std::time::Instant;
    let wake = crate::masq_events::start(m.backend(), rx);
    let mut errors = crate::logging::Repeats::new(std::time::Duration::from_secs(60));
    let mut next_check = Instant::now() + resync;
    // A failed check or repair is retried soon, not a whole resync later.
    let mut retry = crate::backoff::Backoff::new(std::time::Duration::from_millis(200), resync);
    loop {
        let timeout = next_check.saturating_duration_since(Instant::now());
        let result = match wake.recv_timeout(timeout) {
            Ok(Wake::Install(req)) => Ok(install(&mut m, req, &metrics)),
            Ok(Wake::Changed) => {
                // Let the rest of a reload's burst arrive: one repair for it.
                match crate::masq_events::settle(&wake) {
                    Some(Wake::Install(req)) => Ok(install(&mut m, req, &metrics)),
                    Some(_) => return,
                    None => repair(&mut m, &metrics, "event"),
                }
            }
            Ok(Wake::Stopped) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => repair(&mut m, &metrics, "resync"),
        };
        match result {
            Ok(ok) => {
                if ok {
                    metrics.status.masq(Ok(()));
                }
                metrics.masq_ok.store(ok, Relaxed);
                retry.reset();
                next_check = Instant::now() + resync;
            }
            Err(e) => {
                metrics.status.masq(Err(e.to_string()));
                next_check = Instant::now() + retry.next_delay();
                metrics.masq_ok.store(false, Relaxed);
                metrics.programming_errors.fetch_add(1, Relaxed);
                if let Some(n) = errors.check(&e.to_string()) {
                    crate::error!(
                        "masquerade resync failed",
                        error = e,
                        repeats_suppressed = n
                    );
                }
            }
        }
        errors.sweep();
    }
}

/// Install a requested rule set and answer the request; whether it went in.
fn install(m: &mut Masq, req: Request, metrics: &crate::metrics::Metrics) -> bool {
    let r = m.set(req.rules.clone());
    match &r {
        Ok(()) => {
            metrics
                .masq_repairs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::info!(
                "masquerade rules installed",
                backend = format!("{:?}", m.backend()),
                pod = req.rules.pod,
                cluster = req.rules.cluster
            );
        }
        Err(e) => {
            metrics.status.masq(Err(e.to_string()));
            crate::error!("installing masquerade rules failed", error = e)
        }
    }
    let ok = r.is_ok();
    let _ = req.done.send(r);
    ok
}

/// Check the rules; when they are not intact, report not ready at once,
/// then re-apply. `Ok(true)`: the rules are in place.
fn repair(
    m: &mut Masq,
    metrics: &crate::metrics::Metrics,
    trigger: &str,
) -> Result<bool, MasqError> {
    use std::sync::atomic::Ordering::Relaxed;
    if m.is_intact() {
        return Ok(true);
    }
    metrics.masq_ok.store(false, Relaxed);
    metrics
        .status
        .masq(Err("masquerade rules missing; re-applying them".into()));
    let started = std::time::Instant::now();
    m.apply()?;
    metrics.masq_repairs.fetch_add(1, Relaxed);
    crate::warn!(
        "masquerade rules were altered or removed; re-applied",
        trigger = trigger,
        took_ms = started.elapsed().as_millis()
    );
    Ok(true)
}

pub struct Masq {
    backend: Backend,
    rules: Option<Rules>,
    /// nft listing right after our last apply; a different listing means drift.
    applied_listing: Option<String>,
}

impl Masq {
    pub fn new(backend: Backend) -> Self {
        Masq {
            backend,
            rules: None,
            applied_listing: None,
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Install (or replace) the whole rule set.
    pub fn set(&mut self, rules: Rules) -> Result<(), MasqError> {
        self.rules = Some(rules);
        self.apply()
    }

    /// (Re)apply the installed rule set.
    pub fn apply(&mut self) -> Result<(), MasqError> {
        let Some(r) = self.rules.clone() else {
            return Ok(());
        };
        match self.backend {
            Backend::Nftables => {
                for f in fams(&r) {
                    run("nft", &["-f", "-"], Some(&nft_family(&f, &r)))?;
                }
                self.applied_listing = Some(self.nft_listing()?);
            }
            Backend::Iptables => {
                for f in fams(&r) {
                    self.iptables_apply(&f, &r)?;
                }
            }
        }
        Ok(())
    }

    fn nft_listing(&self) -> Result<String, MasqError> {
        let mut out = run("nft", &["list", "table", "ip", NFT_TABLE], None)?;
        if self.rules.as_ref().is_some_and(|r| r.v6.is_some()) {
            out.push_str(&run("nft", &["list", "table", "ip6", NFT_TABLE_V6], None)?);
        }
        Ok(out)
    }

    /// Whether the installed rule set is still exactly in place (true
    /// when none is installed yet).
    pub fn is_intact(&self) -> bool {
        let Some(r) = &self.rules else {
            return true;
        };
        match self.backend {
            Backend::Nftables => match (&self.applied_listing, self.nft_listing()) {
                (Some(a), Ok(now)) => *a == now,
                _ => false,
            },
            Backend::Iptables => fams(r).iter().all(|f| self.iptables_intact(f, r)),
        }
    }

    fn iptables_intact(&self, f: &Fam, r: &Rules) -> bool {
        let bin = f.iptables;
        let mut ok = rules_for(f, r).iter().all(|(t, ch, args)| {
            let mut a = vec!["-w", "-t", t, "-C", ch];
            a.extend(args.iter().map(String::as_str));
            run(bin, &a, None).is_ok()
        });
        ok &= self.jump_present(bin, "nat", "POSTROUTING", "FLANNEL-POSTRTG", MASQ_COMMENT);
        if r.forward {
            ok &= self.jump_present(bin, "filter", "FORWARD", "FLANNEL-FWD", FWD_COMMENT);
        }
        ok
    }

    fn jump_present(&self, bin: &str, table: &str, from: &str, to: &str, comment: &str) -> bool {
        run(
            bin,
            &[
                "-w",
                "-t",
                table,
                "-C",
                from,
                "-j",
                to,
                "-m",
                "comment",
                "--comment",
                comment,
            ],
            None,
        )
        .is_ok()
    }

    /// The family's chains in one `iptables-restore --noflush`: each
    /// declared chain is flushed and refilled in the same commit, so the
    /// rules are never half there. Jumps are added only when missing.
    fn iptables_apply(&mut self, f: &Fam, r: &Rules) -> Result<(), MasqError> {
        let bin = f.iptables;
        let missing: Vec<&str> = chains(r)
            .into_iter()
            .filter(|(t, ch, from, c)| !self.jump_present(bin, t, from, ch, c))
            .map(|(t, ..)| t)
            .collect();
        let restore = format!("{bin}-restore");
        run(
            &restore,
            &["-w", "--noflush"],
            Some(&restore_script(f, r, &missing)),
        )?;
        Ok(())
    }
}

/// (table, chain, jumped to from, comment) of the rule set.
fn chains(r: &Rules) -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut v = vec![("nat", "FLANNEL-POSTRTG", "POSTROUTING", MASQ_COMMENT)];
    if r.forward {
        v.push(("filter", "FLANNEL-FWD", "FORWARD", FWD_COMMENT));
    }
    v
}

/// The iptables-restore input for one family; `missing_jumps` are the
/// tables whose jump into our chain has to be appended.
fn restore_script(f: &Fam, r: &Rules, missing_jumps: &[&str]) -> String {
    let quote = |a: &str| {
        if a.contains(' ') {
            format!("\"{a}\"")
        } else {
            a.to_string()
        }
    };
    let rules = rules_for(f, r);
    let mut s = String::new();
    for (table, chain, from, comment) in chains(r) {
        s.push_str(&format!("*{table}\n:{chain} - [0:0]\n"));
        if missing_jumps.contains(&table) {
            s.push_str(&format!(
                "-A {from} -j {chain} -m comment --comment {}\n",
                quote(comment)
            ));
        }
        for (_, _, args) in rules.iter().filter(|(t, c, _)| *t == table && *c == chain) {
            let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
            s.push_str(&format!("-A {chain} {}\n", args.join(" ")));
        }
        s.push_str("COMMIT\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            pod: "10.5.52.0/24".parse().unwrap(),
            cluster: "10.5.0.0/16".parse().unwrap(),
            forward: true,
            fully_random: true,
            v6: None,
        }
    }

    #[test]
    fn v6_rules_use_ip6_and_ff00() {
        assert_eq!(nft_script_v6(&rules()), None);
        assert_eq!(ip6tables_rules(&rules()), None);
        let r = Rules {
            v6: Some((
                "fd00:10:244:5::/64".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            )),
            ..rules()
        };
        // The IPv4 script is unchanged by dual-stack.
        assert_eq!(nft_script(&r), nft_script(&rules()));
        let s = nft_script_v6(&r).unwrap();
        let want = [
            "table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n",
            "type nat hook postrouting priority srcnat",
            "meta mark & 0x4000 == 0x4000 return",
            "ip6 saddr fd00:10:244:5::/64 ip6 daddr fd00:10:244::/56 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr fd00:10:244:5::/64 return",
            "ip6 saddr != fd00:10:244:5::/64 ip6 daddr fd00:10:244::/56 return",
            "ip6 saddr fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade fully-random",
            "ip6 saddr != fd00:10:244::/56 ip6 daddr fd00:10:244::/56 masquerade fully-random",
            "ip6 saddr fd00:10:244::/56 accept",
            "ip6 daddr fd00:10:244::/56 accept",
        ];
        let mut pos = 0;
        for w in want {
            let i = s[pos..]
                .find(w)
                .unwrap_or_else(|| panic!("missing or out of order: {w}\n{s}"));
            pos += i + w.len();
        }
        assert!(!s.contains(" ip saddr"));
        let v6 = ip6tables_rules(&r).unwrap();
        assert_eq!(v6.len(), 8);
        assert_eq!(
            v6[4].2.join(" "),
            "-s fd00:10:244::/56 ! -d ff00::/8 -j MASQUERADE --random-fully -m comment --comment flanneld masq"
        );
    }

    #[test]
    fn nft_script_has_flannels_rules_in_order() {
        let s = nft_script(&rules());
        let want = [
            "table ip flannel-ipv4\ndelete table ip flannel-ipv4\n",
            "type nat hook postrouting priority srcnat",
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.5.52.0/24 ip daddr 10.5.0.0/16 return",
            "ip saddr 10.5.0.0/16 ip daddr 10.5.52.0/24 return",
            "ip saddr != 10.5.52.0/24 ip daddr 10.5.0.0/16 return",
            "ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
            "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random",
            "type filter hook forward priority filter",
            "ip saddr 10.5.0.0/16 accept",
            "ip daddr 10.5.0.0/16 accept",
        ];
        let mut pos = 0;
        for w in want {
            let i = s[pos..]
                .find(w)
                .unwrap_or_else(|| panic!("missing or out of order: {w}\n{s}"));
            pos += i + w.len();
        }
        let no_fwd = nft_script(&Rules {
            forward: false,
            ..rules()
        });
        assert!(!no_fwd.contains("forward"));
    }

    #[test]
    fn iptables_rules_match_flannel() {
        let r = iptables_rules(&rules());
        assert_eq!(r.len(), 8);
        assert_eq!(r[3].2[..5].join(" "), "! -s 10.5.0.0/16 -d 10.5.52.0/24");
        assert_eq!(
            r[4].2.join(" "),
            "-s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully -m comment --comment flanneld masq"
        );
        assert_eq!(r[7].0, "filter");
        let plain = iptables_rules(&Rules {
            fully_random: false,
            forward: false,
            ..rules()
        });
        assert_eq!(plain.len(), 6);
        assert!(!plain[5].2.contains(&"--random-fully".to_string()));
    }

    #[test]
    fn nft_script_replaces_old_weft_tables_too() {
        let s = nft_script(&rules());
        assert!(
            s.starts_with("table ip weft-ipv4\ndelete table ip weft-ipv4\n"),
            "{s}"
        );
        let r = Rules {
            v6: Some(("fd00::/64".parse().unwrap(), "fd00::/56".parse().unwrap())),
            ..rules()
        };
        assert!(nft_script_v6(&r)
            .unwrap()
            .starts_with("table ip6 weft-ipv6\ndelete table ip6 weft-ipv6\n"));
    }

    #[test]
    fn iptables_restore_script_is_whole_chains() {
        let r = rules();
        let s = restore_script(&fams(&r)[0], &r, &["nat"]);
        assert_eq!(
            s,
            "*nat\n:FLANNEL-POSTRTG - [0:0]\n\
             -A POSTROUTING -j FLANNEL-POSTRTG -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -j RETURN -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG -s 10.5.52.0/24 -d 10.5.0.0/16 -j RETURN -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.52.0/24 -j RETURN -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.52.0/24 -j RETURN -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -j MASQUERADE --random-fully -m comment --comment \"flanneld masq\"\n\
             -A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -j MASQUERADE --random-fully -m comment --comment \"flanneld masq\"\n\
             COMMIT\n\
             *filter\n:FLANNEL-FWD - [0:0]\n\
             -A FLANNEL-FWD -s 10.5.0.0/16 -j ACCEPT -m comment --comment \"flanneld forward\"\n\
             -A FLANNEL-FWD -d 10.5.0.0/16 -j ACCEPT -m comment --comment \"flanneld forward\"\n\
             COMMIT\n"
        );
    }
}
