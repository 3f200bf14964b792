//! The pod side of a mapping: which addresses the mappings point at, and
//! the key every rule of this attachment carries.

use ipnetwork::IpNetwork;
use weft_cni::{CniResult, Error, Request};

use crate::config::{Mapping, PortmapConfig};

/// One family's target: the pod's address (with its subnet's prefix).
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub pod: IpNetwork,
}

impl Target {
    pub fn v4(&self) -> bool {
        self.pod.is_ipv4()
    }
    /// The pod's subnet: hairpin traffic from any pod in it is masqueraded.
    pub fn subnet(&self) -> IpNetwork {
        IpNetwork::new(self.pod.network(), self.pod.prefix()).unwrap_or(self.pod)
    }
}

#[derive(Debug)]
pub struct Attachment {
    pub key: String,
    /// Readable part of the rules' comments.
    pub owner: String,
    pub v4: Option<Target>,
    pub v6: Option<Target>,
}

pub fn key(req: &Request) -> String {
    weft_firewall::attachment_key(&req.name, &req.container_id, &req.ifname)
}

/// GC: the keys of this network's attachments that are not in `valid`.
pub fn stale(req: &Request, valid: &[(String, String)]) -> impl Fn(&str) -> bool {
    let ours = weft_firewall::network_key(&req.name);
    let valid: Vec<String> = valid
        .iter()
        .map(|(id, ifname)| weft_firewall::attachment_key(&req.name, id, ifname))
        .collect();
    move |key: &str| key.starts_with(&ours) && !valid.iter().any(|v| v == key)
}

impl Attachment {
    /// The first IPv4 and IPv6 address of CNI_IFNAME in prevResult (IPs
    /// without an interface index count, as in the reference). Every
    /// mapping must have a family the pod has an address for.
    pub fn new(req: &Request, prev: &CniResult, config: &PortmapConfig) -> Result<Self, Error> {
        let ours = |ip: &&weft_cni::IpConfig| match ip.interface {
            None => true,
            Some(i) => prev.interfaces.get(i).is_some_and(|itf| {
                itf.name == req.ifname && itf.sandbox.as_deref().is_some_and(|s| !s.is_empty())
            }),
        };
        let first = |v4: bool| {
            prev.ips
                .iter()
                .filter(ours)
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| Target { pod: ip.address })
        };
        let att = Attachment {
            key: key(req),
            owner: format!("weft portmap net={} id={}", req.name, req.container_id),
            v4: first(true),
            v6: first(false),
        };
        for m in &config.mappings {
            if att.targets().all(|t| !m.applies_to(t.v4())) {
                return Err(Error::config(format!(
                    "host port {}/{}{}: the pod has no address of that family on {}",
                    m.host_port,
                    m.protocol.as_str(),
                    m.host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default(),
                    req.ifname
                )));
            }
        }
        Ok(att)
    }

    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.v4.iter().chain(self.v6.iter())
    }

    pub fn comment(&self) -> String {
        weft_firewall::comment(&self.owner, &self.key)
    }

    /// The mappings that apply to `target`'s family.
    pub fn mappings_for<'a>(
        &self,
        target: &Target,
        mappings: &'a [Mapping],
    ) -> impl Iterator<Item = &'a Mapping> {
        let v4 = target.v4();
        mappings.iter().filter(move |m| m.applies_to(v4))
    }
}
