//! The tuning plugin's configuration: the reference's keys, sources and
//! precedence (config < CNI_ARGS MAC < runtimeConfig.mac < args.cni), all
//! validated before anything is changed. Sysctl names are restricted to
//! the pod netns's own `net.*` tree.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use weft_cni::args::CniArgs;
use weft_cni::{Error, Request};
use weft_netlink::parse_mac;

/// Where the reference keeps its backups of the original values.
const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Settings {
    #[serde(default)]
    sysctl: Option<BTreeMap<String, String>>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default)]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen")]
    tx_qlen: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(flatten)]
    settings: Settings,
    #[serde(default)]
    data_dir: Option<String>,
}

/// One sysctl: the name as configured and its path under /proc/sys
/// (slash form, IFNAME substituted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    pub name: String,
    pub path: String,
    pub value: String,
}

#[derive(Debug, Default)]
pub struct TuningConfig {
    pub sysctls: Vec<Sysctl>,
    pub mac: Option<[u8; 6]>,
    pub promisc: Option<bool>,
    pub mtu: Option<u32>,
    pub allmulti: Option<bool>,
    pub txqlen: Option<u32>,
    pub data_dir: PathBuf,
}

impl TuningConfig {
    pub fn parse(req: &Request) -> Result<TuningConfig, Error> {
        let raw: Raw = req.parse_config()?;
        let args: Settings = match req.config.pointer("/args/cni") {
            None | Some(Value::Null) => Settings::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::config(format!("args.cni: {e}")))?,
        };
        let base = raw.settings;
        let mut sysctl = base.sysctl.unwrap_or_default();
        // args.cni.sysctl adds to (and overrides) the config's, even when
        // the config has none (the reference panics there).
        sysctl.extend(args.sysctl.unwrap_or_default());
        let mac = mac_text(req, base.mac, args.mac)?;
        Ok(TuningConfig {
            sysctls: sysctl
                .into_iter()
                .map(|(name, value)| sysctl_entry(&name, value, &req.ifname))
                .collect::<Result<_, _>>()?,
            mac: mac
                .map(|(source, text)| unicast_mac(source, &text))
                .transpose()?,
            promisc: args.promisc.or(base.promisc),
            mtu: args
                .mtu
                .or(base.mtu)
                .map(|m| bounded("mtu", m, 68, 65535))
                .transpose()?,
            allmulti: args.allmulti.or(base.allmulti),
            txqlen: args
                .tx_qlen
                .or(base.tx_qlen)
                .map(|q| bounded("txQLen", q, 0, i64::from(u32::MAX)))
                .transpose()?,
            data_dir: PathBuf::from(
                raw.data_dir
                    .filter(|d| !d.is_empty())
                    .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            ),
        })
    }

    /// Only `dataDir`: DEL and GC must not fail on the rest of the config.
    pub fn data_dir_of(req: &Request) -> PathBuf {
        PathBuf::from(
            req.config
                .get("dataDir")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
                .unwrap_or(DEFAULT_DATA_DIR),
        )
    }

    /// Whether there is anything to change at all.
    pub fn is_empty(&self) -> bool {
        self.sysctls.is_empty() && !self.touches_link()
    }

    /// Whether any interface attribute is configured.
    fn touches_link(&self) -> bool {
        self.mac.is_some()
            || self.promisc.is_some()
            || self.mtu.is_some()
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }
}

fn bounded(key: &str, v: i64, min: i64, max: i64) -> Result<u32, Error> {
    if (min..=max).contains(&v) {
        u32::try_from(v).map_err(|_| Error::config(format!("{key} {v} is out of range")))
    } else {
        Err(Error::config(format!(
            "{key} {v} is out of range {min}-{max}"
        )))
    }
}

/// The MAC to set and where it came from: config, then CNI_ARGS MAC, then
/// runtimeConfig.mac, then args.cni.mac (later wins).
fn mac_text(
    req: &Request,
    config: Option<String>,
    args: Option<String>,
) -> Result<Option<(&'static str, String)>, Error> {
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
    let mut chosen = config.map(|m| ("mac", m));
    if let Some(m) = cni_args.get("MAC") {
        chosen = Some(("CNI_ARGS MAC", m.to_string()));
    }
    if let Some(m) = req
        .config
        .pointer("/runtimeConfig/mac")
        .and_then(Value::as_str)
    {
        chosen = Some(("runtimeConfig.mac", m.to_string()));
    }
    if let Some(m) = args {
        chosen = Some(("args.cni.mac", m));
    }
    Ok(chosen)
}

fn unicast_mac(source: &str, text: &str) -> Result<[u8; 6], Error> {
    match parse_mac(text) {
        Some(mac) if mac[0] & 1 == 0 && mac != [0; 6] => Ok(mac),
        _ => Err(Error::config(format!(
            "{source} \"{}\" is not a unicast MAC address",
            text.escape_debug()
        ))),
    }
}

/// Check a sysctl name and map it to its path: dotted, under `net.`, no
/// `/`, no empty or `..` component; the first `IFNAME` component becomes
/// CNI_IFNAME (after the dots are split, so "eth0.100" stays one name).
fn sysctl_entry(name: &str, value: String, ifname: &str) -> Result<Sysctl, Error> {
    let refuse = |why: &str| {
        Err(Error::config(format!(
            "sysctl \"{}\" is refused: {why}",
            name.escape_debug()
        )))
    };
    if name.contains('/') || name.contains('\0') {
        return refuse("names are dotted and may not contain '/'");
    }
    let mut parts: Vec<&str> = name.split('.').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "..") {
        return refuse("empty or '..' component");
    }
    if parts.first() != Some(&"net") || parts.len() < 3 {
        return refuse("only the pod's own net.* sysctls may be set");
    }
    if let Some(slot) = parts.iter_mut().find(|p| **p == "IFNAME") {
        *slot = ifname;
    }
    if value.contains('\0') || value.contains('\n') && value.trim_end().contains('\n') {
        return refuse("the value spans several lines");
    }
    Ok(Sysctl {
        name: name.to_string(),
        path: parts.join("/"),
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names() {
        let ok = sysctl_entry("net.ipv4.conf.IFNAME.arp_ignore", "1".into(), "eth0.100").unwrap();
        assert_eq!(ok.path, "net/ipv4/conf/eth0.100/arp_ignore");
        assert_eq!(
            sysctl_entry("net.core.somaxconn", "1024".into(), "eth0")
                .unwrap()
                .path,
            "net/core/somaxconn"
        );
        for bad in [
            "kernel.hostname",
            "net/ipv4/ip_forward",
            "net.ipv4..conf",
            "net..",
            "net",
            "net.core",
            "..net.ipv4.ip_forward",
            "net.ipv4.conf.all.arp_ignore.",
            "vm.swappiness",
            "net.ipv4\0.x",
        ] {
            assert_eq!(
                sysctl_entry(bad, "1".into(), "eth0").unwrap_err().code(),
                7,
                "{bad:?}"
            );
        }
        assert!(sysctl_entry("net.core.somaxconn", "1\n2".into(), "eth0").is_err());
    }

    #[test]
    fn ranges() {
        assert!(bounded("mtu", 67, 68, 65535).is_err());
        assert!(bounded("mtu", -1, 68, 65535).is_err());
        assert_eq!(bounded("mtu", 9000, 68, 65535).unwrap(), 9000);
        assert!(unicast_mac("mac", "01:00:5e:00:00:01").is_err());
        assert!(unicast_mac("mac", "zz").is_err());
        assert!(unicast_mac("mac", "02:00:00:00:00:01").is_ok());
    }
}
