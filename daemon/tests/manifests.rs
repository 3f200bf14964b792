//! The deployment files in conf/ parse, agree with each other, and refer
//! only to binaries, flags and files that exist. No root needed. They live
//! in weftd's package so that `cargo test` builds the weftd and
//! weft-install they run, also without a prior release build.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("weft-manifests-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn conf(name: &str) -> PathBuf {
    workspace_root().join("conf").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(conf(name)).unwrap_or_else(|e| panic!("read conf/{name}: {e}"))
}

fn json_file(name: &str) -> Json {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("conf/{name} is not JSON: {e}"))
}

fn documents() -> Vec<Yaml> {
    let text = read("kube-weft.yml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).expect("kube-weft.yml: a document does not parse"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in kube-weft.yml"))
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Binaries the workspace builds, from `cargo metadata`.
fn workspace_binaries() -> Vec<String> {
    // cargo sets CARGO for the tests it runs.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    let meta: Json = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        // weft-tests' binaries (the weft-cri client) are test tools, not shipped.
        .filter(|p| p["name"] != "weft-tests")
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect()
}

#[test]
fn every_document_parses_and_configmap_matches_conf_files() {
    let docs = documents();
    assert_eq!(
        docs.iter()
            .filter_map(|d| d["kind"].as_str())
            .collect::<Vec<_>>(),
        ["Namespace", "ConfigMap", "DaemonSet"]
    );
    let data = &kind(&docs, "ConfigMap")["data"];
    let embedded: Json =
        serde_json::from_str(data["cni-conf.json"].as_str().expect("cni-conf.json"))
            .expect("cni-conf.json is JSON");
    assert_eq!(
        embedded,
        json_file("10-weft.conflist"),
        "ConfigMap cni-conf.json differs from conf/10-weft.conflist"
    );
    let net: Json = serde_json::from_str(data["net-conf.json"].as_str().expect("net-conf.json"))
        .expect("net-conf.json is JSON");
    assert_eq!(net, json_file("net-conf.json"));
    assert!(data["etcd-endpoints"].as_str().is_some());
}

#[test]
fn conflist_is_kube_flannels_unchanged() {
    let conflist = json_file("10-weft.conflist");
    assert_eq!(conflist["plugins"][0]["type"], "flannel");
    assert_eq!(
        conflist["plugins"][0]["delegate"],
        serde_json::json!({"hairpinMode": true, "isDefaultGateway": true})
    );
    assert_eq!(conflist["plugins"][1]["type"], "portmap");
    assert_eq!(json_file("net-conf.json")["Backend"]["Type"], "vxlan");
}

#[test]
fn daemonset_runs_weftd_with_its_real_flags_and_installs_real_binaries() {
    let docs = documents();
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let binaries = workspace_binaries();

    let init = &pod["initContainers"][0];
    let install = strings(&init["command"]);
    assert_eq!(install[0], "/opt/weft/bin/weft-install");
    // No names: weft-install installs every plugin the image carries.
    let plugins: Vec<&String> = install
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let installer = "weft-install".to_string();
    for p in plugins.iter().copied().chain([&installer]) {
        assert!(
            binaries.contains(p),
            "the init container installs {p}, which the workspace does not build"
        );
    }

    let weftd = &pod["containers"][0];
    let caps = strings(&weftd["securityContext"]["capabilities"]["add"]);
    assert!(
        caps.contains(&"NET_ADMIN".into()) && caps.contains(&"NET_RAW".into()),
        "{caps:?}"
    );
    let command = strings(&weftd["command"]);
    assert_eq!(command[0], "/opt/weft/bin/weftd");
    let help = Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--help")
        .output()
        .expect("run weftd --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in command.iter().skip(1) {
        let name = flag.split('=').next().unwrap_or(flag);
        assert!(help.contains(name), "weftd does not know {name}");
    }
    for env in weftd["env"].as_sequence().expect("env") {
        let name = env["name"].as_str().expect("env name");
        let flag = name
            .strip_prefix("FLANNELD_")
            .expect("weftd env is FLANNELD_*")
            .to_lowercase()
            .replace('_', "-");
        assert!(
            help.contains(&format!("--{flag}")),
            "{name} maps to --{flag}, which weftd does not know"
        );
    }
    // Every mounted volume is declared.
    let declared: Vec<&str> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for c in [init, weftd] {
        for m in c["volumeMounts"].as_sequence().expect("volumeMounts") {
            let name = m["name"].as_str().expect("mount name");
            assert!(
                declared.contains(&name),
                "volume {name} is mounted but not declared"
            );
        }
    }
}

#[test]
fn containerfile_copies_files_that_exist() {
    let text = read("Containerfile");
    let binaries = workspace_binaries();
    let mut copied = Vec::new();
    for line in text.lines().map(str::trim) {
        let line = line
            .strip_prefix("COPY")
            .unwrap_or(line)
            .trim()
            .trim_end_matches('\\')
            .trim();
        for word in line
            .split_whitespace()
            .filter(|w| w.starts_with("target/") || w.starts_with("conf/"))
        {
            if let Some(bin) = word.strip_prefix("target/x86_64-unknown-linux-gnu/release/") {
                assert!(
                    binaries.contains(&bin.to_string()),
                    "Containerfile copies {bin}, which the workspace does not build"
                );
                copied.push(bin.to_string());
            } else {
                assert!(
                    workspace_root().join(word).exists(),
                    "Containerfile copies {word}, which does not exist"
                );
            }
        }
    }
    // The image carries every binary the workspace builds (weft-install
    // installs what the image carries, so a plugin left out is never installed).
    for bin in &binaries {
        assert!(copied.contains(bin), "the image does not carry {bin}");
    }
    // Every CNI plugin weft ships, by name, so a renamed crate cannot drop one.
    for plugin in [
        "bridge",
        "host-local",
        "static",
        "loopback",
        "flannel",
        "portmap",
        "bandwidth",
        "tuning",
    ] {
        assert!(
            copied.iter().any(|c| c == plugin),
            "the image does not carry {plugin}"
        );
    }
}

/// weft-install without names installs exactly the executables of
/// --bin-src but weftd and itself; a named plugin that is missing fails and
/// names it; the conflist must be JSON.
#[test]
fn weft_install_installs_what_the_image_carries() {
    use std::os::unix::fs::PermissionsExt;
    let src = TempDir::new("src");
    let dst = TempDir::new("dst");
    for (name, mode) in [
        ("bridge", 0o755),
        ("static", 0o755),
        ("weftd", 0o755),
        ("weft-install", 0o755),
        ("README", 0o644),
    ] {
        std::fs::write(src.join(name), name).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    std::fs::write(src.join("conf.json"), "{}").unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft-install"))
            .arg(format!("--bin-src={}", src.0.display()))
            .arg(format!("--bin-dst={}", dst.join("bin").display()))
            .arg(format!("--conf-src={}", src.join("conf.json").display()))
            .arg(format!(
                "--conf-dst={}",
                dst.join("net.d/10-weft.conflist").display()
            ))
            .args(extra)
            .output()
            .expect("run weft-install")
    };
    let out = run(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut installed: Vec<String> = std::fs::read_dir(dst.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    installed.sort();
    assert_eq!(installed, ["bridge", "static"]);
    let mode = std::fs::metadata(dst.join("bin/static"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(dst.join("net.d/10-weft.conflist").exists());

    let out = run(&["bridge", "portmap"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("portmap"), "{err}");
    std::fs::write(src.join("conf.json"), "not json").unwrap();
    assert!(!run(&[]).status.success());
}
