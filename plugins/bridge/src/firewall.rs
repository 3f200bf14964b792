//! Per-container firewall rules: source NAT for ipMasq and the MAC spoof
//! check. Rules are tagged with the network and container ID, so DEL finds
//! and removes them without knowing the addresses (the reference leaks its
//! masquerade rules when the netns is already gone).

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command as Process, Stdio};

use ipnetwork::IpNetwork;
use serde_json::Value;
use weft_cni::{CniResult, Error, ErrorCode, Request};

use crate::config::{BridgeConfig, MasqBackend};

const NFT_MASQ_TABLE: &str = "weft_masquerade";
const NFT_SPOOF_TABLE: &str = "weft_macspoof";

fn fail(msg: String) -> Error {
    Error::new(ErrorCode::Firewall, msg)
}

/// The tag stored in each rule's comment.
fn tag(req: &Request) -> String {
    tag_for(&req.name, &req.container_id)
}

fn tag_for(network: &str, container_id: &str) -> String {
    format!("weft net={network} id={container_id}")
}

/// The container ID in a rule comment of `network`, if it is one of ours.
fn tagged_container<'a>(comment: &'a str, network: &str) -> Option<&'a str> {
    comment.strip_prefix("weft net=")?.strip_prefix(network)?.strip_prefix(" id=")
}

/// GC: remove the rules of every container of this network that is not in
/// `valid_ids`, including those whose veth (and netns) vanished long ago.
pub fn gc(req: &Request, config: &BridgeConfig, valid_ids: &[&str]) -> Result<(), Error> {
    let stale = |comment: &str| tagged_container(comment, &req.name).is_some_and(|id| !valid_ids.contains(&id));
    let mut errors = Vec::new();
    if config.ip_masq {
        let r = match backend(config) {
            MasqBackend::Nftables => nft_delete_where("inet", NFT_MASQ_TABLE, "postrouting", stale),
            MasqBackend::Iptables => iptables_masq_gc(req, &stale),
        };
        errors.extend(r.err());
    }
    if config.mac_spoof_check {
        errors.extend(nft_delete_where("bridge", NFT_SPOOF_TABLE, "prerouting", stale).err());
    }
    Error::from_list(errors)
}

fn backend(config: &BridgeConfig) -> MasqBackend {
    config.ip_masq_backend.unwrap_or_else(|| {
        let nft_works = Process::new("nft")
            .args(["list", "tables"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if nft_works {
            MasqBackend::Nftables
        } else {
            MasqBackend::Iptables
        }
    })
}

/// Run `program args`, feeding `input`; the error names the command.
fn run(program: &str, args: &[&str], input: &str) -> Result<String, Error> {
    let mut child = Process::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("{program} failed: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup(req: &Request, config: &BridgeConfig, result: &CniResult) -> Result<(), Error> {
    match backend(config) {
        MasqBackend::Nftables => nft_masq_setup(req, result),
        MasqBackend::Iptables => iptables_masq_setup(req, result),
    }
}

pub fn teardown(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let mut errors = Vec::new();
    if config.ip_masq {
        let r = match backend(config) {
            MasqBackend::Nftables => nft_delete_tagged("inet", NFT_MASQ_TABLE, "postrouting", &tag(req)),
            MasqBackend::Iptables => iptables_masq_teardown(req),
        };
        errors.extend(r.err());
    }
    if config.mac_spoof_check {
        errors.extend(nft_delete_tagged("bridge", NFT_SPOOF_TABLE, "prerouting", &tag(req)).err());
    }
    Error::from_list(errors)
}

fn multicast(ip: &IpNetwork) -> &'static str {
    if ip.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    }
}

fn nft_masq_setup(req: &Request, result: &CniResult) -> Result<(), Error> {
    let mut script = format!(
        "add table inet {NFT_MASQ_TABLE}\n\
         add chain inet {NFT_MASQ_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    );
    for ip in &result.ips {
        let family = if ip.address.is_ipv4() { "ip" } else { "ip6" };
        let subnet = IpNetwork::new(ip.address.network(), ip.address.prefix()).unwrap_or(ip.address);
        script.push_str(&format!(
            "add rule inet {NFT_MASQ_TABLE} postrouting {family} saddr {} {family} daddr != {subnet} {family} daddr != {} masquerade comment \"{}\"\n",
            ip.address.ip(),
            multicast(&ip.address),
            tag(req)
        ));
    }
    run("nft", &["-f", "-"], &script).map(|_| ())
}

/// Delete every rule of `table`/`chain` whose comment is `tag`; a missing
/// table or chain means there is nothing to delete.
fn nft_delete_tagged(family: &str, table: &str, chain: &str, tag: &str) -> Result<(), Error> {
    nft_delete_where(family, table, chain, |comment| comment == tag)
}

fn nft_delete_where(family: &str, table: &str, chain: &str, matches: impl Fn(&str) -> bool) -> Result<(), Error> {
    let tables = run("nft", &["-j", "list", "tables", family], "")?;
    let has_table = serde_json::from_str::<Value>(&tables)
        .ok()
        .and_then(|v| v.get("nftables").and_then(Value::as_array).cloned())
        .is_some_and(|items| items.iter().any(|i| i.pointer("/table/name").and_then(Value::as_str) == Some(table)));
    if !has_table {
        return Ok(());
    }
    let listing = run("nft", &["-j", "list", "table", family, table], "")?;
    let parsed: Value = serde_json::from_str(&listing).map_err(|e| fail(format!("cannot parse nft output: {e}")))?;
    let handles: Vec<u64> = parsed
        .get("nftables")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get("rule"))
                .filter(|r| r.get("chain").and_then(Value::as_str) == Some(chain))
                .filter(|r| r.get("comment").and_then(Value::as_str).is_some_and(&matches))
                .filter_map(|r| r.get("handle").and_then(Value::as_u64))
                .collect()
        })
        .unwrap_or_default();
    if handles.is_empty() {
        return Ok(());
    }
    let script: String = handles
        .iter()
        .map(|h| format!("delete rule {family} {table} {chain} handle {h}\n"))
        .collect();
    run("nft", &["-f", "-"], &script).map(|_| ())
}

