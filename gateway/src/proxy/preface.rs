//! The first bytes of a connection, before hyper sees them.
//!
//! RFC 9113 §3.4: an invalid HTTP/2 connection preface is a connection error of type
//! PROTOCOL_ERROR, answered with GOAWAY. hyper's HTTP/2 server closes such a connection
//! without a word, and on a plaintext port its protocol detection hands anything that is
//! not the exact preface to the HTTP/1 parser. So the gateway looks first:
//!
//! * plaintext: the first line is peeked (not consumed). A line ending in `HTTP/1.x` is
//!   HTTP/1 — hyper answers a malformed one with `400`. The exact HTTP/2 preface is HTTP/2.
//!   Anything else is neither, and gets what the only other protocol on the port says:
//!   SETTINGS, then GOAWAY(PROTOCOL_ERROR), then the connection closes. (No HTTP/1 client
//!   can be hurt by that: a request line without a version is HTTP/0.9, which would not
//!   understand a `400` with headers either.)
//! * TLS with ALPN `h2`: the 24 preface bytes are read and replayed to hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame (the server preface) followed by GOAWAY(last stream 0,
/// PROTOCOL_ERROR).
const SETTINGS_THEN_GOAWAY: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty, stream 0
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 1, // PROTOCOL_ERROR
];

/// How far the first line is looked for: a request line longer than this goes to the
/// HTTP/1 parser, which enforces its own limit.
const MAX_PEEK: usize = 8 * 1024;

/// What a plaintext connection starts with.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// HTTP/1 (or a request line too long to judge here): hyper's HTTP/1 server takes it
    /// from the first byte.
    Http1,
    /// The exact HTTP/2 preface: hyper's HTTP/2 server takes it from the first byte.
    Http2,
    /// Neither: answered with GOAWAY and closed.
    Refused,
    /// The client closed, or sent no first line within the header timeout.
    Gone,
}

/// Judge the first bytes of a plaintext connection without consuming them.
pub(super) async fn classify(stream: &TcpStream, within: Duration) -> Start {
    let mut buf = vec![0u8; MAX_PEEK];
    let judged = tokio::time::timeout(within, async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Start::Gone,
                Ok(n) => n,
            };
            match judge(&buf[..n]) {
                Some(start) => return start,
                // Peek returns what is there at once and leaves the socket readable, so
                // wait a moment for more before looking again. Only a client that sends
                // its first line in pieces ever comes here.
                None if n < MAX_PEEK => tokio::time::sleep(Duration::from_millis(1)).await,
                None => return Start::Http1,
            }
        }
    })
    .await;
    // No first line within the header timeout: cut off, as hyper would have.
    judged.unwrap_or(Start::Gone)
}

/// `None` while the bytes seen so far could still be either protocol.
fn judge(seen: &[u8]) -> Option<Start> {
    let n = seen.len().min(PREFACE.len());
    if seen[..n] == PREFACE[..n] {
        return (seen.len() >= PREFACE.len()).then_some(Start::Http2);
    }
    let line_end = seen.windows(2).position(|w| w == b"\r\n")?;
    let line = &seen[..line_end];
    let http1 = line.len() >= 9 && line[line.len() - 9..].starts_with(b" HTTP/1.");
    Some(if http1 { Start::Http1 } else { Start::Refused })
}

/// Answer a connection that is not speaking HTTP/2 where HTTP/2 is due: SETTINGS, then
/// GOAWAY(PROTOCOL_ERROR), then close.
pub(super) async fn refuse<S: AsyncWrite + Unpin>(mut stream: S) {
    let _ = stream.write_all(&SETTINGS_THEN_GOAWAY).await;
    let _ = stream.shutdown().await;
}

/// Read the HTTP/2 preface from a TLS stream that negotiated `h2`. `Ok` hands back the
/// stream with the preface to be read again; `Err` means it was wrong (and has been
/// answered) or never came.
pub(super) async fn read_h2_preface<S>(mut stream: S, within: Duration) -> Result<Replay<S>, ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = [0u8; 24];
    match tokio::time::timeout(within, stream.read_exact(&mut got)).await {
        Ok(Ok(_)) if &got == PREFACE => Ok(Replay::new(Bytes::from_static(PREFACE), stream)),
        Ok(Ok(_)) => {
            refuse(stream).await;
            Err(())
        }
        _ => Err(()),
    }
}

pin_project_lite::pin_project! {
    /// A stream whose first bytes, already read, are read again.
    pub(super) struct Replay<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Replay<S> {
    /// `inner`, read after `prefix`.
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.prefix.has_remaining() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if !this.prefix.has_remaining() {
                // An emptied slice still holds its whole buffer: let it go.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Replay<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_are_judged_once_they_can_be() {
        assert_eq!(judge(b"GET / HTTP/1.1\r\nHost: x\r\n"), Some(Start::Http1));
        assert_eq!(judge(b"POST /a?b HTTP/1.0\r\n"), Some(Start::Http1));
        assert_eq!(judge(PREFACE), Some(Start::Http2));
        assert_eq!(
            judge(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            Some(Start::Refused)
        );
        assert_eq!(
            judge(b"INVALID CONNECTION PREFACE\r\n\r\n"),
            Some(Start::Refused)
        );
        assert_eq!(judge(b"GET /\r\n"), Some(Start::Refused));
        // Not yet decidable: a partial preface, a request line still arriving.
        assert_eq!(judge(b"PRI * HT"), None);
        assert_eq!(judge(b"GET /long/path"), None);
    }
}
