//! weftctl: a node that explains itself. Run on a node (or with `kubectl
//! exec` in weft's DaemonSet pod):
//!
//! - `weftctl status`: the lease, readiness and why not, etcd, peers,
//!   masquerade. Exit 0 ready, 1 not ready, 2 weftd cannot be reached.
//! - `weftctl peers`: one line per lease with its backend data, whether its
//!   kernel entries are present, and why it was rejected.
//! - `weftctl doctor`: checks the node against what weftd knows and prints
//!   each as ok or as a problem with a one-line fix; exit 1 when any fails.
//!
//! It reads weftd's state file (or `GET /state` on its health port), the
//! kernel (netlink, sysctls, `nft -j list ruleset`), subnet.env and the
//! host-local store. It has no async runtime and no etcd client: what it
//! knows of etcd is what weftd reported.

mod checks;
mod firewall;
mod kernel;
mod peers;
mod source;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "weftctl",
    version,
    about = "What weftd knows and what is wrong on this node"
)]
pub struct Cli {
    #[command(flatten)]
    pub paths: Paths,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Lease, readiness and reason, etcd, peer counts, masquerade.
    Status,
    /// One line per lease: subnet, public IP, backend data, kernel entries, rejection.
    Peers,
    /// Check the node; each check ok or a problem with a fix.
    Doctor,
}

#[derive(clap::Args, Debug, Clone)]
pub struct Paths {
    /// flannel's subnet file, as weftd's --subnet-file.
    #[arg(long, global = true, default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// weftd's state file (default: weftd-state.json next to --subnet-file).
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// Read the state from weftd's health port instead, e.g. http://127.0.0.1:8081.
    #[arg(long, global = true)]
    pub endpoint: Option<String>,
    /// host-local's dataDir.
    #[arg(long, global = true, default_value = "/var/lib/cni/networks")]
    pub ipam_dir: PathBuf,
    /// The CNI network name (the conflist's "name"; kube-flannel's is cbr0).
    #[arg(long, global = true, default_value = "cbr0")]
    pub cni_network: String,
    /// The pod bridge.
    #[arg(long, global = true, default_value = "cni0")]
    pub bridge: String,
    /// Judge the kernel as this release (for the checksum-offload check).
    #[arg(long, global = true, hide = true)]
    pub kernel_release: Option<String>,
}

impl Paths {
    pub fn state_path(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| weft_node_state::path_for_subnet_file(&self.subnet_file))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let observed = source::load(&cli.paths);
    let (text, json, code) = match cli.command {
        Cmd::Status => status::run(&observed),
        Cmd::Peers => peers::run(&observed),
        Cmd::Doctor => checks::run(&cli.paths, &observed),
    };
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_else(|_| "{}".into())
        );
    } else {
        print!("{text}");
    }
    ExitCode::from(code)
}
