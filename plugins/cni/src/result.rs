//! The CNI Result, held in its newest (1.1.0) form and printed in whatever
//! version a request asked for. Reading accepts any supported version:
//! older results differ only by fields that are added or ignored.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::version::Version;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for a container interface; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its subnet's prefix, e.g. 10.244.1.5/24.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM results leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, rename = "advmss", skip_serializing_if = "Option::is_none")]
    pub adv_mss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            adv_mss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// Fields that 1.1.0 added; dropped when answering an older version.
const INTERFACE_FIELDS_SINCE_1_1: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_FIELDS_SINCE_1_1: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl CniResult {
    /// Read a result (prevResult or a delegate's answer) of any supported version.
    pub fn from_value(value: &Value) -> Result<CniResult, Error> {
        if value.get("ip4").is_some() || value.get("ip6").is_some() {
            return Err(Error::version(
                "results in the 0.1.0/0.2.0 format (ip4/ip6) are not supported",
            ));
        }
        CniResult::deserialize(value)
            .map_err(|e| Error::decode(format!("cannot decode result: {e}")))
    }

    /// The result as the spec's JSON for `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), Value::String(version.as_str().into()));
        let Ok(Value::Object(body)) = serde_json::to_value(self) else {
            return Value::Object(out);
        };
        out.extend(body);
        if version < Version::V1_1_0 {
            strip_fields(&mut out, "interfaces", &INTERFACE_FIELDS_SINCE_1_1);
            strip_fields(&mut out, "routes", &ROUTE_FIELDS_SINCE_1_1);
        }
        if version.has_ip_version_field() {
            if let Some(Value::Array(ips)) = out.get_mut("ips") {
                for (ip, config) in ips.iter_mut().zip(&self.ips) {
                    let family = if config.address.is_ipv4() { "4" } else { "6" };
                    if let Value::Object(ip) = ip {
                        ip.insert("version".into(), Value::String(family.into()));
                    }
                }
            }
            // Go's 0.3.x/0.4.0 types always print a dns object.
            out.entry("dns")
                .or_insert_with(|| Value::Object(Map::new()));
        }
        Value::Object(out)
    }
}

fn strip_fields(out: &mut Map<String, Value>, list: &str, fields: &[&str]) {
    if let Some(Value::Array(items)) = out.get_mut(list) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            for f in fields {
                item.remove(*f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:f4:01:05".into()),
                mtu: Some(1450),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                priority: Some(5),
                ..Route::new("0.0.0.0/0".parse().unwrap(), None)
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn v1_1_keeps_everything_and_omits_empty_dns() {
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1450);
        assert_eq!(v["routes"][0]["priority"], 5);
        assert_eq!(v["ips"][0]["address"], "10.244.1.5/24");
        assert!(v["ips"][0].get("version").is_none());
        assert!(v.get("dns").is_none());
    }

    #[test]
    fn v1_0_drops_1_1_fields() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("priority").is_none());
        assert!(v["ips"][0].get("version").is_none());
    }

    #[test]
    fn pre_1_0_tags_ip_versions_and_prints_dns() {
        for version in [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0] {
            let v = sample().to_json(version);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["dns"], json!({}));
            assert_eq!(v["cniVersion"], version.as_str());
        }
    }

    #[test]
    fn reads_any_version_back() {
        for version in [
            Version::V0_3_0,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let back = CniResult::from_value(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips);
        }
        assert_eq!(
            CniResult::from_value(&json!({"ip4": {}}))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            CniResult::from_value(&json!({"ips": [{"address": "nope"}]}))
                .unwrap_err()
                .code(),
            6
        );
    }
}
