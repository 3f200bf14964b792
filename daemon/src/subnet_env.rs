//! /run/flannel/subnet.env for weftd: reading back a previous run's subnet
//! and writing the file, on top of the `flannel-env` crate (shared with the
//! flannel CNI plugin, so both accept the same files).

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::path::Path;

/// The previous run's file, if it exists and parses (a file that does not
/// parse is ignored with a warning: a fresh subnet is taken instead).
pub fn read_previous(path: &Path) -> Option<flannel_env::SubnetEnv> {
    match flannel_env::SubnetEnv::read(path) {
        Ok(env) => Some(env),
        Err(flannel_env::ReadError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => {
            crate::warn!("ignoring the previous subnet file", error = e);
            None
        }
    }
}

/// The subnet a previous run recorded (FLANNEL_SUBNET's network), and the
/// network it belonged to.
pub fn previous_v4(env: &flannel_env::SubnetEnv) -> Option<(Option<Ipv4Network>, Ipv4Network)> {
    Some((env.networks.first().copied(), env.subnet?))
}

/// The IPv6 subnet a previous run recorded (FLANNEL_IPV6_SUBNET's network)
/// and its FLANNEL_IPV6_NETWORK.
pub fn previous_v6(env: &flannel_env::SubnetEnv) -> Option<(Option<Ipv6Network>, Ipv6Network)> {
    Some((env.ipv6_networks.first().copied(), env.ipv6_subnet?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn reads_back_the_previous_subnets() {
        let dir = std::env::temp_dir().join(format!("weftd-env-test-{}", std::process::id()));
        let path = dir.join("sub/subnet.env");
        write(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        let (net, sub) = read_previous(&path).as_ref().and_then(previous_v4).unwrap();
        assert_eq!(net, Some("10.5.0.0/16".parse().unwrap()));
        assert_eq!(sub, "10.5.52.0/24".parse().unwrap());
        assert_eq!(read_previous(&path).as_ref().and_then(previous_v6), None);
        write(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
        );
        assert_eq!(
            read_previous(&path).as_ref().and_then(previous_v6),
            Some((
                Some("fd00:5::/56".parse().unwrap()),
                "fd00:5:0:7::/64".parse().unwrap()
            ))
        );
        write(&path, "FLANNEL_MTU=1\n");
        assert_eq!(read_previous(&path), None);
        write(
            &path,
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=garbage\n",
        );
        assert_eq!(read_previous(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read_previous(&path), None);
    }

    #[test]
    fn reads_flanneld_files_with_dotenv_noise() {
        let dir = std::env::temp_dir().join(format!("weftd-env-noise-{}", std::process::id()));
        let path = dir.join("subnet.env");
        write(
            &path,
            "# c\n\nexport FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=\"10.1.2.1/24\"\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        );
        assert_eq!(
            read_previous(&path).as_ref().and_then(previous_v4),
            Some((
                Some("10.1.0.0/16".parse().unwrap()),
                "10.1.2.0/24".parse().unwrap()
            ))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
