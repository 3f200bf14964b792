//! The CNI commands.
//!
//! - ADD: one address per range set (see `allocator.rs`), plus the
//!   configured routes and the resolvConf DNS.
//! - DEL: release every reservation of (containerID, ifname), or the legacy
//!   ones naming only the container if there are none. Idempotent.
//! - CHECK: code 105 unless the attachment holds a reservation, and unless
//!   every prevResult address inside our range sets is reserved to it.
//! - GC: release every reservation whose owner is not in
//!   `cni.dev/valid-attachments` (or the older `cni.dev/attachments`).
//! - STATUS: code 50 when some range set has no free address.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use weft_cni::{log, CniResult, Error, ErrorCode, IpConfig, Plugin, Request};

use crate::allocator::{allocate, assign_requests};
use crate::config::{requested_ips, IpamConfig};
use crate::dns;
use crate::store::{warn_unreadable, Store};

pub struct HostLocal;

fn config(req: &Request) -> Result<IpamConfig, Error> {
    IpamConfig::parse(&req.name, &req.config)
}

impl Plugin for HostLocal {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        let conf = config(req)?;
        let requests = assign_requests(&conf.range_sets, &requested_ips(&req.config, &req.args)?)?;
        let dns = conf
            .resolv_conf
            .as_deref()
            .map(dns::load)
            .transpose()?
            .unwrap_or_default();
        let store = Store::open(&conf.store_dir())?;
        let allocations = allocate(
            &store,
            &conf.range_sets,
            &requests,
            &req.container_id,
            &req.ifname,
        )?;
        drop(store);
        let ips = allocations
            .iter()
            .map(|a| {
                IpNetwork::new(a.ip, a.prefix)
                    .map(|address| IpConfig {
                        address,
                        gateway: Some(a.gateway),
                        interface: None,
                    })
                    .map_err(|e| Error::config(format!("address {}/{}: {e}", a.ip, a.prefix)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CniResult {
            interfaces: Vec::new(),
            ips,
            routes: conf.routes,
            dns,
        })
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        let conf = config(req)?;
        let Some(store) = Store::open_existing(&conf.store_dir())? else {
            return Ok(());
        };
        store.release(&req.container_id, &req.ifname).map(|_| ())
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        let conf = config(req)?;
        let (id, ifname) = (&req.container_id, &req.ifname);
        let dir = conf.store_dir();
        let mine: Vec<IpAddr> = match Store::open_existing(&dir)? {
            None => Vec::new(),
            Some(store) => {
                let (entries, unreadable) = store.entries()?;
                warn_unreadable(&unreadable);
                entries
                    .into_iter()
                    .filter(|e| e.owner.is(id, ifname) || e.owner.is_legacy(id))
                    .map(|e| e.ip)
                    .collect()
            }
        };
        if mine.is_empty() {
            return Err(Error::new(
                ErrorCode::CheckFailed,
                format!(
                    "no address is reserved for container {id} interface {ifname} in {}",
                    dir.display()
                ),
            ));
        }
        if let Some(prev) = req.prev_result()? {
            for ip in prev.ips.iter().map(|c| c.address.ip()) {
                if conf.range_sets.iter().any(|s| s.contains(ip)) && !mine.contains(&ip) {
                    return Err(Error::new(
                        ErrorCode::CheckFailed,
                        format!("{ip} from prevResult is not reserved for container {id} interface {ifname} in {}", dir.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = config(req)?;
        let valid: HashSet<_> = req.valid_attachments()?.into_iter().collect();
        let Some(store) = Store::open_existing(&conf.store_dir())? else {
            return Ok(());
        };
        let removed = store.gc(&valid)?;
        if !removed.is_empty() {
            let list: Vec<String> = removed.iter().map(ToString::to_string).collect();
            log::warn(&format!(
                "GC released {} stale reservation(s): {}",
                list.len(),
                list.join(", ")
            ));
        }
        Ok(())
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        let conf = config(req)?;
        let Some(store) = Store::open_existing(&conf.store_dir())? else {
            return Ok(());
        };
        let (entries, unreadable) = store.entries()?;
        warn_unreadable(&unreadable);
        let full: Vec<String> = conf
            .range_sets
            .iter()
            .filter_map(|set| {
                let mut used: Vec<IpAddr> = entries
                    .iter()
                    .map(|e| e.ip)
                    .filter(|ip| set.contains(*ip) && !set.is_gateway(*ip))
                    .collect();
                used.dedup();
                let capacity = set.capacity();
                (used.len() as u128 >= capacity)
                    .then(|| format!("{set} ({capacity} addresses, all reserved)"))
            })
            .collect();
        if full.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::NotAvailable,
                format!("no free address in range set {}", full.join("; ")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TempDir;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::fs;
    use weft_cni::skel::{run, Outcome};

    struct Env {
        dir: TempDir,
    }

    impl Env {
        fn new(tag: &str) -> Env {
            Env {
                dir: TempDir::new(tag),
            }
        }

        fn conf(&self, version: &str, ipam: Value) -> Value {
            let mut ipam = ipam;
            ipam["type"] = json!("host-local");
            ipam["dataDir"] = json!(self.dir.0.to_string_lossy());
            json!({"cniVersion": version, "name": "net", "type": "bridge", "ipam": ipam})
        }

        fn run(&self, cmd: &str, id: &str, ifname: &str, args: &str, conf: &Value) -> Outcome {
            let mut vars: HashMap<&str, String> = HashMap::new();
            vars.insert("CNI_COMMAND", cmd.into());
            vars.insert("CNI_CONTAINERID", id.into());
            vars.insert("CNI_IFNAME", ifname.into());
            vars.insert("CNI_ARGS", args.into());
            vars.insert("CNI_PATH", "/opt/cni/bin".into());
            // ADD/CHECK need some netns; unit tests stay out of real ones.
            vars.insert("CNI_NETNS", "/proc/1/ns/net".into());
            vars.insert("CNI_NETNS_OVERRIDE", "1".into());
            let stdin = conf.to_string();
            run(&HostLocal, &|k| vars.get(k).cloned(), stdin.as_bytes())
        }

        fn store(&self) -> std::path::PathBuf {
            self.dir.0.join("net")
        }
    }

    fn code(o: &Outcome) -> u64 {
        assert_eq!(o.exit_code, 1, "{o:?}");
        o.stdout.as_ref().unwrap()["code"].as_u64().unwrap()
    }

    fn ok(o: Outcome) -> Option<Value> {
        assert_eq!(o.exit_code, 0, "{o:?}");
        o.stdout
    }

    /// Unit tests cannot rely on /proc/1/ns/net being an nsfs the process can
    /// stat (it can when run as root); skip the command-level tests otherwise.
    fn can_use_netns() -> bool {
        nix::sys::statfs::statfs("/proc/1/ns/net")
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
    }

    #[test]
    fn add_check_del_round_trip() {
        if !can_use_netns() {
            eprintln!("skipping: /proc/1/ns/net is not accessible");
            return;
        }
        let env = Env::new("cmd");
        let resolv = env.dir.0.join("resolv.conf");
        fs::write(&resolv, "nameserver 10.96.0.10\nsearch a b\n").unwrap();
        let conf = env.conf(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:1::/64"}]],
                   "routes": [{"dst": "0.0.0.0/0"}], "resolvConf": resolv.to_string_lossy()}),
        );
        let out = ok(env.run("ADD", "c1", "eth0", "", &conf)).unwrap();
        assert_eq!(
            out,
            json!({"cniVersion": "1.0.0",
                   "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1"}, {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}],
                   "routes": [{"dst": "0.0.0.0/0"}],
                   "dns": {"nameservers": ["10.96.0.10"], "search": ["a", "b"]}})
        );
        assert_eq!(
            fs::read(env.store().join("10.244.1.2")).unwrap(),
            b"c1\r\neth0"
        );
        // Re-ADD without DEL: same addresses.
        assert_eq!(
            ok(env.run("ADD", "c1", "eth0", "", &conf)).unwrap()["ips"],
            out["ips"]
        );
        assert_eq!(ok(env.run("CHECK", "c1", "eth0", "", &conf)), None);
        assert_eq!(code(&env.run("CHECK", "c1", "eth1", "", &conf)), 105);
        let mut with_prev = conf.clone();
        with_prev["prevResult"] =
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.9/24"}]});
        assert_eq!(code(&env.run("CHECK", "c1", "eth0", "", &with_prev)), 105);
        with_prev["prevResult"] = out.clone();
        assert_eq!(ok(env.run("CHECK", "c1", "eth0", "", &with_prev)), None);
        assert_eq!(ok(env.run("DEL", "c1", "eth0", "", &conf)), None);
        assert_eq!(ok(env.run("DEL", "c1", "eth0", "", &conf)), None);
        assert!(!env.store().join("10.244.1.2").exists());
        assert_eq!(code(&env.run("CHECK", "c1", "eth0", "", &conf)), 105);
        // Older versions get "version" tags.
        let old = env.conf("0.3.1", json!({"subnet": "10.9.0.0/24"}));
        let out = ok(env.run(
            "ADD",
            "c2",
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.9.0.77",
            &old,
        ))
        .unwrap();
        assert_eq!(
            out["ips"],
            json!([{"address": "10.9.0.77/24", "gateway": "10.9.0.1", "version": "4"}])
        );
    }

    #[test]
    fn add_errors_and_codes() {
        if !can_use_netns() {
            eprintln!("skipping: /proc/1/ns/net is not accessible");
            return;
        }
        let env = Env::new("codes");
        let bad = env.conf("1.0.0", json!({"ranges": [[{"subnet": "10.0.0.0/33"}]]}));
        let o = env.run("ADD", "c1", "eth0", "", &bad);
        assert_eq!(code(&o), 7);
        assert_eq!(
            o.stdout.unwrap()["msg"],
            "ipam.ranges[0][0].subnet \"10.0.0.0/33\" is not a valid CIDR"
        );
        // DEL also validates the config, but needs no store.
        assert_eq!(code(&env.run("DEL", "c1", "eth0", "", &bad)), 7);
        let conf = env.conf("1.0.0", json!({"ranges": [[{"subnet": "10.0.0.0/30"}]]}));
        assert_eq!(ok(env.run("DEL", "c1", "eth0", "", &conf)), None);
        assert!(!env.store().exists());
        assert_eq!(
            code(&env.run("ADD", "c1", "eth0", "IP=10.0.0.1", &conf)),
            102
        );
        assert_eq!(
            code(&env.run("ADD", "c1", "eth0", "IP=10.0.0.9", &conf)),
            102
        );
        assert_eq!(code(&env.run("ADD", "c1", "eth0", "IP=bad", &conf)), 4);
        ok(env.run("ADD", "c1", "eth0", "", &conf));
        let o = env.run("ADD", "c2", "eth0", "", &conf);
        assert_eq!(code(&o), 101);
        assert_eq!(
            o.stdout.unwrap()["msg"],
            "no free address in range set 10.0.0.1-10.0.0.2"
        );
        let missing = env.conf(
            "1.0.0",
            json!({"ranges": [[{"subnet": "10.1.0.0/24"}]], "resolvConf": "/nonexistent/r"}),
        );
        assert_eq!(code(&env.run("ADD", "c3", "eth0", "", &missing)), 5);
        assert!(!env.dir.0.join("net").join("10.1.0.2").exists());
    }

    #[test]
    fn gc_and_status() {
        let env = Env::new("gc");
        let conf = env.conf("1.1.0", json!({"ranges": [[{"subnet": "10.0.0.0/29"}]]}));
        // STATUS and GC on a network never used.
        assert_eq!(ok(env.run("STATUS", "", "", "", &conf)), None);
        assert_eq!(ok(env.run("GC", "", "", "", &conf)), None);
        assert!(!env.store().exists());
        fs::create_dir_all(env.store()).unwrap();
        for (n, id) in ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
            .iter()
            .zip(["a", "b", "c", "d"])
        {
            fs::write(env.store().join(n), format!("{id}\r\neth0")).unwrap();
        }
        assert_eq!(ok(env.run("STATUS", "", "", "", &conf)), None);
        fs::write(env.store().join("10.0.0.6"), "e").unwrap();
        let o = env.run("STATUS", "", "", "", &conf);
        assert_eq!(code(&o), 50);
        assert!(o.stdout.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("10.0.0.1-10.0.0.6"));

        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
        gc["cni.dev/attachments"] = json!([{"containerID": "e", "ifname": "eth1"}]);
        assert_eq!(ok(env.run("GC", "", "", "", &gc)), None);
        let mut left: Vec<String> = fs::read_dir(env.store())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["10.0.0.2", "10.0.0.6", "lock"]);
        assert_eq!(ok(env.run("STATUS", "", "", "", &conf)), None);
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "a"}]);
        assert_eq!(code(&env.run("GC", "", "", "", &gc)), 7);
        gc["cni.dev/valid-attachments"] = Value::Null;
        gc["cni.dev/attachments"] = json!([]);
        assert_eq!(ok(env.run("GC", "", "", "", &gc)), None);
        let left: Vec<String> = fs::read_dir(env.store())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["lock"]);
    }
}
