//! The spec versions weft speaks, and the gates between them.

use crate::error::Error;

/// Every version a weft plugin accepts and answers in.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version weft reports when a request names none (VERSION).
pub const LATEST: &str = "1.1.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    /// Parse a request's cniVersion; anything outside [`SUPPORTED`] is code 1.
    pub fn parse(s: &str) -> Result<Version, Error> {
        Ok(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            "" => return Err(Error::version(
                "cniVersion is missing; supported versions are 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
            )),
            other => {
                return Err(Error::version(format!(
                    "cniVersion \"{other}\" is not supported; supported versions are {}",
                    SUPPORTED.join(", ")
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 tag each IP with "version": "4" or "6".
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_every_supported_version() {
        for s in SUPPORTED {
            assert_eq!(Version::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn unknown_versions_are_code_1() {
        for s in ["", "0.1.0", "0.2.0", "1.2.0", "1.0", "x"] {
            assert_eq!(Version::parse(s).unwrap_err().code(), 1, "{s}");
        }
    }
}
