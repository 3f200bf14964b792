//! tuning: a chained plugin that sets sysctls in the pod's netns and the
//! pod interface's MAC, MTU, promisc, allmulti and transmit queue length;
//! the original values are saved at ADD (in the reference's backup file)
//! and restored at DEL.

mod backup;
mod config;

use std::path::Path;
use std::process::ExitCode;

use weft_cni::{CniResult, Error, ErrorCode, Plugin, Request};
use weft_netlink::{format_mac, read_sysctl, write_sysctl, Link, Netlink, Netns};

use backup::Backup;
use config::TuningConfig;

/// The pod's side of a command: a netlink socket and the interface, both
/// in the pod's netns (see `with_pod`).
struct Pod {
    nl: Netlink,
    link: Link,
}

/// Moves the process into the pod's netns and runs `f` there, so the
/// netlink socket is the pod's and /proc/sys/net shows the pod's sysctls.
/// tuning is single-threaded and has no host-netns work left once it gets
/// here, so it enters on its own thread and stays: a helper thread per trip
/// (ADD made three, DEL two) cost more than the work on a loaded node, since
/// each new thread waits for a CPU (profiled with strace -f -tt). Files (the
/// backup) are unaffected: they live in the mount namespace.
fn with_pod<R>(req: &Request, f: impl FnOnce(&mut Pod) -> Result<R, Error>) -> Result<R, Error> {
    let path = req.netns_path()?;
    let ns = Netns::open(path)
        .map_err(|e| Error::env(format!("CNI_NETNS \"{}\": {e}", path.display())))?;
    ns.enter_for_good()
        .map_err(|e| Error::kernel("enter the pod netns", e))?;
    let mut nl = Netlink::new().map_err(|e| Error::kernel("open netlink in the pod netns", e))?;
    let link = nl
        .link_by_name(&req.ifname)
        .map_err(|e| Error::kernel(format!("look up {}", req.ifname), e))?
        .ok_or_else(|| {
            Error::config(format!(
                "there is no interface {} in {}",
                req.ifname,
                path.display()
            ))
        })?;
    f(&mut Pod { nl, link })
}

/// The current values of everything `config` will change; a sysctl that
/// does not exist in the pod's netns (a host-only or unknown name) is an
/// error here, before anything is written. Runs in the pod's netns.
fn originals(req: &Request, config: &TuningConfig, pod: &Pod) -> Result<Backup, Error> {
    let mut b = Backup {
        network: Some(req.name.clone()),
        ..Default::default()
    };
    for s in &config.sysctls {
        // Some host-wide sysctls show up read-only in every netns
        // (net.core.rmem_max): opening for writing tells them apart.
        let value = read_sysctl(&s.path)
            .map_err(|e| e.to_string())
            .and_then(|value| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(Path::new("/proc/sys").join(&s.path))
                    .map_err(|e| format!("not writable: {e}"))?;
                Ok(value)
            })
            .map_err(|e| {
                Error::config(format!(
                    "sysctl {} is not one of the pod netns's own ({e})",
                    s.name
                ))
            })?;
        b.sysctl.insert(s.path.clone(), value);
    }
    let l = &pod.link;
    b.mac = config.mac.and(l.mac.as_ref().map(format_mac));
    b.promisc = config.promisc.map(|_| l.promisc);
    b.mtu = config.mtu.map(|_| l.mtu);
    b.allmulti = config.allmulti.map(|_| l.allmulti);
    b.txqlen = config.txqlen.map(|_| l.txqlen);
    Ok(b)
}

fn kernel(what: String) -> impl FnOnce(weft_netlink::Error) -> Error {
    move |e| Error::kernel(what, e)
}

/// Apply `config` in the reference's order: sysctls, mac, promisc, mtu,
/// allmulti, txQLen. Runs in the pod's netns.
fn apply(config: &TuningConfig, pod: &mut Pod) -> Result<(), Error> {
    config
        .sysctls
        .iter()
        .try_for_each(|s| write_sysctl(&s.path, &s.value))
        .map_err(kernel("set the sysctls".into()))?;
    let (nl, index, name) = (&mut pod.nl, pod.link.index, &pod.link.name);
    if let Some(mac) = config.mac {
        nl.set_mac(index, mac)
            .map_err(kernel(format!("set the MAC of {name}")))?;
    }
    if let Some(on) = config.promisc {
        nl.set_promisc(index, on)
            .map_err(kernel(format!("set promisc on {name}")))?;
    }
    if let Some(mtu) = config.mtu {
        nl.set_mtu(index, mtu)
            .map_err(kernel(format!("set the MTU of {name}")))?;
    }
    if let Some(on) = config.allmulti {
        nl.set_allmulti(index, on)
            .map_err(kernel(format!("set allmulti on {name}")))?;
    }
    if let Some(len) = config.txqlen {
        nl.set_txqlen(index, len)
            .map_err(kernel(format!("set the txqueuelen of {name}")))?;
    }
    Ok(())
}

/// Put the saved values back, in the reference's order (MTU, MAC, promisc,
/// allmulti, txQLen), then the sysctls. Keeps going; returns the failures.
/// Runs in the pod's netns.
fn restore(b: &Backup, pod: &mut Pod) -> Vec<Error> {
    let (nl, index) = (&mut pod.nl, pod.link.index);
    let mut results = Vec::new();
    if let Some(mtu) = b.mtu {
        results.push(nl.set_mtu(index, mtu));
    }
    if let Some(mac) = b.mac.as_deref().and_then(weft_netlink::parse_mac) {
        results.push(nl.set_mac(index, mac));
    }
    if let Some(on) = b.promisc {
        results.push(nl.set_promisc(index, on));
    }
    if let Some(on) = b.allmulti {
        results.push(nl.set_allmulti(index, on));
    }
    if let Some(len) = b.txqlen {
        results.push(nl.set_txqlen(index, len));
    }
    results.extend(
        b.sysctl
            .iter()
            .map(|(path, value)| write_sysctl(path, value)),
    );
    results
        .into_iter()
        .filter_map(Result::err)
        .map(|e| Error::kernel("restore the original values", e))
        .collect()
}

