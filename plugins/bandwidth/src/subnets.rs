//! Shaping only part of a pod's traffic (`shapedSubnets`/`unshapedSubnets`).
//! The device (host veth or ifb) gets a root HTB `1:` that only sorts:
//! class `1:30` holds the shaped traffic and `1:1` the rest, as in the
//! reference's 1.5.x, and one u32 classifier per listed CIDR sends matching
//! packets to the class the list names; the others go to the default.
//!
//! The reference's 1.5.x HTB dropped traffic (its PR #1097): quantum left to
//! rate/r2q (far outside the kernel's 1000..200000 range at its rates) and
//! leaves that inherit the ifb's txqueuelen of 0. Here both classes run at
//! line rate with a stated quantum, so HTB itself never throttles; the
//! shaped class's leaf is the very tbf the plain form puts at the root (same
//! rate, bucket and queue), and the other leaf is a pfifo with a stated
//! limit, so nothing depends on the device's txqueuelen.

use ipnetwork::IpNetwork;
use nix::errno::Errno;
use weft_cni::{Error, ErrorCode};
use weft_netlink::{tc, Htb, HtbClass, IpField, Link, Netlink, Tbf};

pub const ROOT_HANDLE: u32 = tc::TBF_HANDLE;
/// The reference's class numbers: shaped 1:30 (hex, 48), unshaped 1:1.
pub const SHAPED_CLASS: u32 = ROOT_HANDLE | 0x30;
pub const UNSHAPED_CLASS: u32 = ROOT_HANDLE | 0x1;
const SHAPED_LEAF: u32 = 0x0030_0000;
const UNSHAPED_LEAF: u32 = 0x0002_0000;
/// Both classes' rate: the reference's 100 Gbit/s, in bytes.
const LINE_RATE: u64 = 100_000_000_000 / 8;
/// A millisecond of tokens at line rate, in psched ticks.
const CLASS_BUFFER_TICKS: u32 = 15_625;
/// Bytes a class sends per turn: one 64 KiB GSO packet.
const QUANTUM: u32 = 65_536;
/// The unshaped leaf's and HTB's direct queue, in packets (the usual
/// txqueuelen, stated so an ifb's 0 cannot apply).
const QUEUE_PACKETS: u32 = 1000;
/// Classifier priorities: one u32 per family (a priority has one protocol).
const PRIORITY_V4: u16 = 1;
const PRIORITY_V6: u16 = 2;

/// The listed CIDRs, and whether the list names what is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub nets: &'a [IpNetwork],
    pub listed_are_shaped: bool,
}

impl Selection<'_> {
    /// The class the listed CIDRs go to, and the default for the rest.
    fn classes(&self) -> (u32, u32) {
        if self.listed_are_shaped {
            (SHAPED_CLASS, UNSHAPED_CLASS)
        } else {
            (UNSHAPED_CLASS, SHAPED_CLASS)
        }
    }
}

fn line_rate_class() -> HtbClass {
    HtbClass {
        rate: LINE_RATE,
        ceil: LINE_RATE,
        buffer: CLASS_BUFFER_TICKS,
        quantum: QUANTUM,
    }
}

fn priority(net: &IpNetwork) -> u16 {
    match net {
        IpNetwork::V4(_) => PRIORITY_V4,
        IpNetwork::V6(_) => PRIORITY_V6,
    }
}

fn kernel(what: String) -> impl FnOnce(weft_netlink::Error) -> Error {
    move |e| Error::kernel(what, e)
}

