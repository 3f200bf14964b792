//! nf_tables over netlink, what weft's own tables need: list one table's
//! rules (chain, handle, comment), delete rules by handle or the whole
//! table in one transaction, and write a table, its chains and rules in
//! one transaction as `nft -f` would ([`NftTable::apply`], with the
//! expressions of [`NftExpr`]). Each of these spares an `nft` exec, which
//! loads libnftables and the table into its cache.
//!
//! [`NftTable`] goes further, for costs that must not grow with the
//! ruleset: one rule by handle, a chain walk that stops early, and
//! deletions the kernel applies only if the ruleset is still at the
//! generation they were decided at. [`NftWatch`] sees the rules another
//! process's transaction adds, with their handles (which `nft --echo`
//! would load the whole table to print).

use std::ops::ControlFlow;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST,
};
use nix::errno::Errno;

use crate::nfnetlink::{find, put_attr, BatchMsg, Nfnl};
use crate::nft_expr::{
    comment_udata, encode, jump_data, nul_terminated, put_nested, value, NftExpr,
};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_ID: u16 = 10;
const NFT_SET_MAP: u32 = 0x8;
/// The data type of a verdict map's values.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_LIST_ELEM: u16 = 1;
/// DELCHAIN: refuse (EBUSY) rather than delete the rules still in it.
const NLM_F_NONREC: u16 = 0x100;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NFNLGRP_NFTABLES: u32 = 7;
/// Room for a burst of other processes' changes while ours commits.
const WATCH_RCVBUF: usize = 4 << 20;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NF_ACCEPT: u32 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
const NFPROTO_INET: u8 = 1;
/// libnftnl's user-data TLV type for a rule's comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// One rule of a listed table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRuleRef {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// NFPROTO_* of an nft family name.
fn family(name: &str) -> Result<u8, Error> {
    Ok(match name {
        "inet" => NFPROTO_INET,
        "ip" => 2,
        "arp" => 3,
        "netdev" => 5,
        "bridge" => 7,
        "ip6" => 10,
        _ => return Err(Error::Protocol(format!("unknown nft family {name}"))),
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b.strip_suffix(&[0]).unwrap_or(b)).into_owned()
}

fn comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while let [kind, len, tail @ ..] = rest {
        let value = tail.get(..usize::from(*len))?;
        if *kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(text(value));
        }
        rest = &tail[usize::from(*len)..];
    }
    None
}

fn parse_rule(msg: &[u8]) -> Option<NftRuleRef> {
    let handle = find(msg, NFTA_RULE_HANDLE).and_then(|h| <[u8; 8]>::try_from(h).ok())?;
    Some(NftRuleRef {
        chain: text(find(msg, NFTA_RULE_CHAIN)?),
        handle: u64::from_be_bytes(handle),
        comment: find(msg, NFTA_RULE_USERDATA).and_then(comment),
    })
}

const fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn table_attr(table: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_TABLE_NAME, &nul_terminated(table));
    body
}

