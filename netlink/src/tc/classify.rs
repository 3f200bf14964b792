//! u32 classifiers that send IPv4 or IPv6 packets whose source or
//! destination address lies in a prefix to a class. The keys compare 32-bit
//! words of the IP header (offsets from the network header, which is where
//! u32 starts both on a device's egress and on an ifb fed by mirred).

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::tc_msg;
use crate::{Error, Netlink};

/// `ETH_P_IP` and `ETH_P_IPV6`: the protocol a filter applies to.
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;

/// Which address of the packet a prefix is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpField {
    Source,
    Destination,
}

/// One 32-bit comparison of a u32 selector: `(word at off) & mask == val`,
/// mask and val in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct U32Key {
    pub mask: u32,
    pub val: u32,
    pub off: i32,
}

/// The ethertype of `net`'s family.
pub fn protocol_of(net: &IpNetwork) -> u16 {
    match net {
        IpNetwork::V4(_) => ETH_P_IP,
        IpNetwork::V6(_) => ETH_P_IPV6,
    }
}

/// The mask of the `bits` leading bits of a 32-bit word.
fn leading_mask(bits: u32) -> u32 {
    match bits {
        0 => 0,
        b if b >= 32 => u32::MAX,
        b => u32::MAX << (32 - b),
    }
}

/// The keys matching `field` of a packet against `net`: one per 32-bit
/// word the prefix covers (at least one, so /0 is a zero-mask key that
/// matches every packet of the family).
pub fn prefix_keys(net: &IpNetwork, field: IpField) -> Vec<U32Key> {
    let (words, base): (Vec<u32>, i32) = match (net, field) {
        (IpNetwork::V4(n), IpField::Source) => (vec![u32::from(n.ip())], 12),
        (IpNetwork::V4(n), IpField::Destination) => (vec![u32::from(n.ip())], 16),
        (IpNetwork::V6(n), f) => {
            let o = n.ip().octets();
            let words = o
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (words, if f == IpField::Source { 8 } else { 24 })
        }
    };
    let prefix = u32::from(net.prefix());
    let needed = prefix.div_ceil(32).max(1) as usize;
    words
        .iter()
        .take(needed)
        .enumerate()
        .map(|(i, word)| {
            let mask = leading_mask(prefix.saturating_sub(32 * i as u32));
            U32Key {
                mask,
                val: word & mask,
                off: base + 4 * i as i32,
            }
        })
        .collect()
}

fn classifier_options(keys: &[U32Key], classid: u32) -> Vec<TcOption> {
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = keys.len() as u8;
    selector.keys = keys
        .iter()
        .map(|k| {
            let mut key = TcU32Key::default();
            key.mask = k.mask;
            key.val = k.val;
            key.off = k.off;
            key
        })
        .collect();
    vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::ClassId(TcHandle::from(classid))),
    ]
}

impl Netlink {
    /// Classify packets of `net`'s family whose `field` address is in
    /// `net` into `classid`: a u32 filter at `priority` under the qdisc
    /// `parent` of `ifindex`.
    pub fn add_prefix_classifier(
        &mut self,
        ifindex: u32,
        parent: u32,
        priority: u16,
        net: &IpNetwork,
        field: IpField,
        classid: u32,
    ) -> Result<(), Error> {
        let info = (u32::from(priority) << 16) | u32::from(protocol_of(net).to_be());
        let mut m = tc_msg(ifindex, parent, 0, info)?;
        m.attributes.push(TcAttribute::Kind("u32".into()));
        m.attributes.push(TcAttribute::Options(classifier_options(
            &prefix_keys(net, field),
            classid,
        )));
        self.sock
            .request(
                RouteNetlinkMessage::NewTrafficFilter(m),
                NLM_F_CREATE | NLM_F_EXCL,
                &format!("add a classifier for {net} on #{ifindex}"),
            )
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_prefixes_are_one_word() {
        assert_eq!(
            prefix_keys(&net("10.244.0.0/16"), IpField::Destination),
            vec![U32Key {
                mask: 0xffff_0000,
                val: 0x0af4_0000,
                off: 16
            }]
        );
        assert_eq!(
            prefix_keys(&net("0.0.0.0/0"), IpField::Source),
            vec![U32Key {
                mask: 0,
                val: 0,
                off: 12
            }]
        );
    }

    #[test]
    fn ipv6_prefixes_take_a_key_per_word() {
        let keys = prefix_keys(&net("fd00:1:2:3::/56"), IpField::Source);
        assert_eq!(
            keys,
            vec![
                U32Key {
                    mask: u32::MAX,
                    val: 0xfd00_0001,
                    off: 8
                },
                U32Key {
                    mask: 0xffff_ff00,
                    val: 0x0002_0000,
                    off: 12
                },
            ]
        );
        assert_eq!(
            prefix_keys(&net("fd00::1/128"), IpField::Destination).len(),
            4
        );
        assert_eq!(prefix_keys(&net("::/0"), IpField::Destination)[0].off, 24);
    }
}
