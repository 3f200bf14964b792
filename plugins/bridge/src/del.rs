//! DEL: best-effort and idempotent. Every step runs even if an earlier one
//! failed, missing things count as removed, and a vanished netns is fine.

use weft_cni::{Command, Error, Request};

use crate::config::BridgeConfig;
use crate::{firewall, ipam, open_netns};

pub fn del(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let mut errors = Vec::new();
    if req.netns_exists() {
        if let Err(e) = delete_container_interface(req) {
            errors.push(e);
        }
    }
    match ipam(req, config) {
        Ok(Some(ipam)) => {
            if let Err(e) = ipam.run(Command::Del, &req.stdin) {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    // Rules are keyed by network and container, not by address, so they
    // are removed even when the netns (and its addresses) are long gone.
    if let Err(e) = firewall::teardown(req, config) {
        errors.push(e);
    }
    Error::from_list(errors)
}

fn delete_container_interface(req: &Request) -> Result<(), Error> {
    let (_ns, mut pod) = match open_netns(req) {
        Ok(v) => v,
        // Raced with the runtime removing the netns.
        Err(_) if !req.netns_exists() => return Ok(()),
        Err(e) => return Err(e),
    };
    match pod.link_by_name(&req.ifname) {
        Ok(Some(link)) => match pod.delete_link(link.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::kernel(format!("delete {}", req.ifname), e)),
        },
        Ok(None) => Ok(()),
        Err(e) => Err(Error::kernel(format!("look up {}", req.ifname), e)),
    }
}
