//! `--ip-masq`: flannel's masquerade and FORWARD-accept rules, via nftables
//! (table `ip weft-ipv4`) when `nft` works, else iptables (chains
//! FLANNEL-POSTRTG / FLANNEL-FWD, as flannel names them). The whole set is
//! replaced atomically on a subnet change and re-applied whenever a resync
//! finds it altered.

use ipnetwork::Ipv4Network;
use std::process::{Command, Stdio};

pub const NFT_TABLE: &str = "weft-ipv4";
const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";

#[derive(thiserror::Error, Debug)]
pub enum MasqError {
    #[error("{cmd}: {msg}")]
    Command { cmd: String, msg: String },
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
}

/// The nftables script: creating then deleting the table makes the
/// re-definition that follows replace it in one atomic transaction.
pub fn nft_script(r: &Rules) -> String {
    let (pod, cl) = (r.pod, r.cluster);
    let rnd = if r.fully_random { " fully-random" } else { "" };
    let mut s = format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n\
         \tchain postrtg {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & 0x4000 == 0x4000 return\n\
         \t\tip saddr {pod} ip daddr {cl} return\n\
         \t\tip saddr {cl} ip daddr {pod} return\n\
         \t\tip saddr != {cl} ip daddr {pod} return\n\
         \t\tip saddr {cl} ip daddr != 224.0.0.0/4 masquerade{rnd}\n\
         \t\tip saddr != {cl} ip daddr {cl} masquerade{rnd}\n\
         \t}}\n",
        t = NFT_TABLE
    );
    if r.forward {
        s.push_str(&format!(
            "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr {cl} accept\n\t\tip daddr {cl} accept\n\t}}\n"
        ));
    }
    s.push_str("}\n");
    s
}

/// iptables rules as (table, chain, args), in flannel's order.
pub fn iptables_rules(r: &Rules) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let (pod, cl) = (r.pod.to_string(), r.cluster.to_string());
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
                &[&["-s", &cl, "!", "-d", "224.0.0.0/4"][..], &masq[..]].concat(),
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

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, MasqError> {
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

/// nftables if `nft list tables` works, else iptables.
pub fn detect(preference: &str) -> Backend {
    match preference {
        "nftables" => Backend::Nftables,
        "iptables" => Backend::Iptables,
        _ => {
            if run("nft", &["list", "tables"], None).is_ok() {
                Backend::Nftables
            } else {
                Backend::Iptables
            }
        }
    }
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

    fn apply(&mut self) -> Result<(), MasqError> {
        let Some(r) = self.rules.clone() else {
            return Ok(());
        };
        match self.backend {
            Backend::Nftables => {
                run("nft", &["-f", "-"], Some(&nft_script(&r)))?;
                self.applied_listing = Some(self.nft_listing()?);
            }
            Backend::Iptables => self.iptables_apply(&r)?,
        }
        Ok(())
    }

    fn nft_listing(&self) -> Result<String, MasqError> {
        run("nft", &["list", "table", "ip", NFT_TABLE], None)
    }

    /// Check the rules are intact; re-apply if not. Returns whether it repaired.
    pub fn resync(&mut self) -> Result<bool, MasqError> {
        let Some(r) = self.rules.clone() else {
            return Ok(false);
        };
        let intact = match self.backend {
            Backend::Nftables => match (&self.applied_listing, self.nft_listing()) {
                (Some(a), Ok(now)) => *a == now,
                _ => false,
            },
            Backend::Iptables => self.iptables_intact(&r),
        };
        if intact {
            return Ok(false);
        }
        self.apply()?;
        Ok(true)
    }

    fn iptables_intact(&self, r: &Rules) -> bool {
        let mut ok = iptables_rules(r).iter().all(|(t, ch, args)| {
            let mut a = vec!["-w", "-t", t, "-C", ch];
            a.extend(args.iter().map(String::as_str));
            run("iptables", &a, None).is_ok()
        });
        ok &= self.jump_present("nat", "POSTROUTING", "FLANNEL-POSTRTG", MASQ_COMMENT);
        if r.forward {
            ok &= self.jump_present("filter", "FORWARD", "FLANNEL-FWD", FWD_COMMENT);
        }
        ok
    }

    fn jump_present(&self, table: &str, from: &str, to: &str, comment: &str) -> bool {
        run(
            "iptables",
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

    fn iptables_apply(&mut self, r: &Rules) -> Result<(), MasqError> {
        let mut chains = vec![("nat", "FLANNEL-POSTRTG", "POSTROUTING", MASQ_COMMENT)];
        if r.forward {
            chains.push(("filter", "FLANNEL-FWD", "FORWARD", FWD_COMMENT));
        }
        for (table, chain, from, comment) in &chains {
            // Create (may exist) and flush: this also drops rules for an old subnet.
            let _ = run("iptables", &["-w", "-t", table, "-N", chain], None);
            run("iptables", &["-w", "-t", table, "-F", chain], None)?;
            if !self.jump_present(table, from, chain, comment) {
                run(
                    "iptables",
                    &[
                        "-w",
                        "-t",
                        table,
                        "-A",
                        from,
                        "-j",
                        chain,
                        "-m",
                        "comment",
                        "--comment",
                        comment,
                    ],
                    None,
                )?;
            }
        }
        for (t, ch, args) in iptables_rules(r) {
            let mut a = vec!["-w", "-t", t, "-A", ch];
            a.extend(args.iter().map(String::as_str));
            run("iptables", &a, None)?;
        }
        Ok(())
    }
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
        }
    }

    #[test]
    fn nft_script_has_flannels_rules_in_order() {
        let s = nft_script(&rules());
        let want = [
            "table ip weft-ipv4\ndelete table ip weft-ipv4\n",
            "type nat hook postrouting priority srcnat",
            "meta mark & 0x4000 == 0x4000 return",
            "ip saddr 10.5.52.0/24 ip daddr 10.5.0.0/16 return",
            "ip saddr 10.5.0.0/16 ip daddr 10.5.52.0/24 return",
            "ip saddr != 10.5.0.0/16 ip daddr 10.5.52.0/24 return",
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
}
