//! The nftables backend: one `inet weft_portmap` table in which an ADD
//! touches no chain that grows with the number of other attachments, and
//! a packet meets one map lookup instead of every mapping's rule:
//!
//! - `prerouting`/`output` (nat, -100): `fib daddr type local th dport
//!   vmap @hostports` (the local check keeps forwarded traffic alone,
//!   unlike CVE-2025-67499).
//! - `hostports` (inet_service : verdict) jumps to `hostport-<port>`:
//!   that port's DNAT rules, every attachment's, `[conditions] [daddr
//!   hostIP] dport → dnat`.
//! - `postrouting` (nat, 100): `ct status dnat ip daddr vmap @pods4` (and
//!   `ip6 daddr vmap @pods6`) jumps to `pod-<address>` (`:` written `-`):
//!   with snat, the masquerade of flows DNATed to that pod from its subnet
//!   (hairpin) and from 127.0.0.1.
//!
//! An ADD adds its chains and map elements (both idempotent: the same
//! element with the same verdict is no change) and its rules; the kernel's
//! commit rebuilds the rule array only of the chains it touched, which
//! hold one port's or one pod's rules. The map elements live in a hash.
//! (What still grows is the kernel's validation of the table, which a
//! commit adding a NAT rule or a jump runs over every reachable chain.)
//!
//! Cost and concurrency: ADD is one nf_tables transaction over netlink,
//! the same commands and expressions `nft -f` would send for the script
//! below (so `nft list` reads the same), and the kernel echoes the rules
//! with their handles. Only `conditionsV4`/`conditionsV6`, arbitrary nft
//! text, need nft's parser: with those, ADD runs the script through `nft
//! -f` while a netlink watch collects the handles. DEL, CHECK and GC
//! talk netlink too: DEL looks up the recorded handles one by one
//! (verified by the key in their comments), or walks the table when there
//! is no record; it walks each of its chains (one port's or pod's: short)
//! and the table up to the first rule not its own. It deletes in one
//! transaction the kernel applies only if the ruleset is still the
//! generation that was read: its rules, then each chain it leaves empty
//! with the map element that jumps there (NLM_F_NONREC: the kernel
//! refuses, EBUSY, rather than take a rule along), or the whole table
//! when no other attachment's rule is left. So no lock is
//! needed: a concurrent ADD either committed first (the delete is refused
//! and decided again) or commits after (and recreates the table).

use std::net::IpAddr;
use std::ops::ControlFlow;

use nix::errno::Errno;
use weft_cni::{Error, ErrorCode};
use weft_firewall::{comment_key, run};
use weft_netlink::{
    NftAddr, NftCommand, NftDeletion, NftExpr, NftHook, NftMapKey, NftRuleRef as NftRule, NftTable,
    NftWatch,
};

use crate::attachment::{Attachment, Target};
use crate::config::{Mapping, PortmapConfig};
use crate::record::RuleHandle;

const TABLE: &str = "weft_portmap";
/// The verdict map from a host port to its chain.
const PORTS: &str = "hostports";
/// The verdict maps from a DNATed pod address to its masquerade chain.
const PODS_V4: &str = "pods4";
const PODS_V6: &str = "pods6";
const PORT_CHAIN: &str = "hostport-";
const POD_CHAIN: &str = "pod-";
const FAMILY: &str = "inet";
/// Transactions refused because the ruleset changed under them, before
/// DEL gives up with "try again later".
const ATTEMPTS: usize = 200;

/// The chain of `port`'s DNAT rules, every attachment's.
fn port_chain(port: u16) -> String {
    format!("{PORT_CHAIN}{port}")
}

/// The chain of the masquerade rules for flows DNATed to `pod` (nft
/// names take no `:`, so an IPv6 address has `-` instead).
fn pod_chain(pod: IpAddr) -> String {
    format!("{POD_CHAIN}{}", pod.to_string().replace(':', "-"))
}

/// The map element that jumps to `chain`, when it is a port or pod chain.
fn element_of(chain: &str) -> Option<NftDeletion> {
    let (map, key) = if let Some(port) = chain.strip_prefix(PORT_CHAIN) {
        let port: u16 = port.parse().ok()?;
        (PORTS, port.to_be_bytes().to_vec())
    } else {
        let pod: IpAddr = chain
            .strip_prefix(POD_CHAIN)?
            .replace('-', ":")
            .parse()
            .ok()?;
        (pods_map(pod.is_ipv4()), octets(pod))
    };
    Some(NftDeletion::Element {
        map: map.into(),
        key,
    })
}

