//! The typed request view.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::JsonError;
use crate::headers::{HeaderIter, Headers};

/// Headers the gateway withholds from plugins unless a route grants them.
pub(crate) const SENSITIVE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// An HTTP request method.
///
/// Methods are case-sensitive tokens: `get` is [`Method::Other`]`("get")`, not
/// [`Method::Get`], exactly as the gateway and the upstream see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other token, case preserved.
    Other(String),
}

impl Method {
    /// The method token, e.g. `"GET"`.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }

    /// The method for a token, matched exactly (`"GET"` is [`Method::Get`], `"get"` is
    /// [`Method::Other`]).
    pub fn parse(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl From<&str> for Method {
    fn from(token: &str) -> Self {
        Method::parse(token)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Method {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<Method> for str {
    fn eq(&self, other: &Method) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Method> for &str {
    fn eq(&self, other: &Method) -> bool {
        *self == other.as_str()
    }
}

/// The calling client, as verified by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub(crate) address: IpAddr,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) sni: Option<String>,
    pub(crate) uri_sans: Vec<String>,
    pub(crate) dns_sans: Vec<String>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 40000,
            tls: false,
            sni: None,
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
        }
    }
}

impl Client {
    /// The peer's IP address. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) are IPv4 here, so
    /// an IPv4 network rule cannot be sidestepped by connecting over IPv6.
    pub fn ip(&self) -> IpAddr {
        self.address
    }
    /// The peer's address as text (allocates; prefer [`Client::ip`] for decisions).
    pub fn address(&self) -> String {
        self.address.to_string()
    }
    /// The peer's TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// True when the client connected with TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }
    /// TLS server name indication, if sent.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
    /// URI SANs (e.g. SPIFFE IDs) of the verified client certificate.
    pub fn uri_sans(&self) -> &[String] {
        &self.uri_sans
    }
    /// DNS SANs of the verified client certificate.
    pub fn dns_sans(&self) -> &[String] {
        &self.dns_sans
    }
    /// Every verified identity: URI SANs then DNS SANs.
    pub fn identities(&self) -> impl Iterator<Item = &str> {
        self.uri_sans
            .iter()
            .chain(self.dns_sans.iter())
            .map(String::as_str)
    }
}

/// The request a policy decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    // Shared rather than copied per request: the route is fixed per instance.
    pub(crate) route: Arc<str>,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: Headers,
    pub(crate) client: Client,
    pub(crate) body: Option<Vec<u8>>,
}

impl Request {
    /// Start building a request (for tests): `GET /` from `127.0.0.1`, no body.
    pub fn builder() -> RequestBuilder {
        RequestBuilder(Request {
            route: Arc::from("test"),
            method: Method::Get,
            path: "/".into(),
            query: None,
            headers: Headers::default(),
            client: Client::default(),
            body: None,
        })
    }
    /// Name of the route this policy instance serves (from [`Setup`](crate::Setup)).
    pub fn route(&self) -> &str {
        &self.route
    }
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }
    /// Path in the gateway's normalized form, starting with `/` (see the WIT contract).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// Raw query string without `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
    /// First value of header `name` (case-insensitive) as raw bytes.
    pub fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
    }
    /// First value of header `name` (case-insensitive) if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Every value of header `name` (case-insensitive), raw.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers.get_all(name)
    }
    /// All headers in received order, as (lower-case name, raw value).
    pub fn headers(&self) -> HeaderIter<'_> {
        self.headers.iter()
    }
    /// The request body: `Some` (possibly empty) only where the route gives this policy
    /// the body phase (`body = { max = ... }`), already decoded and size-checked.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }
    /// Deserialize the body as JSON.
    ///
    /// On a route whose body phase accepts JSON, the gateway has already refused
    /// ambiguous documents (duplicate keys, lone surrogates, trailing data, ...). An
    /// absent or empty body is [`JsonError::NoBody`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, JsonError> {
        crate::json::from_body(self.body())
    }
}

/// Builds a [`Request`] for tests.
#[derive(Clone, Debug)]
pub struct RequestBuilder(Request);

