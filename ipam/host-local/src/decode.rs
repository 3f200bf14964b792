//! Decoding the config with serde. serde_path_to_error supplies the path of
//! the offending field and every error raised here is worded to follow it,
//! so a message reads "ipam.ranges[0][0].subnet must be a string, not 5".
//! serde's own wording ("invalid type: ..., expected ...") never appears:
//! lists and objects are checked by [`shaped`], leaves by the functions
//! below, and the structs default every field.

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{DeserializeOwned, Error as _, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use weft_cni::Error;

use crate::range::canonical_ip;

/// Decodes `T` from `value`; a failure is a config error led by the field's path.
pub fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(value)
        .map_err(|e| Error::config(format!("{} {}", e.path(), e.inner())))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    List,
    Object,
}

/// `T` from a JSON list or object (as `kind` says), None for null, else
/// "must be {what}, not <the value>".
pub fn shaped<'de, D, T>(d: D, kind: Kind, what: &'static str) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_any(Shaped {
        kind,
        what,
        target: PhantomData,
    })
}

/// As [`shaped`], but null is wrong too (an item of a list).
pub fn required<'de, D, T>(d: D, kind: Kind, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    shaped(d, kind, what)?.ok_or_else(|| D::Error::custom(format!("must be {what}, not null")))
}

struct Shaped<T> {
    kind: Kind,
    what: &'static str,
    target: PhantomData<T>,
}

impl<T> Shaped<T> {
    fn wrong<E: serde::de::Error>(&self, found: impl fmt::Display) -> E {
        E::custom(format!("must be {}, not {found}", self.what))
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Shaped<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let items = SeqAccessDeserializer::new(seq);
        match self.kind {
            Kind::List => T::deserialize(items).map(Some),
            Kind::Object => Err(self.wrong(Value::deserialize(items)?)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let entries = MapAccessDeserializer::new(map);
        match self.kind {
            Kind::Object => T::deserialize(entries).map(Some),
            Kind::List => Err(self.wrong(Value::deserialize(entries)?)),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Err(self.wrong(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(self.wrong(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(self.wrong(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Err(self.wrong(Value::from(v)))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Err(self.wrong(Value::from(v)))
    }
}

/// `#[serde(deserialize_with)]` for an object section; null is unset.
pub fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    shaped(d, Kind::Object, "an object")
}

/// A string field; absent, null and "" all mean unset (as Go's net.IP
/// decoding treats "").
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        other => Err(D::Error::custom(format!("must be a string, not {other}"))),
    }
}

/// An IP address field (IPv4-mapped IPv6 is read as IPv4); unset as [`text`].
pub fn ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    text(d)?
        .map(|s| {
            parse_ip(&s)
                .ok_or_else(|| D::Error::custom(format!("\"{s}\" is not a valid IP address")))
        })
        .transpose()
}

/// An `addr/prefix` field, the address as written; unset as [`text`].
pub fn cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNetwork>, D::Error> {
    text(d)?
        .map(|s| {
            parse_cidr(&s).ok_or_else(|| D::Error::custom(format!("\"{s}\" is not a valid CIDR")))
        })
        .transpose()
}

/// A non-negative integer field that fits a u32; null is unset.
pub fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        n => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("must be a non-negative integer, not {n}"))),
    }
}

pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical_ip)
}

/// `addr/prefix` with the address as written (host bits kept).
pub fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.split_once('/')?;
    if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ip = addr.parse::<IpAddr>().ok()?;
    IpNetwork::new(ip, prefix.parse::<u8>().ok()?).ok()
}
