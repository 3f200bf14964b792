//! Running another plugin (usually IPAM) from CNI_PATH with the same stdin
//! and environment, as the spec requires; only CNI_COMMAND changes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::error::{Error, ErrorCode};
use crate::result::CniResult;
use crate::skel::{Command, Request};

/// Locate plugin `kind` on CNI_PATH. Resolving this before any change lets a
/// plugin fail cleanly when its IPAM binary is missing.
pub fn find(kind: &str, cni_path: &[PathBuf]) -> Result<PathBuf, Error> {
    if kind.is_empty() || kind.contains('/') || kind.contains('\\') || kind == "." || kind == ".." {
        return Err(Error::config(format!(
            "plugin type \"{}\" is not a valid plugin name",
            kind.escape_debug()
        )));
    }
    if cni_path.is_empty() {
        return Err(Error::env(format!(
            "CNI_PATH is not set; cannot find plugin \"{kind}\""
        )));
    }
    cni_path
        .iter()
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            let dirs: Vec<String> = cni_path.iter().map(|p| p.display().to_string()).collect();
            Error::config(format!(
                "plugin \"{kind}\" not found in CNI_PATH {}",
                dirs.join(":")
            ))
        })
}

/// Run `binary` for `command` with `stdin`; the rest of the environment is
/// inherited. Returns the plugin's stdout JSON, if any.
pub fn exec(binary: &Path, command: Command, stdin: &[u8]) -> Result<Option<Value>, Error> {
    start(binary, command, stdin)?.wait()
}

/// Start `binary` for `command` and hand it `stdin`, without waiting.
pub fn start(binary: &Path, command: Command, stdin: &[u8]) -> Result<Running, Error> {
    let name = binary.display().to_string();
    let mut child = Process::new(binary)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                ErrorCode::DelegateFailed,
                format!("cannot run plugin {name}: {e}"),
            )
        })?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin may exit without reading stdin; its exit status tells.
        // A config fits the pipe buffer, so this does not wait for the child.
        let _ = pipe.write_all(stdin);
    }
    Ok(Running {
        name,
        child: Some(child),
    })
}

/// A delegated plugin that has been started. Dropping it waits for the
/// plugin to exit, so nothing can overtake a call still in flight (a
/// rollback DEL must come after the ADD it undoes).
pub struct Running {
    name: String,
    child: Option<std::process::Child>,
}

impl Running {
    /// Wait for the plugin; its stdout JSON, if any, or its error.
    pub fn wait(mut self) -> Result<Option<Value>, Error> {
        let name = std::mem::take(&mut self.name);
        let child = self.child.take().ok_or_else(|| {
            Error::new(
                ErrorCode::DelegateFailed,
                format!("plugin {name} was already waited for"),
            )
        })?;
        let out = child.wait_with_output().map_err(|e| {
            Error::new(
                ErrorCode::DelegateFailed,
                format!("plugin {name} failed: {e}"),
            )
        })?;
        let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if out.status.success() {
            if parsed.is_none() && !out.stdout.iter().all(u8::is_ascii_whitespace) {
                return Err(Error::new(
                    ErrorCode::DelegateFailed,
                    format!("plugin {name} printed output that is not JSON"),
                ));
            }
            return Ok(parsed);
        }
        match parsed
            .as_ref()
            .and_then(|v| v.get("code").and_then(Value::as_u64).map(|c| (c, v)))
        {
            Some((code, v)) => Err(delegated_error(&name, code, v)),
            None => Err(Error::new(
                ErrorCode::DelegateFailed,
                format!(
                    "plugin {name} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )),
        }
    }

    /// Wait for an ADD and decode its result.
    pub fn result(self) -> Result<CniResult, Error> {
        let name = self.name.clone();
        let value = self.wait()?.ok_or_else(|| {
            Error::new(
                ErrorCode::DelegateFailed,
                format!("plugin {name} printed no result"),
            )
        })?;
        CniResult::from_value(&value)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Closing our ends first: a plugin blocked on a full pipe exits.
            drop(child.stdout.take());
            drop(child.stderr.take());
            let _ = child.wait();
        }
    }
}

/// A delegate's error object, passed on when its code is one the spec
/// defines or a plugin-specific one (>= 100). Anything else (the reference
/// plugins' catch-all 999, 0, codes the spec reserves) becomes 106, with the
/// original code kept in `details`.
fn delegated_error(plugin: &str, code: u64, v: &Value) -> Error {
    let text = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let meaningful = matches!(code, 1..=7 | 11 | 50 | 51) || (code >= 100 && code != 999);
    match u32::try_from(code) {
        Ok(code) if meaningful => Error::Delegated {
            code,
            msg: text("msg"),
            details: text("details"),
        },
        _ => {
            let details = text("details");
            let sep = if details.is_empty() { "" } else { ": " };
            Error::with_details(
                ErrorCode::DelegateFailed,
                text("msg"),
                format!("{plugin} answered code {code}{sep}{details}"),
            )
        }
    }
}

/// A delegated plugin, found once and then invoked per command.
pub struct Delegate {
    binary: PathBuf,
}

impl Delegate {
    pub fn find(kind: &str, req: &Request) -> Result<Delegate, Error> {
        Ok(Delegate {
            binary: find(kind, &req.cni_path)?,
        })
    }

    pub fn add(&self, stdin: &[u8]) -> Result<CniResult, Error> {
        self.start(Command::Add, stdin)?.result()
    }

    /// Start `command` and return at once; see [`Running`].
    pub fn start(&self, command: Command, stdin: &[u8]) -> Result<Running, Error> {
        start(&self.binary, command, stdin)
    }

    pub fn run(&self, command: Command, stdin: &[u8]) -> Result<(), Error> {
        exec(&self.binary, command, stdin).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_rejects_paths_and_reports_search_dirs() {
        let path = vec![
            PathBuf::from("/nonexistent-a"),
            PathBuf::from("/nonexistent-b"),
        ];
        assert_eq!(find("../x", &path).unwrap_err().code(), 7);
        let e = find("host-local", &path).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("/nonexistent-a:/nonexistent-b"),
            "{e}"
        );
        assert_eq!(find("host-local", &[]).unwrap_err().code(), 4);
    }

    #[test]
    fn exec_passes_through_a_delegate_error() {
        let dir = std::env::temp_dir().join(format!("weft-cni-delegate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("failing");
        std::fs::write(&script, "#!/bin/sh\ncat >/dev/null\necho '{\"code\":101,\"msg\":\"full\",\"details\":\"d\"}'\nexit 1\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = exec(&script, Command::Add, b"{}").unwrap_err();
        assert_eq!(e.code(), 101);
        assert_eq!(e.to_string(), "full");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn catch_all_and_reserved_delegate_codes_become_106() {
        for (code, kept) in [
            (999, false),
            (0, false),
            (8, false),
            (99, false),
            (11, true),
            (50, true),
            (7, true),
            (123, true),
        ] {
            let v = serde_json::json!({"code": code, "msg": "m", "details": "d"});
            let e = delegated_error("/p/host-local", code, &v);
            assert_eq!(e.to_string(), "m");
            if kept {
                assert_eq!((e.code(), e.details()), (code as u32, "d".to_string()));
            } else {
                assert_eq!(e.code(), 106, "{code}");
                assert_eq!(
                    e.details(),
                    format!("/p/host-local answered code {code}: d")
                );
            }
        }
    }
}
