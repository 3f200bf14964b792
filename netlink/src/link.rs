//! Links: lookup, creation (bridge, veth, vxlan), attribute changes, bridge
//! port options and bridge VLANs.

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoData, InfoKind, InfoVeth,
    InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
    LinkProtoInfoBridge, State,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use crate::{check_ifname, format_mac, mac_from_slice, Error, Netlink, Netns};

/// IFLA_BRPORT_MODE (hairpin) and IFLA_BRPORT_ISOLATED inside IFLA_PROTINFO.
const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRPORT_ISOLATED: u16 = 33;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// IFLA_INFO_KIND: "bridge", "veth", "vxlan", ... (None for physical/loopback).
    pub kind: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Operationally up (IF_OPER_UP).
    pub oper_up: bool,
    pub promisc: bool,
    /// IFLA_MASTER: e.g. the bridge a port is attached to.
    pub master: Option<u32>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    /// IFLA_LINK_NETNSID: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
    pub vxlan: Option<VxlanInfo>,
    /// IFLA_IFALIAS: free text; the bridge plugin records the attachment here.
    pub alias: Option<String>,
    /// IFF_ALLMULTI: receives all multicast.
    pub allmulti: bool,
    /// IFLA_TXQLEN.
    pub txqlen: u32,
    /// IFLA_GROUP (0 = default). Unlike the alias, it can be set in the
    /// request that creates a link.
    pub group: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub local: Option<IpAddr>,
    pub port: u16,
    pub learning: bool,
    /// Underlay device index.
    pub dev: Option<u32>,
}

/// Parameters for [`Netlink::create_vxlan`]. Learning is always off: the
/// daemon programs FDB and neighbour entries itself (flannel style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub dev: Option<u32>,
    /// UDP destination port (flannel uses 8472, IANA is 4789).
    pub port: u16,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// One VLAN on a bridge port (from [`Netlink::bridge_vlans`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeVlan {
    pub vid: u16,
    pub pvid: bool,
    pub untagged: bool,
}

pub(crate) fn link_from_msg(m: &LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        oper_up: false,
        promisc: m.header.flags.contains(LinkFlags::Promisc),
        master: None,
        link: None,
        link_netnsid: None,
        vxlan: None,
        alias: None,
        allmulti: m.header.flags.contains(LinkFlags::Allmulti),
        txqlen: 0,
        group: 0,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => l.mac = mac_from_slice(b),
            LinkAttribute::Mtu(v) => l.mtu = *v,
            LinkAttribute::OperState(s) => l.oper_up = *s == State::Up,
            LinkAttribute::Controller(v) if *v != 0 => l.master = Some(*v),
            LinkAttribute::Link(v) if *v != 0 => l.link = Some(*v),
            LinkAttribute::LinkNetNsId(v) => l.link_netnsid = Some(*v),
            LinkAttribute::IfAlias(a) if !a.is_empty() => l.alias = Some(a.clone()),
            LinkAttribute::TxQueueLen(v) => l.txqlen = *v,
            LinkAttribute::Group(g) => l.group = *g,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(v)) => l.vxlan = Some(vxlan_info(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

fn vxlan_info(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut v = VxlanInfo {
        vni: 0,
        local: None,
        port: 0,
        learning: false,
        dev: None,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Local(ip) => v.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => v.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(b) => v.learning = *b,
            InfoVxlan::Link(d) if *d != 0 => v.dev = Some(*d),
            _ => {}
        }
    }
    v
}

fn msg_for(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// RTM_NEWLINK that creates `name` of the given kind.
pub(crate) fn new_link_msg(
    name: &str,
    mtu: Option<u32>,
    mac: Option<[u8; 6]>,
    info: Vec<LinkInfo>,
) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    m.attributes.push(LinkAttribute::LinkInfo(info));
    m
}

/// A veth pair, optionally with IFLA_GROUP on the peer. The kernel applies
/// a group given at creation (it ignores IFLA_IFALIAS there), so the peer
/// is labelled from the instant it exists.
pub(crate) fn veth_msg(
    name: &str,
    mtu: Option<u32>,
    mac: Option<[u8; 6]>,
    peer_name: &str,
    peer_ns_fd: i32,
    peer_group: Option<u32>,
) -> LinkMessage {
    // The peer is born in its namespace (IFLA_NET_NS_FD on the peer), so
    // it never shows up, even briefly, next to host interfaces.
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_string()));
    if let Some(mtu) = mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    peer.attributes.push(LinkAttribute::NetNsFd(peer_ns_fd));
    if let Some(group) = peer_group {
        peer.attributes.push(LinkAttribute::Group(group));
    }
    new_link_msg(
        name,
        mtu,
        mac,
        vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ],
    )
}

