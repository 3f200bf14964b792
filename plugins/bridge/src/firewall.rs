//! Per-attachment firewall rules: source NAT for ipMasq and the MAC spoof
//! check. Rules carry a key derived from (network, containerID, ifname), so
//! DEL finds and removes them without knowing the addresses (the reference
//! leaks its masquerade rules when the netns is already gone).

use ipnetwork::IpNetwork;
use weft_cni::{CniResult, Error, ErrorCode, Request};
use weft_firewall::{
    attachment_key as key_for, comment_key, fail, network_key, nft_delete_where, nft_handles,
    nft_works, run, KEY_LEN,
};

use crate::config::{BridgeConfig, MasqBackend};

const NFT_MASQ_TABLE: &str = "weft_masquerade";
const NFT_SPOOF_TABLE: &str = "weft_macspoof";
/// (IPv4?, list command, restore command) of each iptables family.
const IPTABLES_FAMILIES: [(bool, &str, &str); 2] = [
    (true, "iptables", "iptables-restore"),
    (false, "ip6tables", "ip6tables-restore"),
];

fn key(req: &Request) -> String {
    key_for(&req.name, &req.container_id, &req.ifname)
}

/// A readable owner for people reading the ruleset, then the key.
fn comment(req: &Request) -> String {
    weft_firewall::comment(
        &format!("weft net={} id={}", req.name, req.container_id),
        &key(req),
    )
}

/// A per-attachment chain, named by the attachment half of its key.
fn iptables_chain(key: &str) -> String {
    format!("WEFT-MASQ-{}", key.get(KEY_LEN / 2..).unwrap_or(key))
}

/// GC: remove the rules of every attachment of this network that is not in
/// `valid` (containerID, ifname), including those whose veth (and netns)
/// vanished long ago.
pub fn gc(req: &Request, config: &BridgeConfig, valid: &[(String, String)]) -> Result<(), Error> {
    let ours = network_key(&req.name);
    let valid: Vec<String> = valid
        .iter()
        .map(|(id, ifname)| key_for(&req.name, id, ifname))
        .collect();
    let stale = |key: &str| key.starts_with(&ours) && !valid.iter().any(|v| v == key);
    let stale_comment = |comment: &str| comment_key(comment).is_some_and(stale);
    let mut errors = Vec::new();
    if config.ip_masq {
        let r = match backend(config) {
            MasqBackend::Nftables => {
                nft_delete_where("inet", NFT_MASQ_TABLE, "postrouting", stale_comment)
            }
            MasqBackend::Iptables => iptables_masq_gc(&stale),
        };
        errors.extend(r.err());
    }
    if config.mac_spoof_check {
        errors
            .extend(nft_delete_where("bridge", NFT_SPOOF_TABLE, "prerouting", stale_comment).err());
    }
    Error::from_list(errors)
}

/// CHECK: this attachment's rules must still be there, one masquerade rule
/// per address in `addrs`.
pub fn check(req: &Request, config: &BridgeConfig, addrs: &[IpNetwork]) -> Result<(), Error> {
    let key = key(req);
    let mine = |comment: &str| comment_key(comment) == Some(key.as_str());
    let missing = |what: &str| {
        Err(Error::new(
            ErrorCode::CheckFailed,
            format!("the {what} rules of {} are missing", req.ifname),
        ))
    };
    if config.ip_masq {
        let complete = match backend(config) {
            MasqBackend::Nftables => {
                nft_handles("inet", NFT_MASQ_TABLE, "postrouting", mine)?.len() >= addrs.len()
            }
            MasqBackend::Iptables => iptables_masq_complete(&key, addrs)?,
        };
        if !complete {
            return missing("masquerade");
        }
    }
    if config.mac_spoof_check
        && nft_handles("bridge", NFT_SPOOF_TABLE, "prerouting", mine)?.is_empty()
    {
        return missing("macspoofchk");
    }
    Ok(())
}

fn backend(config: &BridgeConfig) -> MasqBackend {
    config.ip_masq_backend.unwrap_or_else(|| {
        if nft_works() {
            MasqBackend::Nftables
        } else {
            MasqBackend::Iptables
        }
    })
}

pub fn setup(req: &Request, config: &BridgeConfig, result: &CniResult) -> Result<(), Error> {
    match backend(config) {
        MasqBackend::Nftables => nft_masq_setup(req, result),
        MasqBackend::Iptables => iptables_masq_setup(req, result),
    }
}

