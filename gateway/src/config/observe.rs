//! `[telemetry]` (trace export) and `[log]` (the access log's format and fields).

use std::time::Duration;

use serde::Deserialize;

use super::field::{FieldError, de};

/// `[telemetry]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Export spans over OTLP; off when absent.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `otlp = { endpoint = "http://collector:4318", sample_ratio = 0.1 }`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// Collector base URL; spans go to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Share of new traces recorded (0.0–1.0). An incoming `traceparent` decides for
    /// the traces it continues.
    #[serde(default = "one")]
    pub sample_ratio: f64,
    /// Wire protocol.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Time allowed for one export.
    #[serde(default = "ten_seconds", deserialize_with = "de::duration")]
    pub timeout: Duration,
    /// `service.name` of the exported resource.
    #[serde(default = "service_name")]
    pub service_name: String,
}

fn one() -> f64 {
    1.0
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn service_name() -> String {
    "warden".into()
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP POST.
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl OtlpConfig {
    /// What serde cannot check.
    pub fn check(&self) -> Vec<FieldError> {
        let mut errs = Vec::new();
        match self.endpoint.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {}
            _ => errs.push(FieldError::new(
                "endpoint",
                format!(
                    "{:?} is not an http(s) URL (e.g. \"http://collector:4318\")",
                    self.endpoint
                ),
            )),
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            errs.push(FieldError::new(
                "sample_ratio",
                format!("{} is outside 0.0–1.0", self.sample_ratio),
            ));
        }
        errs
    }

    /// Where spans are posted.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// `[log]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The access log.
    #[serde(default)]
    pub access: AccessLogConfig,
}

/// `access = { format = "json", fields = [...] }`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `json` or `text`; default: the process's `--log-format`.
    #[serde(default)]
    pub format: Option<AccessFormat>,
    /// Fields written, in this order. Every field is a fact about the exchange; none can
    /// carry a header value (other than the request id), a query string or a secret.
    #[serde(default = "AccessField::defaults")]
    pub fields: Vec<AccessField>,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            format: None,
            fields: AccessField::defaults(),
        }
    }
}

impl AccessLogConfig {
    /// What serde cannot check.
    pub fn check(&self) -> Vec<FieldError> {
        if self.fields.is_empty() {
            return vec![FieldError::new(
                "fields",
                "empty; to turn the access log off, set RUST_LOG=info,warden::access=off",
            )];
        }
        Vec::new()
    }
}

/// Access-log line format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessFormat {
    /// One JSON object per line.
    Json,
    /// `key=value` pairs (logfmt).
    Text,
}

/// A field of the access log.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AccessField {
    /// When the line was written (RFC 3339, UTC).
    Timestamp,
    /// The request id.
    RequestId,
    /// The W3C trace id, when the request is traced or carried a `traceparent`.
    TraceId,
    /// The TCP peer, `ip:port`.
    Client,
    /// The `X-Forwarded-For` chain sent upstream, only when the peer is a trusted proxy.
    ForwardedFor,
    /// `HTTP/1.1`, `HTTP/2` …
    Protocol,
    /// The verified client certificate's identity (URI SAN, else DNS SAN).
    TlsIdentity,
    /// Route name, `-` when none matched.
    Route,
    /// Request method.
    Method,
    /// Normalized path, never the query.
    Path,
    /// Status sent to the client.
    Status,
    /// `none`, `allow` or `deny`.
    Verdict,
    /// The plugin that denied the request (or failed it closed).
    Policy,
    /// Why Warden answered itself or cut the stream (`policy_denied`, `upstream_timeout`,
    /// `idle_timeout` …), `-` otherwise.
    Flag,
    /// The error behind the flag, in words (never a value).
    Reason,
    /// The upstream, `-` when it was never contacted.
    Upstream,
    /// The endpoint of the last attempt.
    Endpoint,
    /// Attempts sent upstream.
    Attempts,
    /// Request body bytes read from the client.
    BytesIn,
    /// Response body bytes sent to the client.
    BytesOut,
    /// Request head in to request body fully read.
    RequestMs,
    /// Request head in to response head out.
    ResponseMs,
    /// Request sent upstream to response head received.
    UpstreamMs,
    /// Request head in to the last response byte.
    DurationMs,
    /// Whether the response body was sent in full.
    Complete,
}

