//! `weftctl doctor`: every check prints ok, or a problem with a one-line
//! fix (or "skipped" when it cannot be judged here); exit 1 when any
//! check finds a problem.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use flannel_env::SubnetEnv;
use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};
use weft_netlink::format_mac;
use weft_node_state::{now_unix, NodeState};

use crate::firewall::{Packet, Ruleset, Verdict};
use crate::kernel::{sysctl_num, Kernel};
use crate::peers::{expected, vtep_mac_of};
use crate::source::Seen;
use crate::Paths;
use weft_node_state::KernelEntry;

/// Bytes VXLAN over IPv4 adds (outer IP 20 + UDP 8 + VXLAN 8 + Ethernet 14).
const VXLAN_OVERHEAD: u32 = 50;

pub enum Outcome {
    Ok(String),
    Problem { what: String, fix: String },
    Skipped(String),
}

fn ok(s: impl Into<String>) -> Outcome {
    Outcome::Ok(s.into())
}

fn problem(what: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome::Problem {
        what: what.into(),
        fix: fix.into(),
    }
}

fn skipped(s: impl Into<String>) -> Outcome {
    Outcome::Skipped(s.into())
}

/// One check of the node.
type Check = fn(&Node) -> Outcome;

/// What the checks look at, read once.
struct Node<'a> {
    paths: &'a Paths,
    seen: &'a Seen,
    state: Option<&'a NodeState>,
    kernel: Result<Kernel, String>,
    env: Result<SubnetEnv, String>,
    firewall: Result<Ruleset, String>,
}

impl Node<'_> {
    fn network(&self) -> Option<Ipv4Network> {
        let from_state = self
            .state
            .and_then(|s| s.network.as_ref())
            .and_then(|n| n.network.parse().ok());
        from_state.or_else(|| self.env.as_ref().ok()?.networks.first().copied())
    }

    fn own_subnet(&self) -> Option<Ipv4Network> {
        let from_state = self
            .state
            .and_then(|s| s.lease.as_ref())
            .and_then(|l| l.subnet.parse().ok());
        from_state.or_else(|| self.env.as_ref().ok()?.subnet)
    }

    /// The IPv4 overlay device weftd manages (vxlan), if any.
    fn overlay_device(&self) -> Option<String> {
        self.state?
            .devices
            .iter()
            .find(|d| !d.starts_with("flannel-v6"))
            .cloned()
    }
}

pub fn run(paths: &Paths, seen: &Seen) -> (String, Value, u8) {
    let devices = seen
        .state
        .as_ref()
        .map(|s| s.devices.clone())
        .unwrap_or_default();
    let node = Node {
        paths,
        seen,
        state: seen.state.as_ref(),
        kernel: Kernel::read(&devices).map_err(|e| e.to_string()),
        env: SubnetEnv::read(&paths.subnet_file).map_err(|e| e.to_string()),
        firewall: Ruleset::read(),
    };
    let checks: [(&str, Check); 11] = [
        ("weftd", check_weftd),
        ("kernel entries", check_entries),
        ("subnet.env", check_subnet_env),
        ("mtu", check_mtu),
        ("ip_forward", check_ip_forward),
        ("forward chain", check_forward_chain),
        ("masquerade", check_masquerade),
        ("rp_filter", check_rp_filter),
        ("checksum offload", check_checksum_offload),
        ("ipam leaks", check_ipam_leaks),
        ("duplicate leases", check_duplicates),
    ];
    let (mut text, mut rows, mut failed) = (String::new(), Vec::new(), 0);
    for (name, check) in checks {
        let (mark, line, row) = match check(&node) {
            Outcome::Ok(s) => (
                "ok     ",
                s.clone(),
                json!({"check": name, "status": "ok", "detail": s}),
            ),
            Outcome::Skipped(s) => (
                "skip   ",
                s.clone(),
                json!({"check": name, "status": "skipped", "detail": s}),
            ),
            Outcome::Problem { what, fix } => {
                failed += 1;
                (
                    "PROBLEM",
                    format!("{what}\n{:27}fix: {fix}", ""),
                    json!({"check": name, "status": "problem", "detail": what, "fix": fix}),
                )
            }
        };
        text.push_str(&format!("{mark} {name:<18} {line}\n"));
        rows.push(row);
    }
    text.push_str(&match failed {
        0 => "all checks passed\n".to_string(),
        n => format!("{n} problem(s) found\n"),
    });
    (
        text,
        json!({"ok": failed == 0, "checks": rows}),
        u8::from(failed > 0),
    )
}

