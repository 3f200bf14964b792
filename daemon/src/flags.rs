//! Command-line flags, named as flanneld's. Every flag also reads
//! `FLANNELD_<NAME>` (upper case, dashes as underscores) when it is not
//! given on the command line.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weftd",
    version,
    about = "weft node agent: flannel-compatible etcd leases and VXLAN overlay"
)]
pub struct Flags {
    /// etcd endpoints (comma-separated or repeated); flanneld's default.
    #[arg(
        long,
        env = "FLANNELD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// etcd key prefix holding `config` and `subnets/`.
    #[arg(
        long,
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub etcd_prefix: String,
    /// CA bundle for the etcd server certificate.
    #[arg(long, env = "FLANNELD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (used with --etcd-keyfile).
    #[arg(long, env = "FLANNELD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd (used with --etcd-certfile).
    #[arg(long, env = "FLANNELD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    #[arg(long, env = "FLANNELD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    #[arg(long, env = "FLANNELD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// Interface (name or IP) for inter-host traffic; repeatable, first match wins.
    /// Default: the interface of the default route.
    #[arg(long, env = "FLANNELD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// IP other nodes use to reach this one (default: the interface's IP).
    #[arg(long, env = "FLANNELD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address other nodes use to reach this one when the config is
    /// dual-stack (default: the interface's first global IPv6 address).
    #[arg(long, env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Where to write the subnet file read by the CNI plugin.
    #[arg(
        long,
        env = "FLANNELD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    pub subnet_file: PathBuf,
    /// Where weftd keeps its state for weftctl and the flannel plugin
    /// (root-only; default: weftd-state.json next to --subnet-file).
    #[arg(long, env = "WEFTD_STATE_FILE")]
    pub state_file: Option<PathBuf>,
    /// Masquerade traffic leaving the overlay network.
    #[arg(long, env = "FLANNELD_IP_MASQ", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ip_masq: bool,
    /// Do not use --random-fully on masquerade rules.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", action = ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ip_masq_fully_random_disable: bool,
    /// Add FORWARD accept rules for the cluster network (with --ip-masq).
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", action = ArgAction::Set, num_args = 0..=1,
          default_value = "true", default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub iptables_forward_rules: bool,
    /// Seconds between checks that the masquerade/forward rules are intact.
    #[arg(long, env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub iptables_resync: u64,
    /// Rule backend for --ip-masq: auto (nftables if `nft` works), nftables or iptables.
    #[arg(long, env = "FLANNELD_MASQ_BACKEND", default_value = "auto", value_parser = ["auto", "nftables", "iptables"])]
    pub masq_backend: String,
    /// Address for the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "FLANNELD_HEALTHZ_IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port for /healthz, /readyz and /metrics; 0 disables the server.
    #[arg(long, env = "FLANNELD_HEALTHZ_PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Renew the subnet lease this many minutes before it expires (1-1439).
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=1439))]
    pub subnet_lease_renew_margin: u32,
    /// Subnet lease TTL in seconds (flannel: 24h). Mainly for tests.
    #[arg(long, env = "FLANNELD_SUBNET_LEASE_TTL", default_value_t = 86400,
          value_parser = clap::value_parser!(i64).range(10..=86400 * 30))]
    pub subnet_lease_ttl: i64,
    /// Seconds between full data-plane reconciliations (kernel vs leases).
    #[arg(long, env = "FLANNELD_RECONCILE_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_interval: u64,
    /// Log debug lines too.
    #[arg(short = 'v', long, env = "FLANNELD_VERBOSE")]
    pub verbose: bool,
}

/// Go's flag package accepts `-flag`; turn single-dash long flags into `--flag`.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest_literal = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || rest_literal {
            out.push(a);
            continue;
        }
        if a == "--" {
            rest_literal = true;
        } else if a.len() > 2
            && a.starts_with('-')
            && !a.starts_with("--")
            && a.as_bytes()[1].is_ascii_alphabetic()
        {
            out.push(format!("-{a}"));
            continue;
        }
        out.push(a);
    }
    out
}

impl Flags {
    /// Checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd_endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err("--etcd-endpoints must name at least one endpoint".into());
        }
        if self.etcd_certfile.is_some() != self.etcd_keyfile.is_some() {
            return Err("--etcd-certfile and --etcd-keyfile must be given together".into());
        }
        if !self.etcd_prefix.starts_with('/') {
            return Err(format!(
                "--etcd-prefix {:?} must start with '/'",
                self.etcd_prefix
            ));
        }
        if self.etcd_username.is_some() != self.etcd_password.is_some() {
            return Err("--etcd-username and --etcd-password must be given together".into());
        }
        Ok(())
    }

    pub fn uses_tls(&self) -> bool {
        self.etcd_cafile.is_some()
            || self.etcd_certfile.is_some()
            || self
                .etcd_endpoints
                .iter()
                .any(|e| e.starts_with("https://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Flags, clap::Error> {
        Flags::try_parse_from(normalize_args(
            std::iter::once("weftd")
                .chain(args.iter().copied())
                .map(String::from),
        ))
    }

    #[test]
    fn defaults() {
        let f = parse(&[]).unwrap();
        assert_eq!(
            f.etcd_endpoints,
            vec!["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
        );
        assert_eq!(f.etcd_prefix, "/coreos.com/network");
        assert_eq!(f.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
        assert!(!f.ip_masq);
        assert!(f.iptables_forward_rules);
        assert_eq!(f.healthz_ip, "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(f.healthz_port, 0);
        assert_eq!(f.subnet_lease_renew_margin, 60);
        f.validate().unwrap();
    }

    #[test]
    fn lists_and_go_style_flags() {
        let f = parse(&[
            "--etcd-endpoints=http://a:2379,http://b:2379",
            "--etcd-endpoints",
            "http://c:2379",
            "-iface",
            "eth1",
            "--iface=10.0.0.1",
            "--ip-masq",
            "-public-ip=198.51.100.7",
            "--public-ipv6=2001:db8:100::7",
        ])
        .unwrap();
        assert_eq!(
            f.etcd_endpoints,
            vec!["http://a:2379", "http://b:2379", "http://c:2379"]
        );
        assert_eq!(f.iface, vec!["eth1", "10.0.0.1"]);
        assert!(f.ip_masq);
        assert_eq!(f.public_ip, Some(Ipv4Addr::new(198, 51, 100, 7)));
        assert_eq!(f.public_ipv6, "2001:db8:100::7".parse().ok());
        assert!(!parse(&["--ip-masq=false"]).unwrap().ip_masq);
        assert!(
            !parse(&["--iptables-forward-rules=false"])
                .unwrap()
                .iptables_forward_rules
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        for bad in [
            &["--subnet-lease-renew-margin=0"][..],
            &["--subnet-lease-renew-margin=1440"],
            &["--healthz-port=70000"],
            &["--public-ip=nope"],
            &["--public-ipv6=198.51.100.7"],
            &["--no-such-flag"],
            &["--ip-masq=maybe"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&["--subnet-lease-renew-margin=1439"]).is_ok());
        assert!(parse(&["--etcd-certfile=/a"]).unwrap().validate().is_err());
        assert!(parse(&["--etcd-prefix=x"]).unwrap().validate().is_err());
    }
}
