//! GC: forward to IPAM, then remove this network's host veths whose
//! attachment is not in `cni.dev/valid-attachments` (read from the alias
//! ADD gave them), whose pod end no longer exists, or that carry the
//! network's device group but no alias (an ADD killed between creating and
//! labelling the pair). Every step runs; all
//! failures are reported.

use weft_cni::{Command, Error, Request};

use crate::config::BridgeConfig;
use crate::{firewall, host_netlink, ipam};

pub fn gc(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let mut errors = Vec::new();
    match ipam(req, config) {
        Ok(Some(ipam)) => {
            if let Err(e) = ipam.run(Command::Gc, &req.stdin) {
                errors.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => errors.push(e),
    }
    if let Err(e) = remove_stale_veths(req, config) {
        errors.push(e);
    }
    match req.valid_attachments() {
        Ok(valid) => errors.extend(firewall::gc(req, config, &valid).err()),
        Err(e) => errors.push(e),
    }
    Error::from_list(errors)
}

fn remove_stale_veths(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let valid = req.valid_attachments()?;
    let mut host = host_netlink()?;
    let bridge = host
        .link_by_name(&config.bridge)
        .map_err(|e| Error::kernel("look up the bridge", e))?
        .map(|b| b.index);
    let group = crate::network_group(&req.name);
    let links = host.links().map_err(|e| Error::kernel("list links", e))?;
    let mut errors = Vec::new();
    for link in links.iter().filter(|l| {
        l.kind.as_deref() == Some("veth")
            && (l.master.is_some() && l.master == bridge || l.group == group)
    }) {
        // A veth whose peer is gone reports no peer index and no peer netns.
        let orphan = link.link.is_none_or(|peer| peer == 0) && link.link_netnsid.is_none();
        let attachment = link
            .alias
            .as_deref()
            .and_then(crate::parse_attachment_alias);
        // Made by an ADD of this network that died before labelling it
        // (runtimes never run GC during an ADD).
        let unlabelled = link.group == group && attachment.is_none();
        let stale = attachment.is_some_and(|(net, id, ifname)| {
            net == req.name
                && !valid
                    .iter()
                    .any(|(v_id, v_if)| v_id == id && v_if == ifname)
        });
        if orphan || unlabelled || stale {
            if let Err(e) = host.delete_link(link.index) {
                if !e.is_not_found() {
                    errors.push(Error::kernel(
                        format!("delete orphan veth {}", link.name),
                        e,
                    ));
                }
            }
        }
    }
    Error::from_list(errors)
}
