//! nf_tables over netlink, what weft's own tables need: list one table's
//! rules (chain, handle, comment), delete rules by handle or the whole
//! table in one transaction, and write a table, its chains and rules in
//! one transaction as `nft -f` would ([`NftTable::apply`], with the
//! expressions of [`NftExpr`]). Each of these spares an `nft` exec, which
//! loads libnftables and the table into its cache.
//!
//! [`NftTable`] goes further, for costs that must not grow with the
//! ruleset: one rule or set element by key, a walk of a chain or a set
//! that stops early, and transactions the kernel applies only if the
//! ruleset is still at the generation they were decided at. [`NftWatch`] sees the rules another
//! process's transaction adds, with their handles (which `nft --echo`
//! would load the whole table to print).

use std::ops::ControlFlow;
use std::os::fd::OwnedFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST,
};
use nix::errno::Errno;

use crate::nfnetlink::{attrs, find, put_attr, BatchMsg, Nfnl};
use crate::nft_expr::{
    comment_udata, encode, nul_terminated, padded, put_nested, value, NftExpr, NftField,
};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DATA_LEN: u16 = 7;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;
/// Bits per field in the datatype number of a concatenation.
const CONCAT_TYPE_BITS: u32 = 6;
/// The user data nft 1.0.6 gives a map and an interval set of these
/// concatenations (byte order and type hints `nft list` reads back), as
/// `nft --debug=mnl` shows it; without it `nft list` prints raw keys.
const MAP_UDATA: &[u8] = &[
    0, 4, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0, 4, 8, 0, 4, 13, 0, 0, 0, 1,
    0, 6, 4, 0, 0, 0, 0,
];
const INTERVAL_SET_UDATA: &[u8] = &[0, 4, 0, 0, 0, 0, 3, 8, 0, 4, 13, 0, 0, 0, 1, 0];
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_LIST_ELEM: u16 = 1;
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
/// libnftnl's user-data TLV type for a rule's or an element's comment.
const NFTNL_UDATA_COMMENT: u8 = 0;

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
        if *kind == NFTNL_UDATA_COMMENT {
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

/// One deletion of an [`NftTable::apply`] ([`NftCommand::Delete`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftDeletion {
    Rule {
        chain: String,
        handle: u64,
    },
    /// An element of a set or map, by key (and, in an interval set, the
    /// key its range ends at).
    Element {
        set: String,
        key: Vec<u8>,
        key_end: Option<Vec<u8>>,
    },
    Table,
}

/// A named set or map of concatenated keys, as `add set`/`add map` with
/// `type KEY . KEY [: VALUE . VALUE]` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSet {
    pub name: String,
    pub key: Vec<NftField>,
    /// The value's fields; empty for a set.
    pub data: Vec<NftField>,
    /// `flags interval` (each key a range; for a set only).
    pub interval: bool,
}

/// The datatype number and length of a concatenation of `fields`.
fn concat_type(fields: &[NftField]) -> (u32, u32) {
    let id = fields
        .iter()
        .fold(0, |id, f| (id << CONCAT_TYPE_BITS) | f.type_id());
    let len = fields.iter().map(|f| padded(f.width())).sum();
    (id, len)
}

/// One element of a set or map: what [`NftCommand::Element`] adds and
/// what [`NftTable::element`] and [`NftTable::walk_elements`] find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftElement {
    /// The key, as [`crate::nft_concat`] lays it out.
    pub key: Vec<u8>,
    /// Where the range ends, in an interval set (inclusive).
    pub key_end: Option<Vec<u8>>,
    /// A map's value.
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

/// NEWSETELEM/GETSETELEM/DELSETELEM's body: one element of `set`.
fn element_attrs(table: &str, set: &str, element: &NftElement) -> Result<Vec<u8>, Error> {
    let mut elem = Vec::new();
    put_nested(&mut elem, NFTA_SET_ELEM_KEY, &value(&element.key));
    if let Some(end) = &element.key_end {
        put_nested(&mut elem, NFTA_SET_ELEM_KEY_END, &value(end));
    }
    if let Some(data) = &element.data {
        put_nested(&mut elem, NFTA_SET_ELEM_DATA, &value(data));
    }
    if let Some(c) = &element.comment {
        let udata = comment_udata(c)
            .ok_or_else(|| Error::Invalid(format!("nft element comment too long: {c}")))?;
        put_attr(&mut elem, NFTA_SET_ELEM_USERDATA, &udata);
    }
    let mut list = Vec::new();
    put_nested(&mut list, NFTA_LIST_ELEM, &elem);
    let mut body = set_attrs(table, set);
    put_nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, &list);
    Ok(body)
}

