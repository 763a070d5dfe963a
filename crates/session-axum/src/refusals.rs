//! JSON bodies for the refusals hyper writes itself.
//!
//! hyper parses each request head before any service runs; a head it cannot parse (a control byte
//! in a header value or in the request line, a malformed `Content-Length`, a head past its read
//! buffer) is answered by hyper directly with a bodiless `400`, `414` or `431` and
//! `connection: close`, and hyper has no hook to change that answer. This wrapper around the
//! connection recognises exactly that answer in what hyper writes (its status line, then only
//! `connection: close`, `content-length: 0` and `date`) and writes in its place the same status with
//! the JSON error body every other error has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The refusals hyper writes on its own, and the JSON each becomes. (hyper 1 answers a bad
/// version with a 400, never a 505.) Only hyper's can reach the wire bodiless: `serve` gives
/// every bodiless error response of the service a JSON body before it is written.
const REFUSALS: [(&[u8], &str, &str); 3] = [
    (
        b"HTTP/1.1 400 Bad Request\r\n",
        "bad_request",
        "the request is not valid HTTP/1.1",
    ),
    (
        b"HTTP/1.1 414 URI Too Long\r\n",
        "uri_too_long",
        "the request target is too long",
    ),
    (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
        "headers_too_large",
        "the request head is too large",
    ),
];

/// A connection whose writes have hyper's bare refusals replaced by JSON ones.
pub(crate) struct JsonRefusals<T> {
    inner: T,
    /// Bytes accepted from hyper (with a refusal replaced) and not yet written.
    pending: Vec<u8>,
    written: usize,
    /// The last write was taken in part: the next one continues it (a body's rest, perhaps) and
    /// is not looked into.
    continuing: bool,
}

impl<T> JsonRefusals<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            written: 0,
            continuing: false,
        }
    }
}

/// The longest write looked into: a refusal is a head of about 100 bytes, written on its own.
const MAX_REFUSAL_WRITE: usize = 512;

/// Where in `buf` a bare refusal of hyper's is, and its replacement. Only a short write that
/// starts with a refusal's status line is looked into, so a response body is never scanned (a
/// refusal flushed together with an earlier pipelined response stays as hyper wrote it).
fn replace_refusal(buf: &[u8]) -> Option<(usize, usize, Vec<u8>)> {
    if buf.len() > MAX_REFUSAL_WRITE {
        return None;
    }
    REFUSALS.iter().find_map(|(status_line, code, message)| {
        let start = 0;
        if !buf.starts_with(status_line) {
            return None;
        }
        let head_end = start + find(&buf[start..], b"\r\n\r\n")? + 4;
        let headers = &buf[start + status_line.len()..head_end - 2];
        let mut date = None;
        let (mut close, mut empty) = (false, false);
        for line in headers.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match line {
                b"connection: close\r" => close = true,
                b"content-length: 0\r" => empty = true,
                l if l.starts_with(b"date: ") => date = Some(l),
                // Any other header: not hyper's own refusal.
                _ => return None,
            }
        }
        if !(close && empty) {
            return None;
        }
        let body = format!(r#"{{"error":"{code}","message":"{message}"}}"#);
        let mut replacement = status_line.to_vec();
        replacement.extend_from_slice(
            format!(
                "content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if let Some(date) = date {
            replacement.extend_from_slice(date);
            replacement.push(b'\n');
        }
        replacement.extend_from_slice(b"\r\n");
        replacement.extend_from_slice(body.as_bytes());
        Some((start, head_end, replacement))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl<T: AsyncWrite + Unpin> JsonRefusals<T> {
    /// Writes what is pending; ready once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        let refusal = if this.continuing {
            None
        } else {
            replace_refusal(buf)
        };
        let Some((start, end, replacement)) = refusal else {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.continuing = n < buf.len();
            return Poll::Ready(Ok(n));
        };
        this.pending.extend_from_slice(&buf[..start]);
        this.pending.extend_from_slice(&replacement);
        this.pending.extend_from_slice(&buf[end..]);
        // All of `buf` is taken; what the socket does not take now goes out on the next write,
        // flush or shutdown (hyper flushes after a refusal).
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bare_refusal_is_replaced() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 26 Nov 2026 04:28:23 GMT\r\n\r\n";
        let (start, end, replacement) = replace_refusal(bare).unwrap();
        assert_eq!((start, end), (0, bare.len()));
        let text = String::from_utf8(replacement).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"));
        assert!(
            text.contains("date: Thu, 26 Nov 2026 04:28:23 GMT\r\n\r\n{\"error\":\"bad_request\"")
        );
        let length: usize = text
            .split("content-length: ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, text.split("\r\n\r\n").nth(1).unwrap().len());
        // A 400 with other headers (a content type) is not hyper's refusal: left alone.
        let handler = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        assert!(replace_refusal(handler).is_none());
        // Only a write that starts with the refusal: a body is never scanned.
        let mut both = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        both.extend_from_slice(bare);
        assert!(replace_refusal(&both).is_none());
    }
}
