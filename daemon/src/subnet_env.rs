//! /run/flannel/subnet.env: render (flannel's exact variable order), write
//! atomically (temp file + fsync + rename, mode 0644) and read back.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Option<Ipv4Network>,
    pub subnet: Option<Ipv4Network>,
    pub ipv6_network: Option<Ipv6Network>,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl SubnetEnv {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let (Some(n), Some(s)) = (self.network, self.subnet) {
            out.push_str(&format!("FLANNEL_NETWORK={n}\n"));
            out.push_str(&format!(
                "FLANNEL_SUBNET={}\n",
                crate::config::gateway_cidr(&s)
            ));
        }
        if let (Some(n), Some(s)) = (self.ipv6_network, self.ipv6_subnet) {
            out.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\n"));
            out.push_str(&format!(
                "FLANNEL_IPV6_SUBNET={}\n",
                crate::config::gateway_cidr_v6(&s)
            ));
        }
        out.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        out.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ipmasq));
        out
    }
}

/// Parse KEY=VALUE lines (comments, blanks, `export ` and quotes tolerated).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            m.insert(k.trim().to_string(), v.to_string());
        }
    }
    m
}

/// The subnet recorded by a previous run (FLANNEL_SUBNET's network), and the
/// network it belonged to, if the file exists and parses.
pub fn read_previous(path: &Path) -> Option<(Option<Ipv4Network>, Ipv4Network)> {
    let text = std::fs::read_to_string(path).ok()?;
    let m = parse_env(&text);
    let sub: Ipv4Network = m.get("FLANNEL_SUBNET")?.parse().ok()?;
    let sub = Ipv4Network::new(sub.network(), sub.prefix()).ok()?;
    let net = m
        .get("FLANNEL_NETWORK")
        .and_then(|n| n.split(',').next()?.parse().ok());
    Some((net, sub))
}

/// The IPv6 subnet recorded by a previous run (FLANNEL_IPV6_SUBNET's
/// network) and its FLANNEL_IPV6_NETWORK, if present.
pub fn read_previous_v6(path: &Path) -> Option<(Option<Ipv6Network>, Ipv6Network)> {
    let text = std::fs::read_to_string(path).ok()?;
    let m = parse_env(&text);
    let sub: Ipv6Network = m.get("FLANNEL_IPV6_SUBNET")?.parse().ok()?;
    let sub = Ipv6Network::new(sub.network(), sub.prefix()).ok()?;
    let net = m
        .get("FLANNEL_IPV6_NETWORK")
        .and_then(|n| n.split(',').next()?.parse().ok());
    Some((net, sub))
}

/// Write `contents` to `path` atomically with mode 0644, creating the
/// directory (0755) if needed. Readers see either the old or the new file.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask may have narrowed the mode.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn flannel_order_v4() {
        let e = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.0/24".parse().unwrap()),
            ipv6_network: None,
            ipv6_subnet: None,
            mtu: 1450,
            ipmasq: true,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
    }

    #[test]
    fn flannel_order_dual_stack() {
        let e = SubnetEnv {
            network: Some("10.5.0.0/16".parse().unwrap()),
            subnet: Some("10.5.52.0/24".parse().unwrap()),
            ipv6_network: Some("2001:cafe:42::/56".parse().unwrap()),
            ipv6_subnet: Some("2001:cafe:42::/64".parse().unwrap()),
            mtu: 1450,
            ipmasq: false,
        };
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn write_and_read_back() {
        let dir = std::env::temp_dir().join(format!("weftd-env-test-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        write_atomic(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let (net, sub) = read_previous(&path).unwrap();
        assert_eq!(net, Some("10.5.0.0/16".parse().unwrap()));
        assert_eq!(sub, "10.5.52.0/24".parse().unwrap());
        assert_eq!(read_previous_v6(&path), None);
        write_atomic(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(
            read_previous_v6(&path),
            Some((
                Some("fd00:5::/56".parse().unwrap()),
                "fd00:5:0:7::/64".parse().unwrap()
            ))
        );
        write_atomic(&path, "FLANNEL_MTU=1\n").unwrap();
        assert_eq!(read_previous(&path), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_env_tolerates_noise() {
        let m = parse_env("# c\n\nexport FLANNEL_MTU=1450\nFLANNEL_SUBNET=\"10.1.2.1/24\"\n");
        assert_eq!(m.get("FLANNEL_MTU").map(String::as_str), Some("1450"));
        assert_eq!(
            m.get("FLANNEL_SUBNET").map(String::as_str),
            Some("10.1.2.1/24")
        );
    }
}
