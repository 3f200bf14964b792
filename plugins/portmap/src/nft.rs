//! The nftables backend: one `inet weft_portmap` table whose rules are
//! fixed, and whose per-mapping state is set elements, so an ADD adds no
//! rule and its cost does not grow with the mappings already there:
//!
//! - `prerouting`/`output` (nat, -100): `fib daddr type local jump
//!   hostports` (the local check keeps forwarded traffic alone, unlike
//!   CVE-2025-67499).
//! - `hostports`: `dnat ip to ip daddr . meta l4proto . th dport map
//!   @hostip4` (mappings with a hostIP), then `meta nfproto ipv4 dnat ip to
//!   meta l4proto . th dport map @ports4` (the others), the same for IPv6,
//!   then `jump conditioned`. Each map's value is the pod's address and
//!   port. A key has one value: a second attachment mapping the same host
//!   port takes it over (logged), where the reference would let the first
//!   one keep it.
//! - `conditioned`: the DNAT rules of mappings with `conditionsV4`/`V6`
//!   (arbitrary nft text, so rules, written by `nft -f`).
//! - `postrouting` (nat, 100): `ct status dnat ip saddr . ip daddr . meta
//!   l4proto . th dport @masq4 masquerade` (and `masq6`): with snat, an
//!   element per mapping and source, the pod's subnet (hairpin) and
//!   127.0.0.1, or every source with masqAll.
//!
//! Why elements: a commit that adds a NAT rule or a jump makes the kernel
//! validate every chain reachable from the base chains, and that grew with
//! the mappings present (1.2-1.5 ms beside 1,000 of them). Adding elements
//! to a map of addresses validates nothing: a hash insert, and a copy of
//! the masquerade set's lookup tables.
//!
//! Every element and rule carries the attachment's key in its comment.
//! ADD is one nf_tables transaction over netlink (the same messages `nft
//! -f` sends for the script below, so `nft list` reads the same). DEL,
//! CHECK and GC talk netlink too: DEL looks up the recorded elements and
//! rules one by one (verified by the key in their comments), or walks the
//! sets and `conditioned` when there is no record, and deletes in one
//! transaction the kernel applies only if the ruleset is still the
//! generation that was read: its elements and rules, or the whole table
//! when nothing of another attachment is left. So no lock is needed: a
//! concurrent ADD either committed first (the delete is refused and
//! decided again) or commits after (and recreates the table).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;

use nix::errno::Errno;
use weft_cni::{Error, ErrorCode};
use weft_firewall::{comment_key, hold_in_background, run};
use weft_netlink::{
    nft_concat, NftAddr, NftCommand, NftDeletion, NftElement, NftExpr, NftField, NftHook,
    NftRuleRef as NftRule, NftSet, NftTable, NftWatch,
};

use crate::attachment::{Attachment, Target};
use crate::config::{Mapping, PortmapConfig};
use crate::record::{ElementHandle, NftRecord, RuleHandle};

const TABLE: &str = "weft_portmap";
const FAMILY: &str = "inet";
/// The chain of the fixed map lookups.
const HOSTPORTS: &str = "hostports";
/// The chain of the DNAT rules of mappings with conditions.
const CONDITIONED: &str = "conditioned";
/// Rules in `hostports`: a lookup per map, and the jump to `conditioned`.
const HOSTPORTS_RULES: usize = 5;
/// Transactions refused because the ruleset changed under them, before
/// DEL (or an ADD taking a key over) gives up with "try again later".
const ATTEMPTS: usize = 200;

fn hostip_map(v4: bool) -> &'static str {
    if v4 {
        "hostip4"
    } else {
        "hostip6"
    }
}

fn ports_map(v4: bool) -> &'static str {
    if v4 {
        "ports4"
    } else {
        "ports6"
    }
}

fn masq_set(v4: bool) -> &'static str {
    if v4 {
        "masq4"
    } else {
        "masq6"
    }
}

const SETS: [&str; 6] = ["hostip4", "hostip6", "ports4", "ports6", "masq4", "masq6"];

fn addr(which: NftAddr, v4: bool) -> NftField {
    NftField::Addr { which, v4 }
}

