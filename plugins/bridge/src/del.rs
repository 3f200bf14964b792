//! DEL: best-effort and idempotent. Every step runs even if an earlier one
//! failed, missing things count as removed, and a vanished netns is fine.

use std::os::unix::process::CommandExt;
use std::process::{ExitCode, Stdio};

use weft_cni::{Command, Error, Request};
use weft_netlink::{Link, Netlink};

use crate::config::BridgeConfig;
use crate::{firewall, host_netlink, ipam, open_netns};

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
    let container = match pod.link_by_name(&req.ifname) {
        Ok(Some(link)) => link,
        Ok(None) => return Ok(()),
        Err(e) => return Err(Error::kernel(format!("look up {}", req.ifname), e)),
    };
    if retire_in_background(&mut pod, &container).is_err() {
        return match pod.delete_link(container.index) {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(Error::kernel(format!("delete {}", req.ifname), e)),
        };
    }
    Ok(())
}

/// Environment variable that turns a bridge process into the reaper of one
/// host veth (see `retire_in_background`).
pub const REAP_ENV: &str = "WEFT_BRIDGE_REAP_VETH";

/// Deleting a veth blocks in the kernel for ~20 ms (an RCU barrier while
/// unregistering), longer than everything else DEL does. So DEL takes the
/// pod interface down and renames it out of the way (the name is free for a
/// new ADD at once), and a detached process deletes the pair. If it never
/// runs, the pair dies with the netns, and GC removes a leftover host end.
fn retire_in_background(pod: &mut Netlink, container: &Link) -> Result<(), ()> {
    let mut host = host_netlink().map_err(drop)?;
    let peer = container.link.ok_or(())?;
    let host_veth = host.link_by_index(peer).ok().flatten().ok_or(())?;
    // Only our pair: the host link must point back at the pod interface.
    if host_veth.kind.as_deref() != Some("veth") || host_veth.link != Some(container.index) {
        return Err(());
    }
    pod.set_down(container.index).map_err(drop)?;
    pod.set_name(
        container.index,
        &format!("wdel{:08x}", container.index ^ std::process::id()),
    )
    .map_err(drop)?;
    let exe = std::env::current_exe().map_err(drop)?;
    std::process::Command::new(exe)
        .env(REAP_ENV, &host_veth.name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map(drop)
        .map_err(drop)
}

/// The detached half of DEL: delete host veth `name` (and so its pod end).
pub fn reap(name: &str) -> ExitCode {
    let deleted = host_netlink()
        .ok()
        .and_then(|mut host| match host.link_by_name(name) {
            Ok(Some(link)) if link.kind.as_deref() == Some("veth") => {
                host.delete_link(link.index).ok()
            }
            _ => Some(()),
        });
    if deleted.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
