//! The on-disk reservation store, file-compatible with the reference
//! host-local (`plugins/ipam/host-local/backend/disk`):
//!
//! - `<dataDir>/<network>/` (created 0755) holds one file per reserved
//!   address, named by the address (`10.244.1.5`, `fd00::5`), mode 0600,
//!   containing `<containerID>\r\n<ifname>` with no trailing newline. Files
//!   holding only a container ID were written by old versions and still
//!   belong to that container.
//! - `last_reserved_ip.<N>` holds the address last reserved from range set N.
//! - `lock` (created 0750, empty) is `flock(LOCK_EX)`ed by every reader and
//!   writer, ours and the reference's alike; a [`Store`] holds it for its
//!   whole lifetime.
//!
//! Crash safety: a reservation's content is written to a temporary file,
//! fsynced, and then hard-linked to the address's name. `link(2)` never
//! replaces an existing name, so it is the atomic reservation, and a reader
//! sees either no file or a complete one. Temporary files are named
//! `.weft-tmp.*` (never an address), exist only while the lock is held, and
//! leftovers of a crash are removed by the next listing.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use weft_cni::{log, Error};

use crate::range::canonical_ip;

pub const LOCK_FILE: &str = "lock";
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
const TMP_PREFIX: &str = ".weft-tmp.";
/// The reference's separator between container ID and ifname.
const SEP: &str = "\r\n";

/// Who a reservation file says it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Attachment {
        id: String,
        ifname: String,
    },
    /// Written by host-local before ifnames were recorded.
    Legacy {
        id: String,
    },
    /// Empty or unreadable as text (e.g. a reference plugin crashed between
    /// creating the file and writing it).
    Unknown,
}

impl Owner {
    pub fn parse(data: &[u8]) -> Owner {
        let Ok(text) = std::str::from_utf8(data) else {
            return Owner::Unknown;
        };
        let text = text.trim();
        if text.is_empty() {
            return Owner::Unknown;
        }
        match text.split_once(SEP) {
            Some((id, ifname)) => Owner::Attachment {
                id: id.to_string(),
                ifname: ifname.to_string(),
            },
            None => Owner::Legacy {
                id: text.to_string(),
            },
        }
    }

    pub fn is(&self, id: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { id: i, ifname: f } if i == id.trim() && f == ifname)
    }

    pub fn is_legacy(&self, id: &str) -> bool {
        matches!(self, Owner::Legacy { id: i } if i == id.trim())
    }
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Attachment { id, ifname } => write!(f, "container {id} interface {ifname}"),
            Owner::Legacy { id } => write!(f, "container {id}"),
            Owner::Unknown => f.write_str("an unknown owner"),
        }
    }
}

/// One reservation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    /// The file name, as found (normally `ip.to_string()`).
    pub name: String,
    pub owner: Owner,
}

/// A file name that is an address; everything else in the directory
/// (`lock`, `last_reserved_ip.N`, temporaries, strangers) is never a reservation.
pub fn ip_from_name(name: &str) -> Option<IpAddr> {
    name.parse::<IpAddr>().ok()
}

