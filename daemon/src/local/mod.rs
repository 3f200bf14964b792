//! The local interfaces: /healthz, /readyz and /metrics.

pub mod health;
pub mod metrics;
