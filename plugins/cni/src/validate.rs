//! Validation of the identifiers a runtime hands a plugin, before anything
//! is changed. The rules and codes follow the spec and libcni.

use crate::error::{Error, ErrorCode};

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`
fn matches_id_syntax(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric()) && chars.all(is_id_char)
}

pub fn container_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::new(
            ErrorCode::UnknownContainer,
            "CNI_CONTAINERID is empty",
        ));
    }
    if !matches_id_syntax(id) {
        return Err(Error::env(format!(
            "CNI_CONTAINERID \"{}\" is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
            id.escape_debug()
        )));
    }
    Ok(())
}

pub fn network_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::config("network name is missing: set \"name\""));
    }
    if !matches_id_syntax(name) {
        return Err(Error::config(format!(
            "network name \"{}\" is invalid: it must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$",
            name.escape_debug()
        )));
    }
    Ok(())
}

pub const IFNAME_MAX: usize = 15;

pub fn interface_name(name: &str) -> Result<(), Error> {
    let problem = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > IFNAME_MAX {
        Some(format!(
            "is {} bytes long; the kernel allows at most {IFNAME_MAX}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is a reserved name".to_string())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
            .map(|c| format!("contains the forbidden character {c:?}"))
    };
    match problem {
        Some(p) => Err(Error::env(format!(
            "CNI_IFNAME \"{}\" {p}",
            name.escape_debug()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(container_id("abc-1_2.3").is_ok());
        assert_eq!(container_id("").unwrap_err().code(), 3);
        for bad in ["-abc", "a b", "a/b", "ä", "a;b", ".x"] {
            assert_eq!(container_id(bad).unwrap_err().code(), 4, "{bad}");
        }
    }

    #[test]
    fn interface_names() {
        assert!(interface_name("eth0").is_ok());
        assert!(interface_name("a23456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "a234567890123456",
            "é23456789012345",
        ] {
            assert_eq!(interface_name(bad).unwrap_err().code(), 4, "{bad:?}");
        }
    }

    #[test]
    fn network_names() {
        assert!(network_name("cbr0").is_ok());
        assert_eq!(network_name("").unwrap_err().code(), 7);
        assert_eq!(network_name("a/b").unwrap_err().code(), 7);
    }
}
