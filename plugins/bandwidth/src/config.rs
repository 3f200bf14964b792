//! The bandwidth limits: `ingressRate`/`ingressBurst`/`egressRate`/
//! `egressBurst` at the top level of the config or in
//! `runtimeConfig.bandwidth` (the `bandwidth` capability). As in the
//! reference, any top-level field means runtimeConfig is ignored. Rates
//! are bits per second, bursts bits. Everything is validated before
//! anything is changed. Key names match case-insensitively, as Go's JSON
//! decoder matches them in the reference: containerd's CRI (go-cni's
//! untagged struct) sends `runtimeConfig.bandwidth` as `IngressRate`,
//! `IngressBurst`, `EgressRate`, `EgressBurst`.

use serde_json::{Map, Value};
use weft_cni::{Error, ErrorCode};

/// The reference refuses bursts whose byte count does not fit 32 bits.
const MAX_BURST_BITS: u64 = (u32::MAX as u64 - 1) * 8 + 7;
/// Below one byte per second the kernel cannot shape (the reference fails
/// later with "create qdisc: invalid argument").
const MIN_RATE_BITS: u64 = 8;

const FIELDS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];
const SUBNET_FIELDS: [&str; 2] = ["shapedSubnets", "unshapedSubnets"];

/// `entry` with every key that matches one of ours case-insensitively
/// spelled our way; an exact match wins over a case-insensitive one.
fn canonical_keys(entry: &Map<String, Value>) -> Map<String, Value> {
    let mut out = entry.clone();
    for field in FIELDS.iter().chain(&SUBNET_FIELDS) {
        if entry.contains_key(*field) {
            continue;
        }
        if let Some((key, v)) = entry.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)) {
            out.remove(key);
            out.insert((*field).to_string(), v.clone());
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
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    /// The limits a request asks for.
    pub fn parse(config: &Value) -> Result<Limits, Error> {
        let top = canonical_keys(&config.as_object().cloned().unwrap_or_default());
        let (source, entry) = if FIELDS
            .iter()
            .chain(&SUBNET_FIELDS)
            .any(|f| top.contains_key(*f))
        {
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
        refuse_subnets(source, &entry)?;
        Ok(Limits {
            ingress: direction(source, &entry, "ingress")?,
            egress: direction(source, &entry, "egress")?,
        })
    }
}

/// shapedSubnets/unshapedSubnets existed only in the reference's 1.5.x and
/// are silently ignored by 1.6+, which then shapes everything. weft does
/// not shape by destination yet, so a config that asks for it is refused
/// rather than shaped differently than it says.
fn refuse_subnets(source: &str, entry: &Map<String, Value>) -> Result<(), Error> {
    for key in ["shapedSubnets", "unshapedSubnets"] {
        match entry.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) if list.is_empty() => {}
            Some(v) => {
                return Err(Error::new(
                    ErrorCode::UnsupportedField,
                    format!("{source}{key} ({v}) is not supported by weft's bandwidth plugin"),
                ))
            }
        }
    }
    Ok(())
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
        assert_eq!(
            code(json!({"ingressRate": 8, "ingressBurst": 8, "shapedSubnets": ["10.0.0.0/8"]})),
            2
        );
        assert!(Limits::parse(&json!({"unshapedSubnets": []})).is_ok());
    }
}
