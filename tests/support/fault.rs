//! Fault injection: a wrapper script that runs a plugin under strace with
//! the n-th `sendto` failing with EIO. Every netlink request weft's plugins
//! make is a sendto, so n = 1, 2, ... walks through each failure point of a
//! command; tests use it to prove that a failed ADD rolls back.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::plugin_path;

/// Writes `<dir>/<plugin>-<nth>`, a script that runs weft's `plugin` with
/// its `nth` sendto failing (EIO), and returns its path. `follow_forks`
/// counts the sendtos of its threads and children too (strace -f): needed
/// when a plugin talks netlink from a helper thread; wrong when it starts
/// delegates in parallel, whose calls would interleave unpredictably.
/// Panics when strace is missing, so the test says why.
pub fn sendto_failing_wrapper(dir: &Path, plugin: &str, nth: usize, follow_forks: bool) -> PathBuf {
    assert!(
        std::process::Command::new("strace")
            .arg("-V")
            .output()
            .is_ok(),
        "`strace` is not installed: apt-get install strace"
    );
    let wrapper = dir.join(format!("{plugin}-{nth}"));
    let follow = if follow_forks { "-f " } else { "" };
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec strace {follow}-qq -o /dev/null -e trace=sendto -e inject=sendto:error=EIO:when={nth} {} \"$@\"\n",
            plugin_path(plugin).display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}
