//! nftables: the backend probe and rule lookup by comment.

use std::process::{Command as Process, Stdio};

use serde_json::Value;
use weft_cni::Error;

use crate::run::{fail, run};

/// Whether `nft` runs and may change the ruleset here (the default backend
/// when a config names none). A check-only transaction: nothing changes,
/// and unlike `nft list tables`, which loads every rule of every table
/// into nft's cache, its cost does not grow with the ruleset.
pub fn nft_works() -> bool {
    nft_quiet(&["-c", "add", "table", "inet", "weft_probe"])
}

fn nft_quiet(args: &[&str]) -> bool {
    Process::new("nft")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One rule of a listed table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

/// Every rule of `family`/`table`; None when the table does not exist.
pub fn nft_rules(family: &str, table: &str) -> Result<Option<Vec<NftRule>>, Error> {
    let listing = match run("nft", &["-j", "list", "table", family, table], "") {
        Ok(listing) => listing,
        // A check-only delete succeeds only for a table that exists: then
        // the listing itself failed.
        Err(_) if !nft_quiet(&["-c", "delete", "table", family, table]) => return Ok(None),
        Err(e) => return Err(e),
    };
    let parsed: Value = serde_json::from_str(&listing)
        .map_err(|e| fail(format!("cannot parse nft output: {e}")))?;
    let items = parsed.get("nftables").and_then(Value::as_array);
    Ok(Some(
        items
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("rule"))
            .filter_map(|r| {
                Some(NftRule {
                    chain: r.get("chain")?.as_str()?.to_string(),
                    handle: r.get("handle")?.as_u64()?,
                    comment: r.get("comment").and_then(Value::as_str).map(String::from),
                })
            })
            .collect(),
    ))
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

pub fn nft_delete_where(
    family: &str,
    table: &str,
    chain: &str,
    matches: impl Fn(&str) -> bool,
) -> Result<(), Error> {
    let handles = nft_handles(family, table, chain, matches)?;
    if handles.is_empty() {
        return Ok(());
    }
    let script: String = handles
        .iter()
        .map(|h| format!("delete rule {family} {table} {chain} handle {h}\n"))
        .collect();
    run("nft", &["-f", "-"], &script).map(|_| ())
}