/// `ip daddr . meta l4proto . th dport`.
fn hostip_key(v4: bool) -> Vec<NftField> {
    vec![
        addr(NftAddr::Destination, v4),
        NftField::L4proto,
        NftField::Dport,
    ]
}

/// `meta l4proto . th dport`.
fn ports_key() -> Vec<NftField> {
    vec![NftField::L4proto, NftField::Dport]
}

/// `ip saddr . ip daddr . meta l4proto . th dport`.
fn masq_key(v4: bool) -> Vec<NftField> {
    vec![
        addr(NftAddr::Source, v4),
        addr(NftAddr::Destination, v4),
        NftField::L4proto,
        NftField::Dport,
    ]
}

/// A map's value: the pod's address and port.
fn pod_value(v4: bool) -> Vec<NftField> {
    vec![addr(NftAddr::Destination, v4), NftField::Dport]
}

/// The maps and sets, in the order `nft list` shows them.
fn sets() -> Vec<NftSet> {
    let set = |name: &str, key, data, interval| NftSet {
        name: name.into(),
        key,
        data,
        interval,
    };
    let families = [true, false];
    let hostip = families.map(|v4| set(hostip_map(v4), hostip_key(v4), pod_value(v4), false));
    let ports = families.map(|v4| set(ports_map(v4), ports_key(), pod_value(v4), false));
    let masq = families.map(|v4| set(masq_set(v4), masq_key(v4), Vec::new(), true));
    hostip.into_iter().chain(ports).chain(masq).collect()
}

/// The table, its sets and its fixed chains, as nft text: what
/// [`skeleton_commands`] says. The fixed chains hold only fixed rules, so
/// flushing and refilling them in the same transaction is harmless and
/// needs no lookup (ADD sends this only when the table is not in place).
fn skeleton() -> String {
    let t = format!("inet {TABLE}");
    let nat = |name: &str, hook: &str, priority: i32| {
        format!(
            "add chain {t} {name} {{ type nat hook {hook} priority {priority}; policy accept; }}\n"
        )
    };
    let mut s = format!("add table {t}\n");
    for (fam, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        s += &format!("add map {t} hostip{fam} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}\n");
    }
    for (fam, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        s += &format!(
            "add map {t} ports{fam} {{ type inet_proto . inet_service : {addr} . inet_service; }}\n"
        );
    }
    for (fam, addr) in [("4", "ipv4_addr"), ("6", "ipv6_addr")] {
        s += &format!("add set {t} masq{fam} {{ type {addr} . {addr} . inet_proto . inet_service; flags interval; }}\n");
    }
    s += &nat("prerouting", "prerouting", -100);
    s += &nat("output", "output", -100);
    s += &nat("postrouting", "postrouting", 100);
    s += &format!("add chain {t} {HOSTPORTS}\nadd chain {t} {CONDITIONED}\n");
    for base in ["prerouting", "output"] {
        s += &format!(
            "flush chain {t} {base}\nadd rule {t} {base} fib daddr type local jump {HOSTPORTS}\n"
        );
    }
    s += &format!(
        "flush chain {t} {HOSTPORTS}\n\
         add rule {t} {HOSTPORTS} dnat ip to ip daddr . meta l4proto . th dport map @hostip4\n\
         add rule {t} {HOSTPORTS} dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6\n\
         add rule {t} {HOSTPORTS} meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4\n\
         add rule {t} {HOSTPORTS} meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6\n\
         add rule {t} {HOSTPORTS} jump {CONDITIONED}\n\
         flush chain {t} postrouting\n\
         add rule {t} postrouting ct status dnat ip saddr . ip daddr . meta l4proto . th dport @masq4 masquerade\n\
         add rule {t} postrouting ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @masq6 masquerade\n"
    );
    s
}

