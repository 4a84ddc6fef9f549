//! The reverse proxy: accept loop, per-request pipeline, forwarding.
//!
//! Pipeline for one request: route → policy chain → secret injection → upstream → stream
//! the response back. One config snapshot and one secret snapshot are taken when the
//! request arrives and used until it ends, so a reload or rotation never changes a request
//! half-way through.

mod access;
mod body;
mod error;
mod h1;
mod headers;
mod preface;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::headers::RequestVars;
use crate::config::{DisallowedUpgrade, MethodOverride};
use crate::gateway::Gateway;
use crate::http::normalize::{normalize_host, normalize_path};
use crate::http::{BoxError, ClientInfo, ProxyBody, empty, full};
use crate::policy::{Decision, PolicyRequest, Report};
use crate::routing::RouteMatch;
use crate::snapshot::{RouteRuntime, Snapshot};
use crate::telemetry::{
    GatewayResponseLabels, MethodClass, RequestLabels, RouteLabel, Source, UpstreamLabel, metrics,
};
use crate::upstream::UpstreamBody;
use body::ClientBody;
pub use error::ProxyError;
use opentelemetry::KeyValue;

/// Serve the proxy listener until `shutdown` fires, then drain in-flight requests for up
/// to the configured grace period.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let worker = crate::worker::index();
    let accepted = metrics()
        .proxy
        .worker_connections
        .get_or_create(&crate::telemetry::WorkerLabel {
            worker: worker.to_string(),
        })
        .clone();
    if worker > 0 {
        // This worker's buffered access-log lines go out at least this often.
        tokio::spawn(async {
            let mut every = tokio::time::interval(crate::telemetry::ACCESS_FLUSH_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                crate::telemetry::flush_access_log();
            }
        });
    }
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        let gw = gw.clone();
        let drain = shutdown.clone();
        connections.spawn(async move {
            metrics().proxy.active_connections.inc();
            serve_connection(stream, peer, gw, drain).await;
            metrics().proxy.active_connections.dec();
        });
    }
    // Stop accepting now: new connections are refused instead of queueing in the
    // backlog of a socket nobody reads until the drain ends.
    drop(listener);
    connections.close();
    let grace = gw.current().config.gateway.shutdown_grace;
    info!(grace = ?grace, "proxy listener closed; draining in-flight requests");
    match tokio::time::timeout(grace, connections.wait()).await {
        Ok(()) => info!("all connections drained"),
        Err(_) => warn!("shutdown grace period over; closing remaining connections"),
    }
}

/// Serve one connection. Its settings and TLS config come from the snapshot current at
/// accept time, but the connection does not keep that snapshot: each request reads the
/// current one, so an idle keep-alive connection never holds a replaced generation (its
/// plugin pools, upstream pools) alive.
///
/// The protocol is known before hyper starts (the first bytes on a plaintext port, ALPN
/// with TLS), so each connection holds only the server for its own protocol.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    drain: CancellationToken,
) {
    let (limits, tls) = {
        let snap = gw.current();
        (ConnLimits::of(&snap.config.gateway), snap.tls.clone())
    };
    // The task of every connection is as large as its largest path, for its whole life:
    // TLS (the handshake, the TLS stream) and HTTP/2 are boxed so that a plaintext
    // HTTP/1.1 connection carries neither.
    let result = match tls {
        None => serve_plaintext(stream, peer, gw, &limits, &drain).await,
        Some(tls) => Box::pin(serve_tls(stream, peer, gw, tls, &limits, &drain)).await,
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, "connection ended with error");
    }
}

async fn serve_plaintext(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    limits: &ConnLimits,
    drain: &CancellationToken,
) -> hyper::Result<()> {
    // The connection's protocol is settled before anything is made for it, so a refused
    // or abandoned connection costs no client record and no service.
    let start = Box::pin(preface::classify(&stream, limits.header_read_timeout)).await;
    let client = move || {
        Arc::new(ClientInfo {
            addr: peer,
            ip: ClientInfo::ip_value(peer),
            tls: false,
            sni: None,
            uri_sans: vec![],
            dns_sans: vec![],
        })
    };
    match start {
        preface::Start::Http1 => h1::serve(stream, gw, client(), limits, drain).await,
        preface::Start::Http2 => {
            let conn = limits
                .http2()
                .serve_connection(TokioIo::new(stream), service(gw, client()));
            Box::pin(until_drained(conn, drain, |c| c.graceful_shutdown())).await
        }
        preface::Start::Refused => {
            preface::refuse(stream).await;
            Ok(())
        }
        preface::Start::Gone => Ok(()),
    }
}

