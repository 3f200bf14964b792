//! nftables: the backend probe and rule lookup and deletion by comment.
//! Rules are written with `nft -f`; reading and deleting them goes over
//! netlink (weft_netlink), since every `nft` exec loads libnftables and
//! the table into its cache, which made up most of a portmap DEL.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use weft_cni::Error;
use weft_netlink::{nf_tables_usable, nft_list_rules, NftCommand, NftDeletion, NftTable};

use crate::hold::hold_in_background;

use crate::run::fail;

pub use weft_netlink::NftRuleRef as NftRule;

/// Whether `nft` is there and may change the ruleset here (the default
/// backend when a config names none): an executable `nft` on PATH, and
/// nf_tables answering us over netlink (it refuses without CAP_NET_ADMIN).
/// No exec: the probe used to cost a whole `nft -c` run on every call.
pub fn nft_works() -> bool {
    nft_on_path() && nf_tables_usable()
}

fn nft_on_path() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| {
        Path::new(&dir)
            .join("nft")
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn kernel(e: weft_netlink::Error) -> Error {
    fail(e.to_string())
}

/// Every rule of `family`/`table`; None when the table does not exist.
pub fn nft_rules(family: &str, table: &str) -> Result<Option<Vec<NftRule>>, Error> {
    nft_list_rules(family, table).map_err(kernel)
}

/// Handles of the rules of `table`/`chain` whose comment `matches`; a
/// missing table or chain has none.
pub fn nft_handles(
    family: &str,
    table: &str,
    chain: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<Vec<u64>, Error> {
    Ok(nft_rules(family, table)?
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.chain == chain && r.comment.as_deref().is_some_and(&matches))
        .map(|r| r.handle)
        .collect())
}

/// Delete, in one transaction, the rules of `table`/`chain` whose comment
/// `matches`; the socket goes to [`hold_in_background`], since closing it
/// would wait for the kernel to free them.
pub fn nft_delete_where(
    family: &str,
    table: &str,
    chain: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    let deletions: Vec<NftCommand> = nft_handles(family, table, chain, matches)?
        .into_iter()
        .map(|handle| {
            NftCommand::Delete(NftDeletion::Rule {
                chain: chain.into(),
                handle,
            })
        })
        .collect();
    if deletions.is_empty() {
        return Ok(());
    }
    let mut nft = NftTable::new(family, table).map_err(kernel)?;
    nft.apply(None, &deletions).map_err(kernel)?;
    if let Ok(socket) = nft.into_socket() {
        hold_in_background(socket);
    }
    Ok(())
}
