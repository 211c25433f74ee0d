//! The response body type and the access log written when a body ends.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

/// Either a body streamed through from a peer or one the proxy made itself.
/// Used in both directions: responses to clients, requests to upstreams.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the other side, never buffered.
    Streamed(Incoming),
    /// Generated here (errors, plugin responses).
    Full(Full<Bytes>),
}

impl ProxyBody {
    /// A body from static or owned bytes.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Full::new(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
        }
    }
}

/// What the access log says about one request.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request arrived.
    pub start: Instant,
    /// The client.
    pub client: SocketAddr,
    /// Method as received.
    pub method: Method,
    /// Target as received (before any rewrite).
    pub uri: Uri,
    /// Status sent.
    pub status: StatusCode,
    /// The endpoint that served it, if one did.
    pub upstream: Option<http::uri::Authority>,
}

/// A response body that counts bytes and writes the access log line when the
/// body finishes or is dropped (client gone): the line has the real duration
/// and size, not the time to first byte.
#[derive(Debug)]
pub struct Logged {
    inner: ProxyBody,
    bytes: u64,
    record: Option<AccessRecord>,
}

impl Logged {
    /// Wrap a body; `record` of `None` disables the log line.
    pub fn new(inner: ProxyBody, record: Option<AccessRecord>) -> Logged {
        Logged {
            inner,
            bytes: 0,
            record,
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(d) = frame.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        poll
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let complete = self.inner.is_end_stream();
        tracing::info!(
            target: "portier::access",
            client = %r.client,
            method = %r.method,
            path = %r.uri,
            status = r.status.as_u16(),
            duration_ms = format_args!("{:.3}", r.start.elapsed().as_secs_f64() * 1000.0),
            upstream = r.upstream.as_ref().map_or("-", |a| a.as_str()),
            bytes = self.bytes,
            complete,
        );
    }
}
