//! Warden's own HTTP/1.1 server loop for the common request: HTTP/1.1, origin form, no
//! body, no upgrade, no `Expect`.
//!
//! hyper's server runs a dispatcher between the connection and the service: every request
//! goes through its state machine, a boxed header-read timer, and a response encoder that
//! handles every case HTTP/1 has. A plain `GET` needs little of it. Here the connection's
//! own task parses the head (values sliced from the read buffer, not copied), runs the
//! request, and writes the response head with the first part of its body in one write.
//!
//! Anything else goes to hyper, with the bytes already read, for the rest of the
//! connection: a body, an upgrade, `Expect`, HTTP/1.0, an absolute or asterisk target, a
//! head that does not parse or is over a limit. This loop refuses nothing itself, so it
//! cannot read a request differently from the way hyper would: hyper stays the judge of
//! every request that is not plainly well-formed. A request without `Content-Length` or
//! `Transfer-Encoding` has no body (RFC 9112 §6.3), so the next request starts right after
//! its head, wherever that is.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRAILER, TRANSFER_ENCODING};
use http::{HeaderName, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::body::{ClientBody, Observed};
use super::{ConnLimits, preface, service, until_drained};
use crate::gateway::Gateway;
use crate::http::{ClientInfo, FieldSpan, decimal, field_map, field_spans, has_token};

/// Most header fields in a head this loop reads; a head with more goes to hyper, which
/// applies `gateway.max_headers`.
const MAX_HEADERS: usize = 100;
/// Fields the gateway adds to a request head on its way upstream (`X-Forwarded-*`, the
/// request id, injected secrets, trace context) without its map growing.
const REQUEST_ROOM: usize = 8;
/// Longest request target hyper accepts; a longer one gets hyper's 414.
const MAX_TARGET: usize = 65534;
/// What a read asks room for: a typical head fits.
const READ_SIZE: usize = 4096;
/// A response data frame up to this size is copied behind the head (or the frame before
/// it), so that a small response goes out in one write; a larger one is written as it is.
const COPY_FRAME: usize = 16 * 1024;
/// Buffers larger than these are let go between requests, so that one large head or
/// response does not stay resident in an idle keep-alive connection.
const KEEP_READ: usize = 16 * 1024;
/// Queued response bytes are written once they reach this (hyper's write buffer limit
/// here), even while the body has more ready.
const FLUSH_AT: usize = 64 * 1024;
const KEEP_OUT: usize = 8 * 1024;

/// Serve an HTTP/1.1 connection: requests this loop takes, until one it does not, which
/// hyper then serves with the rest of the connection.
pub(super) async fn serve<S>(
    io: S,
    gw: Arc<Gateway>,
    client: Arc<ClientInfo>,
    limits: &ConnLimits,
    drain: &CancellationToken,
) -> hyper::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: Vec::new(),
        timer: None,
    };
    let mut drained = pin!(drain.cancelled());
    // What hyper would accept (it reads at least 8 KiB), so that a head this loop gives up
    // on is one hyper refuses at once, not one it waits for again.
    let max_head = usize::try_from(limits.max_header_bytes)
        .unwrap_or(usize::MAX)
        .max(8192);
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    loop {
        // hyper's header-read timeout, kept: it runs from when the loop starts waiting for
        // a head, so it also closes a keep-alive connection left idle that long.
        let deadline = Instant::now() + limits.header_read_timeout;
        // How much of the buffer is known to hold no end of a head: a head that arrives a
        // few bytes at a time is parsed again only once its end may have come, not once per
        // read (which would cost time quadratic in its length), as hyper does.
        let mut scanned = 0usize;
        let fast = loop {
            if scanned == 0
                || conn.buf.len() >= max_head
                || may_end_head(&conn.buf[scanned.saturating_sub(3)..])
            {
                match parse(&mut conn.buf, max_headers, max_head) {
                    Parsed::Fast(f) => break f,
                    Parsed::Other => {
                        return Box::pin(hand_off(conn, gw, client, limits, drain)).await;
                    }
                    Parsed::Partial => {}
                }
            }
            scanned = conn.buf.len();
            if !conn.read_head(deadline, drained.as_mut()).await {
                return Ok(());
            }
        };
        // Boxed, as on hyper's path: an idle connection must not carry a request's state.
        let request = Box::pin(super::handle(fast.req, gw.current(), client.clone()));
        let Some(resp) = conn.answer(request).await else {
            // The client left before its answer: the request is dropped, as hyper drops it.
            return Ok(());
        };
        let keep = !fast.close && !drain.is_cancelled();
        match conn.respond(resp, fast.head, keep, fast.trailers).await {
            // A drain that began while the response streamed ends the connection too.
            Ok(true) if !drain.is_cancelled() => conn.trim(),
            Ok(_) => {
                let _ = conn.io.shutdown().await;
                return Ok(());
            }
            Err(_) => return Ok(()),
        }
    }
}

