//! flannel's `/run/flannel/subnet.env`, read by the flannel CNI plugin and
//! written (and read back at start) by weftd, plus the one atomic file write
//! every weft binary uses (subnet.env, the plugin's stored delegate configs,
//! weft-install's binaries and conflist).
//!
//! The reader accepts what flanneld and weftd write (IPv4, IPv6 and
//! dual-stack), flannel's plugin's comma-separated `FLANNEL_NETWORK`, and the
//! dotenv noise flanneld's own reader (godotenv) tolerates: comments, blank
//! lines, `export `, quotes. Anything else is refused, naming the variable.

use std::fmt;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::{Ipv4Network, Ipv6Network};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: one network (flanneld), or several comma-separated.
    pub networks: Vec<Ipv4Network>,
    /// The lease subnet, e.g. 10.5.52.0/24; `FLANNEL_SUBNET` holds its
    /// first address + 1 with the lease prefix (10.5.52.1/24).
    pub subnet: Option<Ipv4Network>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_networks: Vec<Ipv6Network>,
    /// The IPv6 lease subnet; `FLANNEL_IPV6_SUBNET` holds its first address + 1.
    pub ipv6_subnet: Option<Ipv6Network>,
    pub mtu: u32,
    pub ipmasq: bool,
}

/// Why subnet.env text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line} \"{text}\" is not VARIABLE=value")]
    Syntax { line: usize, text: String },
    #[error("{var}=\"{value}\" is not {expected}")]
    Invalid {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{} is missing", .0.join(", "))]
    Missing(Vec<&'static str>),
}

/// Why subnet.env could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: ParseError },
}

fn invalid(var: &'static str, value: &str, expected: &'static str) -> ParseError {
    ParseError::Invalid {
        var,
        value: value.to_string(),
        expected,
    }
}

/// A comma-separated list of CIDRs (host bits masked off, as Go's ParseCIDR does).
fn cidr_list<N: std::str::FromStr>(
    var: &'static str,
    value: &str,
    expected: &'static str,
    mask: impl Fn(N) -> Option<N>,
) -> Result<Vec<N>, ParseError> {
    value
        .split(',')
        .map(|part| {
            cidr(var, part.trim(), expected, &mask).map_err(|_| invalid(var, value, expected))
        })
        .collect()
}

fn cidr<N: std::str::FromStr>(
    var: &'static str,
    value: &str,
    expected: &'static str,
    mask: impl Fn(N) -> Option<N>,
) -> Result<N, ParseError> {
    // ipnetwork reads a bare address as a host route; subnet.env always has a prefix.
    if !value.contains('/') {
        return Err(invalid(var, value, expected));
    }
    value
        .parse::<N>()
        .ok()
        .and_then(mask)
        .ok_or_else(|| invalid(var, value, expected))
}

fn mask4(n: Ipv4Network) -> Option<Ipv4Network> {
    Ipv4Network::new(n.network(), n.prefix()).ok()
}

fn mask6(n: Ipv6Network) -> Option<Ipv6Network> {
    Ipv6Network::new(n.network(), n.prefix()).ok()
}

/// `VALUE` without surrounding quotes (either kind, matched).
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

impl SubnetEnv {
    /// Parses subnet.env. Like flannel's plugin, it needs `FLANNEL_NETWORK`
    /// or `FLANNEL_IPV6_NETWORK`, `FLANNEL_SUBNET` or `FLANNEL_IPV6_SUBNET`,
    /// `FLANNEL_MTU` and `FLANNEL_IPMASQ`; other variables are ignored.
    pub fn parse(text: &str) -> Result<SubnetEnv, ParseError> {
        let mut env = SubnetEnv {
            networks: vec![],
            subnet: None,
            ipv6_networks: vec![],
            ipv6_subnet: None,
            mtu: 0,
            ipmasq: false,
        };
        let (mut mtu, mut ipmasq) = (None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                return Err(ParseError::Syntax {
                    line: i + 1,
                    text: raw.to_string(),
                });
            };
            let value = unquote(value.trim());
            match key.trim() {
                "FLANNEL_NETWORK" => {
                    env.networks = cidr_list("FLANNEL_NETWORK", value, "an IPv4 CIDR list", mask4)?
                }
                "FLANNEL_IPV6_NETWORK" => {
                    env.ipv6_networks =
                        cidr_list("FLANNEL_IPV6_NETWORK", value, "an IPv6 CIDR list", mask6)?;
                }
                "FLANNEL_SUBNET" => {
                    env.subnet = Some(cidr("FLANNEL_SUBNET", value, "an IPv4 CIDR", mask4)?)
                }
                "FLANNEL_IPV6_SUBNET" => {
                    env.ipv6_subnet =
                        Some(cidr("FLANNEL_IPV6_SUBNET", value, "an IPv6 CIDR", mask6)?)
                }
                "FLANNEL_MTU" => {
                    let m = value.parse::<u32>().ok().filter(|m| *m > 0);
                    mtu =
                        Some(m.ok_or_else(|| invalid("FLANNEL_MTU", value, "a positive number"))?);
                }
                "FLANNEL_IPMASQ" => {
                    ipmasq = Some(match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid("FLANNEL_IPMASQ", value, "true or false")),
                    });
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        if env.networks.is_empty() && env.ipv6_networks.is_empty() {
            missing.push("FLANNEL_NETWORK (or FLANNEL_IPV6_NETWORK)");
        }
        if env.subnet.is_none() && env.ipv6_subnet.is_none() {
            missing.push("FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)");
        }
        match (mtu, ipmasq) {
            (Some(m), Some(q)) => {
                env.mtu = m;
                env.ipmasq = q;
            }
            _ => {
                if mtu.is_none() {
                    missing.push("FLANNEL_MTU");
                }
                if ipmasq.is_none() {
                    missing.push("FLANNEL_IPMASQ");
                }
            }
        }
        if missing.is_empty() {
            Ok(env)
        } else {
            Err(ParseError::Missing(missing))
        }
    }