/// The content of a reservation, fsynced under a temporary name, ready to be
/// linked to any number of addresses. Removed when dropped.
pub struct Pending {
    path: PathBuf,
    content: String,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// An open, locked store directory.
pub struct Store {
    dir: PathBuf,
    _lock: Flock<File>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn io_err(context: impl std::fmt::Display, e: &std::io::Error) -> Error {
    Error::io(context, e)
}

impl Store {
    /// Open (creating it if needed) and lock the store directory.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| {
                io_err(
                    format!("cannot create the store directory {}", dir.display()),
                    &e,
                )
            })?;
        Self::lock(dir)
    }

    /// Open and lock the store if its directory exists; `None` if it does
    /// not (nothing was ever reserved there). Nothing is created.
    pub fn open_existing(dir: &Path) -> Result<Option<Store>, Error> {
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => Self::lock(dir).map(Some),
            Ok(_) => Err(Error::io(
                format!("the store path {} is not a directory", dir.display()),
                &std::io::Error::from(ErrorKind::NotADirectory),
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(
                format!("cannot access the store directory {}", dir.display()),
                &e,
            )),
        }
    }

    fn lock(dir: &Path) -> Result<Store, Error> {
        let path = dir.join(LOCK_FILE);
        // O_RDONLY|O_CREAT, mode 0750: what the reference's go-filemutex does.
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_CREAT | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o750),
        )
        .map_err(|e| {
            io_err(
                format!("cannot open the lock file {}", path.display()),
                &std::io::Error::from(e),
            )
        })?;
        let mut file = File::from(fd);
        let lock = loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => break lock,
                Err((f, Errno::EINTR)) => file = f,
                Err((_, e)) => {
                    return Err(io_err(
                        format!("cannot lock {}", path.display()),
                        &std::io::Error::from(e),
                    ));
                }
            }
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every reservation file, plus errors for files that could not be read
    /// (those are reported and otherwise left alone). Temporaries of other
    /// processes are removed on the way: they only live while their writer
    /// holds the lock, which is now ours, so they are left over from a crash.
    pub fn entries(&self) -> Result<(Vec<Entry>, Vec<Error>), Error> {
        let own_tmp = format!("{TMP_PREFIX}{}.", std::process::id());
        let list = fs::read_dir(&self.dir).map_err(|e| {
            io_err(
                format!("cannot list the store directory {}", self.dir.display()),
                &e,
            )
        })?;
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for item in list {
            let item = match item {
                Ok(i) => i,
                Err(e) => {
                    errors.push(io_err(
                        format!("cannot list the store directory {}", self.dir.display()),
                        &e,
                    ));
                    continue;
                }
            };
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with(TMP_PREFIX) && !name.starts_with(&own_tmp) {
                let _ = fs::remove_file(item.path());
                continue;
            }
            let Some(ip) = ip_from_name(&name) else {
                continue;
            };
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match fs::read(item.path()) {
                Ok(data) => entries.push(Entry {
                    ip: canonical_ip(ip),
                    name,
                    owner: Owner::parse(&data),
                }),
                // Released by someone else between listing and reading.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => errors.push(io_err(
                    format!("cannot read the reservation {}", item.path().display()),
                    &e,
                )),
            }
        }
        entries.sort_by_key(|e| e.ip);
        Ok((entries, errors))
    }

    /// Write `<id>\r\n<ifname>` to a fresh temporary file and fsync it.
    pub fn prepare(&self, id: &str, ifname: &str) -> Result<Pending, Error> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{TMP_PREFIX}{}.{n}", std::process::id()));
        let content = format!("{}{SEP}{ifname}", id.trim());
        let pending = Pending { path, content };
        write_synced(&pending.path, pending.content.as_bytes())
            .map_err(|e| io_err(format!("cannot write {}", pending.path.display()), &e))?;
        Ok(pending)
    }

    /// Reserve `ip` with the prepared content. `Ok(false)` if the address is
    /// already reserved. The directory is not synced: call [`Store::sync`].
    pub fn reserve(&self, pending: &Pending, ip: IpAddr) -> Result<bool, Error> {
        let target = self.dir.join(ip.to_string());
        match fs::hard_link(&pending.path, &target) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            // Filesystems without hard links: exclusive create, write, fsync,
            // and remove again on failure. A crash in between can leave a
            // partial file here, which is why linking is preferred.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::EMLINK)
                ) =>
            {
                match write_synced(&target, pending.content.as_bytes()) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
                    Err(e) => {
                        let _ = fs::remove_file(&target);
                        Err(io_err(
                            format!("cannot write the reservation {}", target.display()),
                            &e,
                        ))
                    }
                }
            }
            Err(e) => Err(io_err(
                format!("cannot create the reservation {}", target.display()),
                &e,
            )),
        }
    }

    /// Remove the reservation file `name`; a missing file is success.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let path = self.dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(
                format!("cannot remove the reservation {}", path.display()),
                &e,
            )),
        }
    }

    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let text =
            fs::read_to_string(self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"))).ok()?;
        text.trim().parse::<IpAddr>().ok().map(canonical_ip)
    }

    /// Record the round-robin position of range set `set`, rewritten in
    /// place as the reference does: readers hold the lock, and after a crash
    /// the worst case is an empty or unreadable position, from which
    /// allocation restarts at rangeStart. Not fsynced for the same reason.
    pub fn set_last_reserved(&self, set: usize, ip: IpAddr) -> Result<(), Error> {
        let target = self.dir.join(format!("{LAST_RESERVED_PREFIX}{set}"));
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&target)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()))
            .map_err(|e| io_err(format!("cannot write {}", target.display()), &e))
    }

    /// Make created and removed names durable.
    pub fn sync(&self) -> Result<(), Error> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                io_err(
                    format!("cannot sync the store directory {}", self.dir.display()),
                    &e,
                )
            })
    }

    /// DEL: remove the reservations of (id, ifname); if there are none,
    /// those of legacy files naming only `id`. Returns what was removed.
    /// Keeps going on errors and reports all of them.
    pub fn release(&self, id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let (entries, _unreadable) = self.entries()?;
        let mut mine: Vec<&Entry> = entries.iter().filter(|e| e.owner.is(id, ifname)).collect();
        if mine.is_empty() {
            mine = entries.iter().filter(|e| e.owner.is_legacy(id)).collect();
        }
        self.remove_all(&mine)
    }

    /// GC: remove every reservation not owned by one of `valid`. A legacy
    /// file stays if any valid attachment has its container ID; a file with
    /// no readable owner is released. Only address-named files are touched.
    pub fn gc(&self, valid: &HashSet<(String, String)>) -> Result<Vec<IpAddr>, Error> {
        let (entries, unreadable) = self.entries()?;
        let stale: Vec<&Entry> = entries
            .iter()
            .filter(|e| match &e.owner {
                Owner::Attachment { id, ifname } => !valid.contains(&(id.clone(), ifname.clone())),
                Owner::Legacy { id } => !valid.iter().any(|(v, _)| v == id),
                Owner::Unknown => true,
            })
            .collect();
        match (self.remove_all(&stale), Error::from_list(unreadable)) {
            (Ok(removed), Ok(())) => Ok(removed),
            (Ok(_), Err(e)) => Err(e),
            (Err(a), Err(b)) => Err(Error::Many(vec![a, b])),
            (Err(a), Ok(())) => Err(a),
        }
    }

    fn remove_all(&self, entries: &[&Entry]) -> Result<Vec<IpAddr>, Error> {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for e in entries {
            match self.remove(&e.name) {
                Ok(()) => removed.push(e.ip),
                Err(err) => errors.push(err),
            }
        }
        if !removed.is_empty() {
            if let Err(e) = self.sync() {
                errors.push(e);
            }
        }
        Error::from_list(errors).map(|()| removed)
    }
}

