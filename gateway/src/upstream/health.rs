//! Active health checks: each endpoint is probed with `GET path` every `interval`;
//! `unhealthy_after` failures in a row take it out of rotation and `healthy_after`
//! passes bring it back. The task holds the upstream weakly, so it ends with the last
//! snapshot that uses the upstream.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use http::Request;

use super::Upstream;
use crate::config::HealthConfig;
use crate::http::empty;

pub(super) fn spawn(upstream: &Arc<Upstream>, cfg: HealthConfig) {
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            let cfg = &cfg;
            // The current endpoint set: re-resolution may have changed it since last time.
            let endpoints = up.endpoints();
            let probes = endpoints.iter().map(|ep| {
                let up = &up;
                async move {
                    let uri = http::uri::PathAndQuery::try_from(cfg.path.as_str())
                        .map_err(http::Error::from)
                        .and_then(|pq| up.uri_on(ep, pq));
                    let Ok(uri) = uri else { return false };
                    let mut req = Request::get(uri).body(empty()).expect("valid parts");
                    if let Some(h) = &ep.host {
                        req.headers_mut().insert(http::header::HOST, h.clone());
                    }
                    match tokio::time::timeout(
                        cfg.timeout,
                        ep.send(req, std::time::Instant::now(), None),
                    )
                    .await
                    {
                        Ok(Ok(resp)) => resp.status().is_success(),
                        _ => false,
                    }
                }
            });
            let results = futures_util::future::join_all(probes).await;
            for (ep, ok) in endpoints.iter().zip(results) {
                if ok {
                    ep.probe_fails.store(0, Ordering::Relaxed);
                    let passes = ep.probe_passes.fetch_add(1, Ordering::Relaxed) + 1;
                    if passes >= cfg.healthy_after {
                        ep.set_healthy(true);
                    }
                } else {
                    ep.probe_passes.store(0, Ordering::Relaxed);
                    let fails = ep.probe_fails.fetch_add(1, Ordering::Relaxed) + 1;
                    if fails >= cfg.unhealthy_after {
                        ep.set_healthy(false);
                    }
                }
            }
            // Not held across the wait: the snapshot may drop the upstream meanwhile.
            drop(endpoints);
            drop(up);
        }
    });
}
