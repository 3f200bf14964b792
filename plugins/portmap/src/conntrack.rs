//! UDP conntrack flush for mapped ports (filled in below).

use crate::attachment::Attachment;
use crate::config::Mapping;

#[derive(Debug, Clone, Copy)]
pub enum Flow {
    /// ADD: entries to the host port (a stale flow that hit no DNAT yet).
    ToHostPort,
    /// DEL: entries DNATed to this pod.
    ToPod,
}

pub fn flush_udp(_att: &Attachment, _mappings: &[Mapping], _flow: Flow) {}
