//! Header handling with proxy semantics: hop-by-hop stripping, `X-Forwarded-*`, request
//! ids, host extraction.

use http::header::{CONNECTION, HOST, TE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};

use super::ClientInfo;

/// Request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

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
];

/// Whether `name` is a hop-by-hop header (case-insensitive).
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
        || name.to_ascii_lowercase().starts_with("proxy-")
}

/// Remove hop-by-hop headers and every header `Connection` names. When `upgrading`, keep
/// `Connection: upgrade` and `Upgrade` so the upgrade reaches the other side. `TE:
/// trailers` is kept: gRPC needs it end to end and it asks nothing of the proxy.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrading: bool) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let upgrade = if upgrading {
        h.get(UPGRADE).cloned()
    } else {
        None
    };
    let te_trailers = h.get_all(TE).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false)
    });
    for n in named {
        h.remove(n);
    }
    let to_remove: Vec<HeaderName> = h
        .keys()
        .filter(|k| is_hop_by_hop(k.as_str()))
        .cloned()
        .collect();
    for n in to_remove {
        h.remove(n);
    }
    if let Some(u) = upgrade {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        h.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether an HTTP/1.1 request asks for a protocol upgrade (WebSocket …).
pub fn upgrade_requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The request authority: `:authority` / absolute-form URI, else `Host`.
pub fn authority_of(parts: &http::request::Parts) -> Option<HeaderValue> {
    if let Some(a) = parts.uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    parts.headers.get(HOST).cloned()
}

/// Host for routing, lower-case, without port.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let a = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req.headers().get(HOST)?.to_str().ok()?.to_string(),
    };
    Some(super::host_without_port(&a).to_ascii_lowercase())
}

/// Keep a client's request id when it is short and printable, else make one.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(X_REQUEST_ID)
        && v.len() <= 128
        && !v.is_empty()
        && v.as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    {
        return v.clone();
    }
    HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("uuid is a valid header value")
}

/// Whether a path has `.` or `..` segments (raw or percent-encoded), which upstreams may
/// resolve differently from our routing.
pub fn has_dot_segments(path: &str) -> bool {
    path.split('/').any(|seg| {
        let s = seg.to_ascii_lowercase();
        let s = s.replace("%2e", ".");
        s == "." || s == ".."
    }) || path.to_ascii_lowercase().contains("%2f")
}

/// Set `X-Forwarded-For/-Proto/-Host`. From a trusted proxy the existing values are kept
/// and the peer appended; from anyone else they are replaced, so a client cannot forge
/// its address. `Forwarded` is dropped from untrusted peers for the same reason.
pub fn set_forwarded(
    h: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
    trusted: &[ipnet::IpNet],
) {
    let peer_ip = client.addr.ip();
    let trusted_peer = trusted.iter().any(|n| n.contains(&peer_ip));
    let peer = peer_ip.to_string();
    let proto = if client.tls { "https" } else { "http" };
    if trusted_peer {
        let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR, v);
        }
        if !h.contains_key(X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if !h.contains_key(X_FORWARDED_HOST)
            && let Some(host) = host
        {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
    } else {
        h.remove(FORWARDED);
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&peer).expect("an IP is a valid header value"),
        );
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        match host {
            Some(host) => {
                h.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                h.remove(X_FORWARDED_HOST);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert(TE, HeaderValue::from_static("trailers, deflate"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn dot_segments() {
        assert!(has_dot_segments("/a/../b"));
        assert!(has_dot_segments("/a/%2E%2e/b"));
        assert!(has_dot_segments("/a/%2fb"));
        assert!(!has_dot_segments("/a/..b/c"));
    }
}
