//! Bodies through the proxy, and the access log written when one ends.
//!
//! - [`Watched`]: a body streamed from a peer under a size limit and an idle
//!   deadline: a client's request body (`limits.max_request_body`,
//!   `timeouts.request_body`) or an upstream's response body
//!   (`timeouts.upstream_body`). What stopped it is kept in a
//!   [`BodyOutcome`], so the proxy answers 413, 400 or 408 instead of
//!   blaming the upstream.
//! - [`ProxyBody`]: a watched body or one the proxy made itself.
//! - [`Logged`]: the response body to the client, which writes the access
//!   log line when it ends or is dropped.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::access::Finish;
use crate::plugin::heads::BodyPrefix;
use crate::server::Busy;
use crate::upstream::conn::UpstreamBody;

/// Any body error: the peer's, or the proxy's reason for cutting it off.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Either a body streamed through from a peer or one the proxy made itself.
/// Used in both directions: responses to clients, requests to upstreams.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the client, never buffered.
    Streamed(Watched),
    /// Streamed from an upstream, driving its connection.
    Upstream(Watched<UpstreamBody>),
    /// Generated here (errors, plugin responses), or from the cache.
    Full(Full<Bytes>),
    /// An upstream's response the cache keeps a copy of as it streams
    /// (boxed: rare, and the enum rides in every response).
    Recorded(Box<crate::cache::record::Recording>),
    /// A body of another kind: a handler component's response, a handler's
    /// outgoing request.
    Boxed(http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>),
}

impl ProxyBody {
    /// A body from static or owned bytes.
    pub fn full(b: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Full::new(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Recorded(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ProxyBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(b) => b.is_end_stream(),
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Recorded(b) => b.is_end_stream(),
            ProxyBody::Boxed(b) => b.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(b) => b.size_hint(),
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Recorded(b) => b.size_hint(),
            ProxyBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// Why a watched body stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// It passed its size limit.
    TooLarge = 1,
    /// Its peer sent nothing for the idle deadline.
    Stalled = 2,
    /// Its peer broke the framing (a bad chunk size) or the connection.
    Broken = 3,
}

/// What became of a watched body, readable by whoever handles the error it
/// caused (a failed upstream request, for a client's body), and how much of
/// it was read (the access log's `bytes_in`).
#[derive(Debug, Default)]
pub struct BodyOutcome {
    cut: AtomicU8,
    bytes: AtomicU64,
}

impl BodyOutcome {
    /// Bytes of data read from it so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Why the body was cut off, if it was.
    pub fn cut(&self) -> Option<Cut> {
        match self.cut.load(Relaxed) {
            1 => Some(Cut::TooLarge),
            2 => Some(Cut::Stalled),
            3 => Some(Cut::Broken),
            _ => None,
        }
    }

    fn set(&self, cut: Cut) {
        self.cut.store(cut as u8, Relaxed);
    }
}

/// The error a watched body ends with when the proxy cuts it off.
#[derive(Debug)]
pub struct CutError(pub Cut);

impl fmt::Display for CutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Cut::TooLarge => "body larger than its limit",
            Cut::Stalled => "body stalled past its idle timeout",
            Cut::Broken => "body broken by its peer",
        })
    }
}

impl std::error::Error for CutError {}

/// A body streamed from a peer, with a size limit and an idle deadline.
/// The deadline counts only time the body's reader waits on the peer, not
/// time the reader itself is slow (backpressure is not the peer's fault).
pub struct Watched<B = Incoming> {
    inner: B,
    /// Frames read ahead by [`Watched::first_frame`] and
    /// [`Watched::read_prefix`], served first (boxed: a frame can hold
    /// trailers, and this struct rides in every response: 8 bytes here
    /// rather than a `VecDeque`'s 32).
    #[allow(clippy::box_collection)]
    ahead: Option<Box<VecDeque<Frame<Bytes>>>>,
    limit: u64,
    seen: u64,
    idle: Duration,
    /// Since when the reader has been waiting. The real clock, read only
    /// when a wait begins: the deadline must never come early.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    outcome: Option<Arc<BodyOutcome>>,
}

impl<B> fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("limit", &self.limit)
            .field("seen", &self.seen)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl Watched {
    /// A client's request body: at most `limit` bytes (`None`: no limit),
    /// no pause longer than `idle`; `outcome` learns why it was cut off.
    pub fn request(
        inner: Incoming,
        limit: Option<u64>,
        idle: Duration,
        outcome: Arc<BodyOutcome>,
    ) -> Watched {
        Watched {
            inner,
            ahead: None,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            idle,
            waiting_since: None,
            timer: None,
            outcome: Some(outcome),
        }
    }
}

impl Watched<UpstreamBody> {
    /// An upstream's response body: no pause longer than `idle`.
    pub fn response(inner: UpstreamBody, idle: Duration) -> Watched<UpstreamBody> {
        Watched {
            inner,
            ahead: None,
            limit: u64::MAX,
            seen: 0,
            idle,
            waiting_since: None,
            timer: None,
            outcome: None,
        }
    }
}

