//! The bandwidth limits: `ingressRate`/`ingressBurst`/`egressRate`/
//! `egressBurst` at the top level of the config or in
//! `runtimeConfig.bandwidth` (the `bandwidth` capability). As in the
//! reference, any top-level field means runtimeConfig is ignored. Rates
//! are bits per second, bursts bits. `shapedSubnets`/`unshapedSubnets`
//! (the reference's 1.5.x form) narrow what is shaped. Everything is
//! validated before anything is changed. Key names match case-insensitively,
//! as Go's JSON decoder matches them in the reference: containerd's CRI
//! (go-cni's untagged struct) sends `runtimeConfig.bandwidth` as
//! `IngressRate`, `IngressBurst`, `EgressRate`, `EgressBurst`.

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use weft_cni::Error;

/// The reference refuses bursts whose byte count does not fit 32 bits.
const MAX_BURST_BITS: u64 = (u32::MAX as u64 - 1) * 8 + 7;
/// Below one byte per second the kernel cannot shape (the reference fails
/// later with "create qdisc: invalid argument").
const MIN_RATE_BITS: u64 = 8;

const FIELDS: [&str; 6] = [
    "ingressRate",
    "ingressBurst",
    "egressRate",
    "egressBurst",
    "shapedSubnets",
    "unshapedSubnets",
];

/// `entry` with every key that matches one of ours case-insensitively
/// spelled our way; an exact match wins over a case-insensitive one.
fn canonical_keys(entry: &Map<String, Value>) -> Map<String, Value> {
    let mut out = entry.clone();
    for field in FIELDS {
        if entry.contains_key(field) {
            continue;
        }
        if let Some((key, v)) = entry.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)) {
            out.remove(key);
            out.insert(field.to_string(), v.clone());
        }
    }
    out
}

/// One direction's token bucket, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bits.
    pub burst: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Traffic into the pod.
    pub ingress: Option<Limit>,
    /// Traffic out of the pod.
    pub egress: Option<Limit>,
    /// Which of it the limits apply to.
    pub scope: Scope,
}

/// The traffic a pod's limits apply to, by the address at the far end
/// (the source of traffic into the pod, the destination of traffic out).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything (no subnets configured).
    #[default]
    All,
    /// `shapedSubnets`: only traffic to or from these prefixes.
    Only(Vec<IpNetwork>),
    /// `unshapedSubnets`: everything but traffic to or from these.
    Except(Vec<IpNetwork>),
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    /// The limits a request asks for.
    pub fn parse(config: &Value) -> Result<Limits, Error> {
        let top = canonical_keys(&config.as_object().cloned().unwrap_or_default());
        let (source, entry) = if FIELDS.iter().any(|f| top.contains_key(*f)) {
            ("", top)
        } else {
            match config.pointer("/runtimeConfig/bandwidth") {
                None | Some(Value::Null) => return Ok(Limits::default()),
                Some(Value::Object(m)) => ("runtimeConfig.bandwidth.", canonical_keys(m)),
                Some(other) => {
                    return Err(Error::config(format!(
                        "runtimeConfig.bandwidth must be an object, not {other}"
                    )))
                }
            }
        };
        Ok(Limits {
            ingress: direction(source, &entry, "ingress")?,
            egress: direction(source, &entry, "egress")?,
            scope: scope(source, &entry)?,
        })
    }
}

/// shapedSubnets/unshapedSubnets as the reference's 1.5.x took them: lists
/// of CIDRs, at most one of the two non-empty. (1.6+ ignores both and
/// shapes everything.)
fn scope(source: &str, entry: &Map<String, Value>) -> Result<Scope, Error> {
    let shaped = subnets(source, entry, "shapedSubnets")?;
    let unshaped = subnets(source, entry, "unshapedSubnets")?;
    match (shaped.is_empty(), unshaped.is_empty()) {
        (true, true) => Ok(Scope::All),
        (false, true) => Ok(Scope::Only(shaped)),
        (true, false) => Ok(Scope::Except(unshaped)),
        (false, false) => Err(Error::config(format!(
            "{source}shapedSubnets and {source}unshapedSubnets cannot both be set: \
             shape only some subnets, or all but some"
        ))),
    }
}

/// A list of CIDRs ("10.0.0.0/8", "fd00::/64"), as prefixes with the host
/// bits cleared; absent or null is empty.
fn subnets(source: &str, entry: &Map<String, Value>, key: &str) -> Result<Vec<IpNetwork>, Error> {
    let list = match entry.get(key) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(Error::config(format!(
                "{source}{key} must be a list of CIDRs, not {other}"
            )))
        }
    };
    list.iter()
        .map(|v| {
            let bad = || Error::config(format!("{source}{key}: {v} is not a CIDR like 10.0.0.0/8"));
            let text = v.as_str().filter(|t| t.contains('/')).ok_or_else(bad)?;
            let net: IpNetwork = text.parse().map_err(|_| bad())?;
            IpNetwork::new(net.network(), net.prefix()).map_err(|_| bad())
        })
        .collect()
}

/// A positive integer field, or None when absent or null.
fn positive(source: &str, entry: &Map<String, Value>, key: &str) -> Result<Option<u64>, Error> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Err(Error::config(format!(
                "{source}{key} is 0; leave it out for no limit"
            ))),
            Some(v) => Ok(Some(v)),
            None => Err(Error::config(format!(
                "{source}{key} must be a positive whole number, not {n}"
            ))),
        },
        Some(other) => Err(Error::config(format!(
            "{source}{key} must be a number, not {other}"
        ))),
    }
}

