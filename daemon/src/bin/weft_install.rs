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
//!              [PLUGIN ...]
//! ```
//!
//! Without plugin names it installs every executable file in `--bin-src`
//! but weftd and itself: the list is what the image carries, so a plugin
//! added to the image needs no manifest change, and the manifest never
//! names a binary the image lacks. A plugin named explicitly must exist.

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
    /// Plugin names to install; none = every plugin in --bin-src.
    plugins: Vec<String>,
}

/// Binaries the image carries that are not CNI plugins.
const NOT_PLUGINS: [&str; 2] = ["weftd", "weft-install"];

/// Every executable regular file in `dir` but [`NOT_PLUGINS`], sorted.
fn carried_plugins(dir: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        let meta = fs::metadata(entry.path())
            .with_context(|| format!("stat {}", entry.path().display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
            && !NOT_PLUGINS.contains(&name.as_str())
        {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("{} holds no plugin binaries", dir.display());
    }
    Ok(names)
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
    let plugins = if args.plugins.is_empty() {
        carried_plugins(&args.bin_src)?
    } else {
        args.plugins.clone()
    };
    for plugin in &plugins {
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
