//! HTB qdiscs and classes, and the fifo leaves under them. netlink-packet-
//! route 0.34 does not know HTB, so `struct tc_htb_glob` and `struct
//! tc_htb_opt` are encoded here. Rates carry `TC_LINKLAYER_ETHERNET`, so
//! the kernel computes packet times itself and wants no rate tables.

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{TcAttribute, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;

use super::{attributes, raw_value, tc_msg, u32_at, LINKLAYER_ETHERNET};
use crate::{Error, Netlink};

/// `TCA_OPTIONS` of a tc message.
const TCA_OPTIONS: u16 = 2;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_DIRECT_QLEN: u16 = 5;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`.
const HTB_VERSION: u32 = 3;
/// `sizeof(struct tc_htb_glob)`: version, rate2quantum, defcls, debug,
/// direct_pkts.
const HTB_GLOB_LEN: usize = 20;
/// `sizeof(struct tc_htb_opt)`: rate and ceil `tc_ratespec` (12 each), then
/// buffer, cbuffer, quantum, level and prio.
const HTB_OPT_LEN: usize = 44;

/// A root HTB qdisc's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Htb {
    /// The minor number of the class unclassified traffic goes to.
    pub default_class: u16,
    /// Packets the direct queue (traffic for a class that does not exist)
    /// holds. Stated so it never falls back to the device's txqueuelen,
    /// which is 0 on an ifb.
    pub direct_qlen: u32,
}

/// One HTB class in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClass {
    /// Assured rate, bytes per second.
    pub rate: u64,
    /// Maximum rate, bytes per second.
    pub ceil: u64,
    /// Burst at `rate` and at `ceil`, as drain time in psched ticks.
    pub buffer: u32,
    /// Bytes served per round when siblings compete. Stated rather than
    /// derived from rate/r2q, which at the rates HTB is given here is far
    /// outside the kernel's sane 1000..200000 range.
    pub quantum: u32,
}

/// One traffic class as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
    /// Decoded parameters when `kind` is "htb".
    pub htb: Option<HtbClass>,
}

/// A `tc_ratespec` with the ethernet link layer, and the 32-bit part of
/// `rate` (all ones when it needs TCA_HTB_RATE64/CEIL64).
fn ratespec(buf: &mut [u8], rate: u64) -> bool {
    buf[1] = LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(rate).unwrap_or(u32::MAX);
    buf[8..12].copy_from_slice(&rate32.to_ne_bytes());
    rate32 == u32::MAX
}

fn qdisc_options(htb: &Htb) -> Vec<TcOption> {
    let mut glob = [0u8; HTB_GLOB_LEN];
    glob[0..4].copy_from_slice(&HTB_VERSION.to_ne_bytes());
    // rate2quantum: unused, as every class states its quantum; tc's default.
    glob[4..8].copy_from_slice(&10u32.to_ne_bytes());
    glob[8..12].copy_from_slice(&u32::from(htb.default_class).to_ne_bytes());
    vec![
        TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob.to_vec())),
        TcOption::Other(DefaultNla::new(
            TCA_HTB_DIRECT_QLEN,
            htb.direct_qlen.to_ne_bytes().to_vec(),
        )),
    ]
}

fn class_options(class: &HtbClass) -> Vec<TcOption> {
    let mut opt = [0u8; HTB_OPT_LEN];
    let rate64 = ratespec(&mut opt[0..12], class.rate);
    let ceil64 = ratespec(&mut opt[12..24], class.ceil);
    opt[24..28].copy_from_slice(&class.buffer.to_ne_bytes());
    opt[28..32].copy_from_slice(&class.buffer.to_ne_bytes());
    opt[32..36].copy_from_slice(&class.quantum.to_ne_bytes());
    let mut options = vec![TcOption::Other(DefaultNla::new(
        TCA_HTB_PARMS,
        opt.to_vec(),
    ))];
    if rate64 {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_RATE64,
            class.rate.to_ne_bytes().to_vec(),
        )));
    }
    if ceil64 {
        options.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_CEIL64,
            class.ceil.to_ne_bytes().to_vec(),
        )));
    }
    options
}

fn u64_attr(attrs: &[(u16, &[u8])], kind: u16) -> Option<u64> {
    let (_, v) = attrs.iter().find(|(k, _)| *k == kind)?;
    Some(u64::from_ne_bytes((*v).try_into().ok()?))
}

/// Decode an HTB qdisc's TCA_OPTIONS nest.
pub(super) fn parse_htb(nest: &[u8]) -> Option<Htb> {
    let attrs = attributes(nest);
    let glob = attrs.iter().find(|(k, _)| *k == TCA_HTB_INIT)?.1;
    let direct_qlen = attrs
        .iter()
        .find(|(k, _)| *k == TCA_HTB_DIRECT_QLEN)
        .and_then(|(_, v)| u32_at(v, 0))
        .unwrap_or(0);
    Some(Htb {
        default_class: u16::try_from(u32_at(glob, 8)?).ok()?,
        direct_qlen,
    })
}

/// Decode an HTB class's TCA_OPTIONS nest.
fn parse_htb_class(nest: &[u8]) -> Option<HtbClass> {
    let attrs = attributes(nest);
    let opt = attrs.iter().find(|(k, _)| *k == TCA_HTB_PARMS)?.1;
    let rate = u64_attr(&attrs, TCA_HTB_RATE64).unwrap_or(u64::from(u32_at(opt, 8)?));
    let ceil = u64_attr(&attrs, TCA_HTB_CEIL64).unwrap_or(u64::from(u32_at(opt, 20)?));
    Some(HtbClass {
        rate,
        ceil,
        buffer: u32_at(opt, 24)?,
        quantum: u32_at(opt, 32)?,
    })
}

/// A pfifo/bfifo's TCA_OPTIONS: a bare `struct tc_fifo_qopt` (the limit).
pub(super) fn parse_fifo_limit(option: &TcOption) -> Option<u32> {
    u32_at(&raw_value(option), 0)
}

fn class_from_msg(m: &TcMessage) -> Class {
    let mut c = Class {
        kind: String::new(),
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        htb: None,
    };
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => c.kind = k.clone(),
            TcAttribute::Options(opts) if c.kind == "htb" => {
                c.htb = opts.first().and_then(|o| parse_htb_class(&raw_value(o)));
            }
            _ => {}
        }
    }
    c
}

impl Netlink {
    /// Add HTB qdisc `handle` as the root of `ifindex`; fails with EEXIST
    /// when the device already has a root qdisc with that handle.
    pub fn add_root_htb(&mut self, ifindex: u32, handle: u32, htb: &Htb) -> Result<(), Error> {
        let mut m = tc_msg(ifindex, super::ROOT, handle, 0)?;
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes.push(TcAttribute::Options(qdisc_options(htb)));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add root htb on #{ifindex}"),
            )
            .map(drop)
    }

    /// Add HTB class `classid` under `parent` (the qdisc or a class).
    pub fn add_htb_class(
        &mut self,
        ifindex: u32,
        parent: u32,
        classid: u32,
        class: &HtbClass,
    ) -> Result<(), Error> {
        if class.rate == 0 || class.ceil == 0 || class.buffer == 0 {
            return Err(Error::Invalid(format!(
                "an htb class needs a rate, a ceil and a buffer: {class:?}"
            )));
        }
        let mut m = tc_msg(ifindex, parent, classid, 0)?;
        m.attributes.push(TcAttribute::Kind("htb".into()));
        m.attributes
            .push(TcAttribute::Options(class_options(class)));
        self.sock
            .request(
                RouteNetlinkMessage::NewTrafficClass(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!(
                    "add htb class {:x}:{:x} on #{ifindex}",
                    classid >> 16,
                    classid & 0xffff
                ),
            )
            .map(drop)
    }

    /// Make a pfifo holding `limit` packets the qdisc `handle` under
    /// `parent` (a class), replacing the default leaf there.
    pub fn replace_pfifo(
        &mut self,
        ifindex: u32,
        parent: u32,
        handle: u32,
        limit: u32,
    ) -> Result<(), Error> {
        let mut m = tc_msg(ifindex, parent, handle, 0)?;
        m.attributes.push(TcAttribute::Kind("pfifo".into()));
        // TCA_OPTIONS is the bare struct here, not a nest of attributes.
        m.attributes.push(TcAttribute::Other(DefaultNla::new(
            TCA_OPTIONS,
            limit.to_ne_bytes().to_vec(),
        )));
        self.sock
            .request(
                RouteNetlinkMessage::NewQueueDiscipline(m),
                NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE,
                &format!("add pfifo {:x}: on #{ifindex}", handle >> 16),
            )
            .map(drop)
    }

    /// The traffic classes of `ifindex`.
    pub fn classes(&mut self, ifindex: u32) -> Result<Vec<Class>, Error> {
        let msgs = self.sock.dump(
            RouteNetlinkMessage::GetTrafficClass(tc_msg(ifindex, 0, 0, 0)?),
            &format!("dump classes of #{ifindex}"),
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewTrafficClass(m)
                    if u32::try_from(m.header.index) == Ok(ifindex) =>
                {
                    Some(class_from_msg(m))
                }
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htb_options_round_trip() {
        let htb = Htb {
            default_class: 0x30,
            direct_qlen: 1000,
        };
        assert_eq!(parse_htb(&raw_nest(&qdisc_options(&htb))), Some(htb));
        for rate in [125_000u64, 12_500_000_000] {
            let class = HtbClass {
                rate,
                ceil: rate,
                buffer: 15_625,
                quantum: 65_536,
            };
            assert_eq!(
                parse_htb_class(&raw_nest(&class_options(&class))),
                Some(class)
            );
        }
    }

    /// The options as the kernel nests them in TCA_OPTIONS.
    fn raw_nest(options: &[TcOption]) -> Vec<u8> {
        use netlink_packet_core::Emitable;
        let mut buf = vec![0u8; options.buffer_len()];
        options.emit(&mut buf);
        buf
    }
}