fn direction(source: &str, entry: &Map<String, Value>, dir: &str) -> Result<Option<Limit>, Error> {
    let rate_key = format!("{dir}Rate");
    let burst_key = format!("{dir}Burst");
    let rate = positive(source, entry, &rate_key)?;
    let burst = positive(source, entry, &burst_key)?;
    let (rate, burst) = match (rate, burst) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(Error::config(format!(
                "{source}{rate_key} is set, so {burst_key} must be set too"
            )))
        }
        (None, Some(_)) => {
            return Err(Error::config(format!(
                "{source}{burst_key} is set, so {rate_key} must be set too"
            )))
        }
        (Some(r), Some(b)) => (r, b),
    };
    if rate < MIN_RATE_BITS {
        return Err(Error::config(format!(
            "{source}{rate_key} {rate} is below {MIN_RATE_BITS} bits/s (one byte per second)"
        )));
    }
    if burst > MAX_BURST_BITS {
        return Err(Error::config(format!(
            "{source}{burst_key} {burst} bits is more than 4GB"
        )));
    }
    Ok(Some(Limit { rate, burst }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code(v: Value) -> u32 {
        Limits::parse(&v).unwrap_err().code()
    }

    #[test]
    fn top_level_wins_over_runtime_config() {
        let l = Limits::parse(&json!({
            "ingressRate": 1000000, "ingressBurst": 80000,
            "runtimeConfig": {"bandwidth": {"egressRate": 8, "egressBurst": 8}}
        }))
        .unwrap();
        assert_eq!(
            l.ingress,
            Some(Limit {
                rate: 1_000_000,
                burst: 80_000
            })
        );
        assert_eq!(l.egress, None);
        let rc = Limits::parse(&json!({
            "runtimeConfig": {"bandwidth": {"egressRate": 16, "egressBurst": 4294967295u64}}
        }))
        .unwrap();
        assert_eq!(
            rc.egress,
            Some(Limit {
                rate: 16,
                burst: 4_294_967_295
            })
        );
        assert!(Limits::parse(&json!({})).unwrap().is_empty());
        assert!(Limits::parse(&json!({"runtimeConfig": {}}))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn containerds_capitalised_keys_are_read() {
        // What containerd 1.6 sends for the kubernetes.io/*-bandwidth
        // annotations (measured in tests/cri.rs).
        let l = Limits::parse(&json!({"runtimeConfig": {"bandwidth": {
            "IngressRate": 8000000, "IngressBurst": 4294967295u64,
            "EgressRate": 16000000, "EgressBurst": 4294967295u64}}}))
        .unwrap();
        assert_eq!(l.ingress.map(|i| i.rate), Some(8_000_000));
        assert_eq!(l.egress.map(|e| e.burst), Some(4_294_967_295));
        // An exact spelling wins over another case.
        let l = Limits::parse(&json!({"ingressRate": 800, "INGRESSRATE": 1, "ingressBurst": 8}))
            .unwrap();
        assert_eq!(l.ingress.map(|i| i.rate), Some(800));
    }

    #[test]
    fn bad_values_are_config_errors() {
        assert_eq!(code(json!({"ingressRate": 1000})), 7);
        assert_eq!(code(json!({"egressBurst": 1000})), 7);
        assert_eq!(code(json!({"ingressRate": 0, "ingressBurst": 10})), 7);
        assert_eq!(code(json!({"ingressRate": -8, "ingressBurst": 10})), 7);
        assert_eq!(code(json!({"ingressRate": 1.5, "ingressBurst": 10})), 7);
        assert_eq!(code(json!({"ingressRate": "1M", "ingressBurst": 10})), 7);
        assert_eq!(code(json!({"ingressRate": 7, "ingressBurst": 10})), 7);
        assert_eq!(
            code(json!({"egressRate": 8, "egressBurst": 34359738360u64})),
            7
        );
        assert!(Limits::parse(&json!({"egressRate": 8, "egressBurst": 34359738359u64})).is_ok());
        assert_eq!(code(json!({"runtimeConfig": {"bandwidth": 5}})), 7);
        assert!(Limits::parse(&json!({"unshapedSubnets": []})).is_ok());
    }

    #[test]
    fn subnets_are_cidrs_of_either_family_in_one_list() {
        let l = Limits::parse(&json!({
            "egressRate": 8, "egressBurst": 8,
            "shapedSubnets": ["10.1.2.3/16", "fd00::1/64"], "unshapedSubnets": []
        }))
        .unwrap();
        assert_eq!(
            l.scope,
            Scope::Only(vec![
                "10.1.0.0/16".parse().unwrap(),
                "fd00::/64".parse().unwrap()
            ])
        );
        let rc = Limits::parse(&json!({"runtimeConfig": {"bandwidth": {
            "ingressRate": 8, "ingressBurst": 8, "unshapedSubnets": ["0.0.0.0/0"]}}}))
        .unwrap();
        assert_eq!(rc.scope, Scope::Except(vec!["0.0.0.0/0".parse().unwrap()]));
        for bad in [
            json!({"shapedSubnets": ["10.0.0.0/8"], "unshapedSubnets": ["fd00::/8"]}),
            json!({"shapedSubnets": ["10.0.0.0/33"]}),
            json!({"shapedSubnets": ["10.0.0.1"]}),
            json!({"shapedSubnets": ["bogus/8"]}),
            json!({"shapedSubnets": [" 10.0.0.0/8"]}),
            json!({"unshapedSubnets": [8]}),
            json!({"unshapedSubnets": "10.0.0.0/8"}),
            json!({"unshapedSubnets": ["fd00::/129"]}),
        ] {
            assert_eq!(code(bad.clone()), 7, "{bad}");
        }
    }
}
