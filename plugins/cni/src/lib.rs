//! The CNI core shared by every weft binary: the spec's types, its error
//! codes, result conversion between spec versions, the plugin entry point
//! (environment, stdin, validation, dispatch) and delegation to other plugins.

pub mod args;
pub mod delegate;
pub mod error;
pub mod log;
pub mod result;
pub mod skel;
pub mod validate;
pub mod version;

pub use error::{Error, ErrorCode};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use skel::{Command, Plugin, Request};
pub use version::Version;