fn get_table(nl: &mut Nfnl, af: u8, table: &str, op: &str) -> Result<(), Error> {
    let body = table_attr(table);
    nl.exchange(
        nft(NFT_MSG_GETTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        af,
        &body,
        op,
        |_| {},
    )
}

/// Whether nf_tables answers here and lets us change it: it refuses every
/// request, reads too, without CAP_NET_ADMIN, and a kernel without it
/// has no such subsystem. Asks for a table that does not exist.
pub fn nf_tables_usable() -> bool {
    let Ok(mut nl) = Nfnl::new() else {
        return false;
    };
    match get_table(
        &mut nl,
        NFPROTO_INET,
        "weft_probe_absent",
        "probe nf_tables",
    ) {
        Ok(()) => true,
        Err(e) => e.errno() == Some(Errno::ENOENT),
    }
}

/// Every rule of `family`/`table`; None when the table does not exist
/// (or nf_tables itself does not: then no table does).
pub fn nft_list_rules(family_name: &str, table: &str) -> Result<Option<Vec<NftRuleRef>>, Error> {
    let af = family(family_name)?;
    let mut nl = Nfnl::new()?;
    let op = format!("get nft table {family_name} {table}");
    match get_table(&mut nl, af, table, &op) {
        Err(e)
            if matches!(
                e.errno(),
                Some(Errno::ENOENT | Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT)
            ) =>
        {
            return Ok(None)
        }
        other => other?,
    }
    let name = table_attr(table);
    let mut rules = Vec::new();
    let op = format!("list the rules of nft table {family_name} {table}");
    // NFTA_RULE_TABLE has the same number as NFTA_TABLE_NAME: the dump is
    // filtered to this table.
    nl.exchange(
        nft(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        af,
        &name,
        &op,
        |m| {
            rules.extend(parse_rule(m));
        },
    )?;
    Ok(Some(rules))
}

/// Delete the rules `(chain, handle)` of `family`/`table`, all or none.
pub fn nft_delete_rules(
    family_name: &str,
    table: &str,
    rules: &[(&str, u64)],
) -> Result<(), Error> {
    let af = family(family_name)?;
    let msgs: Vec<BatchMsg> = rules
        .iter()
        .map(|(chain, handle)| {
            let mut body = rule_attrs(table, chain);
            put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            BatchMsg::new(nft(NFT_MSG_DELRULE), af, body)
        })
        .collect();
    let op = format!(
        "delete {} rules of nft table {family_name} {table}",
        rules.len()
    );
    Nfnl::new()?.batch(NFNL_SUBSYS_NFTABLES, None, &msgs, &op)
}

/// Delete `family`/`table` with everything in it.
pub fn nft_delete_table(family_name: &str, table: &str) -> Result<(), Error> {
    let msgs = [BatchMsg::new(
        nft(NFT_MSG_DELTABLE),
        family(family_name)?,
        table_attr(table),
    )];
    let op = format!("delete nft table {family_name} {table}");
    Nfnl::new()?.batch(NFNL_SUBSYS_NFTABLES, None, &msgs, &op)
}

/// One deletion of an [`NftTable::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftDeletion {
    Rule {
        chain: String,
        handle: u64,
    },
    /// An element of a map, by key.
    Element {
        map: String,
        key: Vec<u8>,
    },
    /// A chain, only if nothing is in it or jumps to it by then (else the
    /// transaction fails with EBUSY).
    Chain(String),
    Table,
}

/// The key type of a verdict map, as nft names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftMapKey {
    /// `inet_service`: a port, 2 bytes big-endian.
    Port,
    /// `ipv4_addr`.
    Ipv4,
    /// `ipv6_addr`.
    Ipv6,
}

impl NftMapKey {
    /// nft's datatype number and the key's length.
    fn type_and_len(self) -> (u32, u32) {
        match self {
            NftMapKey::Port => (13, 2),
            NftMapKey::Ipv4 => (7, 4),
            NftMapKey::Ipv6 => (8, 16),
        }
    }
}

/// NEWSETELEM/DELSETELEM's body: one element `key` of `map`, with `jump`
/// as its verdict when adding.
fn element_attrs(table: &str, map: &str, key: &[u8], jump: Option<&str>) -> Vec<u8> {
    let mut elem = Vec::new();
    put_nested(&mut elem, NFTA_SET_ELEM_KEY, &value(key));
    if let Some(chain) = jump {
        put_nested(&mut elem, NFTA_SET_ELEM_DATA, &jump_data(chain));
    }
    let mut list = Vec::new();
    put_nested(&mut list, NFTA_LIST_ELEM, &elem);
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    put_attr(&mut body, NFTA_SET_ELEM_LIST_SET, &nul_terminated(map));
    put_nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, &list);
    body
}