async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
    limits: &ConnLimits,
    drain: &CancellationToken,
) -> hyper::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake = tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await;
    let tls_stream = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics().proxy.tls_handshake_failures.inc();
            debug!(peer = %peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            metrics().proxy.tls_handshake_failures.inc();
            debug!(peer = %peer, "TLS handshake timed out");
            return Ok(());
        }
    };
    let (_, conn) = tls_stream.get_ref();
    let sni = conn.server_name().map(str::to_string);
    let ids = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(crate::tls::peer_identities)
        .unwrap_or_default();
    // HTTP/2 over TLS is chosen by ALPN only (RFC 9113 §3.3): without `h2`, the
    // connection speaks HTTP/1.
    let h2 = conn.alpn_protocol() == Some(b"h2");
    let client = Arc::new(ClientInfo {
        addr: peer,
        ip: ClientInfo::ip_value(peer),
        tls: true,
        sni,
        uri_sans: ids.uris,
        dns_sans: ids.dns,
    });
    if h2 {
        // hyper would close on a wrong preface without the GOAWAY that RFC 9113 asks for;
        // check it first and replay it.
        let Ok(stream) = preface::read_h2_preface(tls_stream, limits.header_read_timeout).await
        else {
            return Ok(());
        };
        let conn = limits
            .http2()
            .serve_connection(TokioIo::new(stream), service(gw, client));
        until_drained(conn, drain, |c| c.graceful_shutdown()).await
    } else {
        h1::serve(tls_stream, gw, client, limits, drain).await
    }
}

/// Drive a connection to its end; once `drain` fires, ask it to finish the request in
/// flight and close (an idle one closes at once).
async fn until_drained<C>(
    conn: C,
    drain: &CancellationToken,
    graceful_shutdown: fn(std::pin::Pin<&mut C>),
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        // The connection first: it is what wakes this task almost every time.
        biased;
        r = conn.as_mut() => return r,
        _ = drain.cancelled() => graceful_shutdown(conn.as_mut()),
    }
    conn.await
}

/// The `[gateway]` limits a connection is served with.
struct ConnLimits {
    header_read_timeout: Duration,
    max_header_bytes: u64,
    max_headers: usize,
    http2: crate::config::Http2Limits,
}

impl ConnLimits {
    fn of(g: &crate::config::GatewayConfig) -> Self {
        ConnLimits {
            header_read_timeout: g.header_read_timeout,
            max_header_bytes: g.max_header_bytes,
            max_headers: g.max_headers,
            http2: g.http2.clone(),
        }
    }

    fn http1(&self) -> hyper::server::conn::http1::Builder {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper refuses buffers under 8 KiB.
            .max_buf_size((self.max_header_bytes as usize).max(8192))
            .max_headers(self.max_headers)
            .keep_alive(true);
        b
    }

    fn http2(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let h2 = &self.http2;
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_header_list_size(self.max_header_bytes.min(u32::MAX as u64) as u32)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(h2.max_local_error_reset_streams)
            .keep_alive_interval(h2.keep_alive_interval)
            .keep_alive_timeout(Duration::from_secs(20));
        b
    }
}

fn service(
    gw: Arc<Gateway>,
    client: Arc<ClientInfo>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<body::Observed>,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<Response<body::Observed>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let snap = gw.current();
        let client = client.clone();
        // Boxed per request: hyper keeps the slot that holds a request's future for the
        // connection's whole life, so an unboxed future (kilobytes) would stay resident in
        // every idle keep-alive connection. The box is freed when the request ends.
        let request = Box::pin(handle(req.map(ClientBody::Hyper), snap, client));
        async move { Ok(request.await) }
    })
}

