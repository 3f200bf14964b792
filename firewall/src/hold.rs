//! Releasing a netfilter netlink socket right after a transaction that
//! deleted something waits for the kernel to free what it deleted, an RCU
//! grace period later: under strace, `close()` of nft's socket takes 21 ms
//! after `nft delete element` and 40 us after `nft add element`. A DEL
//! hands its socket to a detached child that holds it until this process
//! has exited (its stdin is a pipe only this process writes to), so the
//! runtime waiting for the plugin does not also wait for the kernel.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};

/// Set in the child's environment: hold stdout until stdin closes.
const HOLD_ENV: &str = "WEFT_HOLD_NETLINK";

/// Hand `socket` to a child of this executable that closes it after this
/// process is gone. Best-effort: if the child cannot start, `socket` is
/// simply closed here (and the wait paid here).
pub fn hold_in_background(socket: OwnedFd) {
    let Ok((parent_exit, writer)) = std::io::pipe() else {
        return;
    };
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let spawned = Command::new(exe)
        .env(HOLD_ENV, "1")
        .stdin(parent_exit)
        .stdout(Stdio::from(socket))
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if spawned.is_ok() {
        // Closed when this process exits: that is the child's signal.
        std::mem::forget(writer);
    }
}

/// In the child [`hold_in_background`] starts: wait for the parent to
/// exit, then exit (closing the socket). Call first thing in `main`.
pub fn hold_if_asked() -> Option<ExitCode> {
    std::env::var_os(HOLD_ENV)?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Some(ExitCode::SUCCESS)
}
