//! An endpoint's connections: connect, keep idle ones per worker, cap the
//! open ones.
//!
//! Each worker thread has its own idle list (like nginx's per-worker
//! `keepalive`), so a request takes a connection its own event loop
//! drives and never waits on another thread; the lists are mutexes only
//! so that a reload or the idle sweep can empty them from elsewhere.
//! HTTP/2 endpoints get one shared connection per worker instead.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::conn::H1;
use crate::body::ProxyBody;
use crate::clock;
use crate::manifest::{self, Protocol};
use crate::tls::UpstreamConnector;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tell the pools which worker this thread is (set once per worker thread).
pub fn set_worker(id: usize) {
    WORKER.with(|w| w.set(id));
}

fn worker() -> usize {
    WORKER.with(|w| w.get())
}

/// A connection's socket: plain TCP, or TLS over it.
pub enum Io {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: its state is large, the plain case should not pay for it).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connect to `address` within `timeout`, with TLS when `tls` says so.
pub async fn connect_io(
    address: &Authority,
    timeout: Duration,
    tls: Option<&UpstreamConnector>,
) -> Result<Io, ConnectError> {
    let connected = tokio::time::timeout(timeout, async {
        let stream = TcpStream::connect(address.as_str()).await.map_err(|e| {
            if local_exhaustion(&e) {
                ConnectError::Local(e)
            } else {
                ConnectError::Failed(e)
            }
        })?;
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        match tls {
            None => Ok(Io::Plain(stream)),
            Some(tls) => tls
                .connect(address.host(), stream)
                .await
                .map(|s| Io::Tls(Box::new(s)))
                .map_err(ConnectError::Tls),
        }
    });
    connected.await.map_err(|_| ConnectError::TimedOut)?
}

/// A connection ready for a request.
pub enum Conn {
    /// HTTP/1.1: this request's alone until its response body ends.
    H1(Box<H1>),
    /// HTTP/2: shared; the sender is a handle onto the worker's connection.
    H2(http2::SendRequest<ProxyBody>),
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The endpoint refused, or the connection attempt failed.
    #[error("connect failed: {0}")]
    Failed(std::io::Error),
    /// This process is out of descriptors, ports or memory: not the endpoint's fault.
    #[error("connect failed for want of local resources: {0}")]
    Local(std::io::Error),
    /// The connection did not complete within `connect_timeout`.
    #[error("connect timed out")]
    TimedOut,
    /// `pool.max_connections` are open and none came free within `pool.queue_timeout`.
    #[error("all pool.max_connections connections are busy")]
    Busy,
    /// The HTTP/2 handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The TLS handshake failed (the certificate, most often).
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// Counts a connection as open until dropped, and wakes a request waiting
/// for room under `max_connections`.
pub struct OpenSlot(Arc<Counters>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.freed.notify_one();
    }
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU32,
    freed: Notify,
    connects: AtomicU64,
}

/// An endpoint's connections.
pub struct Pool {
    // Boxed: a connection moves between the pool and a response body,
    // which must stay small; a box moves as one pointer.
    #[allow(clippy::vec_box)]
    idle: Box<[Mutex<Vec<Box<H1>>>]>,
    h2: Box<[Mutex<Option<http2::SendRequest<ProxyBody>>>]>,
    counters: Arc<Counters>,
    max_idle: AtomicUsize,
    idle_timeout_ms: AtomicU64,
    max_open: AtomicU32,
    protocol: AtomicU8,
    /// TLS to the endpoint, and the settings it was made from (a change
    /// closes the idle connections made under the old ones).
    tls: arc_swap::ArcSwapOption<UpstreamConnector>,
    tls_settings: Mutex<Option<crate::manifest::UpstreamTls>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("open", &self.open())
            .field("idle", &self.idle_count())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    /// An empty pool with one idle list per worker.
    pub fn new(workers: usize) -> Pool {
        let d = manifest::Pool::default();
        Pool {
            idle: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            h2: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            counters: Arc::default(),
            max_idle: AtomicUsize::new(d.max_idle),
            idle_timeout_ms: AtomicU64::new(d.idle_timeout.as_millis() as u64),
            max_open: AtomicU32::new(d.max_connections),
            protocol: AtomicU8::new(Protocol::Http1 as u8),
            tls: arc_swap::ArcSwapOption::empty(),
            tls_settings: Mutex::new(None),
        }
    }

    /// Take a manifest's settings. A change of protocol or of TLS closes
    /// the idle connections, which were made under the old ones.
    pub fn configure(
        &self,
        settings: &manifest::Pool,
        protocol: Protocol,
        tls: Option<(&crate::manifest::UpstreamTls, Arc<UpstreamConnector>)>,
    ) {
        self.max_idle.store(settings.max_idle, Relaxed);
        self.idle_timeout_ms
            .store(settings.idle_timeout.as_millis() as u64, Relaxed);
        self.max_open.store(settings.max_connections, Relaxed);
        let changed = {
            let mut current = lock(&self.tls_settings);
            let wanted = tls.as_ref().map(|(s, _)| (*s).clone());
            let changed = *current != wanted;
            *current = wanted;
            changed
        };
        self.tls.store(tls.map(|(_, c)| c));
        if self.protocol.swap(protocol as u8, Relaxed) != protocol as u8 || changed {
            self.clear();
        }
    }

    /// Whether the endpoint speaks HTTP/2 (h2c or h2).
    pub fn http2(&self) -> bool {
        self.protocol.load(Relaxed) != Protocol::Http1 as u8
    }

