//! The access log: one line per exchange, written when the response body ends, with the
//! fields `[log] access` selects, as JSON or as `key=value` text.
//!
//! The field catalogue holds facts about the exchange only, so no selection can put a
//! header value (other than the request id and a trusted proxy chain), a query string or a
//! secret in the log.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::body::Exchange;
use crate::config::{AccessField, AccessFormat};
use crate::telemetry::{LogFormat, process_log_format, write_access_line};

/// One value of a line.
enum Value<'a> {
    Str(&'a str),
    /// Written with `Display`, which for these values (times, addresses, trace ids) never
    /// yields a character that needs escaping.
    Plain(&'a dyn std::fmt::Display),
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
    let stamp = humantime::format_rfc3339_micros(now);
    fn dash(o: Option<&str>) -> Value<'_> {
        Value::Str(o.unwrap_or("-"))
    }
    match format {
        AccessFormat::Json => out.push_str(r#"{"level":"INFO","target":"warden::access""#),
        AccessFormat::Text => {
            let _ = write!(out, "{stamp}  INFO warden::access: request");
        }
    }
    for &f in &ex.access.fields {
        let v = match f {
            AccessField::Timestamp => {
                if format == AccessFormat::Text {
                    continue;
                }
                Value::Plain(&stamp)
            }
            AccessField::RequestId => Value::Str(ex.request_id.to_str().unwrap_or("-")),
            AccessField::TraceId => match &ex.trace_id {
                Some(t) => Value::Plain(t),
                None => Value::Null,
            },
            AccessField::Client => Value::Plain(&ex.client.addr),
            AccessField::ForwardedFor => match &ex.forwarded_for {
                Some(v) => Value::Str(v.to_str().unwrap_or("-")),
                None => Value::Null,
            },
            AccessField::Protocol => Value::Str(version(ex.version)),
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
                let _ = write!(out, r#","{}":"#, f.key());
                json_value(out, &v);
            }
            AccessFormat::Text => {
                let _ = write!(out, " {}=", f.key());
                text_value(out, &v);
            }
        }
    }
    if format == AccessFormat::Json {
        out.push('}');
    }
    out.push('\n');
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn json_value(out: &mut String, v: &Value<'_>) {
    match v {
        Value::Str(s) => json_str(out, s),
        Value::Plain(d) => {
            let _ = write!(out, "\"{d}\"");
        }
        Value::Num(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Ms(Some(d)) => {
            let _ = write!(out, "{:.3}", ms(*d));
        }
        Value::Ms(None) | Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
    }
}

/// A JSON string literal (RFC 8259 §7).
fn json_str(out: &mut String, s: &str) {
    out.push('"');
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
        Value::Plain(d) => {
            let _ = write!(out, "{d}");
        }
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
}
