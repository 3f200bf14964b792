//! weft-install: the DaemonSet's init container step. Copies the CNI plugin
//! binaries and the conflist onto the host, each replaced atomically
//! (flannel-env's write_atomic: temporary file in the target directory,
//! fsync, rename, fsync of the directory), so a runtime
//! never executes or reads a half-written file and a running plugin is
//! never hit by "text file busy".
//!
//! ```text
//! weft-install --bin-src /opt/weft/bin --bin-dst /host/opt/cni/bin \
//!              --conf-src /etc/kube-weft/cni-conf.json \
//!              --conf-dst /host/etc/cni/net.d/10-weft.conflist \
//!              bridge host-local loopback flannel
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Install weft's CNI binaries and conflist onto the host, atomically")]
struct Args {
    /// Directory holding the plugin binaries in the image.
    #[arg(long)]
    bin_src: PathBuf,
    /// The host's CNI binary directory (mounted).
    #[arg(long)]
    bin_dst: PathBuf,
    /// The conflist to install.
    #[arg(long)]
    conf_src: PathBuf,
    /// Where the conflist goes on the host.
    #[arg(long)]
    conf_dst: PathBuf,
    /// Plugin names to install.
    #[arg(required = true)]
    plugins: Vec<String>,
}

fn install(src: &Path, dst: &Path, mode: u32) -> Result<()> {
    let data = fs::read(src).with_context(|| format!("read {}", src.display()))?;
    let dir = dst
        .parent()
        .context("destination has no parent directory")?;
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    flannel_env::write_atomic(dst, &data, mode)
        .with_context(|| format!("install {}", dst.display()))?;
    eprintln!("weft-install: installed {}", dst.display());
    Ok(())
}

fn run(args: &Args) -> Result<()> {
    for plugin in &args.plugins {
        if plugin.contains('/') || plugin.is_empty() {
            bail!("plugin name {plugin:?} is not a file name");
        }
        install(
            &args.bin_src.join(plugin),
            &args.bin_dst.join(plugin),
            0o755,
        )?;
    }
    let conf =
        fs::read(&args.conf_src).with_context(|| format!("read {}", args.conf_src.display()))?;
    serde_json::from_slice::<serde_json::Value>(&conf)
        .with_context(|| format!("{} is not valid JSON", args.conf_src.display()))?;
    install(&args.conf_src, &args.conf_dst, 0o644)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-install: {e:#}");
            ExitCode::FAILURE
        }
    }
}
