//! The vxlan backend: `flannel.<VNI>` (and `flannel-v6.<VNI>` when
//! dual-stack) and, per remote vxlan lease, a permanent neighbour
//! (`<subnet .0> -> VtepMAC`), an FDB entry (`VtepMAC -> PublicIP`, self,
//! permanent) and a route (`<subnet> via <.0> dev flannel.N onlink`).
//! With `DirectRouting`, a peer whose public IP the underlay reaches
//! directly (a route without gateway on the underlay interface) gets
//! `<subnet> via <PublicIP> dev <iface>` instead, and no VXLAN entries.

use super::underlay::{Reach, Underlay};
use super::{Backend, BackendError, Context, Entry, NotProgrammable, Peer, PeerData};
use crate::config::{NetConfig, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6};
use crate::local::metrics::Metrics;
use crate::store::attrs::LeaseAttrs;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::Ordering::Relaxed;
use weft_netlink::{format_mac, IpFamily, Netlink, VxlanSpec};

pub struct Vxlan {
    attrs: LeaseAttrs,
    v4: DeviceSpec,
    v6: Option<DeviceSpec>,
    mtu: u32,
    direct_routing: bool,
}

impl Vxlan {
    pub fn new(
        cfg: &NetConfig,
        underlay: &Underlay,
        public_ip: Ipv4Addr,
        public_ipv6: Option<Ipv6Addr>,
        direct_routing: bool,
    ) -> Result<Self, BackendError> {
        let b = &cfg.backend;
        let mac = vtep_mac(public_ip, b.vni);
        let v4 = DeviceSpec::new(b.vni, b.port, underlay, b.mtu, mac);
        if v4.mtu < 576 {
            return Err(BackendError::Setup(format!(
                "vxlan MTU {} (underlay {} - 50) is too small",
                v4.mtu,
                b.mtu.unwrap_or(underlay.mtu)
            )));
        }
        let mut attrs = LeaseAttrs::vxlan(public_ip, b.vni, &mac);
        let mut mtu = v4.mtu;
        let v6 = match (cfg.ipv6.is_some(), public_ipv6) {
            (false, _) => None,
            (true, None) => return Err(no_ipv6(underlay)),
            (true, Some(ip6)) => {
                let mac6 = vtep_mac_v6(ip6, b.vni);
                let spec6 = DeviceSpec::new_v6(b.vni, b.port, underlay, ip6, b.mtu, mac6);
                if spec6.mtu < 1280 {
                    return Err(BackendError::Setup(format!(
                        "IPv6 vxlan MTU {} (underlay {} - 70) is below IPv6's minimum 1280",
                        spec6.mtu,
                        b.mtu.unwrap_or(underlay.mtu)
                    )));
                }
                attrs = LeaseAttrs::vxlan_dual(public_ip, ip6, b.vni, &mac, &mac6);
                // Pods get one MTU for both families: the smaller one.
                mtu = mtu.min(spec6.mtu);
                Some(spec6)
            }
        };
        Ok(Vxlan {
            attrs,
            v4,
            v6,
            mtu,
            direct_routing,
        })
    }
}

pub fn no_ipv6(underlay: &Underlay) -> BackendError {
    BackendError::Setup(format!(
        "EnableIPv6 is set but interface {} has no global IPv6 address; add one or use --public-ipv6",
        underlay.name
    ))
}

impl Backend for Vxlan {
    fn kind(&self) -> &'static str {
        if self.direct_routing {
            "vxlan (DirectRouting)"
        } else {
            "vxlan"
        }
    }

    fn lease_attrs(&self) -> &LeaseAttrs {
        &self.attrs
    }

    fn mtu(&self) -> u32 {
        self.mtu
    }

    fn accept(&self, attrs: &LeaseAttrs, family: IpFamily) -> Result<PeerData, String> {
        let mac = match family {
            IpFamily::V4 => attrs.vtep_mac(),
            IpFamily::V6 => attrs.vtep_mac_v6(),
        };
        match mac {
            None => Err("not a vxlan lease with a VtepMAC".into()),
            Some(m) if m == [0; 6] || m[0] & 1 != 0 => {
                Err(format!("VtepMAC {} is not a unicast MAC", format_mac(&m)))
            }
            Some(m) => Ok(PeerData::Vtep(m)),
        }
    }

    fn device(&self, family: IpFamily) -> Option<&DeviceSpec> {
        match family {
            IpFamily::V4 => Some(&self.v4),
            IpFamily::V6 => self.v6.as_ref(),
        }
    }

    fn entries(&self, peer: &Peer, cx: &Context) -> Result<Vec<Entry>, NotProgrammable> {
        if self.direct_routing && (cx.reach)(peer.public_ip) == Reach::Direct {
            return Ok(vec![Entry::Route {
                dst: peer.subnet,
                gw: peer.public_ip,
                dev: cx.underlay.index,
                onlink: false,
            }]);
        }
        let PeerData::Vtep(mac) = peer.data else {
            return Err(NotProgrammable("no VtepMAC".into()));
        };
        let Some(dev) = cx.device else {
            return Err(NotProgrammable(
                "the vxlan device does not exist yet".into(),
            ));
        };
        let base = peer.subnet.network();
        Ok(vec![
            Entry::Neigh { dev, ip: base, mac },
            Entry::Fdb {
                dev,
                mac,
                dst: peer.public_ip,
            },
            Entry::Route {
                dst: peer.subnet,
                gw: base,
                dev,
                onlink: true,
            },
        ])
    }
}

