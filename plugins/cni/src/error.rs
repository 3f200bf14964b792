//! CNI errors and their codes. Every failure a plugin can report maps to one
//! of the spec's codes (1-7, 11, 50, 51) or to one of weft's own (>= 100).
//! weft never answers with the reference plugins' catch-all 999.

use serde_json::{json, Value};

/// Numeric error codes. The spec reserves 0-99; weft's own start at 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    NotAvailable = 50,
    LimitedConnectivity = 51,
    /// The kernel refused a netlink or sysctl operation.
    Kernel = 100,
    /// Every address of a range set is allocated.
    RangeFull = 101,
    /// A requested address is taken, outside the ranges, or the gateway.
    AddressUnavailable = 102,
    /// The interface or allocation being created already exists.
    AlreadyExists = 103,
    /// Installing or removing firewall (nftables/iptables) rules failed.
    Firewall = 104,
    /// CHECK found live state that differs from the previous result.
    CheckFailed = 105,
    /// A delegated plugin could not be run or answered garbage.
    DelegateFailed = 106,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{msg}")]
    Spec {
        code: ErrorCode,
        msg: String,
        details: String,
    },
    /// An error reported by a delegated plugin, passed on unchanged.
    #[error("{msg}")]
    Delegated {
        code: u32,
        msg: String,
        details: String,
    },
    /// Several independent failures (DEL and GC keep going and report all).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Error::Spec {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(
        code: ErrorCode,
        msg: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Error::Spec {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn version(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::IncompatibleVersion, msg)
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidEnvironment, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfig, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(ErrorCode::Decode, msg)
    }
    pub fn io(context: impl std::fmt::Display, err: &std::io::Error) -> Self {
        Self::with_details(
            ErrorCode::Io,
            format!("{context}: {err}"),
            err.kind().to_string(),
        )
    }
    /// A kernel (netlink, sysctl) failure; `err` usually carries the errno.
    pub fn kernel(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Kernel, format!("{context}: {err}"))
    }

    /// The code printed for this error; a list reports its first member's code.
    pub fn code(&self) -> u32 {
        match self {
            Error::Spec { code, .. } => code.as_u32(),
            Error::Delegated { code, .. } => *code,
            Error::Many(list) => list.first().map_or(ErrorCode::Kernel.as_u32(), Error::code),
        }
    }

    pub fn details(&self) -> String {
        match self {
            Error::Spec { details, .. } | Error::Delegated { details, .. } => details.clone(),
            Error::Many(_) => String::new(),
        }
    }

    /// The spec's error object, as printed on stdout (with `details`
    /// always present, empty when there is nothing to add to `msg`).
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code(),
            "msg": self.to_string(),
            "details": self.details(),
        })
    }

    /// Fold a list of independent failures: none is Ok, one is itself.
    pub fn from_list(mut errors: Vec<Error>) -> Result<(), Error> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::decode(format!("cannot decode JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_and_codes() {
        let e = Error::with_details(ErrorCode::RangeFull, "no free address", "10.0.0.0/30");
        let v = e.to_json("1.1.0");
        assert_eq!(v["code"], 101);
        assert_eq!(v["msg"], "no free address");
        assert_eq!(v["details"], "10.0.0.0/30");
        assert_eq!(v["cniVersion"], "1.1.0");
        let plain = Error::config("bad").to_json("0.4.0");
        assert_eq!(plain["details"], "");
    }

    #[test]
    fn many_reports_all_and_first_code() {
        let e = Error::from_list(vec![Error::env("a"), Error::config("b")]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert_eq!(e.to_string(), "a; b");
        assert!(Error::from_list(vec![]).is_ok());
    }
}
