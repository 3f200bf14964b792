//! nf_tables over netlink, for what a plugin must do at a cost that does
//! not grow with the ruleset (`nft` loads whole tables into its cache for
//! a listing, and for `--echo`): look one rule up by handle, walk a chain
//! and stop early, see the rules another process's transaction just added
//! (with their handles), and delete rules or a table in one transaction
//! that the kernel refuses (ERESTART) if the ruleset changed since a given
//! generation, so what was read is still what gets deleted.

use std::ops::ControlFlow;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use nix::errno::Errno;

use crate::nfnl::{find, message, put, put_str, text, Nfnl, Reply};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_GETGEN: u16 = 16;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_BATCH_GENID: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_GEN_ID: u16 = 1;
/// libnftnl's user-data TLV type of a rule's comment.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFNLGRP_NFTABLES: u32 = 7;
/// Room for a burst of other processes' changes while ours commits.
const WATCH_RCVBUF: usize = 4 << 20;

/// An nf_tables family (NFPROTO_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftFamily {
    Inet,
    Ip,
    Ip6,
    Bridge,
}

impl NftFamily {
    fn nfproto(self) -> u8 {
        match self {
            NftFamily::Inet => 1,
            NftFamily::Ip => 2,
            NftFamily::Bridge => 7,
            NftFamily::Ip6 => 10,
        }
    }
}

/// One rule, as much of it as lookups by comment need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// One change of a [`NftTable::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftChange {
    DeleteRule { chain: String, handle: u64 },
    DeleteTable,
}

