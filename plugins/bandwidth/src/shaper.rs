//! From a configured rate and burst to the kernel's tbf parameters, and
//! the tc objects that shape one attachment: a root tbf on the host veth
//! (traffic into the pod) and, for traffic out of the pod, an ifb with its
//! own root tbf that the host veth's ingress redirects to. With
//! shaped/unshaped subnets the tbf moves under a classifying HTB
//! ([`crate::subnets`]).

use nix::errno::Errno;
use weft_cni::{Error, ErrorCode};
use weft_netlink::{tc, IpField, Link, Netlink, Tbf};

use crate::config::{Limit, Scope};
use crate::subnets::{self, Selection};

/// The reference's fixed queueing latency: the queue holds this much
/// traffic at the rate, on top of the bucket.
const LATENCY_USEC: u64 = 25_000;
/// A bucket never holds more than this much time at the rate. containerd
/// always sends a 4 GiB (2^32-1 bit) burst; the reference turns that into
/// a wrapped 32-bit buffer (garbage below ~16 Mbit/s, 512 MiB of unshaped
/// burst above). One second keeps short bursts fast and long ones shaped.
const MAX_BUCKET_USEC: u64 = 1_000_000;
/// Ethernet header: a bucket must hold one whole frame.
const ETH_HEADER: u64 = 14;

/// The tbf for `limit` on a device with `mtu`. The arithmetic is the
/// reference's (rate/8 bytes per second, burst/8 bytes, buffer = burst
/// time in 64 ns ticks, limit = 25 ms of rate + burst) in 64 bits, with the
/// bucket raised to one frame and capped at [`MAX_BUCKET_USEC`] of rate.
pub fn tbf_for(limit: Limit, mtu: u32) -> Tbf {
    let rate = (limit.rate / 8).max(1);
    let max_bucket = (u128::from(rate) * u128::from(MAX_BUCKET_USEC) / 1_000_000) as u64;
    let bucket = (limit.burst / 8)
        .min(max_bucket)
        .max(u64::from(mtu) + ETH_HEADER);
    let ticks = (u128::from(bucket) * 15_625_000 / u128::from(rate)).max(1);
    let queue = u128::from(rate) * u128::from(LATENCY_USEC) / 1_000_000 + u128::from(bucket);
    Tbf {
        rate,
        limit: u32::try_from(queue).unwrap_or(u32::MAX),
        buffer: u32::try_from(ticks).unwrap_or(u32::MAX),
    }
}

fn kernel(what: String) -> impl FnOnce(weft_netlink::Error) -> Error {
    move |e| Error::kernel(what, e)
}

/// What ADD has put in place so far, so a failure can take exactly that
/// back out.
#[derive(Debug, Default)]
pub struct Made {
    pub root_qdisc_on: Option<u32>,
    pub ingress_qdisc_on: Option<u32>,
    pub ifb: Option<String>,
}

impl Made {
    pub fn undo(self, host: &mut Netlink) {
        if let Some(index) = self.ingress_qdisc_on {
            let _ = host.delete_qdisc(index, tc::INGRESS_PARENT, tc::INGRESS_HANDLE);
        }
        if let Some(name) = self.ifb {
            remove_ifb(host, &name);
        }
        if let Some(index) = self.root_qdisc_on {
            let _ = host.delete_qdisc(index, tc::ROOT, tc::TBF_HANDLE);
        }
    }
}

/// The listed subnets of `scope`, or None when everything is shaped.
fn selection(scope: &Scope) -> Option<Selection<'_>> {
    match scope {
        Scope::All => None,
        Scope::Only(nets) => Some(Selection {
            nets,
            listed_are_shaped: true,
        }),
        Scope::Except(nets) => Some(Selection {
            nets,
            listed_are_shaped: false,
        }),
    }
}