    /// The TLS connector, when the endpoint speaks TLS.
    pub fn tls(&self) -> Option<Arc<UpstreamConnector>> {
        self.tls.load_full()
    }

    /// Close every idle connection.
    pub fn clear(&self) {
        for list in &self.idle {
            lock(list).clear();
        }
        for h2 in &self.h2 {
            lock(h2).take();
        }
    }

    /// Close idle connections unused for `idle_timeout` (the sweep).
    pub fn close_expired(&self) {
        let now = clock::now_ms();
        let timeout = self.idle_timeout_ms.load(Relaxed);
        for list in &self.idle {
            lock(list).retain(|c| now.saturating_sub(c.idle_since) < timeout);
        }
    }

    /// Connections open now (idle and in use, all workers).
    pub fn open(&self) -> u32 {
        self.counters.open.load(Relaxed)
    }

    /// Idle connections now (all workers).
    pub fn idle_count(&self) -> usize {
        self.idle.iter().map(|l| lock(l).len()).sum()
    }

    /// Connections made since the process started.
    pub fn connects(&self) -> u64 {
        self.counters.connects.load(Relaxed)
    }

    /// This worker's most recently used idle HTTP/1.1 connection that is
    /// still open, if any: the request path's common case, with no await.
    pub fn idle(&self, up: &manifest::Upstream) -> Option<Box<H1>> {
        if up.protocol != Protocol::Http1 {
            return None;
        }
        let slot = worker() % self.idle.len();
        let now = clock::now_ms();
        let timeout = self.idle_timeout_ms.load(Relaxed);
        loop {
            // Taken out of the lock before it is polled.
            let Some(mut c) = lock(&self.idle[slot]).pop() else {
                break;
            };
            let idle = now.saturating_sub(c.idle_since);
            // One put back this very millisecond was checked then; a close
            // that slipped in since makes hyper hand the request back unsent,
            // and it goes again on a new connection.
            if idle < timeout && (idle == 0 || c.usable()) {
                c.reused = true;
                return Some(c);
            }
        }
        None
    }

    /// A connection to `address` when [`idle`](Self::idle) had none: the
    /// worker's shared HTTP/2 connection, or a new one.
    pub async fn get(
        &self,
        address: &Authority,
        up: &manifest::Upstream,
    ) -> Result<Conn, ConnectError> {
        let slot = worker() % self.idle.len();
        if up.protocol != Protocol::Http1 {
            return self.h2(slot, address, up).await;
        }
        let (io, open) = self.connect(address, up).await?;
        let (send, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        Ok(Conn::H1(Box::new(H1::new(send, conn, open))))
    }

    /// Put a connection whose exchange ended back for reuse, if it is
    /// idle and open, there is room, and the endpoint is still in a manifest.
    pub fn put(&self, mut conn: Box<H1>, retired: bool) {
        if retired || !conn.usable() {
            return;
        }
        conn.idle_since = clock::now_ms();
        let mut list = lock(&self.idle[worker() % self.idle.len()]);
        if list.len() < self.max_idle.load(Relaxed) {
            list.push(conn);
        }
    }

    async fn h2(
        &self,
        slot: usize,
        address: &Authority,
        up: &manifest::Upstream,
    ) -> Result<Conn, ConnectError> {
        if let Some(send) = lock(&self.h2[slot]).as_ref()
            && !send.is_closed()
        {
            return Ok(Conn::H2(send.clone()));
        }
        let (io, open) = self.connect(address, up).await?;
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        let (upstream, endpoint) = (up.name.clone(), address.clone());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%upstream, %endpoint, error = %e, "HTTP/2 upstream connection ended");
            }
            drop(open);
        });
        *lock(&self.h2[slot]) = Some(send.clone());
        Ok(Conn::H2(send))
    }

    /// A new TCP connection within `max_connections` and `connect_timeout`
    /// that is never pooled (an upgrade's, which becomes a tunnel).
    pub async fn dial(
        &self,
        address: &Authority,
        up: &manifest::Upstream,
    ) -> Result<(TokioIo<Io>, OpenSlot), ConnectError> {
        self.connect(address, up).await
    }

    /// A new connection within `max_connections` and `connect_timeout`.
    async fn connect(
        &self,
        address: &Authority,
        up: &manifest::Upstream,
    ) -> Result<(TokioIo<Io>, OpenSlot), ConnectError> {
        let open = self.room(up.pool.queue_timeout).await?;
        let tls = self.tls();
        let io = connect_io(address, up.connect_timeout, tls.as_deref()).await?;
        self.counters.connects.fetch_add(1, Relaxed);
        Ok((TokioIo::new(io), open))
    }

    /// Count one more open connection, waiting up to `wait` for room under
    /// `max_connections`.
    async fn room(&self, wait: Duration) -> Result<OpenSlot, ConnectError> {
        let c = &self.counters;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = c.freed.notified();
            let max = self.max_open.load(Relaxed);
            let taken = c
                .open
                .fetch_update(Relaxed, Relaxed, |n| (max == 0 || n < max).then_some(n + 1));
            if taken.is_ok() {
                return Ok(OpenSlot(c.clone()));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(ConnectError::Busy);
            }
        }
    }
}

/// Whether a failed connect failed for want of local resources: file
/// descriptors (EMFILE, ENFILE), buffers or memory (ENOBUFS, ENOMEM) or
/// ephemeral ports (EADDRNOTAVAIL). Linux's numbers.
pub fn local_exhaustion(e: &std::io::Error) -> bool {
    const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
    e.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_local_but_a_refusal_is_not() {
        assert!(local_exhaustion(&std::io::Error::from_raw_os_error(24)));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!local_exhaustion(&refused));
    }
}
