//! nf_tables over netlink, only what DEL and GC need: list one table's
//! rules (chain, handle, comment) and delete rules by handle or the whole
//! table in one transaction. Rules are still written by `nft -f`; reading
//! and deleting them this way spares each DEL two or three `nft` execs
//! (each one loads libnftables and the table into its cache).

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use nix::errno::Errno;

use crate::nfnetlink::{find, put_attr, Nfnl};
use crate::Error;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NFTA_TABLE_NAME: u16 = 1;
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

fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
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
    let msgs: Vec<(u16, u8, Vec<u8>)> = rules
        .iter()
        .map(|(chain, handle)| {
            let mut body = Vec::new();
            put_attr(&mut body, NFTA_RULE_TABLE, &nul_terminated(table));
            put_attr(&mut body, NFTA_RULE_CHAIN, &nul_terminated(chain));
            put_attr(&mut body, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            (nft(NFT_MSG_DELRULE), af, body)
        })
        .collect();
    let op = format!(
        "delete {} rules of nft table {family_name} {table}",
        rules.len()
    );
    Nfnl::new()?.batch(NFNL_SUBSYS_NFTABLES, &msgs, &op)
}

/// Delete `family`/`table` with everything in it.
pub fn nft_delete_table(family_name: &str, table: &str) -> Result<(), Error> {
    let msgs = [(
        nft(NFT_MSG_DELTABLE),
        family(family_name)?,
        table_attr(table),
    )];
    let op = format!("delete nft table {family_name} {table}");
    Nfnl::new()?.batch(NFNL_SUBSYS_NFTABLES, &msgs, &op)
}
