//! Traffic control over netlink: token-bucket (tbf) and ingress qdiscs, and
//! the u32 match-all filter whose mirred action redirects a device's
//! ingress traffic to another device (an ifb), which is what the bandwidth
//! plugin needs. netlink-packet-route knows the ingress qdisc, u32 and
//! mirred; tbf's options are encoded here (`struct tc_tbf_qopt`). Shaping
//! by destination adds an HTB tree ([`htb`]) and u32 classifiers on IP
//! prefixes ([`classify`]).

mod classify;
mod htb;

pub use classify::{prefix_keys, protocol_of, IpField, U32Key, ETH_P_IP, ETH_P_IPV6};
pub use htb::{Class, Htb, HtbClass};

use netlink_packet_core::{DefaultNla, Nla, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcHeader, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Error, Netlink};

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const ROOT: u32 = 0xFFFF_FFFF;
/// `TC_H_INGRESS`: the parent of a device's ingress qdisc.
pub const INGRESS_PARENT: u32 = 0xFFFF_FFF1;
/// The handle `ffff:` every ingress qdisc has.
pub const INGRESS_HANDLE: u32 = 0xFFFF_0000;
/// The handle `1:` the reference plugin gives its root tbf.
pub const TBF_HANDLE: u32 = 0x0001_0000;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
/// `sizeof(struct tc_tbf_qopt)`: rate and peakrate `tc_ratespec` (12 each),
/// then limit, buffer and mtu.
const TBF_QOPT_LEN: usize = 36;
/// `TC_LINKLAYER_ETHERNET`: lets the kernel compute packet times itself,
/// so no rate table has to be sent.
const LINKLAYER_ETHERNET: u8 = 1;
/// `ETH_P_ALL`, the protocol of a filter that sees every packet.
const ETH_P_ALL: u16 = 0x0003;
/// Priority of the redirect filter (the reference uses 1).
const REDIRECT_PRIORITY: u16 = 1;

/// A tbf qdisc's parameters in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u64,
    /// Bytes that may wait in the queue.
    pub limit: u32,
    /// Bucket size as the time it takes to drain at `rate`, in psched
    /// ticks (64 ns each; what `tc` calls the buffer).
    pub buffer: u32,
}

/// psched ticks per microsecond: the kernel's clock has been fixed at
/// 64 ns per tick (PSCHED_SHIFT 6) since 2.6.
pub const TICKS_PER_USEC: f64 = 1000.0 / 64.0;

/// One qdisc as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Decoded options when `kind` is "tbf".
    pub tbf: Option<Tbf>,
    /// Decoded options when `kind` is "htb".
    pub htb: Option<Htb>,
    /// The limit when `kind` is "pfifo" or "bfifo".
    pub fifo_limit: Option<u32>,
}

/// One classifier as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub kind: String,
    pub priority: u16,
    /// The ethertype it applies to (host order; 3 = all).
    pub protocol: u16,
    /// A u32 selector with no keys or only zero-mask keys: every packet.
    pub matches_all: bool,
    /// The target of a mirred egress redirect action, if it has one.
    pub redirect_to: Option<u32>,
    /// The class it sends matching packets to (u32 `classid`/flowid).
    pub classid: Option<u32>,
    /// The u32 selector's keys.
    pub keys: Vec<U32Key>,
}

fn tc_msg(ifindex: u32, parent: u32, handle: u32, info: u32) -> Result<TcMessage, Error> {
    let index = i32::try_from(ifindex)
        .map_err(|_| Error::Invalid(format!("interface index {ifindex} out of range")))?;
    let mut m = TcMessage::default();
    m.header = TcHeader {
        index,
        parent: TcHandle::from(parent),
        handle: TcHandle::from(handle),
        info,
        ..Default::default()
    };
    Ok(m)
}

/// `struct tc_tbf_qopt` plus TCA_TBF_RATE64 when the rate needs 64 bits.
fn tbf_options(tbf: &Tbf) -> Vec<TcOption> {
    let mut qopt = [0u8; TBF_QOPT_LEN];
    qopt[1] = LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(tbf.rate).unwrap_or(u32::MAX);
    qopt[8..12].copy_from_slice(&rate32.to_ne_bytes());
    qopt[24..28].copy_from_slice(&tbf.limit.to_ne_bytes());
    qopt[28..32].copy_from_slice(&tbf.buffer.to_ne_bytes());
    let mut options = vec![TcOption::Other(DefaultNla::new(
        TCA_TBF_PARMS,
        qopt.to_vec(),
    ))];
    if rate32 == u32::MAX {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            tbf.rate.to_ne_bytes().to_vec(),
        )));
    }
    options
}

/// The raw bytes of an option the crate does not decode (tbf's): it keeps
/// the whole TCA_OPTIONS nest as one attribute.
fn raw_value(option: &TcOption) -> Vec<u8> {
    let mut buf = vec![0u8; option.value_len()];
    option.emit_value(&mut buf);
    buf
}

