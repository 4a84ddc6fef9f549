//! The admin listener: health, readiness, metrics, reload, secret refresh, active config.
//!
//! Separate address, loopback by default. With `[admin].token` (a secret reference) set,
//! every endpoint but `/healthz` and `/readyz` needs it as a bearer token, compared in
//! constant time; without a token the read endpoints are open and the ones that change
//! state are off (403).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::gateway::Gateway;
use crate::http::{ProxyBody, full};
use crate::telemetry::metrics;

/// Serve the admin API until `stop` (after the proxy has drained).
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "admin accept failed"); continue; }
            },
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req, gw).await) }
            });
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            if let Err(e) = b.serve_connection(TokioIo::new(stream), svc).await {
                debug!(peer = %peer, error = %e, "admin connection error");
            }
        });
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(v.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Route one admin request, and log it: method, path (never the query), status, and
/// whether authentication was needed and passed. Never the token.
pub async fn handle(req: Request<Incoming>, gw: Arc<Gateway>) -> Response<ProxyBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let probe = matches!(path.as_str(), "/healthz" | "/readyz");
    // With a token configured, everything but the probes needs it: the config, the secret
    // status and the metrics describe the deployment to whoever can reach the port.
    // Without one, reads stay open and anything that changes state is off.
    let needs_auth = !probe && (gw.current().admin_token.is_some() || method == Method::POST);
    let (resp, auth) = match needs_auth.then(|| authorize(&req, &gw)) {
        Some(Some(denied)) => (denied, "failed"),
        Some(None) => (dispatch(req, gw, &path).await, "ok"),
        None => (dispatch(req, gw, &path).await, "not_required"),
    };
    let status = resp.status().as_u16();
    // Probes come every few seconds; they are worth a line only when asked for.
    if probe {
        debug!(target: "warden::admin", method = %method, path, status, auth, "admin request");
    } else {
        info!(target: "warden::admin", method = %method, path, status, auth, "admin request");
    }
    resp
}

async fn dispatch(req: Request<Incoming>, gw: Arc<Gateway>, path: &str) -> Response<ProxyBody> {
    match (req.method().clone(), path) {
        (Method::GET, "/healthz") => json_response(StatusCode::OK, json!({"status": "alive"})),
        (Method::GET, "/readyz") if gw.shutdown.is_cancelled() => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "draining"}),
        ),
        (Method::GET, "/readyz") => {
            // The admin listener serves once the first snapshot is active and the proxy
            // listener is open: from then on this replica can serve, and it stays ready
            // through refused reloads. Provider trouble fails only the routes that need
            // the provider, unless `[admin] readiness = "strict"`.
            let snap = gw.current();
            let strict = snap.config.admin.readiness == crate::config::Readiness::Strict;
            let ready = !strict || snap.secrets.is_ready();
            json_response(
                if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                json!({"status": if ready { "ready" } else { "secrets_unavailable" },
                       "config_hash": snap.config.content_hash, "routes": snap.routes.len(),
                       "providers": provider_states(&snap.secrets.status())}),
            )
        }
        (Method::GET, "/upstreams") => {
            // Each endpoint's health as the balancer sees it.
            let snap = gw.current();
            let mut ups: Vec<_> = snap.upstreams.values().collect();
            ups.sort_by(|a, b| a.name.cmp(&b.name));
            let list: Vec<serde_json::Value> = ups
                .iter()
                .map(|u| {
                    let eps: Vec<serde_json::Value> = u
                        .endpoints()
                        .iter()
                        .map(|e| {
                            let ejected = e.ejected_for();
                            json!({
                                "endpoint": &*e.label,
                                "host": e.authority.as_str(),
                                "healthy": e.is_healthy(),
                                "ejected": ejected.is_some(),
                                "ejected_for_ms": ejected.map(|d| d.as_millis() as u64),
                                "active_requests": e.active(),
                            })
                        })
                        .collect();
                    json!({"name": &*u.name, "endpoints": eps})
                })
                .collect();
            json_response(StatusCode::OK, json!({ "upstreams": list }))
        }
        (Method::GET, "/secrets") => {
            // Reference, provider, version, age: never a value.
            let snap = gw.current();
            json_response(
                StatusCode::OK,
                serde_json::to_value(snap.secrets.status()).unwrap_or_default(),
            )
        }
        (Method::GET, "/metrics") => {
            let mut oldest: std::collections::BTreeMap<String, u64> =
                std::collections::BTreeMap::new();
            let refs = &metrics().secrets.reference_age;
            refs.clear();
            for st in gw.current().secrets.status() {
                if let Some(age) = st.age_seconds {
                    refs.get_or_create(&crate::telemetry::ReferenceLabels {
                        provider: st.provider.clone(),
                        reference: st.reference.clone(),
                    })
                    .set(i64::try_from(age).unwrap_or(i64::MAX));
                }
                if let Some(age) = st.age_seconds {
                    let e = oldest.entry(st.provider).or_default();
                    *e = (*e).max(age);
                }
            }
            for (provider, age) in oldest {
                let age = i64::try_from(age).unwrap_or(i64::MAX);
                metrics()
                    .secrets
                    .age
                    .get_or_create(&crate::telemetry::ProviderLabel { provider })
                    .set(age);
            }
            let mut r = Response::new(full(metrics().encode()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (Method::GET, "/config") => {
            let snap = gw.current();
            json_response(StatusCode::OK, active_config(&snap.config))
        }
        (Method::POST, "/reload") => {
            drain(req).await;
            match gw.reload("admin API").await {
                Ok(hash) => json_response(
                    StatusCode::OK,
                    json!({"status": "applied", "config_hash": hash}),
                ),
                Err(errs) => json_response(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"status": "refused", "errors": errs.0.iter().map(|e| e.to_string()).collect::<Vec<_>>()}),
                ),
            }
        }
        (Method::POST, "/secrets/refresh") => {
            drain(req).await;
            match gw.refresh_secrets().await {
                Ok(()) => json_response(StatusCode::OK, json!({"status": "refreshed"})),
                Err(errs) => json_response(
                    StatusCode::BAD_GATEWAY,
                    json!({"status": "partial", "errors": errs}),
                ),
            }
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/secrets/refresh") => {
            json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            )
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    }
}

