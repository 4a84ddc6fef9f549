//! An upstream's endpoints: which one takes the next attempt, and passive health
//! (outlier ejection) from the outcomes of real requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use http::uri::Authority;
use prometheus_client::metrics::gauge::Gauge;

use super::pool::{Pool, SendError};
use crate::config::{Balance, OutlierConfig};
use crate::telemetry::{Counter, EndpointLabels, metrics};
use crate::worker::PerWorker;

/// One address of an upstream, with its own connection pool.
pub struct Endpoint {
    /// `host:port` as configured: the request authority, SNI and default `Host`.
    pub authority: Authority,
    /// The address connections go to, when a host name was resolved to it (an IP
    /// literal, or a name not resolved yet, is connected to as written).
    pub addr: Option<SocketAddr>,
    /// How metrics, logs and `/upstreams` name it: the address, else the authority.
    pub label: Arc<str>,
    /// `Host` for this endpoint when the upstream sends its own.
    pub host: Option<HeaderValue>,
    /// Pooled connections to this endpoint only, one pool per worker: a connection is
    /// made, used and kept by one worker thread.
    pools: PerWorker<Pool>,
    /// Active health: probes failed and passed in a row.
    pub(super) probe_fails: AtomicU32,
    pub(super) probe_passes: AtomicU32,
    /// Requests in flight (for least-request balancing).
    active: AtomicUsize,
    /// Connect failures or 5xx in a row.
    failures: AtomicU32,
    /// Ejections in a row without a success in between (the backoff grows with them).
    ejections: AtomicU32,
    /// Out of rotation until then (passive health).
    ejected_until: Mutex<Option<Instant>>,
    /// Active health verdict (true without health checks).
    healthy: AtomicBool,
    requests: Counter,
    failed: Counter,
    ejected: Counter,
    healthy_gauge: Gauge,
}

/// Counts one attempt in flight on an endpoint until dropped.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub(super) fn new(
        upstream: &str,
        authority: Authority,
        addr: Option<SocketAddr>,
        host: Option<HeaderValue>,
        pools: PerWorker<Pool>,
    ) -> Self {
        let label: Arc<str> = match addr {
            Some(a) => a.to_string().into(),
            None => authority.as_str().into(),
        };
        let labels = EndpointLabels {
            upstream: upstream.to_string(),
            endpoint: label.to_string(),
        };
        let m = &metrics().upstream;
        let requests = m.endpoint_requests.get_or_create(&labels).clone();
        let failed = m.endpoint_failures.get_or_create(&labels).clone();
        let ejected = m.ejections.get_or_create(&labels).clone();
        let healthy_gauge = m.endpoint_healthy.get_or_create(&labels).clone();
        healthy_gauge.set(1);
        Endpoint {
            authority,
            addr,
            label,
            host,
            pools,
            probe_fails: AtomicU32::new(0),
            probe_passes: AtomicU32::new(0),
            active: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            healthy: AtomicBool::new(true),
            requests,
            failed,
            ejected,
            healthy_gauge,
        }
    }

    /// Drop this endpoint's series from `/metrics` (it left the upstream).
    pub(super) fn forget_metrics(&self, upstream: &str) {
        let labels = EndpointLabels {
            upstream: upstream.to_string(),
            endpoint: self.label.to_string(),
        };
        let m = &metrics().upstream;
        m.endpoint_requests.remove(&labels);
        m.endpoint_failures.remove(&labels);
        m.ejections.remove(&labels);
        m.endpoint_healthy.remove(&labels);
    }

    /// Send a request on one of the calling worker's connections to this endpoint; its
    /// URI as [`Upstream::target_uri`](super::Upstream::target_uri) makes it. `now` is
    /// the caller's clock reading for this attempt (kept connections expire against it).
    /// With `back`, the request's headers come back in it for another attempt (see
    /// `Pool::send`).
    pub fn send<'a>(
        &'a self,
        req: http::Request<crate::http::ProxyBody>,
        now: std::time::Instant,
        back: Option<&'a mut Option<http::HeaderMap>>,
    ) -> impl Future<Output = Result<http::Response<super::UpstreamBody>, SendError>> + 'a {
        self.pools.get().send(req, now, back)
    }

    /// Start an attempt.
    pub fn begin(&self) -> InFlight<'_> {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.inc();
        InFlight(self)
    }

    /// The endpoint answered (with anything but a 5xx).
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failure or a 5xx: after `consecutive_failures` in a row the endpoint is
    /// ejected, for twice as long as last time while it keeps failing.
    pub fn failed(&self, outlier: &OutlierConfig) {
        self.failed.inc();
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_failures == 0 || n < outlier.consecutive_failures {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = outlier
            .base_ejection
            .saturating_mul(1 << k)
            .min(outlier.max_ejection);
        *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + backoff);
        self.ejected.inc();
        tracing::warn!(endpoint = %self.label, ejected_for = ?backoff, "upstream endpoint ejected after consecutive failures");
    }

    /// Time left in the current ejection.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = *self.ejected_until.lock().unwrap_or_else(|e| e.into_inner());
        until.and_then(|u| u.checked_duration_since(Instant::now()))
    }

    /// Whether active health checks pass (always true without them).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            self.healthy_gauge.set(healthy as i64);
            if healthy {
                tracing::info!(endpoint = %self.label, "upstream endpoint healthy again");
            } else {
                tracing::warn!(endpoint = %self.label, "upstream endpoint failed its health checks");
            }
        }
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    fn available(&self) -> bool {
        self.is_healthy() && self.ejected_for().is_none()
    }
}

/// Picks endpoints.
pub struct Balancer {
    kind: Balance,
    next: AtomicUsize,
}

impl Balancer {
    pub(super) fn new(kind: Balance) -> Self {
        Balancer {
            kind,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoint for the next attempt, avoiding those already tried. Endpoints that
    /// are ejected or unhealthy are skipped while any other is left; when none is, all
    /// are tried anyway (a gateway that fails closed on its own health view turns a
    /// flapping check into an outage).
    pub fn pick(&self, endpoints: &[Arc<Endpoint>], tried: &[usize]) -> usize {
        if endpoints.len() == 1 {
            return 0;
        }
        let fresh = |i: &usize| !tried.contains(i);
        let mut candidates: Vec<usize> = (0..endpoints.len())
            .filter(|i| fresh(i) && endpoints[*i].available())
            .collect();
        if candidates.is_empty() {
            candidates = (0..endpoints.len()).filter(fresh).collect();
        }
        if candidates.is_empty() {
            candidates = (0..endpoints.len()).collect();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        match self.kind {
            Balance::RoundRobin => candidates[n % candidates.len()],
            Balance::LeastRequest => {
                let a = candidates[rand::random_range(0..candidates.len())];
                let b = candidates[rand::random_range(0..candidates.len())];
                if endpoints[b].active() < endpoints[a].active() {
                    b
                } else {
                    a
                }
            }
        }
    }
}
