//! bridge: a Linux bridge on the node and a veth pair whose container end is
//! born inside the pod's netns, addressed through a delegated IPAM plugin.

mod add;
mod check;
mod config;
mod del;
mod firewall;
mod gc;

use std::process::ExitCode;

use weft_cni::delegate::Delegate;
use weft_cni::{CniResult, Command, Error, Plugin, Request};
use weft_netlink::{Netlink, Netns};

use config::BridgeConfig;

struct Bridge;

impl Plugin for Bridge {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        add::add(req, &BridgeConfig::parse(req)?.with_requested_mac(req)?)
    }
    fn del(&self, req: &Request) -> Result<(), Error> {
        del::del(req, &BridgeConfig::parse(req)?)
    }
    fn check(&self, req: &Request) -> Result<(), Error> {
        check::check(req, &BridgeConfig::parse(req)?)
    }
    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc::gc(req, &BridgeConfig::parse(req)?)
    }
    fn status(&self, req: &Request) -> Result<(), Error> {
        let config = BridgeConfig::parse(req)?;
        match ipam(req, &config)? {
            Some(ipam) => ipam.run(Command::Status, &req.stdin),
            None => Ok(()),
        }
    }
}

/// The configured IPAM plugin, located on CNI_PATH.
fn ipam(req: &Request, config: &BridgeConfig) -> Result<Option<Delegate>, Error> {
    config
        .ipam_type
        .as_deref()
        .map(|kind| Delegate::find(kind, req))
        .transpose()
}

/// The host veth's alias names its attachment, so GC can tell which
/// veths belong to attachments the runtime no longer knows.
fn attachment_alias(req: &Request) -> String {
    format!("weft/{}/{}/{}", req.name, req.container_id, req.ifname)
}

/// The device group of this network's host veths, set by the request that
/// creates the pair. The alias comes one request later (the kernel ignores
/// IFLA_IFALIAS at creation), so an ADD killed in between leaves a veth that
/// only its group identifies; GC removes such unlabelled ones. A hash of the
/// network name (FNV-1a), kept clear of small hand-picked group numbers.
fn network_group(network: &str) -> u32 {
    let hash = network.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    0x1000_0000 + hash % 0x7000_0000
}

/// (network, containerID, ifname) from a host veth's alias.
fn parse_attachment_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.strip_prefix("weft/")?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(net), Some(id), Some(ifname), None) => Some((net, id, ifname)),
        _ => None,
    }
}

fn host_netlink() -> Result<Netlink, Error> {
    Netlink::new().map_err(|e| Error::kernel("open netlink", e))
}

fn open_netns(req: &Request) -> Result<(Netns, Netlink), Error> {
    let path = req.netns_path()?;
    let ns = Netns::open(path)
        .map_err(|e| Error::env(format!("CNI_NETNS \"{}\": {e}", path.display())))?;
    let nl =
        Netlink::in_netns(&ns).map_err(|e| Error::kernel("open netlink in the pod netns", e))?;
    Ok((ns, nl))
}

fn main() -> ExitCode {
    if let Some(veth) = std::env::var_os(del::REAP_ENV) {
        return del::reap(&veth.to_string_lossy());
    }
    if let Some(held) = weft_firewall::hold_if_asked() {
        return held;
    }
    weft_cni::skel::main(&Bridge)
}
