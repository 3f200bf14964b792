//! Attachment keys: FNV-1a of (network, containerID, ifname), fixed length,
//! so a comment fits whatever the names' lengths.

/// nft refuses comments longer than 128 characters.
const COMMENT_MAX: usize = 128;
/// Ends every comment; the key after it is what DEL, CHECK and GC match.
const KEY_MARK: &str = " key=";
pub const KEY_LEN: usize = 32;

/// FNV-1a 64 over NUL-separated parts: stable, and no hashing crate.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        let sep: &[u8] = if i == 0 { &[] } else { &[0] };
        for b in sep.iter().chain(part.as_bytes()) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The first half of every key of `network`'s rules.
pub fn network_key(network: &str) -> String {
    format!("{:016x}", fnv1a(&[network]))
}

/// The key of one attachment; its network half lets GC tell this
/// network's rules from others'.
pub fn attachment_key(network: &str, container_id: &str, ifname: &str) -> String {
    format!(
        "{}{:016x}",
        network_key(network),
        fnv1a(&[network, container_id, ifname])
    )
}

/// `readable` for people reading the ruleset (cut to fit, never parsed),
/// then the key. Only printable ASCII is kept, so the text is safe inside
/// quotes and `truncate` cannot split a character.
pub fn comment(readable: &str, key: &str) -> String {
    let mut readable: String = readable
        .chars()
        .filter(|c| *c == ' ' || (c.is_ascii_graphic() && *c != '"' && *c != '\\'))
        .collect();
    readable.truncate(COMMENT_MAX - KEY_MARK.len() - KEY_LEN);
    format!("{readable}{KEY_MARK}{key}")
}

/// The key at the end of one of our comments.
pub fn comment_key(comment: &str) -> Option<&str> {
    let (_, key) = comment.rsplit_once(KEY_MARK)?;
    key.get(..KEY_LEN)
        .filter(|k| k.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_length_and_round_trip() {
        let key = attachment_key("net", "c1", "eth0");
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with(&network_key("net")));
        assert_ne!(key, attachment_key("net", "c1", "eth1"));
        let long = "x".repeat(300);
        let c = comment(&format!("weft net={long} \"id\""), &key);
        assert!(c.len() <= COMMENT_MAX);
        assert!(!c.contains('"'));
        assert_eq!(comment_key(&c), Some(key.as_str()));
        assert_eq!(comment_key("no key here"), None);
    }
}
