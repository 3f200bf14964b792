//! The local interfaces: /healthz, /readyz, /metrics, and weftd's state
//! for weftctl and the flannel plugin (the state file, /state).

pub mod health;
pub mod metrics;
pub mod status;
