//! Reading host-local's store on disk: `<dataDir>/<network>/` holds one
//! file per reserved IP (named by the address, containing
//! `<container id>\r\n<ifname>`), a `lock` file and `last_reserved_ip.<n>`
//! per range set.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The store directory of network `net`: `<data>/<net>`.
pub fn store_dir(data: &Path, net: &str) -> PathBuf {
    data.join(net)
}

/// Every file name in the store of `net` (empty when it does not exist).
pub fn store_files(data: &Path, net: &str) -> BTreeSet<String> {
    std::fs::read_dir(store_dir(data, net))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a store file name is a reservation: anything but `lock` and
/// `last_reserved_ip*`.
pub fn is_reservation_name(name: &str) -> bool {
    name != "lock" && !name.starts_with("last_reserved_ip")
}

/// The addresses reserved for `net` (the store's file names but `lock` and
/// `last_reserved_ip*`), sorted as strings.
pub fn reserved_ips(data: &Path, net: &str) -> Vec<String> {
    store_files(data, net)
        .into_iter()
        .filter(|n| is_reservation_name(n))
        .collect()
}

/// The reserved addresses of `net` as IPs (the store's file names that parse
/// as addresses), sorted numerically.
pub fn reserved_addrs(data: &Path, net: &str) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = store_files(data, net)
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    ips.sort();
    ips
}

/// The contents of `ip`'s reservation file in `net`, `None` when absent.
pub fn reservation(data: &Path, net: &str, ip: &str) -> Option<String> {
    std::fs::read_to_string(store_dir(data, net).join(ip)).ok()
}

/// The contents of `last_reserved_ip.0` (the first range set's round-robin
/// position) in `net`, `None` when absent.
pub fn last_reserved(data: &Path, net: &str) -> Option<String> {
    std::fs::read_to_string(store_dir(data, net).join("last_reserved_ip.0")).ok()
}
