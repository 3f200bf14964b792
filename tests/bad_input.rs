//! Bad input to weft's plugins: each must be answered with the right CNI
//! error code as an error object on stdout (cniVersion, code, a msg naming
//! the bad field or value), a non-zero exit (never a signal), and nothing
//! left behind: no interface, address, reservation or firewall rule, and no
//! bridge that was not there before.
//!
//! The cases are tables; every case runs against a fresh pod netns on a
//! shared node, and is compared with a snapshot taken just before it, so a
//! failing case does not hide the others: each test reports every failed case
//! at the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use serde_json::{json, Value};
use weft_tests::*;

const NET: &str = "wtnet";
const BRIDGE: &str = "wtbr0";
const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// ---------------------------------------------------------------- configs

fn ipam_section(data: &Path, subnet: &str) -> Value {
    host_local_ipam(data, subnet_range(subnet))
}

/// A valid bridge config (1.0.0) with host-local on 10.244.20.0/24.
fn bridge_conf(data: &Path) -> Value {
    let bridge = bridge_plugin(BRIDGE, ipam_section(data, "10.244.20.0/24"));
    network("1.0.0", NET, merged(&bridge, json!({"ipMasq": true})))
}

/// A valid host-local config (1.0.0) on 10.244.21.0/24.
fn host_local_conf(data: &Path) -> Value {
    network(
        "1.0.0",
        NET,
        json!({"type": "host-local", "ipam": ipam_section(data, "10.244.21.0/24")}),
    )
}

fn loopback_conf() -> Value {
    network("1.0.0", NET, json!({"type": "loopback"}))
}

fn base_conf(plugin: &str, data: &Path) -> Value {
    match plugin {
        "bridge" => bridge_conf(data),
        "host-local" => host_local_conf(data),
        "loopback" => loopback_conf(),
        other => panic!("no base config for {other}"),
    }
}

/// `conf` with `pointer` (a JSON pointer to an object member) set to `value`,
/// or removed when `value` is `None`.
fn with(mut conf: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = conf
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no object at {parent:?}"));
    match value {
        Some(v) => {
            obj.insert(key.to_string(), v);
        }
        None => {
            obj.remove(key);
        }
    }
    conf
}

// ---------------------------------------------------- "nothing left behind"

/// What a failed call must not change: links and addresses of the node and
/// the pod, host-local's reservations (every file of dataDir but `lock` and
/// `last_reserved_ip.*`), and the node's firewall (iptables here is
/// iptables-nft, so `nft list ruleset` shows both).
#[derive(Debug, PartialEq)]
struct Snapshot {
    node_links: BTreeSet<String>,
    node_addrs: BTreeSet<String>,
    pod_links: BTreeSet<String>,
    pod_addrs: BTreeSet<String>,
    reservations: BTreeSet<String>,
    ruleset: String,
}