/// The message that deletes `d` from `table`.
fn deletion_msg(table: &str, af: u8, d: &NftDeletion) -> BatchMsg {
    match d {
        NftDeletion::Rule { chain, handle } => {
            let mut body = rule_attrs(table, chain);
            put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            BatchMsg::new(nft(NFT_MSG_DELRULE), af, body)
        }
        NftDeletion::Element { map, key } => BatchMsg::new(
            nft(NFT_MSG_DELSETELEM),
            af,
            element_attrs(table, map, key, None),
        ),
        NftDeletion::Chain(name) => {
            let mut msg = BatchMsg::new(nft(NFT_MSG_DELCHAIN), af, chain_attrs(table, name));
            msg.flags |= NLM_F_NONREC;
            msg
        }
        NftDeletion::Table => BatchMsg::new(nft(NFT_MSG_DELTABLE), af, table_attr(table)),
    }
}

fn rule_attrs(table: &str, chain: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_RULE_TABLE, &nul_terminated(table));
    put_attr(&mut body, NFTA_RULE_CHAIN, &nul_terminated(chain));
    body
}

/// The netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftHook {
    Prerouting = 0,
    Input = 1,
    Forward = 2,
    Output = 3,
    Postrouting = 4,
}

/// One command of an [`NftTable::apply`], as the `nft` command of the
/// same name does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftCommand {
    /// `add table` (nothing happens if it exists).
    Table,
    /// `add chain NAME { type nat hook HOOK priority PRIORITY; policy
    /// accept; }`.
    NatChain {
        name: String,
        hook: NftHook,
        priority: i32,
    },
    /// `add chain NAME`: a regular chain, for jumps.
    Chain(String),
    /// `add map NAME { type KEY : verdict; }`.
    Map { name: String, key: NftMapKey },
    /// `add element MAP { KEY : jump CHAIN }` (nothing happens if it is
    /// there with that verdict).
    Element {
        map: String,
        key: Vec<u8>,
        jump: String,
    },
    /// `flush chain NAME`.
    Flush(String),
    /// `add rule CHAIN EXPRS comment "COMMENT"`: appended.
    Rule {
        chain: String,
        exprs: Vec<NftExpr>,
        comment: Option<String>,
    },
}

fn chain_attrs(table: &str, name: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_CHAIN_TABLE, &nul_terminated(table));
    put_attr(&mut body, NFTA_CHAIN_NAME, &nul_terminated(name));
    body
}

/// The message `command` is, in `table` of family `af`; `index` is its
/// place in the transaction (a new set's id there, which the kernel
/// requires).
fn command_msg(table: &str, af: u8, index: usize, command: &NftCommand) -> Result<BatchMsg, Error> {
    let msg = match command {
        NftCommand::Table => {
            let mut body = table_attr(table);
            put_attr(&mut body, NFTA_TABLE_FLAGS, &0u32.to_be_bytes());
            BatchMsg::new(nft(NFT_MSG_NEWTABLE), af, body)
        }
        NftCommand::NatChain {
            name,
            hook,
            priority,
        } => {
            let mut body = chain_attrs(table, name);
            let mut hook_attrs = Vec::new();
            put_attr(
                &mut hook_attrs,
                NFTA_HOOK_HOOKNUM,
                &(*hook as u32).to_be_bytes(),
            );
            put_attr(&mut hook_attrs, NFTA_HOOK_PRIORITY, &priority.to_be_bytes());
            put_nested(&mut body, NFTA_CHAIN_HOOK, &hook_attrs);
            put_attr(&mut body, NFTA_CHAIN_POLICY, &NF_ACCEPT.to_be_bytes());
            put_attr(&mut body, NFTA_CHAIN_TYPE, &nul_terminated("nat"));
            BatchMsg::new(nft(NFT_MSG_NEWCHAIN), af, body)
        }
        NftCommand::Chain(name) => {
            BatchMsg::new(nft(NFT_MSG_NEWCHAIN), af, chain_attrs(table, name))
        }
        NftCommand::Map { name, key } => {
            let (key_type, key_len) = key.type_and_len();
            let mut body = Vec::new();
            put_attr(&mut body, NFTA_SET_TABLE, &nul_terminated(table));
            put_attr(&mut body, NFTA_SET_NAME, &nul_terminated(name));
            put_attr(&mut body, NFTA_SET_FLAGS, &NFT_SET_MAP.to_be_bytes());
            put_attr(&mut body, NFTA_SET_KEY_TYPE, &key_type.to_be_bytes());
            put_attr(&mut body, NFTA_SET_KEY_LEN, &key_len.to_be_bytes());
            put_attr(
                &mut body,
                NFTA_SET_DATA_TYPE,
                &NFT_DATA_VERDICT.to_be_bytes(),
            );
            put_attr(&mut body, NFTA_SET_ID, &(index as u32).to_be_bytes());
            BatchMsg::new(nft(NFT_MSG_NEWSET), af, body)
        }
        NftCommand::Element { map, key, jump } => BatchMsg::new(
            nft(NFT_MSG_NEWSETELEM),
            af,
            element_attrs(table, map, key, Some(jump)),
        ),
        NftCommand::Flush(chain) => {
            BatchMsg::new(nft(NFT_MSG_DELRULE), af, rule_attrs(table, chain))
        }
        NftCommand::Rule {
            chain,
            exprs,
            comment,
        } => {
            let mut body = rule_attrs(table, chain);
            put_nested(&mut body, NFTA_RULE_EXPRESSIONS, &encode(exprs));
            if let Some(c) = comment {
                let udata = comment_udata(c)
                    .ok_or_else(|| Error::Invalid(format!("nft rule comment too long: {c}")))?;
                put_attr(&mut body, NFTA_RULE_USERDATA, &udata);
            }
            let mut msg = BatchMsg::new(nft(NFT_MSG_NEWRULE), af, body);
            // ECHO: the kernel sends the rule back with its handle.
            msg.flags = NLM_F_APPEND | NLM_F_ECHO;
            msg
        }
    };
    Ok(BatchMsg {
        flags: msg.flags | NLM_F_CREATE,
        ..msg
    })
}