/// Put the classifying tree on `dev`, shaping with `tbf` what `sel` says
/// and matching each CIDR against the packet's `field`. A root qdisc `1:`
/// already there (a repeated ADD) is replaced.
pub fn install(
    host: &mut Netlink,
    dev: &Link,
    tbf: &Tbf,
    sel: Selection,
    field: IpField,
) -> Result<(), Error> {
    let name = &dev.name;
    match host.delete_qdisc(dev.index, tc::ROOT, ROOT_HANDLE) {
        Err(e) if !e.is_not_found() && e.errno() != Some(Errno::EINVAL) => {
            return Err(Error::kernel(
                format!("replace the root qdisc of {name}"),
                e,
            ))
        }
        _ => {}
    }
    let (listed, default) = sel.classes();
    let htb = Htb {
        default_class: (default & 0xffff) as u16,
        direct_qlen: QUEUE_PACKETS,
    };
    host.add_root_htb(dev.index, ROOT_HANDLE, &htb)
        .map_err(kernel(format!("add a root htb to {name}")))?;
    for class in [UNSHAPED_CLASS, SHAPED_CLASS] {
        host.add_htb_class(dev.index, ROOT_HANDLE, class, &line_rate_class())
            .map_err(kernel(format!("add an htb class to {name}")))?;
    }
    host.replace_pfifo(dev.index, UNSHAPED_CLASS, UNSHAPED_LEAF, QUEUE_PACKETS)
        .map_err(kernel(format!("add the unshaped queue to {name}")))?;
    host.replace_tbf(dev.index, SHAPED_CLASS, SHAPED_LEAF, tbf)
        .map_err(kernel(format!("add the shaper to {name}")))?;
    for net in sel.nets {
        host.add_prefix_classifier(dev.index, ROOT_HANDLE, priority(net), net, field, listed)
            .map_err(kernel(format!("classify {net} on {name}")))?;
    }
    Ok(())
}

fn mismatch(msg: String) -> Error {
    Error::new(ErrorCode::CheckFailed, msg)
}

/// CHECK: `dev` carries exactly the tree [`install`] makes.
pub fn verify(
    host: &mut Netlink,
    dev: &Link,
    tbf: &Tbf,
    sel: Selection,
    field: IpField,
) -> Result<(), Error> {
    let name = &dev.name;
    let (listed, default) = sel.classes();
    let qdiscs = host
        .qdiscs(dev.index)
        .map_err(kernel(format!("list the qdiscs of {name}")))?;
    let has = |kind: &str, parent: u32, handle: u32, ok: &dyn Fn(&tc::Qdisc) -> bool| {
        qdiscs
            .iter()
            .any(|q| q.kind == kind && q.parent == parent && q.handle == handle && ok(q))
    };
    let want_default = u16::try_from(default & 0xffff).ok();
    if !has("htb", tc::ROOT, ROOT_HANDLE, &|q| {
        q.htb.map(|h| h.default_class) == want_default
    }) {
        return Err(mismatch(format!(
            "{name} has no root htb 1: defaulting to 1:{default:x}"
        )));
    }
    if !has("tbf", SHAPED_CLASS, SHAPED_LEAF, &|q| q.tbf == Some(*tbf)) {
        return Err(mismatch(format!(
            "the shaped class of {name} has no tbf {tbf:?}"
        )));
    }
    if !has("pfifo", UNSHAPED_CLASS, UNSHAPED_LEAF, &|_| true) {
        return Err(mismatch(format!(
            "the unshaped class of {name} has no pfifo"
        )));
    }
    let classes = host
        .classes(dev.index)
        .map_err(kernel(format!("list the classes of {name}")))?;
    for class in [UNSHAPED_CLASS, SHAPED_CLASS] {
        if !classes
            .iter()
            .any(|c| c.handle == class && c.htb == Some(line_rate_class()))
        {
            return Err(mismatch(format!(
                "{name} has no htb class 1:{:x} at line rate",
                class & 0xffff
            )));
        }
    }
    verify_classifiers(host, dev, sel.nets, field, listed)
}

/// CHECK: one classifier per CIDR, sending it to `class`, and no other.
fn verify_classifiers(
    host: &mut Netlink,
    dev: &Link,
    nets: &[IpNetwork],
    field: IpField,
    class: u32,
) -> Result<(), Error> {
    let filters = host
        .filters(dev.index, ROOT_HANDLE)
        .map_err(kernel(format!("list the filters of {}", dev.name)))?;
    let rules: Vec<_> = filters.iter().filter(|f| f.classid.is_some()).collect();
    for net in nets {
        let keys = tc::prefix_keys(net, field);
        let found = rules.iter().any(|f| {
            f.protocol == tc::protocol_of(net) && f.classid == Some(class) && f.keys == keys
        });
        if !found {
            return Err(mismatch(format!(
                "{} does not classify {net} into 1:{:x}",
                dev.name,
                class & 0xffff
            )));
        }
    }
    if rules.len() != nets.len() {
        return Err(mismatch(format!(
            "{} has {} classifiers, expected {}",
            dev.name,
            rules.len(),
            nets.len()
        )));
    }
    Ok(())
}