fn link_set(ns: &Netns) -> BTreeSet<String> {
    links(ns)
        .iter()
        .map(|l| {
            format!(
                "{} kind={} master={}",
                l["ifname"].as_str().unwrap_or("?"),
                l.pointer("/linkinfo/info_kind")
                    .and_then(Value::as_str)
                    .unwrap_or("-"),
                l["master"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

fn addr_set(ns: &Netns) -> BTreeSet<String> {
    addrs(ns)
        .iter()
        .flat_map(|l| {
            let name = l["ifname"].as_str().unwrap_or("?").to_string();
            l["addr_info"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                // IPv6 link-local addresses come and go with link state.
                .filter(|a| a["scope"] != "link")
                .map(move |a| {
                    format!(
                        "{name} {}/{}",
                        a["local"].as_str().unwrap_or("?"),
                        a["prefixlen"]
                    )
                })
        })
        .collect()
}

fn reservation_files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if path.is_dir() {
            out.extend(reservation_files(&path));
        } else if is_reservation_name(&name) {
            out.insert(path.display().to_string());
        }
    }
    out
}

fn snapshot(node: &Node, pod: &Netns, data: &Path) -> Snapshot {
    Snapshot {
        node_links: link_set(node),
        node_addrs: addr_set(node),
        pod_links: link_set(pod),
        pod_addrs: addr_set(pod),
        reservations: reservation_files(data),
        ruleset: nft_ruleset(node),
    }
}

/// The one "nothing left behind" assertion every case ends with.
#[track_caller]
fn assert_nothing_left(before: &Snapshot, node: &Node, pod: &Netns, data: &Path) {
    let after = snapshot(node, pod, data);
    let diff = |a: &BTreeSet<String>, b: &BTreeSet<String>| {
        format!(
            "added {:?}, removed {:?}",
            b.difference(a).collect::<Vec<_>>(),
            a.difference(b).collect::<Vec<_>>()
        )
    };
    assert_eq!(
        before.node_links,
        after.node_links,
        "node links: {}",
        diff(&before.node_links, &after.node_links)
    );
    assert_eq!(
        before.node_addrs,
        after.node_addrs,
        "node addresses: {}",
        diff(&before.node_addrs, &after.node_addrs)
    );
    assert_eq!(
        before.pod_links,
        after.pod_links,
        "pod links: {}",
        diff(&before.pod_links, &after.pod_links)
    );
    assert_eq!(
        before.pod_addrs,
        after.pod_addrs,
        "pod addresses: {}",
        diff(&before.pod_addrs, &after.pod_addrs)
    );
    assert_eq!(
        before.reservations,
        after.reservations,
        "reservations: {}",
        diff(&before.reservations, &after.reservations)
    );
    assert_eq!(before.ruleset, after.ruleset, "firewall rules changed");
}

// ------------------------------------------------------------ the runner

/// What a case gets to build its call from.
struct Ctx<'a> {
    node: &'a Node,
    pod: &'a Netns,
    data: &'a Path,
}

impl Ctx<'_> {
    fn conf(&self, plugin: &str) -> Value {
        base_conf(plugin, self.data)
    }

    /// An ADD of the plugin's valid config for this pod.
    fn add(&self, plugin: &str) -> CniCall {
        CniCall::add(self.pod, self.conf(plugin))
    }
}

type Build = Box<dyn Fn(&Ctx) -> CniCall>;

struct Case {
    what: String,
    plugin: &'static str,
    code: u64,
    /// Substrings the error's msg must contain (the bad field or value).
    msg_has: Vec<String>,
    build: Build,
}

fn case(
    what: &str,
    plugin: &'static str,
    code: u64,
    msg_has: &[&str],
    build: impl Fn(&Ctx) -> CniCall + 'static,
) -> Case {
    Case {
        what: format!("{plugin}: {what}"),
        plugin,
        code,
        msg_has: msg_has.iter().map(|s| s.to_string()).collect(),
        build: Box::new(build),
    }
}

/// The same case for each of `plugins`.
fn for_each(
    plugins: &[&'static str],
    what: &str,
    code: u64,
    msg_has: &[&str],
    build: impl Fn(&Ctx, &str) -> CniCall + Clone + 'static,
) -> Vec<Case> {
    plugins
        .iter()
        .map(|&p| {
            let b = build.clone();
            case(what, p, code, msg_has, move |ctx| b(ctx, p))
        })
        .collect()
}

const ALL: &[&str] = &["bridge", "host-local", "loopback"];

fn check_error(case: &Case, call: &CniCall, out: &CniOutput) {
    assert!(
        out.status.code().is_some(),
        "killed by a signal ({}); stderr: {}",
        out.status,
        out.stderr.trim()
    );
    let err = out.expect_error(case.code);
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(!msg.is_empty(), "no msg: {err}");
    for want in &case.msg_has {
        assert!(
            msg.contains(want.as_str()),
            "msg {msg:?} does not name {want:?}"
        );
    }
    // Errors carry a cniVersion: the request's when it is one weft speaks.
    let version = err["cniVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no cniVersion in {err}"));
    assert!(SUPPORTED.contains(&version), "{err}");
    if let Some(asked) = call.stdin.get("cniVersion").and_then(Value::as_str) {
        if call.raw_stdin.is_none() && SUPPORTED.contains(&asked) {
            assert_eq!(version, asked, "{err}");
        }
    }
    // Exactly one JSON object on stdout.
    assert_eq!(
        out.stdout.trim().lines().count(),
        1,
        "stdout: {:?}",
        out.stdout
    );
}

/// Runs every case on its own fresh pod and reports all failures at once.
fn run_cases(cases: Vec<Case>) {
    let node = Node::new();
    let data = TempDir::new();
    let mut failures = Vec::new();
    for case in &cases {
        let pod = node.pod();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let ctx = Ctx {
                node: &node,
                pod: &pod,
                data: data.path(),
            };
            let call = (case.build)(&ctx);
            let before = snapshot(&node, &pod, data.path());
            let out = call.run_in(&node, &plugin_path(case.plugin));
            check_error(case, &call, &out);
            assert_nothing_left(&before, &node, &pod, data.path());
        }));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("[{}] {msg}", case.what));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------- the cases