fn check_weftd(n: &Node) -> Outcome {
    if let Some(why) = &n.seen.unreachable {
        return problem(
            why.clone(),
            "start weftd (in Kubernetes: check the weft DaemonSet pod on this node)",
        );
    }
    match n.state.and_then(|s| s.reason_at(now_unix())) {
        None => ok("running and ready"),
        Some(why) => problem(
            format!("not ready: {why}"),
            "see `weftctl status`; weftd retries on its own once the cause is fixed",
        ),
    }
}

/// Missing entries of accepted leases (what weftd's backend wants for
/// them), and entries in the pod networks on weftd's devices and the
/// underlay that no accepted lease explains (a rejected or gone lease's).
fn check_entries(n: &Node) -> Outcome {
    let Some(state) = n.state else {
        return skipped("no leases known (weftd's state is unavailable)");
    };
    let k = match &n.kernel {
        Ok(k) => k,
        Err(e) => return skipped(format!("cannot read the kernel: {e}")),
    };
    let present: BTreeSet<KernelEntry> = k.entries().into_iter().collect();
    let mut missing = Vec::new();
    for p in state.peers.iter().filter(|p| p.accepted) {
        for e in expected(p, &present).into_iter().filter(|e| !e.present) {
            missing.push(format!("{} ({})", e.what, p.key));
        }
    }
    let mut stale = unexplained_entries(n, state, &present);
    stale.sort();
    match (missing.is_empty(), stale.is_empty()) {
        (true, true) => ok(format!(
            "{} lease(s): every entry present, none stale",
            state.peers.iter().filter(|p| p.accepted).count()
        )),
        (false, _) => problem(
            format!("{} missing: {}", missing.len(), missing.join("; ")),
            "weftd repairs drift every --reconcile-interval; if this persists see `weftctl status` (sync error) and weftd's log",
        ),
        (true, false) => problem(
            format!("{} stale: {}", stale.len(), stale.join("; ")),
            format!("weftd removes its own stale entries on its next reconcile; otherwise delete them, e.g. `{}`", del_command(&stale[0])),
        ),
    }
}

/// The command that deletes one stale entry as [`unexplained_entries`] names it.
fn del_command(stale: &str) -> String {
    let e = stale.split(" (").next().unwrap_or(stale);
    let words: Vec<&str> = e.split_whitespace().collect();
    let after = |w: &str| {
        words
            .iter()
            .position(|x| *x == w)
            .and_then(|i| words.get(i + 1))
            .copied()
            .unwrap_or("?")
    };
    match words.first().copied() {
        Some("route") => format!(
            "ip route del {} dev {}",
            words.get(1).unwrap_or(&"?"),
            after("dev")
        ),
        Some("neighbour") => format!(
            "ip neigh del {} dev {}",
            words.get(1).unwrap_or(&"?"),
            after("dev")
        ),
        Some("fdb") => format!(
            "bridge fdb del {} dev {} dst {}",
            words.get(1).unwrap_or(&"?"),
            after("dev"),
            after("dst")
        ),
        _ => e.to_string(),
    }
}

/// Entries weftd would own that no accepted lease wants: routes into the
/// pod networks on weftd's devices or the underlay (our own subnet aside),
/// permanent neighbours inside them and `self` FDB entries on weftd's
/// devices.
fn unexplained_entries(
    n: &Node,
    state: &NodeState,
    present: &BTreeSet<KernelEntry>,
) -> Vec<String> {
    let nets: Vec<IpNetwork> = n
        .network()
        .map(IpNetwork::V4)
        .into_iter()
        .chain(
            state
                .network
                .as_ref()
                .and_then(|c| c.ipv6_network.as_deref()?.parse().ok()),
        )
        .collect();
    let inside = |a: &str| {
        let a: Option<IpNetwork> = a.parse().ok();
        a.is_some_and(|a| nets.iter().any(|n| n.contains(a.network())))
    };
    let own: Vec<String> = state
        .lease
        .iter()
        .flat_map(|l| std::iter::once(l.subnet.clone()).chain(l.subnet6.clone()))
        .collect();
    let weftd_dev = |d: &String| {
        state.devices.contains(d) || state.underlay.as_ref().is_some_and(|u| &u.iface == d)
    };
    let wanted: BTreeSet<&KernelEntry> = state
        .peers
        .iter()
        .filter(|p| p.accepted)
        .flat_map(|p| &p.entries)
        .collect();
    present
        .iter()
        .filter(|e| !wanted.contains(e))
        .filter(|e| match e {
            KernelEntry::Route { dst, dev, .. } => {
                weftd_dev(dev) && inside(dst) && !own.contains(dst)
            }
            KernelEntry::Neighbour { ip, .. } => inside(ip),
            KernelEntry::Fdb { .. } => true,
        })
        .map(ToString::to_string)
        .collect()
}