/// The skeleton as commands: what [`skeleton`] says.
fn skeleton_commands() -> Vec<NftCommand> {
    let base = |name: &str, hook, priority| NftCommand::NatChain {
        name: name.into(),
        hook,
        priority,
    };
    let rule = |chain: &str, exprs| NftCommand::Rule {
        chain: chain.into(),
        exprs,
        comment: None,
    };
    let to_hostports = || {
        let mut exprs = NftExpr::fib_daddr_local();
        exprs.push(NftExpr::Jump(HOSTPORTS.into()));
        exprs
    };
    let lookup = |v4, map: &str, key: &[NftField]| {
        let mut exprs = NftExpr::nfproto(v4);
        exprs.extend(NftExpr::dnat_map(map, v4, key));
        exprs
    };
    let masquerade = |v4| {
        let mut exprs = NftExpr::ct_status_dnat();
        exprs.extend(NftExpr::nfproto(v4));
        exprs.extend(NftExpr::in_set(masq_set(v4), &masq_key(v4), true));
        exprs.push(NftExpr::Masquerade);
        exprs
    };
    let mut commands = vec![NftCommand::Table];
    commands.extend(sets().into_iter().map(NftCommand::Set));
    commands.extend([
        base("prerouting", NftHook::Prerouting, -100),
        base("output", NftHook::Output, -100),
        base("postrouting", NftHook::Postrouting, 100),
        NftCommand::Chain(HOSTPORTS.into()),
        NftCommand::Chain(CONDITIONED.into()),
        NftCommand::Flush("prerouting".into()),
        rule("prerouting", to_hostports()),
        NftCommand::Flush("output".into()),
        rule("output", to_hostports()),
        NftCommand::Flush(HOSTPORTS.into()),
        rule(HOSTPORTS, lookup(true, hostip_map(true), &hostip_key(true))),
        rule(
            HOSTPORTS,
            lookup(false, hostip_map(false), &hostip_key(false)),
        ),
        rule(HOSTPORTS, lookup(true, ports_map(true), &ports_key())),
        rule(HOSTPORTS, lookup(false, ports_map(false), &ports_key())),
        rule(HOSTPORTS, vec![NftExpr::Jump(CONDITIONED.into())]),
        NftCommand::Flush("postrouting".into()),
        rule("postrouting", masquerade(true)),
        rule("postrouting", masquerade(false)),
    ]);
    commands
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The first and last address of `ip/prefix`.
fn range(ip: IpAddr, prefix: u8) -> (Vec<u8>, Vec<u8>) {
    let bytes = octets(ip);
    let host_bits = (bytes.len() * 8).saturating_sub(usize::from(prefix));
    let (mut first, mut last) = (bytes.clone(), bytes);
    for bit in 0..host_bits {
        let (byte, mask) = (first.len() - 1 - bit / 8, 1u8 << (bit % 8));
        first[byte] &= !mask;
        last[byte] |= mask;
    }
    (first, last)
}

/// The conditions of `t`'s family.
fn conditions<'a>(config: &'a PortmapConfig, t: &Target) -> &'a [String] {
    if t.v4() {
        &config.conditions_v4
    } else {
        &config.conditions_v6
    }
}

/// One element of this attachment's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    set: &'static str,
    element: NftElement,
    /// What it does, for people: "host port 8080/tcp".
    what: String,
}

impl Element {
    fn handle(&self) -> ElementHandle {
        ElementHandle {
            set: self.set.into(),
            key: self.element.key.clone(),
            key_end: self.element.key_end.clone(),
        }
    }
}

/// The DNAT element of `m` for `t` (in `hostipN` with a hostIP, else
/// `portsN`).
fn dnat_element(att: &Attachment, t: &Target, m: &Mapping) -> Element {
    let (proto, port) = ([m.protocol.number()], m.host_port.to_be_bytes());
    let (set, key) = match m.daddr() {
        Some(ip) => (
            hostip_map(t.v4()),
            nft_concat(&[&octets(ip), &proto, &port]),
        ),
        None => (ports_map(t.v4()), nft_concat(&[&proto, &port])),
    };
    let data = nft_concat(&[&octets(t.pod.ip()), &m.container_port.to_be_bytes()]);
    let on = m.daddr().map(|ip| format!(" on {ip}")).unwrap_or_default();
    Element {
        set,
        element: NftElement {
            key,
            key_end: None,
            data: Some(data),
            comment: Some(att.comment()),
        },
        what: format!(
            "host port {}/{}{on} (to {})",
            m.host_port,
            m.protocol.as_str(),
            socket(t, m.container_port)
        ),
    }
}

