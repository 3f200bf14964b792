//! Placeholder: filled in by the loopback suite.