/// Handle one request end to end. Never fails: every problem becomes a response.
pub(crate) async fn handle(
    req: Request<ClientBody>,
    snap: Arc<Snapshot>,
    client: Arc<ClientInfo>,
) -> Response<body::Observed> {
    let request_id = headers::request_id(req.headers());
    let trace = snap
        .tracing
        .as_ref()
        .map(|t| t.begin(req.headers(), req.method()));
    let trace_id = match &trace {
        Some(t) => Some(t.trace_id()),
        None => crate::trace::incoming_trace_id(req.headers()),
    };
    let mut ex = body::Exchange {
        request_id: request_id.clone(),
        client: client.clone(),
        trace,
        trace_id,
        access: snap.access_log.clone(),
        exchange_duration: None,
        response_time: None,
        policy: None,
        reason: None,
        forwarded_for: None,
        body_in: None,
        route_idx: None,
        route: None,
        upstream: None,
        endpoint: None,
        attempts: 0,
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        started: Instant::now(),
        upstream_time: None,
        verdict: "none",
        flag: None,
        version: req.version(),
        status: 0,
    };
    let mut resp = match pipeline(req, &snap, &client, &mut ex).await {
        Ok(r) => {
            if ex.verdict == "deny" {
                ex.flag = Some("policy_denied");
                count_gateway_response(&ex, "policy_denied", "policy");
            }
            r
        }
        Err(e) => {
            ex.flag = Some(e.code());
            ex.reason = Some(e.to_string());
            count_gateway_response(&ex, e.code(), e.fault());
            if e.is_upstream_failure()
                && let Some(u) = &ex.upstream
            {
                let label = UpstreamLabel {
                    upstream: u.to_string(),
                };
                match e {
                    ProxyError::UpstreamTimeout => metrics()
                        .proxy
                        .upstream_timeouts
                        .get_or_create(&label)
                        .inc(),
                    _ => metrics()
                        .proxy
                        .upstream_connect_errors
                        .get_or_create(&label)
                        .inc(),
                };
            }
            e.log(&ex.request_id, ex.route.as_deref());
            e.into_response(&ex.request_id, ex.route.as_deref())
                .map(body::Outgoing::from)
        }
    };
    // The route the request matched, if any: response rules, metrics and stream limits.
    let route = ex.route_idx.map(|i| &snap.routes[i]);
    if let Some(route) = route
        && !route.response_headers.is_empty()
    {
        let vars = RequestVars {
            client: &client,
            request_id: &request_id,
        };
        route.response_headers.apply(resp.headers_mut(), &vars);
    }
    resp.headers_mut().insert(headers::X_REQUEST_ID, request_id);
    // A proxy speaks its own version to its client, whatever the upstream spoke (an
    // HTTP/1.0 upstream must not turn a keep-alive HTTP/1.1 client into HTTP/1.0).
    if ex.version != Version::HTTP_2 {
        *resp.version_mut() = Version::HTTP_11;
    }
    let status = resp.status();
    let class = MethodClass::of(&ex.method);
    // Read once when the upstream's head came, unless a response policy ran after it.
    let head_out = ex.response_time.unwrap_or_else(|| ex.started.elapsed());
    ex.response_time = Some(head_out);
    let elapsed = head_out.as_secs_f64();
    let source = if ex.flag.is_some() {
        Source::Gateway
    } else {
        Source::Upstream
    };
    let route_metrics = route.map(|r| &r.metrics);
    ex.exchange_duration = route_metrics.map(|m| m.exchange.clone());
    match route_metrics {
        Some(m) if status == StatusCode::OK && source == Source::Upstream => {
            m.ok[class.clone() as usize].inc()
        }
        _ => metrics()
            .proxy
            .requests
            .get_or_create(&RequestLabels {
                route: ex.route.as_deref().unwrap_or("none").to_string(),
                method: class,
                status: status.as_u16(),
                source,
            })
            .inc(),
    };
    match route_metrics {
        Some(m) => m.duration.observe(elapsed),
        None => metrics()
            .proxy
            .request_duration
            .get_or_create(&RouteLabel {
                route: "none".to_string(),
            })
            .observe(elapsed),
    }
    ex.status = status.as_u16();
    let limits = match route {
        Some(r) => body::StreamLimits {
            idle: r.idle_timeout,
            end: r
                .max_duration
                .map(|d| tokio::time::Instant::from_std(ex.started) + d),
        },
        None => body::StreamLimits::default(),
    };
    resp.map(|b| body::observed(b, ex, limits))
}

