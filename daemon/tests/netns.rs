//! Runs the shell integration tests (netns.sh, dualstack.sh, tls.sh) against the weftd
//! built for this test run. They need root plus etcd, curl, python3,
//! nsenter, iproute2, ping, nft, iptables (and openssl for tls.sh); without
//! root or with a tool missing they skip and say why, or fail when
//! WEFT_REQUIRE_ROOT=1.

use std::path::Path;
use std::process::Command;

fn missing(tools: &[&str]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| {
            !std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
                .unwrap_or(false)
        })
        .map(|t| t.to_string())
        .collect()
}

fn run_script(name: &str, tools: &[&str]) -> Result<(), String> {
    if !weft_tests::require_root() {
        return Ok(());
    }
    let required = weft_tests::root_required_by_env();
    let miss = missing(tools);
    if !miss.is_empty() {
        if required {
            return Err(format!(
                "{name} needs: {} (WEFT_REQUIRE_ROOT=1)",
                miss.join(" ")
            ));
        }
        eprintln!("skipping {name}: missing tools: {}", miss.join(" "));
        return Ok(());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name);
    let out = Command::new("bash")
        .arg(&script)
        .arg(env!("CARGO_BIN_EXE_weftd"))
        .output()
        .map_err(|e| format!("running {name}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("{name} failed:\n{text}"));
    }
    eprintln!("{text}");
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn weftd_in_network_namespaces() {
    let r = run_script(
        "netns.sh",
        &[
            "etcd", "curl", "python3", "nsenter", "ip", "bridge", "ping", "nft", "iptables",
        ],
    );
    assert_eq!(r, Ok(()));
}

#[test]
#[ignore = "needs root"]
fn weftd_dual_stack_in_network_namespaces() {
    let r = run_script(
        "dualstack.sh",
        &[
            "etcd", "curl", "python3", "nsenter", "ip", "bridge", "ping", "nft",
        ],
    );
    assert_eq!(r, Ok(()));
}

#[test]
#[ignore = "needs root"]
fn weftd_with_etcd_mtls() {
    let r = run_script("tls.sh", &["etcd", "curl", "nsenter", "ip", "openssl"]);
    assert_eq!(r, Ok(()));
}
