//! Host names in `url`/`endpoints` are resolved again every `dns_refresh`, and every
//! address becomes an endpoint of its own (its own pool, health and ejection), so a
//! Kubernetes headless Service works as is: pods that come and go are picked up, and one
//! that fails is ejected alone.
//!
//! Resolution uses the system resolver (`getaddrinfo`: `/etc/hosts`, then DNS), so it
//! follows the container's `resolv.conf` like every other program in it. A failed or empty
//! answer keeps the addresses already known: a DNS hiccup must not empty an upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Endpoint, Upstream};

/// The host of `authority` without the brackets of an IPv6 literal.
pub(super) fn bare_host(authority: &http::uri::Authority) -> &str {
    authority.host().trim_matches(['[', ']'])
}

/// Whether `authority` names a host rather than an address.
fn is_name(authority: &http::uri::Authority) -> bool {
    bare_host(authority).parse::<std::net::IpAddr>().is_err()
}

/// Whether any of `authorities` names a host rather than an address.
pub(super) fn has_names(authorities: &[http::uri::Authority]) -> bool {
    authorities.iter().any(is_name)
}

/// Resolve now and then every `every`, until the upstream is dropped.
pub(super) fn spawn(upstream: &Arc<Upstream>, every: Duration) {
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(up) = weak.upgrade() else { return };
            refresh(&up).await;
            drop(up);
        }
    });
}

/// One round: resolve each configured authority, keep the endpoints whose address is
/// still there (with their pools and health), add the new ones, drop the gone ones.
pub(super) async fn refresh(up: &Upstream) {
    let current = up.endpoints();
    let mut next: Vec<Arc<Endpoint>> = Vec::new();
    for authority in &up.authorities {
        let mine: Vec<&Arc<Endpoint>> = current
            .iter()
            .filter(|e| e.authority == *authority)
            .collect();
        if !is_name(authority) {
            next.extend(mine.into_iter().cloned());
            continue;
        }
        let port = authority.port_u16().unwrap_or(up.default_port());
        let host = authority.host().to_string();
        let resolved = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        let mut addrs: Vec<SocketAddr> = match resolved {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                tracing::warn!(upstream = %up.name, host = %host, error = %e, "resolving an upstream host failed; keeping its known addresses");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(upstream = %up.name, host = %host, "resolving an upstream host timed out; keeping its known addresses");
                Vec::new()
            }
        };
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            next.extend(mine.into_iter().cloned());
            continue;
        }
        let known: HashMap<SocketAddr, &Arc<Endpoint>> = mine
            .iter()
            .filter_map(|e| e.addr.map(|a| (a, *e)))
            .collect();
        for a in addrs {
            match known.get(&a) {
                Some(e) => next.push((*e).clone()),
                None => next.push(Arc::new(up.endpoint(authority.clone(), Some(a)))),
            }
        }
    }
    let changed = next.len() != current.len()
        || next
            .iter()
            .zip(current.iter())
            .any(|(a, b)| !Arc::ptr_eq(a, b));
    if changed {
        for gone in current
            .iter()
            .filter(|c| !next.iter().any(|n| Arc::ptr_eq(c, n)))
        {
            gone.forget_metrics(&up.name);
        }
        let labels: Vec<&str> = next.iter().map(|e| &*e.label).collect();
        tracing::info!(upstream = %up.name, endpoints = ?labels, "upstream endpoints changed");
        up.endpoints.store(Arc::new(next));
    }
}
