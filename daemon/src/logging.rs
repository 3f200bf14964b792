//! Logs through `tracing`, written as logfmt lines on stderr:
//! `ts=2026-01-02T03:04:05.678Z level=info msg="lease acquired" subnet=10.5.52.0/24`.
//! Events of the libraries weftd links (tonic, h2, tower...) go through the
//! same subscriber and carry `target=`; which ones are written follows
//! `RUST_LOG` (env-filter syntax, e.g. `RUST_LOG=info,h2=debug`), else
//! `info` (`-v`: weftd's own debug events too).

use std::fmt::Write as _;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Install the subscriber (once, at start).
pub fn init(verbose: bool) {
    let default = if verbose { "info,weftd=debug" } else { "info" };
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(v.trim()).unwrap_or_else(|e| {
            eprintln!("weftd: ignoring RUST_LOG: {e}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(Logfmt)
        .try_init();
}

/// The layer writing each event as one logfmt line.
struct Logfmt;

impl<S: tracing::Subscriber> Layer<S> for Logfmt {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let _ = std::io::stderr()
            .lock()
            .write_all(line(SystemTime::now(), meta.level(), meta.target(), &fields).as_bytes());
    }
}

/// An event's message and its other fields, in order.
#[derive(Default)]
struct Fields {
    msg: String,
    kv: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.put(f, v.to_string());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        // `%value` fields and messages arrive here; their Debug is Display.
        self.put(f, format!("{v:?}"));
    }
}

impl Fields {
    fn put(&mut self, f: &Field, v: String) {
        if f.name() == "message" {
            self.msg = v;
        } else {
            self.kv.push((f.name(), v));
        }
    }
}

/// One line; `target=` only for other crates' events.
fn line(t: SystemTime, level: &tracing::Level, target: &str, f: &Fields) -> String {
    let mut out = format!(
        "ts={} level={} msg={}",
        rfc3339(t),
        level.as_str().to_ascii_lowercase(),
        quote(&f.msg)
    );
    if target != "weftd" && !target.starts_with("weftd::") {
        let _ = write!(out, " target={}", quote(target));
    }
    for (k, v) in &f.kv {
        let _ = write!(out, " {}={}", k.trim_start_matches("r#"), quote(v));
    }
    out.push('\n');
    out
}

/// Quote a value when it contains spaces, quotes or '='.
pub fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '"', '=', '\n', '\t', '\\']) {
        return v.to_string();
    }
    let mut s = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// UTC RFC 3339 time with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Rate limit for an error that repeats identically (same operation, same
/// failure) pass after pass: the first occurrence is logged, then at most
/// one every `every`, carrying how many were suppressed in between. A key
/// not seen during a pass is forgotten by [`Repeats::sweep`], so the error
/// is logged again at once if it comes back.
#[derive(Debug)]
pub struct Repeats {
    every: std::time::Duration,
    seen: std::collections::BTreeMap<String, Seen>,
}

#[derive(Debug)]
struct Seen {
    logged_at: std::time::Instant,
    suppressed: u64,
    live: bool,
}

impl Repeats {
    pub fn new(every: std::time::Duration) -> Self {
        Repeats {
            every,
            seen: std::collections::BTreeMap::new(),
        }
    }

    /// `Some(suppressed)` when this occurrence of `key` is to be logged.
    pub fn check(&mut self, key: &str) -> Option<u64> {
        let now = std::time::Instant::now();
        match self.seen.get_mut(key) {
            Some(s) => {
                s.live = true;
                if now.duration_since(s.logged_at) >= self.every {
                    s.logged_at = now;
                    Some(std::mem::take(&mut s.suppressed))
                } else {
                    s.suppressed += 1;
                    None
                }
            }
            None => {
                self.seen.insert(
                    key.to_string(),
                    Seen {
                        logged_at: now,
                        suppressed: 0,
                        live: true,
                    },
                );
                Some(0)
            }
        }
    }

    /// Forget the keys not checked since the previous sweep.
    pub fn sweep(&mut self) {
        self.seen.retain(|_, s| std::mem::take(&mut s.live));
    }
}

/// weftd's log macros: `info!("message", key = value, ...)`, each value
/// written with its Display.
#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        ::tracing::event!($lvl, $($k = %$v,)* "{}", $msg)
    };
}
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log_at!(::tracing::Level::DEBUG, $($t)*) }; }
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log_at!(::tracing::Level::INFO, $($t)*) }; }
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log_at!(::tracing::Level::WARN, $($t)*) }; }
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log_at!(::tracing::Level::ERROR, $($t)*) }; }

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_format() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn repeats_are_rate_limited_and_forgotten_when_they_stop() {
        let mut r = Repeats::new(Duration::from_secs(3600));
        assert_eq!(r.check("a"), Some(0));
        assert_eq!(r.check("a"), None);
        assert_eq!(r.check("b"), Some(0));
        r.sweep();
        assert_eq!(r.check("a"), None);
        r.sweep();
        r.sweep(); // "a" and "b" not seen in the last pass
        assert_eq!(r.check("a"), Some(0));
        let mut fast = Repeats::new(Duration::ZERO);
        fast.check("x");
        assert_eq!(fast.check("x"), Some(0));
    }

    #[test]
    fn lines_are_logfmt_with_the_target_of_other_crates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let f = Fields {
            msg: "lease acquired".into(),
            kv: vec![
                ("subnet", "10.5.52.0/24".into()),
                ("error", "a \"b\"".into()),
            ],
        };
        assert_eq!(
            line(t, &tracing::Level::INFO, "weftd::agent", &f),
            "ts=2023-11-14T22:13:20.123Z level=info msg=\"lease acquired\" subnet=10.5.52.0/24 error=\"a \\\"b\\\"\"\n"
        );
        let h2 = Fields {
            msg: "Connection::poll; connection error".into(),
            kv: vec![("error", "GoAway(b\"\", NO_ERROR, Library)".into())],
        };
        let l = line(t, &tracing::Level::DEBUG, "h2::proto::connection", &h2);
        assert!(
            l.starts_with("ts=2023-11-14T22:13:20.123Z level=debug msg=\"Connection::poll; connection error\" target=h2::proto::connection error="),
            "{l}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("say \"x\""), "\"say \\\"x\\\"\"");
        assert_eq!(quote(""), "\"\"");
    }
}
