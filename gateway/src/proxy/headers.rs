//! Header handling with proxy semantics: hop-by-hop stripping, `X-Forwarded-*`, request
//! ids, host extraction.

use http::header::{CONNECTION, HOST, TE, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};

use crate::http::{ClientInfo, is_hop_by_hop_lowercase};

/// Request id header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Method-override headers: an upstream that honours them runs another method than the
/// one the router and the policies saw.
pub const METHOD_OVERRIDE: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Remove hop-by-hop headers and every header `Connection` names. With `upgrade`, send
/// that `Upgrade` value and `Connection: upgrade` so the upgrade reaches the other side.
/// `TE: trailers` is kept: gRPC needs it end to end and it asks nothing of the proxy.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    // `Connection` and `TE` are hop-by-hop themselves, so a map without any hop-by-hop
    // name (most requests, once a client stops sending `Connection: keep-alive`) has
    // nothing to strip: one pass over the names, no list made.
    if h.keys().any(|k| is_hop_by_hop_lowercase(k.as_str())) {
        strip_named_and_hop_by_hop(h);
    }
    if let Some(u) = upgrade {
        h.insert(UPGRADE, u);
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn strip_named_and_hop_by_hop(h: &mut HeaderMap) {
    // What `Connection` names, other than hop-by-hop headers (removed below anyway):
    // usually nothing (`keep-alive`), so usually no name is made and no list.
    let mut named: Vec<HeaderName> = Vec::new();
    for v in h.get_all(CONNECTION) {
        for t in v.as_bytes().split(|b| *b == b',') {
            let t = t.trim_ascii();
            if t.is_empty() || std::str::from_utf8(t).is_ok_and(crate::http::is_hop_by_hop) {
                continue;
            }
            if let Ok(n) = HeaderName::from_bytes(t) {
                named.push(n);
            }
        }
    }
    let te_trailers = h
        .get_all(TE)
        .iter()
        .any(|v| crate::http::has_token(v.as_bytes(), b"trailers"));
    for n in named {
        h.remove(n);
    }
    // One removal per hop-by-hop name present (usually only `connection`), found by a
    // scan of the names rather than a lookup of every name on the list.
    while let Some(n) = h
        .keys()
        .find(|k| is_hop_by_hop_lowercase(k.as_str()))
        .cloned()
    {
        h.remove(n);
    }
    if te_trailers {
        h.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The protocols an HTTP/1.1 upgrade request asks for (`Upgrade: websocket, h2c`), as
/// written; empty when the request is not an upgrade (HTTP/1.0, no `Connection: upgrade`).
pub fn upgrade_protocols<B>(req: &Request<B>) -> Vec<&str> {
    let asks = req.version() == Version::HTTP_11
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
    if !asks {
        return Vec::new();
    }
    req.headers()
        .get_all(UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether an upgrade protocol token (`websocket`, `foo/2`) is one of `allowed` (lower-case
/// names; an entry without a version allows every version). `h2c` never is.
pub fn upgrade_allowed(token: &str, allowed: &[String]) -> bool {
    let t = token.to_ascii_lowercase();
    let name = t.split('/').next().unwrap_or("");
    name != "h2c"
        && allowed
            .iter()
            .any(|a| *a == t || (!a.contains('/') && a == name))
}

/// The request authority: `:authority` / absolute-form URI, else `Host`.
pub fn authority_of(parts: &http::request::Parts) -> Option<HeaderValue> {
    if let Some(a) = parts.uri.authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    parts.headers.get(HOST).cloned()
}

/// The one authority of a request, checked: two `Host` headers, an HTTP/2 `:authority`
/// that a `host` header contradicts, or an HTTP/1.1 request without `Host` is an error
/// (RFC 9112 §3.2, RFC 9113 §8.3.1). In absolute form the target's authority wins over
/// `Host` (RFC 9112 §3.2.2).
pub fn checked_authority<B>(req: &Request<B>) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(a) = req.uri().authority() {
        if req.version() == Version::HTTP_2
            && let Some(h) = host
            && !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes())
        {
            return Err(":authority and Host disagree");
        }
        return HeaderValue::from_str(a.as_str())
            .map(Some)
            .map_err(|_| "invalid authority");
    }
    match host {
        Some(h) if !h.is_empty() => Ok(Some(h.clone())),
        Some(_) => Ok(None),
        None if req.version() == Version::HTTP_11 => Err("missing Host header"),
        None => Ok(None),
    }
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
    // A v4 UUID from the thread's userspace generator (`Uuid::new_v4` asks the kernel for
    // every id), written into a stack buffer rather than a String.
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_bytes(id.hyphenated().encode_lower(&mut buf).as_bytes())
        .expect("a UUID is a valid header value")
}

/// Set `X-Forwarded-For/-Proto/-Host`. From a trusted proxy the existing values are kept
/// and the peer appended; from anyone else they are replaced, so a client cannot forge
/// its address. `Forwarded` is dropped from untrusted peers for the same reason. Returns
/// whether the peer is a trusted proxy.
pub fn set_forwarded(
    h: &mut HeaderMap,
    client: &ClientInfo,
    host: Option<&HeaderValue>,
    trusted: &[ipnet::IpNet],
) -> bool {
    let peer_ip = client.addr.ip();
    let trusted_peer = !trusted.is_empty() && trusted.iter().any(|n| n.contains(&peer_ip));
    let proto = if client.tls { "https" } else { "http" };
    if trusted_peer {
        let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => {
                HeaderValue::from_str(&format!("{prev}, {}", peer_ip)).ok()
            }
            _ => Some(client.ip.clone()),
        };
        if let Some(v) = xff {
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
        h.insert(X_FORWARDED_FOR, client.ip.clone());
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
    trusted_peer
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
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h.get(TE).unwrap(), "trailers");
        assert!(h.contains_key("x-keep"));

        h.insert(UPGRADE, HeaderValue::from_static("websocket, h2c"));
        strip_hop_by_hop(&mut h, Some(HeaderValue::from_static("websocket")));
        assert_eq!(h.get(UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");

        // Nothing hop-by-hop: nothing goes, and an upgrade is still sent on.
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.append("x-keep", HeaderValue::from_static("2"));
        h.insert("proxy", HeaderValue::from_static("not a proxy- header"));
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 3, "{h:?}");
        strip_hop_by_hop(&mut h, Some(HeaderValue::from_static("websocket")));
        assert_eq!(h.len(), 5, "{h:?}");
        assert_eq!(h.get(CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn lowercase_hop_by_hop_check_agrees_with_the_case_insensitive_one() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "proxy-",
            "proxy-x",
            "te",
            "trailer",
            "trailers",
            "transfer-encoding",
            "upgrade",
            "http2-settings",
            "proxy",
            "x-te",
            "t",
            "host",
            "content-length",
            "keep-alive2",
            "",
            "upgrade-insecure-requests",
        ] {
            let parsed = HeaderName::from_bytes(name.as_bytes()).map(|n| n.to_string());
            let name = parsed.as_deref().unwrap_or(name);
            assert_eq!(
                is_hop_by_hop_lowercase(name),
                crate::http::is_hop_by_hop(name),
                "{name}"
            );
        }
    }

    #[test]
    fn upgrades_are_allowed_by_name_and_h2c_never() {
        let ws = vec!["websocket".to_string()];
        assert!(upgrade_allowed("WebSocket", &ws));
        assert!(!upgrade_allowed("h2c", &ws));
        assert!(!upgrade_allowed("h2c", &["h2c".to_string()]));
        assert!(!upgrade_allowed("tls/1.2", &ws));
        assert!(upgrade_allowed("foo/2", &["foo".to_string()]));
        assert!(!upgrade_allowed("foo/3", &["foo/2".to_string()]));
        assert!(!upgrade_allowed("websocket", &[]));
    }

    #[test]
    fn one_authority_per_request() {
        let req = |v: Version, uri: &str, hosts: &[&str]| {
            let mut b = Request::builder().version(v).uri(uri);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            b.body(()).unwrap()
        };
        let h11 = Version::HTTP_11;
        assert!(checked_authority(&req(h11, "/", &["a", "b"])).is_err());
        assert!(checked_authority(&req(h11, "/", &["a", "a"])).is_err());
        assert!(checked_authority(&req(h11, "/", &[])).is_err());
        assert_eq!(
            checked_authority(&req(Version::HTTP_10, "/", &[])),
            Ok(None)
        );
        assert_eq!(
            checked_authority(&req(h11, "http://real.example/x", &["other"])).unwrap(),
            Some(HeaderValue::from_static("real.example"))
        );
        let h2 = Version::HTTP_2;
        assert!(checked_authority(&req(h2, "http://a.example/", &["b.example"])).is_err());
        assert!(checked_authority(&req(h2, "http://a.example/", &["A.example"])).is_ok());
    }
}