async fn pipeline(
    mut req: Request<ClientBody>,
    snap: &Snapshot,
    client: &ClientInfo,
    ex: &mut body::Exchange,
) -> Result<Response<body::Outgoing>, ProxyError> {
    let gw = &snap.config.gateway;
    check_method(req.method(), gw.allow_trace)?;
    let host = normalize_request(&mut req, gw)?;
    ex.path = req.uri().path().to_string();

    let match_started = ex.trace.as_ref().map(|_| Instant::now());
    let matched = snap
        .router
        .route(host.as_deref(), req.uri().path(), req.method());
    if let (Some(t), Some(t0)) = (&ex.trace, match_started) {
        let name = match &matched {
            RouteMatch::Found(i) => snap.routes[*i].name.to_string(),
            _ => "none".to_string(),
        };
        t.annotate(vec![
            KeyValue::new("url.path", ex.path.clone()),
            KeyValue::new("http.route", name.clone()),
        ]);
        t.record(
            "warden.route",
            t0,
            Instant::now(),
            vec![KeyValue::new("warden.route", name)],
        );
    }
    let route_idx = match matched {
        RouteMatch::Found(i) => i,
        RouteMatch::NotFound => return Err(ProxyError::NoRoute),
        RouteMatch::MethodNotAllowed(m) => return Err(ProxyError::MethodNotAllowed(m)),
    };
    let route: &RouteRuntime = &snap.routes[route_idx];
    ex.route_idx = Some(route_idx);
    ex.route = Some(route.name.clone());

    // A reflected request carries its injected credentials back to the client, whatever
    // `allow_trace` says.
    if is_trace(req.method()) && !route.inject.is_empty() {
        return Err(ProxyError::MethodRefused(
            "TRACE is never forwarded on a route that injects secrets",
        ));
    }

    // Refuse a declared body over the limit before anything is sent upstream.
    if let Some(len) = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > route.max_body
    {
        return Err(ProxyError::BodyTooLarge);
    }

    let upgrade = choose_upgrade(&mut req, route)?;
    let downstream_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();

    // The body phase: the body is read whole (within the route's limits), decoded and
    // checked before any policy sees it, and exactly that is what goes upstream.
    let inspects = route.chain.body().is_some() || route.chain.response_max().is_some();
    if inspects && upgrade.is_some() {
        // A tunnel would carry bytes, both ways, that no policy ever sees.
        return Err(ProxyError::BadRequest(
            "protocol upgrades are refused on a route whose policies inspect bodies",
        ));
    }
    let mut in_body = InBody::Stream(incoming);
    if let Some(rules) = route.chain.body()
        && let InBody::Stream(incoming) = &in_body
        && !http_body::Body::is_end_stream(incoming)
    {
        let head = rules
            .check_head(&parts.headers)
            .map_err(ProxyError::BodyRefused)?;
        let InBody::Stream(incoming) =
            std::mem::replace(&mut in_body, InBody::Buffered(Bytes::new()))
        else {
            unreachable!("checked above")
        };
        let stats = Arc::new(body::BodyIn::default());
        ex.body_in = Some(stats.clone());
        let mut counted = std::pin::pin!(body::counted_in(incoming, Some(stats), ex.started));
        let limit = rules.max().min(route.max_body);
        let mut raw = bytes::BytesMut::new();
        // However the client splits it, the body is judged whole; and however slowly it
        // comes, it comes within the route's timeout (a trickling client must not hold a
        // buffer forever).
        let read = async {
            while let Some(frame) = counted.frame().await {
                let frame = frame.map_err(|e| ProxyError::ClientBody(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if (raw.len() + data.len()) as u64 > limit {
                        return Err(if rules.max() <= route.max_body {
                            ProxyError::BodyRefused(crate::inspect::Refusal::TooLarge)
                        } else {
                            ProxyError::BodyTooLarge
                        });
                    }
                    raw.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        // Boxed, like the other paths only some routes take, so that the future of every
        // request does not carry their state.
        match tokio::time::timeout(route.timeout, Box::pin(read)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ProxyError::ClientBody(
                    "the request body did not arrive within the route's timeout".into(),
                ));
            }
        }
        let raw = raw.freeze();
        in_body = InBody::Buffered(
            rules
                .check_body(&head, raw)
                .map_err(ProxyError::BodyRefused)?,
        );
    }

    // The response phase needs the request as the policies saw it, after the upstream
    // has answered; only routes with one pay for the copy.
    let seen = route.chain.response_max().map(|_| SeenRequest {
        method: parts.method.clone(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers.clone(),
        body: match &in_body {
            InBody::Buffered(b) => Some(b.clone()),
            InBody::Stream(_) => None,
        },
    });
    if seen.is_some() {
        // Whole identity responses are what a response policy can read: no codings it
        // would have to undo, and no ranges it would see a fragment of.
        parts.headers.remove(http::header::ACCEPT_ENCODING);
        parts.headers.remove(http::header::RANGE);
        parts.headers.remove(http::header::IF_RANGE);
    }

    // One secret snapshot for the whole request: the policy chain's comparisons and the
    // injected headers see the same values.
    let secrets = snap.secrets.snapshot();

    let mut response_headers: Vec<(http::HeaderName, HeaderValue)> = Vec::new();
    if !route.chain.is_empty() {
        let buffered = match &in_body {
            InBody::Buffered(b) => Some(b),
            InBody::Stream(_) => None,
        };
        let preq = PolicyRequest {
            route: &route.name,
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
            client,
            body: buffered,
        };
        let mut report = Report {
            decided_by: None,
            steps: ex.trace.as_ref().map(|_| Vec::new()),
        };
        // Boxed: the chain's state (kilobytes) would otherwise be part of every request's
        // future, copied whole when the request starts, on routes without policies too.
        let decision = Box::pin(route.chain.evaluate_with(&preq, &secrets, &mut report)).await;
        ex.policy = report.decided_by;
        if let (Some(t), Some(steps)) = (&ex.trace, report.steps) {
            for st in steps {
                t.record(
                    "warden.policy",
                    st.started,
                    st.started + st.took,
                    vec![
                        KeyValue::new("warden.plugin", st.plugin),
                        KeyValue::new("warden.verdict", st.verdict),
                        KeyValue::new("warden.mode", st.mode),
                    ],
                );
            }
        }
        match decision {
            Decision::Allow(changes) => {
                ex.verdict = "allow";
                let h = &mut parts.headers;
                for name in &changes.remove_headers {
                    h.remove(name);
                }
                for (name, value) in changes.set_headers {
                    h.insert(name, value);
                }
                response_headers = changes.response_headers;
                if let Some(b) = changes.body {
                    in_body = InBody::Buffered(b);
                }
            }
            Decision::Deny {
                status,
                body,
                headers,
            } => {
                ex.verdict = "deny";
                let mut resp = Response::new(full(body));
                *resp.status_mut() = status;
                for (n, v) in headers {
                    resp.headers_mut().append(n, v);
                }
                return Ok(resp.map(body::Outgoing::from));
            }
        }
    }

    let upstream = &route.upstream;
    let original_host = headers::authority_of(&parts);
    // A checked body goes upstream with the content type it was checked as, even if the
    // client's `Connection` header names it (which would strip it below).
    let checked_type = match &in_body {
        InBody::Buffered(_) => parts.headers.get(http::header::CONTENT_TYPE).cloned(),
        InBody::Stream(_) => None,
    };
    headers::strip_hop_by_hop(&mut parts.headers, upgrade.clone());
    if let Some(ct) = checked_type {
        parts.headers.insert(http::header::CONTENT_TYPE, ct);
    }
    let trusted_peer = headers::set_forwarded(
        &mut parts.headers,
        client,
        original_host.as_ref(),
        &snap.trusted_proxies,
    );
    if trusted_peer {
        ex.forwarded_for = parts.headers.get(headers::X_FORWARDED_FOR).cloned();
    }
    parts
        .headers
        .insert(headers::X_REQUEST_ID, ex.request_id.clone());
    if !route.request_headers.is_empty() {
        let vars = RequestVars {
            client,
            request_id: &ex.request_id,
        };
        route.request_headers.apply(&mut parts.headers, &vars);
    }

    // Injected headers replace whatever the client sent under the same name: a client can
    // neither spoof nor read them. Rendering is an in-memory lookup; the request path never
    // waits on a provider.
    let inject_started = ex.trace.as_ref().map(|_| Instant::now());
    if !route.inject.is_empty() {
        route
            .inject
            .apply(&secrets, &mut parts.headers)
            .map_err(|e| ProxyError::SecretUnavailable(e.to_string()))?;
    }
    if let (Some(t), Some(t0)) = (&ex.trace, inject_started)
        && !route.inject.is_empty()
    {
        // Header names only: the span never sees a value.
        let names: Vec<&str> = route.inject.names().map(|n| n.as_str()).collect();
        t.record(
            "warden.secrets",
            t0,
            Instant::now(),
            vec![KeyValue::new("warden.secret.headers", names.join(","))],
        );
    }

    parts.version = if upstream.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let method = parts.method.clone();
    let downstream_uri = std::mem::take(&mut parts.uri);

    let policy = &route.retry;
    let (mut stream, replay): (Option<ProxyBody>, Option<Bytes>) = match in_body {
        // A checked (or replaced) body goes upstream as it is held: decoded, with its own
        // length. It can be sent again on a retry.
        InBody::Buffered(b) => {
            parts.headers.remove(http::header::CONTENT_ENCODING);
            parts
                .headers
                .insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
            (None, (policy.attempts > 0).then_some(b.clone()).or(Some(b)))
        }
        InBody::Stream(body) => {
            // Errors reading the client's body are marked as the client's, so that the
            // upstream client failing to send it is a 400, not a 502 blamed on the
            // upstream. Whether the request has a body at all, asked of the body itself:
            // the framing headers are gone by now (hop-by-hop).
            let no_body = http_body::Body::is_end_stream(&body);
            // Without a body there is nothing to count or limit: an empty body (no box).
            let mut stream: Option<ProxyBody> = (!no_body).then(|| {
                let stats = Arc::new(body::BodyIn::default());
                ex.body_in = Some(stats.clone());
                let body = body::counted_in(body, Some(stats), ex.started)
                    .map_err(|e| BoxError::from(error::ClientBodyError(e)));
                let limited = http_body_util::Limited::new(body, route.max_body as usize);
                limited.map_err(BoxError::from).boxed()
            });

            // A request can be sent again only if its body can: none, or small enough to
            // buffer. A larger body streams upstream once, and is never replayed.
            let declared = parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if !no_body && declared.is_none() && !upstream.http2 {
                // Told nothing, hyper's client sends a GET, HEAD or CONNECT of unknown
                // length without its body; a body is never dropped on the way.
                parts.headers.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let replay: Option<Bytes> = if policy.attempts == 0 || downstream_upgrade.is_some() {
                None
            } else if no_body {
                Some(Bytes::new())
            } else if declared.is_some_and(|n| n <= policy.buffer) {
                let collected = stream.take().expect("body present").collect().await;
                match collected {
                    Ok(c) => Some(c.to_bytes()),
                    Err(e) => return Err(ProxyError::from_body_error(e)),
                }
            } else {
                None
            };
            (stream, replay)
        }
    };
    upstream.budget.deposit();

    // One endpoint set for every attempt of this request, whatever re-resolution does
    // meanwhile: `tried` indexes into it.
    let endpoints = upstream.endpoints();
    let mut tried: Vec<usize> = Vec::new();
    let sent = Instant::now();
    let mut resp = loop {
        let idx = upstream.balancer.pick(&endpoints, &tried);
        let ep = &endpoints[idx];
        tried.push(idx);
        let attempt = tried.len() as u32 - 1;
        let mut req = Request::new(match &replay {
            Some(b) if b.is_empty() => empty(),
            Some(b) => full(b.clone()),
            None => stream.take().unwrap_or_else(empty),
        });
        *req.method_mut() = method.clone();
        *req.version_mut() = parts.version;
        *req.uri_mut() = upstream
            .target_uri(ep, &downstream_uri)
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        // Each attempt takes the headers; one that may be followed by another gets them
        // back from the upstream client.
        *req.headers_mut() = std::mem::take(&mut parts.headers);
        let again = replay.is_some() && attempt < policy.attempts;
        match upstream.host_header(ep, original_host.as_ref()) {
            // HTTP/2 carries the authority in :authority; a Host header next to it is
            // redundant.
            Some(h) if !upstream.http2 => {
                req.headers_mut().insert(HOST, h);
            }
            _ => {
                req.headers_mut().remove(HOST);
            }
        }
        ex.upstream = Some(upstream.name.clone());
        ex.endpoint = Some(ep.label.clone());
        ex.attempts = attempt + 1;
        let span = ex
            .trace
            .as_ref()
            .map(|t| t.upstream_attempt(req.headers_mut(), &upstream.name, &ep.label, attempt));

        let in_flight = ep.begin();
        // One clock reading per attempt (the first is `sent`): the pool's expiry and the
        // deadline are reckoned from it. The head must come within the route's timeout,
        // and before the exchange's max_duration is up.
        let at = if attempt == 0 { sent } else { Instant::now() };
        let mut deadline = at + route.timeout;
        if let Some(d) = route.max_duration {
            deadline = deadline.min(ex.started + d);
        }
        let mut back = None;
        let result = tokio::time::timeout_at(
            deadline.into(),
            ep.send(req, at, again.then_some(&mut back)),
        )
        .await;
        drop(in_flight);
        // The next attempt sets Host and the trace context again.
        let headers_kept = match back {
            Some(h) => {
                parts.headers = h;
                true
            }
            None => false,
        };
        if let Some(span) = span {
            span.end(match &result {
                Ok(Ok(r)) => Ok(r.status().as_u16()),
                Ok(Err(e)) if e.is_connect() => Err("connect_failure"),
                Ok(Err(_)) => Err("upstream_error"),
                Err(_) => Err("timeout"),
            });
        }
        let can_retry = again && headers_kept;
        let retry = match result {
            Err(_) => {
                ep.failed(&upstream.outlier);
                return Err(ProxyError::UpstreamTimeout);
            }
            Ok(Ok(r)) => {
                if r.status().is_server_error() {
                    ep.failed(&upstream.outlier);
                } else {
                    ep.succeeded();
                }
                let retryable = policy.statuses.contains(&r.status())
                    && crate::upstream::RetryPolicy::idempotent(&method);
                if !(can_retry && retryable && upstream.budget.withdraw()) {
                    break r;
                }
                "status"
            }
            Ok(Err(e)) => {
                // Nothing was sent when the connection could not be made, so any method
                // may go to another endpoint; a reset after sending only with `reset` and
                // an idempotent method. A malformed response is never sent again.
                let connect = e.is_connect();
                if connect {
                    ep.failed(&upstream.outlier);
                }
                let retryable = connect
                    || (policy.on_reset
                        && e.is_reset()
                        && crate::upstream::RetryPolicy::idempotent(&method));
                if !(can_retry && retryable && upstream.budget.withdraw()) {
                    return Err(ProxyError::from_client_error(e));
                }
                if connect { "connect" } else { "reset" }
            }
        };
        debug!(upstream = %upstream.name, endpoint = %ep.label, attempt, why = retry, "retrying upstream request");
        upstream.retries.inc();
        if !policy.backoff.is_zero() {
            tokio::time::sleep(policy.backoff).await;
        }
    };
    // One clock reading for the response head: the upstream's time and (unless a response
    // policy reads the body first) the time to the head the client gets.
    let head_at = Instant::now();
    let took = head_at.duration_since(sent);
    ex.upstream_time = Some(took);
    ex.response_time = Some(head_at.duration_since(ex.started));
    upstream.duration.observe(took.as_secs_f64());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // A tunnel opens only to the protocol this route allows and the client asked for;
        // an upstream that switches to anything else (or unasked) gets no tunnel.
        let switched_to = resp.headers().get(UPGRADE).and_then(|v| v.to_str().ok());
        let agreed = match (&upgrade, switched_to) {
            (Some(offered), Some(to)) => offered
                .to_str()
                .map(|o| {
                    o.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case(to.trim()))
                })
                .unwrap_or(false),
            _ => false,
        };
        if !agreed {
            return Err(ProxyError::UpstreamBadUpgrade);
        }
    }

    if let Some(down) = downstream_upgrade {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(down, up) {
                    Ok((d, u)) => {
                        let mut d = TokioIo::new(d);
                        let mut u = TokioIo::new(u);
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
            let (mut parts, _) = resp.into_parts();
            let switched_to = parts.headers.get(UPGRADE).cloned();
            headers::strip_hop_by_hop(&mut parts.headers, switched_to);
            return Ok(Response::from_parts(parts, empty().into()));
        }
        // The upstream refused the upgrade. Anything the client sent after its request
        // head belongs to the protocol it asked for, so it must never be read as another
        // HTTP request: close the connection after this response.
        let (mut parts, b) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, None);
        parts
            .headers
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(Response::from_parts(parts, body::Outgoing::upstream(b)));
    }

    let (mut parts, b) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, None);
    let body = match &seen {
        Some(seen) if response_inspectable(&method, &parts) => {
            let preq = PolicyRequest {
                route: &route.name,
                method: &seen.method,
                path: &seen.path,
                query: seen.query.as_deref(),
                headers: &seen.headers,
                client,
                body: seen.body.as_ref(),
            };
            // The head goes out after the policies have read the body.
            ex.response_time = None;
            // The route's timeout bounds reading the response for its policies too.
            match tokio::time::timeout(
                route.timeout,
                Box::pin(response_phase(&route.chain, &preq, &secrets, &mut parts, b)),
            )
            .await
            {
                Ok(r) => r?.into(),
                Err(_) => return Err(ProxyError::UpstreamTimeout),
            }
        }
        _ => body::Outgoing::upstream(b),
    };
    for (n, v) in response_headers {
        parts.headers.append(n, v);
    }
    Ok(Response::from_parts(parts, body))
}

/// The request body on its way through the pipeline.
enum InBody {
    /// Streamed to the upstream as it arrives.
    Stream(ClientBody),
    /// Read whole and checked by the body phase (or replaced by a policy).
    Buffered(Bytes),
}

/// The request as the policies saw it, kept for the response phase.
struct SeenRequest {
    method: Method,
    path: String,
    query: Option<String>,
    headers: http::HeaderMap,
    body: Option<Bytes>,
}

/// Whether a response can go through the response phase: a JSON body (never an event
/// stream) of a request that can have one.
fn response_inspectable(method: &Method, parts: &http::response::Parts) -> bool {
    if *method == Method::HEAD
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    let Some(ct) = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json")))
}

/// Read a JSON response up to the largest `response_body.max` on the route and let the
/// policies inspect (and replace) it. A larger response passes through untouched, its
/// bytes already read sent first; so does one whose declared length is over the limit,
/// without being read at all.
async fn response_phase(
    chain: &crate::policy::Chain,
    preq: &PolicyRequest<'_>,
    secrets: &crate::secrets::SecretSnapshot,
    parts: &mut http::response::Parts,
    body: UpstreamBody,
) -> Result<ProxyBody, ProxyError> {
    let max = chain.response_max().unwrap_or(0);
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Ok(body.boxed());
    }
    let mut body = body;
    let mut read: Vec<Bytes> = Vec::new();
    let mut total = 0u64;
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(ProxyError::Upstream(e.to_string())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    total += data.len() as u64;
                    read.push(data);
                    if total > max {
                        // Too large to inspect: what was read goes first, then the rest.
                        let head =
                            futures_util::stream::iter(read.into_iter().map(
                                |d| -> Result<_, BoxError> { Ok(hyper::body::Frame::data(d)) },
                            ));
                        let rest = http_body_util::BodyStream::new(body);
                        return Ok(http_body_util::StreamBody::new(
                            futures_util::StreamExt::chain(head, rest),
                        )
                        .boxed());
                    }
                }
                // Trailers end a JSON body that is otherwise whole; they are not kept.
                Err(_) => break,
            },
        }
    }
    let raw = match read.len() {
        0 => Bytes::new(),
        1 => read.pop().expect("one chunk"),
        _ => {
            let mut all = bytes::BytesMut::with_capacity(total as usize);
            for d in read {
                all.extend_from_slice(&d);
            }
            all.freeze()
        }
    };
    // A response policy reads identity bytes; one the gateway cannot decode within the
    // limit fails closed rather than slipping past the policy encoded.
    let limits = crate::inspect::Limits {
        max,
        decoded_max: max,
        max_ratio: None,
    };
    let codings = crate::inspect::content_codings(&parts.headers)
        .map_err(|r| ProxyError::Upstream(format!("response for the response phase: {r}")))?;
    let decoded = !codings.is_empty();
    let plain = crate::inspect::decode_codings(&codings, raw, &limits)
        .map_err(|r| ProxyError::Upstream(format!("response for the response phase: {r}")))?;
    let out = match chain
        .evaluate_response(preq, secrets, parts.status, &parts.headers, &plain)
        .await
    {
        Ok(Some(replaced)) => {
            // Validators and digests of the upstream's body do not describe this one.
            for h in [
                "etag",
                "last-modified",
                "content-md5",
                "digest",
                "content-digest",
                "repr-digest",
            ] {
                parts.headers.remove(h);
            }
            replaced
        }
        Ok(None) => plain,
        Err(Decision::Deny {
            status,
            body,
            headers,
        }) => {
            parts.status = status;
            parts.headers.clear();
            for (n, v) in headers {
                parts.headers.append(n, v);
            }
            body
        }
        Err(Decision::Allow(_)) => unreachable!("a failed response phase denies"),
    };
    if decoded {
        parts.headers.remove(http::header::CONTENT_ENCODING);
    }
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(full(out))
}

