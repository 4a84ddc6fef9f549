//! The access log: one line per exchange, written when the response body ends, with the
//! fields `[log] access` selects, as JSON or as `key=value` text.
//!
//! The field catalogue holds facts about the exchange only, so no selection can put a
//! header value (other than the request id and a trusted proxy chain), a query string or a
//! secret in the log.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::body::Exchange;
use crate::config::{AccessField, AccessFormat};
use crate::telemetry::{LogFormat, process_log_format, write_access_line};

/// One value of a line.
enum Value<'a> {
    Str(&'a str),
    /// Known to need no escaping or quoting (timestamps, protocol names).
    Clean(&'a str),
    /// Written with `Display`, which for these values (times, addresses, trace ids) never
    /// yields a character that needs escaping.
    Plain(&'a dyn std::fmt::Display),
    /// A socket address, written as its `Display` writes it.
    Addr(&'a SocketAddr),
    Num(u64),
    Ms(Option<Duration>),
    Bool(bool),
    Null,
}

/// Write the access-log line of `ex`, unless `RUST_LOG` turned `warden::access` off. The
/// line is rendered straight into the worker's log buffer: no allocation per line.
pub(super) fn write(ex: &Exchange, bytes_out: u64, complete: bool, total: Duration) {
    if !tracing::enabled!(target: "warden::access", tracing::Level::INFO) {
        return;
    }
    let format = ex.access.format.unwrap_or(match process_log_format() {
        LogFormat::Json => AccessFormat::Json,
        LogFormat::Human => AccessFormat::Text,
    });
    let now = SystemTime::now();
    write_access_line(|out| render(out, ex, bytes_out, complete, total, format, now));
}

fn render(
    out: &mut String,
    ex: &Exchange,
    bytes_out: u64,
    complete: bool,
    total: Duration,
    format: AccessFormat,
    now: SystemTime,
) {
    let stamp = Stamp::of(now);
    fn dash(o: Option<&str>) -> Value<'_> {
        Value::Str(o.unwrap_or("-"))
    }
    match format {
        AccessFormat::Json => out.push_str(r#"{"level":"INFO","target":"warden::access""#),
        AccessFormat::Text => {
            out.push_str(stamp.as_str());
            out.push_str("  INFO warden::access: request");
        }
    }
    for &f in &ex.access.fields {
        let v = match f {
            AccessField::Timestamp => {
                if format == AccessFormat::Text {
                    continue;
                }
                Value::Clean(stamp.as_str())
            }
            AccessField::RequestId => Value::Str(ex.request_id.to_str().unwrap_or("-")),
            AccessField::TraceId => match &ex.trace_id {
                Some(t) => Value::Plain(t),
                None => Value::Null,
            },
            AccessField::Client => Value::Addr(&ex.client.addr),
            AccessField::ForwardedFor => match &ex.forwarded_for {
                Some(v) => Value::Str(v.to_str().unwrap_or("-")),
                None => Value::Null,
            },
            AccessField::Protocol => Value::Clean(version(ex.version)),
            AccessField::TlsIdentity => match ex.client.identity() {
                Some(id) => Value::Str(id),
                None => Value::Null,
            },
            AccessField::Route => dash(ex.route.as_deref()),
            AccessField::Method => Value::Str(ex.method.as_str()),
            AccessField::Path => Value::Str(&ex.path),
            AccessField::Status => Value::Num(u64::from(ex.status)),
            AccessField::Verdict => Value::Str(ex.verdict),
            AccessField::Policy => dash(ex.policy.as_deref()),
            AccessField::Flag => dash(ex.flag),
            AccessField::Reason => dash(ex.reason.as_deref()),
            AccessField::Upstream => dash(ex.upstream.as_deref()),
            AccessField::Endpoint => dash(ex.endpoint.as_deref()),
            AccessField::Attempts => Value::Num(u64::from(ex.attempts)),
            AccessField::BytesIn => Value::Num(ex.body_in.as_ref().map_or(0, |b| b.bytes())),
            AccessField::BytesOut => Value::Num(bytes_out),
            AccessField::RequestMs => Value::Ms(match &ex.body_in {
                Some(b) => b.read_in(),
                // No body: the request was complete with its head.
                None => Some(Duration::ZERO),
            }),
            AccessField::ResponseMs => Value::Ms(ex.response_time),
            AccessField::UpstreamMs => Value::Ms(ex.upstream_time),
            AccessField::DurationMs => Value::Ms(Some(total)),
            AccessField::Complete => Value::Bool(complete),
        };
        match format {
            AccessFormat::Json => {
                out.push_str(f.json_prefix());
                json_value(out, &v);
            }
            AccessFormat::Text => {
                out.push_str(f.text_prefix());
                text_value(out, &v);
            }
        }
    }
    if format == AccessFormat::Json {
        out.push('}');
    }
    out.push('\n');
}

/// An RFC 3339 UTC timestamp with microseconds, `2026-11-28T08:02:18.123456Z`, on the stack.
/// The date and time of day change once a second, so each thread renders them once a
/// second and copies them for every other line.
struct Stamp([u8; 27]);

impl Stamp {
    fn of(now: SystemTime) -> Stamp {
        thread_local! {
            /// The second last rendered by this thread and its `YYYY-MM-DDTHH:MM:SS`.
            static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
        }
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let (cached, mut prefix) = SECOND.get();
        if cached != secs {
            // `…:SSZ`: the same calendar arithmetic humantime does, without the `Z`. Past
            // year 9999 RFC 3339 has no form (humantime refuses it): the line still gets a
            // valid timestamp, the last one there is.
            let full = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs));
            // Once a second, so a String is fine (an `io::Write` over a stack buffer would
            // panic on the formatter's refusal).
            let mut text = String::with_capacity(20);
            prefix = write!(text, "{full}")
                .ok()
                .and_then(|()| text.as_bytes().get(..19)?.try_into().ok())
                .unwrap_or(*b"9999-12-31T23:59:59");
            SECOND.set((secs, prefix));
        }
        let mut b = [b'0'; 27];
        b[..19].copy_from_slice(&prefix);
        b[19] = b'.';
        let mut micros = since.subsec_micros();
        for i in (20..26).rev() {
            b[i] = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        b[26] = b'Z';
        Stamp(b)
    }

    fn as_str(&self) -> &str {
        // Built from ASCII digits and punctuation only.
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

fn version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Milliseconds with three decimals (microsecond resolution, rounded), written with
/// integer arithmetic.
fn push_ms(out: &mut String, d: Duration) {
    let micros = (d.as_nanos() + 500) / 1000;
    let mut n = itoa::Buffer::new();
    out.push_str(n.format(micros / 1000));
    out.push('.');
    let frac = (micros % 1000) as u32;
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

/// `ip:port` (`[ip]:port` for IPv6), as `SocketAddr`'s `Display` writes it. An IPv4
/// address is written digit group by digit group: through the formatting machinery it was
/// a third of the line's cost.
fn push_addr(out: &mut String, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            let mut n = itoa::Buffer::new();
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(n.format(octet));
            }
            out.push(':');
            out.push_str(n.format(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

fn json_value(out: &mut String, v: &Value<'_>) {
    match v {
        Value::Str(s) => json_str(out, s),
        Value::Clean(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Value::Plain(d) => {
            let _ = write!(out, "\"{d}\"");
        }
        Value::Addr(a) => {
            out.push('"');
            push_addr(out, a);
            out.push('"');
        }
        Value::Num(n) => out.push_str(itoa::Buffer::new().format(*n)),
        Value::Ms(Some(d)) => push_ms(out, *d),
        Value::Ms(None) | Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

/// A JSON string literal (RFC 8259 §7).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    // Most values (ids, routes, paths) need no escaping: copy them whole.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn text_value(out: &mut String, v: &Value<'_>) {
    match v {
        // Quoted only when it has to be, so the common line stays easy to grep.
        Value::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"') => {
            out.push_str(s)
        }
        Value::Str(s) => json_str(out, s),
        Value::Clean(s) => out.push_str(s),
        Value::Plain(d) => {
            let _ = write!(out, "{d}");
        }
        Value::Addr(a) => push_addr(out, a),
        Value::Null | Value::Ms(None) => out.push('-'),
        other => json_value(out, other),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::config::AccessLogConfig;
    use crate::http::ClientInfo;

    fn exchange(fields: Vec<AccessField>) -> Exchange {
        Exchange {
            request_id: http::HeaderValue::from_static("rid-1"),
            client: Arc::new(ClientInfo {
                addr: "10.0.0.9:4242".parse().unwrap(),
                ip: http::HeaderValue::from_static("10.0.0.9"),
                tls: true,
                sni: None,
                uri_sans: vec!["spiffe://sophia/api".into()],
                dns_sans: vec![],
            }),
            route_idx: Some(0),
            route: Some("api".into()),
            upstream: None,
            endpoint: None,
            attempts: 0,
            method: http::Method::POST,
            path: "/a \"quoted\"\n".into(),
            started: Instant::now(),
            upstream_time: None,
            response_time: Some(Duration::from_micros(1500)),
            verdict: "deny",
            policy: Some("network-isolation".into()),
            flag: Some("policy_denied"),
            reason: None,
            forwarded_for: None,
            version: http::Version::HTTP_2,
            status: 403,
            body_in: None,
            trace_id: None,
            trace: None,
            access: Arc::new(AccessLogConfig {
                format: None,
                fields,
            }),
            exchange_duration: None,
        }
    }

    fn rendered(
        ex: &Exchange,
        bytes_out: u64,
        complete: bool,
        total: Duration,
        format: AccessFormat,
        now: SystemTime,
    ) -> String {
        let mut out = String::new();
        render(&mut out, ex, bytes_out, complete, total, format, now);
        out
    }

    #[test]
    fn json_lines_parse_and_carry_the_chosen_fields_only() {
        let ex = exchange(AccessField::defaults());
        let line = rendered(
            &ex,
            7,
            true,
            Duration::from_millis(3),
            AccessFormat::Json,
            SystemTime::now(),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["target"], "warden::access");
        assert_eq!(v["path"], "/a \"quoted\"\n");
        assert_eq!(v["policy"], "network-isolation");
        assert_eq!(v["upstream"], "-");
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(v["tls_identity"], "spiffe://sophia/api");
        assert_eq!(v["client"], "10.0.0.9:4242");
        assert_eq!(v["response_ms"], 1.5);
        assert!(v["trace_id"].is_null());
        assert_eq!(v["bytes_out"], 7);
        for f in AccessField::ALL {
            assert!(v.get(f.key()).is_some(), "{} missing", f.key());
        }

        let ex = exchange(vec![AccessField::Status, AccessField::Route]);
        let line = rendered(
            &ex,
            0,
            true,
            Duration::ZERO,
            AccessFormat::Json,
            SystemTime::now(),
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_eq!(v["status"], 403);
    }

    #[test]
    fn client_addresses_are_written_as_display_writes_them() {
        for addr in [
            "10.0.0.9:4242",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "127.0.0.1:80",
            "[::1]:8080",
            "[2001:db8::17]:443",
            "[fe80::1%7]:9",
            "[::ffff:10.1.2.3]:1",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = String::new();
            push_addr(&mut out, &addr);
            assert_eq!(out, addr.to_string());
            let mut out = String::new();
            json_value(&mut out, &Value::Addr(&addr));
            assert_eq!(out, format!("\"{addr}\""));
        }
    }

    #[test]
    fn text_lines_quote_only_what_needs_it() {
        let ex = exchange(vec![
            AccessField::Route,
            AccessField::Path,
            AccessField::UpstreamMs,
        ]);
        let line = rendered(
            &ex,
            0,
            true,
            Duration::ZERO,
            AccessFormat::Text,
            SystemTime::now(),
        );
        assert!(
            line.ends_with(" route=api path=\"/a \\\"quoted\\\"\\n\" upstream_ms=-\n"),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
    }

    #[test]
    fn timestamps_and_milliseconds_match_the_formatted_forms() {
        // Across second, day and year boundaries, on the same thread (the cached second).
        for (secs, nanos) in [
            (0, 0),
            (1_795_000_000, 999_999_999),
            (1_795_000_001, 1_000),
            (1_795_000_001, 123_456_789),
            (1_798_761_599, 500_000),
            (1_798_761_600, 7_000),
            (253_402_300_799, 999_999_000),
        ] {
            let t = UNIX_EPOCH + Duration::new(secs, nanos);
            assert_eq!(
                Stamp::of(t).as_str(),
                humantime::format_rfc3339_micros(t).to_string()
            );
        }
        // Past year 9999 a line still carries a well-formed timestamp.
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800 + 86_400);
        assert_eq!(Stamp::of(far).as_str().len(), 27);
        assert!(Stamp::of(far).as_str().starts_with("9999-12-31T23:59:59."));
        for us in [0u64, 1, 999, 1_000, 1_500, 12_345, 999_999, 86_400_000_000] {
            let d = Duration::from_micros(us);
            let mut out = String::new();
            push_ms(&mut out, d);
            assert_eq!(out, format!("{:.3}", d.as_secs_f64() * 1000.0), "{us} µs");
        }
    }
}