/// The table and set of a set-element message.
fn set_attrs(table: &str, set: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &nul_terminated(table));
    put_attr(&mut body, NFTA_SET_ELEM_LIST_SET, &nul_terminated(set));
    body
}

/// An NFTA_DATA_VALUE's bytes inside the nest `nest`.
fn data_value(nest: &[u8]) -> Option<Vec<u8>> {
    find(nest, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

fn parse_element(elem: &[u8]) -> Option<NftElement> {
    Some(NftElement {
        key: data_value(find(elem, NFTA_SET_ELEM_KEY)?)?,
        key_end: find(elem, NFTA_SET_ELEM_KEY_END).and_then(data_value),
        data: find(elem, NFTA_SET_ELEM_DATA).and_then(data_value),
        comment: find(elem, NFTA_SET_ELEM_USERDATA).and_then(comment),
    })
}

/// The elements of a NEWSETELEM message.
fn parse_elements(msg: &[u8]) -> Vec<NftElement> {
    find(msg, NFTA_SET_ELEM_LIST_ELEMENTS)
        .map(|list| {
            attrs(list)
                .filter(|(kind, _, _)| *kind == NFTA_LIST_ELEM)
                .filter_map(|(_, elem, _)| parse_element(elem))
                .collect()
        })
        .unwrap_or_default()
}

/// The message that deletes `d` from `table`.
fn deletion_msg(table: &str, af: u8, d: &NftDeletion) -> Result<BatchMsg, Error> {
    Ok(match d {
        NftDeletion::Rule { chain, handle } => {
            let mut body = rule_attrs(table, chain);
            put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            BatchMsg::new(nft(NFT_MSG_DELRULE), af, body)
        }
        NftDeletion::Element { set, key, key_end } => {
            let element = NftElement {
                key: key.clone(),
                key_end: key_end.clone(),
                data: None,
                comment: None,
            };
            let body = element_attrs(table, set, &element)?;
            BatchMsg::new(nft(NFT_MSG_DELSETELEM), af, body)
        }
        NftDeletion::Table => BatchMsg::new(nft(NFT_MSG_DELTABLE), af, table_attr(table)),
    })
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
    /// `add set`/`add map` (nothing happens if it is there as asked).
    Set(NftSet),
    /// `create element SET { KEY [: VALUE] [comment ...] }`: EEXIST when
    /// the key is there already (ENOTEMPTY when an interval overlaps one).
    Element {
        set: String,
        element: NftElement,
    },
    /// `flush chain NAME`.
    Flush(String),
    /// `add rule CHAIN EXPRS comment "COMMENT"`: appended.
    Rule {
        chain: String,
        exprs: Vec<NftExpr>,
        comment: Option<String>,
    },
    Delete(NftDeletion),
}

/// NEWSET of `set`, as nft 1.0.6 sends it (`index` is its id in the
/// transaction, which the kernel requires).
fn set_msg(table: &str, af: u8, index: usize, set: &NftSet) -> BatchMsg {
    let (key_type, key_len) = concat_type(&set.key);
    let mut body = Vec::new();
    put_attr(&mut body, NFTA_SET_TABLE, &nul_terminated(table));
    put_attr(&mut body, NFTA_SET_NAME, &nul_terminated(&set.name));
    let flags = if set.interval {
        NFT_SET_CONCAT | NFT_SET_INTERVAL
    } else if set.data.is_empty() {
        0
    } else {
        NFT_SET_MAP
    };
    put_attr(&mut body, NFTA_SET_FLAGS, &flags.to_be_bytes());
    put_attr(&mut body, NFTA_SET_KEY_TYPE, &key_type.to_be_bytes());
    put_attr(&mut body, NFTA_SET_KEY_LEN, &key_len.to_be_bytes());
    if !set.data.is_empty() {
        let (data_type, data_len) = concat_type(&set.data);
        put_attr(&mut body, NFTA_SET_DATA_TYPE, &data_type.to_be_bytes());
        put_attr(&mut body, NFTA_SET_DATA_LEN, &data_len.to_be_bytes());
    }
    put_attr(&mut body, NFTA_SET_ID, &(index as u32).to_be_bytes());
    if set.interval {
        let mut fields = Vec::new();
        for f in &set.key {
            let mut field = Vec::new();
            put_attr(&mut field, NFTA_SET_FIELD_LEN, &f.width().to_be_bytes());
            put_nested(&mut fields, NFTA_LIST_ELEM, &field);
        }
        let mut desc = Vec::new();
        put_nested(&mut desc, NFTA_SET_DESC_CONCAT, &fields);
        put_nested(&mut body, NFTA_SET_DESC, &desc);
    }
    let udata = if set.interval {
        INTERVAL_SET_UDATA
    } else {
        MAP_UDATA
    };
    put_attr(&mut body, NFTA_SET_USERDATA, udata);
    BatchMsg::new(nft(NFT_MSG_NEWSET), af, body)
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
        NftCommand::Set(set) => set_msg(table, af, index, set),
        NftCommand::Element { set, element } => {
            let mut msg = BatchMsg::new(
                nft(NFT_MSG_NEWSETELEM),
                af,
                element_attrs(table, set, element)?,
            );
            msg.flags = NLM_F_EXCL;
            msg
        }
        NftCommand::Delete(d) => return deletion_msg(table, af, d),
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

    /// The ruleset's generation now: pass it to [`NftTable::apply`].
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

    /// The element of `set` whose key (and range end) is exactly this;
    /// None when the table, set or element is not there.
    pub fn element(
        &mut self,
        set: &str,
        key: &[u8],
        key_end: Option<&[u8]>,
    ) -> Result<Option<NftElement>, Error> {
        let wanted = NftElement {
            key: key.to_vec(),
            key_end: key_end.map(<[u8]>::to_vec),
            data: None,
            comment: None,
        };
        let body = element_attrs(&self.name, set, &wanted)?;
        let mut found = Vec::new();
        match self.nl.exchange(
            nft(NFT_MSG_GETSETELEM),
            NLM_F_REQUEST | NLM_F_ACK,
            self.af,
            &body,
            "get an nft set element",
            |m| found.extend(parse_elements(m)),
        ) {
            // An interval set answers with the element holding the key,
            // which need not be this one.
            Ok(()) => Ok(found
                .into_iter()
                .find(|e| e.key == wanted.key && e.key_end == wanted.key_end)),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Visit the elements of `set` until `visit` breaks; a missing table or
    /// set has none. As [`NftTable::walk`], on a socket of its own.
    pub fn walk_elements(
        &self,
        set: &str,
        mut visit: impl FnMut(NftElement) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let walked = Nfnl::new()?.exchange_until(
            nft(NFT_MSG_GETSETELEM),
            NLM_F_REQUEST | NLM_F_DUMP,
            self.af,
            &set_attrs(&self.name, set),
            "walk an nft set",
            |m| parse_elements(m).into_iter().any(|e| visit(e).is_break()),
        );
        match walked {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// The socket, for a caller that closes it elsewhere (see
    /// `weft_firewall::hold_in_background`).
    pub fn into_socket(self) -> Result<OwnedFd, Error> {
        self.nl.into_socket()
    }

    /// Run `commands` in one transaction, as `nft -f` runs a script: all
    /// of them or, on an error, none. With a `generation`, only if the
    /// ruleset is still at it: else nothing changes and the error's errno
    /// is ERESTART (read again, decide again). Returns the rules added,
    /// with the handles the kernel gave them.
    pub fn apply(
        &mut self,
        generation: Option<u32>,
        commands: &[NftCommand],
    ) -> Result<Vec<NftRuleRef>, Error> {
        let msgs = commands
            .iter()
            .enumerate()
            .map(|(i, c)| command_msg(&self.name, self.af, i, c))
            .collect::<Result<Vec<_>, _>>()?;
        let op = format!("write nft table {}", self.name);
        let mut added = Vec::new();
        let new_rule = nft(NFT_MSG_NEWRULE);
        self.nl.batch_echoed(
            NFNL_SUBSYS_NFTABLES,
            generation,
            &msgs,
            &op,
            |_, kind, m| {
                if kind == new_rule {
                    added.extend(parse_rule(m));
                }
            },
        )?;
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