pub(crate) fn vxlan_msg(spec: &VxlanSpec) -> LinkMessage {
    let mut data = vec![InfoVxlan::Id(spec.vni)];
    match spec.local {
        Some(IpAddr::V4(ip)) => data.push(InfoVxlan::Local(ip)),
        Some(IpAddr::V6(ip)) => data.push(InfoVxlan::Local6(ip)),
        None => {}
    }
    if let Some(dev) = spec.dev {
        data.push(InfoVxlan::Link(dev));
    }
    data.push(InfoVxlan::Port(spec.port));
    data.push(InfoVxlan::Learning(false));
    new_link_msg(
        &spec.name,
        spec.mtu,
        spec.mac,
        vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(data)),
        ],
    )
}

fn flag_msg(index: u32, flag: LinkFlags, on: bool) -> LinkMessage {
    let mut m = msg_for(index);
    m.header.change_mask = flag;
    if on {
        m.header.flags = flag;
    }
    m
}

fn bridge_vlan_msg(port: u32, vid: u16, flags: BridgeVlanInfoFlags) -> LinkMessage {
    let mut m = msg_for(port);
    m.header.interface_family = AddressFamily::Bridge;
    m.attributes
        .push(LinkAttribute::AfSpecBridge(vec![AfSpecBridge::VlanInfo(
            BridgeVlanInfo { flags, vid },
        )]));
    m
}

fn check_vid(vid: u16) -> Result<(), Error> {
    if (1..=4094).contains(&vid) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("VLAN id {vid} not in 1..=4094")))
    }
}

impl Netlink {
    fn get_link(&mut self, m: LinkMessage, what: &str) -> Result<Option<Link>, Error> {
        match self.sock.request(
            RouteNetlinkMessage::GetLink(m),
            0,
            &format!("get link {what}"),
        ) {
            Ok(msgs) => Ok(msgs.iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Look a link up by name; `None` if it does not exist.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        if check_ifname(name).is_err() {
            return Ok(None); // cannot exist; do not bother the kernel
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m, name)
    }

    /// Look a link up by index; `None` if it does not exist.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        if index == 0 {
            return Ok(None);
        }
        self.get_link(msg_for(index), &format!("#{index}"))
    }

    /// Index of `name`, or an ENODEV error naming it.
    pub fn link_index(&mut self, name: &str) -> Result<u32, Error> {
        self.link_by_name(name)?
            .map(|l| l.index)
            .ok_or_else(|| Error::os(format!("link {name}"), Errno::ENODEV))
    }

