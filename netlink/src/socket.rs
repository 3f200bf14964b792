//! Request/response plumbing for one NETLINK_ROUTE socket.
//!
//! One request in flight: send, then read until the kernel's ACK
//! (NLMSG_ERROR with code 0), an error, or NLMSG_DONE for dumps; or one
//! batch of non-dump requests in one datagram, then all their ACKs.
//! Replies carrying another sequence number are leftovers and are skipped.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, SocketAddr};
use nix::errno::Errno;

use crate::Error;

/// Kernel dump skbs are at most 32 KiB (more only for huge single objects);
/// 64 KiB leaves headroom. Truncation is detected, never silently accepted.
const RECV_BUF: usize = 64 * 1024;
const NLMSG_HDRLEN: usize = 16;
/// NLMSGERR_ATTR_MSG: the human-readable extended-ack message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// How often a dump is retried when the kernel flags it inconsistent.
const DUMP_ATTEMPTS: usize = 5;
/// Requests per datagram in [`Socket::request_batch`]: their ACKs (an skb
/// each, under 1 KiB of receive buffer) fit the default 208 KiB buffer
/// with room to spare, and 64 routes are well under the send buffer.
const BATCH: usize = 64;

pub(crate) struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket").field("seq", &self.seq).finish()
    }
}

/// One decoded reply datagram entry.
#[derive(Debug)]
enum Reply {
    Message(Box<RouteNetlinkMessage>),
    /// Final ACK (non-dump) or NLMSG_DONE (dump).
    End,
}