/// The key of each access-log field, and the pieces the line is written with: the key with
/// its separator and colon (JSON) or space and `=` (text) in one string, so a field costs
/// one copy before its value rather than three.
macro_rules! access_field_keys {
    ($($field:ident => $key:literal,)*) => {
        /// The key in the line.
        pub fn key(self) -> &'static str {
            match self {
                $(AccessField::$field => $key,)*
            }
        }

        /// `,"key":`, what precedes the field's value in a JSON line.
        pub fn json_prefix(self) -> &'static str {
            match self {
                $(AccessField::$field => concat!(",\"", $key, "\":"),)*
            }
        }

        /// ` key=`, what precedes the field's value in a text line.
        pub fn text_prefix(self) -> &'static str {
            match self {
                $(AccessField::$field => concat!(" ", $key, "="),)*
            }
        }
    };
}

impl AccessField {
    /// Every field, in the default order.
    pub const ALL: [AccessField; 25] = [
        AccessField::Timestamp,
        AccessField::RequestId,
        AccessField::TraceId,
        AccessField::Client,
        AccessField::ForwardedFor,
        AccessField::Protocol,
        AccessField::TlsIdentity,
        AccessField::Route,
        AccessField::Method,
        AccessField::Path,
        AccessField::Status,
        AccessField::Verdict,
        AccessField::Policy,
        AccessField::Flag,
        AccessField::Reason,
        AccessField::Upstream,
        AccessField::Endpoint,
        AccessField::Attempts,
        AccessField::BytesIn,
        AccessField::BytesOut,
        AccessField::RequestMs,
        AccessField::ResponseMs,
        AccessField::UpstreamMs,
        AccessField::DurationMs,
        AccessField::Complete,
    ];

    /// The default field set: all of them.
    pub fn defaults() -> Vec<AccessField> {
        Self::ALL.to_vec()
    }

    access_field_keys! {
        Timestamp => "timestamp",
        RequestId => "request_id",
        TraceId => "trace_id",
        Client => "client",
        ForwardedFor => "forwarded_for",
        Protocol => "protocol",
        TlsIdentity => "tls_identity",
        Route => "route",
        Method => "method",
        Path => "path",
        Status => "status",
        Verdict => "verdict",
        Policy => "policy",
        Flag => "flag",
        Reason => "reason",
        Upstream => "upstream",
        Endpoint => "endpoint",
        Attempts => "attempts",
        BytesIn => "bytes_in",
        BytesOut => "bytes_out",
        RequestMs => "request_ms",
        ResponseMs => "response_ms",
        UpstreamMs => "upstream_ms",
        DurationMs => "duration_ms",
        Complete => "complete",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_key_round_trips_through_the_config_name() {
        for f in AccessField::ALL {
            let parsed: AccessField =
                serde_json::from_value(serde_json::Value::String(f.key().into())).unwrap();
            assert_eq!(parsed, f);
            assert_eq!(f.json_prefix(), format!(",\"{}\":", f.key()));
            assert_eq!(f.text_prefix(), format!(" {}=", f.key()));
        }
    }

    #[test]
    fn otlp_checks_endpoint_and_ratio() {
        let c = |endpoint: &str, sample_ratio: f64| OtlpConfig {
            endpoint: endpoint.into(),
            sample_ratio,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: ten_seconds(),
            service_name: service_name(),
        };
        assert!(c("http://127.0.0.1:4318", 0.1).check().is_empty());
        assert_eq!(
            c("http://c:4318/", 1.0).traces_url(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(c("collector:4318", 0.5).check()[0].key, "endpoint");
        assert_eq!(c("http://c:4318", 1.5).check()[0].key, "sample_ratio");
    }
}
