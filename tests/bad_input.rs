//! Placeholder: filled in by the bad_input suite.
