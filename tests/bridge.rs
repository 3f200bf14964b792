//! Placeholder: filled in by the bridge suite.
