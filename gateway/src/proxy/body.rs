//! Body types and the access-log body wrapper.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tracing::info;

use crate::http::{BoxError, ProxyBody};

/// One request as the access log and the metrics see it: filled in as the request goes
/// through the pipeline, and written out when the response body ends. Never a header value
/// (other than the request id) or a query.
pub(crate) struct Exchange {
    pub request_id: HeaderValue,
    pub route_idx: Option<usize>,
    pub route: Option<Arc<str>>,
    /// The upstream, once it was contacted.
    pub upstream: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<http::uri::Authority>,
    /// Attempts sent upstream (1 unless retried).
    pub attempts: u32,
    pub method: Method,
    pub path: String,
    pub started: Instant,
    pub upstream_time: Option<Duration>,
    pub verdict: &'static str,
    /// Why Warden answered itself, when it did (the error code or `policy_denied`).
    pub flag: Option<&'static str>,
    /// The downstream HTTP version.
    pub version: Version,
    /// The status sent to the client.
    pub status: u16,
}

pin_project_lite::pin_project! {
    /// Passes frames through, counts bytes, and writes the access-log line when the body
    /// ends or is dropped (client went away), so the line carries the real size and total
    /// time of a streamed response.
    pub(crate) struct Observed {
        #[pin]
        inner: ProxyBody,
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

pub(crate) fn observed(inner: ProxyBody, log: Exchange, limits: StreamLimits) -> ProxyBody {
    Observed {
        inner,
        bytes: 0,
        log: Some(log),
        complete: false,
        limits,
        idle: None,
        deadline: limits.end.map(|at| Box::pin(tokio::time::sleep_until(at))),
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

/// Mark the exchange with why its stream was cut, for the access log.
fn cut(log: &mut Option<Exchange>, why: &'static str) -> BoxError {
    if let Some(l) = log.as_mut() {
        l.flag = Some(why);
    }
    Box::new(StreamCut(why))
}

fn write_access_log(log: Exchange, bytes: u64, complete: bool) {
    info!(
        target: "warden::access",
        request_id = log.request_id.to_str().unwrap_or("-"),
        route = log.route.as_deref().unwrap_or("-"),
        method = %log.method,
        path = %log.path,
        status = log.status,
        duration_ms = log.started.elapsed().as_secs_f64() * 1000.0,
        upstream = log.upstream.as_deref().unwrap_or("-"),
        endpoint = log.endpoint.as_ref().map(|a| a.as_str()).unwrap_or("-"),
        attempts = log.attempts,
        upstream_ms = log.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
        verdict = log.verdict,
        flag = log.flag.unwrap_or("-"),
        bytes_out = bytes,
        complete,
        "request"
    );
}
