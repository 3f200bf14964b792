//! /run/flannel/subnet.env for weftd: one subnet and network per family, on
//! top of the reader, renderer and atomic write in the `flannel-env` crate
//! (shared with the flannel CNI plugin, so both accept the same files).

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::os::unix::fs::DirBuilderExt;
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
    /// flannel's format; a family is written only when both its network and
    /// subnet are known.
    pub fn render(&self) -> String {
        let (networks, subnet) = match (self.network, self.subnet) {
            (Some(n), Some(s)) => (vec![n], Some(s)),
            _ => (vec![], None),
        };
        let (ipv6_networks, ipv6_subnet) = match (self.ipv6_network, self.ipv6_subnet) {
            (Some(n), Some(s)) => (vec![n], Some(s)),
            _ => (vec![], None),
        };
        flannel_env::SubnetEnv { networks, subnet, ipv6_networks, ipv6_subnet, mtu: self.mtu, ipmasq: self.ipmasq }.render()
    }
}

/// The previous run's file, if it exists and parses (a file that does not
/// parse is ignored with a warning: a fresh subnet is taken instead).
fn read(path: &Path) -> Option<flannel_env::SubnetEnv> {
    match flannel_env::SubnetEnv::read(path) {
        Ok(env) => Some(env),
        Err(flannel_env::ReadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            crate::warn!("ignoring the previous subnet file", error = e);
            None
        }
    }
}

/// The subnet recorded by a previous run (FLANNEL_SUBNET's network), and the
/// network it belonged to, if the file exists and parses.
pub fn read_previous(path: &Path) -> Option<(Option<Ipv4Network>, Ipv4Network)> {
    let env = read(path)?;
    Some((env.networks.first().copied(), env.subnet?))
}

/// The IPv6 subnet recorded by a previous run (FLANNEL_IPV6_SUBNET's
/// network) and its FLANNEL_IPV6_NETWORK, if present.
pub fn read_previous_v6(path: &Path) -> Option<(Option<Ipv6Network>, Ipv6Network)> {
    let env = read(path)?;
    Some((env.ipv6_networks.first().copied(), env.ipv6_subnet?))
}

/// Write `contents` to `path` atomically with mode 0644, creating the
/// directory (0755) if needed. Readers see either the old or the new file.
pub fn write_atomic(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    flannel_env::write_atomic(path, contents.as_bytes(), 0o644)
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
        // What weftd writes, the shared reader (the CNI plugin's) reads back.
        let back = flannel_env::SubnetEnv::parse(&e.render()).unwrap();
        assert_eq!(back.subnet, e.subnet);
        assert_eq!(back.ipv6_subnet, e.ipv6_subnet);
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
        write_atomic(&path, "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=garbage\n").unwrap();
        assert_eq!(read_previous(&path), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_previous(&path), None);
    }

    #[test]
    fn reads_flanneld_files_with_dotenv_noise() {
        let dir = std::env::temp_dir().join(format!("weftd-env-noise-{}", std::process::id()));
        let path = dir.join("subnet.env");
        write_atomic(
            &path,
            "# c\n\nexport FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=\"10.1.2.1/24\"\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(
            read_previous(&path),
            Some((Some("10.1.0.0/16".parse().unwrap()), "10.1.2.0/24".parse().unwrap()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
