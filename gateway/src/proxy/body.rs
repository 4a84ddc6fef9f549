//! Body types and the access-log body wrapper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::telemetry::Histogram;
use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body, Frame, SizeHint};

use crate::config::AccessLogConfig;
use crate::http::{BoxError, ClientInfo, ProxyBody};
use crate::upstream::UpstreamBody;

/// One request as the access log, the metrics and the trace see it: filled in as the
/// request goes through the pipeline, and written out when the response body ends. Never a
/// header value (other than the request id and a trusted `X-Forwarded-For`) or a query.
pub(crate) struct Exchange {
    pub request_id: HeaderValue,
    pub client: Arc<ClientInfo>,
    pub route_idx: Option<usize>,
    pub route: Option<Arc<str>>,
    /// The upstream, once it was contacted.
    pub upstream: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<Arc<str>>,
    /// Attempts sent upstream (1 unless retried).
    pub attempts: u32,
    pub method: Method,
    pub path: String,
    pub started: Instant,
    pub upstream_time: Option<Duration>,
    /// Request head in to response head out.
    pub response_time: Option<Duration>,
    pub verdict: &'static str,
    /// The plugin that denied (or failed closed).
    pub policy: Option<String>,
    /// Why Warden answered itself, when it did (the error code or `policy_denied`).
    pub flag: Option<&'static str>,
    /// The error behind `flag`, in words.
    pub reason: Option<String>,
    /// The `X-Forwarded-For` chain sent upstream, when the peer is a trusted proxy.
    pub forwarded_for: Option<HeaderValue>,
    /// The downstream HTTP version.
    pub version: Version,
    /// The status sent to the client.
    pub status: u16,
    /// The request body as it was read, when there was one.
    pub body_in: Option<Arc<BodyIn>>,
    /// The trace id: of the request's trace, or of an incoming `traceparent`.
    pub trace_id: Option<opentelemetry::trace::TraceId>,
    /// The open request span, when traced.
    pub trace: Option<crate::trace::RequestTrace>,
    /// Fields and format of the access log.
    pub access: Arc<AccessLogConfig>,
    /// `exchange_duration_seconds` for this route.
    pub exchange_duration: Option<Histogram>,
}

/// What was read of a request body: bytes, and when its end came.
#[derive(Debug, Default)]
pub(crate) struct BodyIn {
    bytes: AtomicU64,
    /// Nanoseconds from the request head to the end of the body, plus one (0: not yet).
    ended: AtomicU64,
}

impl BodyIn {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Time from the request head to the body's end, once it ended.
    pub fn read_in(&self) -> Option<Duration> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n - 1)),
        }
    }
}