fn add(req: &Request) -> Result<CniResult, Error> {
    let config = TuningConfig::parse(req)?;
    let mut result = req.prev_result()?.ok_or_else(|| {
        Error::config("tuning must be called as a chained plugin: the config has no prevResult")
    })?;
    with_pod(req, |pod| {
        if config.is_empty() {
            return Ok(());
        }
        let saved = originals(req, &config, pod)?;
        let file = backup::path(&config.data_dir, &req.container_id, &req.ifname);
        let created = backup::create(&file, &saved)?;
        if let Err(e) = apply(&config, pod) {
            let _ = restore(&saved, pod);
            if created {
                let _ = backup::remove(&file);
            }
            return Err(e);
        }
        Ok(())
    })?;
    if let Some(mac) = config.mac {
        let netns = req.netns_path()?.display().to_string();
        for iface in result
            .interfaces
            .iter_mut()
            .filter(|i| i.name == req.ifname && i.sandbox.as_deref() == Some(netns.as_str()))
        {
            iface.mac = Some(format_mac(&mac));
        }
    }
    Ok(result)
}

/// DEL restores what the backup holds and removes it, also when the netns
/// or the interface is gone (the reference leaks the file then).
fn del(req: &Request) -> Result<(), Error> {
    let data_dir = TuningConfig::data_dir_of(req);
    let file = backup::path(&data_dir, &req.container_id, &req.ifname);
    let Some(saved) = backup::read(&file) else {
        return backup::remove(&file);
    };
    if req.netns_exists() {
        if let Ok(errors) = with_pod(req, |pod| Ok(restore(&saved, pod))) {
            for e in errors {
                weft_cni::log::warn(&format!("DEL: {e}"));
            }
        }
    }
    backup::remove(&file)
}

fn mismatch(msg: String) -> Error {
    Error::new(ErrorCode::CheckFailed, msg)
}

/// Sysctl values compared with runs of whitespace made equal, so "0
/// 2147483647" matches the kernel's "0\t2147483647".
fn same_value(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

fn check(req: &Request) -> Result<(), Error> {
    let config = TuningConfig::parse(req)?;
    req.prev_result()?.ok_or_else(|| {
        Error::config("tuning must be called as a chained plugin: the config has no prevResult")
    })?;
    with_pod(req, |pod| verify(&config, pod))
}

/// CHECK's comparisons; runs in the pod's netns.
fn verify(config: &TuningConfig, pod: &Pod) -> Result<(), Error> {
    for s in &config.sysctls {
        let got = read_sysctl(&s.path).map_err(kernel(format!("read sysctl {}", s.name)))?;
        if !same_value(&got, &s.value) {
            return Err(mismatch(format!(
                "sysctl {} is {got:?}, expected {:?}",
                s.name, s.value
            )));
        }
    }
    let l = &pod.link;
    let differs = |what: &str, got: String, want: String| {
        Err(mismatch(format!(
            "{what} of {} is {got}, expected {want}",
            l.name
        )))
    };
    if let Some(mac) = config.mac {
        if l.mac != Some(mac) {
            return differs(
                "the MAC",
                l.mac.as_ref().map(format_mac).unwrap_or_default(),
                format_mac(&mac),
            );
        }
    }
    if let Some(mtu) = config.mtu.filter(|m| *m != l.mtu) {
        return differs("the MTU", l.mtu.to_string(), mtu.to_string());
    }
    if let Some(on) = config.promisc.filter(|on| *on != l.promisc) {
        return differs("promisc", l.promisc.to_string(), on.to_string());
    }
    if let Some(on) = config.allmulti.filter(|on| *on != l.allmulti) {
        return differs("allmulti", l.allmulti.to_string(), on.to_string());
    }
    if let Some(len) = config.txqlen.filter(|len| *len != l.txqlen) {
        return differs("txqueuelen", l.txqlen.to_string(), len.to_string());
    }
    Ok(())
}

/// GC: remove this network's backups (weft marks them with the network)
/// whose attachment is not valid. The reference's files carry no network
/// and are left alone: dataDir is shared by every network.
fn gc(req: &Request) -> Result<(), Error> {
    let valid = req.valid_attachments()?;
    let data_dir = TuningConfig::data_dir_of(req);
    let keep: Vec<_> = valid
        .iter()
        .map(|(id, ifname)| backup::path(&data_dir, id, ifname))
        .collect();
    let entries = match std::fs::read_dir(&data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", data_dir.display()), &e)),
    };
    let mut errors = Vec::new();
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if stale(&path, &req.name, &keep) {
            errors.extend(backup::remove(&path).err());
        }
    }
    Error::from_list(errors)
}

fn stale(path: &Path, network: &str, keep: &[std::path::PathBuf]) -> bool {
    path.extension().is_some_and(|e| e == "json")
        && !keep.iter().any(|k| k == path)
        && backup::read(path).is_some_and(|b| b.network.as_deref() == Some(network))
}

struct Tuning;

impl Plugin for Tuning {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        add(req)
    }
    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req)
    }
    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req)
    }
    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req)
    }
}

fn main() -> ExitCode {
    weft_cni::skel::main(&Tuning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_values_compare_whitespace_normalised() {
        assert!(same_value("0\t2147483647", "0 2147483647"));
        assert!(same_value("1\n", "1"));
        assert!(!same_value("1", "10"));
    }
}
