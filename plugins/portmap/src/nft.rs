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
//!
//! Cost and concurrency: ADD is one nf_tables transaction over netlink,
//! the same commands and expressions `nft -f` would send for the script
//! below (so `nft list` reads the same), and the kernel echoes the rules
//! with their handles. Only `conditionsV4`/`conditionsV6`, arbitrary nft
//! text, need nft's parser: with those, ADD runs the script through `nft
//! -f` while a netlink watch collects the handles. DEL, CHECK and GC
//! talk netlink too: DEL looks up the recorded handles one by one (verified by
//! the key in their comments), or walks the two keyed chains when there is
//! no record, and deletes in one transaction the kernel applies only if
//! the ruleset is still the generation that was read; the table goes the
//! same way, when no other attachment's rule is left. So no lock is
//! needed: a concurrent ADD either committed first (the delete is refused
//! and decided again) or commits after (and recreates the table).

use std::net::IpAddr;
use std::ops::ControlFlow;

use nix::errno::Errno;
use weft_cni::{Error, ErrorCode};
use weft_firewall::{comment_key, run};
use weft_netlink::{
    NftAddr, NftCommand, NftDeletion, NftExpr, NftHook, NftRuleRef as NftRule, NftTable, NftWatch,
};

use crate::attachment::{Attachment, Target};
use crate::config::{Mapping, PortmapConfig};
use crate::record::RuleHandle;

const TABLE: &str = "weft_portmap";
const DNAT_CHAIN: &str = "hostports";
const MASQ_CHAIN: &str = "masquerading";
/// The chains whose rules carry attachment keys.
const KEYED: [&str; 2] = [DNAT_CHAIN, MASQ_CHAIN];
const FAMILY: &str = "inet";
/// Transactions refused because the ruleset changed under them, before
/// DEL gives up with "try again later".
const ATTEMPTS: usize = 200;

/// The table and its base chains. The base chains hold only fixed jumps,
/// so flushing and refilling them in the same transaction is harmless and
/// needs no lookup (ADD sends this only when the table is not in place).
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

fn kernel(what: &str, e: weft_netlink::Error) -> Error {
    Error::new(ErrorCode::Firewall, format!("{what} inet {TABLE}: {e}"))
}

fn open() -> Result<NftTable, Error> {
    NftTable::new(FAMILY, TABLE).map_err(|e| kernel("open netlink for", e))
}

/// The skeleton as commands: what [`skeleton`] says.
fn skeleton_commands() -> Vec<NftCommand> {
    let base = |name: &str, hook, priority| NftCommand::NatChain {
        name: name.into(),
        hook,
        priority,
    };
    let jump = |chain: &str, mut exprs: Vec<NftExpr>, to: &str| {
        exprs.push(NftExpr::Jump(to.into()));
        [
            NftCommand::Flush(chain.into()),
            NftCommand::Rule {
                chain: chain.into(),
                exprs,
                comment: None,
            },
        ]
    };
    let mut commands = vec![
        NftCommand::Table,
        base("prerouting", NftHook::Prerouting, -100),
        base("output", NftHook::Output, -100),
        base("postrouting", NftHook::Postrouting, 100),
        NftCommand::Chain(DNAT_CHAIN.into()),
        NftCommand::Chain(MASQ_CHAIN.into()),
    ];
    commands.extend(jump("prerouting", NftExpr::fib_daddr_local(), DNAT_CHAIN));
    commands.extend(jump("output", NftExpr::fib_daddr_local(), DNAT_CHAIN));
    commands.extend(jump("postrouting", Vec::new(), MASQ_CHAIN));
    commands
}

/// A whole address's prefix (the longest; [`NftExpr::addr`] caps it).
const HOST: u8 = 128;

/// [`dnat_rule`] without conditions.
fn dnat_exprs(t: &Target, m: &Mapping) -> Vec<NftExpr> {
    let mut exprs = NftExpr::nfproto(t.v4());
    if let Some(ip) = m.daddr() {
        exprs.extend(NftExpr::addr(NftAddr::Destination, ip, HOST));
    }
    exprs.extend(NftExpr::dport(m.protocol.number(), m.host_port));
    exprs.extend(NftExpr::dnat_to(t.pod.ip(), m.container_port));
    exprs
}

/// [`masq_rules`]' rule from `source` (any with None).
fn masq_exprs(t: &Target, m: &Mapping, source: Option<(IpAddr, u8)>) -> Vec<NftExpr> {
    // `ip saddr`/`ip daddr` in an inet table: nft puts `meta nfproto` first.
    let mut exprs = NftExpr::nfproto(t.v4());
    if let Some((ip, prefix)) = source {
        exprs.extend(NftExpr::addr(NftAddr::Source, ip, prefix));
    }
    exprs.extend(NftExpr::addr(NftAddr::Destination, t.pod.ip(), HOST));
    exprs.extend(NftExpr::dport(m.protocol.number(), m.container_port));
    exprs.extend(NftExpr::ct_status_dnat());
    exprs.push(NftExpr::Masquerade);
    exprs
}

