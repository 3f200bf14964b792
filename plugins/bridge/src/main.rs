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
    weft_cni::skel::main(&Bridge)
}
