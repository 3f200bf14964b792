//! loopback: brings `lo` up in the pod's netns (ADD), down again (DEL), and
//! verifies it is up (CHECK). Like the reference, it ignores CNI_IFNAME.

use std::process::ExitCode;

use weft_cni::{CniResult, Error, ErrorCode, Interface, IpConfig, Plugin, Request};
use weft_netlink::{Netlink, Netns};

const LO: &str = "lo";

struct Loopback;

fn open(req: &Request) -> Result<Netlink, Error> {
    let path = req.netns_path()?;
    let ns = Netns::open(path)
        .map_err(|e| Error::env(format!("CNI_NETNS \"{}\": {e}", path.display())))?;
    Netlink::in_netns(&ns).map_err(|e| Error::kernel("open netlink in the pod netns", e))
}

fn lo_index(nl: &mut Netlink) -> Result<u32, Error> {
    match nl.link_by_name(LO) {
        Ok(Some(link)) => Ok(link.index),
        Ok(None) => Err(Error::new(
            ErrorCode::Kernel,
            "the pod netns has no lo interface",
        )),
        Err(e) => Err(Error::kernel("look up lo", e)),
    }
}

impl Plugin for Loopback {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let prev = req.prev_result()?;
        let mut nl = open(req)?;
        let index = lo_index(&mut nl)?;
        // Refuse before changing anything.
        let before = nl
            .addresses(Some(index))
            .map_err(|e| Error::kernel("list lo addresses", e))?;
        if let Some(a) = before.iter().find(|a| !a.net.ip().is_loopback()) {
            return Err(Error::config(format!(
                "lo carries the non-loopback address {}",
                a.net
            )));
        }
        nl.set_up(index)
            .map_err(|e| Error::kernel("set lo up", e))?;
        if let Some(prev) = prev {
            return Ok(prev);
        }
        // Bringing lo up is what adds 127.0.0.1/8 and ::1.
        let addrs = nl
            .addresses(Some(index))
            .map_err(|e| Error::kernel("list lo addresses", e))?;
        Ok(CniResult {
            interfaces: vec![Interface {
                name: LO.into(),
                mac: Some("00:00:00:00:00:00".into()),
                sandbox: req.netns.as_ref().map(|p| p.display().to_string()),
                ..Default::default()
            }],
            ips: addrs
                .iter()
                .map(|a| IpConfig {
                    address: a.net,
                    gateway: None,
                    interface: Some(0),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        // A netns that is already gone has nothing left to bring down.
        if !req.netns_exists() {
            return Ok(());
        }
        let mut nl = open(req)?;
        let index = lo_index(&mut nl)?;
        nl.set_down(index)
            .map_err(|e| Error::kernel("set lo down", e))
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let mut nl = open(req)?;
        let up = match nl.link_by_name(LO) {
            Ok(Some(link)) => link.up,
            Ok(None) => false,
            Err(e) => return Err(Error::kernel("look up lo", e)),
        };
        if up {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::CheckFailed,
                "lo is down in the pod netns",
            ))
        }
    }
}

fn main() -> ExitCode {
    weft_cni::skel::main(&Loopback)
}