fn check_subnet_env(n: &Node) -> Outcome {
    let path = n.paths.subnet_file.display();
    let env =
        match &n.env {
            Ok(e) => e,
            Err(e) => return problem(
                e.clone(),
                "weftd writes it once it holds a lease: see `weftctl status` for why it has not",
            ),
        };
    let Some(state) = n.state else {
        return ok(format!("{path} parses (weftd's lease unknown)"));
    };
    let mut wrong = Vec::new();
    if let Some(l) = &state.lease {
        let subnet = env.subnet.map(|s| s.to_string());
        if subnet.as_deref() != Some(l.subnet.as_str()) {
            wrong.push(format!(
                "FLANNEL_SUBNET is {} but the lease is {}",
                env.subnet
                    .map(|s| flannel_env::gateway_cidr(&s))
                    .unwrap_or_else(|| "missing".into()),
                l.subnet
            ));
        }
    }
    if let Some(net) = n.state.and_then(|s| s.network.as_ref()) {
        if !env.networks.iter().any(|x| x.to_string() == net.network) {
            wrong.push(format!(
                "FLANNEL_NETWORK does not hold the network {}",
                net.network
            ));
        }
    }
    if let Some(mtu) = state.subnet_file.mtu.filter(|m| *m != env.mtu) {
        wrong.push(format!(
            "FLANNEL_MTU is {} but weftd computed {mtu}",
            env.mtu
        ));
    }
    if state.subnet_file.written && env.ipmasq != state.masq.enabled {
        wrong.push(format!(
            "FLANNEL_IPMASQ is {} but weftd runs with --ip-masq={}",
            env.ipmasq, state.masq.enabled
        ));
    }
    if wrong.is_empty() {
        ok(format!("{path} matches the lease"))
    } else {
        problem(wrong.join("; "), format!("restart weftd so it rewrites {path} (pods added since got the wrong settings: recreate them)"))
    }
}

fn check_mtu(n: &Node) -> Outcome {
    let k = match &n.kernel {
        Ok(k) => k,
        Err(e) => return skipped(format!("cannot read the kernel: {e}")),
    };
    let Some(underlay) = n
        .state
        .and_then(|s| s.underlay.as_ref())
        .and_then(|u| k.link(&u.iface))
    else {
        return skipped("underlay interface unknown or gone");
    };
    let (overlay, limit) = match n.overlay_device().and_then(|d| k.link(&d)) {
        Some(o) => (o, underlay.mtu.saturating_sub(VXLAN_OVERHEAD)),
        None => (underlay, underlay.mtu),
    };
    let mut wrong = Vec::new();
    if overlay.index != underlay.index && overlay.mtu > limit {
        wrong.push(format!(
            "{} has MTU {} but {} ({}) leaves room for {limit}",
            overlay.name, overlay.mtu, underlay.name, underlay.mtu
        ));
    }
    if let Ok(env) = &n.env {
        if env.mtu > overlay.mtu {
            wrong.push(format!(
                "FLANNEL_MTU {} exceeds {} MTU {}",
                env.mtu, overlay.name, overlay.mtu
            ));
        }
    }
    let bridge = k.link(&n.paths.bridge);
    let mut pods = 0;
    if let Some(b) = bridge {
        if b.mtu > overlay.mtu {
            wrong.push(format!(
                "bridge {} MTU {} exceeds {} MTU {}",
                b.name, b.mtu, overlay.name, overlay.mtu
            ));
        }
        for v in k.links.iter().filter(|l| l.master == Some(b.index)) {
            pods += 1;
            if v.mtu > overlay.mtu {
                wrong.push(format!(
                    "pod interface {} MTU {} exceeds {} MTU {}",
                    v.name, v.mtu, overlay.name, overlay.mtu
                ));
            }
        }
    }
    if wrong.is_empty() {
        ok(format!(
            "{pods} pod interface(s) and {} ≤ {} {} ≤ {} {}",
            bridge
                .map(|b| format!("{} {}", b.name, b.mtu))
                .unwrap_or_else(|| "no bridge".into()),
            overlay.name,
            overlay.mtu,
            underlay.name,
            underlay.mtu
        ))
    } else {
        problem(
            wrong.join("; "),
            format!("keep pods ≤ {} {} ≤ underlay − {VXLAN_OVERHEAD}: set Backend.MTU in the network config or fix the underlay, restart weftd, recreate pods", overlay.name, overlay.mtu),
        )
    }
}

