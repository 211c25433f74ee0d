//! A client connection's socket with the edge's deadlines, which hyper does
//! not keep itself:
//!
//! - a new connection must deliver its first request head within
//!   `timeouts.header` (also when it sends nothing, or a few bytes and stops);
//! - an idle keep-alive connection is closed after `timeouts.keepalive`
//!   (HTTP/2: after `timeouts.http2_idle` with no stream open), and once a
//!   next request's first bytes arrive, its head must be complete within
//!   `timeouts.header`;
//! - a write to the client that makes no progress for
//!   `timeouts.response_write` (a client that stopped reading) closes it.
//!
//! Whether a request is in flight comes from [`Activity`], which the
//! service marks per request. Deadlines are kept on the coarse clock and one
//! timer per connection is re-armed only when it fires, so a request costs
//! a few relaxed loads here, not a timer update.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::clock;

/// Requests in flight on one connection.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicU32,
    /// Requests finished so far: a change means "idle again since then".
    finished: AtomicU64,
    /// When the last one finished (coarse-clock ms).
    finished_at: AtomicU64,
}

/// Marks one request in flight until dropped (it rides on the response
/// body, so a request ends when its response has been sent).
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Activity {
    /// A request started.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        crate::metrics::get().requests_in_flight.inc();
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        crate::metrics::get().requests_in_flight.dec();
        self.0.finished_at.store(clock::now_ms(), Relaxed);
        self.0.finished.fetch_add(1, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// What the connection is waiting for, as far as reads go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head, until `deadline`.
    Head,
    /// Nothing: idle keep-alive, until `deadline`.
    Idle,
    /// Requests are in flight: their bodies have deadlines of their own.
    Busy,
}

/// The deadlines one connection keeps (from `[server.timeouts]`).
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// First bytes to complete request head.
    pub header: Duration,
    /// Idle between requests (HTTP/2: with no stream open).
    pub idle: Duration,
    /// A write making no progress.
    pub write: Duration,
    /// HTTP/2 multiplexes: bytes while idle are pings or a new stream, not
    /// the start of a head to time.
    pub multiplexed: bool,
}

/// The socket with its deadlines; see the module docs.
pub struct EdgeIo {
    stream: TcpStream,
    /// Bytes read while detecting the protocol, served before the socket's.
    replay: Bytes,
    activity: Arc<Activity>,
    limits: Deadlines,
    phase: Phase,
    /// When the current read phase ends (coarse-clock ms).
    read_deadline: u64,
    /// `Activity::finished` when last seen, to notice a request ending.
    seen_finished: u64,
    /// Since when a write has been waiting (coarse-clock ms).
    write_stalled_since: Option<u64>,
    /// Armed at or before the earliest live deadline; re-armed when it fires.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer has been polled since it was last armed (and so
    /// will wake the task).
    timer_registered: bool,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX / 2)) as u64
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl EdgeIo {
    /// A new connection: its first request head is due within `header`.
    pub fn new(stream: TcpStream, activity: Arc<Activity>, limits: Deadlines) -> EdgeIo {
        EdgeIo {
            stream,
            replay: Bytes::new(),
            activity,
            read_deadline: clock::ms_at(std::time::Instant::now() + limits.header),
            limits,
            phase: Phase::Head,
            seen_finished: 0,
            write_stalled_since: None,
            timer: None,
            timer_registered: false,
        }
    }

    /// Serve `bytes` to the next reads, before anything from the socket.
    pub fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }

    /// Switch to HTTP/2's idea of idleness: no stream open for `idle`.
    pub fn multiplexed(&mut self, idle: Duration) {
        self.limits.multiplexed = true;
        self.limits.idle = idle;
    }

    /// Update the read phase from the requests in flight and what a read returned.
    fn track_reads(&mut self, got_bytes: bool) {
        let busy = self.activity.in_flight.load(Relaxed) > 0;
        let finished = self.activity.finished.load(Relaxed);
        if busy {
            self.phase = Phase::Busy;
        } else if self.phase == Phase::Busy || finished != self.seen_finished {
            // The last request ended: idle since then.
            self.phase = Phase::Idle;
            self.read_deadline = self.activity.finished_at.load(Relaxed) + ms(self.limits.idle);
        }
        self.seen_finished = finished;
        if got_bytes && self.phase == Phase::Idle && !self.limits.multiplexed {
            // The next request has started: its head is due.
            // The coarse clock: this runs per request, and a deadline of
            // seconds does not care for the millisecond it may trail by.
            self.phase = Phase::Head;
            self.read_deadline = clock::now_ms() + ms(self.limits.header);
        }
    }

    /// The earliest deadline that applies now, if any.
    fn deadline(&self, read_pending: bool) -> Option<u64> {
        let read = (read_pending && self.phase != Phase::Busy).then_some(self.read_deadline);
        let write = self
            .write_stalled_since
            .map(|since| since + ms(self.limits.write));
        match (read, write) {
            (Some(r), Some(w)) => Some(r.min(w)),
            (r, w) => r.or(w),
        }
    }

    /// The moment the last request ends (its response body dropped) may
    /// come after hyper's last read, and nothing wakes the connection then:
    /// while busy, wake it now and then to look. The timer is only re-armed
    /// when it fires, so this costs nothing per request; an idle timeout
    /// ends at most a quarter late.
    fn recheck(&mut self, cx: &mut Context<'_>) {
        if self.phase == Phase::Busy {
            let at = clock::now_ms() + ms(self.limits.idle) / 4;
            let _ = self.wake_by(cx, at, None);
        }
    }

    /// With an operation pending: fail it if its deadline has passed, else
    /// make sure the timer will wake the task by then.
    fn check(&mut self, cx: &mut Context<'_>, deadline: u64, what: &str) -> Poll<io::Error> {
        if clock::now_ms() >= deadline {
            return Poll::Ready(timed_out(what));
        }
        self.wake_by(cx, deadline, Some(what))
    }

    /// Arm the timer no later than `deadline`; when it fires at or past it,
    /// the error for `what` (or, for a mere wake-up, `Pending` again).
    fn wake_by(
        &mut self,
        cx: &mut Context<'_>,
        deadline: u64,
        what: Option<&str>,
    ) -> Poll<io::Error> {
        let at = clock::instant_at(deadline);
        let timer = self.timer.get_or_insert_with(|| {
            self.timer_registered = false;
            Box::pin(tokio::time::sleep_until(at.into()))
        });
        if timer.deadline().into_std() > at {
            // Armed for a later deadline than this one: bring it forward.
            timer.as_mut().reset(at.into());
            self.timer_registered = false;
        }
        // Once polled, the timer wakes this connection's task when it fires;
        // until it has fired (or is re-armed) there is nothing to poll.
        if self.timer_registered && !timer.is_elapsed() {
            return Poll::Pending;
        }
        while timer.as_mut().poll(cx).is_ready() {
            // Fired: either this deadline passed (on the real clock, which the
            // coarse one may trail by a tick), or it was armed earlier.
            let now = std::time::Instant::now();
            match what {
                Some(what) if now >= at => return Poll::Ready(timed_out(what)),
                // A wake-up that came due: look again in a while.
                None if now >= at => timer.as_mut().reset((now + self.limits.idle / 4).into()),
                _ => timer.as_mut().reset(at.into()),
            }
        }
        self.timer_registered = true;
        Poll::Pending
    }
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = if buf.remaining() == 0 {
            // An empty read is hyper's question (vendor/hyper/PORTIER.md)
            // before it allocates a read buffer: has anything arrived? Answer
            // with the socket's readiness, so an idle connection waits
            // without a buffer.
            this.stream.poll_read_ready(cx)
        } else {
            Pin::new(&mut this.stream).poll_read(cx, buf)
        };
        let got_bytes = matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        this.track_reads(got_bytes);
        if poll.is_pending() {
            this.recheck(cx);
        }
        if poll.is_pending()
            && let Some(deadline) = this.deadline(true)
        {
            let what = match this.phase {
                Phase::Head => "request head not received within timeouts.header",
                _ => "idle connection closed after its keep-alive timeout",
            };
            if let Poll::Ready(e) = this.check(cx, deadline, what) {
                return Poll::Ready(Err(e));
            }
        }
        poll
    }
}