fn count_gateway_response(ex: &body::Exchange, reason: &str, fault: &str) {
    metrics()
        .proxy
        .gateway_responses
        .get_or_create(&GatewayResponseLabels {
            route: ex.route.as_deref().unwrap_or("none").to_string(),
            reason: reason.to_string(),
            fault: fault.to_string(),
        })
        .inc();
}

fn is_trace(m: &Method) -> bool {
    m.as_str() == "TRACE" || m.as_str() == "TRACK"
}

/// Methods refused before routing: `CONNECT` (Warden is no forward proxy), `TRACE` and
/// `TRACK` unless `allow_trace`, and any method with lower-case letters — `get` is not
/// `GET` to the router or to a policy, but some upstreams treat it as one.
fn check_method(m: &Method, allow_trace: bool) -> Result<(), ProxyError> {
    if m.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(ProxyError::BadRequest("method must be upper case"));
    }
    if *m == Method::CONNECT {
        return Err(ProxyError::MethodRefused("CONNECT is not supported"));
    }
    if is_trace(m) && !allow_trace {
        return Err(ProxyError::MethodRefused(
            "TRACE is disabled (it reflects the request, credentials included)",
        ));
    }
    Ok(())
}

/// Bring the request into its one canonical form (see [`crate::http::normalize`]): the
/// checked authority in `Host`, the normalized path in the URI (query untouched), and no
/// method-override headers unless the operator keeps them. Returns the routing host.
fn normalize_request(
    req: &mut Request<ClientBody>,
    gw: &crate::config::GatewayConfig,
) -> Result<Option<String>, ProxyError> {
    let authority = headers::checked_authority(req).map_err(ProxyError::BadRequest)?;
    let host = match &authority {
        Some(a) => Some(
            a.to_str()
                .ok()
                .and_then(|a| normalize_host(a).ok())
                .ok_or(ProxyError::BadRequest("invalid Host"))?,
        ),
        None => None,
    };
    if let Some(a) = authority {
        // Policies and a `preserve`d upstream Host see the authority that was routed.
        req.headers_mut().insert(HOST, a);
    }

    let path = normalize_path(req.uri().path(), &gw.path_rules())
        .map_err(|e| ProxyError::BadRequest(e.as_str()))?;
    if let Cow::Owned(path) = path {
        let mut parts = req.uri().clone().into_parts();
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| ProxyError::BadRequest("invalid request target"))?,
        );
        *req.uri_mut() = http::Uri::from_parts(parts)
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    }

    // A scan of the names first: three lookups of names a request rarely has would cost
    // three hashes every time.
    if gw.method_override == MethodOverride::Strip
        && req
            .headers()
            .keys()
            .any(|k| headers::METHOD_OVERRIDE.contains(k))
    {
        for name in headers::METHOD_OVERRIDE {
            req.headers_mut().remove(name);
        }
    }
    Ok(host)
}

