//! static: IPAM that hands out the addresses, routes and DNS it is given
//! (config, CNI_ARGS, `args.cni.ips`, `runtimeConfig.ips`; see `config.rs`),
//! config-compatible with the reference plugin. It allocates nothing, so
//! it keeps no state:
//!
//! - ADD: the merged addresses (no interface index), routes and dns.
//! - DEL, GC: nothing to release; DEL succeeds on any decodable config.
//! - CHECK: every address must be in prevResult with its prefix, and with
//!   the configured gateway, or else one inside its subnet (the reference
//!   passes when an address is absent or its prefix differs).
//! - STATUS: ready whenever the config is valid.

mod config;

use weft_cni::{CniResult, Error, ErrorCode, IpConfig, Plugin, Request};

use config::StaticConfig;

struct Static;

impl Plugin for Static {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = StaticConfig::load(req)?;
        Ok(CniResult {
            interfaces: Vec::new(),
            ips: conf.addresses,
            routes: conf.routes,
            dns: conf.dns,
        })
    }

    fn del(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = StaticConfig::load(req)?;
        let prev = req
            .prev_result()?
            .ok_or_else(|| Error::config("CHECK needs prevResult, and the config has none"))?;
        conf.addresses
            .iter()
            .try_for_each(|want| check_address(want, &prev.ips, &req.ifname))
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        StaticConfig::load(req).map(drop)
    }
}

fn check_address(want: &IpConfig, have: &[IpConfig], ifname: &str) -> Result<(), Error> {
    let failed = |what: String| {
        Err(Error::new(
            ErrorCode::CheckFailed,
            format!("static: {what} (interface {ifname})"),
        ))
    };
    let ip = want.address.ip();
    let Some(got) = have.iter().find(|c| c.address.ip() == ip) else {
        return failed(format!("address {} is not in prevResult", want.address));
    };
    if got.address.prefix() != want.address.prefix() {
        return failed(format!(
            "prevResult has {}, the config {}",
            got.address, want.address
        ));
    }
    match (want.gateway, got.gateway) {
        (Some(w), g) if g != Some(w) => failed(format!(
            "prevResult's gateway for {ip} is {}, the config's {w}",
            g.map_or("none".to_string(), |g| g.to_string())
        )),
        (None, Some(g)) if !got.address.contains(g) => failed(format!(
            "prevResult's gateway {g} for {} is outside its subnet",
            got.address
        )),
        _ => Ok(()),
    }
}

