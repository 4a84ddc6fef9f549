//! The typed request view.

use std::net::IpAddr;

/// Headers the gateway withholds from plugins unless a route grants them.
pub(crate) const SENSITIVE_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// The calling client, as verified by the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub(crate) address: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) sni: Option<String>,
    pub(crate) uri_sans: Vec<String>,
    pub(crate) dns_sans: Vec<String>,
}

impl Default for Client {
    fn default() -> Self {
        Client {
            address: "127.0.0.1".into(),
            port: 40000,
            tls: false,
            sni: None,
            uri_sans: Vec::new(),
            dns_sans: Vec::new(),
        }
    }
}

impl Client {
    /// The peer's IP address; `None` only if the host sent something unparsable.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.parse().ok()
    }
    /// The peer's address as text.
    pub fn address(&self) -> &str {
        &self.address
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

/// The request head a policy decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub(crate) route: String,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) client: Client,
}

impl Request {
    /// Start building a request (for tests): `GET /` from `127.0.0.1`.
    pub fn builder() -> RequestBuilder {
        RequestBuilder(Request {
            route: "test".into(),
            method: "GET".into(),
            path: "/".into(),
            query: None,
            headers: Vec::new(),
            client: Client::default(),
        })
    }
    /// Name of the matched route.
    pub fn route(&self) -> &str {
        &self.route
    }
    /// Method, upper case.
    pub fn method(&self) -> &str {
        &self.method
    }
    /// Path, starting with `/`.
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
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    /// First value of header `name` (case-insensitive) if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_bytes(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
    /// Every value of header `name` (case-insensitive), raw.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
    /// All headers in received order, as (lower-case name, raw value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

/// Builds a [`Request`] for tests.
#[derive(Clone, Debug)]
pub struct RequestBuilder(Request);

impl RequestBuilder {
    /// Route name.
    pub fn route(mut self, route: &str) -> Self {
        self.0.route = route.into();
        self
    }
    /// Method (upper-cased).
    pub fn method(mut self, method: &str) -> Self {
        self.0.method = method.to_ascii_uppercase();
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
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0
            .headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }
    /// Client address.
    pub fn client_ip(mut self, ip: &str) -> Self {
        self.0.client.address = ip.into();
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
