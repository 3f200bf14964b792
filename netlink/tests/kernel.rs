//! Root-only tests against the real kernel. Everything happens inside
//! throwaway namespaces made by the shared harness (`weft_tests::Netns`,
//! named from `unique_prefix()`, removed on drop); the root namespace's
//! links, routes and firewall are never touched.
//!
//! Each test is `#[ignore = "needs root"]`: a plain `cargo test` lists them
//! as ignored; `scripts/test.sh` runs them with `--include-ignored` and
//! WEFT_REQUIRE_ROOT=1, where `require_root()` fails instead of skipping.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::ControlFlow;

use ipnetwork::IpNetwork;
use nix::errno::Errno;
use weft_netlink::{
    format_mac, nft_concat, nud, read_sysctl, write_sysctl, BridgeVlan, Change, IpFamily, Netlink,
    Netns, NftCommand, NftDeletion, NftElement, NftField, NftSet, NftTable, Route, VxlanSpec,
};
use weft_tests::require_root;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A harness namespace (deleted on drop, also on failure) opened as a
/// `weft_netlink::Netns`.
struct TestNs {
    ns: Netns,
    guard: weft_tests::Netns,
}

impl TestNs {
    fn new() -> Result<TestNs, Box<dyn std::error::Error>> {
        let guard = weft_tests::Netns::new();
        let ns = Netns::open(&guard.path)?;
        Ok(TestNs { ns, guard })
    }

    fn nl(&self) -> Result<Netlink, weft_netlink::Error> {
        Netlink::in_netns(&self.ns)
    }

