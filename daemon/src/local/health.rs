//! /healthz, /readyz and /metrics over HTTP/1.1, served by hyper (linked
//! already through tonic). One request per connection.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

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
        "/state" => (200, "application/json", m.status.json(m)),
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// One request's answer (hyper leaves the body out for HEAD).
fn answer<B>(req: &Request<B>, m: &Metrics) -> Response<Full<Bytes>> {
    let (code, ctype, body) = if req.method() != Method::GET && req.method() != Method::HEAD {
        (405, "text/plain", "method not allowed\n".to_string())
    } else {
        respond(req.uri().path(), m)
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(l: TcpListener, m: Arc<Metrics>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let m = m.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let r = answer(&req, &m);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
                let conn = http.serve_connection(TokioIo::new(s), svc);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CLIENT_TIMEOUT, conn).await;
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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
        let lower = out.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/plain\r\n"), "{out}");
        assert!(lower.contains("content-length: 3\r\n"), "{out}");
        // Wrong method, unknown path, HEAD, a readiness gap.
        for (req, status, body) in [
            (
                "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "405 Method Not Allowed",
                "method not allowed\n",
            ),
            (
                "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
                "404 Not Found",
                "not found\n",
            ),
            ("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", ""),
            (
                "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
                "503 Service Unavailable",
                "subnet.env not written yet\n",
            ),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
            assert!(out.ends_with(&format!("\r\n\r\n{body}")), "{out}");
        }
    }
}