/// hyper's server for the rest of the connection, reading first what was already read.
async fn hand_off<S>(
    conn: Conn<S>,
    gw: Arc<Gateway>,
    client: Arc<ClientInfo>,
    limits: &ConnLimits,
    drain: &CancellationToken,
) -> hyper::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = preface::Replay::new(conn.buf.freeze(), conn.io);
    let conn = limits
        .http1()
        .serve_connection(TokioIo::new(io), service(gw, client))
        .with_upgrades();
    until_drained(conn, drain, |c| c.graceful_shutdown()).await
}

/// A request this loop serves.
struct Fast {
    req: Request<ClientBody>,
    /// The client asked to close after it.
    close: bool,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
    /// A `HEAD` request: the response has no body.
    head: bool,
}

// Returned by value once per request, never stored: boxing the request would cost an
// allocation each time.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Fast(Fast),
    /// Not all of the head has arrived.
    Partial,
    /// Anything else: hyper's to serve (or refuse).
    Other,
}

/// The request head at the front of `buf`, taken out of it when this loop serves it;
/// otherwise `buf` is as it was.
fn parse(buf: &mut BytesMut, max_headers: usize, max_head: usize) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut spans: [FieldSpan; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let mut r = httparse::Request::new(&mut slots[..max_headers]);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(method), Some(target)) = (r.version, r.method, r.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || !target.starts_with('/') || target.len() > MAX_TARGET {
        return Parsed::Other;
    }
    let (mut close, mut trailers, mut length) = (false, false, false);
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            // `0`, once: no body. Any other length, or a second field, is hyper's.
            if length || h.value != b"0" {
                return Parsed::Other;
            }
            length = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(h.value, b"close");
        } else if name.eq_ignore_ascii_case(b"te") {
            trailers |= has_token(h.value, b"trailers");
        }
    }
    let count = r.headers.len();
    field_spans(buf, r.headers, &mut spans);
    let at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target = at..at + target.len();

    let head = buf.split_to(len).freeze();
    let fields = field_map(&head, &spans[..count], REQUEST_ROOM);
    let uri = Uri::from_maybe_shared(head.slice(target));
    let (Ok(headers), Ok(uri)) = (fields, uri) else {
        // Put the head back where it was: hyper reads it again, and answers it.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Other;
    };
    let head = method == Method::HEAD;
    let mut req = Request::new(ClientBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Fast(Fast {
        req,
        close,
        trailers,
        head,
    })
}

