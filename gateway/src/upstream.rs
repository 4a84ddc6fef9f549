//! Upstreams: one pooled hyper client per upstream, TLS always verified, over one or more
//! endpoints with balancing, passive and active health, and retries within a budget.

mod endpoints;
mod health;
mod retry;

pub use endpoints::{Balancer, Endpoint, InFlight};
pub use retry::{RetryBudget, RetryPolicy};

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::field::FieldError;
use crate::config::{HostHeader, OutlierConfig, RetryConfig, UpstreamConfig};
use crate::http::ProxyBody;

/// A configured upstream with its connection pool.
pub struct Upstream {
    /// Upstream name.
    pub name: Arc<str>,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    /// Default time to the response head.
    pub timeout: Duration,
    /// The pooled client (pools are per endpoint inside it).
    pub client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// Where requests go.
    pub endpoints: Vec<Endpoint>,
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
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// `upstream_retries_total{upstream}`, resolved once.
    pub retries: prometheus_client::metrics::counter::Counter,
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

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));

        let tls = crate::tls::client_config(cfg.tls.as_ref())
            .map_err(|e| FieldError::new("tls", e.to_string()))?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let builder = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        let builder = match cfg.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(sn) => {
                let sn = rustls_pki_types::ServerName::try_from(sn)
                    .map_err(|e| FieldError::new("tls.server_name", e.to_string()))?;
                builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(sn))
            }
            None => builder,
        };
        let connector = if cfg.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };

        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool.idle_timeout)
            .pool_max_idle_per_host(cfg.pool.max_idle)
            .http2_only(cfg.http2)
            .set_host(false)
            .build(connector);

        let host = match &cfg.host_header {
            HostHeader::Upstream => HostMode::Endpoint,
            HostHeader::Preserve => HostMode::Preserve,
            HostHeader::Fixed(h) => HostMode::Fixed(
                HeaderValue::from_str(h)
                    .map_err(|_| FieldError::new("host_header", "not a valid header value"))?,
            ),
        };
        let endpoints = parsed
            .into_iter()
            .map(|(_, authority, _)| {
                let host = HeaderValue::from_str(authority.as_str()).ok();
                Endpoint::new(name, authority, host)
            })
            .collect();
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
            client,
            endpoints,
            balancer: Balancer::new(cfg.balance),
            outlier: cfg.outlier.clone(),
            retry: Arc::new(RetryPolicy::from_config(&retry_cfg)),
            budget: RetryBudget::new(retry_cfg.budget_ratio().unwrap_or(0.2)),
            scheme,
            base_path,
            host,
            fingerprint,
        });
        if let Some(h) = &cfg.health {
            health::spawn(&up, h.clone());
        }
        Ok(up)
    }

    /// Everything an upstream is built from: equal fingerprints can share one upstream
    /// (pools, endpoint health, budget) across reloads.
    pub fn fingerprint(cfg: &UpstreamConfig) -> String {
        format!(
            "{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
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
            cfg.retry
        )
    }

    /// The retry rules of a route: its own `retry`, else the upstream's.
    pub fn retry_for(&self, route: Option<&RetryConfig>) -> Arc<RetryPolicy> {
        match route {
            Some(r) => Arc::new(RetryPolicy::from_config(r)),
            None => self.retry.clone(),
        }
    }

    /// The upstream URI for a downstream request URI on endpoint `ep`: the upstream's
    /// scheme, the endpoint's authority, the upstream's base path, then the request path
    /// and query unchanged.
    pub fn target_uri(&self, ep: &Endpoint, orig: &Uri) -> Result<Uri, http::Error> {
        let pq = orig
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let pq = if self.base_path.is_empty() {
            pq.to_string()
        } else {
            format!("{}{}", self.base_path, pq)
        };
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