fn check_ip_forward(_n: &Node) -> Outcome {
    match sysctl_num("net/ipv4/ip_forward") {
        Some(1) => ok("net.ipv4.ip_forward = 1"),
        Some(v) => problem(
            format!("net.ipv4.ip_forward = {v}: pod traffic is not routed"),
            "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d)",
        ),
        None => skipped("cannot read net.ipv4.ip_forward"),
    }
}

/// A pod address on this node and one on a peer (or elsewhere in the network).
fn pod_pair(n: &Node) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let net = n.network()?;
    let own = n.own_subnet()?;
    let ours = Ipv4Addr::from(u32::from(own.network()) + 2);
    let peer = n
        .state
        .and_then(|s| s.peers.iter().find(|p| p.accepted))
        .and_then(|p| p.subnet.parse::<Ipv4Network>().ok())
        .map(|s| Ipv4Addr::from(u32::from(s.network()) + 2))
        .unwrap_or_else(|| {
            let other = if own.network() == net.network() {
                own.broadcast()
            } else {
                net.network()
            };
            Ipv4Addr::from(u32::from(other) ^ 1)
        });
    Some((ours, peer))
}

fn check_forward_chain(n: &Node) -> Outcome {
    let rs = match &n.firewall {
        Ok(r) => r,
        Err(e) => return skipped(format!("firewall not readable: {e}")),
    };
    let Some((pod, remote)) = pod_pair(n) else {
        return skipped("this node's subnet is unknown");
    };
    let chains = rs.base_chains("forward", None);
    for (src, dst) in [(pod, remote), (remote, pod)] {
        for c in &chains {
            if let Verdict::Drop(why) = rs.walk(c, &Packet { src, dst }) {
                let net = n.network().map(|x| x.to_string()).unwrap_or_default();
                let fix = if c.table == "filter" && c.family == "ip" {
                    format!("run weftd with --ip-masq (it adds FORWARD accepts for {net}), or: iptables -I {} -s {net} -j ACCEPT && iptables -I {} -d {net} -j ACCEPT", c.name, c.name)
                } else {
                    format!("nft insert rule {} {} {} ip saddr {net} accept && nft insert rule {} {} {} ip daddr {net} accept", c.family, c.table, c.name, c.family, c.table, c.name)
                };
                return problem(
                    format!("pod traffic {src} -> {dst} is dropped by {why}"),
                    fix,
                );
            }
        }
    }
    ok(format!(
        "{} forward chain(s) let pod traffic through",
        chains.len()
    ))
}

fn check_masquerade(n: &Node) -> Outcome {
    let promised = match &n.env {
        Ok(e) => e.ipmasq,
        Err(_) => return skipped("subnet.env unreadable: nothing promised"),
    };
    if !promised {
        return ok("not promised (FLANNEL_IPMASQ=false: the bridge plugin masquerades)");
    }
    let rs = match &n.firewall {
        Ok(r) => r,
        Err(e) => {
            return problem(
                format!("FLANNEL_IPMASQ=true but the firewall is not readable: {e}"),
                "install nft, or check by hand: iptables -t nat -S FLANNEL-POSTRTG",
            )
        }
    };
    let Some((pod, _)) = pod_pair(n) else {
        return skipped("this node's subnet is unknown");
    };
    let out = Packet {
        src: pod,
        dst: Ipv4Addr::new(192, 0, 2, 1),
    };
    let chains = rs.base_chains("postrouting", Some("nat"));
    if chains
        .iter()
        .any(|c| rs.walk(c, &out) == Verdict::Masquerade)
    {
        ok(format!(
            "pod traffic {pod} -> outside the cluster is masqueraded"
        ))
    } else {
        problem(
            format!("FLANNEL_IPMASQ=true but pod traffic {pod} -> outside the cluster is not masqueraded (no flannel-ipv4 table or FLANNEL-POSTRTG chain rule hit)"),
            "weftd --ip-masq re-installs its rules every --iptables-resync seconds; if they stay missing see `weftctl status` (masquerade) and weftd's log",
        )
    }
}

