//! bandwidth: a chained plugin that limits a pod's traffic with token
//! buckets, as the reference plugin does: traffic into the pod through a
//! root tbf on the host end of its veth, traffic out of the pod through an
//! ifb that the host veth's ingress redirects to; with shapedSubnets or
//! unshapedSubnets under an HTB that sorts by far end. All tc work is
//! netlink.

mod config;
mod sha512;
mod shaper;
mod subnets;

use std::process::ExitCode;

use weft_cni::{CniResult, Error, Interface, Plugin, Request};
use weft_netlink::{format_mac, IpField, Link, Netlink, Netns};

use config::Limits;
use shaper::Made;

/// The reference's ifb names: `bwp` + 12 hex digits of
/// SHA-512(network name ‖ container ID), 15 bytes in all.
fn ifb_name(req: &Request) -> String {
    let hash = sha512::hex_digest(format!("{}{}", req.name, req.container_id).as_bytes());
    format!("{IFB_PREFIX}{}", &hash[..12])
}

const IFB_PREFIX: &str = "bwp";

/// The ifb's alias names its attachment, so GC can tell whose it is.
fn attachment_label(req: &Request) -> String {
    format!("weft/{}/{}/{}", req.name, req.container_id, req.ifname)
}

/// (network, containerID, ifname) from an ifb's alias.
fn parse_attachment_label(alias: &str) -> Option<(&str, &str, &str)> {
    let mut parts = alias.strip_prefix("weft/")?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(net), Some(id), Some(ifname), None) => Some((net, id, ifname)),
        _ => None,
    }
}

fn host_netlink() -> Result<Netlink, Error> {
    Netlink::new().map_err(|e| Error::kernel("open netlink", e))
}

fn chained(req: &Request) -> Result<CniResult, Error> {
    req.prev_result()?.ok_or_else(|| {
        Error::config("bandwidth must be called as a chained plugin: the config has no prevResult")
    })
}

/// The host end of the pod's veth: the peer of CNI_IFNAME, which must point
/// back at it and, given a previous result, be listed there as a host
/// interface (as the reference requires).
fn host_veth(req: &Request, prev: Option<&CniResult>, host: &mut Netlink) -> Result<Link, Error> {
    let path = req.netns_path()?;
    let ns = Netns::open(path)
        .map_err(|e| Error::env(format!("CNI_NETNS \"{}\": {e}", path.display())))?;
    let mut pod =
        Netlink::in_netns(&ns).map_err(|e| Error::kernel("open netlink in the pod netns", e))?;
    let container = pod
        .link_by_name(&req.ifname)
        .map_err(|e| Error::kernel(format!("look up {}", req.ifname), e))?
        .ok_or_else(|| {
            Error::config(format!(
                "there is no interface {} in {}",
                req.ifname,
                path.display()
            ))
        })?;
    let no_peer = || {
        Error::config(format!(
            "container interface {} has no veth peer in the node's netns; bandwidth shapes veth attachments only",
            req.ifname
        ))
    };
    if container.kind.as_deref() != Some("veth") {
        return Err(no_peer());
    }
    let peer = container.link.ok_or_else(no_peer)?;
    let veth = host
        .link_by_index(peer)
        .map_err(|e| Error::kernel("look up the host veth", e))?
        .filter(|l| l.kind.as_deref() == Some("veth") && l.link == Some(container.index))
        .ok_or_else(no_peer)?;
    if let Some(prev) = prev {
        let listed = prev
            .interfaces
            .iter()
            .any(|i| i.sandbox.as_deref().unwrap_or("").is_empty() && i.name == veth.name);
        if !listed {
            return Err(Error::config(format!(
                "prevResult does not list the host veth {} of {}",
                veth.name, req.ifname
            )));
        }
    }
    Ok(veth)
}

fn add(req: &Request) -> Result<CniResult, Error> {
    let limits = Limits::parse(&req.config)?;
    let mut result = chained(req)?;
    if limits.is_empty() {
        return Ok(result);
    }
    let mut host = host_netlink()?;
    let veth = host_veth(req, Some(&result), &mut host)?;
    let mut made = Made::default();
    let shaped = shape(req, &limits, &mut host, &veth, &mut made);
    match shaped {
        Ok(Some(ifb)) => {
            result.interfaces.push(Interface {
                name: ifb.name.clone(),
                mac: ifb.mac.as_ref().map(format_mac),
                ..Default::default()
            });
            Ok(result)
        }
        Ok(None) => Ok(result),
        Err(e) => {
            made.undo(&mut host);
            Err(e)
        }
    }
}

