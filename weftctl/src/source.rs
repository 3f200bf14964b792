//! Where weftd's state comes from: its state file (with the lock that says
//! whether weftd runs) or `GET /state` on its health port.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use weft_node_state::{NodeState, Observed};

use crate::Paths;

/// What weftctl learned about weftd.
pub struct Seen {
    /// The state, when there is one (also from a stopped weftd).
    pub state: Option<NodeState>,
    pub running: bool,
    /// Why weftd cannot be reached, in words (None while it runs).
    pub unreachable: Option<String>,
}

pub fn load(paths: &Paths) -> Seen {
    match &paths.endpoint {
        Some(url) => match fetch(url) {
            Ok(s) => Seen {
                state: Some(s),
                running: true,
                unreachable: None,
            },
            Err(e) => Seen {
                state: None,
                running: false,
                unreachable: Some(format!("cannot reach weftd at {url}: {e}")),
            },
        },
        None => from_file(&paths.state_path()),
    }
}

fn from_file(path: &Path) -> Seen {
    let now = weft_node_state::now_unix();
    match weft_node_state::observe(path) {
        Ok(Observed::Running(s)) => Seen {
            state: Some(*s),
            running: true,
            unreachable: None,
        },
        Ok(Observed::Stopped(s)) => Seen {
            unreachable: Some(format!(
                "weftd is not running (its state {} was last written {} ago)",
                path.display(),
                weft_node_state::format_duration(now.saturating_sub(s.updated_at))
            )),
            state: Some(*s),
            running: false,
        },
        Ok(Observed::Missing) => Seen {
            state: None,
            running: false,
            unreachable: Some(format!(
                "weftd is not running: no state at {} (use --state or --subnet-file if weftd writes elsewhere)",
                path.display()
            )),
        },
        Err(e) => Seen {
            state: None,
            running: false,
            unreachable: Some(e.to_string()),
        },
    }
}

/// `GET <url>/state` over plain HTTP/1.0 (the health port is node-local).
fn fetch(url: &str) -> anyhow::Result<NodeState> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (hostport, path) = match rest.split_once('/') {
        Some((h, p)) if !p.is_empty() => (h, format!("/{p}")),
        Some((h, _)) => (h, "/state".to_string()),
        None => (rest, "/state".to_string()),
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{hostport} resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        anyhow::bail!("GET {path} answered {status}: {}", body.trim());
    }
    Ok(weft_node_state::parse(body.as_bytes(), Path::new(url))?)
}