#[test]
#[ignore = "needs root"]
fn malformed_and_incomplete_config() {
    if !require_root() {
        return;
    }
    let mut cases = Vec::new();
    let raw = |bytes: &'static [u8]| {
        move |ctx: &Ctx, p: &str| {
            let mut c = ctx.add(p);
            c.raw_stdin = Some(bytes.to_vec());
            c
        }
    };
    cases.extend(for_each(
        ALL,
        "truncated JSON",
        6,
        &["JSON"],
        raw(br#"{"cniVersion": "1.0.0", "name": "#),
    ));
    cases.extend(for_each(ALL, "empty stdin", 6, &[], raw(b"")));
    cases.extend(for_each(
        ALL,
        "a JSON array, not an object",
        6,
        &["object"],
        raw(b"[1, 2]"),
    ));
    cases.extend(for_each(
        ALL,
        "trailing garbage",
        6,
        &[],
        raw(br#"{"cniVersion": "1.0.0", "name": "n"} x"#),
    ));
    cases.extend(for_each(
        ALL,
        "not UTF-8",
        6,
        &[],
        raw(b"{\"cniVersion\": \"1.0.0\", \"name\": \"\xff\xfe\"}"),
    ));
    cases.extend(for_each(ALL, "missing name", 7, &["name"], |ctx, p| {
        CniCall::add(ctx.pod, with(ctx.conf(p), "/name", None))
    }));
    cases.extend(for_each(ALL, "empty name", 7, &["name"], |ctx, p| {
        CniCall::add(ctx.pod, with(ctx.conf(p), "/name", Some(json!(""))))
    }));
    cases.extend(for_each(ALL, "name with a slash", 7, &["a/b"], |ctx, p| {
        CniCall::add(ctx.pod, with(ctx.conf(p), "/name", Some(json!("a/b"))))
    }));
    cases.extend(for_each(
        ALL,
        "name not a string",
        7,
        &["name"],
        |ctx, p| CniCall::add(ctx.pod, with(ctx.conf(p), "/name", Some(json!(42)))),
    ));
    cases.extend(for_each(
        ALL,
        "missing cniVersion",
        1,
        &["cniVersion"],
        |ctx, p| CniCall::add(ctx.pod, with(ctx.conf(p), "/cniVersion", None)),
    ));
    cases.extend(for_each(
        ALL,
        "unknown cniVersion 9.9.9",
        1,
        &["9.9.9"],
        |ctx, p| {
            CniCall::add(
                ctx.pod,
                with(ctx.conf(p), "/cniVersion", Some(json!("9.9.9"))),
            )
        },
    ));
    cases.extend(for_each(
        ALL,
        "DEL with unknown cniVersion",
        1,
        &["9.9.9"],
        |ctx, p| {
            CniCall::del(
                ctx.pod,
                with(ctx.conf(p), "/cniVersion", Some(json!("9.9.9"))),
            )
        },
    ));
    run_cases(cases);
}

#[test]
#[ignore = "needs root"]
fn bad_environment() {
    if !require_root() {
        return;
    }
    let mut cases = Vec::new();
    for (bad, why) in [
        ("eth0123456789abc", "16 bytes"),
        ("a/b", "slash"),
        ("a:b", "colon"),
        ("a b", "space"),
        ("a\tb", "tab"),
        (".", "dot"),
        ("..", "dot-dot"),
        ("", "empty"),
    ] {
        cases.extend(for_each(
            ALL,
            &format!("CNI_IFNAME {why}"),
            4,
            &["CNI_IFNAME"],
            move |ctx, p| ctx.add(p).ifname(bad),
        ));
    }
    cases.extend(for_each(
        ALL,
        "DEL with a bad CNI_IFNAME",
        4,
        &["CNI_IFNAME"],
        |ctx, p| CniCall::del(ctx.pod, ctx.conf(p)).ifname("a/b"),
    ));
    cases.extend(for_each(
        ALL,
        "CNI_IFNAME unset",
        4,
        &["CNI_IFNAME"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.ifname = None;
            c
        },
    ));
    cases.extend(for_each(
        ALL,
        "empty CNI_CONTAINERID",
        3,
        &["CNI_CONTAINERID"],
        |ctx, p| ctx.add(p).container_id(""),
    ));
    cases.extend(for_each(
        ALL,
        "CNI_CONTAINERID unset",
        3,
        &["CNI_CONTAINERID"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.container_id = None;
            c
        },
    ));
    for bad in [
        "-leading-dash",
        "has space",
        "a/b",
        "../etc",
        "semi;colon",
        "ünïcode",
    ] {
        cases.extend(for_each(
            ALL,
            &format!("CNI_CONTAINERID {bad:?}"),
            4,
            &["CNI_CONTAINERID"],
            move |ctx, p| ctx.add(p).container_id(bad),
        ));
    }
    cases.extend(for_each(
        ALL,
        "DEL with an empty CNI_CONTAINERID",
        3,
        &["CNI_CONTAINERID"],
        |ctx, p| CniCall::del(ctx.pod, ctx.conf(p)).container_id(""),
    ));
    cases.extend(for_each(
        ALL,
        "unknown CNI_COMMAND",
        4,
        &["FOO"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.command = "FOO".into();
            c
        },
    ));
    cases.extend(for_each(
        ALL,
        "lower-case CNI_COMMAND",
        4,
        &["add"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.command = "add".into();
            c
        },
    ));
    cases.extend(for_each(
        ALL,
        "empty CNI_COMMAND",
        4,
        &["CNI_COMMAND"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.command = String::new();
            c
        },
    ));
    // CNI_NETNS
    cases.extend(for_each(
        ALL,
        "CNI_NETNS unset for ADD",
        4,
        &["CNI_NETNS"],
        |ctx, p| {
            let mut c = ctx.add(p);
            c.netns = None;
            c
        },
    ));
    cases.extend(for_each(
        ALL,
        "CNI_NETNS does not exist",
        4,
        &["/run/netns/wt-no-such-netns"],
        |ctx, p| ctx.add(p).netns("/run/netns/wt-no-such-netns"),
    ));
    cases.extend(for_each(
        ALL,
        "CNI_NETNS is a regular file",
        4,
        &["not a network namespace"],
        |ctx, p| {
            let file = ctx.data.join("not-a-netns");
            std::fs::write(&file, "").unwrap();
            ctx.add(p).netns(file.to_str().unwrap())
        },
    ));
    cases.extend(for_each(
        ALL,
        "CNI_NETNS is a directory",
        4,
        &["/tmp"],
        |ctx, p| ctx.add(p).netns("/tmp"),
    ));
    // The plugin's own UTS namespace: a namespace file it can open, of the wrong type.
    cases.extend(for_each(
        ALL,
        "CNI_NETNS is another kind of namespace",
        4,
        &["/proc/self/ns/uts", "not a network namespace"],
        |ctx, p| ctx.add(p).netns("/proc/self/ns/uts"),
    ));
    // The node's own netns: acting there would reconfigure the host
    // (loopback DEL downed the host's lo: kubernetes#100648).
    for cmd in ["ADD", "DEL", "CHECK"] {
        cases.extend(for_each(
            ALL,
            &format!("{cmd} with CNI_NETNS = the node's own netns"),
            4,
            &["own network namespace"],
            move |ctx, p| {
                let mut c = ctx.add(p).netns(ctx.node.path_str());
                c.command = cmd.into();
                if cmd == "CHECK" {
                    c.stdin["prevResult"] = json!({"cniVersion": "1.0.0"});
                }
                c
            },
        ));
    }
    cases.extend(for_each(
        &["bridge", "host-local"],
        "unknown CNI_ARGS key without IgnoreUnknown",
        4,
        &["FOO"],
        |ctx, p| ctx.add(p).cni_args("FOO=bar"),
    ));
    cases.extend(for_each(
        &["bridge", "host-local"],
        "CNI_ARGS item without '='",
        4,
        &["garbage"],
        |ctx, p| ctx.add(p).cni_args("IgnoreUnknown=1;garbage"),
    ));
    run_cases(cases);
}

#[test]
#[ignore = "needs root"]
fn version_gates() {
    if !require_root() {
        return;
    }
    let mut cases = Vec::new();
    for old in ["0.3.0", "0.3.1"] {
        cases.extend(for_each(
            ALL,
            &format!("CHECK at {old}"),
            1,
            &["CHECK", old],
            move |ctx, p| {
                let conf = with(ctx.conf(p), "/cniVersion", Some(json!(old)));
                CniCall::check(ctx.pod, conf)
            },
        ));
    }
    for cmd in ["GC", "STATUS"] {
        for old in ["1.0.0", "0.4.0"] {
            cases.extend(for_each(
                ALL,
                &format!("{cmd} at {old}"),
                1,
                &[cmd, old],
                move |ctx, p| {
                    let conf = with(ctx.conf(p), "/cniVersion", Some(json!(old)));
                    let mut c = CniCall::new(cmd, conf);
                    c.container_id = None;
                    c.ifname = None;
                    c
                },
            ));
        }
    }
    cases.extend(for_each(
        ALL,
        "versions the spec dropped (0.2.0)",
        1,
        &["0.2.0"],
        |ctx, p| {
            CniCall::add(
                ctx.pod,
                with(ctx.conf(p), "/cniVersion", Some(json!("0.2.0"))),
            )
        },
    ));
    run_cases(cases);
}

#[test]
#[ignore = "needs root"]
fn bad_bridge_config() {
    if !require_root() {
        return;
    }
    let bridge =
        |what: &str, code: u64, msg_has: &[&str], pointer: &'static str, value: Option<Value>| {
            case(what, "bridge", code, msg_has, move |ctx| {
                CniCall::add(ctx.pod, with(ctx.conf("bridge"), pointer, value.clone()))
            })
        };
    let cases = vec![
        bridge(
            "vlan above 4094",
            7,
            &["vlan", "5000"],
            "/vlan",
            Some(json!(5000)),
        ),
        bridge(
            "negative vlan",
            7,
            &["vlan", "-1"],
            "/vlan",
            Some(json!(-1)),
        ),
        bridge(
            "vlan is a string",
            6,
            &["vlan"],
            "/vlan",
            Some(json!("ten")),
        ),
        bridge(
            "mtu below the minimum",
            7,
            &["mtu"],
            "/mtu",
            Some(json!(10)),
        ),
        bridge(
            "bridge name too long",
            7,
            &["wtbr0123456789abc"],
            "/bridge",
            Some(json!("wtbr0123456789abc")),
        ),
        bridge(
            "bridge name with a slash",
            7,
            &["a/b"],
            "/bridge",
            Some(json!("a/b")),
        ),
        bridge(
            "unknown ipMasqBackend",
            7,
            &["ipMasqBackend", "pf"],
            "/ipMasqBackend",
            Some(json!("pf")),
        ),
        bridge(
            "ipam is not an object",
            7,
            &["ipam"],
            "/ipam",
            Some(json!("host-local")),
        ),
        bridge("ipam.type missing", 7, &["ipam.type"], "/ipam/type", None),
        bridge(
            "ipam.type empty",
            7,
            &["ipam.type"],
            "/ipam/type",
            Some(json!("")),
        ),
        bridge(
            "ipam.type is a path",
            7,
            &["../../../bin/sh"],
            "/ipam/type",
            Some(json!("../../../bin/sh")),
        ),
        bridge(
            "ipam.type not on CNI_PATH",
            7,
            &["no-such-ipam", "not found"],
            "/ipam/type",
            Some(json!("no-such-ipam")),
        ),
        bridge(
            "invalid runtimeConfig.mac",
            7,
            &["runtimeConfig.mac", "zz:zz"],
            "/runtimeConfig",
            Some(json!({"mac": "zz:zz:zz:zz:zz:zz"})),
        ),
        bridge(
            "multicast runtimeConfig.mac",
            7,
            &["runtimeConfig.mac", "01:00:5e"],
            "/runtimeConfig",
            Some(json!({"mac": "01:00:5e:00:00:01"})),
        ),
        bridge(
            "short args.cni.mac",
            7,
            &["args.cni.mac"],
            "/args",
            Some(json!({"cni": {"mac": "0a:58:0a"}})),
        ),
        bridge(
            "bad CIDR in the ipam subnet (from host-local)",
            7,
            &["10.244.20.0/33"],
            "/ipam/ranges",
            Some(json!([[{"subnet": "10.244.20.0/33"}]])),
        ),
        bridge(
            "ipam subnet is not a CIDR",
            7,
            &["not-a-cidr"],
            "/ipam/ranges",
            Some(json!([[{"subnet": "not-a-cidr"}]])),
        ),
        bridge("ipam ranges missing", 7, &["range"], "/ipam/ranges", None),
        case(
            "hairpinMode with promiscMode",
            "bridge",
            7,
            &["hairpinMode", "promiscMode"],
            |ctx| {
                let conf = with(ctx.conf("bridge"), "/hairpinMode", Some(json!(true)));
                CniCall::add(ctx.pod, with(conf, "/promiscMode", Some(json!(true))))
            },
        ),
        case(
            "disableContainerInterface with ipam",
            "bridge",
            7,
            &["disableContainerInterface"],
            |ctx| {
                CniCall::add(
                    ctx.pod,
                    with(
                        ctx.conf("bridge"),
                        "/disableContainerInterface",
                        Some(json!(true)),
                    ),
                )
            },
        ),
        case(
            "invalid CNI_ARGS MAC",
            "bridge",
            7,
            &["MAC", "nope"],
            |ctx| ctx.add("bridge").cni_args("IgnoreUnknown=1;MAC=nope"),
        ),
        case(
            "IPAM binary missing from CNI_PATH",
            "bridge",
            7,
            &["host-local"],
            |ctx| {
                let empty = ctx.data.join("empty-cni-path");
                std::fs::create_dir_all(&empty).unwrap();
                ctx.add("bridge").cni_path(&[&empty])
            },
        ),
        case("CNI_PATH unset", "bridge", 4, &["CNI_PATH"], |ctx| {
            let mut c = ctx.add("bridge");
            c.cni_path = None;
            c
        }),
        case("CNI_PATH empty", "bridge", 4, &["CNI_PATH"], |ctx| {
            let mut c = ctx.add("bridge");
            c.cni_path = Some(String::new());
            c
        }),
        case(
            "the bridge name is taken by a veth",
            "bridge",
            7,
            &["wtnotabr"],
            |ctx| {
                ctx.node.sh("ip link show wtnotabr >/dev/null 2>&1 || ip link add wtnotabr type veth peer name wtnotabrp");
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("bridge"), "/bridge", Some(json!("wtnotabr"))),
                )
            },
        ),
        case(
            "requested IP outside the range",
            "bridge",
            102,
            &["10.244.99.9"],
            |ctx| ctx.add("bridge").cni_args("IgnoreUnknown=1;IP=10.244.99.9"),
        ),
        case("exhausted range", "bridge", 101, &["10.244.22."], |ctx| {
            let conf = with(
                ctx.conf("bridge"),
                "/ipam/ranges",
                Some(json!([[{"subnet": "10.244.22.0/30"}]])),
            );
            fill(ctx, &conf);
            CniCall::add(ctx.pod, conf)
        }),
        case(
            "the container interface already exists",
            "bridge",
            103,
            &["eth0"],
            |ctx| {
                ctx.pod.sh("ip link add eth0 type veth peer name eth0p");
                ctx.add("bridge")
            },
        ),
        // Failures after IPAM allocated: the reservation must be released
        // and the veth removed again.
        case(
            "a route the kernel rejects (unreachable gateway)",
            "bridge",
            100,
            &["10.250.0.0/16"],
            |ctx| {
                let routes =
                    json!([{"dst": "0.0.0.0/0"}, {"dst": "10.250.0.0/16", "gw": "192.0.2.1"}]);
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("bridge"), "/ipam/routes", Some(routes)),
                )
            },
        ),
        case(
            "the existing bridge (up) has another address in the subnet",
            "bridge",
            7,
            &["wtconfl", "forceAddress"],
            |ctx| {
                ctx.node.sh("ip link show wtconfl >/dev/null 2>&1 || \
                         (ip link add wtconfl type bridge && ip addr add 10.244.20.200/24 dev wtconfl && ip link set wtconfl up)");
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("bridge"), "/bridge", Some(json!("wtconfl"))),
                )
            },
        ),
        // An administrator's bridge that is still down is not ours to delete
        // when the ADD fails.
        case(
            "the existing bridge (down) has another address in the subnet",
            "bridge",
            7,
            &["wtconfd", "forceAddress"],
            |ctx| {
                ctx.node.sh("ip link show wtconfd >/dev/null 2>&1 || \
                         (ip link add wtconfd type bridge && ip addr add 10.244.20.201/24 dev wtconfd)");
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("bridge"), "/bridge", Some(json!("wtconfd"))),
                )
            },
        ),
        case(
            "CHECK without prevResult",
            "bridge",
            7,
            &["prevResult"],
            |ctx| CniCall::check(ctx.pod, ctx.conf("bridge")),
        ),
        case(
            "CHECK with a malformed prevResult",
            "bridge",
            6,
            &["prevResult"],
            |ctx| {
                CniCall::check(
                    ctx.pod,
                    with(
                        ctx.conf("bridge"),
                        "/prevResult",
                        Some(json!({"cniVersion": "1.0.0", "ips": "nope"})),
                    ),
                )
            },
        ),
    ];
    run_cases(cases);
}