fn shape(
    req: &Request,
    limits: &Limits,
    host: &mut Netlink,
    veth: &Link,
    made: &mut Made,
) -> Result<Option<Link>, Error> {
    if let Some(limit) = limits.ingress {
        shaper::shape_ingress(host, veth, limit, &limits.scope, made)?;
    }
    match limits.egress {
        Some(limit) => shaper::shape_egress(
            host,
            veth,
            &ifb_name(req),
            &attachment_label(req),
            limit,
            &limits.scope,
            made,
        )
        .map(Some),
        None => Ok(None),
    }
}

/// DEL needs neither the limits nor prevResult: the host veth is found
/// through the pod (when its netns is still there) and the ifb by name.
fn del(req: &Request) -> Result<(), Error> {
    let mut host = host_netlink()?;
    let mut errors = Vec::new();
    if req.netns_exists() {
        // Without a pod interface (the pair died with the netns, or a DEL
        // is retried after bridge's) nothing is shaped any more.
        if let Ok(veth) = host_veth(req, None, &mut host) {
            errors.extend(shaper::unshape_veth(&mut host, &veth).err());
        }
    }
    shaper::remove_ifb(&mut host, &ifb_name(req));
    if let Ok(Some(left)) = host.link_by_name(&ifb_name(req)) {
        if left.kind.as_deref() == Some("ifb") {
            errors.push(Error::kernel(
                format!("delete ifb {}", left.name),
                "it is still there",
            ));
        }
    }
    Error::from_list(errors)
}

fn check(req: &Request) -> Result<(), Error> {
    let limits = Limits::parse(&req.config)?;
    let prev = chained(req)?;
    if limits.is_empty() {
        return Ok(());
    }
    let mut host = host_netlink()?;
    let veth = host_veth(req, Some(&prev), &mut host)?;
    if let Some(limit) = limits.ingress {
        shaper::verify_shaper(
            &mut host,
            &veth,
            limit,
            veth.mtu,
            &limits.scope,
            IpField::Source,
        )?;
    }
    if let Some(limit) = limits.egress {
        let name = ifb_name(req);
        let ifb = host
            .link_by_name(&name)
            .map_err(|e| Error::kernel(format!("look up {name}"), e))?
            .filter(|l| l.kind.as_deref() == Some("ifb") && l.up)
            .ok_or_else(|| {
                Error::new(
                    weft_cni::ErrorCode::CheckFailed,
                    format!("ifb {name} is missing or down"),
                )
            })?;
        shaper::verify_shaper(
            &mut host,
            &ifb,
            limit,
            veth.mtu,
            &limits.scope,
            IpField::Destination,
        )?;
        shaper::verify_redirect(&mut host, &veth, &ifb)?;
    }
    Ok(())
}

/// GC: delete this network's ifbs whose attachment is not valid, and
/// unlabelled ones that are down: an ADD killed between creating and
/// labelling left them (ADD labels and raises an ifb in one request, and
/// the reference creates its ifbs up).
fn gc(req: &Request) -> Result<(), Error> {
    let valid = req.valid_attachments()?;
    let mut host = host_netlink()?;
    let links = host.links().map_err(|e| Error::kernel("list links", e))?;
    let mut errors = Vec::new();
    for link in links
        .iter()
        .filter(|l| l.kind.as_deref() == Some("ifb") && l.name.starts_with(IFB_PREFIX))
    {
        let stale = match link.alias.as_deref().map(parse_attachment_label) {
            Some(Some((net, id, ifname))) => {
                net == req.name
                    && !valid
                        .iter()
                        .any(|(v_id, v_if)| v_id == id && v_if == ifname)
            }
            Some(None) => false,
            None => !link.up,
        };
        if stale {
            if let Err(e) = host.delete_link(link.index) {
                if !e.is_not_found() {
                    errors.push(Error::kernel(format!("delete stale ifb {}", link.name), e));
                }
            }
        }
    }
    Error::from_list(errors)
}

struct Bandwidth;

impl Plugin for Bandwidth {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        add(req)
    }
    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req)
    }
    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req)
    }
    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req)
    }
}

fn main() -> ExitCode {
    weft_cni::skel::main(&Bandwidth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        assert_eq!(
            parse_attachment_label("weft/net/abc/eth0"),
            Some(("net", "abc", "eth0"))
        );
        assert_eq!(parse_attachment_label("weft/net/abc"), None);
        assert_eq!(parse_attachment_label("other"), None);
    }
}