    pub fn links(&mut self) -> Result<Vec<Link>, Error> {
        let msgs = self.sock.dump(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "dump links",
        )?;
        Ok(msgs
            .iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_msg(l)),
                _ => None,
            })
            .collect())
    }

    fn create(&mut self, m: LinkMessage, op: &str) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::NewLink(m),
                NLM_F_CREATE | NLM_F_EXCL,
                op,
            )
            .map(drop)
    }

    fn change(&mut self, m: LinkMessage, op: &str) -> Result<(), Error> {
        // RTM_NEWLINK without CREATE on an existing index is `ip link set`.
        self.sock
            .request(RouteNetlinkMessage::NewLink(m), 0, op)
            .map(drop)
    }

    /// Create a bridge. EEXIST comes back as an error (check `is_exists()`).
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<(), Error> {
        check_ifname(name)?;
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            // Must be part of RTM_NEWLINK: RTM_SETLINK silently ignores it.
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        self.create(
            new_link_msg(name, mtu, None, info),
            &format!("create bridge {name}"),
        )
    }

    /// Turn VLAN filtering on or off on an existing bridge.
    pub fn set_vlan_filtering(&mut self, index: u32, on: bool) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.change(m, &format!("set vlan_filtering={on} on #{index}"))
    }

    /// Create a veth in this socket's namespace named `name`, whose peer
    /// `peer_name` is created directly in `peer_ns`.
    pub fn create_veth(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        peer_name: &str,
        peer_ns: &Netns,
    ) -> Result<(), Error> {
        self.new_veth(name, mtu, mac, peer_name, peer_ns, None)
    }

    /// [`create_veth`](Netlink::create_veth) with the peer put in device
    /// group `peer_group` by the creating request itself, so a caller
    /// killed at any later instant leaves a peer that can still be found.
    pub fn create_veth_with_peer_group(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        peer_name: &str,
        peer_ns: &Netns,
        peer_group: u32,
    ) -> Result<(), Error> {
        self.new_veth(name, mtu, mac, peer_name, peer_ns, Some(peer_group))
    }

    fn new_veth(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        peer_name: &str,
        peer_ns: &Netns,
        peer_group: Option<u32>,
    ) -> Result<(), Error> {
        check_ifname(name)?;
        check_ifname(peer_name)?;
        // peer_ns is borrowed for the whole call, so the fd stays valid until
        // the kernel has answered.
        let fd = peer_ns.as_fd().as_raw_fd();
        self.create(
            veth_msg(name, mtu, mac, peer_name, fd, peer_group),
            &format!("create veth {name} (peer {peer_name})"),
        )
    }

    /// Create a VXLAN device (learning off).
    pub fn create_vxlan(&mut self, spec: &VxlanSpec) -> Result<(), Error> {
        check_ifname(&spec.name)?;
        if spec.vni >= 1 << 24 {
            return Err(Error::Invalid(format!("VNI {} exceeds 24 bits", spec.vni)));
        }
        self.create(
            vxlan_msg(spec),
            &format!("create vxlan {} vni {}", spec.name, spec.vni),
        )
    }

    pub fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        self.sock
            .request(
                RouteNetlinkMessage::DelLink(msg_for(index)),
                0,
                &format!("delete link #{index}"),
            )
            .map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> Result<(), Error> {
        self.change(
            flag_msg(index, LinkFlags::Up, true),
            &format!("set link #{index} up"),
        )
    }

    pub fn set_down(&mut self, index: u32) -> Result<(), Error> {
        self.change(
            flag_msg(index, LinkFlags::Up, false),
            &format!("set link #{index} down"),
        )
    }

    pub fn set_promisc(&mut self, index: u32, on: bool) -> Result<(), Error> {
        self.change(
            flag_msg(index, LinkFlags::Promisc, on),
            &format!("set promisc {on} on #{index}"),
        )
    }

    /// Attach to a bridge (or other master).
    pub fn set_master(&mut self, index: u32, master: u32) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::Controller(master));
        self.change(m, &format!("set master of #{index} to #{master}"))
    }

    /// Make `index` a port of `master`, label it with `alias` and, with
    /// `up`, bring it up: one request instead of three (`ip link set ...
    /// master ... alias ... up`).
    pub fn attach_port(
        &mut self,
        index: u32,
        master: u32,
        alias: &str,
        up: bool,
    ) -> Result<(), Error> {
        let mut m = if up {
            flag_msg(index, LinkFlags::Up, true)
        } else {
            msg_for(index)
        };
        m.attributes.push(LinkAttribute::Controller(master));
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.change(m, &format!("attach #{index} to #{master}"))
    }

    /// Detach from its master.
    pub fn set_nomaster(&mut self, index: u32) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::Controller(0));
        self.change(m, &format!("remove master of #{index}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.change(m, &format!("set mtu {mtu} on #{index}"))
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.change(m, &format!("set mac {} on #{index}", format_mac(&mac)))
    }

    /// Rename a link (it must be down).
    pub fn set_name(&mut self, index: u32, name: &str) -> Result<(), Error> {
        check_ifname(name)?;
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.change(m, &format!("rename #{index} to {name}"))
    }

    /// Bridge port options: hairpin mode and port isolation.
    pub fn set_bridge_port(
        &mut self,
        index: u32,
        hairpin: bool,
        isolated: bool,
    ) -> Result<(), Error> {
        let mut m = msg_for(index);
        // AF_BRIDGE + nested IFLA_PROTINFO is handled by the bridge driver
        // (br_setlink); the crate has no typed variants for these two.
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![u8::from(hairpin)])),
            LinkProtoInfoBridge::Other(DefaultNla::new(
                IFLA_BRPORT_ISOLATED,
                vec![u8::from(isolated)],
            )),
        ]));
        self.sock
            .request(
                RouteNetlinkMessage::SetLink(m),
                0,
                &format!("set bridge port #{index} hairpin={hairpin} isolated={isolated}"),
            )
            .map(drop)
    }

    /// Add VLAN `vid` to a bridge port (bridge needs vlan_filtering).
    pub fn bridge_vlan_add(
        &mut self,
        port: u32,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<(), Error> {
        check_vid(vid)?;
        let mut flags = BridgeVlanInfoFlags::empty();
        if pvid {
            flags |= BridgeVlanInfoFlags::Pvid;
        }
        if untagged {
            flags |= BridgeVlanInfoFlags::Untagged;
        }
        self.sock
            .request(
                RouteNetlinkMessage::SetLink(bridge_vlan_msg(port, vid, flags)),
                0,
                &format!("add vlan {vid} on #{port}"),
            )
            .map(drop)
    }

    pub fn bridge_vlan_del(&mut self, port: u32, vid: u16) -> Result<(), Error> {
        check_vid(vid)?;
        self.sock
            .request(
                RouteNetlinkMessage::DelLink(bridge_vlan_msg(
                    port,
                    vid,
                    BridgeVlanInfoFlags::empty(),
                )),
                0,
                &format!("delete vlan {vid} on #{port}"),
            )
            .map(drop)
    }

    /// VLANs configured on a bridge port (or on the bridge itself).
    pub fn bridge_vlans(&mut self, index: u32) -> Result<Vec<BridgeVlan>, Error> {
        let mut m = LinkMessage::default();
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let msgs = self
            .sock
            .dump(RouteNetlinkMessage::GetLink(m), "dump bridge vlans")?;
        let mut out = Vec::new();
        for r in &msgs {
            let RouteNetlinkMessage::NewLink(l) = r else {
                continue;
            };
            if l.header.index != index {
                continue;
            }
            for a in &l.attributes {
                let LinkAttribute::AfSpecBridge(spec) = a else {
                    continue;
                };
                for s in spec {
                    if let AfSpecBridge::VlanInfo(v) = s {
                        out.push(BridgeVlan {
                            vid: v.vid,
                            pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
                            untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

/// ifb devices and the attribute setters the tuning plugin needs.
impl Netlink {
    /// Create an ifb (down) with the given MTU and transmit queue length.
    /// EEXIST comes back as an error (check `is_exists()`).
    pub fn create_ifb(&mut self, name: &str, mtu: u32, txqlen: u32) -> Result<(), Error> {
        check_ifname(name)?;
        let mut m = new_link_msg(name, Some(mtu), None, vec![LinkInfo::Kind(InfoKind::Ifb)]);
        m.attributes.push(LinkAttribute::TxQueueLen(txqlen));
        self.create(m, &format!("create ifb {name}"))
    }

    /// Label a link with `alias` and bring it up, in one request.
    pub fn set_alias_up(&mut self, index: u32, alias: &str) -> Result<(), Error> {
        let mut m = flag_msg(index, LinkFlags::Up, true);
        m.attributes.push(LinkAttribute::IfAlias(alias.to_string()));
        self.change(m, &format!("label #{index} and set it up"))
    }

    pub fn set_allmulti(&mut self, index: u32, on: bool) -> Result<(), Error> {
        self.change(
            flag_msg(index, LinkFlags::Allmulti, on),
            &format!("set allmulti {on} on #{index}"),
        )
    }

    pub fn set_txqlen(&mut self, index: u32, txqlen: u32) -> Result<(), Error> {
        let mut m = msg_for(index);
        m.attributes.push(LinkAttribute::TxQueueLen(txqlen));
        self.change(m, &format!("set txqueuelen {txqlen} on #{index}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::encode;
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use std::net::Ipv4Addr;

    fn roundtrip(m: LinkMessage) -> Option<LinkMessage> {
        let b = encode(RouteNetlinkMessage::NewLink(m), NLM_F_REQUEST, 1);
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&b)
            .ok()?
            .payload
        {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => Some(l),
            _ => None,
        }
    }

    #[test]
    fn veth_message_carries_peer_netns_fd() {
        let m = veth_msg(
            "eth0",
            Some(1450),
            Some([2, 0, 0, 0, 0, 1]),
            "vethabc",
            42,
            Some(7),
        );
        let back = roundtrip(m.clone());
        assert_eq!(back.as_ref(), Some(&m));
        let peer = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|x| match x {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            }),
            _ => None,
        });
        let peer_attrs = peer.map(|p| p.attributes).unwrap_or_default();
        assert!(peer_attrs.contains(&LinkAttribute::NetNsFd(42)));
        assert!(peer_attrs.contains(&LinkAttribute::IfName("vethabc".into())));
        assert!(peer_attrs.contains(&LinkAttribute::Group(7)));
    }

    #[test]
    fn vxlan_message_and_parse() {
        let spec = VxlanSpec {
            name: "weft.1".into(),
            vni: 1,
            local: Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))),
            dev: Some(3),
            port: 8472,
            mtu: Some(1450),
            mac: None,
        };
        let back = roundtrip(vxlan_msg(&spec));
        let link = back.as_ref().map(link_from_msg);
        assert_eq!(link.as_ref().map(|l| l.name.as_str()), Some("weft.1"));
        assert_eq!(link.as_ref().and_then(|l| l.kind.as_deref()), Some("vxlan"));
        assert_eq!(
            link.and_then(|l| l.vxlan),
            Some(VxlanInfo {
                vni: 1,
                local: spec.local,
                port: 8472,
                learning: false,
                dev: Some(3)
            })
        );
    }

    #[test]
    fn flag_messages() {
        let up = flag_msg(5, LinkFlags::Up, true);
        assert_eq!(up.header.index, 5);
        assert_eq!(up.header.flags, LinkFlags::Up);
        assert_eq!(up.header.change_mask, LinkFlags::Up);
        let down = flag_msg(5, LinkFlags::Up, false);
        assert!(down.header.flags.is_empty());
        assert_eq!(down.header.change_mask, LinkFlags::Up);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn bridge_vlan_message_bytes() {
        let m = bridge_vlan_msg(
            5,
            100,
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
        );
        let b = encode(RouteNetlinkMessage::SetLink(m), NLM_F_REQUEST, 1);
        // nlmsghdr(16) + ifinfomsg(16) + IFLA_AF_SPEC{ IFLA_BRIDGE_VLAN_INFO{flags, vid} }
        assert_eq!(b.len(), 16 + 16 + 4 + 8);
        assert_eq!(b[16], 7); // AF_BRIDGE
        assert_eq!(&b[20..24], &5u32.to_ne_bytes());
        assert_eq!(&b[32..36], &[12, 0, 26, 0]); // len 12, IFLA_AF_SPEC
        let mut want = vec![8, 0, 2, 0]; // len 8, IFLA_BRIDGE_VLAN_INFO
        want.extend_from_slice(&6u16.to_ne_bytes()); // PVID|UNTAGGED
        want.extend_from_slice(&100u16.to_ne_bytes());
        assert_eq!(&b[36..44], want.as_slice());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn bridge_port_message_is_nested_protinfo() {
        let mut m = msg_for(5);
        m.header.interface_family = AddressFamily::Bridge;
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(IFLA_BRPORT_MODE, vec![1])),
        ]));
        let b = encode(RouteNetlinkMessage::SetLink(m), NLM_F_REQUEST, 1);
        // IFLA_PROTINFO (12) with NLA_F_NESTED, holding IFLA_BRPORT_MODE=1.
        assert_eq!(&b[32..36], &[12, 0, 12, 0x80]);
        assert_eq!(&b[36..41], &[5, 0, 4, 0, 1]);
    }

    #[test]
    fn vid_range() {
        assert!(check_vid(0).is_err());
        assert!(check_vid(4095).is_err());
        assert!(check_vid(1).is_ok() && check_vid(4094).is_ok());
    }
}
