//! The nftables backend: one `inet weft_portmap` table. Each mapping is a
//! flat rule with the attachment's key in its comment: no per-attachment
//! chains and no anonymous sets, since `nft` loads every chain and set of a
//! table into its cache before an `add`; plain rules keep ADD's cost flat
//! however many mappings exist.
//!
//! - `prerouting`/`output` (nat, -100): `fib daddr type local jump hostports`
//!   (the local check keeps forwarded traffic alone, unlike
//!   CVE-2025-67499).
//! - `hostports`: per mapping `[conditions] [daddr hostIP] dport → dnat`.
//! - `postrouting` (nat, 100) → `masquerading`: with snat, DNATed flows
//!   from the pod's subnet (hairpin) and from 127.0.0.1 are masqueraded.

use weft_cni::{Error, ErrorCode};
use weft_firewall::{comment_key, fail, nft_rules, run, NftRule};
use weft_netlink::{nft_delete_rules, nft_delete_table};

use crate::attachment::{Attachment, Target};
use crate::config::{Mapping, PortmapConfig};

const TABLE: &str = "weft_portmap";
const DNAT_CHAIN: &str = "hostports";
const MASQ_CHAIN: &str = "masquerading";

/// The table and its base chains. The base chains hold only fixed jumps,
/// so flushing and refilling them in the same transaction is harmless and
/// needs no lookup.
fn skeleton() -> String {
    let t = format!("inet {TABLE}");
    format!(
        "add table {t}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         add chain {t} {DNAT_CHAIN}\n\
         add chain {t} {MASQ_CHAIN}\n\
         flush chain {t} prerouting\n\
         add rule {t} prerouting fib daddr type local jump {DNAT_CHAIN}\n\
         flush chain {t} output\n\
         add rule {t} output fib daddr type local jump {DNAT_CHAIN}\n\
         flush chain {t} postrouting\n\
         add rule {t} postrouting jump {MASQ_CHAIN}\n"
    )
}

fn family(target: &Target) -> &'static str {
    if target.v4() {
        "ip"
    } else {
        "ip6"
    }
}

/// `addr:port`, bracketed for IPv6.
fn socket(target: &Target, port: u16) -> String {
    if target.v4() {
        format!("{}:{port}", target.pod.ip())
    } else {
        format!("[{}]:{port}", target.pod.ip())
    }
}

fn dnat_rule(att: &Attachment, config: &PortmapConfig, t: &Target, m: &Mapping) -> String {
    let fam = family(t);
    let (nfproto, conditions) = if t.v4() {
        ("ipv4", &config.conditions_v4)
    } else {
        ("ipv6", &config.conditions_v6)
    };
    let mut rule = format!("meta nfproto {nfproto} ");
    for c in conditions {
        rule.push_str(c);
        rule.push(' ');
    }
    if let Some(ip) = m.daddr() {
        rule.push_str(&format!("{fam} daddr {ip} "));
    }
    format!(
        "add rule inet {TABLE} {DNAT_CHAIN} {rule}{} dport {} dnat {fam} to {} comment \"{}\"\n",
        m.protocol.as_str(),
        m.host_port,
        socket(t, m.container_port),
        att.comment()
    )
}

fn masq_rules(att: &Attachment, config: &PortmapConfig, t: &Target, m: &Mapping) -> String {
    let fam = family(t);
    let to_pod = format!(
        "{fam} daddr {} {} dport {} ct status dnat",
        t.pod.ip(),
        m.protocol.as_str(),
        m.container_port
    );
    let add = |source: String| {
        format!(
            "add rule inet {TABLE} {MASQ_CHAIN} {source}{to_pod} masquerade comment \"{}\"\n",
            att.comment()
        )
    };
    if config.masq_all {
        return add(String::new());
    }
    let mut rules = add(format!("{fam} saddr {} ", t.subnet()));
    if t.v4() {
        rules.push_str(&add("ip saddr 127.0.0.1 ".into()));
    }
    rules
}

/// How many rules one mapping makes in each chain for `t`.
fn masq_rules_per_mapping(config: &PortmapConfig, t: &Target) -> usize {
    match (config.snat, config.masq_all, t.v4()) {
        (false, _, _) => 0,
        (true, true, _) | (true, false, false) => 1,
        (true, false, true) => 2,
    }
}

/// ADD: everything in one transaction, so a failure leaves nothing.
pub fn add(att: &Attachment, config: &PortmapConfig) -> Result<(), Error> {
    let mut script = skeleton();
    for t in att.targets() {
        for m in att.mappings_for(t, &config.mappings) {
            script.push_str(&dnat_rule(att, config, t, m));
            if config.snat {
                script.push_str(&masq_rules(att, config, t, m));
            }
        }
    }
    run("nft", &["-f", "-"], &script).map(|_| ())
}

fn key_of(rule: &NftRule) -> Option<&str> {
    rule.comment.as_deref().and_then(comment_key)
}

/// CHECK: this attachment's rules, and the jumps into them, are present.
pub fn check(att: &Attachment, config: &PortmapConfig) -> Result<(), Error> {
    let missing = |what: String| Err(Error::new(ErrorCode::CheckFailed, what));
    let Some(rules) = nft_rules("inet", TABLE)? else {
        return missing(format!("table inet {TABLE} is missing"));
    };
    for base in ["prerouting", "output", "postrouting"] {
        if !rules.iter().any(|r| r.chain == base) {
            return missing(format!("chain {base} of inet {TABLE} has lost its jump"));
        }
    }
    let count = |chain: &str| {
        rules
            .iter()
            .filter(|r| r.chain == chain && key_of(r) == Some(att.key.as_str()))
            .count()
    };
    let (mut dnat, mut masq) = (0, 0);
    for t in att.targets() {
        let n = att.mappings_for(t, &config.mappings).count();
        dnat += n;
        masq += n * masq_rules_per_mapping(config, t);
    }
    if count(DNAT_CHAIN) < dnat {
        return missing(format!(
            "{} of {dnat} DNAT rules of this attachment are in inet {TABLE}",
            count(DNAT_CHAIN)
        ));
    }
    if count(MASQ_CHAIN) < masq {
        return missing(format!(
            "{} of {masq} masquerade rules of this attachment are in inet {TABLE}",
            count(MASQ_CHAIN)
        ));
    }
    Ok(())
}

/// Delete the rules whose key is `doomed`; the table goes with the last
/// mapping. Callers hold the portmap lock, so no ADD slips in between the
/// listing and the deletion.
pub fn remove(doomed: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let Some(rules) = nft_rules("inet", TABLE)? else {
        return Ok(());
    };
    let keyed = |r: &&NftRule| r.chain == DNAT_CHAIN || r.chain == MASQ_CHAIN;
    let (gone, kept): (Vec<&NftRule>, Vec<&NftRule>) = rules
        .iter()
        .filter(keyed)
        .partition(|r| key_of(r).is_some_and(doomed));
    let done = if kept.is_empty() {
        nft_delete_table("inet", TABLE)
    } else if gone.is_empty() {
        return Ok(());
    } else {
        let doomed: Vec<(&str, u64)> = gone.iter().map(|r| (r.chain.as_str(), r.handle)).collect();
        nft_delete_rules("inet", TABLE, &doomed)
    };
    done.map_err(|e| fail(e.to_string()))
}