pub fn teardown(req: &Request, config: &BridgeConfig) -> Result<(), Error> {
    let key = key(req);
    let mine = |comment: &str| comment_key(comment) == Some(key.as_str());
    let mut errors = Vec::new();
    if config.ip_masq {
        let r = match backend(config) {
            MasqBackend::Nftables => nft_delete_where("inet", NFT_MASQ_TABLE, "postrouting", mine),
            MasqBackend::Iptables => iptables_masq_teardown_chain(&iptables_chain(&key)),
        };
        errors.extend(r.err());
    }
    if config.mac_spoof_check {
        errors.extend(nft_delete_where("bridge", NFT_SPOOF_TABLE, "prerouting", mine).err());
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

/// The subnet `ip` is on.
fn subnet(ip: &IpNetwork) -> IpNetwork {
    IpNetwork::new(ip.network(), ip.prefix()).unwrap_or(*ip)
}

fn nft_masq_setup(req: &Request, result: &CniResult) -> Result<(), Error> {
    let mut script = format!(
        "add table inet {NFT_MASQ_TABLE}\n\
         add chain inet {NFT_MASQ_TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n"
    );
    for ip in &result.ips {
        let family = if ip.address.is_ipv4() { "ip" } else { "ip6" };
        script.push_str(&format!(
            "add rule inet {NFT_MASQ_TABLE} postrouting {family} saddr {} {family} daddr != {} {family} daddr != {} masquerade comment \"{}\"\n",
            ip.address.ip(),
            subnet(&ip.address),
            multicast(&ip.address),
            comment(req)
        ));
    }
    run("nft", &["-f", "-"], &script).map(|_| ())
}

/// `iptables -t nat -S` of one family; None when that family's tool fails
/// (e.g. no IPv6).
fn iptables_nat(list: &str) -> Option<String> {
    run(list, &["-w", "-t", "nat", "-S"], "").ok()
}

/// The POSTROUTING rules of `nat` that jump to `chain`.
fn postrouting_jumps<'a>(nat: &'a str, chain: &str) -> impl Iterator<Item = &'a str> {
    let jump = format!("-j {chain}");
    nat.lines()
        .filter(move |l| l.starts_with("-A POSTROUTING ") && l.ends_with(&jump))
}

/// One restore per family: each script redeclares the chain, which
/// flushes it, so all of a family's rules must go in together.
fn iptables_masq_setup(req: &Request, result: &CniResult) -> Result<(), Error> {
    let comment = comment(req);
    let chain = iptables_chain(&key(req));
    for (v4, _, restore) in IPTABLES_FAMILIES {
        let ips: Vec<&IpNetwork> = result
            .ips
            .iter()
            .map(|ip| &ip.address)
            .filter(|a| a.is_ipv4() == v4)
            .collect();
        let Some(first) = ips.first() else { continue };
        let host_prefix = if v4 { 32 } else { 128 };
        let mut script = format!("*nat\n:{chain} - [0:0]\n");
        for ip in &ips {
            script.push_str(&format!("-A {chain} -d {} -j ACCEPT\n", subnet(ip)));
        }
        script.push_str(&format!(
            "-A {chain} ! -d {} -j MASQUERADE\n",
            multicast(first)
        ));
        for ip in &ips {
            script.push_str(&format!("-A POSTROUTING -s {}/{host_prefix} -m comment --comment \"{comment}\" -j {chain}\n", ip.ip()));
        }
        script.push_str("COMMIT\n");
        run(restore, &["-w", "--noflush"], &script)?;
    }
    Ok(())
}

/// Whether the chain of `key` exists in each family of `addrs`, with one
/// POSTROUTING jump per address.
fn iptables_masq_complete(key: &str, addrs: &[IpNetwork]) -> Result<bool, Error> {
    let chain = iptables_chain(key);
    for (v4, list, _) in IPTABLES_FAMILIES {
        let wanted = addrs.iter().filter(|a| a.is_ipv4() == v4).count();
        if wanted == 0 {
            continue;
        }
        let nat =
            iptables_nat(list).ok_or_else(|| fail(format!("cannot list the {list} nat table")))?;
        let has_chain = nat.lines().any(|l| l == format!("-N {chain}"));
        if !has_chain || postrouting_jumps(&nat, &chain).count() < wanted {
            return Ok(false);
        }
    }
    Ok(true)
}

fn iptables_masq_gc(stale: &dyn Fn(&str) -> bool) -> Result<(), Error> {
    let mut chains: Vec<String> = Vec::new();
    for (_, list, _) in IPTABLES_FAMILIES {
        let Some(nat) = iptables_nat(list) else {
            continue;
        };
        for line in nat.lines().filter(|l| l.starts_with("-A POSTROUTING ")) {
            let Some(key) = comment_key(line).filter(|k| stale(k)) else {
                continue;
            };
            let chain = iptables_chain(key);
            if !chains.contains(&chain) {
                chains.push(chain);
            }
        }
    }
    let errors = chains
        .iter()
        .filter_map(|c| iptables_masq_teardown_chain(c).err())
        .collect();
    Error::from_list(errors)
}

fn iptables_masq_teardown_chain(chain: &str) -> Result<(), Error> {
    let mut errors = Vec::new();
    for (_, list, restore) in IPTABLES_FAMILIES {
        let Some(nat) = iptables_nat(list) else {
            continue;
        };
        let deletes: String = postrouting_jumps(&nat, chain)
            .map(|l| format!("-D{}\n", &l[2..]))
            .collect();
        let chain_exists = nat.lines().any(|l| l == format!("-N {chain}"));
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
pub fn setup_spoof_check(
    req: &Request,
    _config: &BridgeConfig,
    host_veth: &str,
    result: &CniResult,
) -> Result<(), Error> {
    let Some(mac) = result.interfaces.get(2).and_then(|i| i.mac.clone()) else {
        return Err(fail(
            "macspoofchk: the container interface has no MAC".into(),
        ));
    };
    let script = format!(
        "add table bridge {NFT_SPOOF_TABLE}\n\
         add chain bridge {NFT_SPOOF_TABLE} prerouting {{ type filter hook prerouting priority -300; policy accept; }}\n\
         add rule bridge {NFT_SPOOF_TABLE} prerouting iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{}\"\n",
        comment(req)
    );
    run("nft", &["-f", "-"], &script).map(|_| ())
}