/// A per-container chain name; FNV-1a keeps it short and stable without a
/// hashing crate.
fn iptables_chain(req: &Request) -> String {
    iptables_chain_for(&req.name, &req.container_id)
}

fn iptables_chain_for(network: &str, container_id: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in network.bytes().chain([0u8]).chain(container_id.bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("WEFT-MASQ-{hash:016x}")
}

fn iptables_for(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "iptables-restore"
    } else {
        "ip6tables-restore"
    }
}

fn iptables_masq_setup(req: &Request, result: &CniResult) -> Result<(), Error> {
    let chain = iptables_chain(req);
    for ip in &result.ips {
        let subnet = IpNetwork::new(ip.address.network(), ip.address.prefix()).unwrap_or(ip.address);
        let host_prefix = if ip.address.is_ipv4() { 32 } else { 128 };
        let rules = format!(
            "*nat\n:{chain} - [0:0]\n-A {chain} -d {subnet} -j ACCEPT\n-A {chain} ! -d {} -j MASQUERADE\n\
             -A POSTROUTING -s {}/{host_prefix} -m comment --comment \"{}\" -j {chain}\nCOMMIT\n",
            multicast(&ip.address),
            ip.address.ip(),
            tag(req)
        );
        run(iptables_for(&ip.address.ip()), &["-w", "--noflush"], &rules)?;
    }
    Ok(())
}

fn iptables_masq_gc(req: &Request, stale: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let Ok(current) = run("iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"], "") else {
        return Ok(());
    };
    let mut errors = Vec::new();
    let prefix = format!("weft net={} id=", req.name);
    for line in current.lines() {
        let Some(start) = line.find(&prefix) else { continue };
        let id: String = line[start + prefix.len()..].chars().take_while(|c| *c != '"' && *c != ' ').collect();
        if stale(&tag_for(&req.name, &id)) {
            errors.extend(iptables_masq_teardown_chain(&iptables_chain_for(&req.name, &id)).err());
        }
    }
    Error::from_list(errors)
}

fn iptables_masq_teardown(req: &Request) -> Result<(), Error> {
    iptables_masq_teardown_chain(&iptables_chain(req))
}

fn iptables_masq_teardown_chain(chain: &str) -> Result<(), Error> {
    let mut errors = Vec::new();
    for (list, restore) in [("iptables", "iptables-restore"), ("ip6tables", "ip6tables-restore")] {
        let Ok(current) = run(list, &["-w", "-t", "nat", "-S"], "") else { continue };
        let jump = format!("-j {chain}");
        let deletes: String = current
            .lines()
            .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with(&jump))
            .map(|l| format!("-D{}\n", &l[2..]))
            .collect();
        let chain_exists = current.lines().any(|l| l == format!("-N {chain}"));
        if deletes.is_empty() && !chain_exists {
            continue;
        }
        let mut script = format!("*nat\n{deletes}");
        if chain_exists {
            script.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
        errors.extend(run(restore, &["-w", "--noflush"], &script).err());
    }
    Error::from_list(errors)
}

/// Drop frames from the pod whose source MAC is not the one it was given.
pub fn setup_spoof_check(req: &Request, _config: &BridgeConfig, host_veth: &str, result: &CniResult) -> Result<(), Error> {
    let Some(mac) = result.interfaces.get(2).and_then(|i| i.mac.clone()) else {
        return Err(fail("macspoofchk: the container interface has no MAC".into()));
    };
    let script = format!(
        "add table bridge {NFT_SPOOF_TABLE}\n\
         add chain bridge {NFT_SPOOF_TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add rule bridge {NFT_SPOOF_TABLE} prerouting iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{}\"\n",
        tag(req)
    );
    run("nft", &["-f", "-"], &script).map(|_| ())
}
