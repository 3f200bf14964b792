//! nfnetlink (NETLINK_NETFILTER) plumbing shared by ctnetlink and
//! nf_tables: messages with an nfgenmsg header, attribute walking, and one
//! blocking socket that reads the replies to one request at a time.

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};
use nix::errno::Errno;

use crate::socket::split;
use crate::Error;

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const NFGENMSG_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
const RECV_BUF: usize = 64 * 1024;

/// One attribute: (type without flags, payload, whole attribute bytes).
pub(crate) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?));
        let kind = u16::from_ne_bytes(b.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
        let whole = b.get(..len).filter(|_| len >= 4)?;
        b = b.get((len + 3) & !3..).unwrap_or_default();
        Some((kind, &whole[4..], whole))
    })
}

pub(crate) fn find(b: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(b).find(|(k, _, _)| *k == kind).map(|(_, v, _)| v)
}

/// Append one attribute, padded to 4 bytes.
pub(crate) fn put(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize((buf.len() + 3) & !3, 0);
}

/// A NUL-terminated string attribute, as the kernel expects names.
pub(crate) fn put_str(buf: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    put(buf, kind, &v);
}

/// A string attribute's text without its NUL.
pub(crate) fn text(v: &[u8]) -> String {
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// One message: nlmsghdr, nfgenmsg (family, version 0, res_id), body.
pub(crate) fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    body: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// What one reply message is.
pub(crate) enum Reply<'a> {
    /// A data message: its type, nfgenmsg family and payload after the
    /// nfgenmsg.
    Data {
        kind: u16,
        family: u8,
        payload: &'a [u8],
    },
    /// NLMSG_ERROR with code 0, for `seq`.
    Ack(u32),
    Done,
}

pub(crate) struct Nfnl {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Nfnl {
    pub(crate) fn new() -> Result<Nfnl, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::io("open NETLINK_NETFILTER socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("bind nfnetlink socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect nfnetlink socket", e))?;
        Ok(Nfnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub(crate) fn socket(&self) -> &netlink_sys::Socket {
        &self.sock
    }

    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub(crate) fn send(&self, bytes: &[u8], op: &str) -> Result<(), Error> {
        self.sock
            .send(bytes, 0)
            .map(|_| ())
            .map_err(|e| Error::io(format!("{op}: send"), e))
    }

    /// Read one datagram (blocking unless the socket is not) into the
    /// buffer; Ok(false) when a non-blocking socket has nothing.
    fn recv(&mut self, op: &str) -> Result<bool, Error> {
        self.buf.clear();
        let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(Error::io(format!("{op}: recv"), e)),
        };
        if n > self.buf.len() {
            return Err(Error::Protocol(format!(
                "{op}: reply of {n} bytes truncated"
            )));
        }
        Ok(true)
    }

    /// Read replies whose sequence number `wanted` accepts, handing each to
    /// `each` until it returns true (finished). An NLMSG_ERROR with a
    /// non-zero code ends the exchange with that errno.
    pub(crate) fn replies(
        &mut self,
        op: &str,
        wanted: impl Fn(u32) -> bool,
        mut each: impl FnMut(Reply) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        loop {
            if !self.recv(op)? {
                return Ok(());
            }
            for item in split(&self.buf) {
                let (hdr, raw) = item.map_err(|e| Error::Decode(format!("{op}: {e}")))?;
                if !wanted(hdr.seq) {
                    continue;
                }
                let payload = raw.get(NLMSG_HDRLEN..).unwrap_or_default();
                let reply = match hdr.kind {
                    NLMSG_DONE => Reply::Done,
                    NLMSG_ERROR => {
                        let code = payload
                            .get(0..4)
                            .and_then(|c| c.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(0);
                        if code != 0 {
                            return Err(Error::os(op, Errno::from_raw(code.saturating_abs())));
                        }
                        Reply::Ack(hdr.seq)
                    }
                    _ => Reply::Data {
                        kind: hdr.kind,
                        family: payload.first().copied().unwrap_or(0),
                        payload: payload.get(NFGENMSG_LEN..).unwrap_or_default(),
                    },
                };
                if each(reply)? {
                    return Ok(());
                }
            }
        }
    }

    /// Send one request; call `each` with every data reply's payload
    /// (after the nfgenmsg) until the ACK or NLMSG_DONE.
    pub(crate) fn exchange(
        &mut self,
        request: impl FnOnce(u32) -> Vec<u8>,
        op: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        let seq = self.next_seq();
        self.send(&request(seq), op)?;
        self.replies(
            op,
            |s| s == seq,
            |reply| {
                Ok(match reply {
                    Reply::Data { payload, .. } => {
                        each(payload);
                        false
                    }
                    Reply::Ack(_) | Reply::Done => true,
                })
            },
        )
    }
}
