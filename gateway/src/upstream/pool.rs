//! One worker's connections to one endpoint, on hyper's connection API.
//!
//! Each proxy worker owns a [`Pool`] per endpoint, so a request takes a connection from a
//! list only its own thread touches (the mutex is never contended) and the request goes
//! straight to that connection's task: no shared pool, no pool key to hash, no boxed
//! client future, no task spawned to return a connection.
//!
//! HTTP/1.1 connections are kept in a short list, most recently used last. A connection
//! goes back on the list as soon as its response head arrives; it is taken again only
//! once hyper reports it ready (that response read to the end), so a connection still
//! streaming a response is skipped, not waited for. HTTP/2 keeps one connection per worker
//! and endpoint, shared by every request. A connection idle past `pool.idle_timeout` is
//! closed by a sweep that runs only while the pool holds connections.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::h1;
use crate::config::PoolConfig;
use crate::http::{BoxError, ProxyBody};

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (address, TCP, TLS or HTTP/2 handshake): nothing was
    /// sent, so the request may go to another endpoint whatever its method.
    #[error("connecting to the upstream")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was being sent or answered.
    #[error("upstream request")]
    Request(#[source] BoxError),
    /// The upstream answered with a head or framing that cannot be read safely. Sending
    /// the request again would get the same answer: it is never retried.
    #[error("upstream response")]
    Malformed(#[source] BoxError),
}

impl SendError {
    /// Whether nothing was sent because no connection could be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }

    /// Whether the connection broke after the request was sent (a reset, a close before
    /// the response): what `retry.on = ["reset"]` retries.
    pub fn is_reset(&self) -> bool {
        matches!(self, SendError::Request(_))
    }
}

impl From<h1::Error> for SendError {
    fn from(e: h1::Error) -> SendError {
        match e {
            h1::Error::Head(_)
            | h1::Error::HeadTooLarge
            | h1::Error::Framing(_)
            | h1::Error::Chunk(_) => SendError::Malformed(e.into()),
            h1::Error::Stale(_)
            | h1::Error::Write(_)
            | h1::Error::Read(_)
            | h1::Error::Closed(_) => SendError::Request(e.into()),
        }
    }
}

/// How connections to an upstream's endpoints are made: shared by all its endpoints.
pub(super) struct Dialer {
    /// Present for `https` upstreams.
    tls: Option<TlsConnector>,
    /// `tls.server_name`, which replaces each endpoint's host for SNI and verification.
    server_name: Option<ServerName<'static>>,
    http2: bool,
    connect_timeout: Duration,
    pool: PoolConfig,
}

impl Dialer {
    /// `tls` is used only when `https`; its ALPN is set here to what the upstream speaks.
    pub(super) fn new(
        mut tls: rustls::ClientConfig,
        https: bool,
        http2: bool,
        server_name: Option<ServerName<'static>>,
        connect_timeout: Duration,
        pool: PoolConfig,
    ) -> Dialer {
        // HTTP/1.1 upstreams get no ALPN, as before; an HTTP/2 one must agree to h2.
        tls.alpn_protocols = if http2 {
            vec![b"h2".to_vec()]
        } else {
            Vec::new()
        };
        Dialer {
            tls: https.then(|| TlsConnector::from(Arc::new(tls))),
            server_name,
            http2,
            connect_timeout,
            pool,
        }
    }
}

/// Where one endpoint's connections go.
pub(super) enum Target {
    /// An address already known (an IP literal, or a name resolved by the upstream).
    Addr(SocketAddr),
    /// A name resolved by the system at connect time, tried address by address.
    Name(String, u16),
}

/// One endpoint as the pools of every worker see it.
pub(super) struct Dest {
    dialer: Arc<Dialer>,
    target: Target,
    /// SNI and the name the certificate must carry.
    server_name: Option<ServerName<'static>>,
}

impl Dest {
    /// `host` is the endpoint's host, an IPv6 literal without its brackets.
    pub(super) fn new(dialer: Arc<Dialer>, target: Target, host: &str) -> Dest {
        let server_name = dialer
            .server_name
            .clone()
            .or_else(|| ServerName::try_from(host).ok().map(|n| n.to_owned()));
        Dest {
            dialer,
            target,
            server_name,
        }
    }

    async fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        match &self.target {
            Target::Addr(a) => Ok(vec![*a]),
            Target::Name(host, port) => Ok(tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .collect()),
        }
    }

    /// A TCP (and TLS) connection within `connect_timeout`.
    async fn dial(&self) -> Result<h1::Stream, BoxError> {
        let d = &self.dialer;
        let deadline = tokio::time::Instant::now() + d.connect_timeout;
        let connect = async {
            let mut last = None;
            let mut tcp = None;
            let addrs = self.addrs().await?;
            for (i, a) in addrs.iter().enumerate() {
                // Each address gets an equal share of the time left, so one that drops
                // packets (an unreachable IPv6 address, say) does not use it all.
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let share = left / (addrs.len() - i) as u32;
                match tokio::time::timeout(share, TcpStream::connect(a)).await {
                    Ok(Ok(s)) => {
                        tcp = Some(s);
                        break;
                    }
                    Ok(Err(e)) => last = Some(e),
                    Err(_) => {
                        last = Some(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("connecting to {a} timed out"),
                        ))
                    }
                }
            }
            let tcp = match (tcp, last) {
                (Some(t), _) => t,
                (None, Some(e)) => return Err(BoxError::from(e)),
                (None, None) => return Err("the upstream host resolved to no address".into()),
            };
            tcp.set_nodelay(true)?;
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
            Ok(match &d.tls {
                None => Either::Left(tcp),
                Some(tls) => {
                    let name = self
                        .server_name
                        .clone()
                        .ok_or("the upstream host is not a valid TLS server name")?;
                    Either::Right(tls.connect(name, tcp).await?)
                }
            })
        };
        match tokio::time::timeout(d.connect_timeout, connect).await {
            Ok(io) => io,
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out").into())
            }
        }
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let io = TokioIo::new(self.dial().await.map_err(SendError::Connect)?);
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<ProxyBody>, SendError> {
        let io = TokioIo::new(self.dial().await.map_err(SendError::Connect)?);
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }
}

