//! Address-family-generic subnets, so lease validation is written once for
//! IPv4 and IPv6.

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::fmt::{Debug, Display};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What lease validation needs from an address family's subnet
/// type (implemented for `Ipv4Network` and `Ipv6Network`).
pub trait Subnet: Copy + Ord + Debug + Display + Send + 'static {
    type Addr: Copy + Ord + Debug + Display + Into<IpAddr> + Send + 'static;
    /// The network (base) address: the peer's VTEP address and gateway.
    fn base(&self) -> Self::Addr;
    fn has(&self, a: Self::Addr) -> bool;
    /// ipnetwork's `overlaps`, for code generic over the family.
    fn overlaps(&self, other: &Self) -> bool;
    fn ip_network(&self) -> IpNetwork;
    fn from_ip_network(n: IpNetwork) -> Option<Self>;
}

impl Subnet for Ipv4Network {
    type Addr = Ipv4Addr;
    fn base(&self) -> Ipv4Addr {
        self.network()
    }
    fn has(&self, a: Ipv4Addr) -> bool {
        self.contains(a)
    }
    fn overlaps(&self, other: &Self) -> bool {
        Ipv4Network::overlaps(*self, *other)
    }
    fn ip_network(&self) -> IpNetwork {
        IpNetwork::V4(*self)
    }
    fn from_ip_network(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V4(n) => Some(n),
            IpNetwork::V6(_) => None,
        }
    }
}

impl Subnet for Ipv6Network {
    type Addr = Ipv6Addr;
    fn base(&self) -> Ipv6Addr {
        self.network()
    }
    fn has(&self, a: Ipv6Addr) -> bool {
        self.contains(a)
    }
    fn overlaps(&self, other: &Self) -> bool {
        Ipv6Network::overlaps(*self, *other)
    }
    fn ip_network(&self) -> IpNetwork {
        IpNetwork::V6(*self)
    }
    fn from_ip_network(n: IpNetwork) -> Option<Self> {
        match n {
            IpNetwork::V6(n) => Some(n),
            IpNetwork::V4(_) => None,
        }
    }
}