impl Socket {
    /// A socket in the calling thread's current network namespace.
    pub(crate) fn new() -> Result<Self, Error> {
        let mut sock = netlink_sys::Socket::new(NETLINK_ROUTE)
            .map_err(|e| Error::io("open NETLINK_ROUTE socket", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("bind netlink socket", e))?;
        // Only accept unicast replies from the kernel.
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io("connect netlink socket", e))?;
        // Best effort: ext-ack gives readable kernel messages, cap-ack keeps
        // error replies small. Old kernels without them still work.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Socket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Send a non-dump request (NLM_F_REQUEST|NLM_F_ACK|extra_flags) and
    /// return any messages the kernel sent before the ACK (e.g. GETLINK).
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        let (msgs, _) = self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | extra_flags, op)?;
        Ok(msgs)
    }

    /// Dump request. Retries when the kernel marks the dump as interrupted
    /// (the table changed underneath it), so callers get a consistent view.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, Error> {
        for _ in 0..DUMP_ATTEMPTS {
            let (msgs, interrupted) =
                self.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP, op)?;
            if !interrupted {
                return Ok(msgs);
            }
        }
        Err(Error::os(
            format!("{op} (dump kept being interrupted)"),
            Errno::EAGAIN,
        ))
    }

    /// Non-dump requests pipelined: up to [`BATCH`] of them in one
    /// datagram, then their ACKs read, so 10,000 routes cost 160 round
    /// trips, not 10,000. The kernel handles the messages of a datagram in
    /// order and answers each (an error does not stop the rest), so one
    /// result comes back per request, in order. `Err` only when the socket
    /// itself fails (every request then counts as not done).
    pub(crate) fn request_batch(
        &mut self,
        reqs: impl IntoIterator<Item = (RouteNetlinkMessage, u16)>,
        op: &str,
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let mut results = Vec::new();
        let mut reqs = reqs.into_iter().peekable();
        let mut bytes = Vec::new();
        while reqs.peek().is_some() {
            bytes.clear();
            // Contiguous sequence numbers for the batch (next_seq skips 0).
            if self.seq > u32::MAX - BATCH as u32 {
                self.seq = 0;
            }
            let first = self.seq + 1;
            let mut n = 0usize;
            for (msg, flags) in reqs.by_ref().take(BATCH) {
                let seq = self.next_seq();
                bytes.extend(encode(msg, NLM_F_REQUEST | NLM_F_ACK | flags, seq));
                bytes.resize(align4(bytes.len()), 0);
                n += 1;
            }
            let start = results.len();
            results.resize_with(start + n, || None);
            self.send_all(&bytes, op)?;
            self.collect_acks(first, &mut results[start..], op)?;
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Protocol(format!("{op}: no ACK")))))
            .collect())
    }

    /// Read one reply datagram into `buf`; a truncated one is an error.
    fn recv_datagram(&mut self, op: &str) -> Result<(), Error> {
        self.buf.clear();
        let n = loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| Error::socket(format!("{op}: recv"), e))?,
            }
        };
        if n > self.buf.len() {
            return Err(Error::Protocol(format!(
                "{op}: reply of {n} bytes truncated to {}",
                self.buf.len()
            )));
        }
        Ok(())
    }

    fn send_all(&mut self, bytes: &[u8], op: &str) -> Result<(), Error> {
        let sent = loop {
            match self.sock.send(bytes, 0) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| Error::socket(format!("{op}: send"), e))?,
            }
        };
        if sent != bytes.len() {
            return Err(Error::Protocol(format!("{op}: short send")));
        }
        Ok(())
    }

    /// Read until every request of a batch (sequence numbers from `first`)
    /// has its ACK or error in `slots`.
    fn collect_acks(
        &mut self,
        first: u32,
        slots: &mut [Option<Result<(), Error>>],
        op: &str,
    ) -> Result<(), Error> {
        let mut pending = slots.len();
        while pending > 0 {
            self.recv_datagram(op)?;
            for item in split(&self.buf) {
                let (hdr, raw) = item.map_err(|e| Error::Decode(format!("{op}: {e}")))?;
                let Some(slot) = slots.get_mut(hdr.seq.wrapping_sub(first) as usize) else {
                    continue; // leftover from an earlier, abandoned request
                };
                let r = match parse_reply(&hdr, raw, op) {
                    Ok(Some(Reply::End)) => Ok(()),
                    Ok(_) => continue, // an echo or NOOP, not the answer
                    Err(e) => Err(e),
                };
                if slot.replace(r).is_none() {
                    pending -= 1;
                }
            }
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), Error> {
        let seq = self.next_seq();
        let bytes = encode(msg, flags, seq);
        self.send_all(&bytes, op)?;

        let mut out = Vec::new();
        let mut interrupted = false;
        // A message we could not decode does not stop the loop: we keep
        // reading to the end so the socket stays in sync, then report it.
        let mut decode_err: Option<Error> = None;
        loop {
            self.recv_datagram(op)?;
            let mut done = false;
            for item in split(&self.buf) {
                let (hdr, raw) = item.map_err(|e| Error::Decode(format!("{op}: {e}")))?;
                if hdr.seq != seq {
                    continue; // leftover from an earlier, abandoned request
                }
                if hdr.flags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                match parse_reply(&hdr, raw, op) {
                    Ok(Some(Reply::Message(m))) => out.push(*m),
                    Ok(Some(Reply::End)) => done = true,
                    Ok(None) => {}
                    Err(e @ Error::Decode(_)) => {
                        decode_err.get_or_insert(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if done {
                break;
            }
        }
        match decode_err {
            Some(e) => Err(e),
            None => Ok((out, interrupted)),
        }
    }
}

/// Serialize a request with the given flags and sequence number.
pub(crate) fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    nl.finalize();
    let mut bytes = vec![0u8; nl.buffer_len()];
    nl.serialize(&mut bytes);
    bytes
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub len: usize,
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    b.get(off..off + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_ne_bytes)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Split one datagram into (header, whole message bytes) pairs.
pub(crate) fn split(buf: &[u8]) -> impl Iterator<Item = Result<(Header, &[u8]), String>> {
    let mut off = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || off >= buf.len() {
            return None;
        }
        let rest = buf.get(off..)?;
        let hdr = match (
            u32_at(rest, 0),
            u16_at(rest, 4),
            u16_at(rest, 6),
            u32_at(rest, 8),
        ) {
            (Some(len), Some(kind), Some(flags), Some(seq)) => Header {
                len: len as usize,
                kind,
                flags,
                seq,
            },
            _ => {
                failed = true;
                return Some(Err(format!("{} trailing bytes in reply", rest.len())));
            }
        };
        if hdr.len < NLMSG_HDRLEN || hdr.len > rest.len() {
            failed = true;
            return Some(Err(format!(
                "bad message length {} ({} bytes left)",
                hdr.len,
                rest.len()
            )));
        }
        off = off.saturating_add(align4(hdr.len));
        rest.get(..hdr.len).map(|m| Ok((hdr, m)))
    })
}

/// Turn one reply message into a Reply. `None` means "nothing to report"
/// (NOOP).
fn parse_reply(hdr: &Header, raw: &[u8], op: &str) -> Result<Option<Reply>, Error> {
    let payload = raw.get(NLMSG_HDRLEN..).unwrap_or_default();
    match hdr.kind {
        NLMSG_NOOP => Ok(None),
        NLMSG_OVERRUN => Err(Error::Protocol(format!("{op}: NLMSG_OVERRUN"))),
        NLMSG_ERROR => {
            let code = u32_at(payload, 0)
                .map(|c| c as i32)
                .ok_or_else(|| Error::Decode(format!("{op}: short NLMSG_ERROR")))?;
            if code == 0 {
                return Ok(Some(Reply::End));
            }
            // The echoed request header follows the code; with CAP_ACK only
            // the header, otherwise the whole request. TLVs come after.
            let tlv_off = if hdr.flags & NLM_F_CAPPED != 0 {
                4 + NLMSG_HDRLEN
            } else {
                4 + align4(u32_at(payload, 4).unwrap_or(NLMSG_HDRLEN as u32) as usize)
            };
            let extack = if hdr.flags & NLM_F_ACK_TLVS != 0 {
                extack_message(payload.get(tlv_off..).unwrap_or_default())
            } else {
                None
            };
            Err(Error::Os {
                op: op.to_string(),
                errno: Errno::from_raw(code.saturating_abs()),
                extack,
            })
        }
        NLMSG_DONE => {
            // Older kernels may send an empty DONE payload.
            let code = u32_at(payload, 0).map(|c| c as i32).unwrap_or(0);
            if code < 0 {
                let extack = if hdr.flags & NLM_F_ACK_TLVS != 0 {
                    extack_message(payload.get(4..).unwrap_or_default())
                } else {
                    None
                };
                return Err(Error::Os {
                    op: op.to_string(),
                    errno: Errno::from_raw(code.saturating_abs()),
                    extack,
                });
            }
            Ok(Some(Reply::End))
        }
        _ => {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw)
                .map_err(|e| Error::Decode(format!("{op}: {e}")))?;
            match msg.payload {
                NetlinkPayload::InnerMessage(m) => Ok(Some(Reply::Message(Box::new(m)))),
                _ => Ok(None),
            }
        }
    }
}

/// Find NLMSGERR_ATTR_MSG in an extended-ack TLV block.
pub(crate) fn extack_message(tlvs: &[u8]) -> Option<String> {
    let mut off = 0usize;
    while let (Some(len), Some(kind)) = (u16_at(tlvs, off), u16_at(tlvs, off + 2)) {
        let len = len as usize;
        if len < 4 {
            return None;
        }
        let value = tlvs.get(off + 4..off + len)?;
        if kind & 0x3fff == NLMSGERR_ATTR_MSG {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        off += align4(len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};

    fn nlmsg(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut v = Vec::new();
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        crate::nfnetlink::put_attr(&mut v, kind, value);
        v
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn first(b: &[u8]) -> Result<(Header, &[u8]), String> {
        split(b).next().ok_or_else(|| "no message".to_string())?
    }

    #[test]
    fn encode_sets_header() -> TestResult {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName("eth0".into()));
        let b = encode(
            RouteNetlinkMessage::GetLink(m),
            NLM_F_REQUEST | NLM_F_ACK,
            7,
        );
        let (hdr, raw) = first(&b)?;
        assert_eq!(hdr.len, b.len());
        assert_eq!(raw.len(), b.len());
        assert_eq!(hdr.kind, 18); // RTM_GETLINK
        assert_eq!(hdr.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(hdr.seq, 7);
        // ifinfomsg (16) + IFLA_IFNAME "eth0\0" padded to 8 + 4
        assert_eq!(b.len(), 16 + 16 + 12);
        Ok(())
    }

    #[test]
    fn error_reply_maps_errno_and_extack() -> TestResult {
        let mut payload = (-libc::EEXIST).to_ne_bytes().to_vec();
        payload.extend_from_slice(&nlmsg(16, 0, 3, &[])[..16]); // echoed header
        payload.extend(tlv(NLMSGERR_ATTR_MSG, b"File exists here\0"));
        let raw = nlmsg(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, 3, &payload);
        let (hdr, m) = first(&raw)?;
        let r = parse_reply(&hdr, m, "op");
        assert!(
            matches!(&r, Err(Error::Os { errno: Errno::EEXIST, extack: Some(x), op })
                if x == "File exists here" && op == "op"),
            "{r:?}"
        );
        Ok(())
    }

    #[test]
    fn ack_and_done() -> TestResult {
        let ack = nlmsg(NLMSG_ERROR, 0, 1, &[0u8; 20]);
        let done = nlmsg(NLMSG_DONE, 0, 1, &0i32.to_ne_bytes());
        let empty_done = nlmsg(NLMSG_DONE, 0, 1, &[]);
        let mut all = ack.clone();
        all.extend(done);
        all.extend(empty_done);
        let items: Vec<_> = split(&all).collect();
        assert_eq!(items.len(), 3);
        for it in items {
            let (h, m) = it?;
            assert!(matches!(parse_reply(&h, m, "x"), Ok(Some(Reply::End))));
        }
        let bad_done = nlmsg(NLMSG_DONE, 0, 1, &(-libc::EINVAL).to_ne_bytes());
        let (h, m) = first(&bad_done)?;
        assert!(matches!(parse_reply(&h, m, "x"), Err(e) if e.errno() == Some(Errno::EINVAL)));
        Ok(())
    }

    /// Random payloads under real RTM_* types must decode or error, never panic.
    #[test]
    fn random_replies_do_not_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let kind = [16u16, 20, 24, 28, 2, 3][(rnd() % 6) as usize];
            let len = (rnd() % 96) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
            // Make some of them look like well-formed attribute lists.
            if i % 2 == 0 && len >= 24 {
                payload[16] = (len - 16) as u8;
                payload[17] = 0;
            }
            let raw = nlmsg(kind, (rnd() & 0xffff) as u16, 1, &payload);
            for (h, m) in split(&raw).flatten() {
                let _ = parse_reply(&h, m, "fuzz");
            }
        }
    }

    /// Well-formed messages with a few corrupted bytes: decode or error, never panic.
    #[test]
    fn mutated_messages_do_not_panic() -> TestResult {
        use crate::link::{veth_msg, vxlan_msg, VxlanSpec};
        let spec = VxlanSpec {
            name: "weft.1".into(),
            vni: 1,
            local: Some("198.51.100.1".parse()?),
            dev: Some(2),
            port: 8472,
            mtu: Some(1450),
            mac: Some([2, 0, 0, 0, 0, 1]),
        };
        let mut route = crate::Route::new("10.244.1.0/24".parse()?);
        route.gateway = Some("198.51.100.2".parse()?);
        route.mtu = Some(1400);
        let bases = [
            encode(RouteNetlinkMessage::NewLink(vxlan_msg(&spec)), 0, 1),
            encode(
                RouteNetlinkMessage::NewLink(veth_msg("a", Some(1), None, "b", 3, None)),
                0,
                1,
            ),
            encode(
                RouteNetlinkMessage::NewRoute(crate::route::route_msg(
                    &route,
                    crate::route::Purpose::Add,
                )?),
                0,
                1,
            ),
            encode(
                RouteNetlinkMessage::NewNeighbour(crate::neigh::fdb_msg(
                    1,
                    [1; 6],
                    "198.51.100.2".parse()?,
                )),
                0,
                1,
            ),
        ];
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as usize
        };
        for i in 0..40_000usize {
            let mut b = bases[i % bases.len()].clone();
            for _ in 0..1 + rnd() % 4 {
                // Keep the netlink header intact so the payload gets parsed.
                let at = NLMSG_HDRLEN + rnd() % (b.len() - NLMSG_HDRLEN);
                b[at] = rnd() as u8;
            }
            for (h, m) in split(&b).flatten() {
                let _ = parse_reply(&h, m, "fuzz");
            }
        }
        Ok(())
    }

    /// A socket whose fd no longer is a netlink socket: the failure is
    /// `Error::Socket` (reopen it), not `Error::Os` (the kernel said no).
    #[test]
    fn a_broken_socket_is_its_own_error_kind() -> TestResult {
        use std::os::fd::AsRawFd;
        let mut s = Socket::new()?;
        let devnull = std::fs::File::open("/dev/null")?;
        // SAFETY: both fds are open; dup2 atomically replaces the socket's
        // fd with /dev/null, which the Socket then owns and closes.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::dup2(devnull.as_raw_fd(), s.sock.as_raw_fd()) };
        assert_eq!(rc, s.sock.as_raw_fd());
        let e = s
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                0,
                "get link",
            )
            .err()
            .ok_or("request on a broken socket succeeded")?;
        assert!(e.is_socket_broken(), "{e:?}");
        assert_eq!(e.errno(), Some(Errno::ENOTSOCK));
        assert!(
            e.to_string()
                .starts_with("get link: send: netlink socket broken"),
            "{e}"
        );
        Ok(())
    }

    #[test]
    fn split_rejects_garbage_without_panicking() {
        for bad in [
            vec![1u8, 2, 3],
            vec![0u8; 16],                                // length 0
            nlmsg(3, 0, 0, &[1, 2, 3, 4])[..18].to_vec(), // claims more than present
            vec![0xffu8; 40],
        ] {
            let r: Vec<_> = split(&bad).collect();
            assert!(r.iter().any(|x| x.is_err()), "{bad:?}");
        }
        assert!(extack_message(&[1, 0]).is_none());
        assert!(extack_message(&[2, 0, 1, 0]).is_none());
        assert!(extack_message(&[200, 0, 1, 0, b'a']).is_none());
    }
}
