//! The host-gw backend, in flannel's format: leases with `BackendType`
//! `host-gw` and no BackendData; per peer a route `<subnet> via
//! <PublicIP> dev <iface>`; pods get the interface's MTU. It needs L2
//! adjacency: a peer that is not on-link gets no route (a route through a
//! gateway would send pod traffic to the gateway, which knows nothing of
//! pod subnets); the data plane logs it once, counts it and shows it in
//! readiness.

use super::underlay::{Reach, Underlay};
use super::{Backend, BackendError, Context, DeviceSpec, Entry, NotProgrammable, Peer, PeerData};
use crate::store::attrs::LeaseAttrs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use weft_netlink::IpFamily;

pub const HOST_GW: &str = "host-gw";

pub struct HostGw {
    attrs: LeaseAttrs,
    mtu: u32,
}

impl HostGw {
    /// Refuses, as flanneld does, a public IP that is not an address of
    /// the interface: behind NAT, peers' routes would point at an address
    /// this node does not have.
    pub fn new(
        underlay: &Underlay,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Self, BackendError> {
        for ip in std::iter::once(IpAddr::V4(public_ip)).chain(public_ipv6.map(IpAddr::V6)) {
            if !underlay.nets.iter().any(|n| n.ip() == ip) {
                return Err(BackendError::Setup(format!(
                    "host-gw: the public IP {ip} is not an address of interface {} (host-gw cannot work through NAT); use --public-ip with one of its addresses",
                    underlay.name
                )));
            }
        }
        Ok(HostGw {
            attrs: LeaseAttrs::host_gw(public_ip, public_ipv6),
            mtu: underlay.mtu,
        })
    }
}

impl Backend for HostGw {
    fn kind(&self) -> &'static str {
        HOST_GW
    }

    fn lease_attrs(&self) -> &LeaseAttrs {
        &self.attrs
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn accept(&self, attrs: &LeaseAttrs, _family: IpFamily) -> Result<PeerData, String> {
        if attrs.backend_type == HOST_GW {
            Ok(PeerData::None)
        } else {
            Err(format!(
                "BackendType {:?} is not host-gw",
                attrs.backend_type
            ))
        }
    }

    fn device(&self, _family: IpFamily) -> Option<&DeviceSpec> {
        None
    }

    fn entries(&self, peer: &Peer, cx: &Context) -> Result<Vec<Entry>, NotProgrammable> {
        match (cx.reach)(peer.public_ip) {
            Reach::Direct => Ok(vec![Entry::Route {
                dst: peer.subnet,
                gw: peer.public_ip,
                dev: cx.underlay.index,
                onlink: false,
            }]),
            Reach::Routed => Err(NotProgrammable(format!(
                "host-gw: public IP {} is not on-link on {} (reached through a gateway)",
                peer.public_ip, cx.underlay.name
            ))),
            Reach::None => Err(NotProgrammable(format!(
                "host-gw: no route to public IP {}",
                peer.public_ip
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::underlay::UnderlayRoutes;
    use weft_netlink::Route;

    fn underlay() -> Underlay {
        Underlay {
            index: 2,
            name: "eth0".into(),
            ip: Ipv4Addr::new(198, 51, 100, 11),
            ip6: None,
            mtu: 1500,
            nets: vec!["198.51.100.11/24".parse().unwrap()],
        }
    }

    #[test]
    fn refuses_a_public_ip_that_is_not_on_the_interface() {
        let err = HostGw::new(&underlay(), Ipv4Addr::new(203, 0, 113, 5), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("203.0.113.5 is not an address of interface eth0"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let ok = HostGw::new(&underlay(), Ipv4Addr::new(198, 51, 100, 11), None).unwrap();
        assert_eq!(ok.mtu(), 1500);
        assert_eq!(
            ok.lease_attrs().to_json(),
            r#"{"PublicIP":"198.51.100.11","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
    }

    #[test]
    fn on_link_peers_get_a_route_others_none() {
        let u = underlay();
        let b = HostGw::new(&u, u.ip, None).unwrap();
        let mut direct = Route::new("198.51.100.0/24".parse().unwrap());
        direct.oif = Some(2);
        let mut routed = Route::new("203.0.113.0/24".parse().unwrap());
        routed.oif = Some(2);
        routed.gateway = Some("198.51.100.1".parse().unwrap());
        let rs = UnderlayRoutes::new([direct, routed], &[]);
        let reach = |ip| rs.reach(2, ip);
        let cx = Context {
            underlay: &u,
            device: None,
            reach: &reach,
        };
        let peer = |ip: &str| Peer {
            subnet: "10.244.7.0/24".parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            data: PeerData::None,
        };
        assert_eq!(
            b.entries(&peer("198.51.100.7"), &cx).unwrap(),
            vec![Entry::Route {
                dst: "10.244.7.0/24".parse().unwrap(),
                gw: "198.51.100.7".parse().unwrap(),
                dev: 2,
                onlink: false
            }]
        );
        let e = b.entries(&peer("203.0.113.7"), &cx).unwrap_err();
        assert!(e.0.contains("not on-link"), "{e:?}");
        let vx = LeaseAttrs::vxlan(Ipv4Addr::new(198, 51, 100, 7), 1, &[2; 6]);
        assert!(b.accept(&vx, IpFamily::V4).is_err());
    }
}
