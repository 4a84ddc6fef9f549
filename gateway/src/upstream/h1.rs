//! Warden's own HTTP/1.1 exchange for the common upstream request: one without a body or
//! an upgrade.
//!
//! hyper's client connection runs as a task of its own. A request goes to it over a
//! channel and the response comes back over another, so every request wakes a second task
//! and runs hyper's dispatcher on both sides of the channel. A request without a body
//! needs none of that: here the request's own future writes the head and reads the
//! response head from the socket, and the response body reads the rest. The connection
//! goes back to its pool as soon as the response has been read to its end, which for a
//! small response is before its head has even gone to the client.
//!
//! Framing follows RFC 9112 §6.3, and refuses whatever could leave the connection out of
//! step with the upstream: a response with both `Transfer-Encoding` and `Content-Length`,
//! differing lengths, a malformed chunk. A connection is reused only when its response
//! ended exactly where the framing says, nothing followed it, and the upstream did not ask
//! to close. Requests with a body, upgrades and HTTP/2 stay on hyper.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::http::{BoxError, ProxyBody};

/// A connection to an upstream, plain or TLS.
pub(super) type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Largest response head: hyper's default read limit.
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Most header fields in a response head, as hyper allows.
const MAX_HEADERS: usize = 100;
/// Fields the gateway may add to a response head (the request id, a route's response
/// headers) without its map growing.
const RESPONSE_ROOM: usize = 4;
/// How much the read buffer grows by when it is nearly full.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// Most chunk-extension bytes in one body, and the largest trailer section: hyper's limits.
const MAX_CHUNK_EXTRAS: usize = 16 * 1024;
/// A read buffer (or request-head buffer) larger than this is let go before its connection
/// idles in the pool, so that one large response does not stay resident.
const KEEP_BUFFER: usize = 64 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing to a kept connection failed: the upstream had closed it, and never saw the
    /// request. It goes again on a new connection.
    #[error("writing the request to a kept upstream connection")]
    Stale(#[source] std::io::Error),
    #[error("writing the request to the upstream")]
    Write(#[source] std::io::Error),
    #[error("reading the upstream's response")]
    Read(#[source] std::io::Error),
    #[error("the upstream closed the connection {0}")]
    Closed(&'static str),
    #[error("malformed response head from the upstream: {0}")]
    Head(httparse::Error),
    #[error("response head from the upstream over {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("response framing refused: {0}")]
    Framing(&'static str),
    #[error("malformed chunked response body: {0}")]
    Chunk(&'static str),
}

/// Whether `req` can take this path: HTTP/1.1, no body (and no header claiming one), no
/// upgrade, not `CONNECT`.
pub(super) fn takes(req: &Request<ProxyBody>) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && req.method() != Method::CONNECT
        && req.body().is_end_stream()
        && !h.contains_key(UPGRADE)
        && !h.contains_key(TRANSFER_ENCODING)
        && h.get_all(CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Where a connection goes once its response has ended cleanly.
pub(super) trait Home {
    fn keep(&self, conn: Box<Conn>);
}

/// One upstream connection with what has been read from it and not yet used.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    /// The request head, encoded here to reuse its allocation.
    head: Vec<u8>,
}

impl Conn {
    pub(super) fn new(io: Stream) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
        })
    }

    /// Whether an idle connection can take a request: the upstream has neither closed
    /// it nor sent anything unasked. A read is tried without waiting; only "nothing yet"
    /// means yes.
    pub(super) fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let io = &mut self.io;
        // Unconstrained: with the task's cooperative budget spent, tokio would answer
        // "not ready" without looking, and a closed connection would pass.
        let probe = tokio::task::unconstrained(std::future::poll_fn(|cx| {
            let mut byte = [0u8; 1];
            let mut rb = ReadBuf::new(&mut byte);
            Pin::new(&mut *io).poll_read(cx, &mut rb)
        }));
        let mut probe = std::pin::pin!(probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        probe.as_mut().poll(&mut cx).is_pending()
    }

    /// Let go of buffers a large exchange grew, before the connection idles.
    pub(super) fn trim(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        }
        if self.head.capacity() > KEEP_BUFFER {
            self.head = Vec::new();
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    async fn fill(&mut self) -> Result<usize, Error> {
        std::future::poll_fn(|cx| self.poll_fill(cx))
            .await
            .map_err(Error::Read)
    }

    /// Send `req` (which [`takes`] accepted) and read the response head. The body reads
    /// the rest; `home` gets the connection back when the response ends cleanly.
    ///
    /// `kept` says the connection carried an earlier exchange: a write that fails on it is
    /// [`Error::Stale`], and the request is handed back to go on a new connection.
    /// Otherwise the request's headers, which only the written head needed, go to `back`
    /// if asked for: a retry sends them again without a copy.
    pub(super) async fn send<H: Home>(
        mut self: Box<Self>,
        req: Request<ProxyBody>,
        home: H,
        kept: bool,
        back: Option<&mut Option<HeaderMap>>,
    ) -> Result<Response<Body<H>>, (Error, Option<Request<ProxyBody>>)> {
        encode_head(&mut self.head, &req);
        let Conn { io, head, .. } = &mut *self;
        let written = match io.write_all(head).await {
            Ok(()) => io.flush().await,
            Err(e) => Err(e),
        };
        let written = match written {
            Err(e) if kept => return Err((Error::Stale(e), Some(req))),
            other => other,
        };
        let (parts, _) = req.into_parts();
        if let Some(back) = back {
            *back = Some(parts.headers);
        }
        if let Err(e) = written {
            return Err((Error::Write(e), None));
        }
        self.receive(parts.method, home)
            .await
            .map_err(|e| (e, None))
    }

    /// Read the response head to a request with `method`.
    async fn receive<H: Home>(
        mut self: Box<Self>,
        method: Method,
        home: H,
    ) -> Result<Response<Body<H>>, Error> {
        let head = loop {
            match parse_head(&mut self.buf)? {
                // Interim responses (100 Continue, 103 Early Hints) are not forwarded.
                Some((_, len)) if len > MAX_HEAD => return Err(Error::HeadTooLarge),
                Some((h, _)) if h.status.is_informational() && h.status != 101 => continue,
                Some((h, _)) => break h,
                None if self.buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
                None => {
                    if self.fill().await? == 0 {
                        return Err(Error::Closed("before the response head"));
                    }
                }
            }
        };
        let Head {
            status,
            version,
            mut headers,
        } = head;
        let (framing, keep) = framing(&method, status, version, &mut headers)?;
        let body = match framing {
            Framing::Length(n) if self.buf.len() as u64 >= n => {
                // The whole response is here: the connection is free before the head goes
                // on, if nothing follows the body.
                let data = self.buf.split_to(n as usize).freeze();
                if keep && self.buf.is_empty() {
                    self.trim();
                    home.keep(self);
                }
                Body::Full((n > 0).then_some(data))
            }
            framing => {
                let read = match framing {
                    Framing::Length(n) => Read::Data(n, false),
                    Framing::Chunked => Read::Size,
                    // Never kept: `framing` says so for a body that runs to the close.
                    Framing::Close => Read::ToClose,
                };
                Body::Streaming(Box::new(Streaming {
                    conn: self,
                    read,
                    keep,
                    home,
                    extras: 0,
                }))
            }
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok(resp)
    }
}

/// `METHOD target HTTP/1.1`, then the headers as they are (the proxy has already removed
/// the hop-by-hop ones and set `Host`).
fn encode_head(out: &mut Vec<u8>, req: &Request<ProxyBody>) {
    out.clear();
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    // The path (never empty: "/" when the URI has none), then the query: an absolute-form
    // request for `http://host?q` has "?q" as its path-and-query, not a request target.
    out.extend_from_slice(req.uri().path().as_bytes());
    if let Some(q) = req.uri().query() {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
}

/// The response head at the front of `buf`, taken out of it, and its length; `None` until
/// all of it has arrived. Values are slices of the read buffer, not copies.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(Head, usize)>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Head(e)),
    };
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Framing("invalid status code"))?;
    let count = r.headers.len();
    crate::http::field_spans(buf, r.headers, &mut spans);
    let head = buf.split_to(len).freeze();
    let headers =
        crate::http::field_map(&head, &spans[..count], RESPONSE_ROOM).map_err(Error::Framing)?;
    Ok(Some((
        Head {
            status,
            version,
            headers,
        },
        len,
    )))
}

enum Framing {
    /// Exactly this many bytes (0: none).
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// How the body of a response to `method` is delimited (RFC 9112 §6.3), and whether the
/// connection may carry another request after it.
fn framing(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &mut HeaderMap,
) -> Result<(Framing, bool), Error> {
    let mut keep = keep_alive(version, headers);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Never asked for on this path: the proxy refuses it, and the connection is not
        // HTTP any more.
        return Ok((Framing::Length(0), false));
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Length(0), keep));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(Error::Framing("both Transfer-Encoding and Content-Length"));
        }
        if version == Version::HTTP_10 {
            return Err(Error::Framing("Transfer-Encoding in an HTTP/1.0 response"));
        }
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .peekable();
        let mut chunked = false;
        while let Some(c) = codings.next() {
            let is_chunked = c.eq_ignore_ascii_case(b"chunked");
            if is_chunked && codings.peek().is_some() {
                return Err(Error::Framing("chunked is not the final transfer coding"));
            }
            chunked = is_chunked;
        }
        return Ok(if chunked {
            (Framing::Chunked, keep)
        } else {
            (Framing::Close, false)
        });
    }
    let mut length: Option<u64> = None;
    let mut fields = 0;
    for v in headers.get_all(CONTENT_LENGTH) {
        fields += 1;
        for part in v.as_bytes().split(|b| *b == b',') {
            let n = crate::http::decimal(part.trim_ascii())
                .ok_or(Error::Framing("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Framing("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    match length {
        Some(n) => {
            if fields > 1 || headers.get(CONTENT_LENGTH).is_some_and(|v| v.len() > 20) {
                // Repeated equal values go on as one.
                headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((Framing::Length(n), keep))
        }
        None => {
            keep = false;
            Ok((Framing::Close, keep))
        }
    }
}

/// Whether the upstream lets the connection carry another request: HTTP/1.1 unless it
/// says `close`, HTTP/1.0 only if it says `keep-alive`.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| crate::http::has_token(v.as_bytes(), token))
    };
    if version == Version::HTTP_11 {
        !has(b"close")
    } else {
        has(b"keep-alive")
    }
}

/// A response body read by the request's own task.
pub enum Body<H> {
    /// Read whole with the head (or empty).
    Full(Option<Bytes>),
    /// Still arriving.
    Streaming(Box<Streaming<H>>),
    /// Ended, or failed.
    Done,
}

pub struct Streaming<H> {
    conn: Box<Conn>,
    read: Read,
    keep: bool,
    home: H,
    /// Chunk-extension bytes read so far.
    extras: usize,
}

enum Read {
    /// Bytes left of a length-delimited body (`false`) or of a chunk (`true`).
    Data(u64, bool),
    /// A chunk-size line.
    Size,
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section after the last chunk.
    Trailers,
    /// Everything until the upstream closes.
    ToClose,
    End,
}

impl<H> Streaming<H> {
    /// The next frame, or `None` at the end (`read` is then `End`).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Frame<Bytes>>, Error>> {
        loop {
            let buf = &mut self.conn.buf;
            match &mut self.read {
                Read::Data(left, chunk) => {
                    if !buf.is_empty() {
                        let n = (*left).min(buf.len() as u64);
                        *left -= n;
                        let data = buf.split_to(n as usize).freeze();
                        if *left == 0 {
                            self.read = if *chunk { Read::ChunkEnd } else { Read::End };
                        }
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                Read::ToClose => {
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Ok(Some(Frame::data(data))));
                    }
                }
                Read::Size => match chunk_size(buf)? {
                    Some((used, size, extension)) => {
                        self.extras += extension;
                        if self.extras > MAX_CHUNK_EXTRAS {
                            return Poll::Ready(Err(Error::Chunk("too many chunk extensions")));
                        }
                        buf.advance(used);
                        self.read = if size == 0 {
                            Read::Trailers
                        } else {
                            Read::Data(size, true)
                        };
                        continue;
                    }
                    None if buf.len() > MAX_CHUNK_LINE => {
                        return Poll::Ready(Err(Error::Chunk("chunk-size line too long")));
                    }
                    None => {}
                },
                Read::ChunkEnd => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return Poll::Ready(Err(Error::Chunk(
                                "chunk data not followed by CRLF",
                            )));
                        }
                        buf.advance(2);
                        self.read = Read::Size;
                        continue;
                    }
                }
                Read::Trailers => {
                    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    // Lines end in CRLF here, strictly: a bare LF is where a lenient parser
                    // upstream and this one could disagree on where the body ends.
                    let end = trailer_end(buf)?;
                    if end.is_none() && buf.len() > MAX_CHUNK_EXTRAS {
                        return Poll::Ready(Err(Error::Chunk("trailer section too large")));
                    }
                    match httparse::parse_headers(&buf[..end.unwrap_or(0)], &mut slots) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let trailers = if fields.is_empty() {
                                None
                            } else {
                                let mut map = HeaderMap::with_capacity(fields.len());
                                for f in fields.iter() {
                                    let name = HeaderName::from_bytes(f.name.as_bytes());
                                    let value = HeaderValue::from_bytes(f.value);
                                    match (name, value) {
                                        (Ok(n), Ok(v)) => {
                                            map.append(n, v);
                                        }
                                        _ => {
                                            return Poll::Ready(Err(Error::Chunk(
                                                "invalid trailer field",
                                            )));
                                        }
                                    }
                                }
                                Some(map)
                            };
                            buf.advance(used);
                            self.read = Read::End;
                            return Poll::Ready(Ok(trailers.map(Frame::trailers)));
                        }
                        Ok(httparse::Status::Partial) if end.is_some() => {
                            return Poll::Ready(Err(Error::Chunk("malformed trailer section")));
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(_) => {
                            return Poll::Ready(Err(Error::Chunk("malformed trailer section")));
                        }
                    }
                }
                Read::End => return Poll::Ready(Ok(None)),
            }
            // More bytes are needed.
            let n = ready!(self.conn.poll_fill(cx)).map_err(Error::Read)?;
            if n == 0 {
                if matches!(self.read, Read::ToClose) {
                    self.read = Read::End;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(Error::Closed("before the response body ended")));
            }
        }
    }
}

