//! Store interoperability with the Go reference host-local
//! (`/usr/lib/cni/host-local`, Debian containernetworking-plugins): both
//! binaries run as subprocesses on one dataDir, each reading what the other
//! wrote. Needs root (a network namespace for CNI_NETNS): the tests are
//! `#[ignore = "needs root"]` and use the shared harness's root check and
//! guards (weft_tests).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use weft_tests::{require_root, root_required_by_env, Netns, TempDir};

const GO: &str = "/usr/lib/cni/host-local";
const WEFT: &str = env!("CARGO_BIN_EXE_host-local");

/// A netns and a dataDir, or None (test skipped) when not root / no Go plugin.
fn setup() -> Option<(Netns, TempDir)> {
    if !require_root() {
        return None;
    }
    if !Path::new(GO).exists() {
        assert!(
            !root_required_by_env(),
            "WEFT_REQUIRE_ROOT=1 but {GO} is missing (apt-get install containernetworking-plugins)"
        );
        weft_tests::note(&format!("skipping: {GO} is missing"));
        return None;
    }
    Some((Netns::new(), TempDir::new()))
}

struct Out {
    ok: bool,
    json: Option<Value>,
    stderr: String,
}

fn run(bin: &str, cmd: &str, ns: &Netns, id: &str, ifname: &str, conf: &Value) -> Out {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", ifname)
        .env("CNI_NETNS", &ns.path)
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    Out {
        ok: out.status.success(),
        json: serde_json::from_str(text.trim()).ok(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn add(bin: &str, ns: &Netns, id: &str, conf: &Value) -> Vec<String> {
    let o = run(bin, "ADD", ns, id, "eth0", conf);
    assert!(o.ok, "{bin} ADD {id} failed: {:?} {}", o.json, o.stderr);
    let v = o.json.unwrap();
    v["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap().to_string())
        .collect()
}

fn ok(bin: &str, cmd: &str, ns: &Netns, id: &str, conf: &Value) {
    let o = run(bin, cmd, ns, id, "eth0", conf);
    assert!(o.ok, "{bin} {cmd} {id} failed: {:?} {}", o.json, o.stderr);
}

fn conf(dir: &Path, ranges: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "interop",
        "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": dir.to_string_lossy(), "ranges": ranges}
    })
}

#[test]
#[ignore = "needs root"]
fn stores_are_shared_both_ways() {
    let Some((ns, tmp)) = setup() else {
        return;
    };
    let conf = conf(
        tmp.path(),
        json!([[{"subnet": "10.77.0.0/29"}], [{"subnet": "fd77::/120"}]]),
    );
    let store = tmp.path().join("interop");

    // Go allocates first; weft continues after Go's last_reserved_ip.N.
    assert_eq!(add(GO, &ns, "go1", &conf), ["10.77.0.2/29", "fd77::2/120"]);
    assert_eq!(
        add(WEFT, &ns, "weft1", &conf),
        ["10.77.0.3/29", "fd77::3/120"]
    );
    // ...and Go continues after ours.
    assert_eq!(add(GO, &ns, "go2", &conf), ["10.77.0.4/29", "fd77::4/120"]);
    assert_eq!(
        add(WEFT, &ns, "weft2", &conf),
        ["10.77.0.5/29", "fd77::5/120"]
    );

    // Byte-identical files from both.
    assert_eq!(fs::read(store.join("10.77.0.2")).unwrap(), b"go1\r\neth0");
    assert_eq!(fs::read(store.join("10.77.0.3")).unwrap(), b"weft1\r\neth0");
    assert_eq!(
        fs::read_to_string(store.join("last_reserved_ip.0")).unwrap(),
        "10.77.0.5"
    );
    assert_eq!(
        fs::read_to_string(store.join("last_reserved_ip.1")).unwrap(),
        "fd77::5"
    );

    // Each CHECKs the other's reservations.
    ok(GO, "CHECK", &ns, "weft1", &conf);
    ok(WEFT, "CHECK", &ns, "go1", &conf);
    assert!(!run(GO, "CHECK", &ns, "nobody", "eth0", &conf).ok);
    assert!(!run(WEFT, "CHECK", &ns, "nobody", "eth0", &conf).ok);

    // Re-ADD of an attachment Go made: the reference refuses ("duplicate
    // allocation"), weft returns the addresses it already holds.
    let again = run(GO, "ADD", &ns, "go2", "eth0", &conf);
    assert!(
        !again.ok,
        "the reference now accepts duplicate ADDs: {:?}",
        again.json
    );
    assert_eq!(
        add(WEFT, &ns, "go2", &conf),
        ["10.77.0.4/29", "fd77::4/120"]
    );

    // Each DELs the other's reservations.
    ok(WEFT, "DEL", &ns, "go1", &conf);
    ok(GO, "DEL", &ns, "weft1", &conf);
    for gone in ["10.77.0.2", "fd77::2", "10.77.0.3", "fd77::3"] {
        assert!(!store.join(gone).exists(), "{gone} still reserved");
    }
    // Go's legacy id-only files are released by weft's DEL.
    fs::write(store.join("10.77.0.6"), "legacy").unwrap();
    ok(WEFT, "CHECK", &ns, "legacy", &conf);
    ok(WEFT, "DEL", &ns, "legacy", &conf);
    assert!(!store.join("10.77.0.6").exists());

    // The freed addresses are found again, round-robin, by either side.
    assert_eq!(
        add(WEFT, &ns, "weft3", &conf),
        ["10.77.0.6/29", "fd77::6/120"]
    );
    assert_eq!(add(GO, &ns, "go3", &conf), ["10.77.0.2/29", "fd77::7/120"]);
    assert_eq!(
        add(WEFT, &ns, "weft4", &conf),
        ["10.77.0.3/29", "fd77::8/120"]
    );

    // Both agree the v4 set is now full (.2-.6 taken; .1 is the gateway).
    let full_weft = run(WEFT, "ADD", &ns, "x1", "eth0", &conf);
    assert!(!full_weft.ok);
    assert_eq!(
        full_weft.json.as_ref().unwrap()["code"],
        101,
        "{:?}",
        full_weft.json
    );
    assert!(!run(GO, "ADD", &ns, "x2", "eth0", &conf).ok);
    // Neither left anything of the failed ADDs behind (the v6 set had room).
    for f in fs::read_dir(&store).unwrap() {
        let content = fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        assert!(
            !content.starts_with("x1") && !content.starts_with("x2"),
            "leftover {content:?}"
        );
    }

    // DEL is idempotent on both.
    ok(WEFT, "DEL", &ns, "go3", &conf);
    ok(WEFT, "DEL", &ns, "go3", &conf);
    ok(GO, "DEL", &ns, "go3", &conf);
}

#[test]
#[ignore = "needs root"]
fn requested_ips_are_honoured_by_both() {
    let Some((ns, tmp)) = setup() else {
        return;
    };
    let mut conf = conf(tmp.path(), json!([[{"subnet": "10.78.0.0/24"}]]));
    conf["runtimeConfig"] = json!({"ips": ["10.78.0.50/24"]});
    assert_eq!(add(GO, &ns, "go1", &conf), ["10.78.0.50/24"]);
    // weft sees Go's reservation of the requested address.
    let o = run(WEFT, "ADD", &ns, "weft1", "eth0", &conf);
    assert!(!o.ok);
    assert_eq!(o.json.as_ref().unwrap()["code"], 102, "{:?}", o.json);
    conf["runtimeConfig"] = json!({"ips": ["10.78.0.51"]});
    assert_eq!(add(WEFT, &ns, "weft1", &conf), ["10.78.0.51/24"]);
    assert!(!run(GO, "ADD", &ns, "go2", "eth0", &conf).ok);
}

#[test]
#[ignore = "needs root"]
fn concurrent_go_and_weft_never_share_an_address() {
    let Some((ns, tmp)) = setup() else {
        return;
    };
    // 10.79.0.0/28: .2-.14 are allocatable (13 addresses), 20 contenders.
    let conf = conf(tmp.path(), json!([[{"subnet": "10.79.0.0/28"}]]));
    let conf_text = conf.to_string();
    let children: Vec<(String, std::process::Child)> = (0..20)
        .map(|i| {
            let bin = if i % 2 == 0 { GO } else { WEFT };
            let id = format!("race{i}");
            let mut child = Command::new(bin)
                .env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", &id)
                .env("CNI_IFNAME", "eth0")
                .env("CNI_NETNS", &ns.path)
                .env("CNI_PATH", "/usr/lib/cni")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(conf_text.as_bytes())
                .unwrap();
            (id, child)
        })
        .collect();
    let mut got: Vec<(String, String)> = Vec::new();
    for (id, child) in children {
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let addr = v["ips"][0]["address"].as_str().unwrap();
            got.push((id, addr.split('/').next().unwrap().to_string()));
        }
    }
    assert_eq!(got.len(), 13, "{got:?}");
    let mut addrs: Vec<&String> = got.iter().map(|(_, a)| a).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 13, "an address was handed out twice: {got:?}");
    let store = tmp.path().join("interop");
    for (id, addr) in &got {
        assert_eq!(
            fs::read_to_string(store.join(addr)).unwrap(),
            format!("{id}\r\neth0")
        );
    }
    let files = fs::read_dir(&store)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("10.")
        })
        .count();
    assert_eq!(files, 13);
}
