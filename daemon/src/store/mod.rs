//! The lease store: etcd client, lease keys and lease values.

pub mod attrs;
pub mod etcd;
pub mod keys;
