//! Running the firewall tools.

use std::io::Write;
use std::process::{Command as Process, Stdio};

use weft_cni::{Error, ErrorCode};

pub fn fail(msg: String) -> Error {
    Error::new(ErrorCode::Firewall, msg)
}

/// Run `program args`, feeding `input`; the error names the command.
pub fn run(program: &str, args: &[&str], input: &str) -> Result<String, Error> {
    let mut child = Process::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("{program} failed: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