/// Create `path` exclusively with mode 0600, write `data`, fsync.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let result = f.write_all(data).and_then(|()| f.sync_all());
    if result.is_err() {
        drop(f);
        let _ = fs::remove_file(path);
    }
    result
}

pub fn warn_unreadable(errors: &[Error]) {
    for e in errors {
        log::warn(&e.to_string());
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A unique, self-removing directory under the system temp dir.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir()
                .join(format!("weft-hl-{tag}-{}-{n}-{nanos}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn owner_parsing() {
        assert_eq!(
            Owner::parse(b"c1\r\neth0"),
            Owner::Attachment {
                id: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            Owner::parse(b"c1\r\neth0\n"),
            Owner::Attachment {
                id: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(Owner::parse(b"c1"), Owner::Legacy { id: "c1".into() });
        assert_eq!(Owner::parse(b" c1\n"), Owner::Legacy { id: "c1".into() });
        assert_eq!(Owner::parse(b""), Owner::Unknown);
        assert_eq!(Owner::parse(b"\xff\xfe"), Owner::Unknown);
        assert!(Owner::parse(b"c1\r\neth0").is("c1", "eth0"));
        assert!(!Owner::parse(b"c1\r\neth0").is("c1", "eth1"));
        assert!(Owner::parse(b"c1").is_legacy("c1"));
    }

    #[test]
    fn reserve_layout_and_modes() {
        let tmp = TempDir::new("layout");
        let dir = tmp.0.join("data").join("net");
        let store = Store::open(&dir).unwrap();
        let p = store.prepare("c1", "eth0").unwrap();
        assert!(store.reserve(&p, ip("10.0.0.2")).unwrap());
        assert!(!store.reserve(&p, ip("10.0.0.2")).unwrap());
        assert!(store.reserve(&p, ip("fd00::2")).unwrap());
        drop(p);
        store.set_last_reserved(0, ip("10.0.0.2")).unwrap();
        store.set_last_reserved(0, ip("10.0.0.3")).unwrap();
        store.sync().unwrap();
        assert_eq!(
            names(&dir),
            ["10.0.0.2", "fd00::2", "last_reserved_ip.0", "lock"]
        );
        assert_eq!(fs::read(dir.join("10.0.0.2")).unwrap(), b"c1\r\neth0");
        assert_eq!(
            fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(),
            "10.0.0.3"
        );
        assert_eq!(store.last_reserved(0), Some(ip("10.0.0.3")));
        assert_eq!(store.last_reserved(1), None);
        let mode = |n: &str| fs::metadata(dir.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("10.0.0.2"), 0o600);
        assert_eq!(mode("lock") & !0o022, 0o750 & !0o022);
        assert_eq!(fs::metadata(dir.join("lock")).unwrap().len(), 0);
    }

    #[test]
    fn stale_temporaries_are_cleaned_and_never_reservations() {
        let tmp = TempDir::new("stale");
        fs::write(tmp.0.join(".weft-tmp.1.1"), "c1\r\neth0").unwrap();
        let store = Store::open(&tmp.0).unwrap();
        assert!(store.entries().unwrap().0.is_empty());
        assert_eq!(names(&tmp.0), ["lock"]);
        // This process's own pending write survives a listing.
        let _p = store.prepare("c1", "eth0").unwrap();
        assert!(store.entries().unwrap().0.is_empty());
        assert_eq!(names(&tmp.0).len(), 2);
    }

    #[test]
    fn release_prefers_exact_matches_then_legacy() {
        let tmp = TempDir::new("release");
        let store = Store::open(&tmp.0).unwrap();
        fs::write(tmp.0.join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::write(tmp.0.join("10.0.0.3"), "c1\r\neth1").unwrap();
        fs::write(tmp.0.join("10.0.0.4"), "c1").unwrap();
        fs::write(tmp.0.join("10.0.0.5"), "c2\r\neth0").unwrap();
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![ip("10.0.0.2")]);
        assert_eq!(store.release("c1", "eth0").unwrap(), vec![ip("10.0.0.4")]);
        assert!(store.release("c1", "eth0").unwrap().is_empty());
        assert_eq!(names(&tmp.0), ["10.0.0.3", "10.0.0.5", "lock"]);
    }

    #[test]
    fn gc_releases_only_unlisted_address_files() {
        let tmp = TempDir::new("gc");
        let store = Store::open(&tmp.0).unwrap();
        for (name, content) in [
            ("10.0.0.2", "keep\r\neth0"),
            ("10.0.0.3", "keep\r\neth1"),
            ("10.0.0.4", "gone\r\neth0"),
            ("10.0.0.5", "keep"),
            ("10.0.0.6", "gone"),
            ("10.0.0.7", ""),
            ("fd00::8", "gone\r\neth0"),
            ("last_reserved_ip.0", "10.0.0.7"),
            ("notes.txt", "gone\r\neth0"),
            ("10.0.0.300", "gone\r\neth0"),
        ] {
            fs::write(tmp.0.join(name), content).unwrap();
        }
        fs::create_dir(tmp.0.join("10.0.0.9")).unwrap();
        let valid: HashSet<(String, String)> = [("keep".to_string(), "eth0".to_string())]
            .into_iter()
            .collect();
        let mut removed = store.gc(&valid).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            ["10.0.0.3", "10.0.0.4", "10.0.0.6", "10.0.0.7", "fd00::8"].map(ip)
        );
        assert_eq!(
            names(&tmp.0),
            [
                "10.0.0.2",
                "10.0.0.300",
                "10.0.0.5",
                "10.0.0.9",
                "last_reserved_ip.0",
                "lock",
                "notes.txt"
            ]
        );
        // An empty valid set releases every reservation, and nothing else.
        store.gc(&HashSet::new()).unwrap();
        assert_eq!(
            names(&tmp.0),
            [
                "10.0.0.300",
                "10.0.0.9",
                "last_reserved_ip.0",
                "lock",
                "notes.txt"
            ]
        );
    }

    #[test]
    fn open_existing_creates_nothing() {
        let tmp = TempDir::new("existing");
        assert!(Store::open_existing(&tmp.0.join("nope")).unwrap().is_none());
        assert!(!tmp.0.join("nope").exists());
        fs::write(tmp.0.join("file"), "").unwrap();
        assert_eq!(
            Store::open_existing(&tmp.0.join("file"))
                .err()
                .unwrap()
                .code(),
            5
        );
        assert!(Store::open_existing(&tmp.0).unwrap().is_some());
    }

    #[test]
    fn the_lock_excludes_other_openers() {
        let tmp = TempDir::new("lock");
        let store = Store::open(&tmp.0).unwrap();
        let dir = tmp.0.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _s = Store::open(&dir).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
        drop(store);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }
}
