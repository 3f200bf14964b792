//! Picking addresses: one per range set, all under one hold of the store
//! lock, all or nothing.
//!
//! Re-ADD of an attachment that already holds an address in a set (a
//! runtime that restarted without sending DEL, cni.md §6.4) returns that
//! address instead of failing with the reference's "duplicate allocation is
//! not allowed": the container ID and ifname identify the attachment, so
//! handing it the address it already owns is idempotent and leaks nothing.
//! A legacy reservation (container ID only, no ifname) cannot be attributed
//! to an interface and stays an error, as does asking for a specific address
//! while already holding a different one in that set.

use std::collections::HashSet;
use std::net::IpAddr;

use weft_cni::{log, Error, ErrorCode};

use crate::range::RangeSet;
use crate::store::{warn_unreadable, Pending, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    /// The prefix of the subnet the address belongs to.
    pub prefix: u8,
    pub gateway: IpAddr,
    /// Reserved by this ADD (as opposed to already held by the attachment).
    pub fresh: bool,
}

/// Match requested addresses to range sets before anything is touched: each
/// must fall in exactly one set, at most one per set, and none may be a
/// gateway. Returns one optional request per set.
pub fn assign_requests(
    sets: &[RangeSet],
    requested: &[IpAddr],
) -> Result<Vec<Option<IpAddr>>, Error> {
    let mut out: Vec<Option<IpAddr>> = vec![None; sets.len()];
    let mut problems = Vec::new();
    for &ip in requested {
        match sets.iter().position(|s| s.contains(ip)) {
            None => problems.push(format!("{ip} is in no range set")),
            Some(i) if sets[i].is_gateway(ip) => {
                problems.push(format!("{ip} is the gateway of range set {}", sets[i]))
            }
            Some(i) => match out[i] {
                Some(other) => problems.push(format!(
                    "{ip} and {other} are both in range set {}, which gives one address",
                    sets[i]
                )),
                None => out[i] = Some(ip),
            },
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        let all: Vec<String> = sets.iter().map(ToString::to_string).collect();
        Err(Error::with_details(
            ErrorCode::AddressUnavailable,
            format!(
                "cannot allocate the requested addresses: {}",
                problems.join("; ")
            ),
            format!("range sets: {}", all.join(" | ")),
        ))
    }
}

/// Reserve one address per set for (id, ifname); `requests` comes from
/// [`assign_requests`]. On any error every address reserved by this call is
/// released again. On success the reservations are durable.
pub fn allocate(
    store: &Store,
    sets: &[RangeSet],
    requests: &[Option<IpAddr>],
    id: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, Error> {
    let mut done = Vec::with_capacity(sets.len());
    let result =
        allocate_into(store, sets, requests, id, ifname, &mut done).and_then(|()| store.sync());
    match result {
        Ok(()) => Ok(done),
        Err(e) => {
            for a in done.iter().filter(|a| a.fresh) {
                if let Err(undo) = store.remove(&a.ip.to_string()) {
                    log::error(&format!(
                        "cannot release {} after a failed ADD: {undo}",
                        a.ip
                    ));
                }
            }
            let _ = store.sync();
            Err(e)
        }
    }
}

fn allocate_into(
    store: &Store,
    sets: &[RangeSet],
    requests: &[Option<IpAddr>],
    id: &str,
    ifname: &str,
    done: &mut Vec<Allocation>,
) -> Result<(), Error> {
    let (entries, unreadable) = store.entries()?;
    warn_unreadable(&unreadable);
    let taken: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();
    let mut pending: Option<Pending> = None;

    for (idx, set) in sets.iter().enumerate() {
        let in_set = |ip: &IpAddr| set.contains(*ip) && !set.is_gateway(*ip);
        let mine: Vec<IpAddr> = entries
            .iter()
            .filter(|e| e.owner.is(id, ifname) && in_set(&e.ip))
            .map(|e| e.ip)
            .collect();
        let legacy: Vec<IpAddr> = entries
            .iter()
            .filter(|e| e.owner.is_legacy(id) && in_set(&e.ip))
            .map(|e| e.ip)
            .collect();
        let request = requests.get(idx).copied().flatten();

        let held = match request {
            Some(want) if mine.contains(&want) || legacy.contains(&want) => Some(want),
            Some(want) => {
                if let Some(other) = mine.first().or(legacy.first()) {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("{id}/{ifname} already holds {other} in range set {set}; it cannot also take the requested {want} (DEL it first)"),
                    ));
                }
                None
            }
            None => {
                if let Some(&ip) = mine.first() {
                    log::warn(&format!("{id}/{ifname} already holds {ip} in range set {set}; returning it (ADD without DEL)"));
                    Some(ip)
                } else if let Some(ip) = legacy.first() {
                    return Err(Error::new(
                        ErrorCode::AlreadyExists,
                        format!("{ip} is reserved for container {id} by an older host-local that did not record the interface; duplicate allocation is not allowed (DEL it first)"),
                    ));
                } else {
                    None
                }
            }
        };
        if let Some(ip) = held {
            if let Some(range) = set.range_for(ip) {
                done.push(Allocation {
                    ip,
                    prefix: range.subnet.prefix(),
                    gateway: range.gateway,
                    fresh: false,
                });
                continue;
            }
        }

        let pending = match &mut pending {
            Some(p) => &*p,
            slot => &*slot.insert(store.prepare(id, ifname)?),
        };
        let got = match request {
            Some(want) => {
                if !store.reserve(pending, want)? {
                    let owner = entries
                        .iter()
                        .find(|e| e.ip == want)
                        .map_or_else(|| "another attachment".to_string(), |e| e.owner.to_string());
                    return Err(Error::new(
                        ErrorCode::AddressUnavailable,
                        format!("the requested address {want} in range set {set} is already reserved by {owner}"),
                    ));
                }
                set.range_for(want).map(|r| (want, r))
            }
            None => {
                let mut found = None;
                for (ip, range) in set.candidates(store.last_reserved(idx)) {
                    if !taken.contains(&ip) && store.reserve(pending, ip)? {
                        found = Some((ip, range));
                        break;
                    }
                }
                found
            }
        };
        let Some((ip, range)) = got else {
            return Err(Error::with_details(
                ErrorCode::RangeFull,
                format!("no free address in range set {set}"),
                format!("range set {idx} of network store {}", store.dir().display()),
            ));
        };
        done.push(Allocation {
            ip,
            prefix: range.subnet.prefix(),
            gateway: range.gateway,
            fresh: true,
        });
        if let Err(e) = store.set_last_reserved(idx, ip) {
            // Only the round-robin hint is lost.
            log::warn(&e.to_string());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConfig;
    use crate::store::tests::TempDir;
    use serde_json::json;
    use std::fs;

    fn sets(ranges: serde_json::Value) -> Vec<RangeSet> {
        IpamConfig::parse("n", &json!({"name": "n", "ipam": {"ranges": ranges}}))
            .unwrap()
            .range_sets
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn add(
        dir: &TempDir,
        sets: &[RangeSet],
        id: &str,
        req: &[Option<IpAddr>],
    ) -> Result<Vec<IpAddr>, Error> {
        let store = Store::open(&dir.0)?;
        let req = if req.is_empty() {
            vec![None; sets.len()]
        } else {
            req.to_vec()
        };
        allocate(&store, sets, &req, id, "eth0").map(|v| v.into_iter().map(|a| a.ip).collect())
    }

    #[test]
    fn sequential_round_robin_and_exhaustion() {
        let dir = TempDir::new("rr");
        let s = sets(json!([[{"subnet": "10.0.0.0/29"}]]));
        let got: Vec<IpAddr> = (0..5)
            .map(|i| add(&dir, &s, &format!("c{i}"), &[]).unwrap()[0])
            .collect();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ip)
        );
        let e = add(&dir, &s, "c9", &[]).unwrap_err();
        assert_eq!(e.code(), 101);
        assert_eq!(
            e.to_string(),
            "no free address in range set 10.0.0.1-10.0.0.6"
        );
        // Release one in the middle: the next ADD continues after the last
        // reserved address and wraps to it.
        Store::open(&dir.0).unwrap().release("c1", "eth0").unwrap();
        assert_eq!(add(&dir, &s, "c10", &[]).unwrap(), [ip("10.0.0.3")]);
        assert_eq!(
            fs::read_to_string(dir.0.join("last_reserved_ip.0")).unwrap(),
            "10.0.0.3"
        );
    }

    #[test]
    fn dual_stack_one_per_set_and_result_fields() {
        let dir = TempDir::new("dual");
        let s = sets(
            json!([[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.254"}], [{"subnet": "fd00::/120"}]]),
        );
        let store = Store::open(&dir.0).unwrap();
        let a = allocate(&store, &s, &[None, None], "c1", "eth0").unwrap();
        assert_eq!(
            a[0],
            Allocation {
                ip: ip("10.0.0.1"),
                prefix: 24,
                gateway: ip("10.0.0.254"),
                fresh: true
            }
        );
        assert_eq!(
            a[1],
            Allocation {
                ip: ip("fd00::2"),
                prefix: 120,
                gateway: ip("fd00::1"),
                fresh: true
            }
        );
        assert!(dir.0.join("last_reserved_ip.1").exists());
    }

    #[test]
    fn re_add_returns_the_held_address() {
        let dir = TempDir::new("readd");
        let s = sets(json!([[{"subnet": "10.0.0.0/24"}]]));
        let first = add(&dir, &s, "c1", &[]).unwrap();
        let store = Store::open(&dir.0).unwrap();
        let again = allocate(&store, &s, &[None], "c1", "eth0").unwrap();
        assert_eq!(again[0].ip, first[0]);
        assert!(!again[0].fresh);
        // Another interface of the same container gets its own address.
        assert_ne!(
            allocate(&store, &s, &[None], "c1", "eth1").unwrap()[0].ip,
            first[0]
        );
        drop(store);
        // Asking for a different address while holding one is refused.
        assert_eq!(
            add(&dir, &s, "c1", &[Some(ip("10.0.0.50"))])
                .unwrap_err()
                .code(),
            103
        );
        // Asking for the held one is fine.
        assert_eq!(add(&dir, &s, "c1", &[Some(first[0])]).unwrap(), first);
        // A legacy reservation is ambiguous: error.
        fs::write(dir.0.join("10.0.0.77"), "old").unwrap();
        assert_eq!(add(&dir, &s, "old", &[]).unwrap_err().code(), 103);
    }

    #[test]
    fn requested_addresses() {
        let dir = TempDir::new("req");
        let s = sets(
            json!([[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.0.100"}], [{"subnet": "fd00::/64"}]]),
        );
        let r = assign_requests(&s, &[ip("fd00::99"), ip("10.0.0.42")]).unwrap();
        assert_eq!(r, [Some(ip("10.0.0.42")), Some(ip("fd00::99"))]);
        assert_eq!(
            add(&dir, &s, "c1", &r).unwrap(),
            [ip("10.0.0.42"), ip("fd00::99")]
        );
        // A request in one set, round-robin in the other.
        assert_eq!(
            add(&dir, &s, "c2", &[None, Some(ip("fd00::5"))]).unwrap(),
            [ip("10.0.0.43"), ip("fd00::5")]
        );
        // The v4 address is taken: the v6 address just reserved by this ADD is released again.
        let r = [Some(ip("10.0.0.42")), Some(ip("fd00::7"))];
        let e = add(&dir, &s, "c4", &r).unwrap_err();
        assert_eq!(e.code(), 102);
        assert!(
            e.to_string()
                .contains("already reserved by container c1 interface eth0"),
            "{e}"
        );
        let store = Store::open(&dir.0).unwrap();
        assert!(store
            .entries()
            .unwrap()
            .0
            .iter()
            .all(|e| !e.owner.is("c4", "eth0")));
        assert!(!dir.0.join("fd00::7").exists());
        drop(store);
        for bad in [
            vec![ip("10.0.0.200")],
            vec![ip("10.0.0.1")],
            vec![ip("10.0.0.5"), ip("10.0.0.6")],
            vec![ip("192.168.0.1")],
        ] {
            let e = assign_requests(&s, &bad).unwrap_err();
            assert_eq!(e.code(), 102, "{bad:?}");
        }
        assert!(assign_requests(&s, &[ip("10.0.0.1")])
            .unwrap_err()
            .to_string()
            .contains("gateway"));
    }

    #[test]
    fn failure_in_a_later_set_releases_earlier_ones() {
        let dir = TempDir::new("rollback");
        let s = sets(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}]]));
        add(&dir, &s, "c1", &[]).unwrap();
        // 10.1.0.0/30 has one usable address (.2), now taken.
        let e = add(&dir, &s, "c2", &[]).unwrap_err();
        assert_eq!(e.code(), 101);
        let store = Store::open(&dir.0).unwrap();
        let (entries, _) = store.entries().unwrap();
        assert_eq!(entries.len(), 2, "{entries:?}");
        assert!(entries.iter().all(|e| e.owner.is("c1", "eth0")));
        assert!(!fs::read_dir(&dir.0).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".weft")));
    }

    #[test]
    fn concurrent_threads_get_distinct_addresses() {
        let dir = TempDir::new("threads");
        let s = sets(json!([[{"subnet": "10.0.0.0/27"}]]));
        let capacity = 29; // .2 - .30
        let handles: Vec<_> = (0..40)
            .map(|i| {
                let path = dir.0.clone();
                let s = s.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    allocate(&store, &s, &[None], &format!("c{i}"), "eth0").map(|a| a[0].ip)
                })
            })
            .collect();
        let results: Vec<Result<IpAddr, Error>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut ok: Vec<IpAddr> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert!(results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .all(|e| e.code() == 101));
        assert_eq!(ok.len(), capacity);
        ok.sort();
        ok.dedup();
        assert_eq!(ok.len(), capacity);
        let files = fs::read_dir(&dir.0)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("10.")
            })
            .count();
        assert_eq!(files, capacity);
    }
}