struct Conn<S> {
    io: S,
    /// What has been read and not yet parsed.
    buf: BytesMut,
    /// The response being written.
    out: Vec<u8>,
    /// The header-read timer, made once per connection and moved only when it fires
    /// early (see [`Conn::read_head`]), so that a request does not cost a timer-wheel
    /// update.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Read more of a head. `false` when there is no more to read: the client closed, the
    /// read failed, `deadline` passed, or the gateway drains and no request has begun.
    async fn read_head(
        &mut self,
        deadline: Instant,
        mut drained: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> bool {
        poll_fn(|cx| {
            if self.buf.is_empty() && drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            reserve_read(&mut self.buf);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Ready(Ok(_)) => return Poll::Ready(true),
                Poll::Pending => {}
            }
            // The timer may still be set for an earlier head's deadline; when it fires
            // before this one, it is moved on, not taken for a timeout.
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if timer.deadline() >= deadline {
                    return Poll::Ready(false);
                }
                timer.as_mut().reset(deadline);
            }
        })
        .await
    }

    /// The response to `request`; `None` if the client closed the connection first. As
    /// hyper does (without half-close), the read side is watched while the request runs;
    /// bytes that come meanwhile are the next request's, kept for it.
    async fn answer<F: Future>(&mut self, mut request: Pin<Box<F>>) -> Option<F::Output> {
        let mut watch = self.buf.is_empty();
        poll_fn(|cx| {
            if let Poll::Ready(r) = request.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if client_left(&mut self.io, &mut self.buf, &mut watch, cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Write the response. `Ok(true)` when the connection can carry another request.
    async fn respond(
        &mut self,
        resp: Response<Observed>,
        head_request: bool,
        mut keep: bool,
        trailers_allowed: bool,
    ) -> std::io::Result<bool> {
        let (parts, body) = resp.into_parts();
        let mut body = pin!(body);
        let status = parts.status;
        if status.is_informational() {
            // Never made on this path (no upgrade, no `Expect`); its body would be read as
            // the next response.
            return Ok(false);
        }
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let no_content = status == StatusCode::NO_CONTENT;
        let bodyless = head_request || no_content || status == StatusCode::NOT_MODIFIED;
        let mut declared: Option<u64> = None;
        let mut dated = false;
        for (name, value) in &parts.headers {
            // The framing and the connection's fate are this loop's to write.
            if *name == TRANSFER_ENCODING || *name == CONNECTION {
                keep &= !(*name == CONNECTION && has_token(value.as_bytes(), b"close"));
                continue;
            }
            if *name == CONTENT_LENGTH {
                if no_content {
                    continue;
                }
                match length(value.as_bytes()) {
                    Some(n) if declared.is_none() => declared = Some(n),
                    Some(n) if declared == Some(n) => continue,
                    // Lengths that disagree: no response can be framed from them.
                    _ => return Ok(false),
                }
            }
            dated |= *name == DATE;
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        // hyper writes the head without the body when the body has already ended, and
        // never polls it; so does this loop.
        let ended = bodyless || body.is_end_stream();
        let framing = if bodyless {
            Framing::Length(0)
        } else if let Some(n) = declared {
            Framing::Length(n)
        } else if ended {
            put_field(out, b"content-length", b"0");
            Framing::Length(0)
        } else if let Some(n) = body.size_hint().exact() {
            put_field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            );
            Framing::Length(n)
        } else {
            put_field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        };
        if !dated {
            out.extend_from_slice(b"date: ");
            http_date(out);
            out.extend_from_slice(b"\r\n");
        }
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");

        let mut left = match framing {
            Framing::Length(n) if !bodyless => n,
            _ => 0,
        };
        let mut trailer_block = Vec::new();
        let mut whole = true;
        // While the body waits on its upstream, the client is watched as in `answer`: one
        // that leaves ends the response (and frees its upstream) at once, not at the next
        // write that fails.
        let mut watch = self.buf.is_empty();
        if !ended {
            loop {
                let step = poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                    // Whatever is ready goes out in one write before waiting.
                    Poll::Pending if !self.out.is_empty() => Poll::Ready(Step::Flush),
                    Poll::Pending if client_left(&mut self.io, &mut self.buf, &mut watch, cx) => {
                        Poll::Ready(Step::Gone)
                    }
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
                })
                .await;
                let frame = match step {
                    Step::Flush => {
                        self.flush().await?;
                        continue;
                    }
                    Step::Gone => {
                        return Err(std::io::ErrorKind::ConnectionAborted.into());
                    }
                    Step::Frame(None) => break,
                    Step::Frame(Some(Ok(frame))) => frame,
                    Step::Frame(Some(Err(_))) => {
                        // The body broke off: what came of it goes out, and the connection
                        // closes unfinished, so the client sees it was cut.
                        whole = false;
                        break;
                    }
                };
                match frame.into_data() {
                    Ok(data) => match framing {
                        Framing::Length(_) => {
                            if data.len() as u64 > left {
                                // More than it declared: never written, the rest could
                                // be read as a response of its own.
                                whole = false;
                                break;
                            }
                            left -= data.len() as u64;
                            self.put_data(data, false).await?;
                        }
                        Framing::Chunked => self.put_data(data, true).await?,
                    },
                    Err(frame) => {
                        if let (Framing::Chunked, true, Ok(fields)) =
                            (&framing, trailers_allowed, frame.into_trailers())
                        {
                            allowed_trailers(&parts.headers, &fields, &mut trailer_block);
                        }
                    }
                }
                if body.is_end_stream() {
                    break;
                }
            }
        }
        if whole && left == 0 && matches!(framing, Framing::Chunked) {
            self.out.extend_from_slice(b"0\r\n");
            self.out.extend_from_slice(&trailer_block);
            self.out.extend_from_slice(b"\r\n");
        }
        self.flush().await?;
        Ok(keep && whole && left == 0)
    }

    /// Queue a data frame (as a chunk when `chunked`), writing what is queued first when
    /// the frame is large.
    async fn put_data(&mut self, data: Bytes, chunked: bool) -> std::io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if chunked {
            let mut size = [0u8; 16];
            self.out.extend_from_slice(hex(data.len(), &mut size));
            self.out.extend_from_slice(b"\r\n");
        }
        if data.len() <= COPY_FRAME {
            self.out.extend_from_slice(&data);
        } else {
            self.flush().await?;
            self.io.write_all(&data).await?;
            // Over TLS the frame's last records wait in the session until flushed.
            self.io.flush().await?;
        }
        if chunked {
            self.out.extend_from_slice(b"\r\n");
        }
        // A body that is always ready (a fast upstream, small frames) still goes out as it
        // comes, not held whole: as much as hyper's write buffer holds.
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        // TLS holds written records until flushed; a plain socket has nothing to do.
        self.io.flush().await
    }

    /// Let go of buffers one request made large.
    fn trim(&mut self) {
        if self.out.capacity() > KEEP_OUT {
            self.out = Vec::new();
        }
        if self.buf.is_empty() && self.buf.capacity() > KEEP_READ {
            self.buf = BytesMut::new();
        }
    }
}