/// The sources whose flows to `t` are masqueraded: its subnet and, for
/// IPv4, 127.0.0.1; with masqAll, every one.
fn masq_sources(config: &PortmapConfig, t: &Target) -> Vec<(IpAddr, u8)> {
    let subnet = t.subnet();
    if config.masq_all {
        let any = if t.v4() {
            IpAddr::from(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::from(Ipv6Addr::UNSPECIFIED)
        };
        return vec![(any, 0)];
    }
    let mut sources = vec![(subnet.network(), subnet.prefix())];
    if t.v4() {
        sources.push((IpAddr::from([127, 0, 0, 1]), 32));
    }
    sources
}

/// The masquerade elements of `m` for `t`.
fn masq_elements(
    att: &Attachment,
    config: &PortmapConfig,
    t: &Target,
    m: &Mapping,
) -> Vec<Element> {
    let to_pod = [
        octets(t.pod.ip()),
        vec![m.protocol.number()],
        m.container_port.to_be_bytes().to_vec(),
    ];
    let key = |source: Vec<u8>| {
        let mut parts: Vec<&[u8]> = vec![&source];
        parts.extend(to_pod.iter().map(Vec::as_slice));
        nft_concat(&parts)
    };
    masq_sources(config, t)
        .into_iter()
        .map(|(ip, prefix)| {
            let (first, last) = range(ip, prefix);
            Element {
                set: masq_set(t.v4()),
                element: NftElement {
                    key: key(first),
                    key_end: Some(key(last)),
                    data: None,
                    comment: Some(att.comment()),
                },
                what: format!(
                    "the masquerade of {ip}/{prefix} to {}/{}",
                    socket(t, m.container_port),
                    m.protocol.as_str()
                ),
            }
        })
        .collect()
}

/// This attachment's elements: the DNAT of each mapping without
/// conditions, and with snat the masquerade of each (once per pod port,
/// for mappings that share one).
fn elements(att: &Attachment, config: &PortmapConfig) -> Vec<Element> {
    let mut elements = Vec::new();
    for t in att.targets() {
        for m in att.mappings_for(t, &config.mappings) {
            if conditions(config, t).is_empty() {
                elements.push(dnat_element(att, t, m));
            }
            if config.snat {
                for e in masq_elements(att, config, t, m) {
                    if !elements.contains(&e) {
                        elements.push(e);
                    }
                }
            }
        }
    }
    elements
}

/// `addr:port`, bracketed for IPv6.
fn socket(t: &Target, port: u16) -> String {
    if t.v4() {
        format!("{}:{port}", t.pod.ip())
    } else {
        format!("[{}]:{port}", t.pod.ip())
    }
}

/// The DNAT rule of `m` for `t` with its family's conditions.
fn conditioned_rule(att: &Attachment, config: &PortmapConfig, t: &Target, m: &Mapping) -> String {
    let (fam, nfproto) = if t.v4() {
        ("ip", "ipv4")
    } else {
        ("ip6", "ipv6")
    };
    let mut rule = format!("meta nfproto {nfproto} ");
    for c in conditions(config, t) {
        rule.push_str(c);
        rule.push(' ');
    }
    if let Some(ip) = m.daddr() {
        rule.push_str(&format!("{fam} daddr {ip} "));
    }
    format!(
        "add rule inet {TABLE} {CONDITIONED} {rule}{} dport {} dnat {fam} to {} comment \"{}\"\n",
        m.protocol.as_str(),
        m.host_port,
        socket(t, m.container_port),
        att.comment()
    )
}

/// The conditioned DNAT rules of this attachment, as nft text, and how
/// many.
fn conditioned_rules(att: &Attachment, config: &PortmapConfig) -> (String, usize) {
    let mut script = String::new();
    let mut count = 0;
    for t in att.targets() {
        if conditions(config, t).is_empty() {
            continue;
        }
        for m in att.mappings_for(t, &config.mappings) {
            script.push_str(&conditioned_rule(att, config, t, m));
            count += 1;
        }
    }
    (script, count)
}

fn kernel(what: &str, e: weft_netlink::Error) -> Error {
    Error::new(ErrorCode::Firewall, format!("{what} inet {TABLE}: {e}"))
}

fn open() -> Result<NftTable, Error> {
    NftTable::new(FAMILY, TABLE).map_err(|e| kernel("open netlink for", e))
}

fn key_of(comment: Option<&str>) -> Option<&str> {
    comment.and_then(comment_key)
}

/// ADD: the rules of mappings with conditions through `nft -f` (nothing
/// is made if nft refuses them), then every element in one transaction;
/// should that fail, the rules go again. Returns what was made, when that
/// is fully known.
pub fn add(att: &Attachment, config: &PortmapConfig) -> Result<Option<NftRecord>, Error> {
    let (script, expected) = conditioned_rules(att, config);
    let mut rules = Some(Vec::new());
    if expected > 0 {
        rules = add_by_script(att, &script, expected)?;
    }
    let elements = elements(att, config);
    if let Err(e) = add_elements(&elements) {
        if expected > 0 {
            let mine = |k: &str| k == att.key;
            let recorded = rules.clone().map(|rules| NftRecord {
                rules,
                elements: Vec::new(),
            });
            if let Err(undo) = remove(&mine, recorded.as_ref()) {
                weft_cni::log::warn(&format!("undoing the conditioned rules: {undo}"));
            }
        }
        return Err(e);
    }
    Ok(rules.map(|rules| NftRecord {
        rules,
        elements: elements.iter().map(Element::handle).collect(),
    }))
}

/// Add `elements` in one transaction, with the skeleton when it is not in
/// place. A key another attachment holds is taken over.
fn add_elements(elements: &[Element]) -> Result<(), Error> {
    let adds: Vec<NftCommand> = elements
        .iter()
        .map(|e| NftCommand::Element {
            set: e.set.into(),
            element: e.element.clone(),
        })
        .collect();
    let mut table = open()?;
    // With the table in place, the elements alone: declaring the fixed
    // chains again and refilling them costs a kernel commit several ms.
    // Should a DEL of the last attachment drop the table meanwhile, that
    // fails as a whole, and the full transaction recreates it.
    let outcome = if skeleton_in_place(&table) {
        table.apply(None, &adds)
    } else {
        let mut all = skeleton_commands();
        all.extend(adds);
        table.apply(None, &all)
    };
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if taken(&e) => take_over(&mut table, elements),
        Err(e) => Err(kernel("write", e)),
    }
}