/// One table, by family and name. Nothing is cached: every call asks the
/// kernel.
pub struct NftTable {
    af: u8,
    name: String,
    nl: Nfnl,
}

impl NftTable {
    pub fn new(family_name: &str, name: &str) -> Result<NftTable, Error> {
        Ok(NftTable {
            af: family(family_name)?,
            name: name.to_string(),
            nl: Nfnl::new()?,
        })
    }

    /// The ruleset's generation now: pass it to [`NftTable::commit`].
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut generation = None;
        self.nl.exchange(
            nft(NFT_MSG_GETGEN),
            NLM_F_REQUEST | NLM_F_ACK,
            0,
            &[],
            "get the nf_tables generation",
            |m| {
                generation = find(m, NFTA_GEN_ID)
                    .and_then(|v| v.try_into().ok())
                    .map(u32::from_be_bytes);
            },
        )?;
        generation.ok_or_else(|| Error::Decode("NEWGEN without NFTA_GEN_ID".into()))
    }

    pub fn exists(&mut self) -> Result<bool, Error> {
        let op = format!("get nft table {}", self.name);
        match get_table(&mut self.nl, self.af, &self.name, &op) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The rule `handle` of `chain`; None when the table, chain or rule is
    /// not there.
    pub fn rule(&mut self, chain: &str, handle: u64) -> Result<Option<NftRuleRef>, Error> {
        let mut body = rule_attrs(&self.name, chain);
        put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        let mut found = None;
        match self.nl.exchange(
            nft(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_ACK,
            self.af,
            &body,
            "get an nft rule",
            |m| found = parse_rule(m),
        ) {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Visit `chain`'s rules in order until `visit` breaks; a missing table
    /// or chain has none. The dump runs on its own socket, dropped when the
    /// walk stops early, so the kernel builds no more of it than was read.
    pub fn walk(
        &self,
        chain: &str,
        visit: impl FnMut(NftRuleRef) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        self.walk_rules(rule_attrs(&self.name, chain), visit)
    }

    /// As [`NftTable::walk`], over every chain of the table, in the
    /// order the chains were made.
    pub fn walk_all(&self, visit: impl FnMut(NftRuleRef) -> ControlFlow<()>) -> Result<(), Error> {
        self.walk_rules(table_attr(&self.name), visit)
    }

    fn walk_rules(
        &self,
        body: Vec<u8>,
        mut visit: impl FnMut(NftRuleRef) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let walked = Nfnl::new()?.exchange_until(
            nft(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            self.af,
            &body,
            "walk an nft chain",
            |m| parse_rule(m).is_some_and(|r| visit(r).is_break()),
        );
        match walked {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Apply `deletions` in one transaction, only if the ruleset is still
    /// at `generation`: else nothing changes and the error's errno is
    /// ERESTART (read again, decide again).
    pub fn commit(&mut self, generation: u32, deletions: &[NftDeletion]) -> Result<(), Error> {
        let msgs: Vec<BatchMsg> = deletions
            .iter()
            .map(|d| deletion_msg(&self.name, self.af, d))
            .collect();
        let op = format!("delete from nft table {}", self.name);
        self.nl
            .batch(NFNL_SUBSYS_NFTABLES, Some(generation), &msgs, &op)
    }
    /// Run `commands` in one transaction, as `nft -f` runs a script: all
    /// of them or, on an error, none. Returns the rules added, with the
    /// handles the kernel gave them.
    pub fn apply(&mut self, commands: &[NftCommand]) -> Result<Vec<NftRuleRef>, Error> {
        let msgs = commands
            .iter()
            .enumerate()
            .map(|(i, c)| command_msg(&self.name, self.af, i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let op = format!("write nft table {}", self.name);
        let mut added = Vec::new();
        let new_rule = nft(NFT_MSG_NEWRULE);
        self.nl
            .batch_echoed(NFNL_SUBSYS_NFTABLES, None, &msgs, &op, |_, kind, m| {
                if kind == new_rule {
                    added.extend(parse_rule(m));
                }
            })?;
        Ok(added)
    }
}

/// Rules other processes add, seen from before they commit: subscribe,
/// let the change happen (e.g. run `nft`), then [`NftWatch::added`].
pub struct NftWatch {
    nl: Nfnl,
}

impl NftWatch {
    pub fn new() -> Result<NftWatch, Error> {
        let nl = Nfnl::new()?;
        let sock = nl.socket();
        sock.set_rx_buf_sz(WATCH_RCVBUF)
            .map_err(|e| Error::io("size the nf_tables watch buffer", e))?;
        sock.add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| Error::io("subscribe to nf_tables notifications", e))?;
        sock.set_non_blocking(true)
            .map_err(|e| Error::io("make the nf_tables watch non-blocking", e))?;
        Ok(NftWatch { nl })
    }

    /// The rules added to `family_name`/`table` since [`NftWatch::new`],
    /// with their handles. The kernel sends these notifications before it
    /// acks a transaction, so they are all here once the adding process is
    /// done. An error (ENOBUFS) when some were lost.
    pub fn added(&mut self, family_name: &str, table: &str) -> Result<Vec<NftRuleRef>, Error> {
        let af = family(family_name)?;
        let mut rules = Vec::new();
        self.nl
            .drain("read nf_tables notifications", |kind, f, m| {
                let ours = kind == nft(NFT_MSG_NEWRULE)
                    && f == af
                    && find(m, NFTA_RULE_TABLE).map(text).as_deref() == Some(table);
                if ours {
                    rules.extend(parse_rule(m));
                }
            })?;
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_and_comment_are_parsed() {
        let udata = [1u8, 2, 9, 9, 0, 4, b'a', b'b', b'c', 0];
        assert_eq!(comment(&udata).as_deref(), Some("abc"));
        assert_eq!(comment(&[0u8, 9, b'a']), None);
        assert_eq!(comment(&[]), None);
        let mut m = rule_attrs("t", "c");
        put_attr(&mut m, NFTA_RULE_HANDLE, &7u64.to_be_bytes());
        put_attr(&mut m, NFTA_RULE_USERDATA, &udata);
        let rule = parse_rule(&m);
        assert_eq!(
            rule,
            Some(NftRuleRef {
                chain: "c".into(),
                handle: 7,
                comment: Some("abc".into())
            })
        );
    }
}