enum Step {
    /// The body waits: write what is queued.
    Flush,
    /// The client closed the connection.
    Gone,
    Frame(Option<Result<http_body::Frame<Bytes>, crate::http::BoxError>>),
}

/// Room for a read of a head.
fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
}

/// While a request or its response waits: whether the client has closed the connection.
/// As hyper does (without half-close), the read side is watched until bytes come (`watch`
/// then turns off); those are the next request's, kept in `buf` for it.
fn client_left<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    watch: &mut bool,
    cx: &mut Context<'_>,
) -> bool {
    if !*watch {
        return false;
    }
    reserve_read(buf);
    match tokio_util::io::poll_read_buf(Pin::new(io), cx, buf) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => true,
        Poll::Ready(Ok(_)) => {
            *watch = false;
            false
        }
        Poll::Pending => false,
    }
}

/// Whether `bytes` (the new ones, and the three before them) may hold the blank line that
/// ends a head.
fn may_end_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// A response's `Content-Length`: one length, or the same length repeated in a list.
fn length(value: &[u8]) -> Option<u64> {
    let mut parts = value.split(|b| *b == b',').map(|p| decimal(p.trim_ascii()));
    let first = parts.next()??;
    parts.all(|p| p == Some(first)).then_some(first)
}

enum Framing {
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lower-case hex, written into `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The trailer fields a client that sent `TE: trailers` gets, as hyper sends them: those
/// the response declared in `Trailer`, and none that frames, routes or authenticates a
/// message (RFC 9110 §6.5.1).
fn allowed_trailers(head: &http::HeaderMap, fields: &http::HeaderMap, out: &mut Vec<u8>) {
    let declared = |name: &HeaderName| {
        head.get_all(TRAILER)
            .iter()
            .any(|v| has_token(v.as_bytes(), name.as_str().as_bytes()))
    };
    for (name, value) in fields {
        if declared(name) && !FORBIDDEN_TRAILERS.contains(&name.as_str()) {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Fields never sent as trailers (hyper's list).
const FORBIDDEN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "host",
    "max-forwards",
    "set-cookie",
    "trailer",
    "transfer-encoding",
    "te",
];

/// The current time as an HTTP date, formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            d.0 = secs;
            d.1 = httpdate::fmt_http_date(now).into_bytes();
        }
        out.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Parsed {
        let mut buf = BytesMut::from(text);
        parse(&mut buf, 100, 64 * 1024)
    }

    fn fast(text: &str) -> Fast {
        match parsed(text) {
            Parsed::Fast(f) => f,
            Parsed::Partial => panic!("partial: {text:?}"),
            Parsed::Other => panic!("other: {text:?}"),
        }
    }

    fn is_other(text: &str) -> bool {
        let mut buf = BytesMut::from(text);
        let before = buf.clone();
        let other = matches!(parse(&mut buf, 100, 64 * 1024), Parsed::Other);
        // What hyper gets is exactly what came.
        assert!(!other || buf == before, "{text:?} was consumed");
        other
    }

    #[test]
    fn only_plain_bodiless_http_1_1_requests_are_taken() {
        let f = fast("GET /a/b?q=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\n");
        assert_eq!(f.req.method(), Method::GET);
        assert_eq!(f.req.uri().path(), "/a/b");
        assert_eq!(f.req.uri().query(), Some("q=1"));
        assert_eq!(f.req.headers()["host"], "x");
        assert_eq!(f.req.headers()["x-y"], "z");
        assert!(!f.close && !f.trailers && !f.head);
        assert!(fast("HEAD / HTTP/1.1\r\n\r\n").head);
        assert!(fast("GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").close);
        assert!(fast("GET / HTTP/1.1\r\nTE: trailers\r\n\r\n").trailers);
        assert!(!fast("GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").close);

        for other in [
            // A body, however it is framed, or could be.
            "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET / HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: +0\r\n\r\n",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nTRANSFER-ENCODING: identity\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Upgrades, Expect, other versions and targets.
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\n\r\n",
            // Heads httparse refuses: hyper answers them.
            "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nX : a\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
        ] {
            assert!(is_other(other), "{other:?} was taken");
        }
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        assert!(matches!(parsed(""), Parsed::Partial));
    }

    #[test]
    fn limits_hand_the_head_to_hyper() {
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(is_other(&format!("GET / HTTP/1.1\r\n{many}\r\n")));
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
        assert!(matches!(parse(&mut buf, 2, 1024), Parsed::Other));
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nA: 1\r\n\r\n");
        assert!(matches!(parse(&mut buf, 100, 16), Parsed::Other));
        // A head still arriving but already over the limit is not waited for.
        let arriving = "GET / HTTP/1.1\r\nA: 1111111111111111";
        let mut buf = BytesMut::from(arriving);
        assert!(matches!(parse(&mut buf, 100, 16), Parsed::Other));
        assert_eq!(buf, arriving.as_bytes());
    }

    #[test]
    fn pipelined_requests_are_taken_one_at_a_time() {
        let mut buf = BytesMut::from(
            "GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nPOST /3 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
        );
        let Parsed::Fast(a) = parse(&mut buf, 100, 1024) else {
            panic!("first")
        };
        let Parsed::Fast(b) = parse(&mut buf, 100, 1024) else {
            panic!("second")
        };
        assert_eq!((a.req.uri().path(), b.req.uri().path()), ("/1", "/2"));
        assert!(matches!(parse(&mut buf, 100, 1024), Parsed::Other));
        assert!(buf.starts_with(b"POST /3 "));
    }

    #[test]
    fn a_head_is_parsed_again_only_once_its_end_may_have_come() {
        assert!(may_end_head(b"\r\n\r\n"));
        assert!(may_end_head(b"x\n\n"));
        assert!(!may_end_head(b"Host: x\r\nA: b\r"));
        assert!(!may_end_head(b"\r\n"));
        // However the head is split across reads, the new bytes and the three before them
        // show its end; and a head without one never looks ended.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 1..head.len() {
            assert!(may_end_head(&head[cut.saturating_sub(3)..]), "cut at {cut}");
            assert!(
                !may_end_head(&head[cut.saturating_sub(3)..head.len() - 2]),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn response_lengths_are_one_number_or_the_same_repeated() {
        assert_eq!(length(b"5"), Some(5));
        assert_eq!(length(b"5, 5,5"), Some(5));
        assert_eq!(length(b"5, 6"), None);
        assert_eq!(length(b"+5"), None);
        assert_eq!(length(b""), None);
        assert_eq!(length(b"5,"), None);
    }

    #[test]
    fn chunk_sizes_and_trailers() {
        let mut b = [0u8; 16];
        assert_eq!(hex(0, &mut b), b"0");
        assert_eq!(hex(255, &mut b), b"ff");
        assert_eq!(hex(0x10000, &mut b), b"10000");
        let mut head = http::HeaderMap::new();
        head.insert(TRAILER, "grpc-status, X-Sum".parse().unwrap());
        let mut fields = http::HeaderMap::new();
        fields.insert("grpc-status", "0".parse().unwrap());
        fields.insert("x-sum", "1".parse().unwrap());
        fields.insert("x-undeclared", "1".parse().unwrap());
        fields.insert("content-length", "1".parse().unwrap());
        let mut out = Vec::new();
        allowed_trailers(&head, &fields, &mut out);
        assert_eq!(out, b"grpc-status: 0\r\nx-sum: 1\r\n");
    }
}