/// Whether an element add failed because a key (or an overlapping range)
/// is there already.
fn taken(e: &weft_netlink::Error) -> bool {
    matches!(
        e.errno(),
        Some(Errno::EEXIST | Errno::ENOTEMPTY | Errno::EBUSY)
    )
}

/// Add `elements` where some keys are held already: this attachment's own
/// (an ADD again) stay, others' are deleted first, in the same
/// transaction, decided at one ruleset generation.
fn take_over(table: &mut NftTable, elements: &[Element]) -> Result<(), Error> {
    for _ in 0..ATTEMPTS {
        let generation = table
            .generation()
            .map_err(|e| kernel("read the generation of", e))?;
        let mut commands = Vec::new();
        for e in elements {
            // Only an element with exactly this key (and range) is found:
            // a foreign range that merely overlaps ours is not taken over,
            // and the transaction fails as the first one did.
            let held = table
                .element(e.set, &e.element.key, e.element.key_end.as_deref())
                .map_err(|e| kernel("look up an element of", e))?;
            if let Some(held) = held {
                if held == e.element {
                    continue; // ours already: an ADD again
                }
                weft_cni::log::warn(&format!(
                    "{}: taking it over from \"{}\"",
                    e.what,
                    held.comment.as_deref().unwrap_or("no comment")
                ));
                commands.push(NftCommand::Delete(NftDeletion::Element {
                    set: e.set.into(),
                    key: held.key,
                    key_end: held.key_end,
                }));
            }
            commands.push(NftCommand::Element {
                set: e.set.into(),
                element: e.element.clone(),
            });
        }
        match table.apply(Some(generation), &commands) {
            Err(e) if e.errno() == Some(Errno::ERESTART) => continue,
            done => return done.map(|_| ()).map_err(|e| kernel("write", e)),
        }
    }
    Err(Error::new(
        ErrorCode::TryAgainLater,
        format!("inet {TABLE} kept changing: {ATTEMPTS} attempts to add were refused"),
    ))
}