/// (type, value) pairs of a block of netlink attributes.
fn attributes(mut bytes: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        let Some(value) = bytes.get(4..len) else {
            break;
        };
        out.push((kind, value));
        bytes = bytes.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)?.try_into().ok().map(u32::from_ne_bytes)
}

/// Decode tbf's TCA_OPTIONS nest (TCA_TBF_PARMS and TCA_TBF_RATE64).
fn parse_tbf(nest: &[u8]) -> Option<Tbf> {
    let attrs = attributes(nest);
    let parms = attrs.iter().find(|(k, _)| *k == TCA_TBF_PARMS)?.1;
    let mut rate = u64::from(u32_at(parms, 8)?);
    if let Some((_, v)) = attrs.iter().find(|(k, _)| *k == TCA_TBF_RATE64) {
        rate = u64::from_ne_bytes((*v).try_into().ok()?);
    }
    Some(Tbf {
        rate,
        limit: u32_at(parms, 24)?,
        buffer: u32_at(parms, 28)?,
    })
}

fn qdisc_from_msg(m: &TcMessage) -> Qdisc {
    let mut q = Qdisc {
        kind: String::new(),
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        tbf: None,
        htb: None,
        fifo_limit: None,
    };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => q.kind = k.clone(),
            TcAttribute::Options(opts) => match q.kind.as_str() {
                "tbf" => q.tbf = opts.first().and_then(|o| parse_tbf(&raw_value(o))),
                "htb" => q.htb = opts.first().and_then(|o| htb::parse_htb(&raw_value(o))),
                "pfifo" | "bfifo" => q.fifo_limit = opts.first().and_then(htb::parse_fifo_limit),
                _ => {}
            },
            _ => {}
        }
    }
    q
}

fn filter_from_msg(m: &TcMessage) -> Filter {
    // tcm_info holds the priority (high 16 bits) and the protocol in
    // network byte order (low 16 bits).
    let mut f = Filter {
        kind: String::new(),
        priority: (m.header.info >> 16) as u16,
        protocol: u16::from_be(m.header.info as u16),
        matches_all: false,
        redirect_to: None,
        classid: None,
        keys: Vec::new(),
    };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => f.kind = k.clone(),
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                            f.matches_all = sel.keys.iter().all(|k| k.mask == 0);
                            f.keys = sel
                                .keys
                                .iter()
                                .map(|k| U32Key {
                                    mask: k.mask,
                                    val: k.val,
                                    off: k.off,
                                })
                                .collect();
                        }
                        TcOption::U32(TcFilterU32Option::ClassId(h)) => {
                            f.classid = Some(u32::from(*h));
                        }
                        TcOption::U32(TcFilterU32Option::Action(actions)) => {
                            f.redirect_to = actions.iter().find_map(redirect_target);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    f
}

fn redirect_target(action: &TcAction) -> Option<u32> {
    action.attributes.iter().find_map(|a| match a {
        TcActionAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcActionOption::Mirror(TcActionMirrorOption::Parms(p))
                if p.eaction == TcMirrorActionType::EgressRedir =>
            {
                Some(p.ifindex)
            }
            _ => None,
        }),
        _ => None,
    })
}

/// u32 filter options: one zero-mask key (matches every packet), flowid
/// 1:1 as the reference sets, and a mirred egress redirect to `target`.
fn redirect_options(target: u32) -> Vec<TcOption> {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = target;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::ClassId(TcHandle::from(0x0001_0001))),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]
}

impl Netlink {
    /// Make a tbf qdisc `1:` the root of `ifindex`, replacing whatever root
    /// qdisc is there (so a repeated ADD converges instead of failing).
    pub fn replace_root_tbf(&mut self, ifindex: u32, tbf: &Tbf) -> Result<(), Error> {
        self.replace_tbf(ifindex, ROOT, TBF_HANDLE, tbf)
    }