/// Shape what `scope` selects of the traffic leaving `dev` (a device of
/// `mtu`), telling it by the packet's `field` address: a root tbf, or the
/// classifying tree of [`subnets::install`].
fn install(
    host: &mut Netlink,
    dev: &Link,
    limit: Limit,
    mtu: u32,
    scope: &Scope,
    field: IpField,
) -> Result<(), Error> {
    let tbf = tbf_for(limit, mtu);
    let what = || format!("add the shaper to {}", dev.name);
    match selection(scope) {
        None => match host.replace_root_tbf(dev.index, &tbf) {
            // A root 1: of another kind (an earlier ADD's HTB) cannot be
            // changed into a tbf, only replaced.
            Err(e) if e.errno() == Some(Errno::EINVAL) => {
                let _ = host.delete_qdisc(dev.index, tc::ROOT, tc::TBF_HANDLE);
                host.replace_root_tbf(dev.index, &tbf)
                    .map_err(kernel(what()))
            }
            other => other.map_err(kernel(what())),
        },
        Some(sel) => subnets::install(host, dev, &tbf, sel, field),
    }
}

/// Shape traffic into the pod on the host veth, telling subnets apart by
/// the sender's address.
pub fn shape_ingress(
    host: &mut Netlink,
    veth: &Link,
    limit: Limit,
    scope: &Scope,
    made: &mut Made,
) -> Result<(), Error> {
    made.root_qdisc_on = Some(veth.index);
    install(host, veth, limit, veth.mtu, scope, IpField::Source)
}

/// Shape traffic out of the pod: ifb `ifb_name` (labelled `label`, the
/// veth's MTU, no transmit queue as in the reference) with a root tbf, and
/// everything arriving on the host veth redirected to it. Returns the ifb.
pub fn shape_egress(
    host: &mut Netlink,
    veth: &Link,
    ifb_name: &str,
    label: &str,
    limit: Limit,
    scope: &Scope,
    made: &mut Made,
) -> Result<Link, Error> {
    match host.create_ifb(ifb_name, veth.mtu, 0) {
        Ok(()) => made.ifb = Some(ifb_name.to_string()),
        // Left by an ADD of this attachment that was killed: reuse it.
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(Error::kernel(format!("create ifb {ifb_name}"), e)),
    }
    let ifb = host
        .link_by_name(ifb_name)
        .map_err(kernel(format!("look up {ifb_name}")))?
        .filter(|l| l.kind.as_deref() == Some("ifb"))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::AlreadyExists,
                format!("{ifb_name} exists and is not an ifb"),
            )
        })?;
    made.ifb = Some(ifb_name.to_string());
    host.set_alias_up(ifb.index, label)
        .map_err(kernel(format!("label and set up {ifb_name}")))?;
    install(host, &ifb, limit, veth.mtu, scope, IpField::Destination)?;
    made.ingress_qdisc_on = Some(veth.index);
    host.ensure_ingress_qdisc(veth.index)
        .map_err(kernel(format!("add an ingress qdisc to {}", veth.name)))?;
    host.add_ingress_redirect(veth.index, ifb.index)
        .map_err(kernel(format!("redirect {} to {ifb_name}", veth.name)))?;
    Ok(ifb)
}

/// Delete ifb `name` if it is one; a missing device is fine.
pub fn remove_ifb(host: &mut Netlink, name: &str) {
    if let Ok(Some(link)) = host.link_by_name(name) {
        if link.kind.as_deref() == Some("ifb") {
            let _ = host.delete_link(link.index);
        }
    }
}

/// Remove the shaping from the host veth: its ingress qdisc (with the
/// redirect) and a root tbf or htb `1:` (with its classes and filters).
/// What is already gone counts as removed.
pub fn unshape_veth(host: &mut Netlink, veth: &Link) -> Result<(), Error> {
    let qdiscs = host
        .qdiscs(veth.index)
        .map_err(kernel(format!("list the qdiscs of {}", veth.name)))?;
    let mut errors = Vec::new();
    for q in qdiscs {
        let ours = (q.kind == "ingress" && q.handle == tc::INGRESS_HANDLE)
            || (matches!(q.kind.as_str(), "tbf" | "htb")
                && q.parent == tc::ROOT
                && q.handle == tc::TBF_HANDLE);
        if !ours {
            continue;
        }
        if let Err(e) = host.delete_qdisc(veth.index, q.parent, q.handle) {
            // The kernel answers EINVAL for a qdisc that went meanwhile.
            if !e.is_not_found() && e.errno() != Some(Errno::EINVAL) {
                errors.push(Error::kernel(
                    format!("delete the {} qdisc of {}", q.kind, veth.name),
                    e,
                ));
            }
        }
    }
    Error::from_list(errors)
}

