//! The firewall as `nft -j list ruleset` shows it (nftables, and iptables
//! on its nf_tables backend, Debian's default), and a small walk of a
//! packet through it: does a pod packet get through the forward hook, does
//! pod traffic leaving the cluster hit a masquerade?
//!
//! The walk only understands matches on the IPv4 source and destination
//! address (prefixes, addresses, sets, `==`/`!=`/`in`); a rule with any
//! other match is treated as not matching, so a conditional accept (an
//! `iifname`, a `ct state`) is never counted as letting pod traffic through.
//! Every base chain on a hook is walked: in nftables an accept in one table
//! does not overrule a drop in another.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnetwork::Ipv4Network;
use serde_json::Value;

pub struct Ruleset {
    items: Vec<Value>,
}

/// A base chain: (family, table, name, policy).
pub struct BaseChain {
    pub family: String,
    pub table: String,
    pub name: String,
    pub policy: String,
}

/// Where a packet ends in one base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// A drop or reject: the rule (or the policy) that did it, in nft words.
    Drop(String),
    Masquerade,
    /// Left the chain without a verdict (policy accept).
    Continue,
}

pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ruleset {
    /// `nft -j list ruleset`; Err when nft is missing or fails.
    pub fn read() -> Result<Ruleset, String> {
        let out = Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .output()
            .map_err(|e| format!("cannot run nft: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nft -j list ruleset: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ruleset::parse(&out.stdout)
    }

    pub fn parse(json: &[u8]) -> Result<Ruleset, String> {
        let v: Value = serde_json::from_slice(json).map_err(|e| format!("nft JSON: {e}"))?;
        let items = v
            .get("nftables")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(Ruleset { items })
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.items.iter().filter_map(move |i| i.get(kind))
    }

    /// Base chains on `hook` (and of `type`, when given) in families that see IPv4.
    pub fn base_chains(&self, hook: &str, kind: Option<&str>) -> Vec<BaseChain> {
        self.of_kind("chain")
            .filter(|c| c.get("hook").and_then(Value::as_str) == Some(hook))
            .filter(|c| kind.is_none() || c.get("type").and_then(Value::as_str) == kind)
            .filter(|c| matches!(str_of(c, "family"), "ip" | "inet"))
            .map(|c| BaseChain {
                family: str_of(c, "family").into(),
                table: str_of(c, "table").into(),
                name: str_of(c, "name").into(),
                policy: c
                    .get("policy")
                    .and_then(Value::as_str)
                    .unwrap_or("accept")
                    .into(),
            })
            .collect()
    }

    fn rules<'a>(&'a self, family: &'a str, table: &'a str, chain: &'a str) -> Vec<&'a Value> {
        self.of_kind("rule")
            .filter(|r| {
                str_of(r, "family") == family
                    && str_of(r, "table") == table
                    && str_of(r, "chain") == chain
            })
            .collect()
    }

    /// The verdict for `p` in base chain `c`.
    pub fn walk(&self, c: &BaseChain, p: &Packet) -> Verdict {
        match self.walk_chain(&c.family, &c.table, &c.name, p, 0) {
            Verdict::Continue if c.policy == "drop" => Verdict::Drop(format!(
                "policy drop of chain {} {} {}",
                c.family, c.table, c.name
            )),
            v => v,
        }
    }

    fn walk_chain(&self, fam: &str, table: &str, chain: &str, p: &Packet, depth: u32) -> Verdict {
        if depth > 16 {
            return Verdict::Continue;
        }
        for rule in self.rules(fam, table, chain) {
            let exprs = rule
                .get("expr")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !exprs.iter().all(|e| matches_packet(e, p)) {
                continue;
            }
            for e in &exprs {
                let Some((verb, arg)) = e.as_object().and_then(|o| o.iter().next()) else {
                    continue;
                };
                match verb.as_str() {
                    "accept" => return Verdict::Accept,
                    "drop" | "reject" => {
                        return Verdict::Drop(format!(
                            "a {verb} rule in chain {fam} {table} {chain} (handle {})",
                            rule.get("handle").and_then(Value::as_u64).unwrap_or(0)
                        ))
                    }
                    "masquerade" => return Verdict::Masquerade,
                    "return" => return Verdict::Continue,
                    "jump" | "goto" => {
                        let target = arg.get("target").and_then(Value::as_str).unwrap_or("");
                        match self.walk_chain(fam, table, target, p, depth + 1) {
                            Verdict::Continue if verb == "jump" => break,
                            v => return v,
                        }
                    }
                    _ => {}
                }
            }
        }
        Verdict::Continue
    }
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Whether one expression lets `p` continue: verdicts, counters, comments
/// and logging do; address matches are evaluated; anything else does not.
fn matches_packet(e: &Value, p: &Packet) -> bool {
    let Some(m) = e.get("match") else {
        let harmless = [
            "accept",
            "drop",
            "reject",
            "jump",
            "goto",
            "return",
            "masquerade",
            "counter",
            "log",
            "xt",
        ];
        return e
            .as_object()
            .and_then(|o| o.keys().next())
            .is_some_and(|k| harmless.contains(&k.as_str()));
    };
    let field = m
        .get("left")
        .and_then(|l| l.get("payload"))
        .filter(|pl| str_of(pl, "protocol") == "ip")
        .map(|pl| str_of(pl, "field"));
    let addr = match field {
        Some("saddr") => p.src,
        Some("daddr") => p.dst,
        _ => return false,
    };
    let Some(inside) = m.get("right").and_then(|r| contains(r, addr)) else {
        return false;
    };
    match str_of(m, "op") {
        "==" | "in" => inside,
        "!=" => !inside,
        _ => false,
    }
}

/// Whether the nft value `v` (address, prefix, range or set of them) holds `a`.
fn contains(v: &Value, a: Ipv4Addr) -> Option<bool> {
    if let Some(s) = v.as_str() {
        return s.parse::<Ipv4Addr>().ok().map(|x| x == a);
    }
    if let Some(p) = v.get("prefix") {
        let net = Ipv4Network::new(
            str_of(p, "addr").parse().ok()?,
            u8::try_from(p.get("len")?.as_u64()?).ok()?,
        )
        .ok()?;
        return Some(net.contains(a));
    }
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let lo: Ipv4Addr = r.first()?.as_str()?.parse().ok()?;
        let hi: Ipv4Addr = r.get(1)?.as_str()?.parse().ok()?;
        return Some(lo <= a && a <= hi);
    }
    if let Some(set) = v.get("set").and_then(Value::as_array) {
        let mut any = false;
        for item in set {
            any |= contains(item, a)?;
        }
        return Some(any);
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn pkt(s: &str, d: &str) -> Packet {
        Packet {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
        }
    }

    #[test]
    fn walks_drop_policies_accepts_and_jumps() {
        let rs = Ruleset::parse(br#"{"nftables": [
          {"table": {"family": "ip", "name": "filter"}},
          {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward", "policy": "drop"}},
          {"chain": {"family": "ip", "table": "filter", "name": "FLANNEL-FWD"}},
          {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3, "expr": [
             {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "cni0"}}, {"accept": null}]}},
          {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4, "expr": [
             {"counter": null}, {"jump": {"target": "FLANNEL-FWD"}}]}},
          {"rule": {"family": "ip", "table": "filter", "chain": "FLANNEL-FWD", "handle": 5, "expr": [
             {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
             {"xt": {"type": "match", "name": "comment"}}, {"accept": null}]}},
          {"chain": {"family": "inet", "table": "t", "name": "post", "type": "nat", "hook": "postrouting", "policy": "accept"}},
          {"rule": {"family": "inet", "table": "t", "chain": "post", "handle": 9, "expr": [
             {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"set": [{"prefix": {"addr": "10.244.0.0", "len": 16}}, "192.0.2.1"]}}},
             {"masquerade": null}]}}
        ]}"#).unwrap();
        let fwd = rs.base_chains("forward", None);
        assert_eq!(fwd.len(), 1);
        assert_eq!(
            rs.walk(&fwd[0], &pkt("10.244.1.2", "10.244.2.3")),
            Verdict::Accept
        );
        // The iifname accept is not understood, so it does not count.
        assert!(matches!(
            rs.walk(&fwd[0], &pkt("10.245.1.2", "10.244.2.3")),
            Verdict::Drop(why) if why.contains("policy drop")
        ));
        let nat = rs.base_chains("postrouting", Some("nat"));
        assert_eq!(
            rs.walk(&nat[0], &pkt("10.244.1.2", "203.0.113.9")),
            Verdict::Masquerade
        );
        assert_eq!(
            rs.walk(&nat[0], &pkt("10.244.1.2", "10.244.9.9")),
            Verdict::Continue
        );
        assert_eq!(
            rs.walk(&nat[0], &pkt("10.244.1.2", "192.0.2.1")),
            Verdict::Continue
        );
    }
}