    pub fn read(path: &Path) -> Result<SubnetEnv, ReadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
            path: path.into(),
            source,
        })?;
        SubnetEnv::parse(&text).map_err(|source| ReadError::Parse {
            path: path.into(),
            source,
        })
    }

    /// flanneld's exact format and variable order.
    pub fn render(&self) -> String {
        fn list<T: fmt::Display>(v: &[T]) -> String {
            v.iter().map(T::to_string).collect::<Vec<_>>().join(",")
        }
        let mut out = String::new();
        if !self.networks.is_empty() {
            out.push_str(&format!("FLANNEL_NETWORK={}\n", list(&self.networks)));
        }
        if let Some(s) = self.subnet {
            out.push_str(&format!("FLANNEL_SUBNET={}\n", gateway_cidr(&s)));
        }
        if !self.ipv6_networks.is_empty() {
            out.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\n",
                list(&self.ipv6_networks)
            ));
        }
        if let Some(s) = self.ipv6_subnet {
            out.push_str(&format!("FLANNEL_IPV6_SUBNET={}\n", gateway_cidr_v6(&s)));
        }
        out.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ipmasq
        ));
        out
    }

    /// Writes the file as flanneld does: atomically, mode 0644, its
    /// directory created (0755) if needed.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

/// `10.5.52.0/24` -> `10.5.52.1/24`, what `FLANNEL_SUBNET` holds.
pub fn gateway_cidr(s: &Ipv4Network) -> String {
    format!(
        "{}/{}",
        Ipv4Addr::from(u32::from(s.network()).wrapping_add(1)),
        s.prefix()
    )
}

