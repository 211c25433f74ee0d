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
        }
    }

    /// Take a manifest's settings. A change of protocol closes the idle
    /// connections, which speak the old one.
    pub fn configure(&self, settings: &manifest::Pool, protocol: Protocol) {
        self.max_idle.store(settings.max_idle, Relaxed);
        self.idle_timeout_ms
            .store(settings.idle_timeout.as_millis() as u64, Relaxed);
        self.max_open.store(settings.max_connections, Relaxed);
        if self.protocol.swap(protocol as u8, Relaxed) != protocol as u8 {
            self.clear();
        }
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
        if up.protocol == Protocol::H2c {
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
    ) -> Result<(TokioIo<TcpStream>, OpenSlot), ConnectError> {
        self.connect(address, up).await
    }

    /// A new TCP connection within `max_connections` and `connect_timeout`.
    async fn connect(
        &self,
        address: &Authority,
        up: &manifest::Upstream,
    ) -> Result<(TokioIo<TcpStream>, OpenSlot), ConnectError> {
        let open = self.room(up.pool.queue_timeout).await?;
        let stream = tokio::time::timeout(up.connect_timeout, TcpStream::connect(address.as_str()))
            .await
            .map_err(|_| ConnectError::TimedOut)?
            .map_err(|e| {
                if local_exhaustion(&e) {
                    ConnectError::Local(e)
                } else {
                    ConnectError::Failed(e)
                }
            })?;
        self.counters.connects.fetch_add(1, Relaxed);
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok((TokioIo::new(stream), open))
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