/// One worker's connections to one endpoint.
pub struct Pool {
    dest: Arc<Dest>,
    state: Arc<Mutex<State>>,
    /// Held while an HTTP/2 connection is being made, so that the requests arriving
    /// meanwhile wait for it instead of each making their own.
    h2_connecting: tokio::sync::Mutex<()>,
}

struct State {
    /// HTTP/1.1 connections on hyper (requests with a body), most recently used last.
    h1: Vec<Kept<http1::SendRequest<ProxyBody>>>,
    /// Idle HTTP/1.1 connections for [`h1`]'s exchange (requests without one), most
    /// recently used last.
    own: Vec<Kept<Box<h1::Conn>>>,
    /// The HTTP/2 connection.
    h2: Option<Kept<http2::SendRequest<ProxyBody>>>,
    /// Whether a sweep task is running.
    sweeping: bool,
    /// `pool.max_idle` and `pool.idle_timeout`, here for whoever returns a connection.
    max_idle: usize,
    idle_timeout: Duration,
}

struct Kept<T> {
    tx: T,
    /// When its last response began (HTTP/1.1) or it was last handed a request (HTTP/2).
    used: Instant,
}

impl Pool {
    pub(super) fn new(dest: Arc<Dest>) -> Pool {
        let state = State {
            h1: Vec::new(),
            own: Vec::new(),
            h2: None,
            sweeping: false,
            max_idle: dest.dialer.pool.max_idle,
            idle_timeout: dest.dialer.pool.idle_timeout,
        };
        Pool {
            dest,
            state: Arc::new(Mutex::new(state)),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Send `req` (origin-form URI for HTTP/1.1, absolute for HTTP/2) on a kept connection,
    /// or on a new one. A request a kept connection could not take because the upstream
    /// had closed it goes on a new connection.
    ///
    /// With `back`, the request's headers come back in it whatever the outcome (unless
    /// the future is dropped first), for another attempt: the gateway's own HTTP/1.1
    /// client gives back the ones it wrote; hyper's client keeps its request, so a copy.
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        now: Instant,
        mut back: Option<&mut Option<HeaderMap>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let own = !self.dest.dialer.http2 && h1::takes(&req);
        if !own && let Some(back) = back.take() {
            *back = Some(req.headers().clone());
        }
        if self.dest.dialer.http2 {
            // Boxed, like connecting: HTTP/1.1 requests do not carry its state.
            return Box::pin(self.send_h2(req, now))
                .await
                .map(|r| r.map(UpstreamBody::Hyper));
        }
        if own {
            let home = || Home(Arc::downgrade(&self.state));
            let req = match self.checkout_own(now) {
                Some(conn) => match conn.send(req, home(), true, back.as_deref_mut()).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::Own)),
                    // The upstream closed the kept connection as the request went out:
                    // it never saw the request, which goes on a new connection.
                    Err((_, Some(req))) => req,
                    Err((e, None)) => return Err(e.into()),
                },
                None => req,
            };
            // Boxed for the same reason as below.
            let io = match Box::pin(self.dest.dial()).await {
                Ok(io) => io,
                Err(e) => {
                    if let Some(back) = back {
                        *back = Some(req.into_parts().0.headers);
                    }
                    return Err(SendError::Connect(e));
                }
            };
            return match h1::Conn::new(io).send(req, home(), false, back).await {
                Ok(resp) => Ok(resp.map(UpstreamBody::Own)),
                Err((e, _)) => Err(e.into()),
            };
        }
        let req = match self.checkout_h1(now) {
            Some(mut tx) => match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.keep_h1(tx);
                    return Ok(resp.map(UpstreamBody::Hyper));
                }
                // Closed before it took the request: nothing was sent.
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(SendError::Request(e.into_error().into())),
                },
            },
            None => req,
        };
        // Boxed: connecting (resolution, TCP, TLS) is a large future that most requests,
        // on a kept connection, never run; inline it would enlarge every request's.
        let mut tx = Box::pin(self.dest.connect_h1()).await?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        self.keep_h1(tx);
        Ok(resp.map(UpstreamBody::Hyper))
    }

    async fn send_h2(
        &self,
        req: Request<ProxyBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let mut kept = self.kept_h2(now);
        if kept.is_none() && self.dest.dialer.pool.max_idle > 0 {
            // One connection is made at a time; whoever waited finds it made.
            let _connecting = self.h2_connecting.lock().await;
            kept = self.kept_h2(now);
            if kept.is_none() {
                let tx = Box::pin(self.dest.connect_h2()).await?;
                let mut st = self.state.lock().expect("pool lock");
                st.h2 = Some(Kept {
                    tx: tx.clone(),
                    used: now,
                });
                sweep_later(&self.state, &mut st);
                kept = Some(tx);
            }
        }
        let req = match kept {
            Some(mut tx) => match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(req) => req,
                    None => return Err(SendError::Request(e.into_error().into())),
                },
            },
            None => req,
        };
        // Not kept (max_idle = 0), or the kept one closed before it took the request.
        let mut tx = Box::pin(self.dest.connect_h2()).await?;
        tx.send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))
    }

    /// The kept HTTP/2 connection, if it is open.
    fn kept_h2(&self, now: Instant) -> Option<http2::SendRequest<ProxyBody>> {
        let mut st = self.state.lock().expect("pool lock");
        match &mut st.h2 {
            Some(k) if !k.tx.is_closed() => {
                k.used = now;
                Some(k.tx.clone())
            }
            _ => None,
        }
    }

    /// The most recently used idle connection for [`h1`]'s exchange that the upstream has
    /// not closed, dropping expired and closed ones on the way.
    fn checkout_own(&self, now: Instant) -> Option<Box<h1::Conn>> {
        let mut st = self.state.lock().expect("pool lock");
        let idle_timeout = st.idle_timeout;
        while let Some(mut k) = st.own.pop() {
            if now.saturating_duration_since(k.used) <= idle_timeout && k.tx.is_open() {
                return Some(k.tx);
            }
        }
        None
    }

    /// The most recently used HTTP/1.1 connection that is ready for a request, dropping
    /// closed and expired ones on the way.
    fn checkout_h1(&self, now: Instant) -> Option<http1::SendRequest<ProxyBody>> {
        let idle_timeout = self.dest.dialer.pool.idle_timeout;
        let mut st = self.state.lock().expect("pool lock");
        let mut i = st.h1.len();
        while i > 0 {
            i -= 1;
            let k = &st.h1[i];
            if k.tx.is_closed() || now.saturating_duration_since(k.used) > idle_timeout {
                st.h1.remove(i);
            } else if k.tx.is_ready() {
                return Some(st.h1.remove(i).tx);
            }
        }
        None
    }

    /// Keep a connection whose response has just begun. At most `pool.max_idle` of the
    /// kept connections may be idle: past that, the least recently used idle one is
    /// closed. Busy ones are never closed here (their number is the worker's concurrency).
    fn keep_h1(&self, tx: http1::SendRequest<ProxyBody>) {
        let max = self.dest.dialer.pool.max_idle;
        if max == 0 {
            // Dropped: the connection closes once this request's response is read.
            return;
        }
        let mut st = self.state.lock().expect("pool lock");
        st.h1.push(Kept {
            tx,
            used: Instant::now(),
        });
        // Idle connections of the other kind count against `max_idle` too.
        let max = max.saturating_sub(st.own.len());
        if st.h1.len() > max {
            let mut idle = st.h1.iter().filter(|k| k.tx.is_ready()).count();
            let mut i = 0;
            while idle > max && i < st.h1.len() {
                if st.h1[i].tx.is_ready() {
                    st.h1.remove(i);
                    idle -= 1;
                } else {
                    i += 1;
                }
            }
        }
        sweep_later(&self.state, &mut st);
    }
}

