//! CHECK: the live state must still match the previous result. Extra
//! addresses, routes or interfaces added by later plugins are tolerated.

use weft_cni::{CniResult, Command, Error, ErrorCode, Request};
use weft_netlink::{format_mac, IpFamily, Link, Netlink};

use crate::config::BridgeConfig;
use crate::{firewall, host_netlink, ipam, open_netns};

fn mismatch(msg: String) -> Error {
    Error::new(ErrorCode::CheckFailed, msg)
}

pub fn check(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let prev = req
        .prev_result()?
        .ok_or_else(|| Error::config("CHECK needs prevResult, and the config has none"))?;
    if let Some(ipam) = ipam(req, config)? {
        ipam.run(Command::Check, &req.stdin)?;
    }
    let mut host = host_netlink()?;
    let bridge = host
        .link_by_name(&config.bridge)
        .map_err(|e| Error::kernel(format!("look up {}", config.bridge), e))?
        .ok_or_else(|| mismatch(format!("bridge {} does not exist", config.bridge)))?;
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(mismatch(format!("{} is not a bridge", config.bridge)));
    }
    // Only a gateway bridge has its MAC pinned; otherwise it follows its
    // lowest port MAC and changes whenever that pod goes away.
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| i.name == config.bridge && i.sandbox.is_none())
    {
        if config.is_gateway {
            expect_mac(&bridge, want.mac.as_deref())?;
        }
    }
    if config.promisc_mode && !bridge.promisc {
        return Err(mismatch(format!(
            "bridge {} is not in promiscuous mode",
            config.bridge
        )));
    }

    let netns = req.netns_path()?.display().to_string();
    let (container_pos, want) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == req.ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult has no container interface {}",
                req.ifname
            ))
        })?;
    if want.sandbox.as_deref() != Some(netns.as_str()) {
        return Err(mismatch(format!(
            "{} is recorded in sandbox {:?}, not {netns}",
            req.ifname, want.sandbox
        )));
    }
    let (_ns, mut pod) = open_netns(req)?;
    let container = pod
        .link_by_name(&req.ifname)
        .map_err(|e| Error::kernel(format!("look up {}", req.ifname), e))?
        .ok_or_else(|| mismatch(format!("{} does not exist in {netns}", req.ifname)))?;
    if container.kind.as_deref() != Some("veth") {
        return Err(mismatch(format!("{} is not a veth", req.ifname)));
    }
    expect_mac(&container, want.mac.as_deref())?;

    let peer = container
        .link
        .ok_or_else(|| mismatch(format!("{} has no peer", req.ifname)))?;
    let host_veth = host
        .link_by_index(peer)
        .map_err(|e| Error::kernel("look up the host veth", e))?
        .filter(|l| l.kind.as_deref() == Some("veth"))
        .ok_or_else(|| mismatch(format!("the host end of {} is missing", req.ifname)))?;
    if host_veth.master != Some(bridge.index) {
        return Err(mismatch(format!(
            "host veth {} is not attached to {}",
            host_veth.name, config.bridge
        )));
    }
    check_addresses_and_routes(&prev, container_pos, &mut pod, &container)?;
    let addrs: Vec<_> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(container_pos))
        .map(|ip| ip.address)
        .collect();
    firewall::check(req, config, &addrs)
}

fn expect_mac(link: &Link, want: Option<&str>) -> Result<(), Error> {
    let have = link.mac.as_ref().map(format_mac);
    match want {
        Some(w) if have.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(w)) => Ok(()),
        Some(w) => Err(mismatch(format!(
            "{} has MAC {}, expected {w}",
            link.name,
            have.unwrap_or_default()
        ))),
        None => Ok(()),
    }
}

fn check_addresses_and_routes(
    prev: &CniResult,
    container_pos: usize,
    pod: &mut Netlink,
    container: &Link,
) -> Result<(), Error> {
    let addrs = pod
        .addresses(Some(container.index))
        .map_err(|e| Error::kernel("list container addresses", e))?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(container_pos))
    {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(mismatch(format!(
                "{} is missing address {}",
                container.name, ip.address
            )));
        }
    }
    let mut routes = pod
        .routes(IpFamily::V4)
        .map_err(|e| Error::kernel("list routes", e))?;
    routes.extend(
        pod.routes(IpFamily::V6)
            .map_err(|e| Error::kernel("list routes", e))?,
    );
    for want in &prev.routes {
        let found = routes.iter().any(|r| {
            // Another interface may carry the route (later plugins, several attachments).
            r.dst == want.dst && (want.gw.is_none() || r.gateway == want.gw)
        });
        if !found {
            let via = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(mismatch(format!("route to {}{via} is missing", want.dst)));
        }
    }
    Ok(())
}