/// This attachment's rules as commands (what the script's rules say).
fn rule_commands(att: &Attachment, config: &PortmapConfig) -> Vec<NftCommand> {
    let rule = |chain: &str, exprs| NftCommand::Rule {
        chain: chain.into(),
        exprs,
        comment: Some(att.comment()),
    };
    let mut commands = Vec::new();
    for t in att.targets() {
        let subnet = t.subnet();
        let mut sources = vec![Some((subnet.network(), subnet.prefix()))];
        if t.v4() {
            sources.push(Some((IpAddr::from([127, 0, 0, 1]), HOST)));
        }
        if config.masq_all {
            sources = vec![None];
        }
        for m in att.mappings_for(t, &config.mappings) {
            commands.push(rule(DNAT_CHAIN, dnat_exprs(t, m)));
            if config.snat {
                for source in &sources {
                    commands.push(rule(MASQ_CHAIN, masq_exprs(t, m, *source)));
                }
            }
        }
    }
    commands
}

/// Whether a mapping needs conditions, which only `nft` can parse.
fn needs_script(att: &Attachment, config: &PortmapConfig) -> bool {
    att.targets().any(|t| {
        let conditions = if t.v4() {
            &config.conditions_v4
        } else {
            &config.conditions_v6
        };
        !conditions.is_empty() && att.mappings_for(t, &config.mappings).next().is_some()
    })
}

/// The handles of this attachment's rules among `added`, when they are
/// all there (`expected` of them).
fn handles(att: &Attachment, added: Vec<NftRule>, expected: usize) -> Option<Vec<RuleHandle>> {
    let mine: Vec<RuleHandle> = added
        .into_iter()
        .filter(|r| KEYED.contains(&r.chain.as_str()) && key_of(r) == Some(att.key.as_str()))
        .map(|r| RuleHandle {
            chain: r.chain,
            handle: r.handle,
        })
        .collect();
    Some(mine).filter(|m| m.len() == expected)
}

/// ADD: everything in one transaction, so a failure leaves nothing. Returns
/// the handles of this attachment's rules when they are all known.
pub fn add(att: &Attachment, config: &PortmapConfig) -> Result<Option<Vec<RuleHandle>>, Error> {
    if needs_script(att, config) {
        return add_by_script(att, config);
    }
    let rules = rule_commands(att, config);
    let expected = rules.len();
    // With the table in place, the rules alone: declaring the base chains
    // again and refilling them costs a kernel commit several ms. Should a
    // DEL of the last attachment drop the table meanwhile, that fails as a
    // whole, and the full transaction recreates it.
    let rules_only = if skeleton_in_place() {
        open()?.apply(&rules).ok()
    } else {
        None
    };
    let added = match rules_only {
        Some(added) => added,
        None => {
            let mut all = skeleton_commands();
            all.extend(rules);
            open()?.apply(&all).map_err(|e| kernel("write", e))?
        }
    };
    Ok(handles(att, added, expected))
}

/// ADD through `nft -f`, for conditions.
fn add_by_script(
    att: &Attachment,
    config: &PortmapConfig,
) -> Result<Option<Vec<RuleHandle>>, Error> {
    let mut script = String::new();
    let mut expected = 0;
    for t in att.targets() {
        let n = att.mappings_for(t, &config.mappings).count();
        expected += n * (1 + masq_rules_per_mapping(config, t));
        for m in att.mappings_for(t, &config.mappings) {
            script.push_str(&dnat_rule(att, config, t, m));
            if config.snat {
                script.push_str(&masq_rules(att, config, t, m));
            }
        }
    }
    let watch = NftWatch::new();
    let rules_only = skeleton_in_place() && run("nft", &["-f", "-"], &script).is_ok();
    if !rules_only {
        run("nft", &["-f", "-"], &(skeleton() + &script))?;
    }
    match watch.and_then(|mut w| w.added(FAMILY, TABLE)) {
        Ok(rules) => Ok(handles(att, rules, expected)),
        Err(e) => {
            weft_cni::log::warn(&format!("watching nf_tables for this ADD's rules: {e}"));
            Ok(None)
        }
    }
}

const BASE_CHAINS: [&str; 3] = ["prerouting", "output", "postrouting"];