/// Where [`h1`]'s exchange returns a connection: the pool it came from, if it still exists.
pub struct Home(Weak<Mutex<State>>);

impl h1::Home for Home {
    /// Keep a connection whose response has ended, unless `pool.max_idle` connections are
    /// idle already: then the least recently used one is closed.
    fn keep(&self, conn: Box<h1::Conn>) {
        let Some(state) = self.0.upgrade() else {
            return;
        };
        let Ok(mut st) = state.lock() else { return };
        if st.max_idle == 0 {
            return;
        }
        // `pool.max_idle` counts idle connections of both kinds.
        let idle_h1 = st.h1.iter().filter(|k| k.tx.is_ready()).count();
        while !st.own.is_empty() && st.own.len() + idle_h1 >= st.max_idle {
            st.own.remove(0);
        }
        st.own.push(Kept {
            tx: conn,
            used: Instant::now(),
        });
        sweep_later(&state, &mut st);
    }
}

/// Start the idle sweep of `state` (locked as `st`) if it is not running. It holds the pool
/// weakly, so it ends with the endpoint, and stops itself once the pool is empty.
fn sweep_later(state: &Arc<Mutex<State>>, st: &mut State) {
    if st.sweeping {
        return;
    }
    // Outside a runtime (never on the request path) nothing sweeps; the next
    // connection kept within one starts the sweep.
    if tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    st.sweeping = true;
    let weak: Weak<Mutex<State>> = Arc::downgrade(state);
    let every = st.idle_timeout.max(Duration::from_millis(100));
    // Made before the task, so that the flag is cleared even if the task is dropped
    // unpolled (its runtime shutting down).
    let done = SweepDone(weak.clone());
    tokio::spawn(async move {
        // However the task ends (the pool emptied, or its runtime shut down and
        // dropped it), the next kept connection starts a new sweep.
        let _done = done;
        loop {
            tokio::time::sleep(every).await;
            let Some(state) = weak.upgrade() else { return };
            let mut st = state.lock().expect("pool lock");
            if st.sweep(Instant::now(), every) {
                return;
            }
        }
    });
}