    /// Make a tbf qdisc `handle` the qdisc under `parent` of `ifindex`
    /// (the root, or a class whose leaf it becomes).
    pub fn replace_tbf(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        tbf: &Tbf,
    ) -> Result<(), Error> {
        if tbf.rate == 0 || tbf.buffer == 0 {
            return Err(Error::Invalid(format!(
                "tbf needs a rate and a buffer: {tbf:?}"
            )));
        }
        let mut m = tc_msg(ifindex, parent, handle, 0)?;
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf_options(tbf)));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!("replace tbf {:x}: on #{ifindex}", handle >> 16),
            )
            .map(drop)
    }

    /// Add the ingress qdisc `ffff:` to `ifindex`; an existing one is kept.
    pub fn ensure_ingress_qdisc(&mut self, ifindex: u32) -> Result<(), Error> {
        let mut m = tc_msg(ifindex, INGRESS_PARENT, INGRESS_HANDLE, 0)?;
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_REPLACE,
                &format!("add ingress qdisc on #{ifindex}"),
            )
            .map(drop)
    }

    /// Redirect everything arriving on `ifindex` (its ingress qdisc must
    /// exist) to the egress of `target`: u32 match-all, mirred redirect.
    pub fn add_ingress_redirect(&mut self, ifindex: u32, target: u32) -> Result<(), Error> {
        let info = (u32::from(REDIRECT_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
        let mut m = tc_msg(ifindex, INGRESS_HANDLE, 0, info)?;
        m.attributes.push(TcAttribute::Kind("u32".into()));
        m.attributes
            .push(TcAttribute::Options(redirect_options(target)));
        self.sock
            .request(
                RouteNetlinkMessage::NewTrafficFilter(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add redirect filter from #{ifindex} to #{target}"),
            )
            .map(drop)
    }

    /// The qdiscs of `ifindex` (including the kernel's defaults).
    pub fn qdiscs(&mut self, ifindex: u32) -> Result<Vec<Qdisc>, Error> {
        let msgs = self.sock.dump(
            RouteNetlinkMessage::GetQueueDiscipline(tc_msg(ifindex, 0, 0, 0)?),
            &format!("dump qdiscs of #{ifindex}"),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewQueueDiscipline(m)
                    if u32::try_from(m.header.index) == Ok(ifindex) =>
                {
                    Some(qdisc_from_msg(m))
                }
                _ => None,
            })
            .collect())
    }

    /// The filters attached to `parent` (e.g. [`INGRESS_HANDLE`]) of `ifindex`.
    pub fn filters(&mut self, ifindex: u32, parent: u32) -> Result<Vec<Filter>, Error> {
        let msgs = self.sock.dump(
            RouteNetlinkMessage::GetTrafficFilter(tc_msg(ifindex, parent, 0, 0)?),
            &format!("dump filters of #{ifindex}"),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                // A dump also reports each u32 hash table as a "filter"
                // without a selector; only real rules matter to callers.
                RouteNetlinkMessage::NewTrafficFilter(m) => Some(filter_from_msg(m)),
                _ => None,
            })
            .filter(|f| !f.kind.is_empty())
            .collect())
    }

    /// Delete the qdisc `handle` under `parent` of `ifindex` (with its
    /// filters and children). A missing qdisc is an ENOENT/EINVAL error
    /// the caller may ignore (see [`Error::is_not_found`]).
    pub fn delete_qdisc(&mut self, ifindex: u32, parent: u32, handle: u32) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::DelQueueDiscipline(tc_msg(ifindex, parent, handle, 0)?),
                0,
                &format!("delete qdisc {:x}: on #{ifindex}", handle >> 16),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::encode;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};

    fn roundtrip(m: RouteNetlinkMessage) -> Option<TcMessage> {
        let b = encode(m, NLM_F_REQUEST, 1);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b)
            .ok()?
            .payload
        {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewQueueDiscipline(t)
                | RouteNetlinkMessage::NewTrafficFilter(t),
            ) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn tbf_options_round_trip() {
        for rate in [125_000u64, u64::from(u32::MAX) + 7] {
            let tbf = Tbf {
                rate,
                limit: 13_125,
                buffer: 1_250_000,
            };
            let mut m = tc_msg(4, ROOT, TBF_HANDLE, 0).unwrap();
            m.attributes.push(TcAttribute::Kind("tbf".into()));
            m.attributes.push(TcAttribute::Options(tbf_options(&tbf)));
            let back = roundtrip(RouteNetlinkMessage::NewQueueDiscipline(m)).unwrap();
            let q = qdisc_from_msg(&back);
            assert_eq!(q.kind, "tbf");
            assert_eq!(q.handle, TBF_HANDLE);
            assert_eq!(q.parent, ROOT);
            assert_eq!(q.tbf, Some(tbf));
        }
    }

    #[test]
    fn redirect_filter_round_trip() {
        let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
        let mut m = tc_msg(4, INGRESS_HANDLE, 0, info).unwrap();
        m.attributes.push(TcAttribute::Kind("u32".into()));
        m.attributes.push(TcAttribute::Options(redirect_options(9)));
        let back = roundtrip(RouteNetlinkMessage::NewTrafficFilter(m)).unwrap();
        let f = filter_from_msg(&back);
        assert_eq!(
            f,
            Filter {
                kind: "u32".into(),
                priority: 1,
                protocol: ETH_P_ALL,
                matches_all: true,
                redirect_to: Some(9),
                classid: Some(0x0001_0001),
                keys: vec![U32Key {
                    mask: 0,
                    val: 0,
                    off: 0
                }],
            }
        );
    }

    #[test]
    fn attribute_walk_stops_at_garbage() {
        assert!(attributes(&[1, 0]).is_empty());
        assert!(attributes(&[200, 0, 1, 0, 0, 0]).is_empty());
        let mut two = vec![8, 0, 1, 0, 1, 2, 3, 4, 5, 0, 4, 0, 9, 0, 0, 0];
        assert_eq!(attributes(&two).len(), 2);
        two.truncate(6);
        assert_eq!(attributes(&two).len(), 0);
        assert_eq!(parse_tbf(&[]), None);
    }
}
