//! Plugin logging. stdout belongs to the result, so logs go to stderr, and
//! also to the file named by WEFT_LOG_FILE when it is set.

use std::io::Write;

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|a| a.rsplit('/').next().map(str::to_string))
        .unwrap_or_else(|| "weft".into())
}

fn write(level: &str, msg: &str) {
    let line = format!("{} {level}: {msg}\n", program());
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("WEFT_LOG_FILE") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub fn error(msg: &str) {
    write("error", msg);
}

pub fn warn(msg: &str) {
    write("warn", msg);
}