impl RequestBuilder {
    /// Route name. The [`testing`](crate::testing) harness replaces it with its own, as
    /// the gateway does.
    pub fn route(mut self, route: &str) -> Self {
        self.0.route = Arc::from(route);
        self
    }
    /// Method token, kept exactly as given (methods are case-sensitive).
    pub fn method(mut self, method: &str) -> Self {
        self.0.method = Method::parse(method);
        self
    }
    /// Path, optionally with `?query`.
    pub fn path(mut self, path: &str) -> Self {
        match path.split_once('?') {
            Some((p, q)) => {
                self.0.path = p.into();
                self.0.query = Some(q.into());
            }
            None => self.0.path = path.into(),
        }
        self
    }
    /// Add a header (name lower-cased). Like the gateway, the [`testing`](crate::testing)
    /// harness withholds sensitive headers the route does not grant.
    ///
    /// # Panics
    /// If the name or value contains a 0 byte, which the gateway never passes.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.headers.push(name, value.as_ref());
        self
    }
    /// Request body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = Some(body.into());
        self
    }
    /// JSON request body; adds `content-type: application/json` unless a content type is
    /// already set.
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.0.body = Some(value.to_string().into_bytes());
        if self.0.headers.get("content-type").is_none() {
            self.0.headers.push("content-type", b"application/json");
        }
        self
    }
    /// Client address, e.g. `"10.0.0.1"` or `"::1"`. An IPv4-mapped IPv6 address becomes
    /// IPv4, as the gateway passes it.
    ///
    /// # Panics
    /// If `ip` is not an IP address.
    pub fn client_ip(self, ip: &str) -> Self {
        let ip: IpAddr = ip
            .parse()
            .unwrap_or_else(|_| panic!("{ip:?} is not an IP address"));
        self.client_addr(ip)
    }
    /// Client address.
    pub fn client_addr(mut self, ip: IpAddr) -> Self {
        self.0.client.address = ip.to_canonical();
        self
    }
    /// Client port.
    pub fn client_port(mut self, port: u16) -> Self {
        self.0.client.port = port;
        self
    }
    /// Mark the connection as TLS with this SNI.
    pub fn tls(mut self, sni: Option<&str>) -> Self {
        self.0.client.tls = true;
        self.0.client.sni = sni.map(Into::into);
        self
    }
    /// Add a verified URI SAN (implies TLS).
    pub fn uri_san(mut self, san: &str) -> Self {
        self.0.client.tls = true;
        self.0.client.uri_sans.push(san.into());
        self
    }
    /// Add a verified DNS SAN (implies TLS).
    pub fn dns_san(mut self, san: &str) -> Self {
        self.0.client.tls = true;
        self.0.client.dns_sans.push(san.into());
        self
    }
    /// Finish.
    pub fn build(self) -> Request {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn methods_are_exact_tokens() {
        assert_eq!(Method::parse("GET"), Method::Get);
        assert_eq!(Method::parse("get"), Method::Other("get".into()));
        assert_eq!(Method::parse("PROPFIND").as_str(), "PROPFIND");
        let r = Request::builder().method("PATCH").build();
        assert!(r.method() == "PATCH");
        assert!(*r.method() == Method::Patch);
        assert_eq!(r.method().to_string(), "PATCH");
    }

    #[test]
    fn client_ip_is_canonical() {
        let r = Request::builder().client_ip("::ffff:10.1.2.3").build();
        assert_eq!(r.client().ip(), "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(r.client().address(), "10.1.2.3");
    }

    #[test]
    fn json_body() {
        #[derive(serde::Deserialize, Debug)]
        struct B {
            a: u32,
        }
        let r = Request::builder().json(&json!({ "a": 1 })).build();
        assert_eq!(r.json::<B>().unwrap().a, 1);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let e = Request::builder().build().json::<B>().unwrap_err();
        assert!(matches!(e, JsonError::NoBody), "{e}");
        let e = Request::builder()
            .body("{")
            .build()
            .json::<B>()
            .unwrap_err();
        assert!(matches!(e, JsonError::NotJson(_)), "{e}");
        let e = Request::builder()
            .body(r#"{"a":"x"}"#)
            .build()
            .json::<B>()
            .unwrap_err();
        assert!(matches!(e, JsonError::Shape(_)), "{e}");
    }
}