fn kind(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The comment in a rule's user data (a list of type, length, value).
fn comment(mut udata: &[u8]) -> Option<String> {
    while let [t, len, rest @ ..] = udata {
        let value = rest.get(..usize::from(*len))?;
        if *t == NFTNL_UDATA_RULE_COMMENT {
            return Some(text(value));
        }
        udata = &rest[value.len()..];
    }
    None
}

/// (table, rule) of one NEWRULE payload.
fn parse_rule(payload: &[u8]) -> Option<(String, NftRule)> {
    let table = text(find(payload, NFTA_RULE_TABLE)?);
    let handle = u64::from_be_bytes(find(payload, NFTA_RULE_HANDLE)?.try_into().ok()?);
    Some((
        table,
        NftRule {
            chain: text(find(payload, NFTA_RULE_CHAIN)?),
            handle,
            comment: find(payload, NFTA_RULE_USERDATA).and_then(comment),
        },
    ))
}

/// One table, by family and name. Nothing is cached: every call asks the
/// kernel.
pub struct NftTable {
    family: NftFamily,
    name: String,
    nl: Nfnl,
}

impl NftTable {
    pub fn new(family: NftFamily, name: &str) -> Result<NftTable, Error> {
        Ok(NftTable {
            family,
            name: name.to_string(),
            nl: Nfnl::new()?,
        })
    }

    fn rule_attrs(&self, chain: &str) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, NFTA_RULE_TABLE, &self.name);
        put_str(&mut body, NFTA_RULE_CHAIN, chain);
        body
    }

    /// The ruleset's generation now: pass it to [`NftTable::commit`].
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut generation = None;
        self.nl.exchange(
            |seq| {
                message(
                    kind(NFT_MSG_GETGEN),
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    0,
                    0,
                    &[],
                )
            },
            "get nf_tables generation",
            |payload| {
                generation = find(payload, NFTA_GEN_ID)
                    .and_then(|v| v.try_into().ok())
                    .map(u32::from_be_bytes);
            },
        )?;
        generation.ok_or_else(|| Error::Decode("NEWGEN without NFTA_GEN_ID".into()))
    }

    pub fn exists(&mut self) -> Result<bool, Error> {
        let mut body = Vec::new();
        put_str(&mut body, NFTA_TABLE_NAME, &self.name);
        let family = self.family.nfproto();
        match self.nl.exchange(
            |seq| {
                message(
                    kind(NFT_MSG_GETTABLE),
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    family,
                    0,
                    &body,
                )
            },
            "get nf_tables table",
            |_| {},
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The rule `handle` of `chain`; None when the table, chain or rule is
    /// not there.
    pub fn rule(&mut self, chain: &str, handle: u64) -> Result<Option<NftRule>, Error> {
        let mut body = self.rule_attrs(chain);
        put(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        let family = self.family.nfproto();
        let mut found = None;
        match self.nl.exchange(
            |seq| {
                message(
                    kind(NFT_MSG_GETRULE),
                    NLM_F_REQUEST | NLM_F_ACK,
                    seq,
                    family,
                    0,
                    &body,
                )
            },
            "get nf_tables rule",
            |payload| found = parse_rule(payload).map(|(_, r)| r),
        ) {
            Ok(()) => Ok(found),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Visit `chain`'s rules in order until `visit` breaks; a missing table
    /// or chain has none. The dump runs on its own socket, dropped when the
    /// walk stops early, so the kernel never builds more of it than was read.
    pub fn walk(
        &self,
        chain: &str,
        mut visit: impl FnMut(NftRule) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let body = self.rule_attrs(chain);
        let family = self.family.nfproto();
        let mut nl = Nfnl::new()?;
        let seq = nl.next_seq();
        let request = message(
            kind(NFT_MSG_GETRULE),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
            &body,
        );
        nl.send(&request, "dump nf_tables rules")?;
        let walked = nl.replies(
            "dump nf_tables rules",
            |s| s == seq,
            |reply| {
                Ok(match reply {
                    Reply::Data { payload, .. } => match parse_rule(payload) {
                        Some((_, rule)) => visit(rule).is_break(),
                        None => false,
                    },
                    Reply::Ack(_) | Reply::Done => true,
                })
            },
        );
        match walked {
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(()),
            other => other,
        }
    }

    /// Apply `changes` in one transaction, only if the ruleset is still at
    /// `generation`: else nothing changes and the error's errno is
    /// ERESTART (read again, decide again).
    pub fn commit(&mut self, generation: u32, changes: &[NftChange]) -> Result<(), Error> {
        let family = self.family.nfproto();
        let first = self.nl.next_seq();
        let mut genid = Vec::new();
        put(&mut genid, NFNL_BATCH_GENID, &generation.to_be_bytes());
        let mut batch = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            0,
            NFNL_SUBSYS_NFTABLES,
            &genid,
        );
        let mut pending = Vec::new();
        for change in changes {
            let seq = self.nl.next_seq();
            let (msg, body) = match change {
                NftChange::DeleteRule { chain, handle } => {
                    let mut body = self.rule_attrs(chain);
                    put(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
                    (NFT_MSG_DELRULE, body)
                }
                NftChange::DeleteTable => {
                    let mut body = Vec::new();
                    put_str(&mut body, NFTA_TABLE_NAME, &self.name);
                    (NFT_MSG_DELTABLE, body)
                }
            };
            batch.extend(message(
                kind(msg),
                NLM_F_REQUEST | NLM_F_ACK,
                seq,
                family,
                0,
                &body,
            ));
            pending.push(seq);
        }
        let end = self.nl.next_seq();
        batch.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        ));
        self.nl.send(&batch, "nf_tables transaction")?;
        if pending.is_empty() {
            return Ok(());
        }
        // Every change is acked; a refused generation is one error for the
        // batch's first message.
        self.nl.replies(
            "nf_tables transaction",
            |s| s >= first && s <= end,
            |reply| {
                if let Reply::Ack(seq) = reply {
                    pending.retain(|s| *s != seq);
                }
                Ok(pending.is_empty())
            },
        )
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
            .map_err(|e| Error::io("size nf_tables watch buffer", e))?;
        sock.add_membership(NFNLGRP_NFTABLES)
            .map_err(|e| Error::io("join NFNLGRP_NFTABLES", e))?;
        sock.set_non_blocking(true)
            .map_err(|e| Error::io("make nf_tables watch non-blocking", e))?;
        Ok(NftWatch { nl })
    }

    /// The rules added to `family` `name` since [`NftWatch::new`], with
    /// their handles. The kernel sends these notifications before it acks a
    /// transaction, so they are all here once the adding process is done.
    /// An error (ENOBUFS) when some were lost.
    pub fn added(&mut self, family: NftFamily, name: &str) -> Result<Vec<NftRule>, Error> {
        let mut rules = Vec::new();
        self.nl.replies(
            "read nf_tables notifications",
            |_| true,
            |reply| {
                if let Reply::Data {
                    kind: k,
                    family: f,
                    payload,
                } = reply
                {
                    match parse_rule(payload) {
                        Some((table, rule))
                            if k == kind(NFT_MSG_NEWRULE)
                                && f == family.nfproto()
                                && table == name =>
                        {
                            rules.push(rule)
                        }
                        _ => {}
                    }
                }
                Ok(false)
            },
        )?;
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_is_found_in_user_data() {
        let udata = [1u8, 2, 9, 9, 0, 4, b'a', b'b', b'c', 0];
        assert_eq!(comment(&udata).as_deref(), Some("abc"));
        assert_eq!(comment(&[0u8, 9, b'a']), None);
        assert_eq!(comment(&[]), None);
        let mut payload = Vec::new();
        put_str(&mut payload, NFTA_RULE_TABLE, "t");
        put_str(&mut payload, NFTA_RULE_CHAIN, "c");
        put(&mut payload, NFTA_RULE_HANDLE, &7u64.to_be_bytes());
        put(&mut payload, NFTA_RULE_USERDATA, &udata);
        let (table, rule) = parse_rule(&payload).unwrap_or_else(|| unreachable!());
        assert_eq!(table, "t");
        assert_eq!(rule.chain, "c");
        assert_eq!(rule.handle, 7);
        assert_eq!(rule.comment.as_deref(), Some("abc"));
    }
}
