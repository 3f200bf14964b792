//! What ADD made, per attachment, so DEL and CHECK go straight to it
//! instead of listing every attachment's rules (nftables; the iptables
//! backend finds an attachment by its one jump): a small root-only file
//! under /run/weft/portmap named by the attachment key, replaced
//! atomically (flannel-env's temp file and rename, without fsync), removed
//! by DEL.
//!
//! A record is only a shortcut. Everything in it is verified before it is
//! used (an nft rule's handle or a set element's key against the key in
//! its comment, within one transaction that fails if the ruleset changed
//! meanwhile), and a missing,
//! pending or unreadable record means "look it up the slow way". So the
//! worst a stale or foreign record can cost is time, never another
//! attachment's rule.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use weft_cni::Error;

const DIR: &str = "/run/weft/portmap";

/// One nft rule ADD made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHandle {
    pub chain: String,
    pub handle: u64,
}

/// One set element ADD made, by its set and key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElementHandle {
    pub set: String,
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
}

/// What an nftables ADD made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NftRecord {
    pub rules: Vec<RuleHandle>,
    pub elements: Vec<ElementHandle>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Record {
    /// Written before an ADD replaces a record: if that ADD dies, nothing
    /// recorded can be trusted to be complete.
    Pending,
    Nft(NftRecord),
}

fn path(key: &str) -> PathBuf {
    PathBuf::from(DIR).join(key)
}

/// The record of `key`, when there is a usable one.
pub fn load(key: &str) -> Option<Record> {
    let text = std::fs::read(path(key)).ok()?;
    serde_json::from_slice(&text)
        .ok()
        .filter(|r| *r != Record::Pending)
}

fn write(key: &str, record: &Record) -> Result<(), Error> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {DIR}"), &e);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(DIR)
        .map_err(|e| io("cannot create", e))?;
    let data = serde_json::to_vec(record)
        .map_err(|e| Error::io("cannot encode a portmap record", &std::io::Error::other(e)))?;
    // No fsync: a record only mirrors kernel state, which a crash loses
    // too (and an unreadable record means "look the slow way").
    flannel_env::write_replacing(&path(key), &data, 0o600)
        .map_err(|e| io("cannot write a record in", e))
}

/// Remove `key`'s record; a missing one is fine.
pub fn forget(key: &str) {
    match std::fs::remove_file(path(key)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            weft_cni::log::warn(&format!("cannot remove the portmap record of {key}: {e}"))
        }
        _ => {}
    }
}

/// GC: remove the records whose key is `doomed`.
pub fn forget_where(doomed: &dyn Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(DIR) else {
        return;
    };
    for name in entries.flatten().map(|e| e.file_name()) {
        let name = name.to_string_lossy();
        if !flannel_env::is_temp_name(&name) && doomed(&name) {
            forget(&name);
        }
    }
}

/// One ADD's recording. The file says "pending" from before the rules are
/// made until they are recorded, so an ADD that dies in between leaves no
/// record that looks complete. A file that already exists (an ADD again,
/// or one that died) stays pending: this ADD's rules would not be all of
/// the attachment's, and DEL looks the slow way.
pub struct Recording {
    key: String,
    replaces: bool,
    /// Whether the pending mark was written (else record nothing).
    marked: bool,
}

pub fn begin(key: &str) -> Result<Recording, Error> {
    let replaces = path(key).exists();
    let marked = match write(key, &Record::Pending) {
        Ok(()) => true,
        // An old record must not survive as if complete.
        Err(e) if replaces => {
            std::fs::remove_file(path(key)).map_err(|_| e)?;
            false
        }
        Err(e) => {
            weft_cni::log::warn(&format!("{e}; DEL will look this attachment up"));
            false
        }
    };
    Ok(Recording {
        key: key.to_string(),
        replaces,
        marked,
    })
}

impl Recording {
    /// ADD succeeded; `made` is what it made, when that is fully known
    /// (else the record stays pending).
    pub fn finish(self, made: Option<Record>) {
        if let (true, false, Some(record)) = (self.marked, self.replaces, made) {
            if let Err(e) = write(&self.key, &record) {
                weft_cni::log::warn(&format!("{e}; DEL will look this attachment up"));
            }
        }
    }

    /// ADD failed and made nothing.
    pub fn abandon(self) {
        if self.marked && !self.replaces {
            forget(&self.key);
        }
    }
}
