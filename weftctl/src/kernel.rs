//! The node's kernel state weftctl compares with weftd's leases: links,
//! IPv4 routes of the main table, and the neighbours and FDB entries of
//! the overlay devices, read once through netlink.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::{IpNetwork, Ipv4Network};
use weft_netlink::{FdbEntry, IpFamily, Link, Neighbour, Netlink, Route};

pub struct Kernel {
    pub links: Vec<Link>,
    pub routes: Vec<Route>,
    /// Per overlay device index.
    pub neighbours: BTreeMap<u32, Vec<Neighbour>>,
    pub fdb: BTreeMap<u32, Vec<FdbEntry>>,
}

impl Kernel {
    /// Reads links and routes, and neighbours and FDB entries of `devices`
    /// (those that exist).
    pub fn read(devices: &[String]) -> Result<Kernel, weft_netlink::Error> {
        let mut nl = Netlink::new()?;
        let links = nl.links()?;
        let routes = nl.routes(IpFamily::V4)?;
        let (mut neighbours, mut fdb) = (BTreeMap::new(), BTreeMap::new());
        for l in links.iter().filter(|l| devices.contains(&l.name)) {
            neighbours.insert(l.index, nl.neighbours(l.index)?);
            fdb.insert(l.index, nl.fdb(l.index)?);
        }
        Ok(Kernel {
            links,
            routes,
            neighbours,
            fdb,
        })
    }

    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.index == index)
    }

    pub fn name_of(&self, index: Option<u32>) -> String {
        index
            .and_then(|i| self.link_by_index(i))
            .map(|l| l.name.clone())
            .unwrap_or_else(|| "?".into())
    }

    /// The main-table route the kernel would use for `ip` (longest prefix).
    pub fn route_for(&self, ip: Ipv4Addr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| matches!(r.dst, IpNetwork::V4(n) if n.contains(ip)))
            .max_by_key(|r| r.dst.prefix())
    }
}

/// A sysctl of the calling namespace, as a number.
pub fn sysctl_num(key: &str) -> Option<u32> {
    weft_netlink::read_sysctl(key).ok()?.trim().parse().ok()
}

/// The route `dst via gw dev oif` (onlink or not) is present.
pub fn has_route(k: &Kernel, dst: Ipv4Network, gw: IpAddr, oif: Option<u32>) -> bool {
    k.routes.iter().any(|r| {
        r.dst == IpNetwork::V4(dst) && r.gateway == Some(gw) && (oif.is_none() || r.oif == oif)
    })
}
