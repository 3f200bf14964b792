//! The NETLINK_NETFILTER socket that ctnetlink (conntrack.rs) and nf_tables
//! (nftables.rs) share: nfgenmsg framing, one request with its replies,
//! and nf_tables' transactional batches.

use std::os::fd::{AsFd, OwnedFd};

use netlink_packet_core::{NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use netlink_sys::{protocols::NETLINK_NETFILTER, SocketAddr};
use nix::errno::Errno;
use nix::sys::socket::{setsockopt, sockopt};

use crate::socket::split;
use crate::Error;

const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const RECV_BUF: usize = 64 * 1024;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFNL_BATCH_GENID: u16 = 1;
/// What one queued ACK takes of a socket's receive buffer (its skb).
const ACK_ROOM: usize = 1024;
/// Below net.core.{r,w}mem_default (212992).
const DEFAULT_SOCKET_BUF: usize = 160 * 1024;

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

/// Append attribute `kind` with `value`, padded to 4 bytes.
pub(crate) fn put_attr(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(value);
    body.resize((body.len() + 3) & !3, 0);
}

/// One message: `msg_type` is (subsystem << 8) | message; `res_id` is the
/// nfgenmsg's big-endian resource id (the subsystem, for batch markers).
fn message(msg_type: u16, flags: u16, seq: u32, af: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(af);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn errno_of(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .and_then(|c| c.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(0)
        .saturating_abs()
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
            .map_err(|e| Error::io("bind NETLINK_NETFILTER socket", e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect NETLINK_NETFILTER socket", e))?;
        Ok(Nfnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    pub(crate) fn socket(&self) -> &netlink_sys::Socket {
        &self.sock
    }

    /// The socket as a file descriptor of its own (a duplicate: this one
    /// closes).
    pub(crate) fn into_socket(self) -> Result<OwnedFd, Error> {
        self.sock
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicate a NETLINK_NETFILTER socket", e))
    }

    /// Receive until `done` says the exchange is over; every message of
    /// ours goes to `each` as (seq, type, payload after nlmsghdr). On a
    /// non-blocking socket, also until nothing is left to read.
    fn receive(
        &mut self,
        op: &str,
        mut each: impl FnMut(u32, u16, &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        loop {
            self.buf.clear();
            let n = match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                n => n.map_err(|e| Error::io(format!("{op}: recv"), e))?,
            };
            if n > self.buf.len() {
                return Err(Error::Protocol(format!(
                    "{op}: reply of {n} bytes truncated"
                )));
            }
            for item in split(&self.buf) {
                let (hdr, raw) = item.map_err(|e| Error::Decode(format!("{op}: {e}")))?;
                if each(
                    hdr.seq,
                    hdr.kind,
                    raw.get(NLMSG_HDRLEN..).unwrap_or_default(),
                )? {
                    return Ok(());
                }
            }
        }
    }

    /// Every message waiting on a non-blocking (subscribed) socket, as
    /// (type, nfgenmsg family, payload after the nfgenmsg).
    pub(crate) fn drain(
        &mut self,
        op: &str,
        mut each: impl FnMut(u16, u8, &[u8]),
    ) -> Result<(), Error> {
        self.receive(op, |_, kind, payload| {
            let family = payload.first().copied().unwrap_or(0);
            each(
                kind,
                family,
                payload.get(NFGENMSG_LEN..).unwrap_or_default(),
            );
            Ok(false)
        })
    }

    /// Send one request; call `each` with every reply message's payload
    /// (after the nfgenmsg) until the ACK or NLMSG_DONE.
    pub(crate) fn exchange(
        &mut self,
        msg_type: u16,
        flags: u16,
        af: u8,
        body: &[u8],
        op: &str,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), Error> {
        self.exchange_until(msg_type, flags, af, body, op, |m| {
            each(m);
            false
        })
    }

    /// As [`Nfnl::exchange`], but `each` returning true ends it early: the
    /// rest of a dump is never read, so drop the socket afterwards.
    pub(crate) fn exchange_until(
        &mut self,
        msg_type: u16,
        flags: u16,
        af: u8,
        body: &[u8],
        op: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let req = message(msg_type, flags, seq, af, 0, body);
        self.sock
            .send(&req, 0)
            .map_err(|e| Error::io(format!("{op}: send"), e))?;
        self.receive(op, |s, kind, payload| {
            if s != seq {
                return Ok(false);
            }
            match kind {
                NLMSG_DONE => Ok(true),
                NLMSG_ERROR => match errno_of(payload) {
                    0 => Ok(true),
                    c => Err(Error::os(op, Errno::from_raw(c))),
                },
                _ => Ok(each(payload.get(NFGENMSG_LEN..).unwrap_or_default())),
            }
        })
    }

    /// One transaction of subsystem `subsys`: all of `msgs` apply, or none
    /// does. Every message asks for an ACK, so the kernel answers each;
    /// the first error is returned. With a `generation`, the kernel
    /// refuses the whole batch (ERESTART) unless the ruleset is still at
    /// it (NFNL_BATCH_GENID). Flags are per message: what the kernel
    /// echoes for those with NLM_F_ECHO (after it commits, before its
    /// ACKs) goes to `echoed` as (index into `msgs`, message type, payload
    /// after the nfgenmsg).
    pub(crate) fn batch_echoed(
        &mut self,
        subsys: u16,
        generation: Option<u32>,
        msgs: &[BatchMsg],
        op: &str,
        mut echoed: impl FnMut(usize, u16, &[u8]),
    ) -> Result<(), Error> {
        if msgs.is_empty() {
            return Ok(());
        }
        let first = self.seq.wrapping_add(1);
        let mut genid = Vec::new();
        if let Some(g) = generation {
            put_attr(&mut genid, NFNL_BATCH_GENID, &g.to_be_bytes());
        }
        let mut req = message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            0,
            subsys,
            &genid,
        );
        for (i, m) in msgs.iter().enumerate() {
            let seq = first.wrapping_add(1 + i as u32);
            let flags = NLM_F_REQUEST | NLM_F_ACK | m.flags;
            req.extend(message(m.kind, flags, seq, m.af, 0, &m.body));
        }
        let last = first.wrapping_add(1 + msgs.len() as u32);
        req.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            last,
            0,
            subsys,
            &[],
        ));
        self.seq = last;
        self.make_room(&req, msgs.len())?;
        self.sock
            .send(&req, 0)
            .map_err(|e| Error::io(format!("{op}: send"), e))?;
        let mut pending = msgs.len();
        let mut failure = None;
        self.receive(op, |s, kind, payload| {
            // 0 is the batch itself (refused as a whole), 1.. its messages.
            let index = s.wrapping_sub(first) as usize;
            if index > msgs.len() {
                return Ok(false);
            }
            if kind != NLMSG_ERROR {
                if let Some(i) = index.checked_sub(1) {
                    echoed(i, kind, payload.get(NFGENMSG_LEN..).unwrap_or_default());
                }
                return Ok(false);
            }
            let code = errno_of(payload);
            if code != 0 && failure.is_none() {
                failure = Some(Error::os(op, Errno::from_raw(code)));
            }
            pending = pending.saturating_sub(1);
            // A failed batch may not ACK the rest: stop at the first error.
            Ok(pending == 0 || failure.is_some())
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// The kernel takes a batch in one send and queues every ACK (and
    /// echo) before we read one: past the default buffers a large batch
    /// would fail (EMSGSIZE) or lose its ACKs (ENOBUFS). So, as nft does,
    /// grow both to fit (root may exceed the sysctl limits).
    fn make_room(&self, req: &[u8], msgs: usize) -> Result<(), Error> {
        let room = req.len() * 2 + msgs * ACK_ROOM;
        if room <= DEFAULT_SOCKET_BUF {
            return Ok(());
        }
        let grow = |e: Errno| Error::io("grow the NETLINK_NETFILTER buffers", e.into());
        setsockopt(&self.sock, sockopt::SndBufForce, &room).map_err(grow)?;
        setsockopt(&self.sock, sockopt::RcvBufForce, &room).map_err(grow)
    }
}

/// One message of a transaction.
pub(crate) struct BatchMsg {
    /// (subsystem << 8) | message.
    pub(crate) kind: u16,
    pub(crate) af: u8,
    /// Besides NLM_F_REQUEST and NLM_F_ACK: NLM_F_CREATE, NLM_F_APPEND,
    /// NLM_F_ECHO ...
    pub(crate) flags: u16,
    pub(crate) body: Vec<u8>,
}

impl BatchMsg {
    pub(crate) fn new(kind: u16, af: u8, body: Vec<u8>) -> BatchMsg {
        BatchMsg {
            kind,
            af,
            flags: 0,
            body,
        }
    }
}
