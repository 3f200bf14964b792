//! Placeholder: filled in by the interop suite.
