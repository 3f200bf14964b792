//! Placeholder: filled in by the concurrency suite.
