//! Real upstream servers for the tests: HTTP/1.1 and h2c on one port (or TLS with ALPN,
//! optionally requiring client certificates). Behaviour is chosen by path:
//!
//! - anything else: echo the request as JSON (`method`, `path`, `query`, `version`,
//!   `headers`, `body`, `server`)
//! - `/status/NNN`: answer with that status
//! - `/slow/MS`: wait MS milliseconds, then echo
//! - `/sse?n=N&gap_ms=G`: N server-sent events, G ms apart, each flushed on its own
//! - `/grpc`: a gRPC-shaped answer (length-prefixed message) with `grpc-status` trailers
//! - `/big?bytes=N`: N bytes streamed in 16 KiB chunks
//! - upgrade requests: 101 to whatever protocol was asked for (an upstream that accepts any
//!   upgrade), then every byte received is echoed back
//! - upgrade requests to `…/ws-refuse`: 403
//! - upgrade requests to `…/ws-other`: 101 to `h2c`, whatever was asked for
//! - `…/switch`: 101 `Upgrade: websocket` even without an upgrade request

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::certs::Leaf;

type Body = BoxBody<Bytes, Infallible>;

/// A request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// HTTP version.
    pub version: String,
    /// Headers.
    pub headers: HeaderMap,
}

#[derive(Default)]
struct State {
    name: String,
    count: AtomicUsize,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// What `/healthz` answers (0: 200). Health probes are not counted as requests.
    health: std::sync::atomic::AtomicU16,
    /// What every other request answers, when set (0: echo).
    forced: std::sync::atomic::AtomicU16,
    seen: Mutex<Vec<Seen>>,
    /// Request bodies read (echo and `/mcp`), in order.
    bodies: Mutex<Vec<Bytes>>,
}

/// A running test upstream. Stops on drop.
pub struct Echo {
    /// Listening address.
    pub addr: SocketAddr,
    /// Whether it speaks TLS.
    pub tls: bool,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Echo {
    /// Plaintext HTTP/1.1 + h2c on 127.0.0.1:0.
    pub async fn start() -> Echo {
        Self::start_named("echo").await
    }

    /// Plaintext, with a name reported in every echo (to tell upstreams apart).
    pub async fn start_named(name: &str) -> Echo {
        Self::start_inner(name, None, "127.0.0.1:0").await
    }

    /// Plaintext on a fixed address (for the demo).
    pub async fn start_at(name: &str, addr: &str) -> Echo {
        Self::start_inner(name, None, addr).await
    }

    /// TLS with ALPN h2 + http/1.1; with `client_ca_pem`, client certificates are
    /// required and verified.
    pub async fn start_tls(name: &str, leaf: &Leaf, client_ca_pem: Option<&str>) -> Echo {
        Self::start_inner(name, Some(tls_acceptor(leaf, client_ca_pem)), "127.0.0.1:0").await
    }

    /// TLS on a fixed address (for the demo).
    pub async fn start_tls_at(
        name: &str,
        leaf: &Leaf,
        client_ca_pem: Option<&str>,
        addr: &str,
    ) -> Echo {
        Self::start_inner(name, Some(tls_acceptor(leaf, client_ca_pem)), addr).await
    }

    async fn start_inner(name: &str, tls: Option<tokio_rustls::TlsAcceptor>, addr: &str) -> Echo {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_string(),
            ..Default::default()
        });
        let is_tls = tls.is_some();
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Echo {
            addr,
            tls: is_tls,
            state,
            task,
        }
    }

    /// `http://addr` (or `https://`).
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Make `/healthz` answer `status` (200 by default).
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// Make every request (but `/healthz`) answer `status`; 0 goes back to echoing.
    pub fn force_status(&self, status: u16) {
        self.state.forced.store(status, Ordering::SeqCst);
    }

    /// Requests received so far (health probes not counted).
    pub fn requests(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Request heads received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Request bodies received so far by the echo and `/mcp` handlers.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.state.bodies.lock().unwrap().clone()
    }
}

