//! UDP conntrack flush for mapped ports, over ctnetlink: a UDP entry made
//! before the mapping (or for a pod that is gone) keeps steering the flow
//! where it went first, so a restarted pod would never see it (#1190).
//! Failures are logged, not fatal: the rules are what matters.

use weft_netlink::{delete_conntrack, ConntrackFilter, IpFamily};

use crate::attachment::Attachment;
use crate::config::{Mapping, Protocol};

const IPPROTO_UDP: u8 = 17;

#[derive(Debug, Clone, Copy)]
pub enum Flow {
    /// ADD: entries to the host port (on hostIP, when set).
    ToHostPort,
    /// DEL: entries to the host port that were DNATed to this pod.
    ToPod,
}

pub fn flush_udp(att: &Attachment, mappings: &[Mapping], flow: Flow) {
    for t in att.targets() {
        for m in att
            .mappings_for(t, mappings)
            .filter(|m| m.protocol == Protocol::Udp)
        {
            let filter = ConntrackFilter {
                family: if t.v4() { IpFamily::V4 } else { IpFamily::V6 },
                protocol: IPPROTO_UDP,
                dst_port: m.host_port,
                orig_dst: m.daddr(),
                reply_src: match flow {
                    Flow::ToHostPort => None,
                    Flow::ToPod => Some(t.pod.ip()),
                },
            };
            if let Err(e) = delete_conntrack(&filter) {
                weft_cni::log::warn(&format!(
                    "flushing UDP conntrack entries of host port {}: {e}",
                    m.host_port
                ));
            }
        }
    }
}