/// The conditioned rules through `nft -f` (with the skeleton when it is
/// not in place), while a netlink watch collects their handles.
fn add_by_script(
    att: &Attachment,
    script: &str,
    expected: usize,
) -> Result<Option<Vec<RuleHandle>>, Error> {
    let watch = NftWatch::new();
    let in_place = open().is_ok_and(|table| skeleton_in_place(&table));
    let rules_only = in_place && run("nft", &["-f", "-"], script).is_ok();
    if !rules_only {
        run("nft", &["-f", "-"], &(skeleton() + script))?;
    }
    match watch.and_then(|mut w| w.added(FAMILY, TABLE)) {
        Ok(rules) => {
            let mine: Vec<RuleHandle> = rules
                .into_iter()
                .filter(|r| key_of(r.comment.as_deref()) == Some(att.key.as_str()))
                .map(|r| RuleHandle {
                    chain: r.chain,
                    handle: r.handle,
                })
                .collect();
            Ok(Some(mine).filter(|m| m.len() == expected))
        }
        Err(e) => {
            weft_cni::log::warn(&format!("watching nf_tables for this ADD's rules: {e}"));
            Ok(None)
        }
    }
}

/// How many rules `chain` holds, counting at most `limit`.
fn rules_in(table: &NftTable, chain: &str, limit: usize) -> Result<usize, Error> {
    let mut n = 0;
    table
        .walk(chain, |_| {
            n += 1;
            if n >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .map_err(|e| kernel("list", e))?;
    Ok(n)
}

/// The fixed chains that must hold rules, with how many.
const FIXED_CHAINS: [(&str, usize); 4] = [
    ("prerouting", 1),
    ("output", 1),
    ("postrouting", 2),
    (HOSTPORTS, HOSTPORTS_RULES),
];

/// The table is there with the rules of all its fixed chains.
fn skeleton_in_place(table: &NftTable) -> bool {
    FIXED_CHAINS
        .iter()
        .all(|(chain, n)| rules_in(table, chain, *n).is_ok_and(|found| found >= *n))
}

/// What a DEL finds of the attachments it removes.
#[derive(Default)]
struct Doomed {
    rules: Vec<NftRule>,
    elements: Vec<(String, NftElement)>,
}

/// The recorded elements and rules, each checked to be there with a key
/// `doomed` accepts; None when any is not (then look the slow way).
fn verified(
    table: &mut NftTable,
    recorded: &NftRecord,
    doomed: &dyn Fn(&str) -> bool,
) -> Result<Option<Doomed>, Error> {
    let mut found = Doomed::default();
    for r in &recorded.rules {
        match table
            .rule(&r.chain, r.handle)
            .map_err(|e| kernel("look up a rule of", e))?
        {
            Some(rule) if key_of(rule.comment.as_deref()).is_some_and(doomed) => {
                found.rules.push(rule)
            }
            _ => return Ok(None),
        }
    }
    for e in &recorded.elements {
        match table
            .element(&e.set, &e.key, e.key_end.as_deref())
            .map_err(|e| kernel("look up an element of", e))?
        {
            // element() finds only this exact key and range.
            Some(el) if key_of(el.comment.as_deref()).is_some_and(doomed) => {
                found.elements.push((e.set.clone(), el))
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(found))
}

/// Every element and conditioned rule whose key `doomed` accepts.
fn walked(table: &NftTable, doomed: &dyn Fn(&str) -> bool) -> Result<Doomed, Error> {
    let list = |e| kernel("list", e);
    let mut found = Doomed::default();
    for set in SETS {
        table
            .walk_elements(set, |e| {
                if key_of(e.comment.as_deref()).is_some_and(doomed) {
                    found.elements.push((set.to_string(), e));
                }
                ControlFlow::Continue(())
            })
            .map_err(list)?;
    }
    table
        .walk(CONDITIONED, |r| {
            if key_of(r.comment.as_deref()).is_some_and(doomed) {
                found.rules.push(r);
            }
            ControlFlow::Continue(())
        })
        .map_err(list)?;
    Ok(found)
}

/// Whether any element or conditioned rule is left that `doomed` does not
/// accept: each walk stops at the first.
fn others_left(table: &NftTable, doomed: &dyn Fn(&str) -> bool) -> Result<bool, Error> {
    let foreign = |comment: Option<&str>| !key_of(comment).is_some_and(doomed);
    let mut others = false;
    let stop = |hit: bool| {
        if hit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    for set in SETS {
        table
            .walk_elements(set, |e| {
                others = foreign(e.comment.as_deref());
                stop(others)
            })
            .map_err(|e| kernel("list", e))?;
        if others {
            return Ok(true);
        }
    }
    table
        .walk(CONDITIONED, |r| {
            others = foreign(r.comment.as_deref());
            stop(others)
        })
        .map_err(|e| kernel("list", e))?;
    Ok(others)
}

fn deletions(found: Doomed) -> Vec<NftCommand> {
    let rules = found.rules.into_iter().map(|r| NftDeletion::Rule {
        chain: r.chain,
        handle: r.handle,
    });
    let elements = found
        .elements
        .into_iter()
        .map(|(set, e)| NftDeletion::Element {
            set,
            key: e.key,
            key_end: e.key_end,
        });
    rules.chain(elements).map(NftCommand::Delete).collect()
}

/// Delete the elements and rules whose key is `doomed` (`recorded` says
/// where they are, when known); the table goes with the last of them.
/// Each attempt reads and deletes at one ruleset generation; a refused one
/// reads again.
pub fn remove(doomed: &dyn Fn(&str) -> bool, recorded: Option<&NftRecord>) -> Result<(), Error> {
    let mut table = open()?;
    for _ in 0..ATTEMPTS {
        let generation = table
            .generation()
            .map_err(|e| kernel("read the generation of", e))?;
        let known = match recorded {
            Some(r) => verified(&mut table, r, doomed)?,
            None => None,
        };
        let found = match known {
            Some(found) => found,
            None => walked(&table, doomed)?,
        };
        let others = others_left(&table, doomed)?;
        let changes = if !others && table.exists().map_err(|e| kernel("look up", e))? {
            vec![NftCommand::Delete(NftDeletion::Table)]
        } else {
            deletions(found)
        };
        if changes.is_empty() {
            return Ok(());
        }
        match table.apply(Some(generation), &changes) {
            Err(e) if e.errno() == Some(Errno::ERESTART) => continue,
            Err(e) => return Err(kernel("delete from", e)),
            Ok(_) => {
                // Closing it now would wait for the kernel to free what
                // was deleted.
                if let Ok(socket) = table.into_socket() {
                    hold_in_background(socket);
                }
                return Ok(());
            }
        }
    }
    Err(Error::new(
        ErrorCode::TryAgainLater,
        format!("inet {TABLE} kept changing: {ATTEMPTS} attempts to delete were refused"),
    ))
}

/// CHECK: the fixed chains' rules, every element this attachment's
/// mappings need (its own, with the right value), and its conditioned
/// rules.
pub fn check(
    att: &Attachment,
    config: &PortmapConfig,
    recorded: Option<&NftRecord>,
) -> Result<(), Error> {
    let missing = |what: String| Err(Error::new(ErrorCode::CheckFailed, what));
    let mut table = open()?;
    if !table.exists().map_err(|e| kernel("look up", e))? {
        return missing(format!("table inet {TABLE} is missing"));
    }
    for (chain, n) in FIXED_CHAINS {
        if rules_in(&table, chain, n)? < n {
            return missing(format!("chain {chain} of inet {TABLE} has lost its rules"));
        }
    }
    for e in elements(att, config) {
        let found = table
            .element(e.set, &e.element.key, e.element.key_end.as_deref())
            .map_err(|e| kernel("look up an element of", e))?;
        if found.as_ref() != Some(&e.element) {
            let state = if found.is_some() {
                "held by another attachment"
            } else {
                "missing"
            };
            return missing(format!(
                "{} is {state} in set {} of inet {TABLE}",
                e.what, e.set
            ));
        }
    }
    let (_, expected) = conditioned_rules(att, config);
    let mine = |k: &str| k == att.key;
    let rules = match recorded.map(|r| verified(&mut table, r, &mine)) {
        Some(Ok(Some(found))) => found.rules.len(),
        _ => walked(&table, &mine)?.rules.len(),
    };
    if rules < expected {
        return missing(format!(
            "{rules} of {expected} conditioned DNAT rules of this attachment are in inet {TABLE}"
        ));
    }
    Ok(())
}