/// Reserves every address of `conf`'s range for another container, with
/// host-local directly.
fn fill(ctx: &Ctx, conf: &Value) {
    let filler = Netns::new();
    for _ in 0..300 {
        let out = CniCall::add(&filler, conf.clone())
            .container_id(&format!("filler{}", reservation_files(ctx.data).len()))
            .run_in(ctx.node, &plugin_path("host-local"));
        if !out.success() {
            break;
        }
    }
}

#[test]
#[ignore = "needs root"]
fn bad_host_local_config() {
    if !require_root() {
        return;
    }
    let hl =
        |what: &str, code: u64, msg_has: &[&str], pointer: &'static str, value: Option<Value>| {
            case(what, "host-local", code, msg_has, move |ctx| {
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("host-local"), pointer, value.clone()),
                )
            })
        };
    let range = |r: Value| Some(json!([[r]]));
    let cases = vec![
        hl("ipam missing", 7, &["ipam"], "/ipam", None),
        hl("ranges missing", 7, &["range"], "/ipam/ranges", None),
        hl(
            "ranges empty",
            7,
            &["range"],
            "/ipam/ranges",
            Some(json!([])),
        ),
        hl(
            "an empty range set",
            7,
            &["range set"],
            "/ipam/ranges",
            Some(json!([[]])),
        ),
        hl(
            "prefix too long",
            7,
            &["10.244.21.0/33"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.0/33"})),
        ),
        hl(
            "subnet too small (/31)",
            7,
            &["10.244.21.0/31"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.0/31"})),
        ),
        hl(
            "host bits set",
            7,
            &["10.244.21.5/24"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.5/24"})),
        ),
        hl(
            "subnet is not a CIDR",
            7,
            &["banana"],
            "/ipam/ranges",
            range(json!({"subnet": "banana"})),
        ),
        hl(
            "subnet missing",
            7,
            &["subnet"],
            "/ipam/ranges",
            range(json!({"rangeStart": "10.244.21.5"})),
        ),
        hl(
            "rangeStart outside the subnet",
            7,
            &["rangeStart", "10.244.99.5"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.0/24", "rangeStart": "10.244.99.5"})),
        ),
        hl(
            "rangeStart after rangeEnd",
            7,
            &["rangeStart"],
            "/ipam/ranges",
            range(
                json!({"subnet": "10.244.21.0/24", "rangeStart": "10.244.21.50", "rangeEnd": "10.244.21.10"}),
            ),
        ),
        hl(
            "rangeEnd not an IP",
            7,
            &["rangeEnd"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.0/24", "rangeEnd": "10.244.21"})),
        ),
        hl(
            "gateway of the wrong family",
            7,
            &["gateway"],
            "/ipam/ranges",
            range(json!({"subnet": "10.244.21.0/24", "gateway": "fd00::1"})),
        ),
        hl(
            "overlapping range sets",
            7,
            &["overlaps"],
            "/ipam/ranges",
            Some(json!([[{"subnet": "10.244.21.0/24"}], [{"subnet": "10.244.21.128/25"}]])),
        ),
        hl(
            "route dst not a CIDR",
            7,
            &["routes", "nope"],
            "/ipam/routes",
            Some(json!([{"dst": "nope"}])),
        ),
        hl(
            "invalid runtimeConfig.ips",
            7,
            &["runtimeConfig.ips"],
            "/runtimeConfig",
            Some(json!({"ips": ["10.244.21.7/99"]})),
        ),
        hl(
            "args.cni.ips not a list",
            7,
            &["args.cni.ips"],
            "/args",
            Some(json!({"cni": {"ips": "10.244.21.7"}})),
        ),
        hl(
            "resolvConf missing",
            5,
            &["/nonexistent/resolv.conf"],
            "/ipam/resolvConf",
            Some(json!("/nonexistent/resolv.conf")),
        ),
        case(
            "invalid CNI_ARGS IP",
            "host-local",
            4,
            &["IP", "nope"],
            |ctx| ctx.add("host-local").cni_args("IP=nope"),
        ),
        case(
            "requested IP is the gateway",
            "host-local",
            102,
            &["10.244.21.1"],
            |ctx| ctx.add("host-local").cni_args("IP=10.244.21.1"),
        ),
        case(
            "requested IP outside every range",
            "host-local",
            102,
            &["10.244.99.9"],
            |ctx| ctx.add("host-local").cni_args("IP=10.244.99.9"),
        ),
        case(
            "requested IP already taken",
            "host-local",
            102,
            &["10.244.21.9"],
            |ctx| {
                CniCall::add(&Netns::new(), ctx.conf("host-local"))
                    .container_id("owner")
                    .cni_args("IP=10.244.21.9")
                    .run_in(ctx.node, &plugin_path("host-local"))
                    .expect_ok();
                ctx.add("host-local").cni_args("IP=10.244.21.9")
            },
        ),
        case(
            "dataDir is a regular file",
            "host-local",
            5,
            &["not-a-dir"],
            |ctx| {
                let file = ctx.data.join("not-a-dir");
                std::fs::write(&file, "").unwrap();
                CniCall::add(
                    ctx.pod,
                    with(ctx.conf("host-local"), "/ipam/dataDir", Some(json!(file))),
                )
            },
        ),
        case(
            "exhausted range",
            "host-local",
            101,
            &["10.244.23."],
            move |ctx| {
                let conf = with(
                    ctx.conf("host-local"),
                    "/ipam/ranges",
                    range(json!({"subnet": "10.244.23.0/29"})),
                );
                fill(ctx, &conf);
                CniCall::add(ctx.pod, conf)
            },
        ),
        case(
            "CHECK without a reservation",
            "host-local",
            105,
            &["no address"],
            |ctx| CniCall::check(ctx.pod, ctx.conf("host-local")),
        ),
    ];
    run_cases(cases);
}

#[test]
#[ignore = "needs root"]
fn bad_loopback_state() {
    if !require_root() {
        return;
    }
    let cases = vec![
        case(
            "lo carries a non-loopback address",
            "loopback",
            7,
            &["10.244.24.9"],
            |ctx| {
                ctx.pod.sh("ip addr add 10.244.24.9/32 dev lo");
                ctx.add("loopback")
            },
        ),
        case("CHECK with lo down", "loopback", 105, &["lo"], |ctx| {
            CniCall::check(
                ctx.pod,
                with(
                    ctx.conf("loopback"),
                    "/prevResult",
                    Some(json!({"cniVersion": "1.0.0"})),
                ),
            )
        }),
    ];
    run_cases(cases);
}

/// Inputs built to exhaust a parser: deep nesting, and a config of tens of
/// megabytes. They must be refused as undecodable (code 6, exit 1), never
/// crash the plugin (a stack overflow would be a SIGSEGV/SIGABRT).
#[test]
#[ignore = "needs root"]
fn huge_and_deeply_nested_input() {
    if !require_root() {
        return;
    }
    const DEPTH: usize = 100_000;
    let nested = || format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    let mut cases = Vec::new();
    for cmd in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
        let doc = nested();
        cases.extend(for_each(
            ALL,
            &format!("{cmd}: 100k nested arrays"),
            6,
            &[],
            move |ctx, p| {
                let mut c = ctx.add(p);
                c.command = cmd.into();
                c.raw_stdin = Some(doc.clone().into_bytes());
                c
            },
        ));
    }
    let inner = nested();
    cases.extend(for_each(
        ALL,
        "100k nested arrays inside a valid config",
        6,
        &[],
        move |ctx, p| {
            let mut text = serde_json::to_string(&ctx.conf(p)).unwrap();
            text.pop();
            text.push_str(&format!(r#","junk":{inner}}}"#));
            let mut c = ctx.add(p);
            c.raw_stdin = Some(text.into_bytes());
            c
        },
    ));
    let objects = format!("{}{}", r#"{"a":"#.repeat(DEPTH), "}".repeat(DEPTH));
    cases.extend(for_each(
        ALL,
        "100k nested objects",
        6,
        &[],
        move |ctx, p| {
            let mut c = ctx.add(p);
            c.raw_stdin = Some(objects.clone().into_bytes());
            c
        },
    ));
    cases.extend(for_each(
        ALL,
        "a 32 MiB config cut short",
        6,
        &[],
        |ctx, p| {
            let mut text = serde_json::to_string(&ctx.conf(p)).unwrap();
            text.pop();
            text.push_str(r#","junk":""#);
            text.push_str(&"A".repeat(32 << 20));
            let mut c = ctx.add(p);
            c.raw_stdin = Some(text.into_bytes());
            c
        },
    ));
    run_cases(cases);
}

#[test]
#[ignore = "needs root"]
fn version_ignores_garbage_on_stdin() {
    if !require_root() {
        return;
    }
    // VERSION needs no config: whatever is on stdin, it answers.
    let node = Node::new();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for plugin in ALL {
        for stdin in [nested.as_bytes(), b"{not json".as_slice(), b"".as_slice()] {
            let mut call = CniCall::version(Value::Null);
            call.raw_stdin = Some(stdin.to_vec());
            let v = call.run_in(&node, &plugin_path(plugin)).expect_ok();
            assert_eq!(v["cniVersion"], "1.1.0", "{plugin}: {v}");
            assert_eq!(v["supportedVersions"], json!(SUPPORTED), "{plugin}: {v}");
        }
    }
}