/// A deterministic VTEP MAC: FNV-1a over the public IP and VNI, made
/// locally administered unicast. Stable across restarts and reinstalls
/// without any state file, so peers' neighbour/FDB entries never go stale
/// while the node keeps its address; a node whose IP changes gets a new
/// subnet anyway (leases are matched by PublicIP).
pub fn vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    mac_from(&public_ip.octets(), vni)
}

/// The same for `flannel-v6.<VNI>`, from our PublicIPv6.
pub fn vtep_mac_v6(public_ipv6: Ipv6Addr, vni: u32) -> [u8; 6] {
    mac_from(&public_ipv6.octets(), vni)
}

fn mac_from(ip: &[u8], vni: u32) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"weft-vtep"
        .iter()
        .chain(ip.iter())
        .chain(vni.to_be_bytes().iter())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Everything needed to build a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: [u8; 6],
}

impl DeviceSpec {
    /// `flannel.<VNI>`: local = the underlay's IPv4 address, MTU = underlay − 50.
    pub fn new(
        vni: u32,
        port: u16,
        underlay: &Underlay,
        mtu_override: Option<u32>,
        mac: [u8; 6],
    ) -> Self {
        DeviceSpec {
            name: format!("flannel.{vni}"),
            vni,
            port,
            local: IpAddr::V4(underlay.ip),
            underlay_index: underlay.index,
            mtu: mtu_override
                .unwrap_or(underlay.mtu)
                .saturating_sub(VXLAN_OVERHEAD_V4),
            mac,
        }
    }

    /// `flannel-v6.<VNI>`: local = our PublicIPv6, MTU = underlay − 70 (the
    /// outer IPv6 header is 20 bytes longer; flannel's bug #1781 uses 50).
    pub fn new_v6(
        vni: u32,
        port: u16,
        underlay: &Underlay,
        local: Ipv6Addr,
        mtu_override: Option<u32>,
        mac: [u8; 6],
    ) -> Self {
        DeviceSpec {
            name: format!("flannel-v6.{vni}"),
            vni,
            port,
            local: IpAddr::V6(local),
            underlay_index: underlay.index,
            mtu: mtu_override
                .unwrap_or(underlay.mtu)
                .saturating_sub(VXLAN_OVERHEAD_V6),
            mac,
        }
    }
}

/// Make sure the device exists with the right attributes; returns its
/// index (a device with other attributes is deleted and made again).
pub fn ensure_device(
    nl: &mut Netlink,
    s: &DeviceSpec,
    metrics: &Metrics,
) -> Result<u32, BackendError> {
    if let Some(l) = nl.link_by_name(&s.name)? {
        let ok = l.kind.as_deref() == Some("vxlan")
            && l.vxlan.as_ref().is_some_and(|v| {
                v.vni == s.vni
                    && v.port == s.port
                    && v.local == Some(s.local)
                    && v.dev == Some(s.underlay_index)
                    && !v.learning
            });
        if ok {
            if l.mtu != s.mtu {
                nl.set_mtu(l.index, s.mtu)?;
            }
            if l.mac != Some(s.mac) {
                crate::warn!(
                    "vxlan device MAC differs; fixing",
                    dev = s.name,
                    was = l.mac.map(|m| format_mac(&m)).unwrap_or_default(),
                    mac = format_mac(&s.mac)
                );
                nl.set_mac(l.index, s.mac)?;
            }
            if !l.up {
                nl.set_up(l.index)?;
            }
            return Ok(l.index);
        }
        crate::warn!(
            "vxlan device has incompatible attributes; recreating",
            dev = s.name,
            found = format!("{:?}", l.vxlan)
        );
        nl.delete_link(l.index)?;
    }
    nl.create_vxlan(&VxlanSpec {
        name: s.name.clone(),
        vni: s.vni,
        local: Some(s.local),
        dev: Some(s.underlay_index),
        port: s.port,
        mtu: Some(s.mtu),
        mac: Some(s.mac),
    })?;
    metrics.device_recreations.fetch_add(1, Relaxed);
    let idx = nl.link_index(&s.name)?;
    let _ = weft_netlink::write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", s.name), "0");
    nl.set_up(idx)?;
    crate::info!(
        "created vxlan device",
        dev = s.name,
        vni = s.vni,
        port = s.port,
        local = s.local,
        mtu = s.mtu,
        mac = format_mac(&s.mac)
    );
    Ok(idx)
}

/// The lease's network address as /32 (/128) on the device, and no other
/// address of the family (IPv6 link-local addresses are left alone).
pub fn ensure_address(nl: &mut Netlink, index: u32, want: IpNetwork) -> Result<(), BackendError> {
    let v4 = want.is_ipv4();
    let mut have = false;
    for a in nl.addresses(Some(index))? {
        if a.net.is_ipv4() != v4 {
            continue;
        }
        if a.net == want {
            have = true;
        } else if v4 || a.scope == 0 {
            crate::info!("removing stale address from vxlan device", addr = a.net);
            nl.del_address(index, a.net)?;
        }
    }
    if !have {
        // No DAD for IPv6: the address must be usable at once.
        let r = if v4 {
            nl.add_address(index, want)
        } else {
            nl.add_address_nodad(index, want)
        };
        match r {
            Err(e) if e.is_exists() => {}
            r => r?,
        }
    }
    Ok(())
}
