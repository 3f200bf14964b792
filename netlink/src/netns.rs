//! Network namespace handles and sysctl access.
//!
//! The calling thread never changes namespace: work that must happen "inside"
//! a namespace (sysctl writes, socket creation) runs on a short-lived helper
//! thread that calls setns() and then exits, taking the namespace with it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};

use crate::Error;

/// The current *thread's* namespace (not /proc/self, which is the main thread's).
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// An open network namespace file (e.g. /run/netns/foo or /proc/<pid>/ns/net).
/// Keeping the file open keeps the namespace alive.
#[derive(Debug)]
pub struct Netns {
    file: File,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// Open a network namespace by path. A missing path yields errno
    /// ENOENT; anything else that is not a network namespace (a plain file
    /// left behind after its bind mount went, another namespace type) yields
    /// [`Error::NotNetns`].
    pub fn open(path: &Path) -> Result<Netns, Error> {
        let op = || format!("open netns {}", path.display());
        let file = File::open(path).map_err(|e| Error::io(op(), e))?;
        let meta = file.metadata().map_err(|e| Error::io(op(), e))?;
        // Every namespace file lives on nsfs, the device of our own.
        let own = std::fs::metadata(THREAD_NETNS).map_err(|e| Error::io(op(), e))?;
        let is_netns = meta.dev() == own.dev()
            && match ns_type(&file) {
                Ok(kind) => kind == CloneFlags::CLONE_NEWNET.bits(),
                // Kernels before 4.11 cannot tell the type; setns will.
                Err(Errno::ENOTTY) => true,
                Err(e) => return Err(Error::os(op(), e)),
            };
        if !is_netns {
            return Err(Error::NotNetns(path.display().to_string()));
        }
        Ok(Netns {
            dev: meta.dev(),
            ino: meta.ino(),
            file,
        })
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<Netns, Error> {
        Self::open(Path::new(THREAD_NETNS))
    }

    /// Whether this is the namespace the calling thread is in.
    pub fn is_current(&self) -> Result<bool, Error> {
        let meta = std::fs::metadata(THREAD_NETNS)
            .map_err(|e| Error::io(format!("stat {THREAD_NETNS}"), e))?;
        Ok(meta.dev() == self.dev && meta.ino() == self.ino)
    }

    /// Namespace identity (device, inode); equal for two handles on the same
    /// namespace.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Moves the calling thread into this namespace for the rest of its
    /// life. Only for a single-threaded, short-lived plugin whose remaining
    /// work all belongs in this namespace (tuning): it saves the hand-off to
    /// a helper thread that [`Netns::run`] makes, and on a busy node every
    /// new thread waits for a CPU. Never on a thread that is shared, kept,
    /// or has host-namespace work left.
    pub fn enter_for_good(&self) -> Result<(), Error> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::os("setns(CLONE_NEWNET)", e))
    }

    /// Run `f` on a fresh thread that has joined this namespace. The caller's
    /// thread is untouched; the helper thread exits when `f` returns, so a
    /// namespace switch can never leak into other code.
    pub fn run<F, R>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let fd = self.file.as_fd();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("weft-netns".into())
                .spawn_scoped(s, move || -> Result<R, Error> {
                    setns(fd, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Error::os("setns(CLONE_NEWNET)", e))?;
                    Ok(f())
                })
                .map_err(|e| Error::io("spawn netns thread", e))?;
            handle.join().map_err(|_| Error::ThreadPanicked)?
        })
    }
}

/// NS_GET_NSTYPE from linux/nsfs.h: _IO(0xb7, 0x3).
const NS_GET_NSTYPE: u64 = 0xb703;

/// The CLONE_NEW* type of the namespace `file` refers to.
#[allow(unsafe_code)]
fn ns_type(file: &File) -> Result<i32, Errno> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only inspects the fd,
    // which `file` keeps open for the duration of the call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    Errno::result(kind)
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Map "net/ipv4/ip_forward" (or dotted "net.ipv4.ip_forward") to its
/// /proc/sys path. Slash form is preferred because interface names may
/// contain dots ("net/ipv6/conf/eth0.100/accept_ra").
pub(crate) fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let bad = rel.is_empty()
        || rel.starts_with('/')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        || rel.contains('\0');
    if bad {
        return Err(Error::Invalid(format!("bad sysctl key {key:?}")));
    }
    Ok(Path::new("/proc/sys").join(rel))
}

/// Write a sysctl in the calling thread's namespace. For another namespace,
/// call it inside `Netns::run`.
pub fn write_sysctl(key: &str, value: &str) -> Result<(), Error> {
    let path = sysctl_path(key)?;
    let op = || format!("write sysctl {key}={value}");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(op(), e))?;
    f.write_all(value.as_bytes())
        .map_err(|e| Error::io(op(), e))
}

/// Read a sysctl (trailing newline removed).
pub fn read_sysctl(key: &str) -> Result<String, Error> {
    let path = sysctl_path(key)?;
    let mut s = String::new();
    File::open(&path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(format!("read sysctl {key}"), e))?;
    Ok(s.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_paths() -> Result<(), Error> {
        assert_eq!(
            sysctl_path("net/ipv4/ip_forward")?,
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward")?,
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("net/ipv6/conf/eth0.100/accept_ra")?,
            Path::new("/proc/sys/net/ipv6/conf/eth0.100/accept_ra")
        );
        for bad in ["", "/etc/passwd", "net/../../etc", "net//x", "net/./x"] {
            assert!(sysctl_path(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn open_missing_is_enoent() {
        let err = Netns::open(Path::new("/run/netns/does-not-exist-weft"));
        assert!(matches!(err, Err(ref e) if e.errno() == Some(nix::errno::Errno::ENOENT)));
        assert!(err.is_err_and(|e| e.is_not_found()));
    }

    #[test]
    fn open_refuses_what_is_not_a_network_namespace() {
        for path in [
            "/proc/self/ns/uts",
            "/proc/self/ns/mnt",
            "/proc/self/status",
        ] {
            let err = Netns::open(Path::new(path));
            assert!(matches!(err, Err(Error::NotNetns(_))), "{path}: {err:?}");
        }
        assert!(Netns::open(Path::new("/proc/self/ns/net")).is_ok());
    }

    #[test]
    fn current_is_current() -> Result<(), Error> {
        assert!(Netns::current()?.is_current()?);
        Ok(())
    }

    #[test]
    #[ignore = "needs root"]
    fn run_joins_the_namespace() -> Result<(), Error> {
        // Joining even our own namespace needs CAP_SYS_ADMIN.
        if !weft_tests::require_root() {
            return Ok(());
        }
        let ns = Netns::current()?;
        let inner = ns.run(|| Netns::current().map(|n| n.id()))??;
        assert_eq!(inner, ns.id());
        Ok(())
    }

    #[test]
    fn read_sysctl_works() -> Result<(), Error> {
        let v = read_sysctl("net/ipv4/ip_forward")?;
        assert!(v == "0" || v == "1", "{v}");
        Ok(())
    }
}
