//! Body types and the access-log body wrapper.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};
use tracing::info;

/// Boxed error type for bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type used on both sides of the proxy: streamed, never buffered.
pub type ProxyBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// What the access-log line says about a request. Never a header value or a query.
pub(crate) struct AccessLog {
    pub request_id: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
    pub upstream_time: Option<Duration>,
    pub verdict: &'static str,
    /// Why Warden answered itself, when it did.
    pub flag: Option<&'static str>,
}

pin_project_lite::pin_project! {
    /// Passes frames through, counts bytes, and writes the access-log line when the body
    /// ends or is dropped (client went away), so the line carries the real size and total
    /// time of a streamed response.
    pub(crate) struct Observed {
        #[pin]
        inner: ProxyBody,
        bytes: u64,
        log: Option<AccessLog>,
        complete: bool,
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

pub(crate) fn observed(inner: ProxyBody, log: AccessLog) -> ProxyBody {
    Observed {
        inner,
        bytes: 0,
        log: Some(log),
        complete: false,
    }
    .boxed()
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
            _ => {}
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

fn write_access_log(log: AccessLog, bytes: u64, complete: bool) {
    info!(
        target: "warden::access",
        request_id = %log.request_id,
        route = log.route.as_deref().unwrap_or("-"),
        method = %log.method,
        path = %log.path,
        status = log.status,
        duration_ms = log.started.elapsed().as_secs_f64() * 1000.0,
        upstream = log.upstream.as_deref().unwrap_or("-"),
        upstream_ms = log.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        verdict = log.verdict,
        flag = log.flag.unwrap_or("-"),
        bytes_out = bytes,
        complete,
        "request"
    );
}