    /// Run a command inside the namespace and return its stdout.
    fn exec(&self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let (cmd, rest) = args.split_first().ok_or("empty command")?;
        let out = self.guard.exec(cmd, rest);
        if !out.status.success() {
            return Err(
                format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into(),
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

fn net(s: &str) -> Result<IpNetwork, ipnetwork::IpNetworkError> {
    s.parse()
}

fn ip(s: &str) -> Result<IpAddr, std::net::AddrParseError> {
    s.parse()
}

fn index_of(nl: &mut Netlink, name: &str) -> Result<u32, Box<dyn std::error::Error>> {
    Ok(nl
        .link_by_name(name)?
        .ok_or(format!("{name} missing"))?
        .index)
}

/// A veth pair with both ends in `t`'s namespace, up, so routes have carrier.
fn up_veth_pair(t: &TestNs, nl: &mut Netlink) -> Result<(u32, u32), Box<dyn std::error::Error>> {
    nl.create_veth("v0", None, None, "v1", &t.ns)?;
    let v0 = index_of(nl, "v0")?;
    let v1 = index_of(nl, "v1")?;
    nl.set_up(v0)?;
    nl.set_up(v1)?;
    Ok((v0, v1))
}

#[test]
#[ignore = "needs root"]
fn netns_run_and_sysctl() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    assert!(!t.ns.is_current()?);
    assert!(Netns::current()?.is_current()?);
    // Inside run() the helper thread is in the namespace; we are not.
    assert!(t.ns.run(|| t.ns.is_current())??);
    assert!(!t.ns.is_current()?);

    let host_before = read_sysctl("net/ipv4/ip_forward")?;
    t.ns.run(|| write_sysctl("net/ipv4/ip_forward", "1"))??;
    assert_eq!(t.ns.run(|| read_sysctl("net/ipv4/ip_forward"))??, "1");
    assert_eq!(t.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])?, "1");
    t.ns.run(|| write_sysctl("net.ipv4.ip_forward", "0"))??;
    assert_eq!(t.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])?, "0");
    assert_eq!(read_sysctl("net/ipv4/ip_forward")?, host_before);

    let bad =
        t.ns.run(|| write_sysctl("net/ipv4/conf/nope0/forwarding", "1"))?;
    assert!(bad.is_err_and(|e| e.is_not_found()));

    // Not a namespace file.
    assert!(Netns::open("/proc/self/status".as_ref()).is_err());
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bridge_links() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;

    nl.create_bridge("br0", Some(1400), false)?;
    let err = nl
        .create_bridge("br0", None, false)
        .err()
        .ok_or("no EEXIST")?;
    assert!(err.is_exists(), "{err}");

    let br = nl.link_by_name("br0")?.ok_or("br0 missing")?;
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    assert!(!br.up);
    assert_eq!(
        nl.link_by_index(br.index)?.map(|l| l.name),
        Some("br0".to_string())
    );

    nl.set_up(br.index)?;
    nl.set_mtu(br.index, 1300)?;
    let mac = [0x0a, 0x58, 0xc6, 0x33, 0x64, 0x01];
    nl.set_mac(br.index, mac)?;
    nl.set_promisc(br.index, true)?;
    let br2 = nl.link_by_index(br.index)?.ok_or("br0 gone")?;
    assert!(br2.up && br2.promisc);
    assert_eq!(br2.mtu, 1300);
    assert_eq!(br2.mac, Some(mac));
    assert!(t
        .exec(&["ip", "link", "show", "br0"])?
        .contains(&format_mac(&mac)));

    nl.set_promisc(br.index, false)?;
    nl.set_down(br.index)?;
    let br3 = nl.link_by_index(br.index)?.ok_or("br0 gone")?;
    assert!(!br3.up && !br3.promisc);

    let names: Vec<String> = nl.links()?.into_iter().map(|l| l.name).collect();
    assert!(
        names.contains(&"lo".to_string()) && names.contains(&"br0".to_string()),
        "{names:?}"
    );

    nl.delete_link(br.index)?;
    assert!(nl.link_by_name("br0")?.is_none());
    assert!(nl.link_by_index(br.index)?.is_none());
    let err = nl.delete_link(br.index).err().ok_or("delete twice ok?")?;
    assert!(err.is_not_found(), "{err}");
    let err = nl.set_up(99_999).err().ok_or("set_up on missing ok?")?;
    assert!(err.is_not_found(), "{err}");
    // Bad MTU: the kernel's reason (extack) should be in the message.
    let err = nl
        .create_bridge("br1", Some(10), false)
        .err()
        .ok_or("mtu 10 ok?")?;
    eprintln!("expected error: {err}");
    assert_eq!(err.errno(), Some(nix::errno::Errno::EINVAL));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn veth_into_other_netns_and_bridge_ports() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let host = TestNs::new()?;
    let cont = TestNs::new()?;
    let mut hn = host.nl()?;
    let mut cn = cont.nl()?;

    hn.create_bridge("cni0", Some(1450), false)?;
    let br = index_of(&mut hn, "cni0")?;
    hn.set_up(br)?;

    // Container end named eth0, peer born directly in the "host" namespace.
    let mac = [0x0a, 0x58, 0x0a, 0xf4, 0x00, 0x05];
    cn.create_veth("eth0", Some(1450), Some(mac), "vethweft0", &host.ns)?;
    let eth0 = cn.link_by_name("eth0")?.ok_or("eth0 missing")?;
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mac, Some(mac));
    assert_eq!(eth0.mtu, 1450);
    assert!(eth0.link_netnsid.is_some());
    assert!(cn.link_by_name("vethweft0")?.is_none());
    let hv = hn.link_by_name("vethweft0")?.ok_or("host veth missing")?;
    assert_eq!(hv.mtu, 1450);
    assert_eq!(eth0.link, Some(hv.index));
    assert_eq!(hv.link, Some(eth0.index));

    // Same name again: EEXIST.
    let err = cn
        .create_veth("eth0", None, None, "vethweft1", &host.ns)
        .err()
        .ok_or("duplicate veth ok?")?;
    assert!(err.is_exists(), "{err}");

    // Attach to the bridge, port options, VLANs.
    hn.set_master(hv.index, br)?;
    hn.set_up(hv.index)?;
    assert_eq!(hn.link_by_index(hv.index)?.and_then(|l| l.master), Some(br));
    hn.set_bridge_port(hv.index, true, true)?;
    let brport = "/sys/class/net/vethweft0/brport";
    assert_eq!(host.exec(&["cat", &format!("{brport}/hairpin_mode")])?, "1");
    assert_eq!(host.exec(&["cat", &format!("{brport}/isolated")])?, "1");
    hn.set_bridge_port(hv.index, false, false)?;
    assert_eq!(host.exec(&["cat", &format!("{brport}/hairpin_mode")])?, "0");
    assert_eq!(host.exec(&["cat", &format!("{brport}/isolated")])?, "0");

    hn.set_nomaster(hv.index)?;
    assert_eq!(hn.link_by_index(hv.index)?.and_then(|l| l.master), None);

    // Deleting the container end removes the host end too.
    cn.delete_link(eth0.index)?;
    assert!(hn.link_by_name("vethweft0")?.is_none());
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn addresses() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;
    let (v0, _v1) = up_veth_pair(&t, &mut nl)?;

    let a = net("198.51.100.1/24")?;
    nl.add_address(v0, a)?;
    let err = nl.add_address(v0, a).err().ok_or("duplicate address ok?")?;
    assert!(err.is_exists(), "{err}");
    nl.add_address(v0, net("10.244.0.1/16")?)?;

    let addrs = nl.addresses(Some(v0))?;
    let got = addrs.iter().find(|x| x.net == a).ok_or("address missing")?;
    assert_eq!(got.index, v0);
    assert_eq!(got.scope, 0);
    assert!(got.is_permanent() && !got.is_tentative() && !got.is_dadfailed());
    assert!(t
        .exec(&["ip", "-4", "addr", "show", "v0"])?
        .contains("brd 198.51.100.255"));
    assert!(nl
        .addresses(None)?
        .iter()
        .any(|x| x.net == a && x.index == v0));
    assert!(nl.addresses(Some(99_999))?.is_empty());

    nl.del_address(v0, a)?;
    assert!(!nl.addresses(Some(v0))?.iter().any(|x| x.net == a));
    let err = nl.del_address(v0, a).err().ok_or("delete twice ok?")?;
    assert!(err.is_not_found(), "{err}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn routes() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;
    let (v0, _v1) = up_veth_pair(&t, &mut nl)?;
    nl.add_address(v0, net("198.51.100.1/24")?)?;

    // Via a gateway in a connected subnet.
    let mut r = Route::new(net("10.244.1.0/24")?);
    r.gateway = Some(ip("198.51.100.2")?);
    r.oif = Some(v0);
    nl.add_route(&r)?;
    let err = nl.add_route(&r).err().ok_or("duplicate route ok?")?;
    assert!(err.is_exists(), "{err}");
    let found = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .find(|x| x.dst == r.dst);
    let found = found.ok_or("route missing")?;
    assert_eq!(found.gateway, r.gateway);
    assert_eq!(found.oif, Some(v0));
    assert_eq!(found.table, Some(254));
    assert_eq!(found.protocol, Some(3));

    // Replace with an MTU (metrics round-trip).
    r.mtu = Some(1400);
    r.advmss = Some(1360);
    nl.replace_route(&r)?;
    let found = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .find(|x| x.dst == r.dst);
    assert_eq!(found.as_ref().and_then(|x| x.mtu), Some(1400));
    assert_eq!(found.as_ref().and_then(|x| x.advmss), Some(1360));

    // Onlink: gateway outside every connected subnet (flannel's vxlan routes).
    let mut on = Route::new(net("10.244.2.0/24")?);
    on.gateway = Some(ip("10.244.2.0")?);
    on.oif = Some(v0);
    let err = nl
        .add_route(&on)
        .err()
        .ok_or("unreachable gateway accepted?")?;
    eprintln!("expected error: {err}");
    on.onlink = true;
    nl.add_route(&on)?;
    let found = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .find(|x| x.dst == on.dst);
    assert!(found.is_some_and(|x| x.onlink));
    assert!(t
        .exec(&["ip", "route", "show", "10.244.2.0/24"])?
        .contains("onlink"));

    // Device route: link scope by default.
    let mut dev = Route::new(net("10.244.3.0/24")?);
    dev.oif = Some(v0);
    dev.priority = Some(50);
    nl.add_route(&dev)?;
    let found = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .find(|x| x.dst == dev.dst);
    assert_eq!(found.as_ref().and_then(|x| x.scope), Some(253));
    assert_eq!(found.as_ref().and_then(|x| x.priority), Some(50));

    // Other table: not in routes(), visible in routes_in_table().
    let mut other = Route::new(net("10.244.4.0/24")?);
    other.oif = Some(v0);
    other.table = Some(1000);
    nl.add_route(&other)?;
    assert!(!nl.routes(IpFamily::V4)?.iter().any(|x| x.dst == other.dst));
    assert!(nl
        .routes_in_table(IpFamily::V4, Some(1000))?
        .iter()
        .any(|x| x.dst == other.dst));

    // Default route.
    let mut def = Route::new(net("0.0.0.0/0")?);
    def.gateway = Some(ip("198.51.100.254")?);
    nl.add_route(&def)?;
    assert!(nl
        .routes(IpFamily::V4)?
        .iter()
        .any(|x| x.dst.prefix() == 0 && x.gateway == def.gateway));

    for x in [&r, &on, &dev, &other, &def] {
        nl.del_route(x)?;
        let err = nl.del_route(x).err().ok_or("delete twice ok?")?;
        assert!(err.is_not_found(), "{err}");
    }
    let left: Vec<_> = nl
        .routes(IpFamily::V4)?
        .into_iter()
        .map(|x| x.dst)
        .collect();
    assert_eq!(left, vec![net("198.51.100.0/24")?]);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn big_dump_is_multipart() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;
    let (v0, _) = up_veth_pair(&t, &mut nl)?;
    // ~2000 routes span many 32 KiB datagrams.
    for i in 0u32..2000 {
        let a = Ipv4Addr::new(10, 244, 100 + (i / 256) as u8, (i % 256) as u8);
        let mut r = Route::new(IpNetwork::new(IpAddr::V4(a), 32)?);
        r.oif = Some(v0);
        nl.add_route(&r)?;
    }
    assert_eq!(nl.routes(IpFamily::V4)?.len(), 2000);
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn vxlan_neighbours_and_fdb() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;
    let (v0, _) = up_veth_pair(&t, &mut nl)?;
    nl.add_address(v0, net("198.51.100.1/24")?)?;

    let vmac = [0x0a, 0x58, 0x00, 0x00, 0x00, 0x01];
    let spec = VxlanSpec {
        name: "weft.1".into(),
        vni: 1,
        local: Some(ip("198.51.100.1")?),
        dev: Some(v0),
        port: 8472,
        mtu: Some(1450),
        mac: Some(vmac),
    };
    nl.create_vxlan(&spec)?;
    let err = nl.create_vxlan(&spec).err().ok_or("duplicate vxlan ok?")?;
    assert!(err.is_exists(), "{err}");
    let vx = nl.link_by_name("weft.1")?.ok_or("vxlan missing")?;
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, 1450);
    assert_eq!(vx.mac, Some(vmac));
    let info = vx.vxlan.as_ref().ok_or("no vxlan info")?;
    assert_eq!(info.vni, 1);
    assert_eq!(info.local, spec.local);
    assert_eq!(info.port, 8472);
    assert!(!info.learning);
    assert_eq!(info.dev, Some(v0));
    nl.set_up(vx.index)?;

    // Neighbours: the remote node's vtep MAC for its subnet's .0 address.
    let rip = ip("10.244.5.0")?;
    let rmac = [0x0a, 0x58, 0x00, 0x00, 0x00, 0x05];
    nl.replace_neighbour(vx.index, rip, rmac)?;
    let ns = nl.neighbours(vx.index)?;
    let n = ns.iter().find(|n| n.ip == rip).ok_or("neighbour missing")?;
    assert_eq!(n.mac, Some(rmac));
    assert_eq!(n.state, nud::PERMANENT);
    let rmac2 = [0x0a, 0x58, 0x00, 0x00, 0x00, 0x06];
    nl.replace_neighbour(vx.index, rip, rmac2)?;
    let ns = nl.neighbours(vx.index)?;
    assert_eq!(ns.iter().filter(|n| n.ip == rip).count(), 1);
    assert_eq!(
        ns.iter().find(|n| n.ip == rip).and_then(|n| n.mac),
        Some(rmac2)
    );
    assert!(nl.neighbours(v0)?.iter().all(|n| n.ip != rip));
    nl.del_neighbour(vx.index, rip)?;
    assert!(nl.neighbours(vx.index)?.iter().all(|n| n.ip != rip));
    let err = nl
        .del_neighbour(vx.index, rip)
        .err()
        .ok_or("delete twice ok?")?;
    assert!(err.is_not_found(), "{err}");

    // FDB: remote vtep MAC -> remote node's underlay IP.
    let dst = ip("198.51.100.2")?;
    nl.replace_fdb(vx.index, rmac, dst)?;
    nl.replace_fdb(vx.index, rmac, dst)?; // idempotent
    let fdb = nl.fdb(vx.index)?;
    let e = fdb
        .iter()
        .find(|e| e.mac == rmac)
        .ok_or("fdb entry missing")?;
    assert_eq!(e.dst, Some(dst));
    assert!(e.is_self);
    assert_eq!(e.state, nud::PERMANENT);
    assert_eq!(fdb.iter().filter(|e| e.mac == rmac).count(), 1);
    assert!(t
        .exec(&["bridge", "fdb", "show", "dev", "weft.1"])?
        .contains(&format!("{} dst 198.51.100.2", format_mac(&rmac))));
    nl.del_fdb(vx.index, rmac, dst)?;
    assert!(nl.fdb(vx.index)?.iter().all(|e| e.mac != rmac));
    let err = nl
        .del_fdb(vx.index, rmac, dst)
        .err()
        .ok_or("delete twice ok?")?;
    assert!(err.is_not_found(), "{err}");

    nl.delete_link(vx.index)?;
    assert!(nl.link_by_name("weft.1")?.is_none());
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn bridge_vlans() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let host = TestNs::new()?;
    let mut hn = host.nl()?;
    match hn.create_bridge("cni0", None, true) {
        Err(e) if e.errno() == Some(nix::errno::Errno::EOPNOTSUPP) => {
            eprintln!("bridge_vlans: skipping: kernel lacks CONFIG_BRIDGE_VLAN_FILTERING ({e})");
            return Ok(());
        }
        r => r?,
    }
    let br = index_of(&mut hn, "cni0")?;
    assert!(host
        .exec(&["ip", "-d", "link", "show", "cni0"])?
        .contains("vlan_filtering 1"));
    hn.create_veth("vethweft0", None, None, "vethweft1", &host.ns)?;
    let hv = hn.link_by_name("vethweft0")?.ok_or("veth missing")?;
    hn.set_master(hv.index, br)?;

    let vlans = hn.bridge_vlans(hv.index)?;
    assert!(
        vlans.contains(&BridgeVlan {
            vid: 1,
            pvid: true,
            untagged: true
        }),
        "{vlans:?}"
    );
    hn.bridge_vlan_del(hv.index, 1)?;
    hn.bridge_vlan_add(hv.index, 100, true, true)?;
    hn.bridge_vlan_add(hv.index, 200, false, false)?;
    let vlans = hn.bridge_vlans(hv.index)?;
    assert_eq!(
        vlans,
        vec![
            BridgeVlan {
                vid: 100,
                pvid: true,
                untagged: true
            },
            BridgeVlan {
                vid: 200,
                pvid: false,
                untagged: false
            },
        ]
    );
    hn.bridge_vlan_del(hv.index, 200)?;
    assert!(!hn.bridge_vlans(hv.index)?.iter().any(|v| v.vid == 200));

    hn.set_vlan_filtering(br, false)?;
    assert!(host
        .exec(&["ip", "-d", "link", "show", "cni0"])?
        .contains("vlan_filtering 0"));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn veth_peer_group_is_set_by_the_creating_request() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let host = TestNs::new()?;
    let cont = TestNs::new()?;
    let mut hn = host.nl()?;
    let mut cn = cont.nl()?;
    cn.create_veth_with_peer_group("eth0", None, None, "vethgrp0", &host.ns, 0x1234_5678)?;
    let peer = hn.link_by_name("vethgrp0")?.ok_or("peer missing")?;
    assert_eq!(peer.group, 0x1234_5678);
    assert_eq!(cn.link_by_name("eth0")?.ok_or("eth0 missing")?.group, 0);
    Ok(())
}