/// Whether `base` holds a rule (its one jump).
fn jumps_from(table: &NftTable, base: &str) -> Result<bool, Error> {
    let mut jumps = false;
    table
        .walk(base, |_| {
            jumps = true;
            ControlFlow::Break(())
        })
        .map_err(|e| kernel("list", e))?;
    Ok(jumps)
}

/// The table is there with the jumps from all its base chains.
fn skeleton_in_place() -> bool {
    open().is_ok_and(|table| {
        BASE_CHAINS
            .iter()
            .all(|base| jumps_from(&table, base).unwrap_or(false))
    })
}

fn key_of(rule: &NftRule) -> Option<&str> {
    rule.comment.as_deref().and_then(comment_key)
}

/// The recorded rules, each checked to be there, in its chain, with a key
/// `doomed` accepts; None when any is not (then look the slow way).
fn verified(
    table: &mut NftTable,
    recorded: &[RuleHandle],
    doomed: &dyn Fn(&str) -> bool,
) -> Result<Option<Vec<NftRule>>, Error> {
    let mut rules = Vec::with_capacity(recorded.len());
    for r in recorded {
        match table
            .rule(&r.chain, r.handle)
            .map_err(|e| kernel("look up a rule of", e))?
        {
            Some(rule) if key_of(&rule).is_some_and(doomed) => rules.push(rule),
            _ => return Ok(None),
        }
    }
    Ok(Some(rules))
}

/// The rules whose key is `doomed`, from the record when it holds, else by
/// walking the keyed chains; and whether any other rule is in them. With a
/// record, the walk stops at the first rule that is not one of these.
fn doomed_rules(
    table: &mut NftTable,
    doomed: &dyn Fn(&str) -> bool,
    recorded: Option<&[RuleHandle]>,
) -> Result<(Vec<NftRule>, bool), Error> {
    let known = match recorded {
        Some(r) => verified(table, r, doomed)?,
        None => None,
    };
    let mut others = false;
    let mut gone = Vec::new();
    for chain in KEYED {
        table
            .walk(chain, |rule| match &known {
                Some(k) if k.contains(&rule) => ControlFlow::Continue(()),
                Some(_) => {
                    others = true;
                    ControlFlow::Break(())
                }
                None => {
                    if key_of(&rule).is_some_and(doomed) {
                        gone.push(rule);
                    } else {
                        others = true;
                    }
                    ControlFlow::Continue(())
                }
            })
            .map_err(|e| kernel("list", e))?;
        if others && known.is_some() {
            break;
        }
    }
    Ok((known.unwrap_or(gone), others))
}

/// CHECK: this attachment's rules, and the jumps into them, are present.
pub fn check(
    att: &Attachment,
    config: &PortmapConfig,
    recorded: Option<&[RuleHandle]>,
) -> Result<(), Error> {
    let missing = |what: String| Err(Error::new(ErrorCode::CheckFailed, what));
    let mut table = open()?;
    if !table.exists().map_err(|e| kernel("look up", e))? {
        return missing(format!("table inet {TABLE} is missing"));
    }
    for base in BASE_CHAINS {
        if !jumps_from(&table, base)? {
            return missing(format!("chain {base} of inet {TABLE} has lost its jump"));
        }
    }
    let (rules, _) = doomed_rules(&mut table, &|k| k == att.key, recorded)?;
    let count = |chain: &str| rules.iter().filter(|r| r.chain == chain).count();
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

/// Delete the rules whose key is `doomed` (`recorded` says where they
/// are, when known); the table goes with the last mapping. Each attempt
/// reads and deletes at one ruleset generation; a refused one reads again.
pub fn remove(doomed: &dyn Fn(&str) -> bool, recorded: Option<&[RuleHandle]>) -> Result<(), Error> {
    let mut table = open()?;
    for _ in 0..ATTEMPTS {
        let generation = table
            .generation()
            .map_err(|e| kernel("read the generation of", e))?;
        let (gone, others) = doomed_rules(&mut table, doomed, recorded)?;
        let changes: Vec<NftDeletion> =
            if !others && table.exists().map_err(|e| kernel("look up", e))? {
                vec![NftDeletion::Table]
            } else {
                gone.into_iter()
                    .map(|r| NftDeletion::Rule {
                        chain: r.chain,
                        handle: r.handle,
                    })
                    .collect()
            };
        if changes.is_empty() {
            return Ok(());
        }
        match table.commit(generation, &changes) {
            Err(e) if e.errno() == Some(Errno::ERESTART) => continue,
            done => return done.map_err(|e| kernel("delete rules of", e)),
        }
    }
    Err(Error::new(
        ErrorCode::TryAgainLater,
        format!("inet {TABLE} kept changing: {ATTEMPTS} attempts to delete were refused"),
    ))
}