/// Clears the pool's `sweeping` flag when its sweep task ends.
struct SweepDone(Weak<Mutex<State>>);

impl Drop for SweepDone {
    fn drop(&mut self) {
        if let Some(state) = self.0.upgrade()
            && let Ok(mut st) = state.lock()
        {
            st.sweeping = false;
        }
    }
}

impl State {
    /// Close connections idle longer than `idle_timeout`; true when none is left. A
    /// connection still busy with a response counts as used now.
    fn sweep(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        self.h1.retain_mut(|k| {
            if k.tx.is_closed() {
                return false;
            }
            if !k.tx.is_ready() {
                k.used = now;
            }
            now.saturating_duration_since(k.used) <= idle_timeout
        });
        self.own.retain_mut(|k| {
            now.saturating_duration_since(k.used) <= idle_timeout && k.tx.is_open()
        });
        if self.h2.as_ref().is_some_and(|k| {
            k.tx.is_closed() || now.saturating_duration_since(k.used) > idle_timeout
        }) {
            self.h2 = None;
        }
        self.h1.is_empty() && self.own.is_empty() && self.h2.is_none()
    }
}

/// A response body from the upstream: hyper's, or one read by [`h1`]'s exchange.
pub enum UpstreamBody {
    Hyper(Incoming),
    Own(h1::Body<Home>),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            UpstreamBody::Own(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Own(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Own(b) => b.size_hint(),
        }
    }
}