impl<B> Watched<B> {
    fn cut(&self, cut: Cut) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(o) = &self.outcome {
            o.set(cut);
        }
        Poll::Ready(Some(Err(Box::new(CutError(cut)))))
    }

    /// Nothing arrived: cut the body off once the peer has kept us waiting
    /// for `idle`; until then make sure a timer wakes us by that time.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let since = *self.waiting_since.get_or_insert_with(Instant::now);
        let due = since + self.idle;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
        if timer.deadline().into_std() > due {
            timer.as_mut().reset(due.into());
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= due {
                return self.cut(Cut::Stalled);
            }
            // Armed for an earlier wait that ended since.
            timer.as_mut().reset(due.into());
        }
        Poll::Pending
    }
}

impl Watched {
    /// Read the first frame ahead (it is served first later): a body that
    /// breaks, stalls or overflows at once is refused before a byte of the
    /// request reaches an upstream. `Err` says why.
    pub async fn first_frame(&mut self) -> Result<(), Cut> {
        let first = std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await;
        match first {
            Some(Ok(frame)) => {
                self.ahead.get_or_insert_default().push_back(frame);
                Ok(())
            }
            Some(Err(_)) => Err(self.why_cut()),
            None => Ok(()),
        }
    }

    /// Read ahead until at least `want` bytes of data arrived or the body
    /// ended (everything read is served again later): the start of the body
    /// for filters that asked to see it, and whether it is the whole body.
    pub async fn read_prefix(&mut self, want: usize) -> Result<BodyPrefix, Cut> {
        let mut frames: VecDeque<Frame<Bytes>> = self.ahead.take().map(|b| *b).unwrap_or_default();
        let mut data = BytesMut::new();
        for f in &frames {
            if let Some(d) = f.data_ref() {
                data.extend_from_slice(d);
            }
        }
        let mut complete = false;
        while data.len() < want {
            if frames.back().is_some_and(|f| f.is_trailers()) {
                complete = true;
                break;
            }
            // `ahead` is taken: this reads on, counting bytes and time as
            // reading the body does.
            match std::future::poll_fn(|cx| Pin::new(&mut *self).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        data.extend_from_slice(d);
                    }
                    frames.push_back(frame);
                }
                Some(Err(_)) => return Err(self.why_cut()),
                None => {
                    complete = true;
                    break;
                }
            }
        }
        complete |= self.inner.is_end_stream();
        if !frames.is_empty() {
            self.ahead = Some(Box::new(frames));
        }
        Ok(BodyPrefix {
            bytes: data.freeze(),
            complete,
        })
    }

    /// Why the body failed: the cut recorded, or a broken stream.
    fn why_cut(&self) -> Cut {
        self.outcome
            .as_ref()
            .and_then(|o| o.cut())
            .unwrap_or(Cut::Broken)
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(ahead) = &mut this.ahead {
            let frame = ahead.pop_front();
            if ahead.is_empty() {
                this.ahead = None;
            }
            if let Some(frame) = frame {
                return Poll::Ready(Some(Ok(frame)));
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting_since = None;
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(o) = &this.outcome {
                        o.bytes.store(this.seen, Relaxed);
                    }
                    if this.seen > this.limit {
                        return this.cut(Cut::TooLarge);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(o) = &this.outcome {
                    o.set(Cut::Broken);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => this.waiting(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        let ahead = self.ahead.as_ref().map_or(0, |frames| {
            frames
                .iter()
                .filter_map(Frame::data_ref)
                .map(|d| d.len() as u64)
                .sum()
        });
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + ahead);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + ahead);
        }
        hint
    }
}

/// A response body that counts bytes and, when it finishes or is dropped
/// (client gone), finishes its request: metrics and the access log line.
#[derive(Debug)]
pub struct Logged {
    inner: ProxyBody,
    bytes: u64,
    /// Boxed: the response moves through hyper several times; one word
    /// here, not three hundred bytes.
    finish: Option<Box<Finish>>,
    /// The request counts as in flight on its connection until this drops.
    busy: Option<Busy>,
}

impl Logged {
    /// Wrap a body; `finish` of `None` counts and logs nothing.
    pub fn new(inner: ProxyBody, finish: Option<Box<Finish>>) -> Logged {
        Logged {
            inner,
            bytes: 0,
            finish,
            busy: None,
        }
    }

    /// Keep the request marked in flight on its connection until the body ends.
    pub fn holding(mut self, busy: Busy) -> Logged {
        self.busy = Some(busy);
        self
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &poll
            && let Some(d) = frame.data_ref()
        {
            this.bytes += d.len() as u64;
        }
        if let Poll::Ready(Some(Err(e))) = &poll {
            // The client gets a cut-off response; say why, once.
            tracing::warn!(error = %e, "response body cut off");
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
        if let Some(f) = self.finish.take() {
            f.done(self.bytes, self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every response carries one through hyper's layers, moved at each:
    /// keep it small (it was 416 bytes before the record and the read-ahead
    /// frame were boxed).
    #[test]
    fn the_response_body_stays_small() {
        assert!(
            std::mem::size_of::<Logged>() <= 160,
            "{}",
            std::mem::size_of::<Logged>()
        );
    }
}