fn mismatch(msg: String) -> Error {
    Error::new(ErrorCode::CheckFailed, msg)
}

/// CHECK: `dev` shapes as [`install`] made it.
pub fn verify_shaper(
    host: &mut Netlink,
    dev: &Link,
    limit: Limit,
    mtu: u32,
    scope: &Scope,
    field: IpField,
) -> Result<(), Error> {
    match selection(scope) {
        None => verify_tbf(host, dev, limit, mtu),
        Some(sel) => subnets::verify(host, dev, &tbf_for(limit, mtu), sel, field),
    }
}

/// CHECK: `dev` has a root tbf `1:` with exactly the parameters `limit`
/// gives on a device of `mtu`.
fn verify_tbf(host: &mut Netlink, dev: &Link, limit: Limit, mtu: u32) -> Result<(), Error> {
    let want = tbf_for(limit, mtu);
    let qdiscs = host
        .qdiscs(dev.index)
        .map_err(kernel(format!("list the qdiscs of {}", dev.name)))?;
    let root = qdiscs
        .iter()
        .find(|q| q.parent == tc::ROOT)
        .ok_or_else(|| mismatch(format!("{} has no root qdisc", dev.name)))?;
    if root.kind != "tbf" || root.handle != tc::TBF_HANDLE {
        return Err(mismatch(format!(
            "the root qdisc of {} is {} {:x}:, not tbf 1:",
            dev.name,
            root.kind,
            root.handle >> 16
        )));
    }
    match root.tbf {
        Some(got) if got == want => Ok(()),
        got => Err(mismatch(format!(
            "the tbf of {} is {got:?}, expected {want:?}",
            dev.name
        ))),
    }
}

/// CHECK: `veth`'s ingress qdisc has a match-all filter redirecting to `ifb`.
pub fn verify_redirect(host: &mut Netlink, veth: &Link, ifb: &Link) -> Result<(), Error> {
    let filters = host
        .filters(veth.index, tc::INGRESS_HANDLE)
        .map_err(kernel(format!("list the ingress filters of {}", veth.name)))?;
    if filters
        .iter()
        .any(|f| f.matches_all && f.redirect_to == Some(ifb.index))
    {
        Ok(())
    } else {
        Err(mismatch(format!(
            "{} does not redirect its traffic to {}",
            veth.name, ifb.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_arithmetic_for_ordinary_values() {
        // [obs] 1 Mbit / 80000 bits: `tbf 1: root rate 1Mbit burst 10000b lat 25ms`.
        let t = tbf_for(
            Limit {
                rate: 1_000_000,
                burst: 80_000,
            },
            1500,
        );
        assert_eq!(t.rate, 125_000);
        assert_eq!(t.buffer, 1_250_000);
        assert_eq!(t.limit, 3125 + 10_000);
    }

    #[test]
    fn bucket_is_at_least_a_frame_and_at_most_a_second() {
        let tiny = tbf_for(
            Limit {
                rate: 8_000,
                burst: 8,
            },
            1500,
        );
        assert_eq!(tiny.buffer as u64, 1514 * 15_625_000 / 1000);
        // containerd's burst at 10 Mbit/s: one second, not 429 s.
        let cd = tbf_for(
            Limit {
                rate: 10_000_000,
                burst: u64::from(u32::MAX),
            },
            1500,
        );
        assert_eq!(cd.buffer, 15_625_000);
        assert_eq!(cd.limit, 31_250 + 1_250_000);
        let huge = tbf_for(
            Limit {
                rate: u64::MAX,
                burst: 34_359_738_359,
            },
            1500,
        );
        assert_eq!(huge.limit, u32::MAX);
        assert!(huge.buffer >= 1);
        let slow = tbf_for(Limit { rate: 8, burst: 8 }, 65535);
        assert_eq!(slow.buffer, u32::MAX);
    }
}