/// A chunk-size line at the front of `buf` (RFC 9112 §7.1): at least one hex digit, then
/// extensions with no control characters, then CRLF. `Some((line length, size, extension
/// bytes))` once the line is whole. Stricter than httparse's, which reads an empty line as
/// the last chunk and lets a bare LF into an extension.
fn chunk_size(buf: &[u8]) -> Result<Option<(usize, u64, usize)>, Error> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == buf.len() {
        // The line has not ended yet (or is all digits so far).
        return if digits > 16 {
            Err(Error::Chunk("chunk size too large"))
        } else {
            Ok(None)
        };
    }
    if digits == 0 {
        return Err(Error::Chunk("invalid chunk size"));
    }
    if digits > 16 {
        return Err(Error::Chunk("chunk size too large"));
    }
    let mut size = 0u64;
    for &b in &buf[..digits] {
        let d = (b as char).to_digit(16).expect("a hex digit") as u64;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(d))
            .ok_or(Error::Chunk("chunk size too large"))?;
    }
    let rest = &buf[digits..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        // Extensions so far: each byte must be one an extension may hold.
        return if rest.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)) {
            Ok(None)
        } else {
            Err(Error::Chunk("invalid chunk extension"))
        };
    };
    let ext = &rest[..cr];
    let ext_ok = ext.is_empty()
        || (ext.trim_ascii_start().first() == Some(&b';')
            && ext.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f)));
    if !ext_ok || rest[cr] != b'\r' {
        return Err(Error::Chunk("invalid chunk extension"));
    }
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((digits + cr + 2, size, ext.len()))),
        Some(_) => Err(Error::Chunk("chunk-size line not ended by CRLF")),
    }
}

