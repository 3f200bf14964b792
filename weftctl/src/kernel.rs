//! The node's kernel state weftctl compares with weftd's leases: links,
//! routes of the main table, and the neighbours and FDB entries of the
//! overlay devices, read once through netlink.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::IpNetwork;
use weft_netlink::{format_mac, nud, FdbEntry, IpFamily, Link, Neighbour, Netlink, Route};
use weft_node_state::KernelEntry;

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
        let mut routes = nl.routes(IpFamily::V4)?;
        routes.extend(nl.routes(IpFamily::V6)?);
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

    /// Every route with a gateway, permanent neighbour and `self` FDB
    /// entry, named as weftd's state names the entries it wants.
    pub fn entries(&self) -> Vec<KernelEntry> {
        let routes = self.routes.iter().filter_map(|r| {
            Some(KernelEntry::Route {
                dst: r.dst.to_string(),
                gw: r.gateway?.to_string(),
                dev: self.name_of(r.oif),
                onlink: r.onlink,
            })
        });
        let neighbours = self.neighbours.iter().flat_map(|(dev, ns)| {
            ns.iter()
                .filter(|n| n.state & nud::PERMANENT != 0)
                .filter_map(move |n| {
                    Some(KernelEntry::Neighbour {
                        dev: self.name_of(Some(*dev)),
                        ip: n.ip.to_string(),
                        mac: format_mac(&n.mac?),
                    })
                })
        });
        let fdb = self.fdb.iter().flat_map(|(dev, fs)| {
            fs.iter()
                .filter(|f| f.is_self && f.mac != [0; 6])
                .filter_map(move |f| {
                    Some(KernelEntry::Fdb {
                        dev: self.name_of(Some(*dev)),
                        mac: format_mac(&f.mac),
                        dst: f.dst?.to_string(),
                    })
                })
        });
        routes.chain(neighbours).chain(fdb).collect()
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
