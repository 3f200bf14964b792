//! The original values ADD changed, kept where the reference keeps them:
//! `<dataDir>/<containerID>_<ifname>.json`, JSON indented by one space
//! with the keys `mac`, `promisc`, `mtu`, `allmulti`, `txQLen` (only those
//! configured). weft adds `sysctl` (the reference never restores sysctls)
//! and `network` (so GC only touches its own network's files); the
//! reference ignores both when it reads a weft file, and weft reads the
//! reference's files as they are.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_cni::Error;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backup {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    pub txqlen: Option<u32>,
    /// Original values by path under /proc/sys (slash form).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

pub fn path(data_dir: &Path, container_id: &str, ifname: &str) -> PathBuf {
    data_dir.join(format!("{container_id}_{ifname}.json"))
}

/// Read a backup; a missing or unreadable file is None (DEL then has
/// nothing to restore, as in the reference).
pub fn read(path: &Path) -> Option<Backup> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Write a backup, failing if one exists (the first ADD's originals win).
/// Returns false when the file was already there.
pub fn create(path: &Path, backup: &Backup) -> Result<bool, Error> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), &e))?;
    }
    let mut text = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(
        &mut text,
        serde_json::ser::PrettyFormatter::with_indent(b" "),
    );
    backup.serialize(&mut ser)?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io(format!("create {}", path.display()), &e)),
    };
    // No fsync: the default dataDir is tmpfs and the pods die with a
    // reboot anyway; a torn file reads as "no backup", as a missing one.
    if let Err(e) = file.write_all(&text) {
        let _ = std::fs::remove_file(path);
        return Err(Error::io(format!("write {}", path.display()), &e));
    }
    Ok(true)
}

pub fn remove(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_format_round_trips() {
        // What the reference wrote [obs].
        let go = r#"{
 "mac": "da:4d:00:11:22:33",
 "promisc": false,
 "mtu": 1500,
 "allmulti": false
}"#;
        let b: Backup = serde_json::from_str(go).unwrap();
        assert_eq!(b.mtu, Some(1500));
        assert_eq!(b.promisc, Some(false));
        let dir = std::env::temp_dir().join(format!("weft-tuning-unit-{}", std::process::id()));
        let p = path(&dir, "cid", "eth0");
        let _ = std::fs::remove_file(&p);
        assert!(create(&p, &b).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), go);
        assert!(!create(&p, &Backup::default()).unwrap());
        assert_eq!(read(&p), Some(b));
        remove(&p).unwrap();
        remove(&p).unwrap();
        let _ = std::fs::remove_dir(&dir);
    }
}