/// `apply`: hundreds of changes pipelined (several datagrams), a failing
/// one in the middle answered for itself without stopping the rest, and
/// results in the order of the changes.
#[test]
#[ignore = "needs root"]
fn batch_of_changes() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    let mut nl = t.nl()?;
    let (v0, _) = up_veth_pair(&t, &mut nl)?;
    nl.add_address(v0, net("198.51.100.1/24")?)?;
    let spec = VxlanSpec {
        name: "weft.1".into(),
        vni: 1,
        local: Some(ip("198.51.100.1")?),
        dev: Some(v0),
        port: 8472,
        mtu: Some(1450),
        mac: None,
    };
    nl.create_vxlan(&spec)?;
    let vx = index_of(&mut nl, "weft.1")?;
    nl.set_up(vx)?;
    let peers = 150u8;
    let mut changes = Vec::new();
    for i in 0..peers {
        let gw = IpAddr::V4(Ipv4Addr::new(10, 244, i, 0));
        let mac = [0x0a, 0x58, 0, 0, 1, i];
        changes.push(Change::ReplaceNeighbour {
            index: vx,
            ip: gw,
            mac,
        });
        changes.push(Change::ReplaceFdb {
            index: vx,
            mac,
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, i.saturating_add(2))),
        });
        let mut r = Route::new(net(&format!("10.244.{i}.0/24"))?);
        r.gateway = Some(gw);
        r.oif = Some(vx);
        r.onlink = true;
        changes.push(Change::ReplaceRoute(r));
    }
    // Fails (nothing to delete), between good ones.
    changes.insert(
        200,
        Change::DelNeighbour {
            index: vx,
            ip: ip("10.9.9.9")?,
        },
    );
    let results = nl.apply(&changes)?;
    assert_eq!(results.len(), changes.len());
    for (k, r) in results.iter().enumerate() {
        match k {
            200 => assert!(r.as_ref().is_err_and(|e| e.is_not_found()), "{r:?}"),
            _ => assert!(r.is_ok(), "change {k}: {r:?}"),
        }
    }
    let routes = nl.routes(IpFamily::V4)?;
    assert_eq!(
        routes.iter().filter(|r| r.oif == Some(vx)).count(),
        peers as usize
    );
    assert_eq!(nl.neighbours(vx)?.len(), peers as usize);
    assert_eq!(
        nl.fdb(vx)?.iter().filter(|e| e.dst.is_some()).count(),
        peers as usize
    );
    // The socket is in step afterwards: a single request still works.
    nl.del_neighbour(vx, ip("10.244.0.0")?)?;
    Ok(())
}

