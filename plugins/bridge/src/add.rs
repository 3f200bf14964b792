//! ADD: every step records what it created in `Undo`, so a failure at any
//! point removes exactly what this invocation made, IPAM allocation included.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_cni::delegate::{Delegate, Running};
use weft_cni::{CniResult, Command, Error, ErrorCode, Interface, Request, Route};
use weft_netlink::{format_mac, netns, Link, Netlink, Netns};

use crate::config::BridgeConfig;
use crate::{firewall, host_netlink, ipam, open_netns};

/// Index of the container interface in the result, as in the reference.
const CONTAINER_IF: usize = 2;
const VETH_NAME_ATTEMPTS: usize = 10;
/// IPAM plugins that allocate from their config alone and never look at the
/// container interface. They run while the veth is being made, so ADD waits
/// for the longer of the two instead of their sum; any other IPAM (dhcp
/// needs the interface) runs after, as in the reference.
const INTERFACE_INDEPENDENT_IPAM: &[&str] = &["host-local", "static"];

#[derive(Default)]
struct Undo<'a> {
    /// Names, known before the links exist, so no lookup can lose them.
    bridge_created: Option<String>,
    host_veth: Option<String>,
    ipam: Option<(&'a Delegate, &'a [u8])>,
    firewall: bool,
}

impl Undo<'_> {
    fn run(self, host: &mut Netlink, req: &Request, config: &BridgeConfig) {
        if self.firewall {
            let _ = firewall::teardown(req, config);
        }
        if let Some((ipam, stdin)) = self.ipam {
            if let Err(e) = ipam.run(Command::Del, stdin) {
                weft_cni::log::warn(&format!("rollback: IPAM DEL failed: {e}"));
            }
        }
        // Deleting the host end removes the container end with it.
        if let Some(name) = self.host_veth {
            if let Ok(Some(link)) = host.link_by_name(&name) {
                let _ = host.delete_link(link.index);
            }
        }
        if let Some(name) = self.bridge_created {
            if let Ok(Some(bridge)) = host.link_by_name(&name) {
                let has_ports = host
                    .links()
                    .map(|l| l.iter().any(|l| l.master == Some(bridge.index)))
                    .unwrap_or(true);
                if !has_ports {
                    let _ = host.delete_link(bridge.index);
                }
            }
        }
    }
}

