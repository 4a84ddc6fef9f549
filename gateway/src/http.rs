//! HTTP types and rules shared by the whole gateway, below everything else in the module
//! graph: who the client is, the body type both sides of the proxy use, the hop-by-hop
//! header list, and (in [`normalize`]) the one canonical form of a request target — the
//! path and host that the router matches, every policy sees, the access log records and the
//! upstream receives.

pub mod normalize;

use std::net::SocketAddr;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Empty, Full};

/// Who is calling: the TCP peer and, over TLS, what the handshake proved.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Peer address.
    pub addr: SocketAddr,
    /// The peer's IP as a header value (`X-Forwarded-For`), rendered once per connection
    /// rather than once per request: [`ClientInfo::ip_value`].
    pub ip: HeaderValue,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// SNI the client sent.
    pub sni: Option<String>,
    /// URI SANs of the verified client certificate (e.g. `spiffe://sophia/sophia-api`).
    pub uri_sans: Vec<String>,
    /// DNS SANs of the verified client certificate.
    pub dns_sans: Vec<String>,
}

impl ClientInfo {
    /// `addr`'s IP as a header value.
    pub fn ip_value(addr: SocketAddr) -> HeaderValue {
        HeaderValue::from_str(&addr.ip().to_string()).expect("an IP is a valid header value")
    }

    /// The verified client certificate's identity: its first URI SAN (a SPIFFE id),
    /// else its first DNS SAN.
    pub fn identity(&self) -> Option<&str> {
        self.uri_sans
            .first()
            .or_else(|| self.dns_sans.first())
            .map(String::as_str)
    }
}

/// Boxed error type for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used on both sides of the proxy: streamed, never buffered.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies must not forward.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    // Only meaningful for an h2c upgrade, which is never forwarded.
    "http2-settings",
];

/// Whether `name` is a hop-by-hop header (case-insensitive).
pub fn is_hop_by_hop(name: &str) -> bool {
    // Compared in place, never lowercased into a new string. Config checks call this;
    // the request path, whose names are already lowercase, calls
    // `is_hop_by_hop_lowercase`.
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name
            .as_bytes()
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// [`is_hop_by_hop`] for a name known to be lowercase, as every name in a `HeaderMap` is:
/// the same list, compared exactly (length, then bytes) instead of folding case, since it
/// runs over every header of every request and response.
pub fn is_hop_by_hop_lowercase(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-")
}

/// A header field found by httparse, as offsets into the buffer it was parsed from (name
/// start and end, value start and end), so that it can be taken from the buffer once that
/// is frozen: values are then slices of the head, never copies.
pub(crate) type FieldSpan = (u32, u32, u32, u32);

/// The spans of `fields`, parsed from `buf`, written into `spans`.
pub(crate) fn field_spans(buf: &[u8], fields: &[httparse::Header<'_>], spans: &mut [FieldSpan]) {
    let base = buf.as_ptr() as usize;
    for (span, h) in spans.iter_mut().zip(fields) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (
            name as u32,
            (name + h.name.len()) as u32,
            value as u32,
            (value + h.value.len()) as u32,
        );
    }
}

/// The header map of a head whose fields are at `spans`, with room for `more` fields the
/// gateway adds (forwarding headers, the request id, injected secrets): a map that has to
/// grow rehashes every field it holds.
pub(crate) fn field_map(
    head: &Bytes,
    spans: &[FieldSpan],
    more: usize,
) -> Result<http::HeaderMap, &'static str> {
    let mut headers = http::HeaderMap::with_capacity(spans.len() + more);
    for &(ns, ne, vs, ve) in spans {
        let name = http::HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| "invalid header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| "invalid header value")?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A decimal length: digits only, no sign, no space, no overflow.
pub(crate) fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

/// Whether a comma-separated header value (`Connection`, `TE`) lists `token`, in any case.
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::is_hop_by_hop;

    #[test]
    fn hop_by_hop_names_match_in_any_case_without_panicking_on_any_input() {
        for yes in [
            "connection",
            "Keep-Alive",
            "TE",
            "proxy-foo",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(yes), "{yes}");
        }
        // A multi-byte character across the 6-byte prefix must not panic.
        for no in [
            "proxy",
            "prox",
            "x-proxy-a",
            "content-type",
            "",
            "prox\u{e9}-a",
            "tes",
        ] {
            assert!(!is_hop_by_hop(no), "{no}");
        }
    }
}