/// What portmap's layout relies on: a map and an interval set of
/// concatenations; an element added again, or a range overlapping one,
/// is refused (and nothing of that transaction is made); an element is
/// read back by its exact key with its value and comment; a walk stops
/// early; a transaction decided at an old generation is refused
/// (ERESTART); an element is deleted by its key and range end.
#[test]
#[ignore = "needs root"]
fn set_elements_of_concatenated_keys() -> TestResult {
    if !require_root() {
        return Ok(());
    }
    let t = TestNs::new()?;
    t.ns.run(sets_and_elements)??;
    let listed = t.exec(&["nft", "list", "table", "inet", "wpvtest"])?;
    assert!(
        listed.contains("tcp . 8080 comment \"a\" : 10.244.1.5 . 80"),
        "{listed}"
    );
    assert!(!listed.contains("10.244.1.0/24 . 10.244.1.5"), "{listed}");
    Ok(())
}

fn element(key: Vec<u8>, key_end: Option<Vec<u8>>, data: Option<Vec<u8>>) -> NftElement {
    NftElement {
        key,
        key_end,
        data,
        comment: Some("a".into()),
    }
}

/// [`set_elements_of_concatenated_keys`] inside its namespace.
fn sets_and_elements() -> Result<(), weft_netlink::Error> {
    use weft_netlink::NftAddr::{Destination, Source};
    let addr = |which| NftField::Addr { which, v4: true };
    let mut table = NftTable::new("inet", "wpvtest")?;
    let ports = NftSet {
        name: "ports".into(),
        key: vec![NftField::L4proto, NftField::Dport],
        data: vec![addr(Destination), NftField::Dport],
        interval: false,
    };
    let masq = NftSet {
        name: "masq".into(),
        key: vec![addr(Source), addr(Destination)],
        data: Vec::new(),
        interval: true,
    };
    let pod = [10, 244, 1, 5];
    let dnat = element(
        nft_concat(&[&[6], &8080u16.to_be_bytes()]),
        None,
        Some(nft_concat(&[&pod, &80u16.to_be_bytes()])),
    );
    let subnet = element(
        nft_concat(&[&[10, 244, 1, 0], &pod]),
        Some(nft_concat(&[&[10, 244, 1, 255], &pod])),
        None,
    );
    let add = |set: &str, element: &NftElement| NftCommand::Element {
        set: set.into(),
        element: element.clone(),
    };
    table.apply(
        None,
        &[
            NftCommand::Table,
            NftCommand::Set(ports),
            NftCommand::Set(masq),
            add("ports", &dnat),
            add("masq", &subnet),
        ],
    )?;
    let errno = |r: Result<_, weft_netlink::Error>| r.err().and_then(|e| e.errno());
    assert_eq!(
        errno(table.apply(None, &[add("ports", &dnat)])),
        Some(Errno::EEXIST)
    );
    // 10.244.1.128/25 lies inside the /24: refused, and so is the rest of
    // that transaction.
    let inside = element(
        nft_concat(&[&[10, 244, 1, 128], &pod]),
        Some(nft_concat(&[&[10, 244, 1, 255], &pod])),
        None,
    );
    let other = element(
        nft_concat(&[&[17], &53u16.to_be_bytes()]),
        None,
        dnat.data.clone(),
    );
    let refused = errno(table.apply(None, &[add("ports", &other), add("masq", &inside)]));
    assert!(
        matches!(refused, Some(Errno::EEXIST | Errno::ENOTEMPTY)),
        "{refused:?}"
    );
    assert_eq!(table.element("ports", &other.key, None)?, None);
    assert_eq!(table.element("ports", &dnat.key, None)?, Some(dnat.clone()));
    let found = table.element("masq", &subnet.key, subnet.key_end.as_deref())?;
    assert_eq!(found, Some(subnet.clone()));
    let mut seen = 0;
    table.walk_elements("masq", |_| {
        seen += 1;
        ControlFlow::Break(())
    })?;
    assert_eq!(seen, 1);
    let old = table.generation()?;
    table.apply(None, &[add("ports", &other)])?;
    let gone = NftCommand::Delete(NftDeletion::Element {
        set: "masq".into(),
        key: subnet.key.clone(),
        key_end: subnet.key_end.clone(),
    });
    assert_eq!(
        errno(table.apply(Some(old), std::slice::from_ref(&gone))),
        Some(Errno::ERESTART)
    );
    let now = table.generation()?;
    table.apply(Some(now), &[gone])?;
    assert_eq!(
        table.element("masq", &subnet.key, subnet.key_end.as_deref())?,
        None
    );
    Ok(())
}
