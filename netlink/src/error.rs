//! One error type for the whole crate. Callers branch on `errno()`, never on
//! message text.

use nix::errno::Errno;

#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The kernel (netlink or a syscall) refused an operation.
    /// `extack` is the kernel's extended-ack message when it sent one.
    #[error("{op}: {}{}", errno_text(*.errno), extack_text(.extack))]
    Os {
        op: String,
        errno: Errno,
        extack: Option<String>,
    },
    /// A reply could not be decoded.
    #[error("netlink decode: {0}")]
    Decode(String),
    /// The kernel answered something that does not fit the request.
    #[error("netlink protocol: {0}")]
    Protocol(String),
    /// The caller passed something we refuse to send (bad name, bad key...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Sending on or receiving from a netlink socket failed: the socket
    /// itself is broken (or out of sync), not the request. Distinct from
    /// [`Error::Os`], which is also a kernel NACK: a caller reopens the
    /// socket on this one, and only on this one.
    #[error("{op}: netlink socket broken: {source}")]
    Socket {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotNetns(String),
    /// The helper thread used by `Netns::run` panicked.
    #[error("netns worker thread panicked")]
    ThreadPanicked,
}

fn errno_text(e: Errno) -> String {
    format!("{} ({})", e.desc(), e as i32)
}

fn extack_text(m: &Option<String>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(": {m}"),
        _ => String::new(),
    }
}

impl Error {
    pub fn os(op: impl Into<String>, errno: Errno) -> Self {
        Error::Os {
            op: op.into(),
            errno,
            extack: None,
        }
    }

    /// Wrap an io::Error; it becomes `Os` when it carries an errno so that
    /// `errno()` works the same for syscalls and netlink.
    pub fn io(op: impl Into<String>, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Error::os(op, Errno::from_raw(n)),
            None => Error::Io {
                op: op.into(),
                source: e,
            },
        }
    }

    /// A send/recv failure on a netlink socket (see [`Error::Socket`]).
    pub fn socket(op: impl Into<String>, e: std::io::Error) -> Self {
        Error::Socket {
            op: op.into(),
            source: e,
        }
    }

    /// The socket is broken: reopen it before the next request.
    pub fn is_socket_broken(&self) -> bool {
        matches!(self, Error::Socket { .. })
    }

    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            Error::Io { source, .. } | Error::Socket { source, .. } => {
                source.raw_os_error().map(Errno::from_raw)
            }
            _ => None,
        }
    }

    /// EEXIST: the link/address/route is already there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The object (or its namespace) is gone: ENODEV, ENOENT, ESRCH, EADDRNOTAVAIL.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
        )
    }

    /// Replace the operation description, keeping errno and extack; lets a
    /// caller say "add address 10.244.0.2/24 on eth0" instead of "#7".
    pub fn with_op(self, new_op: impl Into<String>) -> Self {
        match self {
            Error::Os { errno, extack, .. } => Error::Os {
                op: new_op.into(),
                errno,
                extack,
            },
            Error::Io { source, .. } => Error::Io {
                op: new_op.into(),
                source,
            },
            Error::Socket { source, .. } => Error::Socket {
                op: new_op.into(),
                source,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(Error::os("x", Errno::EEXIST).is_exists());
        assert!(!Error::os("x", Errno::EEXIST).is_not_found());
        for e in [
            Errno::ENODEV,
            Errno::ENOENT,
            Errno::ESRCH,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(Error::os("x", e).is_not_found());
        }
        assert!(Error::io("open", std::io::Error::from_raw_os_error(libc::ENOENT)).is_not_found());
        assert_eq!(Error::Decode("bad".into()).errno(), None);
        // A broken socket is its own kind; a NACK with the same errno is not.
        let broken = Error::socket("send", std::io::Error::from_raw_os_error(libc::EBADF));
        assert!(broken.is_socket_broken());
        assert_eq!(broken.errno(), Some(Errno::EBADF));
        assert!(broken.with_op("other").is_socket_broken());
        assert!(!Error::os("x", Errno::EBADF).is_socket_broken());
    }

    #[test]
    fn display_includes_op_errno_and_extack() {
        let e = Error::Os {
            op: "add address 10.244.0.2/24 on eth0".into(),
            errno: Errno::EEXIST,
            extack: Some("Address already assigned".into()),
        };
        let s = e.to_string();
        assert!(s.starts_with("add address 10.244.0.2/24 on eth0: "), "{s}");
        assert!(s.contains("(17)"), "{s}");
        assert!(s.ends_with(": Address already assigned"), "{s}");
        let moved = e.with_op("other");
        assert!(moved.is_exists());
        assert!(moved.to_string().starts_with("other: "));
    }
}
