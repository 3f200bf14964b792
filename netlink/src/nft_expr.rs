//! The nf_tables expressions weft writes, encoded exactly as nft 1.0
//! encodes the same rule text (checked against `nft --debug=netlink`), so
//! a ruleset reads the same in `nft list` whoever wrote it. Matches load
//! into register 1 (nft's NFT_REG_1, 16 bytes) and compare it; a
//! concatenated set key is loaded field after field into consecutive
//! 32-bit registers from register 1 on, as nft lays it out. NAT takes its
//! address in register 1 and its port in the register after it.

use std::net::IpAddr;

use crate::nfnetlink::put_attr;

const NLA_F_NESTED: u16 = 0x8000;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFT_JUMP: i32 = -3;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
/// The first of the 32-bit registers (NFT_REG32_00 overlaps NFT_REG_1).
const NFT_REG32_00: u32 = 8;
const NFT_BYTEORDER_HTON: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
/// IPS_DST_NAT: `ct status dnat`.
const IPS_DST_NAT: u32 = 1 << 5;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
/// Where the destination port is in TCP, UDP and SCTP headers alike.
const DPORT_OFFSET: u32 = 2;

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NftExpr {
    /// `meta nfproto` (true) or `meta l4proto` (false) into `reg`.
    Meta {
        nfproto: bool,
        reg: u32,
    },
    /// `len` bytes of the network (true) or transport header at `offset`,
    /// into `reg`.
    Payload {
        network: bool,
        offset: u32,
        len: u32,
        reg: u32,
    },
    /// `reg` = hton(`reg`, `size`, `len`): what nft puts after `meta
    /// l4proto` in an interval set's key (with `len` 1 the kernel swaps
    /// nothing, but nft lists the rule by it).
    Byteorder {
        reg: u32,
        len: u32,
        size: u32,
    },
    /// register 1 = (register 1 & mask) ^ xor.
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// Register 1 equals (true) or differs from `data`.
    Cmp {
        eq: bool,
        data: Vec<u8>,
    },
    /// `ct status` into register 1.
    CtStatus,
    /// `fib daddr type` (the destination's route type) into register 1.
    FibDaddrType,
    /// `data` into `register`.
    Immediate {
        register: u32,
        data: Vec<u8>,
    },
    Jump(String),
    /// The set `set` at the key from register 1 on: a match (`@set`), or
    /// with `dreg` a map whose value goes there (`... map @set`).
    Lookup {
        set: String,
        dreg: Option<u32>,
    },
    /// DNAT to the address in register 1 and the port in `proto_reg`.
    Dnat {
        v4: bool,
        proto_reg: u32,
    },
    Masquerade,
}

/// Which address of the IP header a match reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftAddr {
    Source,
    Destination,
}

/// One field of a concatenated set key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftField {
    /// `ip saddr`/`ip daddr` (v4) or `ip6 saddr`/`ip6 daddr`.
    Addr { which: NftAddr, v4: bool },
    /// `meta l4proto`.
    L4proto,
    /// `th dport`.
    Dport,
}

impl NftField {
    /// The field's length in bytes (in a key each field takes whole
    /// 32-bit registers, so it is padded to 4 bytes there).
    pub fn width(self) -> u32 {
        match self {
            NftField::Addr { v4: true, .. } => 4,
            NftField::Addr { v4: false, .. } => 16,
            NftField::L4proto => 1,
            NftField::Dport => 2,
        }
    }

    /// nft's datatype number (ipv4_addr, ipv6_addr, inet_proto,
    /// inet_service).
    pub(crate) fn type_id(self) -> u32 {
        match self {
            NftField::Addr { v4: true, .. } => 7,
            NftField::Addr { v4: false, .. } => 8,
            NftField::L4proto => 12,
            NftField::Dport => 13,
        }
    }
}

/// The register a key field at byte `offset` goes to: nft uses the
/// 16-byte registers where one starts there, else the 32-bit ones.
fn register_at(offset: u32) -> u32 {
    if offset.is_multiple_of(16) {
        NFT_REG_1 + offset / 16
    } else {
        NFT_REG32_00 + offset / 4
    }
}