fn tls_acceptor(leaf: &Leaf, client_ca_pem: Option<&str>) -> tokio_rustls::TlsAcceptor {
    crate::init_crypto();
    let (certs, key) = leaf.rustls();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            use rustls_pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots.add(c.expect("ca pem")).expect("add ca");
            }
            let v = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .expect("verifier");
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder.with_single_cert(certs, key).expect("server cert");
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A tiny MCP server (streamable HTTP): JSON-RPC in, JSON out, or one SSE event with
/// `?sse=1`. Tools: `search_projects`, `get_project`, `delete_project`.
fn mcp(body: &[u8], query: Option<&str>) -> Response<Body> {
    fn answer(call: &serde_json::Value) -> serde_json::Value {
        let id = call.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let method = call.get("method").and_then(|m| m.as_str()).unwrap_or("");
        let result = match method {
            "initialize" => json!({
                "protocolVersion": "2025-06-18",
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "test-mcp", "version": "1" }
            }),
            "tools/list" => json!({ "tools": [
                { "name": "search_projects", "description": "Search", "inputSchema": { "type": "object" } },
                { "name": "get_project", "description": "Get", "inputSchema": { "type": "object" } },
                { "name": "delete_project", "description": "Delete", "inputSchema": { "type": "object" } },
            ]}),
            "tools/call" => {
                let name = call["params"]["name"].as_str().unwrap_or("");
                json!({ "content": [ { "type": "text", "text": format!("called {name}") } ] })
            }
            _ => {
                return json!({ "jsonrpc": "2.0", "id": id,
                    "error": { "code": -32601, "message": "method not found" } });
            }
        };
        json!({ "jsonrpc": "2.0", "id": id, "result": result })
    }
    let reply = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(calls)) => {
            serde_json::Value::Array(calls.iter().map(answer).collect())
        }
        Ok(call) => answer(&call),
        Err(_) => json!({ "jsonrpc": "2.0", "id": null,
            "error": { "code": -32700, "message": "parse error" } }),
    };
    let sse = query.is_some_and(|q| q.contains("sse=1"));
    let (ct, text) = if sse {
        (
            "text/event-stream",
            format!("event: message\ndata: {reply}\n\n"),
        )
    } else {
        ("application/json", reply.to_string())
    };
    let mut r = Response::new(full(text));
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, ct.parse().unwrap());
    r
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn query_param(q: Option<&str>, key: &str) -> Option<u64> {
    q?.split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn handle(mut req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/healthz" {
        let code = match st.health.load(Ordering::SeqCst) {
            0 => 200,
            c => c,
        };
        let mut r = Response::new(full(format!("health {code}")));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        return Ok(r);
    }
    st.count.fetch_add(1, Ordering::SeqCst);
    st.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req.headers().clone(),
    });
    if let c @ 1.. = st.forced.load(Ordering::SeqCst) {
        let mut r = Response::new(full(format!("forced {c}")));
        *r.status_mut() = StatusCode::from_u16(c).unwrap_or(StatusCode::OK);
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);

    if req.headers().contains_key(http::header::UPGRADE) || path.ends_with("/switch") {
        if path.ends_with("/ws-refuse") {
            let mut r = Response::new(full("upgrade refused"));
            *r.status_mut() = StatusCode::FORBIDDEN;
            return Ok(r);
        }
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        });
        let protocol = match path.rsplit('/').next() {
            Some("ws-other") => http::HeaderValue::from_static("h2c"),
            Some("switch") => http::HeaderValue::from_static("websocket"),
            _ => req
                .headers()
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(http::HeaderValue::from_static("websocket")),
        };
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(http::header::UPGRADE, protocol);
        r.headers_mut()
            .insert(http::header::CONNECTION, "upgrade".parse().unwrap());
        return Ok(r);
    }

    // Keywords work under any prefix (`/api/slow/500`), so tests can route by prefix.
    if let Some(code) = path
        .split("/status/")
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
    {
        let mut r = Response::new(full(format!("status {code}")));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        return Ok(r);
    }
    if let Some(ms) = path
        .split("/slow/")
        .nth(1)
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if path == "/sse" {
        let n = query_param(query.as_deref(), "n").unwrap_or(5);
        let gap = query_param(query.as_deref(), "gap_ms").unwrap_or(100);
        let stream = futures_util::stream::unfold(0u64, move |i| async move {
            if i >= n {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!(
                    "id: {i}\ndata: token-{i}\n\n"
                )))),
                i + 1,
            ))
        });
        let mut r = Response::new(StreamBody::new(stream).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "text/event-stream".parse().unwrap(),
        );
        r.headers_mut()
            .insert(http::header::CACHE_CONTROL, "no-cache".parse().unwrap());
        return Ok(r);
    }
    if path == "/big" {
        let total = query_param(query.as_deref(), "bytes").unwrap_or(1 << 20);
        let stream = futures_util::stream::unfold(0u64, move |sent| async move {
            if sent >= total {
                return None;
            }
            let n = (total - sent).min(16 * 1024);
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; n as usize]))),
                sent + n,
            ))
        });
        return Ok(Response::new(StreamBody::new(stream).boxed()));
    }

    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    st.bodies.lock().unwrap().push(body.clone());

    if path.ends_with("/mcp") {
        return Ok(mcp(&body, query.as_deref()));
    }

    if path == "/grpc" {
        // One length-prefixed message back, then trailers — the gRPC wire shape.
        let mut msg = vec![0u8];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes());
        msg.extend_from_slice(&body[5.min(body.len())..]);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(Frame::data(Bytes::from(msg))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().unwrap(),
        );
        return Ok(r);
    }

    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in &parts.headers {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let echo = json!({
        "server": st.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut r = Response::new(full(echo.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    r.headers_mut()
        .insert("x-upstream", st.name.parse().unwrap());
    Ok(r)
}