/// Strict rp_filter on the device a peer's traffic arrives on (its
/// route's device: the overlay, or the underlay for host-gw and direct
/// routes) drops it unless the route back leaves the same way.
fn check_rp_filter(n: &Node) -> Outcome {
    let k = match &n.kernel {
        Ok(k) => k,
        Err(e) => return skipped(format!("cannot read the kernel: {e}")),
    };
    let all = sysctl_num("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let peers = n.state.map(|s| s.peers.as_slice()).unwrap_or_default();
    let mut devs = BTreeSet::new();
    for p in peers.iter().filter(|p| p.accepted) {
        let Ok(subnet) = p.subnet.parse::<Ipv4Network>() else {
            continue;
        };
        let Some(dev) = p.entries.iter().find_map(|e| match e {
            KernelEntry::Route { dst, dev, .. } if *dst == p.subnet => Some(dev),
            _ => None,
        }) else {
            continue;
        };
        let own = sysctl_num(&format!("net/ipv4/conf/{dev}/rp_filter")).unwrap_or(0);
        let mode = all.max(own);
        devs.insert(format!("{mode} on {dev}"));
        let src = Ipv4Addr::from(u32::from(subnet.network()) + 2);
        let dropped = match (mode, k.route_for(src)) {
            (0, _) => None,
            (_, None) => Some("there is no route back to it".to_string()),
            (1, Some(r)) if k.name_of(r.oif) != *dev => {
                Some(format!("the route back leaves via {}", k.name_of(r.oif)))
            }
            _ => None,
        };
        if let Some(why) = dropped {
            return problem(
                format!("rp_filter={mode} on {dev} (max of all={all} and {dev}={own}) drops packets from {subnet}: {why}"),
                format!("sysctl -w net.ipv4.conf.all.rp_filter=2 net/ipv4/conf/{dev}/rp_filter=2 (loose), and fix the route to {subnet}"),
            );
        }
    }
    if devs.is_empty() {
        return ok(format!("all={all}; no programmed peer to judge it by"));
    }
    ok(format!(
        "rp_filter={}: every peer's traffic arrives where its route points",
        devs.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// Kernels before 5.7 corrupt checksums of VXLAN packets with tx
/// checksum offload (flannel #1279, k3s #2013).
fn check_checksum_offload(n: &Node) -> Outcome {
    let Some(dev) = n.overlay_device() else {
        return ok("no VXLAN device");
    };
    let release = n
        .paths
        .kernel_release
        .clone()
        .or_else(|| weft_netlink::read_sysctl("kernel/osrelease").ok())
        .unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) >= (5, 7) {
        return ok(format!("kernel {release} has the VXLAN checksum fix (5.7)"));
    }
    let fix =
        format!("ethtool -K {dev} tx-checksum-ip-generic off (and a udev rule to keep it off)");
    match std::process::Command::new("ethtool").args(["-k", &dev]).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let on = text.lines().any(|l| l.trim().starts_with("tx-checksum-ip-generic: on"));
            if on {
                problem(format!("kernel {release} has the VXLAN checksum bug (fixed in 5.7) and {dev} has tx-checksum-ip-generic on: UDP/DNS to pods fails with bad checksums"), fix)
            } else {
                ok(format!("kernel {release} has the VXLAN checksum bug, but offload is off on {dev}"))
            }
        }
        _ => problem(format!("kernel {release} has the VXLAN checksum bug (fixed in 5.7) and ethtool cannot tell whether {dev} offloads checksums"), fix),
    }
}

/// Reservations in host-local's store whose attachment has no veth left:
/// weft's bridge labels each host veth `weft/<network>/<containerID>/<ifname>`.
fn check_ipam_leaks(n: &Node) -> Outcome {
    let dir = n.paths.ipam_dir.join(&n.paths.cni_network);
    let reservations = match read_reservations(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ok(format!("no host-local store at {}", dir.display()))
        }
        Err(e) => return skipped(format!("cannot read {}: {e}", dir.display())),
    };
    let k = match &n.kernel {
        Ok(k) => k,
        Err(e) => return skipped(format!("cannot read the kernel: {e}")),
    };
    let prefix = format!("weft/{}/", n.paths.cni_network);
    let live: BTreeSet<String> = k
        .links
        .iter()
        .filter_map(|l| {
            l.alias
                .as_deref()?
                .strip_prefix(&prefix)
                .map(str::to_string)
        })
        .collect();
    let bridge = k.link(&n.paths.bridge).map(|b| b.index);
    let unlabelled = k
        .links
        .iter()
        .filter(|l| bridge.is_some() && l.master == bridge && l.alias.is_none())
        .count();
    if unlabelled > 0 {
        return skipped(format!("{unlabelled} veth(s) on {} carry no weft label (another bridge plugin?): cannot tell live attachments", n.paths.bridge));
    }
    let leaked: Vec<String> = reservations
        .iter()
        .filter(|(_, att)| !live.contains(att.as_str()))
        .map(|(ip, att)| format!("{ip} ({att})"))
        .collect();
    if leaked.is_empty() {
        ok(format!(
            "{} reservation(s) in {}, each with its pod's veth",
            reservations.len(),
            dir.display()
        ))
    } else {
        problem(
            format!("{} reservation(s) whose container is gone: {}", leaked.len(), leaked.join(", ")),
            format!("the runtime's CNI GC releases them (containerd ≥ 2.1, CRI-O); by hand: rm {}/<ip> for each", dir.display()),
        )
    }
}

