//! Placeholder: filled in by the libcni suite.