/// A request body as the pipeline gets it: hyper's, or none at all (a request that Warden's
/// own HTTP/1.1 loop read, which takes only requests without a body).
pub(crate) enum ClientBody {
    Hyper(hyper::body::Incoming),
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project_lite::pin_project! {
    /// Counts a request body's bytes on their way upstream.
    pub(crate) struct CountedIn<B> {
        #[pin]
        inner: B,
        stats: Option<Arc<BodyIn>>,
        started: Instant,
    }
}

/// Count `inner`'s bytes into `stats` (nothing to count without).
pub(crate) fn counted_in<B>(
    inner: B,
    stats: Option<Arc<BodyIn>>,
    started: Instant,
) -> CountedIn<B> {
    CountedIn {
        inner,
        stats,
        started,
    }
}

impl<B: Body<Data = Bytes>> Body for CountedIn<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        let Some(stats) = this.stats.as_ref() else {
            return r;
        };
        let ended = match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    stats.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                false
            }
            Poll::Ready(None) => true,
            _ => false,
        };
        if ended || this.inner.is_end_stream() {
            let n = this.started.elapsed().as_nanos() as u64 + 1;
            let _ = stats
                .ended
                .compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body on its way to the client: the upstream's own, polled directly (no
    /// box, no dynamic call per frame), or one the gateway made.
    #[project = OutgoingProj]
    pub(crate) enum Outgoing {
        Upstream { #[pin] body: UpstreamBody },
        Made { #[pin] body: ProxyBody },
    }
}

impl Outgoing {
    pub fn upstream(body: UpstreamBody) -> Self {
        Outgoing::Upstream { body }
    }
}

impl From<ProxyBody> for Outgoing {
    fn from(body: ProxyBody) -> Self {
        Outgoing::Made { body }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            OutgoingProj::Upstream { body } => body.poll_frame(cx),
            OutgoingProj::Made { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Upstream { body } => body.is_end_stream(),
            Outgoing::Made { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Upstream { body } => body.size_hint(),
            Outgoing::Made { body } => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// Passes frames through, counts bytes, and writes the access-log line when the body
    /// ends or is dropped (client went away), so the line carries the real size and total
    /// time of a streamed response.
    pub(crate) struct Observed {
        #[pin]
        inner: Outgoing,
        bytes: u64,
        log: Option<Exchange>,
        complete: bool,
        limits: StreamLimits,
        // Armed on the first poll that has to wait; reset by every frame.
        idle: Option<Pin<Box<tokio::time::Sleep>>>,
        deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(log) = this.log.take() {
                write_access_log(log, *this.bytes, *this.complete);
            }
        }
    }
}

/// A route's limits on a response body that streams: no bytes for `idle`, or the whole
/// exchange past `end`, cuts it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamLimits {
    pub idle: Option<Duration>,
    pub end: Option<tokio::time::Instant>,
}

/// Why a stream was cut (the error hyper gets; the client sees the stream end early).
#[derive(Debug, thiserror::Error)]
#[error("response stream cut: {0}")]
struct StreamCut(&'static str);

pub(crate) fn observed(inner: Outgoing, log: Exchange, limits: StreamLimits) -> Observed {
    Observed {
        inner,
        bytes: 0,
        log: Some(log),
        complete: false,
        limits,
        idle: None,
        deadline: limits.end.map(|at| Box::pin(tokio::time::sleep_until(at))),
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = this.inner.as_mut().poll_frame(cx);
        if r.is_pending() {
            // Waiting on the upstream: the limits decide how long.
            if let Some(idle) = this.limits.idle {
                let sleep = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(cut(this.log, "idle_timeout"))));
                }
            }
            if let Some(d) = this.deadline.as_mut()
                && d.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Some(Err(cut(this.log, "max_duration"))));
            }
            return r;
        }
        // Bytes arrived: the idle clock starts again at the next wait.
        *this.idle = None;
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                // hyper stops polling once the body says it has ended, so a final
                // `None` may never come.
                if this.inner.is_end_stream() {
                    *this.complete = true;
                }
            }
            Poll::Ready(None) => *this.complete = true,
            Poll::Ready(Some(Err(e))) => {
                // The upstream broke its body off (reset, cut short, bad framing): the
                // access log says so, as it does for an error before the head.
                if let Some(l) = this.log.as_mut()
                    && l.flag.is_none()
                {
                    l.flag = Some("upstream_error");
                    l.reason = Some(super::error::error_chain(e.as_ref()));
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Mark the exchange with why its stream was cut, for the access log.
fn cut(log: &mut Option<Exchange>, why: &'static str) -> BoxError {
    if let Some(l) = log.as_mut() {
        l.flag = Some(why);
    }
    Box::new(StreamCut(why))
}

fn write_access_log(mut log: Exchange, bytes: u64, complete: bool) {
    let total = log.started.elapsed();
    let h = log.exchange_duration.take().unwrap_or_else(|| {
        crate::telemetry::metrics()
            .proxy
            .exchange_duration
            .get_or_create(&crate::telemetry::RouteLabel {
                route: "none".to_string(),
            })
            .clone()
    });
    h.observe(total.as_secs_f64());
    if let Some(t) = log.trace.take() {
        t.finish(log.status, log.flag);
    }
    super::access::write(&log, bytes, complete, total);
}
