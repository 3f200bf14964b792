//! The iptables backend, in the nat table of each family, in weft's own
//! chains (the reference's CNI-* chains are never touched):
//!
//! - `WEFT-HOSTPORT-DNAT`, jumped to from PREROUTING and OUTPUT for local
//!   destinations; one jump per attachment, commented with its key, into
//! - `WEFT-HP-<key>`: per mapping, the masquerade mark for hairpin and
//!   127.0.0.1 sources (with snat), then the DNAT.
//! - `WEFT-HOSTPORT-MASQ`, inserted first in POSTROUTING (so a bridge's
//!   masquerade cannot pre-empt it): masquerades marked packets.
//!
//! Each family is one `iptables-restore --noflush` transaction after one
//! listing, so a failure leaves nothing half-made.

use weft_cni::{Error, ErrorCode};
use weft_firewall::{comment_key, fail, run, KEY_LEN};

use crate::attachment::{Attachment, Target};
use crate::config::{Mapping, PortmapConfig};

const DNAT: &str = "WEFT-HOSTPORT-DNAT";
const MASQ: &str = "WEFT-HOSTPORT-MASQ";
/// (IPv4?, list command, restore command) of each family.
const FAMILIES: [(bool, &str, &str); 2] = [
    (true, "iptables", "iptables-restore"),
    (false, "ip6tables", "ip6tables-restore"),
];

fn chain(key: &str) -> String {
    format!("WEFT-HP-{}", key.get(KEY_LEN / 2..).unwrap_or(key))
}

fn entry_jump(base: &str) -> String {
    format!("-A {base} -m addrtype --dst-type LOCAL -j {DNAT}")
}

fn masq_rule(mark: u32) -> String {
    format!("-A {MASQ} -m mark --mark {mark:#x}/{mark:#x} -j MASQUERADE")
}

/// `iptables -t nat -S` of one family; None when that family's tool fails
/// (e.g. no IPv6).
fn listing(list: &str) -> Option<String> {
    run(list, &["-w", "5", "-t", "nat", "-S"], "").ok()
}

fn has(nat: &str, line: &str) -> bool {
    nat.lines().any(|l| l == line)
}

fn mapping_rules(chain: &str, config: &PortmapConfig, t: &Target, m: &Mapping) -> String {
    let dst = m.daddr().map(|ip| format!("-d {ip} ")).unwrap_or_default();
    let proto = m.protocol.as_str();
    let matcher = format!("{dst}-p {proto} -m {proto} --dport {}", m.host_port);
    let mut out = String::new();
    if config.snat {
        let mark = match (&config.external_set_mark_chain, config.masq_mark) {
            (Some(ext), _) => format!("-j {ext}"),
            (None, Some(mark)) => format!("-j MARK --set-xmark {mark:#x}/{mark:#x}"),
            (None, None) => String::new(),
        };
        let mut sources = vec![if config.masq_all {
            String::new()
        } else {
            format!("-s {} ", t.subnet())
        }];
        if t.v4() && !config.masq_all {
            sources.push("-s 127.0.0.1/32 ".into());
        }
        for s in sources {
            out.push_str(&format!("-A {chain} {s}{matcher} {mark}\n"));
        }
    }
    let to = if t.v4() {
        format!("{}:{}", t.pod.ip(), m.container_port)
    } else {
        format!("[{}]:{}", t.pod.ip(), m.container_port)
    };
    out.push_str(&format!(
        "-A {chain} {matcher} -j DNAT --to-destination {to}\n"
    ));
    out
}

fn family_script(att: &Attachment, config: &PortmapConfig, t: &Target, nat: &str) -> String {
    let chain = chain(&att.key);
    let mut s = String::from("*nat\n");
    let mark = config.masq_mark.filter(|_| config.snat);
    if !has(nat, &format!("-N {DNAT}")) {
        s.push_str(&format!(":{DNAT} - [0:0]\n"));
    }
    if mark.is_some() && !has(nat, &format!("-N {MASQ}")) {
        s.push_str(&format!(":{MASQ} - [0:0]\n"));
    }
    s.push_str(&format!(":{chain} - [0:0]\n"));
    for base in ["PREROUTING", "OUTPUT"] {
        if !has(nat, &entry_jump(base)) {
            s.push_str(&entry_jump(base));
            s.push('\n');
        }
    }
    if let Some(mark) = mark {
        if !has(nat, &format!("-A POSTROUTING -j {MASQ}")) {
            s.push_str(&format!("-I POSTROUTING 1 -j {MASQ}\n"));
        }
        if !has(nat, &masq_rule(mark)) {
            s.push_str(&masq_rule(mark));
            s.push('\n');
        }
    }
    for m in att.mappings_for(t, &config.mappings) {
        s.push_str(&mapping_rules(&chain, config, t, m));
    }
    let conditions = if t.v4() {
        &config.conditions_v4
    } else {
        &config.conditions_v6
    };
    let conds: String = conditions.iter().map(|c| format!("{c} ")).collect();
    s.push_str(&format!(
        "-A {DNAT} -m comment --comment \"{}\" {conds}-j {chain}\nCOMMIT\n",
        att.comment()
    ));
    s
}