impl EdgeIo {
    /// Note a write's outcome; fail it once it has stalled too long.
    fn track_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => {
                let now = clock::now_ms();
                self.write_stalled_since.get_or_insert(now);
                if let Some(deadline) = self.deadline(false) {
                    let e = ready!(self.check(
                        cx,
                        deadline,
                        "client stopped reading: no write progress within timeouts.response_write"
                    ));
                    return Poll::Ready(Err(e));
                }
                Poll::Pending
            }
            ready => {
                self.write_stalled_since = None;
                ready
            }
        }
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.track_write(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.track_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.track_write(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, EdgeIo) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let long = Duration::from_secs(30);
        let deadlines = Deadlines {
            header: long,
            idle: long,
            write: long,
            multiplexed: false,
        };
        (
            client,
            EdgeIo::new(server, Arc::new(Activity::default()), deadlines),
        )
    }

    /// Polls an empty read once: hyper's question before it allocates a buffer.
    async fn probe_once(io: &mut EdgeIo) -> Poll<io::Result<()>> {
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *io).poll_read(cx, &mut ReadBuf::new(&mut []))))
            .await
    }

    #[tokio::test]
    async fn an_empty_read_waits_for_bytes_and_takes_none_of_them() {
        let (mut client, mut io) = pair().await;
        // A socket may report readiness spuriously (a new one does): a read
        // that would block clears it, as hyper's last read before idling did.
        let mut buf = [0u8; 8];
        let read =
            poll_fn(|cx| Poll::Ready(Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut buf))))
                .await;
        assert!(read.is_pending(), "nothing sent yet");
        assert!(probe_once(&mut io).await.is_pending(), "nothing sent yet");

        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let ready = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| Pin::new(&mut io).poll_read(cx, &mut ReadBuf::new(&mut []))),
        )
        .await
        .expect("the probe wakes when bytes arrive");
        ready.unwrap();

        let mut got = [0u8; 16];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n", "the probe consumed nothing");
    }

    #[tokio::test]
    async fn an_empty_read_answers_at_once_while_replayed_bytes_wait() {
        let (_client, mut io) = pair().await;
        io.replay(Bytes::from_static(b"PRI"));
        assert!(matches!(probe_once(&mut io).await, Poll::Ready(Ok(()))));
        let mut got = [0u8; 3];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI");
    }
}
