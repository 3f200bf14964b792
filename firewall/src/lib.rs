//! The firewall plumbing weft's plugins share: running `nft` and
//! `iptables(-restore)` with a script on stdin, probing which backend works,
//! and the per-attachment key that every rule's comment ends with, so DEL,
//! CHECK and GC find an attachment's rules without knowing its addresses;
//! and a detached holder for a netlink socket whose release would wait.

mod hold;
mod key;
mod nft;
mod run;

pub use hold::{hold_if_asked, hold_in_background};
pub use key::{attachment_key, comment, comment_key, network_key, KEY_LEN};
pub use nft::{nft_delete_where, nft_handles, nft_rules, nft_works, NftRule};
pub use run::{fail, run};