fn pods_map(v4: bool) -> &'static str {
    if v4 {
        PODS_V4
    } else {
        PODS_V6
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The table, its maps and base chains. The base chains hold only fixed
/// lookups, so flushing and refilling them in the same transaction is
/// harmless and needs no lookup (ADD sends this only when the table is
/// not in place).
fn skeleton() -> String {
    let t = format!("inet {TABLE}");
    format!(
        "add table {t}\n\
         add map {t} {PORTS} {{ type inet_service : verdict; }}\n\
         add map {t} {PODS_V4} {{ type ipv4_addr : verdict; }}\n\
         add map {t} {PODS_V6} {{ type ipv6_addr : verdict; }}\n\
         add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}\n\
         add chain {t} output {{ type nat hook output priority -100; policy accept; }}\n\
         add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}\n\
         flush chain {t} prerouting\n\
         add rule {t} prerouting fib daddr type local th dport vmap @{PORTS}\n\
         flush chain {t} output\n\
         add rule {t} output fib daddr type local th dport vmap @{PORTS}\n\
         flush chain {t} postrouting\n\
         add rule {t} postrouting ct status dnat ip daddr vmap @{PODS_V4}\n\
         add rule {t} postrouting ct status dnat ip6 daddr vmap @{PODS_V6}\n"
    )
}

/// The chain `chain` and the element of `map` at `key` that jumps to it.
fn dispatch_script(map: &str, key: &str, chain: &str) -> String {
    let t = format!("inet {TABLE}");
    format!("add chain {t} {chain}\nadd element {t} {map} {{ {key} : jump {chain} }}\n")
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
        "add rule inet {TABLE} {} {rule}{} dport {} dnat {fam} to {} comment \"{}\"\n",
        port_chain(m.host_port),
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
            "add rule inet {TABLE} {} {source}{to_pod} masquerade comment \"{}\"\n",
            pod_chain(t.pod.ip()),
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

/// How many masquerade rules one mapping makes for `t` (besides its one
/// DNAT rule).
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
    let map = |name: &str, key| NftCommand::Map {
        name: name.into(),
        key,
    };
    let rule = |chain: &str, exprs| NftCommand::Rule {
        chain: chain.into(),
        exprs,
        comment: None,
    };
    let to_port = || {
        let mut exprs = NftExpr::fib_daddr_local();
        exprs.push(NftExpr::th_dport());
        exprs.push(NftExpr::Lookup(PORTS.into()));
        exprs
    };
    let to_pod = |v4| {
        let mut exprs = NftExpr::ct_status_dnat();
        exprs.extend(NftExpr::daddr(v4));
        exprs.push(NftExpr::Lookup(pods_map(v4).into()));
        exprs
    };
    vec![
        NftCommand::Table,
        map(PORTS, NftMapKey::Port),
        map(PODS_V4, NftMapKey::Ipv4),
        map(PODS_V6, NftMapKey::Ipv6),
        base("prerouting", NftHook::Prerouting, -100),
        base("output", NftHook::Output, -100),
        base("postrouting", NftHook::Postrouting, 100),
        NftCommand::Flush("prerouting".into()),
        rule("prerouting", to_port()),
        NftCommand::Flush("output".into()),
        rule("output", to_port()),
        NftCommand::Flush("postrouting".into()),
        rule("postrouting", to_pod(true)),
        rule("postrouting", to_pod(false)),
    ]
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

/// The commands that make `chain` and the element of `map` that jumps to
/// it, the first time `chain` is named (`made` remembers).
fn declare(made: &mut Vec<String>, chain: String, element: (&str, Vec<u8>)) -> Vec<NftCommand> {
    if made.contains(&chain) {
        return Vec::new();
    }
    made.push(chain.clone());
    vec![
        NftCommand::Chain(chain.clone()),
        NftCommand::Element {
            map: element.0.into(),
            key: element.1,
            jump: chain,
        },
    ]
}

/// This attachment's chains, map elements and rules as commands, in the
/// order the script says them.
fn rule_commands(att: &Attachment, config: &PortmapConfig) -> Vec<NftCommand> {
    let rule = |chain: String, exprs| NftCommand::Rule {
        chain,
        exprs,
        comment: Some(att.comment()),
    };
    let mut made = Vec::new();
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
        let pod = t.pod.ip();
        for m in att.mappings_for(t, &config.mappings) {
            let port = port_chain(m.host_port);
            let key = m.host_port.to_be_bytes().to_vec();
            commands.extend(declare(&mut made, port.clone(), (PORTS, key)));
            commands.push(rule(port, dnat_exprs(t, m)));
            if config.snat {
                let key = (pods_map(t.v4()), octets(pod));
                commands.extend(declare(&mut made, pod_chain(pod), key));
                for source in &sources {
                    commands.push(rule(pod_chain(pod), masq_exprs(t, m, *source)));
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
        .filter(|r| key_of(r) == Some(att.key.as_str()))
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
    let expected = rules
        .iter()
        .filter(|c| matches!(c, NftCommand::Rule { .. }))
        .count();
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
    let mut made = Vec::new();
    let mut declare = |script: &mut String, chain: String, map: &str, key: String| {
        if !made.contains(&chain) {
            script.push_str(&dispatch_script(map, &key, &chain));
            made.push(chain);
        }
    };
    for t in att.targets() {
        let n = att.mappings_for(t, &config.mappings).count();
        expected += n * (1 + masq_rules_per_mapping(config, t));
        let pod = t.pod.ip();
        for m in att.mappings_for(t, &config.mappings) {
            let port = m.host_port;
            declare(&mut script, port_chain(port), PORTS, port.to_string());
            script.push_str(&dnat_rule(att, config, t, m));
            if config.snat {
                declare(
                    &mut script,
                    pod_chain(pod),
                    pods_map(t.v4()),
                    pod.to_string(),
                );
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

/// What a DEL finds of the attachments it removes.
struct Doomed {
    /// Their rules.
    rules: Vec<NftRule>,
    /// The port and pod chains that hold nothing else.
    emptied: Vec<String>,
    /// Whether any other rule is in the table, past the base chains.
    others: bool,
}

/// The rules whose key is `doomed`, from the record when it holds, else by
/// walking the table; then each of their chains, and the table as far as
/// the first rule that is not one of these.
fn doomed_rules(
    table: &mut NftTable,
    doomed: &dyn Fn(&str) -> bool,
    recorded: Option<&[RuleHandle]>,
) -> Result<Doomed, Error> {
    let known = match recorded {
        Some(r) => verified(table, r, doomed)?,
        None => None,
    };
    let list = |e| kernel("list", e);
    let rules = match known {
        Some(rules) => rules,
        None => {
            let mut found = Vec::new();
            table
                .walk_all(|rule| {
                    if key_of(&rule).is_some_and(doomed) {
                        found.push(rule);
                    }
                    ControlFlow::Continue(())
                })
                .map_err(list)?;
            found
        }
    };
    let foreign = |rule: &NftRule| !rules.contains(rule);
    let mut emptied: Vec<String> = Vec::new();
    for rule in &rules {
        if emptied.contains(&rule.chain) || element_of(&rule.chain).is_none() {
            continue;
        }
        let mut shared = false;
        table
            .walk(&rule.chain, |r| {
                shared = foreign(&r);
                if shared {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .map_err(list)?;
        if !shared {
            emptied.push(rule.chain.clone());
        }
    }
    let mut others = false;
    table
        .walk_all(|r| {
            others = !BASE_CHAINS.contains(&r.chain.as_str()) && foreign(&r);
            if others {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(list)?;
    Ok(Doomed {
        rules,
        emptied,
        others,
    })
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
    let rules = doomed_rules(&mut table, &|k| k == att.key, recorded)?.rules;
    let count = |prefix: &str| rules.iter().filter(|r| r.chain.starts_with(prefix)).count();
    let (mut dnat, mut masq) = (0, 0);
    for t in att.targets() {
        let n = att.mappings_for(t, &config.mappings).count();
        dnat += n;
        masq += n * masq_rules_per_mapping(config, t);
    }
    if count(PORT_CHAIN) < dnat {
        return missing(format!(
            "{} of {dnat} DNAT rules of this attachment are in inet {TABLE}",
            count(PORT_CHAIN)
        ));
    }
    if count(POD_CHAIN) < masq {
        return missing(format!(
            "{} of {masq} masquerade rules of this attachment are in inet {TABLE}",
            count(POD_CHAIN)
        ));
    }
    Ok(())
}

/// The rules, then the chains they leave empty with the map elements
/// that jump to them: in this order the kernel lets the chains go, and it
/// refuses the whole transaction (EBUSY) should a chain still be in use.
fn deletions(found: Doomed) -> Vec<NftDeletion> {
    let mut changes: Vec<NftDeletion> = found
        .rules
        .into_iter()
        .map(|r| NftDeletion::Rule {
            chain: r.chain,
            handle: r.handle,
        })
        .collect();
    for chain in found.emptied {
        changes.extend(element_of(&chain));
        changes.push(NftDeletion::Chain(chain));
    }
    changes
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
        let found = doomed_rules(&mut table, doomed, recorded)?;
        let changes = if !found.others && table.exists().map_err(|e| kernel("look up", e))? {
            vec![NftDeletion::Table]
        } else {
            deletions(found)
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
