//! Upstreams: one or more endpoints, each with a connection pool per worker, TLS always
//! verified, with balancing, passive and active health, and retries within a budget.

mod dns;
mod endpoints;
mod h1;
mod health;
mod pool;
mod retry;

pub use endpoints::{Balancer, Endpoint, InFlight};
pub use pool::{SendError, UpstreamBody};
pub use retry::{RetryBudget, RetryPolicy};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use crate::config::field::FieldError;
use crate::config::{HostHeader, OutlierConfig, RetryConfig, UpstreamConfig};

/// A configured upstream and its endpoints.
pub struct Upstream {
    /// Upstream name.
    pub name: Arc<str>,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    /// Default time to the response head.
    pub timeout: Duration,
    /// Where requests go; replaced when re-resolution finds other addresses.
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// The configured authorities, in order.
    authorities: Vec<Authority>,
    /// How each endpoint's connections are made.
    dialer: Arc<pool::Dialer>,
    /// Which endpoint takes the next attempt.
    pub balancer: Balancer,
    /// When an endpoint is ejected.
    pub outlier: OutlierConfig,
    /// Retry rules for routes that set none.
    pub retry: Arc<RetryPolicy>,
    /// Retries allowed as a share of requests, shared by every route to this upstream.
    pub budget: RetryBudget,
    scheme: Scheme,
    base_path: String,
    host: HostMode,
    /// Everything the client depends on; equal fingerprints can share a pool across reloads.
    pub fingerprint: String,
    /// `upstream_duration_seconds{upstream}`, resolved once.
    pub duration: crate::telemetry::Histogram,
    /// `upstream_retries_total{upstream}`, resolved once.
    pub retries: crate::telemetry::Counter,
}

/// Which `Host` goes upstream.
enum HostMode {
    /// The endpoint's own authority.
    Endpoint,
    /// The client's.
    Preserve,
    /// A fixed value.
    Fixed(HeaderValue),
}