/// `len` bytes rounded up to whole 32-bit registers.
pub(crate) fn padded(len: u32) -> u32 {
    len.div_ceil(4) * 4
}

/// The register after `fields` laid out from register 1.
fn register_after(fields: &[NftField]) -> u32 {
    register_at(fields.iter().map(|f| padded(f.width())).sum())
}

/// A concatenated key or value as the kernel compares it: each part
/// padded with zeros to whole 32-bit registers.
pub fn nft_concat(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::new();
    for part in parts {
        key.extend_from_slice(part);
        key.resize(padded(key.len() as u32) as usize, 0);
    }
    key
}

/// Where `which` address is in the IPv4 (v4) or IPv6 header.
fn addr_offset(which: NftAddr, v4: bool) -> u32 {
    match (v4, which) {
        (true, NftAddr::Source) => 12,
        (true, NftAddr::Destination) => 16,
        (false, NftAddr::Source) => 8,
        (false, NftAddr::Destination) => 24,
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

impl NftExpr {
    /// `meta nfproto ipv4` / `ipv6`.
    pub fn nfproto(v4: bool) -> Vec<NftExpr> {
        let proto = if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
        vec![
            NftExpr::Meta {
                nfproto: true,
                reg: NFT_REG_1,
            },
            NftExpr::Cmp {
                eq: true,
                data: vec![proto],
            },
        ]
    }

    /// `ip saddr 10.0.0.0/24`, `ip6 daddr fd00::5` ...: the family's own
    /// dependency (`meta nfproto`) is the caller's. As nft does, a whole
    /// address or a byte-aligned prefix compares only its bytes; any
    /// other prefix (/0 too) masks the whole address first.
    pub fn addr(which: NftAddr, ip: IpAddr, prefix: u8) -> Vec<NftExpr> {
        let bytes = octets(ip);
        let full = bytes.len() as u32;
        let offset = addr_offset(which, ip.is_ipv4());
        let bits = u32::from(prefix).min(full * 8);
        if bits > 0 && bits % 8 == 0 {
            let len = bits / 8;
            return vec![
                NftExpr::Payload {
                    network: true,
                    offset,
                    len,
                    reg: NFT_REG_1,
                },
                NftExpr::Cmp {
                    eq: true,
                    data: {
                        let mut start = bytes;
                        start.truncate(len as usize);
                        start
                    },
                },
            ];
        }
        let mask: Vec<u8> = (0..full)
            .map(|i| {
                let keep = bits.saturating_sub(i * 8).min(8);
                (0xffu16 << (8 - keep)) as u8
            })
            .collect();
        let network = bytes.iter().zip(&mask).map(|(b, m)| b & m).collect();
        vec![
            NftExpr::Payload {
                network: true,
                offset,
                len: full,
                reg: NFT_REG_1,
            },
            NftExpr::Bitwise {
                xor: vec![0; mask.len()],
                mask,
            },
            NftExpr::Cmp {
                eq: true,
                data: network,
            },
        ]
    }

    /// `tcp dport 80` (or udp, sctp: `l4proto` is the IP protocol number)
    /// with the `meta l4proto` dependency nft puts before it in an inet table.
    pub fn dport(l4proto: u8, port: u16) -> Vec<NftExpr> {
        vec![
            NftExpr::Meta {
                nfproto: false,
                reg: NFT_REG_1,
            },
            NftExpr::Cmp {
                eq: true,
                data: vec![l4proto],
            },
            NftExpr::Payload {
                network: false,
                offset: DPORT_OFFSET,
                len: 2,
                reg: NFT_REG_1,
            },
            NftExpr::Cmp {
                eq: true,
                data: port.to_be_bytes().to_vec(),
            },
        ]
    }

    /// `fields` loaded into consecutive registers from register 1, as nft
    /// loads a concatenated key (`ip daddr . meta l4proto . th dport`). An
    /// interval set's key has nft's byteorder after `meta l4proto`. The
    /// `meta nfproto` an address needs is the caller's.
    pub fn concat(fields: &[NftField], interval: bool) -> Vec<NftExpr> {
        let mut exprs = Vec::new();
        let mut offset = 0;
        for field in fields {
            let reg = register_at(offset);
            match *field {
                NftField::Addr { which, v4 } => exprs.push(NftExpr::Payload {
                    network: true,
                    offset: addr_offset(which, v4),
                    len: field.width(),
                    reg,
                }),
                NftField::L4proto => {
                    exprs.push(NftExpr::Meta {
                        nfproto: false,
                        reg,
                    });
                    if interval {
                        exprs.push(NftExpr::Byteorder {
                            reg,
                            len: 1,
                            size: 2,
                        });
                    }
                }
                NftField::Dport => exprs.push(NftExpr::Payload {
                    network: false,
                    offset: DPORT_OFFSET,
                    len: 2,
                    reg,
                }),
            }
            offset += padded(field.width());
        }
        exprs
    }

    /// `dnat ip to KEY map @map` (ip6 unless `v4`): the map's value is the
    /// pod's address and port.
    pub fn dnat_map(map: &str, v4: bool, key: &[NftField]) -> Vec<NftExpr> {
        let mut exprs = NftExpr::concat(key, false);
        exprs.push(NftExpr::Lookup {
            set: map.into(),
            dreg: Some(NFT_REG_1),
        });
        let addr = NftField::Addr {
            which: NftAddr::Destination,
            v4,
        };
        exprs.push(NftExpr::Dnat {
            v4,
            proto_reg: register_after(&[addr]),
        });
        exprs
    }

    /// `KEY @set`: the key is in the set.
    pub fn in_set(set: &str, key: &[NftField], interval: bool) -> Vec<NftExpr> {
        let mut exprs = NftExpr::concat(key, interval);
        exprs.push(NftExpr::Lookup {
            set: set.into(),
            dreg: None,
        });
        exprs
    }

    /// `ct status dnat`.
    pub fn ct_status_dnat() -> Vec<NftExpr> {
        vec![
            NftExpr::CtStatus,
            NftExpr::Bitwise {
                mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            NftExpr::Cmp {
                eq: false,
                data: vec![0; 4],
            },
        ]
    }

    /// `fib daddr type local`.
    pub fn fib_daddr_local() -> Vec<NftExpr> {
        vec![
            NftExpr::FibDaddrType,
            NftExpr::Cmp {
                eq: true,
                data: RTN_LOCAL.to_ne_bytes().to_vec(),
            },
        ]
    }

    /// `dnat ip to 10.0.0.5:80` / `dnat ip6 to [fd00::5]:80`.
    pub fn dnat_to(ip: IpAddr, port: u16) -> Vec<NftExpr> {
        vec![
            NftExpr::Immediate {
                register: NFT_REG_1,
                data: octets(ip),
            },
            NftExpr::Immediate {
                register: NFT_REG_2,
                data: port.to_be_bytes().to_vec(),
            },
            NftExpr::Dnat {
                v4: ip.is_ipv4(),
                proto_reg: NFT_REG_2,
            },
        ]
    }

    fn name(&self) -> &'static str {
        match self {
            NftExpr::Meta { .. } => "meta",
            NftExpr::Payload { .. } => "payload",
            NftExpr::Bitwise { .. } => "bitwise",
            NftExpr::Cmp { .. } => "cmp",
            NftExpr::CtStatus => "ct",
            NftExpr::FibDaddrType => "fib",
            NftExpr::Immediate { .. } | NftExpr::Jump(_) => "immediate",
            NftExpr::Byteorder { .. } => "byteorder",
            NftExpr::Lookup { .. } => "lookup",
            NftExpr::Dnat { .. } => "nat",
            NftExpr::Masquerade => "masq",
        }
    }

    /// The expression's own attributes (NFTA_EXPR_DATA's content).
    fn data(&self) -> Vec<u8> {
        let mut d = Vec::new();
        let u32_attr = |d: &mut Vec<u8>, kind: u16, v: u32| put_attr(d, kind, &v.to_be_bytes());
        match self {
            NftExpr::Meta { nfproto, reg } => {
                let key = if *nfproto {
                    NFT_META_NFPROTO
                } else {
                    NFT_META_L4PROTO
                };
                u32_attr(&mut d, 2, key); // NFTA_META_KEY
                u32_attr(&mut d, 1, *reg); // NFTA_META_DREG
            }
            NftExpr::Payload {
                network,
                offset,
                len,
                reg,
            } => {
                let base = if *network {
                    NFT_PAYLOAD_NETWORK_HEADER
                } else {
                    NFT_PAYLOAD_TRANSPORT_HEADER
                };
                u32_attr(&mut d, 1, *reg); // NFTA_PAYLOAD_DREG
                u32_attr(&mut d, 2, base); // NFTA_PAYLOAD_BASE
                u32_attr(&mut d, 3, *offset); // NFTA_PAYLOAD_OFFSET
                u32_attr(&mut d, 4, *len); // NFTA_PAYLOAD_LEN
            }
            NftExpr::Bitwise { mask, xor } => {
                u32_attr(&mut d, 1, NFT_REG_1); // NFTA_BITWISE_SREG
                u32_attr(&mut d, 2, NFT_REG_1); // NFTA_BITWISE_DREG
                u32_attr(&mut d, 3, mask.len() as u32); // NFTA_BITWISE_LEN
                put_nested(&mut d, 4, &value(mask)); // NFTA_BITWISE_MASK
                put_nested(&mut d, 5, &value(xor)); // NFTA_BITWISE_XOR
            }
            NftExpr::Cmp { eq, data } => {
                u32_attr(&mut d, 1, NFT_REG_1); // NFTA_CMP_SREG
                u32_attr(&mut d, 2, if *eq { NFT_CMP_EQ } else { NFT_CMP_NEQ });
                put_nested(&mut d, 3, &value(data)); // NFTA_CMP_DATA
            }
            NftExpr::CtStatus => {
                u32_attr(&mut d, 2, NFT_CT_STATUS); // NFTA_CT_KEY
                u32_attr(&mut d, 1, NFT_REG_1); // NFTA_CT_DREG
            }
            NftExpr::FibDaddrType => {
                u32_attr(&mut d, 3, NFTA_FIB_F_DADDR); // NFTA_FIB_FLAGS
                u32_attr(&mut d, 2, NFT_FIB_RESULT_ADDRTYPE); // NFTA_FIB_RESULT
                u32_attr(&mut d, 1, NFT_REG_1); // NFTA_FIB_DREG
            }
            NftExpr::Immediate { register, data } => {
                u32_attr(&mut d, 1, *register); // NFTA_IMMEDIATE_DREG
                put_nested(&mut d, 2, &value(data)); // NFTA_IMMEDIATE_DATA
            }
            NftExpr::Jump(chain) => {
                u32_attr(&mut d, 1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
                put_nested(&mut d, 2, &jump_data(chain)); // NFTA_IMMEDIATE_DATA
            }
            NftExpr::Byteorder { reg, len, size } => {
                u32_attr(&mut d, 1, *reg); // NFTA_BYTEORDER_SREG
                u32_attr(&mut d, 2, *reg); // NFTA_BYTEORDER_DREG
                u32_attr(&mut d, 3, NFT_BYTEORDER_HTON); // NFTA_BYTEORDER_OP
                u32_attr(&mut d, 4, *len); // NFTA_BYTEORDER_LEN
                u32_attr(&mut d, 5, *size); // NFTA_BYTEORDER_SIZE
            }
            NftExpr::Lookup { set, dreg } => {
                put_attr(&mut d, NFTA_LOOKUP_SET, &nul_terminated(set));
                u32_attr(&mut d, NFTA_LOOKUP_SREG, NFT_REG_1);
                if let Some(dreg) = dreg {
                    u32_attr(&mut d, NFTA_LOOKUP_DREG, *dreg);
                }
            }
            NftExpr::Dnat { v4, proto_reg } => {
                let family = if *v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
                u32_attr(&mut d, 1, NFT_NAT_DNAT); // NFTA_NAT_TYPE
                u32_attr(&mut d, 2, u32::from(family)); // NFTA_NAT_FAMILY
                u32_attr(&mut d, 3, NFT_REG_1); // NFTA_NAT_REG_ADDR_MIN
                u32_attr(&mut d, 5, *proto_reg); // NFTA_NAT_REG_PROTO_MIN
                u32_attr(&mut d, 7, NF_NAT_RANGE_PROTO_SPECIFIED); // NFTA_NAT_FLAGS
            }
            NftExpr::Masquerade => {}
        }
        d
    }
}

pub(crate) fn nul_terminated(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

pub(crate) fn put_nested(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    put_attr(body, kind | NLA_F_NESTED, value);
}

/// An NFTA_DATA_VERDICT: jump to `chain`.
pub(crate) fn jump_data(chain: &str) -> Vec<u8> {
    let mut verdict = Vec::new();
    put_attr(&mut verdict, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
    put_attr(&mut verdict, NFTA_VERDICT_CHAIN, &nul_terminated(chain));
    let mut data = Vec::new();
    put_nested(&mut data, NFTA_DATA_VERDICT, &verdict);
    data
}

/// An NFTA_DATA_VALUE holding `bytes`.
pub(crate) fn value(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attr(&mut v, NFTA_DATA_VALUE, bytes);
    v
}

/// NFTA_RULE_EXPRESSIONS' content: one list element per expression.
pub(crate) fn encode(exprs: &[NftExpr]) -> Vec<u8> {
    let mut list = Vec::new();
    for e in exprs {
        let mut elem = Vec::new();
        put_attr(&mut elem, NFTA_EXPR_NAME, &nul_terminated(e.name()));
        put_nested(&mut elem, NFTA_EXPR_DATA, &e.data());
        put_nested(&mut list, NFTA_LIST_ELEM, &elem);
    }
    list
}

/// A rule comment as nft stores it: libnftnl's user-data TLV (type 0,
/// NUL-terminated), or None when it is too long for one.
pub(crate) fn comment_udata(comment: &str) -> Option<Vec<u8>> {
    let text = nul_terminated(comment);
    let len = u8::try_from(text.len()).ok()?;
    let mut udata = vec![0, len];
    udata.extend(text);
    Some(udata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn payload(offset: u32, len: u32) -> NftExpr {
        NftExpr::Payload {
            network: true,
            offset,
            len,
            reg: NFT_REG_1,
        }
    }

    fn cmp(data: &[u8]) -> NftExpr {
        NftExpr::Cmp {
            eq: true,
            data: data.to_vec(),
        }
    }

    #[test]
    fn addresses_and_prefixes_as_nft_encodes_them() {
        // `ip saddr 10.244.1.0/24`: 3 bytes, no mask.
        assert_eq!(
            NftExpr::addr(NftAddr::Source, ip("10.244.1.0"), 24),
            vec![payload(12, 3), cmp(&[10, 244, 1])]
        );
        // `ip daddr 10.244.1.5`.
        assert_eq!(
            NftExpr::addr(NftAddr::Destination, ip("10.244.1.5"), 32),
            vec![payload(16, 4), cmp(&[10, 244, 1, 5])]
        );
        // `ip saddr 10.244.0.0/20`: the whole address, masked.
        assert_eq!(
            NftExpr::addr(NftAddr::Source, ip("10.244.0.0"), 20),
            vec![
                payload(12, 4),
                NftExpr::Bitwise {
                    mask: vec![255, 255, 0xf0, 0],
                    xor: vec![0; 4]
                },
                cmp(&[10, 244, 0, 0])
            ]
        );
        // `ip6 saddr fd00::/64` and `ip6 daddr fd00::5`.
        let v6 = NftExpr::addr(NftAddr::Source, ip("fd00::"), 64);
        assert_eq!(v6, vec![payload(8, 8), cmp(&[0xfd, 0, 0, 0, 0, 0, 0, 0])]);
        let v6 = NftExpr::addr(NftAddr::Destination, ip("fd00::5"), 128);
        assert_eq!(v6[0], payload(24, 16));
        // /0 masks everything away, as nft encodes `ip saddr 0.0.0.0/0`.
        let any = NftExpr::addr(NftAddr::Source, ip("10.0.0.1"), 0);
        assert_eq!(any[2], cmp(&[0; 4]));
        // A prefix past the address's length is the whole address.
        assert_eq!(
            NftExpr::addr(NftAddr::Source, ip("10.0.0.1"), 40)[0],
            payload(12, 4)
        );
    }

    #[test]
    fn expressions_encode_as_nft_sends_them() {
        // `fib daddr type local jump hostports`, byte for byte as nft
        // 1.0.6 sent it (strace of `nft -f`).
        let mut exprs = NftExpr::fib_daddr_local();
        exprs.push(NftExpr::Jump("hostports".into()));
        let want: &[u8] = b"\x28\x00\x01\x80\x08\x00\x01\x00fib\x00\x1c\x00\x02\x80\
            \x08\x00\x03\x00\x00\x00\x00\x02\x08\x00\x02\x00\x00\x00\x00\x03\
            \x08\x00\x01\x00\x00\x00\x00\x01\
            \x2c\x00\x01\x80\x08\x00\x01\x00cmp\x00\x20\x00\x02\x80\
            \x08\x00\x01\x00\x00\x00\x00\x01\x08\x00\x02\x00\x00\x00\x00\x00\
            \x0c\x00\x03\x80\x08\x00\x01\x00\x02\x00\x00\x00\
            \x40\x00\x01\x80\x0e\x00\x01\x00immediate\x00\x00\x00\
            \x2c\x00\x02\x80\x08\x00\x01\x00\x00\x00\x00\x00\
            \x20\x00\x02\x80\x1c\x00\x02\x80\x08\x00\x01\x00\xff\xff\xff\xfd\
            \x0e\x00\x02\x00hostports\x00\x00\x00";
        assert_eq!(encode(&exprs), want);
        // `masquerade`: an empty data nest.
        assert_eq!(
            encode(&[NftExpr::Masquerade]),
            b"\x14\x00\x01\x80\x09\x00\x01\x00masq\x00\x00\x00\x00\x04\x00\x02\x80"
        );
    }

    /// The registers of the loads as `nft --debug=netlink` shows them for
    /// portmap's fixed rules (nft 1.0.6).
    fn registers(exprs: &[NftExpr]) -> Vec<u32> {
        exprs
            .iter()
            .filter_map(|e| match e {
                NftExpr::Meta { reg, .. } | NftExpr::Payload { reg, .. } => Some(*reg),
                NftExpr::Byteorder { reg, .. } => Some(100 + reg),
                NftExpr::Dnat { proto_reg, .. } => Some(200 + proto_reg),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn concatenations_use_nfts_registers() {
        let daddr = |v4| NftField::Addr {
            which: NftAddr::Destination,
            v4,
        };
        let saddr = |v4| NftField::Addr {
            which: NftAddr::Source,
            v4,
        };
        let (l4, port) = (NftField::L4proto, NftField::Dport);
        // dnat ip to ip daddr . meta l4proto . th dport map @hostip4:
        // reg 1, 9, 10; nat proto_min reg 9.
        let hostip4 = NftExpr::dnat_map("hostip4", true, &[daddr(true), l4, port]);
        assert_eq!(registers(&hostip4), [1, 9, 10, 209]);
        // The IPv6 one: reg 1, 2, 13; proto_min reg 2.
        let hostip6 = NftExpr::dnat_map("hostip6", false, &[daddr(false), l4, port]);
        assert_eq!(registers(&hostip6), [1, 2, 13, 202]);
        // meta l4proto . th dport map @ports4: reg 1, 9.
        assert_eq!(
            registers(&NftExpr::dnat_map("ports4", true, &[l4, port])),
            [1, 9, 209]
        );
        // ip saddr . ip daddr . meta l4proto . th dport @masq4, interval:
        // reg 1, 9, 10 (hton), 11; the IPv6 one 1, 2, 3 (hton), 17.
        let masq4 = NftExpr::in_set("masq4", &[saddr(true), daddr(true), l4, port], true);
        assert_eq!(registers(&masq4), [1, 9, 10, 110, 11]);
        let masq6 = NftExpr::in_set("masq6", &[saddr(false), daddr(false), l4, port], true);
        assert_eq!(registers(&masq6), [1, 2, 3, 103, 17]);
        assert_eq!(
            nft_concat(&[&[6], &[0x1f, 0x90]]),
            [6, 0, 0, 0, 0x1f, 0x90, 0, 0]
        );
    }

    #[test]
    fn comments_are_user_data() {
        assert_eq!(comment_udata("c"), Some(vec![0, 2, b'c', 0]));
        assert_eq!(comment_udata(&"x".repeat(255)), None);
    }
}