/// (ip, "containerID/ifname") of every reservation file.
fn read_reservations(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<IpAddr>().is_err() {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let mut lines = text.split("\r\n").map(str::trim);
        let cid = lines.next().unwrap_or("");
        let ifname = lines.next().filter(|s| !s.is_empty()).unwrap_or("eth0");
        out.push((name, format!("{cid}/{ifname}")));
    }
    out.sort();
    Ok(out)
}

fn check_duplicates(n: &Node) -> Outcome {
    let Some(state) = n.state else {
        return skipped("no leases known (weftd's state is unavailable)");
    };
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_mac: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let own = state.lease.iter().map(|l| {
        (
            l.key.rsplit('/').next().unwrap_or(&l.key).to_string(),
            Some(l.public_ip.clone()),
            &l.backend_type,
            &l.backend_data,
        )
    });
    let others = state.peers.iter().map(|p| {
        (
            p.key.clone(),
            p.public_ip.clone(),
            &p.backend_type,
            &p.backend_data,
        )
    });
    for (key, ip, kind, data) in own.chain(others) {
        if let Some(ip) = ip {
            by_ip.entry(ip).or_default().push(key.clone());
        }
        if let Some(mac) = vtep_mac_of(kind, data) {
            by_mac.entry(format_mac(&mac)).or_default().push(key);
        }
    }
    let mut dups = Vec::new();
    for (what, map) in [("PublicIP", &by_ip), ("VtepMAC", &by_mac)] {
        for (v, keys) in map.iter().filter(|(_, k)| k.len() > 1) {
            dups.push(format!("{what} {v} in {}", keys.join(" and ")));
        }
    }
    if dups.is_empty() {
        return ok(format!(
            "{} lease(s), no PublicIP or VtepMAC used twice",
            state.peers.len() + usize::from(state.lease.is_some())
        ));
    }
    // The one weftd rejected is the newer (the older lease wins).
    let key = state
        .peers
        .iter()
        .find(|p| p.rejected.is_some() && dups.iter().any(|d| d.contains(&p.key)))
        .map_or("<key of the stale one>", |p| p.key.as_str());
    let prefix = state.etcd.prefix.trim_end_matches('/');
    problem(
        dups.join("; "),
        format!("if that node is gone, delete its lease: etcdctl del {prefix}/subnets/{key}; else give it its own address/MAC and restart its weftd"),
    )
}