/// `fd00:5::/64` -> `fd00:5::1/64`, what `FLANNEL_IPV6_SUBNET` holds.
pub fn gateway_cidr_v6(s: &Ipv6Network) -> String {
    format!(
        "{}/{}",
        Ipv6Addr::from(u128::from(s.network()).wrapping_add(1)),
        s.prefix()
    )
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// `.<name>.<pid>.<n>.tmp`: unique per writer, and, with its leading dot,
/// never a CNI container ID (`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`) nor a plugin
/// type a runtime would look up.
fn temp_name(name: &str) -> String {
    format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// True for the names [`write_atomic`] uses for its temporary files, which
/// directory scans (GC) must leave alone: they may be in flight.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Replaces `path` with `data` so that readers see the old file or the new
/// one, never a mix, and the new one survives a crash once this returns:
/// a temporary file in the same directory, written, fsynced, renamed over
/// `path`, then the directory fsynced. `mode` is set exactly (not narrowed
/// by the umask). The directory must exist.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, data, mode, true)
}

/// [`write_atomic`] without the fsyncs: readers still see the old file or
/// the new one, but after a crash either (or a partly written one) may be
/// there. For state that is only a cache of something a crash loses
/// anyway (a runtime dir's record of kernel state): fsyncs on a disk-backed
/// /run cost milliseconds per write.
pub fn write_replacing(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    replace(path, data, mode, false)
}

fn replace(path: &Path, data: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })?
        .to_string_lossy();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(temp_name(&name));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const FLANNEL_DUAL: &str = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\n\
        FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn v4(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Network {
        s.parse().unwrap()
    }

    #[test]
    fn reads_flannels_dual_stack_example_and_writes_it_back_byte_for_byte() {
        let env = SubnetEnv::parse(FLANNEL_DUAL).unwrap();
        assert_eq!(
            env,
            SubnetEnv {
                networks: vec![v4("10.5.0.0/16")],
                subnet: Some(v4("10.5.52.0/24")),
                ipv6_networks: vec![v6("2001:cafe:42::/56")],
                ipv6_subnet: Some(v6("2001:cafe:42::/64")),
                mtu: 1450,
                ipmasq: true,
            }
        );
        assert_eq!(env.render(), FLANNEL_DUAL);
    }

    #[test]
    fn reads_v4_only_v6_only_and_lists() {
        let v4only = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n";
        let env = SubnetEnv::parse(v4only).unwrap();
        assert_eq!(
            (env.subnet, env.ipv6_subnet, env.ipmasq),
            (Some(v4("10.244.3.0/24")), None, false)
        );
        assert_eq!(env.render(), v4only);
        let env = SubnetEnv::parse("FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n").unwrap();
        assert!(env.networks.is_empty() && env.subnet.is_none());
        assert_eq!(env.ipv6_subnet, Some(v6("fd00:5:0:7::/64")));
        // flannel's plugin splits FLANNEL_NETWORK on commas; host bits are masked.
        let env = SubnetEnv::parse("FLANNEL_NETWORK=10.244.0.0/16, 10.245.1.2/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        assert_eq!(env.networks, vec![v4("10.244.0.0/16"), v4("10.245.0.0/16")]);
        assert!(env
            .render()
            .starts_with("FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\n"));
    }

    #[test]
    fn tolerates_dotenv_noise() {
        let env = SubnetEnv::parse(
            "# written by hand\n\nexport FLANNEL_NETWORK=\"10.5.0.0/16\"\n  FLANNEL_SUBNET = '10.5.52.1/24'\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=true\nOTHER=x\n",
        )
        .unwrap();
        assert_eq!(env.subnet, Some(v4("10.5.52.0/24")));
        assert_eq!(env.mtu, 1450);
    }

    #[test]
    fn garbage_names_the_variable_and_value() {
        let with = |line: &str| {
            let base = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.52.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
            SubnetEnv::parse(&format!("{base}{line}\n"))
                .unwrap_err()
                .to_string()
        };
        for (line, want) in [
            (
                "FLANNEL_NETWORK=10.5.0.0/99",
                "FLANNEL_NETWORK=\"10.5.0.0/99\" is not an IPv4 CIDR list",
            ),
            (
                "FLANNEL_NETWORK=10.5.0.0/16,",
                "FLANNEL_NETWORK=\"10.5.0.0/16,\"",
            ),
            (
                "FLANNEL_NETWORK=fd00::/56",
                "FLANNEL_NETWORK=\"fd00::/56\" is not an IPv4",
            ),
            (
                "FLANNEL_SUBNET=10.5.52.1",
                "FLANNEL_SUBNET=\"10.5.52.1\" is not an IPv4 CIDR",
            ),
            (
                "FLANNEL_IPV6_SUBNET=10.5.52.1/24",
                "FLANNEL_IPV6_SUBNET=\"10.5.52.1/24\" is not an IPv6 CIDR",
            ),
            ("FLANNEL_IPV6_NETWORK=nope", "FLANNEL_IPV6_NETWORK=\"nope\""),
            (
                "FLANNEL_MTU=14x0",
                "FLANNEL_MTU=\"14x0\" is not a positive number",
            ),
            ("FLANNEL_MTU=0", "FLANNEL_MTU=\"0\""),
            (
                "FLANNEL_IPMASQ=yes",
                "FLANNEL_IPMASQ=\"yes\" is not true or false",
            ),
            ("garbage", "line 5 \"garbage\" is not VARIABLE=value"),
        ] {
            assert!(with(line).starts_with(want), "{line}: {}", with(line));
        }
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_MTU=1450\n").unwrap_err();
        assert_eq!(
            e,
            ParseError::Missing(vec![
                "FLANNEL_SUBNET (or FLANNEL_IPV6_SUBNET)",
                "FLANNEL_IPMASQ"
            ])
        );
        assert_eq!(
            SubnetEnv::parse("")
                .unwrap_err()
                .to_string()
                .matches("missing")
                .count(),
            1
        );
    }

    #[test]
    fn write_is_atomic_exact_mode_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("flannel-env-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run/flannel/subnet.env");
        let env = SubnetEnv::parse(FLANNEL_DUAL).unwrap();
        env.write(&path).unwrap();
        assert_eq!(SubnetEnv::read(&path).unwrap(), env);
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let stored = dir.join("run/flannel/c1");
        write_atomic(&stored, b"{}", 0o600).unwrap();
        write_atomic(&stored, b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(std::fs::read(&stored).unwrap(), b"{\"a\":1}");
        write_replacing(&stored, b"{\"a\":2}", 0o600).unwrap();
        assert_eq!(std::fs::read(&stored).unwrap(), b"{\"a\":2}");
        write_replacing(&stored, b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(
            std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let mut names: Vec<String> = std::fs::read_dir(dir.join("run/flannel"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["c1", "subnet.env"]);
        // A missing directory is an error, and nothing is left behind.
        assert!(write_atomic(&dir.join("nope/x"), b"", 0o600).is_err());
        assert!(matches!(
            SubnetEnv::read(&dir.join("nope/x")),
            Err(ReadError::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_cannot_be_container_ids() {
        for name in ["a.b", "a.tmp", "c1", "subnet.env"] {
            let t = temp_name(name);
            assert!(
                is_temp_name(&t)
                    && t.starts_with('.')
                    && t.contains(&std::process::id().to_string()),
                "{t}"
            );
            assert_ne!(
                t,
                temp_name(name),
                "two writes in one process share a temp name"
            );
        }
        assert!(!is_temp_name("a.tmp") && !is_temp_name("c1"));
    }
}
