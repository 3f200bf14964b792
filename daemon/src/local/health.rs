//! A tiny HTTP/1.1 responder for /healthz, /readyz and /metrics.

use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// (status, content type, body) for a request path.
pub fn respond(path: &str, m: &Metrics) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => match m.not_ready_reason() {
            None => (200, "text/plain", "ok\n".into()),
            Some(why) => (503, "text/plain", format!("{why}\n")),
        },
        "/metrics" => (200, "text/plain; version=0.0.4", m.render()),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

async fn handle(mut s: TcpStream, m: Arc<Metrics>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, ctype, body) = if path.is_empty() {
        (400, "text/plain", "bad request\n".to_string())
    } else if method != "GET" && method != "HEAD" {
        (405, "text/plain", "method not allowed\n".to_string())
    } else {
        respond(path, &m)
    };
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    );
    if method != "HEAD" {
        out.push_str(&body);
    }
    s.write_all(out.as_bytes()).await?;
    s.shutdown().await
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(l: TcpListener, m: Arc<Metrics>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let m = m.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(s, m)).await;
                });
            }
            Err(e) => {
                crate::warn!("healthz accept failed", error = e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn readiness_follows_state() {
        let m = Metrics::default();
        assert_eq!(respond("/healthz", &m).0, 200);
        assert_eq!(respond("/readyz", &m).0, 503);
        m.subnet_env_written.store(true, Relaxed);
        assert_eq!(respond("/readyz", &m).0, 503);
        m.peers_synced.store(true, Relaxed);
        assert_eq!(respond("/readyz?verbose", &m).0, 200);
        // With --ip-masq the rules must be in place too, and readiness
        // follows their state.
        m.masq_enabled.store(true, Relaxed);
        let (code, _, body) = respond("/readyz", &m);
        assert_eq!(
            (code, body.as_str()),
            (503, "masquerade rules not installed\n")
        );
        m.masq_ok.store(true, Relaxed);
        assert_eq!(respond("/readyz", &m).0, 200);
        m.peers_synced.store(false, Relaxed);
        assert_eq!(respond("/readyz", &m).2, "peers not synced\n");
        m.peers_synced.store(true, Relaxed);
        assert_eq!(respond("/nope", &m).0, 404);
        assert!(respond("/metrics", &m).2.contains("weftd_ready 1"));
    }

    #[tokio::test]
    async fn serves_http() {
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, Arc::new(Metrics::default())));
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nok\n"));
    }
}
