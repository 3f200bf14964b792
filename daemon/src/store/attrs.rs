//! Lease values: flannel's LeaseAttrs (`PublicIP`, `PublicIPv6`,
//! `BackendType`, `BackendData`, `BackendV6Data`).

use crate::config::field;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A lease value (flannel's LeaseAttrs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP", default)]
    pub public_ip: String,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    #[serde(
        rename = "BackendType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub backend_type: String,
    #[serde(
        rename = "BackendData",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_data: Option<JsonText>,
    #[serde(
        rename = "BackendV6Data",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_v6_data: Option<JsonText>,
}

impl LeaseAttrs {
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, mac: &[u8; 6]) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: public_ip.to_string(),
            public_ipv6: None,
            backend_type: "vxlan".to_string(),
            backend_data: Some(JsonText::from(serde_json::json!({
                "VNI": vni,
                "VtepMAC": weft_netlink::format_mac(mac),
            }))),
            backend_v6_data: None,
        }
    }

    /// A dual-stack vxlan lease: BackendV6Data describes `flannel-v6.<VNI>`.
    pub fn vxlan_dual(
        public_ip: Ipv4Addr,
        public_ipv6: Ipv6Addr,
        vni: u32,
        mac: &[u8; 6],
        mac6: &[u8; 6],
    ) -> LeaseAttrs {
        LeaseAttrs {
            public_ipv6: Some(public_ipv6.to_string()),
            backend_v6_data: Some(JsonText::from(serde_json::json!({
                "VNI": vni,
                "VtepMAC": weft_netlink::format_mac(mac6),
            }))),
            ..LeaseAttrs::vxlan(public_ip, vni, mac)
        }
    }

    /// A host-gw lease: no BackendData (flannel's format).
    pub fn host_gw(public_ip: Ipv4Addr, public_ipv6: Option<Ipv6Addr>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: public_ip.to_string(),
            public_ipv6: public_ipv6.map(|ip| ip.to_string()),
            backend_type: "host-gw".to_string(),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain strings and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn parse(json: &[u8]) -> Option<LeaseAttrs> {
        serde_json::from_slice(json).ok()
    }

    pub fn public_ipv4(&self) -> Option<Ipv4Addr> {
        self.public_ip.parse().ok()
    }

    pub fn public_ipv6_addr(&self) -> Option<Ipv6Addr> {
        self.public_ipv6.as_deref()?.parse().ok()
    }

    /// The peer's VTEP MAC, when this is a vxlan lease.
    pub fn vtep_mac(&self) -> Option<[u8; 6]> {
        self.mac_of(self.backend_data.as_ref())
    }

    /// The MAC of the peer's `flannel-v6.<VNI>` (BackendV6Data.VtepMAC).
    pub fn vtep_mac_v6(&self) -> Option<[u8; 6]> {
        self.mac_of(self.backend_v6_data.as_ref())
    }

    fn mac_of(&self, data: Option<&JsonText>) -> Option<[u8; 6]> {
        if self.backend_type != "vxlan" {
            return None;
        }
        let data = data?.value()?;
        match field(data.as_object()?, "VtepMAC")? {
            Value::String(s) => weft_netlink::parse_mac(s),
            _ => None,
        }
    }
}

/// A JSON value kept as its compact text: a node holds every peer's
/// BackendData, and as text it is one small allocation instead of a map
/// (a BTreeMap node alone is ~600 bytes), which at 10,000 peers is most of
/// weftd's memory. The text is serde_json's canonical form, so two equal
/// values have equal texts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonText(Box<str>);

impl JsonText {
    /// The value, parsed again (only when a lease is validated).
    pub fn value(&self) -> Option<Value> {
        serde_json::from_str(&self.0).ok()
    }
}

impl From<Value> for JsonText {
    fn from(v: Value) -> Self {
        JsonText(v.to_string().into_boxed_str())
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value()
            .ok_or_else(|| serde::ser::Error::custom("stored JSON text does not parse"))?
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(JsonText::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_json_round_trip() {
        let a = LeaseAttrs::vxlan(
            Ipv4Addr::new(192, 168, 64, 3),
            1,
            &[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
        );
        let j = a.to_json();
        assert_eq!(
            j,
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let b = LeaseAttrs::parse(j.as_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.vtep_mac(), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(b.public_ipv4(), Some(Ipv4Addr::new(192, 168, 64, 3)));
        // A flannel reservation without backend data.
        let r = LeaseAttrs::parse(br#"{"PublicIP":"10.0.0.9"}"#).unwrap();
        assert_eq!(r.vtep_mac(), None);
        let h = LeaseAttrs::parse(br#"{"PublicIP":"10.0.0.9","BackendType":"host-gw"}"#).unwrap();
        assert_eq!(h.vtep_mac(), None);
    }

    #[test]
    fn dual_stack_lease_value_round_trip() {
        // As flanneld writes it (Go struct field order).
        let flannel = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"9a:1b:2c:3d:4e:5f"}}"#;
        let a = LeaseAttrs::parse(flannel.as_bytes()).unwrap();
        assert_eq!(a.to_json(), flannel);
        assert_eq!(a.public_ipv6_addr(), Some("2001:db8::3".parse().unwrap()));
        assert_eq!(a.vtep_mac(), Some([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]));
        assert_eq!(a.vtep_mac_v6(), Some([0x9a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]));
        let b = LeaseAttrs::vxlan_dual(
            Ipv4Addr::new(192, 168, 64, 3),
            "2001:db8::3".parse().unwrap(),
            1,
            &[0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44],
            &[0x9a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f],
        );
        assert_eq!(a, b);
        // A v4-only lease has no v6 side.
        let v4 = LeaseAttrs::parse(br#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#).unwrap();
        assert_eq!((v4.public_ipv6_addr(), v4.vtep_mac_v6()), (None, None));
    }
}
