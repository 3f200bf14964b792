//! host-local: IPAM from local ranges, with reservations kept as files in
//! `<dataDir>/<network>/`. Config- and store-compatible with the reference
//! plugin; see `plugin.rs` for the commands and `allocator.rs` for where
//! weft deliberately differs.

mod allocator;
mod config;
mod decode;
mod dns;
mod plugin;
mod range;
mod store;

fn main() -> std::process::ExitCode {
    weft_cni::skel::main(&plugin::HostLocal)
}