/// One entry per secret provider: its state (`ok`, `failing` — serving last-known-good
/// values —, `stale` — past `max_stale` —, or `unresolved`), the age of its oldest value
/// and how many references it serves. Never a value.
fn provider_states(refs: &[crate::secrets::RefStatus]) -> serde_json::Value {
    let mut by: std::collections::BTreeMap<&str, Vec<&crate::secrets::RefStatus>> =
        Default::default();
    for r in refs {
        by.entry(r.provider.as_str()).or_default().push(r);
    }
    let list: Vec<serde_json::Value> = by
        .into_iter()
        .map(|(name, rs)| {
            let state = if rs.iter().any(|r| !r.resolved) {
                "unresolved"
            } else if rs.iter().any(|r| r.stale) {
                "stale"
            } else if rs.iter().any(|r| r.last_error.is_some()) {
                "failing"
            } else {
                "ok"
            };
            json!({"provider": name, "kind": rs[0].kind, "state": state,
                   "age_seconds": rs.iter().filter_map(|r| r.age_seconds).max(),
                   "references": rs.len()})
        })
        .collect();
    serde_json::Value::Array(list)
}

async fn drain(req: Request<Incoming>) {
    let _ = http_body_util::Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await;
}

/// `None` when the request carries the admin token; otherwise the response to send.
fn authorize(req: &Request<Incoming>, gw: &Gateway) -> Option<Response<ProxyBody>> {
    let snap = gw.current();
    let Some(template) = &snap.admin_token else {
        return Some(json_response(
            StatusCode::FORBIDDEN,
            json!({"error": "admin_token_not_configured", "detail": "set [admin].token to enable this endpoint"}),
        ));
    };
    let secrets = snap.secrets.snapshot();
    let expected = match template.render(&secrets) {
        Ok(v) => v,
        Err(e) => {
            warn!(error = %e, "admin token unavailable");
            return Some(json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "admin_token_unavailable"}),
            ));
        }
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    if expected.ct_eq(presented) {
        None
    } else {
        let mut r = json_response(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }
}

/// The active configuration as JSON: what each file says (secrets appear only as the
/// references written there; a literal admin token or a literal credential in an `inject`
/// table is masked) and the content hash.
fn active_config(cfg: &crate::config::Config) -> serde_json::Value {
    let files: Vec<serde_json::Value> = cfg
        .sources
        .iter()
        .map(|s| {
            let mut table: toml::Table = toml::from_str(&s.text).unwrap_or_default();
            if let Some(toml::Value::Table(admin)) = table.get_mut("admin")
                && let Some(v) = admin.get_mut("token")
            {
                redact_literal(v);
            }
            for (section, value) in table.iter_mut() {
                let items: Vec<&mut toml::Value> = match (section.as_str(), value) {
                    ("upstreams", toml::Value::Table(ups)) => {
                        ups.iter_mut().map(|(_, u)| u).collect()
                    }
                    ("routes", toml::Value::Array(routes)) => routes.iter_mut().collect(),
                    _ => continue,
                };
                for item in items {
                    if let Some(toml::Value::Table(inject)) = item.get_mut("inject") {
                        for (name, v) in inject.iter_mut() {
                            if cfg.gateway.is_credential_header(name) {
                                redact_literal(v);
                            }
                        }
                    }
                }
            }
            json!({"path": s.path.display().to_string(), "config": table})
        })
        .collect();
    json!({"config_hash": cfg.content_hash, "files": files})
}

/// Mask a value unless it is made of secret references only: literal text there may be
/// a credential.
fn redact_literal(v: &mut toml::Value) {
    if let toml::Value::String(s) = v
        && crate::secrets::Template::parse(s)
            .map(|t| t.is_literal())
            .unwrap_or(true)
    {
        *s = "[redacted]".to_string();
    }
}