pub fn add(req: &Request, config: &BridgeConfig) -> Result<CniResult, Error> {
    let ipam = ipam(req, config)?;
    let (pod_ns, mut pod) = open_netns(req)?;
    let host_ns = Netns::current().map_err(|e| Error::kernel("open the node netns", e))?;
    let mut host = host_netlink()?;
    match pod.link_by_name(&req.ifname) {
        Ok(None) => {}
        Ok(Some(_)) => {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!(
                    "interface \"{}\" already exists in {}",
                    req.ifname,
                    req.netns_path()?.display()
                ),
            ))
        }
        Err(e) => return Err(Error::kernel("look up the container interface", e)),
    }

    let mut undo = Undo::default();
    let early_ipam = match (&ipam, config.ipam_type.as_deref()) {
        (Some(delegate), Some(kind)) if INTERFACE_INDEPENDENT_IPAM.contains(&kind) => {
            let running = delegate.start(Command::Add, &req.stdin)?;
            undo.ipam = Some((delegate, &req.stdin));
            Some(running)
        }
        _ => None,
    };
    let result = add_steps(
        req,
        config,
        ipam.as_ref(),
        early_ipam,
        &pod_ns,
        &mut pod,
        &host_ns,
        &mut host,
        &mut undo,
    );
    if result.is_err() {
        undo.run(&mut host, req, config);
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn add_steps<'a>(
    req: &'a Request,
    config: &BridgeConfig,
    ipam: Option<&'a Delegate>,
    // Dropped (so waited for) on any early return, before a rollback DEL.
    early_ipam: Option<Running>,
    pod_ns: &Netns,
    pod: &mut Netlink,
    host_ns: &Netns,
    host: &mut Netlink,
    undo: &mut Undo<'a>,
) -> Result<CniResult, Error> {
    let bridge = ensure_bridge(host, config, undo)?;
    let (host_veth, container) = create_veth(req, config, pod, host_ns, host, undo)?;
    // The alias labels the veth for GC. A VLAN port comes up only once its
    // VLANs are set.
    let up_now = config.vlan.is_none();
    host.attach_port(
        host_veth.index,
        bridge.index,
        &crate::attachment_alias(req),
        up_now,
    )
    .map_err(|e| Error::kernel(format!("attach {} to {}", host_veth.name, bridge.name), e))?;
    if config.hairpin_mode || config.port_isolation {
        host.set_bridge_port(host_veth.index, config.hairpin_mode, config.port_isolation)
            .map_err(|e| {
                Error::kernel(format!("set bridge port flags on {}", host_veth.name), e)
            })?;
    }
    if let Some(vid) = config.vlan {
        if !config.preserve_default_vlan {
            host.bridge_vlan_del(host_veth.index, 1)
                .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
                .map_err(|e| {
                    Error::kernel(format!("remove default vlan from {}", host_veth.name), e)
                })?;
        }
        host.bridge_vlan_add(host_veth.index, vid, true, true)
            .map_err(|e| Error::kernel(format!("add vlan {vid} to {}", host_veth.name), e))?;
    }
    if !up_now {
        host.set_up(host_veth.index)
            .map_err(|e| Error::kernel(format!("set {} up", host_veth.name), e))?;
    }

    let mut result = CniResult {
        interfaces: vec![
            Interface {
                name: bridge.name.clone(),
                mac: bridge.mac.as_ref().map(format_mac),
                ..Default::default()
            },
            Interface {
                name: host_veth.name.clone(),
                mac: host_veth.mac.as_ref().map(format_mac),
                ..Default::default()
            },
            Interface {
                name: req.ifname.clone(),
                mac: container.mac.as_ref().map(format_mac),
                mtu: Some(container.mtu),
                sandbox: Some(req.netns_path()?.display().to_string()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };

    if let Some(ipam) = ipam {
        let allocated = match early_ipam {
            Some(running) => running.result(),
            None => ipam.add(&req.stdin),
        };
        undo.ipam = Some((ipam, &req.stdin));
        let allocated = allocated?;
        if allocated.ips.is_empty() {
            return Err(Error::config("the IPAM plugin returned no IP addresses"));
        }
        result.ips = allocated.ips;
        result.routes = allocated.routes;
        result.dns = allocated.dns;
        complete_gateways(config, &mut result)?;
        configure_container(config, pod_ns, pod, container.index, &result)?;
        if config.is_gateway {
            configure_gateway(config, host, &bridge, &result)?;
        }
        if config.ip_masq {
            undo.firewall = true;
            firewall::setup(req, config, &result)?;
        }
    } else {
        pod.set_up(container.index)
            .map_err(|e| Error::kernel(format!("set {} up", req.ifname), e))?;
    }
    if config.mac_spoof_check {
        undo.firewall = true;
        firewall::setup_spoof_check(req, config, &host_veth.name, &result)?;
    }
    if let Some(dns) = &config.dns {
        result.dns = dns.clone();
    }
    // An unpinned bridge takes the lowest port MAC; report its final value.
    if !config.is_gateway {
        if let Ok(Some(b)) = host.link_by_index(bridge.index) {
            result.interfaces[0].mac = b.mac.as_ref().map(format_mac);
        }
    }
    Ok(result)
}

fn ensure_bridge(
    host: &mut Netlink,
    config: &BridgeConfig,
    undo: &mut Undo,
) -> Result<Link, Error> {
    let name = &config.bridge;
    let look_up = |host: &mut Netlink| {
        host.link_by_name(name)
            .map_err(|e| Error::kernel(format!("look up bridge {name}"), e))
    };
    // Usually the bridge is there already: one lookup, no create.
    let bridge = match look_up(host)? {
        Some(bridge) => bridge,
        None => {
            match host.create_bridge(name, config.mtu, config.vlan.is_some()) {
                // Only a bridge this ADD made is removed on rollback (if still unused).
                Ok(()) => undo.bridge_created = Some(name.clone()),
                // A concurrent ADD made it first.
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(Error::kernel(format!("create bridge {name}"), e)),
            }
            look_up(host)?.ok_or_else(|| {
                Error::new(
                    ErrorCode::Kernel,
                    format!("bridge {name} vanished after creation"),
                )
            })?
        }
    };
    if bridge.kind.as_deref() != Some("bridge") {
        return Err(Error::config(format!(
            "\"{name}\" already exists and is a {} device, not a bridge",
            bridge.kind.as_deref().unwrap_or("plain")
        )));
    }
    if config.promisc_mode && !bridge.promisc {
        host.set_promisc(bridge.index, true)
            .map_err(|e| Error::kernel(format!("set {name} promisc"), e))?;
    }
    if !bridge.up {
        let _ = netns::write_sysctl(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
        host.set_up(bridge.index)
            .map_err(|e| Error::kernel(format!("set {name} up"), e))?;
    }
    Ok(bridge)
}

/// A random host-side name, like the reference's veth + 8 hex digits.
fn random_veth_name() -> String {
    let mut bytes = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        bytes = (nanos ^ std::process::id().rotate_left(16)).to_le_bytes();
    }
    format!(
        "veth{:02x}{:02x}{:02x}{:02x}",
        bytes[0], bytes[1], bytes[2], bytes[3]
    )
}

/// Create the pair from inside the pod netns, the host end born in the node
/// netns, so nothing is ever moved between namespaces.
fn create_veth(
    req: &Request,
    config: &BridgeConfig,
    pod: &mut Netlink,
    host_ns: &Netns,
    host: &mut Netlink,
    undo: &mut Undo,
) -> Result<(Link, Link), Error> {
    let mut last_err = None;
    for _ in 0..VETH_NAME_ATTEMPTS {
        let peer = random_veth_name();
        // The group labels the host end from the instant it exists (GC).
        let group = crate::network_group(&req.name);
        match pod.create_veth_with_peer_group(
            &req.ifname,
            config.mtu,
            config.mac,
            &peer,
            host_ns,
            group,
        ) {
            Ok(()) => {
                // Recorded before any other fallible call, so the pair cannot leak.
                undo.host_veth = Some(peer.clone());
                let host_veth = host
                    .link_by_name(&peer)
                    .map_err(|e| Error::kernel(format!("look up {peer}"), e))?
                    .ok_or_else(|| {
                        Error::new(ErrorCode::Kernel, format!("host veth {peer} vanished"))
                    })?;
                let container = pod
                    .link_by_name(&req.ifname)
                    .map_err(|e| Error::kernel(format!("look up {}", req.ifname), e))?
                    .ok_or_else(|| {
                        Error::new(ErrorCode::Kernel, format!("{} vanished", req.ifname))
                    })?;
                let _ = netns::write_sysctl(&format!("net/ipv6/conf/{peer}/accept_ra"), "0");
                return Ok((host_veth, container));
            }
            // The pod's name was checked free; EEXIST means the random host name collided.
            Err(e) if e.is_exists() => last_err = Some(e),
            Err(e) => {
                return Err(Error::kernel(
                    format!("create veth {} with peer {peer}", req.ifname),
                    e,
                ))
            }
        }
    }
    Err(Error::kernel(
        "create veth: no free host-side name",
        last_err.map_or(String::new(), |e| e.to_string()),
    ))
}

/// Point every IP at the container interface, fill in missing gateways and
/// add the default route when asked.
fn complete_gateways(config: &BridgeConfig, result: &mut CniResult) -> Result<(), Error> {
    for ip in &mut result.ips {
        ip.interface = Some(CONTAINER_IF);
        if ip.gateway.is_none() && config.is_gateway {
            ip.gateway = first_host(ip.address);
        }
    }
    if config.is_default_gateway {
        for ip in &result.ips {
            let Some(gw) = ip.gateway else { continue };
            let default: IpNetwork = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
                .parse()
                .map_err(|_| Error::config("internal: default route literal"))?;
            let has_default = result
                .routes
                .iter()
                .any(|r| r.dst == default && r.gw.is_some());
            if !has_default {
                result.routes.push(Route::new(default, Some(gw)));
            }
        }
    }
    Ok(())
}

fn first_host(net: IpNetwork) -> Option<IpAddr> {
    match net {
        IpNetwork::V4(n) => n.nth(1).map(IpAddr::V4),
        IpNetwork::V6(n) => {
            let base = u128::from(n.network());
            Some(IpAddr::V6((base + 1).into()))
        }
    }
}

fn configure_container(
    config: &BridgeConfig,
    pod_ns: &Netns,
    pod: &mut Netlink,
    index: u32,
    result: &CniResult,
) -> Result<(), Error> {
    let ifname = result.interfaces[CONTAINER_IF].name.clone();
    let has_v6 = result.ips.iter().any(|ip| ip.address.is_ipv6());
    let enable_dad = config.enable_dad;
    let sysctl_result = pod_ns
        .run(|| -> Result<(), weft_netlink::Error> {
            if has_v6 {
                netns::write_sysctl("net/ipv6/conf/lo/disable_ipv6", "0")?;
                netns::write_sysctl(&format!("net/ipv6/conf/{ifname}/disable_ipv6"), "0")?;
                netns::write_sysctl(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1")?;
                // DAD on a fresh veth only delays the pod by seconds (plugins#680).
                netns::write_sysctl(
                    &format!("net/ipv6/conf/{ifname}/accept_dad"),
                    if enable_dad { "1" } else { "0" },
                )?;
                if enable_dad {
                    let _ =
                        netns::write_sysctl(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
                }
            }
            netns::write_sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1")
        })
        .map_err(|e| Error::kernel("enter the pod netns", e))?;
    sysctl_result.map_err(|e| Error::kernel("set container sysctls", e))?;

    for ip in &result.ips {
        pod.add_address(index, ip.address)
            .map_err(|e| Error::kernel(format!("add address {} to {ifname}", ip.address), e))?;
    }
    pod.set_up(index)
        .map_err(|e| Error::kernel(format!("set {ifname} up"), e))?;
    if enable_dad
        && result
            .ips
            .iter()
            .any(|ip| ip.address.is_ipv6() && ip.gateway.is_some())
    {
        wait_for_dad(pod, index, &ifname)?;
    }
    for route in &result.routes {
        let gateway = route.gw.or_else(|| {
            result
                .ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == route.dst.is_ipv4())
                .and_then(|ip| ip.gateway)
        });
        let kernel_route = weft_netlink::Route {
            dst: route.dst,
            gateway,
            oif: Some(index),
            priority: route.priority,
            table: route.table,
            mtu: route.mtu,
            advmss: route.adv_mss,
            scope: route.scope,
            ..Default::default()
        };
        pod.add_route(&kernel_route)
            .or_else(|e| if e.is_exists() { Ok(()) } else { Err(e) })
            .map_err(|e| {
                Error::kernel(
                    format!(
                        "add route {}{} on {ifname}",
                        route.dst,
                        gateway.map(|g| format!(" via {g}")).unwrap_or_default()
                    ),
                    e,
                )
            })?;
    }
    Ok(())
}

/// With DAD on, a tentative address cannot be used yet: wait until the
/// kernel settles it (as the reference does), and fail on a duplicate.
fn wait_for_dad(pod: &mut Netlink, index: u32, ifname: &str) -> Result<(), Error> {
    const POLL: std::time::Duration = std::time::Duration::from_millis(50);
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let start = std::time::Instant::now();
    loop {
        let addrs = pod
            .addresses(Some(index))
            .map_err(|e| Error::kernel(format!("list addresses of {ifname}"), e))?;
        let v6 = || addrs.iter().filter(|a| a.net.is_ipv6() && a.scope == 0);
        if let Some(a) = v6().find(|a| a.is_dadfailed()) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("{} on {ifname} failed duplicate address detection", a.net),
            ));
        }
        if !v6().any(|a| a.is_tentative()) {
            return Ok(());
        }
        if start.elapsed() > LIMIT {
            return Err(Error::new(
                ErrorCode::Kernel,
                format!("IPv6 addresses on {ifname} still tentative after {LIMIT:?}"),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Put each gateway address on the bridge and enable forwarding.
fn configure_gateway(
    config: &BridgeConfig,
    host: &mut Netlink,
    bridge: &Link,
    result: &CniResult,
) -> Result<(), Error> {
    let existing = host
        .addresses(Some(bridge.index))
        .map_err(|e| Error::kernel(format!("list addresses of {}", bridge.name), e))?;
    let mut added = false;
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let gw_net = IpNetwork::new(gw, ip.address.prefix()).map_err(|_| {
            Error::config(format!(
                "gateway {gw} does not fit prefix /{}",
                ip.address.prefix()
            ))
        })?;
        let forwarding = if gw.is_ipv4() {
            "net/ipv4/ip_forward"
        } else {
            "net/ipv6/conf/all/forwarding"
        };
        netns::write_sysctl(forwarding, "1").map_err(|e| Error::kernel("enable forwarding", e))?;
        if existing.iter().any(|a| a.net == gw_net) {
            continue;
        }
        // Only another address of the same subnet conflicts (IPv4).
        let conflicting: Vec<_> = existing
            .iter()
            .filter(|a| a.net.is_ipv4() && gw.is_ipv4() && a.net.contains(gw) && a.net.ip() != gw)
            .collect();
        for other in conflicting {
            if !config.force_address {
                return Err(Error::config(format!(
                    "bridge {} already has the address {} in the gateway's subnet; expected {gw_net} (set forceAddress to replace it)",
                    bridge.name, other.net
                )));
            }
            host.del_address(bridge.index, other.net).map_err(|e| {
                Error::kernel(format!("remove {} from {}", other.net, bridge.name), e)
            })?;
        }
        host.add_address(bridge.index, gw_net)
            .or_else(|e| if e.is_exists() { Ok(()) } else { Err(e) })
            .map_err(|e| Error::kernel(format!("add gateway {gw_net} to {}", bridge.name), e))?;
        added = true;
    }
    // Pin the bridge MAC so it stops following its lowest-numbered port;
    // once a gateway is on it, an earlier ADD has pinned it already.
    if added {
        if let Some(mac) = bridge.mac {
            let _ = host.set_mac(bridge.index, mac);
        }
    }
    Ok(())
}