fn main() -> std::process::ExitCode {
    weft_cni::skel::main(&Static)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use weft_cni::skel::{run, Outcome};

    fn call(cmd: &str, args: &str, conf: &Value) -> Outcome {
        let vars: HashMap<&str, String> = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
            ("CNI_PATH", "/opt/cni/bin"),
            // ADD/CHECK need some netns; unit tests stay out of real ones.
            ("CNI_NETNS", "/proc/1/ns/net"),
            ("CNI_NETNS_OVERRIDE", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        run(
            &Static,
            &|k| vars.get(k).cloned(),
            conf.to_string().as_bytes(),
        )
    }

    fn can_use_netns() -> bool {
        nix::sys::statfs::statfs("/proc/1/ns/net")
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    fn conf(version: &str, extra: Value) -> Value {
        let base = json!({"cniVersion": version, "name": "net",
            "ipam": {"type": "static", "addresses": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}]}});
        merged(&base, extra)
    }

    fn ips(o: Outcome) -> Value {
        assert_eq!(o.exit_code, 0, "{o:?}");
        o.stdout.unwrap()["ips"].clone()
    }

    fn code(o: &Outcome) -> u64 {
        assert_eq!(o.exit_code, 1, "{o:?}");
        o.stdout.as_ref().unwrap()["code"].as_u64().unwrap()
    }

    #[test]
    fn precedence_of_the_four_sources() {
        if !can_use_netns() {
            return;
        }
        let c = conf("1.0.0", json!({}));
        assert_eq!(
            ips(call("ADD", "IP=10.2.0.5/24;GATEWAY=10.2.0.1", &c)),
            json!([{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                   {"address": "10.2.0.5/24", "gateway": "10.2.0.1"}])
        );
        let args = conf("1.0.0", json!({"args": {"cni": {"ips": ["10.3.0.5/24"]}}}));
        assert_eq!(
            ips(call("ADD", "IP=10.2.0.5/24", &args)),
            json!([{"address": "10.3.0.5/24"}])
        );
        let both = conf(
            "0.3.1",
            json!({"args": {"cni": {"ips": ["10.3.0.5/24"]}}, "runtimeConfig": {"ips": ["fd00::5/64"]}}),
        );
        assert_eq!(
            ips(call("ADD", "", &both)),
            json!([{"address": "fd00::5/64", "version": "6"}])
        );
        let empty_lists = conf(
            "1.1.0",
            json!({"args": {"cni": {"ips": []}}, "runtimeConfig": {"ips": null}}),
        );
        assert_eq!(
            ips(call("ADD", "", &empty_lists)),
            json!([{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}])
        );
    }

    #[test]
    fn bad_input_codes() {
        if !can_use_netns() {
            return;
        }
        let mut c = conf("1.0.0", json!({}));
        c["ipam"]["addresses"][0]["address"] = json!("10.1.0.5");
        let o = call("ADD", "", &c);
        assert_eq!(code(&o), 7);
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("ipam.addresses[0].address \"10.1.0.5\""));
        // Replaced, so never validated (as in the reference).
        let replaced = merged(&c, json!({"runtimeConfig": {"ips": ["10.3.0.1/24"]}}));
        assert_eq!(
            ips(call("ADD", "", &replaced)),
            json!([{"address": "10.3.0.1/24"}])
        );
        c["ipam"]["addresses"][0] = json!({"address": "10.1.0.5/24", "gateway": "bogus"});
        assert_eq!(code(&call("ADD", "", &c)), 7);
        c["ipam"]["addresses"][0] = json!({"address": "10.1.0.5/24", "gateway": "fd00::1"});
        assert_eq!(code(&call("ADD", "", &c)), 7);
        let bad_list = conf("1.0.0", json!({"runtimeConfig": {"ips": ["10.3.0.1"]}}));
        assert_eq!(code(&call("ADD", "", &bad_list)), 7);
        let not_list = conf("1.0.0", json!({"runtimeConfig": {"ips": "10.3.0.1/24"}}));
        assert_eq!(code(&call("ADD", "", &not_list)), 6);
        let no_ipam = json!({"cniVersion": "1.0.0", "name": "net"});
        assert_eq!(code(&call("ADD", "", &no_ipam)), 7);
        assert_eq!(
            code(&call("ADD", "K8S_POD_NAME=x", &conf("1.0.0", json!({})))),
            4
        );
        // DEL never fails on a decodable config.
        assert_eq!(call("DEL", "K8S_POD_NAME=x", &no_ipam).exit_code, 0);
        assert_eq!(
            code(&call(
                "STATUS",
                "",
                &merged(&no_ipam, json!({"cniVersion": "1.1.0"}))
            )),
            7
        );
        assert_eq!(call("GC", "", &conf("1.1.0", json!({}))).exit_code, 0);
    }

    fn merged(c: &Value, extra: Value) -> Value {
        let mut c = c.clone();
        if let (Value::Object(c), Value::Object(extra)) = (&mut c, extra) {
            c.extend(extra);
        }
        c
    }

    #[test]
    fn check_wants_every_address_with_prefix_and_gateway() {
        if !can_use_netns() {
            return;
        }
        let with_prev = |prev: Value| conf("1.0.0", json!({"prevResult": prev}));
        let good = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 2}]});
        assert_eq!(call("CHECK", "", &with_prev(good)).exit_code, 0);
        for bad in [
            json!({"cniVersion": "1.0.0", "ips": []}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.2"}]}),
        ] {
            assert_eq!(code(&call("CHECK", "", &with_prev(bad))), 105);
        }
        assert_eq!(code(&call("CHECK", "", &conf("1.0.0", json!({})))), 7);
        let mut no_gw = conf(
            "1.0.0",
            json!({"prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24", "gateway": "10.9.0.1"}]}}),
        );
        no_gw["ipam"]["addresses"][0] = json!({"address": "10.1.0.5/24"});
        assert_eq!(code(&call("CHECK", "", &no_gw)), 105);
        no_gw["prevResult"]["ips"][0]["gateway"] = json!("10.1.0.1");
        assert_eq!(call("CHECK", "", &no_gw).exit_code, 0);
    }
}
