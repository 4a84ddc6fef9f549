//! Upstreams: one pooled hyper client per upstream, TLS always verified.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::field::FieldError;
use crate::config::{HostHeader, UpstreamConfig};
use crate::http::ProxyBody;

/// A configured upstream with its connection pool.
pub struct Upstream {
    /// Upstream name.
    pub name: Arc<str>,
    /// Whether requests go out as HTTP/2.
    pub http2: bool,
    /// Default time to the response head.
    pub timeout: Duration,
    /// The pooled client.
    pub client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    host: Option<HeaderValue>,
    preserve_host: bool,
    /// Everything the client depends on; equal fingerprints can share a pool across reloads.
    pub fingerprint: String,
    /// `upstream_duration_seconds{upstream}`, resolved once.
    pub duration: prometheus_client::metrics::histogram::Histogram,
}

impl Upstream {
    /// Build an upstream from validated config.
    pub fn build(name: &str, cfg: &UpstreamConfig) -> Result<Upstream, FieldError> {
        let uri: Uri = cfg
            .url
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
        let base_path = uri.path().trim_end_matches('/').to_string();
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

        let (host, preserve_host) = match &cfg.host_header {
            HostHeader::Upstream => (HeaderValue::from_str(authority.as_str()).ok(), false),
            HostHeader::Preserve => (None, true),
            HostHeader::Fixed(h) => (
                Some(
                    HeaderValue::from_str(h)
                        .map_err(|_| FieldError::new("host_header", "not a valid header value"))?,
                ),
                false,
            ),
        };
        let fingerprint = format!(
            "{}|{}|{:?}|{:?}|{:?}",
            cfg.url, cfg.http2, cfg.connect_timeout, cfg.tls, cfg.pool
        );
        let duration = crate::telemetry::metrics()
            .proxy
            .upstream_duration
            .get_or_create(&crate::telemetry::UpstreamLabel {
                upstream: name.to_string(),
            })
            .clone();
        Ok(Upstream {
            duration,
            name: name.into(),
            http2: cfg.http2,
            timeout: cfg.timeout,
            client,
            scheme,
            authority,
            base_path,
            host,
            preserve_host,
            fingerprint,
        })
    }

    /// The upstream URI for a downstream request URI: upstream scheme and authority, the
    /// upstream's base path, then the request path and query unchanged.
    pub fn target_uri(&self, orig: &Uri) -> Result<Uri, http::Error> {
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
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }

    /// The `Host` to send: the client's (preserve), a fixed value, or the upstream's.
    pub fn host_header(&self, original: Option<&HeaderValue>) -> Option<HeaderValue> {
        if self.preserve_host {
            original.cloned()
        } else {
            self.host.clone()
        }
    }
}
