//! Request and response bodies the tests send and check: a deterministic
//! pseudo-random byte stream of any length (so 10 MiB is generated as it is
//! sent, never held in memory) and a body fed from a channel (so a test decides
//! when each chunk leaves).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};

/// The one body type the test client sends and the fake backends answer with.
pub type Body = BoxBody<Bytes, io::Error>;

/// Size of the chunks a [`PatternBody`] yields.
const CHUNK: usize = 64 * 1024;

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body holding `bytes` in one frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `len` bytes of the test pattern, announced with a Content-Length.
pub fn pattern(len: u64) -> Body {
    PatternBody::new(len, true).boxed()
}

/// `len` bytes of the test pattern with no size announced, so HTTP/1.1 sends
/// it chunked.
pub fn pattern_chunked(len: u64) -> Body {
    PatternBody::new(len, false).boxed()
}

/// Hex SHA-256 of the first `len` bytes of the test pattern.
pub fn pattern_sha256(len: u64) -> String {
    let mut generator = Pattern::new(len);
    let mut hasher = Sha256::new();
    while let Some(chunk) = generator.next_chunk() {
        hasher.update(&chunk);
    }
    hex(&hasher.finalize())
}

/// Hex SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A body whose chunks the test sends through the returned channel; dropping
/// the sender ends the body.
pub fn channel() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody { rx }.boxed())
}

/// A body that yields `first` at once, then waits for one permit of `gate`
/// (taken for good) before `rest`; it ends short, without `rest`, if the gate
/// is closed first. No task of its own: it runs as the connection polls it.
pub fn held(first: Bytes, gate: Arc<Semaphore>, rest: Bytes) -> Body {
    let release = Box::pin(async move {
        let permit = gate.acquire_owned().await.ok()?;
        permit.forget();
        Some(rest)
    });
    HeldBody {
        first: Some(first),
        release: Some(release),
    }
    .boxed()
}

// === impl Pattern ===

/// The test pattern: xorshift output, so every offset has its own bytes and a
/// dropped, repeated or reordered chunk changes the hash.
struct Pattern {
    state: u64,
    remaining: u64,
}

impl Pattern {
    fn new(len: u64) -> Self {
        Self {
            state: 0x9e37_79b9_7f4a_7c15,
            remaining: len,
        }
    }

    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.remaining == 0 {
            return None;
        }
        let n = self.remaining.min(CHUNK as u64) as usize;
        let mut buf = Vec::with_capacity(n + 8);
        while buf.len() < n {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            buf.extend_from_slice(&self.state.to_le_bytes());
        }
        buf.truncate(n);
        self.remaining -= n as u64;
        Some(Bytes::from(buf))
    }
}

// === impl PatternBody ===

/// Streams the test pattern chunk by chunk as the connection asks for it.
struct PatternBody {
    pattern: Pattern,
    exact_size: bool,
}

impl PatternBody {
    fn new(len: u64, exact_size: bool) -> Self {
        Self {
            pattern: Pattern::new(len),
            exact_size,
        }
    }
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(
            self.get_mut()
                .pattern
                .next_chunk()
                .map(|chunk| Ok(Frame::data(chunk))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.pattern.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact_size {
            SizeHint::with_exact(self.pattern.remaining)
        } else {
            SizeHint::default()
        }
    }
}

// === impl HeldBody ===

/// See [`held`].
struct HeldBody {
    first: Option<Bytes>,
    /// `None` once it yielded the rest (or found the gate closed).
    release: Option<Pin<Box<dyn Future<Output = Option<Bytes>> + Send + Sync>>>,
}

impl http_body::Body for HeldBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(release) = this.release.as_mut() else {
            return Poll::Ready(None);
        };
        let rest = std::task::ready!(release.as_mut().poll(cx));
        this.release = None;
        Poll::Ready(rest.map(|r| Ok(Frame::data(r))))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.release.is_none()
    }
}

// === impl ChannelBody ===

/// A body whose chunks arrive through a channel.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