/// Decide what happens to an upgrade request on this route: the `Upgrade` value to
/// forward (only the protocols the route allows), `None` for a plain request (the
/// `Upgrade` header is then removed, so policies see what the upstream will), or 400 when
/// the route refuses other protocols.
fn choose_upgrade(
    req: &mut Request<ClientBody>,
    route: &RouteRuntime,
) -> Result<Option<HeaderValue>, ProxyError> {
    let asked = headers::upgrade_protocols(req);
    if asked.is_empty() {
        return Ok(None);
    }
    // An HTTP/2 upstream connection cannot carry an HTTP/1.1 upgrade.
    let allowed: Vec<&str> = if route.upstream.http2 {
        Vec::new()
    } else {
        asked
            .into_iter()
            .filter(|p| headers::upgrade_allowed(p, &route.upgrades))
            .collect()
    };
    if allowed.is_empty() {
        if route.on_disallowed_upgrade == DisallowedUpgrade::Reject {
            return Err(ProxyError::BadRequest(
                "upgrade protocol not allowed on this route",
            ));
        }
        req.headers_mut().remove(UPGRADE);
        return Ok(None);
    }
    let value = HeaderValue::from_str(&allowed.join(", "))
        .map_err(|_| ProxyError::BadRequest("invalid Upgrade header"))?;
    req.headers_mut().insert(UPGRADE, value.clone());
    Ok(Some(value))
}

/// A JSON error body.
pub(crate) fn json_body(value: serde_json::Value) -> ProxyBody {
    full(Bytes::from(value.to_string()))
}