impl Upstream {
    /// Build an upstream from validated config, and start its health checks (which end
    /// when the last snapshot using it is dropped).
    pub fn build(name: &str, cfg: &UpstreamConfig) -> Result<Arc<Upstream>, FieldError> {
        let mut parsed = Vec::new();
        for url in cfg.urls() {
            let uri: Uri = url
                .parse()
                .map_err(|e| FieldError::new("url", format!("invalid URL: {e}")))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| FieldError::new("url", "missing scheme"))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| FieldError::new("url", "missing host"))?;
            parsed.push((
                scheme,
                authority,
                uri.path().trim_end_matches('/').to_string(),
            ));
        }
        let Some((scheme, _, base_path)) = parsed.first().cloned() else {
            return Err(FieldError::new("url", "missing url"));
        };
        let https = scheme == Scheme::HTTPS;
        let tls = crate::tls::client_config(cfg.tls.as_ref(), https)
            .map_err(|e| FieldError::new("tls", e.to_string()))?;
        let server_name = match cfg.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(sn) => Some(
                rustls_pki_types::ServerName::try_from(sn)
                    .map_err(|e| FieldError::new("tls.server_name", e.to_string()))?,
            ),
            None => None,
        };
        let dialer = Arc::new(pool::Dialer::new(
            tls,
            https,
            cfg.http2,
            server_name,
            cfg.connect_timeout,
            cfg.pool.clone(),
        ));

        let host = match &cfg.host_header {
            HostHeader::Upstream => HostMode::Endpoint,
            HostHeader::Preserve => HostMode::Preserve,
            HostHeader::Fixed(h) => HostMode::Fixed(
                HeaderValue::from_str(h)
                    .map_err(|_| FieldError::new("host_header", "not a valid header value"))?,
            ),
        };
        let authorities: Vec<Authority> = parsed.into_iter().map(|(_, a, _)| a).collect();
        let retry_cfg = cfg.retry.clone().unwrap_or_default();
        let fingerprint = Self::fingerprint(cfg);
        let m = crate::telemetry::metrics();
        let label = crate::telemetry::UpstreamLabel {
            upstream: name.to_string(),
        };
        let duration = m.proxy.upstream_duration.get_or_create(&label).clone();
        let retries = m.upstream.retries.get_or_create(&label).clone();
        let up = Arc::new(Upstream {
            duration,
            retries,
            name: name.into(),
            http2: cfg.http2,
            timeout: cfg.timeout,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            authorities,
            dialer,
            balancer: Balancer::new(cfg.balance),
            outlier: cfg.outlier.clone(),
            retry: Arc::new(RetryPolicy::from_config(&retry_cfg)),
            budget: RetryBudget::new(retry_cfg.budget_ratio().unwrap_or(0.2)),
            scheme,
            base_path,
            host,
            fingerprint,
        });
        // Until the first resolution, a name is connected to as written.
        let first: Vec<Arc<Endpoint>> = up
            .authorities
            .iter()
            .map(|a| Arc::new(up.endpoint(a.clone(), None)))
            .collect();
        up.endpoints.store(Arc::new(first));
        if dns::has_names(&up.authorities) {
            dns::spawn(&up, cfg.dns_refresh);
        }
        if let Some(h) = &cfg.health {
            health::spawn(&up, h.clone());
        }
        Ok(up)
    }

    /// Everything an upstream is built from: equal fingerprints can share one upstream
    /// (pools, endpoint health, budget) across reloads.
    pub fn fingerprint(cfg: &UpstreamConfig) -> String {
        format!(
            "{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            cfg.urls(),
            cfg.http2,
            cfg.connect_timeout,
            cfg.timeout,
            cfg.host_header,
            cfg.tls,
            cfg.pool,
            cfg.balance,
            cfg.health,
            cfg.outlier,
            cfg.retry,
            cfg.dns_refresh
        )
    }

    /// The endpoints now in rotation.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// A new endpoint of this upstream: `authority` as configured, connected at `addr`
    /// when it was resolved.
    fn endpoint(&self, authority: Authority, addr: Option<SocketAddr>) -> Endpoint {
        let host = HeaderValue::from_str(authority.as_str()).ok();
        let name = dns::bare_host(&authority);
        let port = authority.port_u16().unwrap_or(self.default_port());
        let target = match addr {
            Some(a) => pool::Target::Addr(a),
            None => match name.parse::<std::net::IpAddr>() {
                Ok(ip) => pool::Target::Addr(SocketAddr::new(ip, port)),
                Err(_) => pool::Target::Name(name.to_string(), port),
            },
        };
        let dest = Arc::new(pool::Dest::new(self.dialer.clone(), target, name));
        Endpoint::new(
            &self.name,
            authority,
            addr,
            host,
            crate::worker::PerWorker::new(|_| pool::Pool::new(dest.clone())),
        )
    }

    /// The port of an authority that names none.
    fn default_port(&self) -> u16 {
        if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        }
    }

    /// The retry rules of a route: its own `retry`, else the upstream's.
    pub fn retry_for(&self, route: Option<&RetryConfig>) -> Arc<RetryPolicy> {
        match route {
            Some(r) => Arc::new(RetryPolicy::from_config(r)),
            None => self.retry.clone(),
        }
    }

    /// The upstream URI for a downstream request URI on endpoint `ep`: the upstream's
    /// base path, then the request path and query unchanged. HTTP/1.1 sends that alone
    /// (origin-form); HTTP/2 also carries the upstream's scheme and the endpoint's
    /// authority (`:scheme`, `:authority`).
    pub fn target_uri(&self, ep: &Endpoint, orig: &Uri) -> Result<Uri, http::Error> {
        let pq = match orig.path_and_query() {
            Some(pq) if self.base_path.is_empty() => pq.clone(),
            pq => {
                let pq = pq.map(PathAndQuery::as_str).unwrap_or("/");
                PathAndQuery::try_from(format!("{}{}", self.base_path, pq))?
            }
        };
        self.uri_on(ep, pq)
    }

    /// `pq` as a request to endpoint `ep`: alone for HTTP/1.1, with the scheme and the
    /// endpoint's authority for HTTP/2.
    fn uri_on(&self, ep: &Endpoint, pq: PathAndQuery) -> Result<Uri, http::Error> {
        if !self.http2 {
            return Ok(Uri::from(pq));
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(ep.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The `Host` to send to endpoint `ep`: the client's (preserve), a fixed value, or the
    /// endpoint's.
    pub fn host_header(
        &self,
        ep: &Endpoint,
        original: Option<&HeaderValue>,
    ) -> Option<HeaderValue> {
        match &self.host {
            HostMode::Preserve => original.cloned(),
            HostMode::Fixed(h) => Some(h.clone()),
            HostMode::Endpoint => ep.host.clone(),
        }
    }
}
