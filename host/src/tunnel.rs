//! Upgraded connections (WebSocket and other HTTP/1.1 upgrades): once the
//! upstream has answered 101, bytes are copied both ways until a side
//! closes, nothing has moved for `timeouts.upgrade_idle` (long: an hour by
//! default, not the request timeouts that would cut a quiet WebSocket), or
//! the tunnel is older than `timeouts.upgrade_max`, if set.
//!
//! A graceful shutdown waits for open tunnels as for other connections
//! (up to `timeouts.shutdown`): [`all_closed`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock;
use crate::server::Busy;
use crate::upstream::endpoint::InFlight;

/// Tunnels open in this process, and a signal when one closes.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static CLOSED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Counts one tunnel open while it lives.
struct Open;

impl Open {
    fn new() -> Open {
        OPEN.fetch_add(1, Relaxed);
        Open
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Relaxed);
        CLOSED.notify_waiters();
    }
}

/// How many tunnels are open in this process.
pub fn open() -> usize {
    OPEN.load(Relaxed)
}

/// Resolves once no tunnel is open in this process (a drain waits for it).
pub async fn all_closed() {
    loop {
        let closed = CLOSED.notified();
        tokio::pin!(closed);
        // Registered before the check, so a close in between is not missed.
        closed.as_mut().enable();
        if OPEN.load(Relaxed) == 0 {
            return;
        }
        closed.await;
    }
}

/// What keeps a tunnel open, and what it holds while open.
pub struct Tunnel {
    /// The client's side, once hyper has sent it the 101.
    pub client: OnUpgrade,
    /// The upstream's side, after its 101.
    pub upstream: OnUpgrade,
    /// No byte either way for this long closes it.
    pub idle: Duration,
    /// It closes at this age, if set.
    pub max: Option<Duration>,
    /// The client connection counts as busy (no keep-alive deadline) while open.
    pub busy: Option<Busy>,
    /// The endpoint counts it in flight while open.
    pub in_flight: InFlight,
    /// For the log.
    pub client_addr: SocketAddr,
}

impl Tunnel {
    /// Copy both ways until one of the ends above; logs how it ended.
    pub async fn run(self) {
        let Tunnel {
            client,
            upstream,
            idle,
            max,
            busy,
            in_flight,
            client_addr,
        } = self;
        let _open = Open::new();
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                return tracing::debug!(client = %client_addr, error = %e, "upgrade did not complete");
            }
        };
        let last = Arc::new(AtomicU64::new(clock::now_ms()));
        let mut client = Stamped {
            inner: TokioIo::new(client),
            last: last.clone(),
        };
        let mut upstream = TokioIo::new(upstream);
        let started = clock::now_ms();
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
                Ok((up, down)) => tracing::debug!(client = %client_addr, bytes_up = up, bytes_down = down, "upgraded connection closed"),
                Err(e) => tracing::debug!(client = %client_addr, error = %e, "upgraded connection ended with an error"),
            },
            reason = watchdog(&last, idle, max, started) => {
                tracing::info!(client = %client_addr, reason, "upgraded connection closed");
            }
        }
        drop((busy, in_flight));
    }
}

/// Resolves when the tunnel has been idle for `idle` or lived `max`.
async fn watchdog(
    last: &AtomicU64,
    idle: Duration,
    max: Option<Duration>,
    started: u64,
) -> &'static str {
    let idle_ms = idle.as_millis() as u64;
    let max_ms = max.map(|m| m.as_millis() as u64);
    loop {
        let now = clock::now_ms();
        if now.saturating_sub(last.load(Relaxed)) >= idle_ms {
            return "idle for timeouts.upgrade_idle";
        }
        if max_ms.is_some_and(|m| now.saturating_sub(started) >= m) {
            return "older than timeouts.upgrade_max";
        }
        let next_idle = last.load(Relaxed) + idle_ms;
        let next = max_ms.map_or(next_idle, |m| next_idle.min(started + m));
        // A deadline that never comes early (the clock trails by a tick).
        tokio::time::sleep_until(clock::instant_at(next + 1).into()).await;
    }
}

/// The client's side, noting the time of every byte that moves.
struct Stamped<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last.store(clock::now_ms(), Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.last.store(clock::now_ms(), Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