pub fn add(att: &Attachment, config: &PortmapConfig) -> Result<(), Error> {
    for (v4, list, restore) in FAMILIES {
        let Some(t) = att.targets().find(|t| t.v4() == v4) else {
            continue;
        };
        if att.mappings_for(t, &config.mappings).next().is_none() {
            continue;
        }
        let result = listing(list)
            .ok_or_else(|| fail(format!("cannot list the {list} nat table")))
            .and_then(|nat| {
                run(
                    restore,
                    &["-w", "5", "--noflush"],
                    &family_script(att, config, t, &nat),
                )
            });
        if let Err(e) = result {
            let _ = remove(&|k| k == att.key);
            return Err(e);
        }
    }
    Ok(())
}

/// The DNAT jumps whose key is `doomed`, as (line, chain).
fn doomed_jumps<'a>(nat: &'a str, doomed: &dyn Fn(&str) -> bool) -> Vec<(&'a str, String)> {
    nat.lines()
        .filter(|l| l.starts_with(&format!("-A {DNAT} ")))
        .filter_map(|l| comment_key(l).filter(|k| doomed(k)).map(|k| (l, chain(k))))
        .collect()
}

/// Delete the attachments whose key is `doomed`; the shared chains go with
/// the last attachment. Callers hold the portmap lock.
pub fn remove(doomed: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let mut errors = Vec::new();
    for (_, list, restore) in FAMILIES {
        let Some(nat) = listing(list) else { continue };
        let gone = doomed_jumps(&nat, doomed);
        let jumps = nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {DNAT} ")))
            .count();
        let mut s = String::from("*nat\n");
        for (line, chain) in &gone {
            s.push_str(&format!("-D{}\n", &line[2..]));
            if has(&nat, &format!("-N {chain}")) {
                s.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
            }
        }
        if jumps == gone.len() {
            s.push_str(&shared_teardown(&nat));
        }
        if s.len() > "*nat\n".len() {
            s.push_str("COMMIT\n");
            errors.extend(run(restore, &["-w", "5", "--noflush"], &s).err());
        }
    }
    Error::from_list(errors)
}

/// Removing the shared chains and the jumps to them (no attachment left).
fn shared_teardown(nat: &str) -> String {
    let mut s = String::new();
    let jumps = [
        entry_jump("PREROUTING"),
        entry_jump("OUTPUT"),
        format!("-A POSTROUTING -j {MASQ}"),
    ];
    for j in jumps.iter().filter(|j| has(nat, j)) {
        s.push_str(&format!("-D{}\n", &j[2..]));
    }
    for c in [DNAT, MASQ] {
        if has(nat, &format!("-N {c}")) {
            s.push_str(&format!(":{c} - [0:0]\n-X {c}\n"));
        }
    }
    s
}

pub fn check(att: &Attachment, config: &PortmapConfig) -> Result<(), Error> {
    let missing = |what: String| Err(Error::new(ErrorCode::CheckFailed, what));
    let chain = chain(&att.key);
    for (v4, list, _) in FAMILIES {
        let Some(t) = att.targets().find(|t| t.v4() == v4) else {
            continue;
        };
        let wanted = att.mappings_for(t, &config.mappings).count();
        if wanted == 0 {
            continue;
        }
        let nat = listing(list).ok_or_else(|| fail(format!("cannot list the {list} nat table")))?;
        if !has(&nat, &entry_jump("PREROUTING")) || !has(&nat, &entry_jump("OUTPUT")) {
            return missing(format!("{list}: the jumps to {DNAT} are missing"));
        }
        if doomed_jumps(&nat, &|k| k == att.key).is_empty() {
            return missing(format!("{list}: the jump to {chain} is missing"));
        }
        let dnats = nat
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-j DNAT"))
            .count();
        if dnats < wanted {
            return missing(format!("{list}: {dnats} of {wanted} DNAT rules in {chain}"));
        }
    }
    Ok(())
}