/// Where the trailer section at the front of `buf` ends (just past its empty line), once it
/// has arrived; an error if a line in it ends in a bare LF.
fn trailer_end(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut line_start = 0;
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(Error::Chunk("trailer line not ended by CRLF"));
        }
        if lf + 1 - line_start == 2 {
            return Ok(Some(lf + 1));
        }
        line_start = lf + 1;
        i = lf + 1;
    }
    Ok(None)
}

impl<H: Home> http_body::Body for Body<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let s = match this {
            Body::Full(data) => {
                let frame = data.take().map(|d| Ok(Frame::data(d)));
                *this = Body::Done;
                return Poll::Ready(frame);
            }
            Body::Done => return Poll::Ready(None),
            Body::Streaming(s) => s,
        };
        let next = ready!(s.poll_next(cx));
        let ended = matches!(s.read, Read::End);
        if next.is_err() || ended {
            // Done with the connection: back to the pool if the response ended cleanly,
            // closed otherwise.
            if let Body::Streaming(mut s) = std::mem::replace(this, Body::Done)
                && ended
                && s.keep
                && s.conn.buf.is_empty()
            {
                s.conn.trim();
                s.home.keep(s.conn);
            }
        }
        Poll::Ready(next.map_err(BoxError::from).transpose())
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None) | Body::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Body::Full(None) | Body::Done => SizeHint::with_exact(0),
            Body::Streaming(s) => match s.read {
                Read::Data(left, false) => SizeHint::with_exact(left),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: impl AsRef<[u8]>) -> Result<Option<(Head, usize)>, Error> {
        parse_head(&mut BytesMut::from(text.as_ref()))
    }

    fn framed(method: Method, text: &str) -> Result<(Framing, bool), Error> {
        let (h, _) = head(text)?.expect("a whole head");
        let mut headers = h.headers;
        framing(&method, h.status, h.version, &mut headers)
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_what_could_desynchronise() {
        let ok = |m: Method, t: &str| framed(m, t).unwrap();
        assert!(matches!(
            ok(Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\nContent-Length: 5\r\n\r\n"
            ),
            (Framing::Length(5), true)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
            ),
            (Framing::Chunked, true)
        ));
        // Not chunked last: read to the close, never reused.
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"
            ),
            (Framing::Close, false)
        ));
        assert!(matches!(
            ok(Method::GET, "HTTP/1.1 200 OK\r\n\r\n"),
            (Framing::Close, false)
        ));
        assert!(matches!(
            ok(Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(0), true)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            (Framing::Length(0), true)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n"
            ),
            (Framing::Length(1), false)
        ));
        assert!(matches!(
            ok(Method::GET, "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n"
            ),
            (Framing::Length(1), true)
        ));
        assert!(matches!(
            ok(
                Method::GET,
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
            ),
            (Framing::Length(0), false)
        ));

        for refused in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(framed(Method::GET, refused), Err(Error::Framing(_))),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn response_heads_parse_strictly_and_only_when_whole() {
        assert!(
            head("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n")
                .unwrap()
                .is_none()
        );
        let (h, len) = head(b"HTTP/1.1 201 Created\r\nx-a: 1\r\nX-A: 2\r\nx-b: \x80y\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(len, 49);
        assert_eq!(h.status, 201);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.headers["x-b"].as_bytes(), b"\x80y");
        for bad in [
            "HTTP/1.1 200 OK\r\nx a: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\n folded: 1\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(head(format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
    }

    #[test]
    fn chunk_size_lines_and_trailers_are_read_strictly() {
        assert_eq!(chunk_size(b"1a\r\nrest").unwrap(), Some((4, 26, 0)));
        assert_eq!(chunk_size(b"5;a=b; c\r\n").unwrap(), Some((10, 5, 7)));
        assert_eq!(chunk_size(b"0 ;x\r\n").unwrap(), Some((6, 0, 3)));
        for partial in [&b""[..], b"1", b"1;ext", b"1;ext\r"] {
            assert_eq!(chunk_size(partial).unwrap(), None, "{partial:?}");
        }
        for bad in [
            &b"\r\n"[..],
            b" 5\r\n",
            b";x\r\n",
            b"5;a\nb\r\n",
            b"5\n",
            b"5\rx",
            b"5x\r\n",
            b"5;\x00\r\n",
            b"5;\x7f",
            b"+5\r\n",
            b"0x5\r\n",
            b"11111111111111111\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(trailer_end(b"\r\nnext").unwrap(), Some(2));
        assert_eq!(trailer_end(b"a: 1\r\nb: 2\r\n\r\n").unwrap(), Some(14));
        assert_eq!(trailer_end(b"a: 1\r\n").unwrap(), None);
        for bad in [&b"\n"[..], b"a: 1\n\r\n", b"a: 1\r\n\n"] {
            assert!(trailer_end(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_heads_are_encoded_as_given() {
        let mut req = Request::get("/a/b?c=1")
            .header("host", "up.test")
            .header("x-list", "1")
            .body(crate::http::empty())
            .unwrap();
        req.headers_mut()
            .append("x-list", HeaderValue::from_static("2"));
        let mut out = Vec::new();
        encode_head(&mut out, &req);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "GET /a/b?c=1 HTTP/1.1\r\nhost: up.test\r\nx-list: 1\r\nx-list: 2\r\n\r\n"
        );
        assert!(takes(&req));
        // An absolute-form URI with no path still goes out with one.
        let bare = Request::get("http://up.test?x=1")
            .body(crate::http::empty())
            .unwrap();
        encode_head(&mut out, &bare);
        assert!(out.starts_with(b"GET /?x=1 HTTP/1.1\r\n"));
        for refuse in [
            Request::post("/").header("content-length", "3"),
            Request::get("/").header("upgrade", "websocket"),
            Request::get("/").header("transfer-encoding", "chunked"),
            Request::connect("up.test:443"),
        ] {
            let r = refuse.body(crate::http::empty()).unwrap();
            assert!(!takes(&r));
        }
        let with_body = Request::post("/").body(crate::http::full("x")).unwrap();
        assert!(!takes(&with_body));
        let h2 = Request::get("/")
            .version(Version::HTTP_2)
            .body(crate::http::empty())
            .unwrap();
        assert!(!takes(&h2));
    }
}
