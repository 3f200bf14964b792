//! The bridge plugin's configuration: the reference plugin's keys and
//! defaults, validated in full before anything is changed.

use serde::Deserialize;
use serde_json::Value;
use weft_cni::args::CniArgs;
use weft_cni::{Dns, Error, Request};
use weft_netlink::parse_mac;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: i64,
    #[serde(default)]
    preserve_default_vlan: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    vlan_trunk: Value,
    #[serde(default)]
    disable_container_interface: Value,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    ipam: Value,
    #[serde(default)]
    dns: Option<Dns>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasqBackend {
    Nftables,
    Iptables,
}

#[derive(Debug)]
pub struct BridgeConfig {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// None: nftables where available, else iptables.
    pub ip_masq_backend: Option<MasqBackend>,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    pub vlan: Option<u16>,
    pub preserve_default_vlan: bool,
    pub enable_dad: bool,
    pub mac_spoof_check: bool,
    pub port_isolation: bool,
    /// The IPAM plugin's type; None for an L2-only network.
    pub ipam_type: Option<String>,
    pub dns: Option<Dns>,
    /// Set only for ADD (see `with_requested_mac`).
    pub mac: Option<[u8; 6]>,
}

impl BridgeConfig {
    pub fn parse(req: &Request) -> Result<BridgeConfig, Error> {
        let raw: Raw = req.parse_config()?;
        let bridge = raw.bridge.unwrap_or_else(|| "cni0".into());
        weft_cni::validate::interface_name(&bridge).map_err(|_| {
            Error::config(format!(
                "bridge \"{}\" is not a valid interface name",
                bridge.escape_debug()
            ))
        })?;
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(Error::config(
                "hairpinMode and promiscMode cannot both be set",
            ));
        }
        let vlan = match raw.vlan {
            0 => None,
            v @ 1..=4094 => u16::try_from(v).ok(),
            v => return Err(Error::config(format!("vlan {v} is out of range 0-4094"))),
        };
        if raw.mtu != 0 && !(68..=65535).contains(&raw.mtu) {
            return Err(Error::config(format!(
                "mtu {} is out of range 68-65535",
                raw.mtu
            )));
        }
        let ip_masq_backend = match raw.ip_masq_backend.as_deref() {
            None | Some("") => None,
            Some("nftables") => Some(MasqBackend::Nftables),
            Some("iptables") => Some(MasqBackend::Iptables),
            Some(other) => {
                return Err(Error::config(format!(
                    "ipMasqBackend \"{other}\" is unknown; use nftables or iptables"
                )))
            }
        };
        let ipam_type = match &raw.ipam {
            Value::Null => None,
            Value::Object(m) if m.is_empty() => None,
            Value::Object(m) => match m.get("type") {
                Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                _ => return Err(Error::config("ipam.type is missing")),
            },
            other => {
                return Err(Error::config(format!(
                    "ipam must be an object, not {other}"
                )))
            }
        };
        // As in the reference, this combination is invalid whether supported or not.
        if is_set(&raw.disable_container_interface) && ipam_type.is_some() {
            return Err(Error::config(
                "disableContainerInterface cannot be combined with ipam",
            ));
        }
        refuse_unsupported("vlanTrunk", &raw.vlan_trunk)?;
        refuse_unsupported(
            "disableContainerInterface",
            &raw.disable_container_interface,
        )?;
        Ok(BridgeConfig {
            bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            ip_masq_backend,
            mtu: Some(raw.mtu).filter(|m| *m != 0),
            hairpin_mode: raw.hairpin_mode,
            promisc_mode: raw.promisc_mode,
            vlan,
            preserve_default_vlan: raw.preserve_default_vlan,
            enable_dad: raw.enabledad,
            mac_spoof_check: raw.macspoofchk,
            port_isolation: raw.port_isolation,
            ipam_type,
            dns: raw.dns.filter(|d| !d.is_empty()),
            mac: None,
        })
    }

    /// ADD only: the MAC the runtime asked for. CNI_ARGS are checked
    /// strictly here; DEL must not fail on them and release nothing.
    pub fn with_requested_mac(mut self, req: &Request) -> Result<BridgeConfig, Error> {
        self.mac = requested_mac(req)?;
        Ok(self)
    }
}

/// Present with a value other than null or false.
fn is_set(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false))
}

fn refuse_unsupported(field: &str, value: &Value) -> Result<(), Error> {
    if is_set(value) {
        return Err(Error::new(
            weft_cni::ErrorCode::UnsupportedField,
            format!("{field} ({value}) is not supported by weft"),
        ));
    }
    Ok(())
}

/// The container MAC: CNI_ARGS MAC, then args.cni.mac, then
/// runtimeConfig.mac; later sources win, as in the reference.
fn requested_mac(req: &Request) -> Result<Option<[u8; 6]>, Error> {
    let cni_args = CniArgs::parse(
        &req.args,
        &[
            "IP",
            "MAC",
            "K8S_POD_NAMESPACE",
            "K8S_POD_NAME",
            "K8S_POD_INFRA_CONTAINER_ID",
            "K8S_POD_UID",
        ],
    )?;
    let mut chosen: Option<(&str, String)> =
        cni_args.get("MAC").map(|m| ("CNI_ARGS MAC", m.to_string()));
    if let Some(m) = req.config.pointer("/args/cni/mac").and_then(Value::as_str) {
        chosen = Some(("args.cni.mac", m.to_string()));
    }
    if let Some(m) = req
        .config
        .pointer("/runtimeConfig/mac")
        .and_then(Value::as_str)
    {
        chosen = Some(("runtimeConfig.mac", m.to_string()));
    }
    match chosen {
        None => Ok(None),
        Some((source, text)) => match parse_mac(&text) {
            Some(mac) if mac[0] & 1 == 0 => Ok(Some(mac)),
            _ => Err(Error::config(format!(
                "{source} \"{text}\" is not a unicast MAC address"
            ))),
        },
    }
}
