//! Lease keys: `<prefix>/subnets/10.5.52.0-24`, or the dual-stack form
//! `10.12.13.0-24&fd00:12:13::-56`, exactly as flannel writes and parses them.

use ipnetwork::{Ipv4Network, Ipv6Network};
use std::net::{Ipv4Addr, Ipv6Addr};

/// `10.5.52.0/24` -> `10.5.52.0-24`.
pub fn lease_key_name(s: &Ipv4Network) -> String {
    format!("{}-{}", s.network(), s.prefix())
}

/// The dual-stack form `10.12.13.0-24&fd00:12:13::-56`; plain v4 without a v6 subnet.
pub fn lease_key_name_dual(s: &Ipv4Network, s6: Option<&Ipv6Network>) -> String {
    match s6 {
        None => lease_key_name(s),
        Some(s6) => format!("{}&{}-{}", lease_key_name(s), s6.network(), s6.prefix()),
    }
}

/// Parse the last path element of a lease key: `10.5.52.0-24`, or the
/// dual-stack form `10.5.52.0-24&fd00::-64` (only the IPv4 part is returned).
/// Like flannel, the address must be the network address and hex is lowercase.
#[cfg(test)]
pub fn parse_lease_key_name(name: &str) -> Option<Ipv4Network> {
    parse_lease_key_name_dual(name).map(|(v4, _)| v4)
}

/// Both parts of a lease key name; the IPv6 part is `None` for a v4-only key.
pub fn parse_lease_key_name_dual(name: &str) -> Option<(Ipv4Network, Option<Ipv6Network>)> {
    let (v4, v6) = match name.split_once('&') {
        Some((v4, v6)) => {
            let (a, l) = v6.rsplit_once('-')?;
            if a.chars().any(|c| c.is_ascii_uppercase()) {
                return None;
            }
            if l.is_empty() || l.len() > 3 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let ip: Ipv6Addr = a.parse().ok()?;
            let len: u8 = l.parse().ok().filter(|l| *l <= 128)?;
            let n = Ipv6Network::new(ip, len).ok()?;
            if n.network() != ip {
                return None;
            }
            (v4, Some(n))
        }
        None => (name, None),
    };
    let (a, l) = v4.split_once('-')?;
    if l.is_empty() || l.len() > 2 || !l.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ip: Ipv4Addr = a.parse().ok()?;
    let len: u8 = l.parse().ok()?;
    let n = Ipv4Network::new(ip, len).ok()?;
    (n.network() == ip).then_some((n, v6))
}

/// A subnet key below `<prefix>/subnets/`, from its full etcd key.
pub fn parse_lease_key(prefix: &str, key: &str) -> Option<Ipv4Network> {
    parse_lease_key_dual(prefix, key).map(|(v4, _)| v4)
}

/// Both subnets of a key below `<prefix>/subnets/`.
pub fn parse_lease_key_dual(prefix: &str, key: &str) -> Option<(Ipv4Network, Option<Ipv6Network>)> {
    let rest = key.strip_prefix(&subnets_prefix(prefix))?;
    parse_lease_key_name_dual(rest)
}

/// `<prefix>/subnets/` with exactly one slash between the parts.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

#[cfg(test)]
pub fn lease_key(prefix: &str, s: &Ipv4Network) -> String {
    format!("{}{}", subnets_prefix(prefix), lease_key_name(s))
}

pub fn lease_key_dual(prefix: &str, s: &Ipv4Network, s6: Option<&Ipv6Network>) -> String {
    format!("{}{}", subnets_prefix(prefix), lease_key_name_dual(s, s6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }
    fn net6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }

    #[test]
    fn lease_keys() {
        assert_eq!(lease_key_name(&net("10.5.52.0/24")), "10.5.52.0-24");
        assert_eq!(
            parse_lease_key_name("10.5.52.0-24"),
            Some(net("10.5.52.0/24"))
        );
        assert_eq!(
            parse_lease_key_name("10.12.13.0-24&fd00:12:13::-56"),
            Some(net("10.12.13.0/24"))
        );
        for bad in [
            "10.5.52.1-24",
            "10.5.52.0-",
            "10.5.52.0",
            "10.5.52.0-33",
            "x-24",
            "10.5.52.0-+4",
            "10.5.52.0-24&FD00::-56",
        ] {
            assert_eq!(parse_lease_key_name(bad), None, "{bad}");
        }
        assert_eq!(
            lease_key("/coreos.com/network/", &net("10.5.52.0/24")),
            "/coreos.com/network/subnets/10.5.52.0-24"
        );
        assert_eq!(
            parse_lease_key(
                "/coreos.com/network",
                "/coreos.com/network/subnets/10.5.52.0-24"
            ),
            Some(net("10.5.52.0/24"))
        );
        assert_eq!(
            parse_lease_key("/other", "/coreos.com/network/subnets/10.5.52.0-24"),
            None
        );
        assert_eq!(
            config_key("/coreos.com/network"),
            "/coreos.com/network/config"
        );
    }

    #[test]
    fn dual_stack_lease_keys_round_trip() {
        for name in [
            "10.12.13.0-24&fd00:12:13::-56",
            "10.244.3.0-24&fd00:10:244:3::-64",
            "10.5.52.0-24",
        ] {
            let (a, b) = parse_lease_key_name_dual(name).unwrap();
            assert_eq!(lease_key_name_dual(&a, b.as_ref()), name);
        }
        assert_eq!(
            parse_lease_key_name_dual("10.12.13.0-24&fd00:12:13::-56"),
            Some((net("10.12.13.0/24"), Some(net6("fd00:12:13::/56"))))
        );
        assert_eq!(
            parse_lease_key_name_dual("10.5.52.0-24"),
            Some((net("10.5.52.0/24"), None))
        );
        for bad in [
            "10.12.13.0-24&fd00:12:13::1-56",
            "10.12.13.0-24&fd00:12:13::-129",
            "10.12.13.0-24&fd00:12:13::-",
            "10.12.13.0-24&Fd00:12:13::-56",
            "10.12.13.0-24&10.0.0.0-8",
            "10.12.13.1-24&fd00:12:13::-56",
        ] {
            assert_eq!(parse_lease_key_name_dual(bad), None, "{bad}");
        }
        assert_eq!(
            lease_key_dual(
                "/coreos.com/network",
                &net("10.12.13.0/24"),
                Some(&net6("fd00:12:13::/56"))
            ),
            "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56"
        );
        assert_eq!(
            parse_lease_key_dual(
                "/coreos.com/network",
                "/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56"
            ),
            Some((net("10.12.13.0/24"), Some(net6("fd00:12:13::/56"))))
        );
    }
}
