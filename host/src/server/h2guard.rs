//! HTTP/2 abuse that h2 does not bound by itself, watched at the frame
//! level, and every connection closed for abuse counted by cause.
//!
//! h2 (under hyper) already answers GOAWAY `ENHANCE_YOUR_CALM` to too many
//! streams reset before they were accepted (rapid reset, CVE-2023-44487),
//! too many streams it had to reset for the client's own errors
//! (MadeYouReset, CVE-2025-8671) and CONTINUATION floods; `[server.http2]`
//! sets those limits. Two kinds of abuse stay under them:
//!
//! - a client that cancels most of the streams it opens *after* they were
//!   accepted: each one started a request through the pipeline, so resets
//!   freeing the concurrency slots make the work unbounded (the form of
//!   rapid reset h2's count misses). Once a connection has opened
//!   [`MIN_STREAMS_FOR_RESET_RATIO`] streams, client resets past
//!   `max_reset_ratio` of them close it (Envoy's premature-reset rule);
//! - frames that cost work but carry no request: PING, SETTINGS, PRIORITY,
//!   WINDOW_UPDATE, empty DATA, unknown types (CVE-2019-9512/9515/9516/9518).
//!   Each costs one unit of a budget of `control_frame_budget`; every HEADERS
//!   or DATA frame the proxy sends earns two back (a client acknowledges
//!   data with WINDOW_UPDATEs and BDP pings), and the whole budget comes back
//!   every ten seconds (keep-alive pings). A connection that runs it dry is
//!   flooding.
//!
//! [`Guard`] sits between the socket (or TLS) and hyper and reads the 9-byte
//! head of every frame each way; payloads are skipped, never copied. When a
//! rule trips, it writes GOAWAY `ENHANCE_YOUR_CALM` at the next frame
//! boundary of the proxy's own output and ends the connection. GOAWAYs that
//! h2 sends with an error code pass through it too, so all causes are
//! counted in one place ([`abuse_status`], in `/status`).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock;
use crate::manifest::Http2;

/// A connection's reset ratio is judged only after this many streams.
pub const MIN_STREAMS_FOR_RESET_RATIO: u64 = 100;

/// The control-frame budget refills completely over this long.
const REFILL_MS: u64 = 10_000;

/// The client connection preface (RFC 9113 §3.4), before its first frame.
const PREFACE_LEN: usize = 24;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const NO_ERROR: u32 = 0x0;

/// Why a connection was closed for abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Streams cancelled by the client faster than it lets them finish
    /// (ours, or h2's `too_many_resets`).
    RapidReset,
    /// Streams the proxy had to reset for the client's errors (h2's
    /// `too_many_internal_resets`).
    MadeYouReset,
    /// CONTINUATION frames past the header list limit (h2).
    ContinuationFlood,
    /// PING, SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA... (ours).
    ControlFlood,
    /// Too many DATA frames for the data they carry (h2).
    DataFlood,
    /// Another connection error (h2: PROTOCOL_ERROR, FRAME_SIZE_ERROR...).
    ProtocolError,
}

const CAUSES: [Cause; 6] = [
    Cause::RapidReset,
    Cause::MadeYouReset,
    Cause::ContinuationFlood,
    Cause::ControlFlood,
    Cause::DataFlood,
    Cause::ProtocolError,
];

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::RapidReset => "rapid_reset",
            Cause::MadeYouReset => "made_you_reset",
            Cause::ContinuationFlood => "continuation_flood",
            Cause::ControlFlood => "control_frame_flood",
            Cause::DataFlood => "data_frame_flood",
            Cause::ProtocolError => "protocol_error",
        }
    }

    /// The cause of a GOAWAY h2 sent, from its error code and debug data.
    fn of_goaway(code: u32, debug: &[u8]) -> Cause {
        match (code, debug) {
            (ENHANCE_YOUR_CALM, b"too_many_resets") => Cause::RapidReset,
            (ENHANCE_YOUR_CALM, b"too_many_internal_resets") => Cause::MadeYouReset,
            (ENHANCE_YOUR_CALM, b"too_many_continuations") => Cause::ContinuationFlood,
            (ENHANCE_YOUR_CALM, b"too_many_data_frames") => Cause::DataFlood,
            (ENHANCE_YOUR_CALM, _) => Cause::ControlFlood,
            _ => Cause::ProtocolError,
        }
    }

    fn count(self) {
        CLOSED[self as usize].fetch_add(1, Relaxed);
    }
}

/// HTTP/2 connections closed for abuse since the process started, by cause.
static CLOSED: [AtomicU64; CAUSES.len()] = [const { AtomicU64::new(0) }; CAUSES.len()];

/// `/status`: `{"rapid_reset": 0, "made_you_reset": 0, ...}`.
pub fn abuse_status() -> serde_json::Value {
    CAUSES
        .iter()
        .map(|c| {
            (
                c.as_str().to_owned(),
                CLOSED[*c as usize].load(Relaxed).into(),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// One frame head.
#[derive(Debug, Clone, Copy)]
struct Head {
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
}

/// What the frame reader found.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A frame's head (its payload is skipped).
    Head(Head),
    /// A GOAWAY's error code and the start of its debug data.
    GoAway {
        code: u32,
        debug: [u8; GOAWAY_DEBUG],
        debug_len: usize,
    },
}

/// Debug data kept from a GOAWAY (h2's causes are shorter).
const GOAWAY_DEBUG: usize = 32;

/// Finds frame heads in one direction's byte stream, fed as it passes.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes still to pass before the next head: the preface, or the
    /// current frame's payload.
    skip: usize,
    head: [u8; 9],
    /// Bytes of `head` so far.
    have: usize,
    /// A GOAWAY payload being read: its first bytes, how many are wanted.
    goaway: Option<([u8; 8 + GOAWAY_DEBUG], usize, usize)>,
}

impl Frames {
    fn after_preface() -> Frames {
        Frames {
            skip: PREFACE_LEN,
            ..Frames::default()
        }
    }

    /// Whether the bytes so far end exactly where a frame ended.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.goaway.is_none()
    }

    /// Bytes left of the frame under way (0 at a boundary).
    fn rest_of_frame(&self) -> usize {
        if self.have > 0 && self.have < 3 {
            // Not even the length yet: finish the head, then see.
            9 - self.have
        } else if self.have > 0 {
            let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
            9 - self.have + len as usize
        } else {
            self.skip + self.goaway.map_or(0, |(_, want, got)| want - got)
        }
    }

    /// Consume `bytes` up to the next event.
    fn next(&mut self, bytes: &mut &[u8]) -> Option<Event> {
        if let Some((buf, want, got)) = &mut self.goaway {
            let n = (*want - *got).min(bytes.len());
            buf[*got..*got + n].copy_from_slice(&bytes[..n]);
            *got += n;
            self.skip -= n;
            *bytes = &bytes[n..];
            if *got < *want {
                return None;
            }
            let (buf, want, _) = self.goaway.take()?;
            let mut debug = [0; GOAWAY_DEBUG];
            let debug_len = want.saturating_sub(8);
            debug[..debug_len].copy_from_slice(&buf[8..want]);
            return Some(Event::GoAway {
                code: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                debug,
                debug_len,
            });
        }
        if self.skip > 0 {
            let n = self.skip.min(bytes.len());
            self.skip -= n;
            *bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return None;
        }
        let n = (9 - self.have).min(bytes.len());
        self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
        self.have += n;
        *bytes = &bytes[n..];
        if self.have < 9 {
            return None;
        }
        self.have = 0;
        let h = self.head;
        let head = Head {
            len: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
        };
        self.skip = head.len as usize;
        if head.kind == GOAWAY && head.len >= 8 {
            let want = (head.len as usize).min(8 + GOAWAY_DEBUG);
            self.goaway = Some(([0; 8 + GOAWAY_DEBUG], want, 0));
        }
        Some(Event::Head(head))
    }
}

/// An HTTP/2 connection's transport, watched for abuse (module docs).
#[derive(Debug)]
pub struct Guard<I> {
    io: I,
    peer: SocketAddr,
    limits: Http2,
    /// Client to proxy.
    inbound: Frames,
    /// Proxy to client.
    outbound: Frames,
    /// Control frames the client may still send.
    budget: i64,
    /// When the budget last refilled (coarse-clock ms).
    refilled_at: u64,
    /// Streams the client opened, and RST_STREAMs it sent.
    streams: u64,
    resets: u64,
    /// The highest stream id the client opened.
    last_stream: u32,
    /// Set once a rule tripped: the GOAWAY to send, and how much of it went.
    closing: Option<Closing>,
}

#[derive(Debug)]
struct Closing {
    cause: Cause,
    goaway: Vec<u8>,
    written: usize,
    /// The GOAWAY went (or could not), and the transport was shut down.
    done: bool,
}

impl<I> Guard<I> {
    /// Watch `io`, a connection that starts with the client preface.
    pub fn new(io: I, peer: SocketAddr, limits: Http2) -> Guard<I> {
        Guard {
            io,
            peer,
            limits,
            inbound: Frames::after_preface(),
            outbound: Frames::default(),
            budget: i64::from(limits.control_frame_budget),
            refilled_at: clock::now_ms(),
            streams: 0,
            resets: 0,
            last_stream: 0,
            closing: None,
        }
    }

    fn inbound(&mut self, mut bytes: &[u8]) {
        while let Some(event) = self.inbound.next(&mut bytes) {
            let Event::Head(head) = event else { continue };
            let control = match head.kind {
                DATA => head.len == 0 && head.flags & FLAG_END_STREAM == 0,
                HEADERS => {
                    // Trailers come on a stream already open.
                    if head.stream > self.last_stream {
                        self.last_stream = head.stream;
                        self.streams += 1;
                    }
                    false
                }
                RST_STREAM => {
                    self.resets += 1;
                    if self.streams >= MIN_STREAMS_FOR_RESET_RATIO
                        && self.resets as f64 > self.limits.max_reset_ratio * self.streams as f64
                    {
                        self.trip(Cause::RapidReset);
                    }
                    false
                }
                SETTINGS | PING => head.flags & FLAG_ACK == 0,
                GOAWAY | CONTINUATION => false,
                PRIORITY | WINDOW_UPDATE => true,
                // PUSH_PROMISE (h2 refuses it) and unknown types, which h2 skips.
                _ => true,
            };
            if control {
                self.charge();
            }
        }
    }

    /// One control frame off the budget; refilled lazily, by time, only
    /// when it runs out.
    fn charge(&mut self) {
        self.budget -= 1;
        if self.budget >= 0 {
            return;
        }
        let now = clock::now_ms();
        let full = i64::from(self.limits.control_frame_budget);
        let earned =
            (now.saturating_sub(self.refilled_at) as i64).saturating_mul(full) / REFILL_MS as i64;
        if earned > 0 {
            self.budget = (self.budget + earned).min(full);
            self.refilled_at = now;
        }
        if self.budget < 0 {
            self.trip(Cause::ControlFlood);
        }
    }

    fn outbound(&mut self, mut bytes: &[u8]) {
        while let Some(event) = self.outbound.next(&mut bytes) {
            match event {
                Event::Head(head) if matches!(head.kind, DATA | HEADERS) => {
                    self.budget =
                        (self.budget + 2).min(i64::from(self.limits.control_frame_budget));
                }
                Event::Head(_) => {}
                Event::GoAway {
                    code,
                    debug,
                    debug_len,
                } if code != NO_ERROR => {
                    let cause = Cause::of_goaway(code, &debug[..debug_len]);
                    cause.count();
                    tracing::info!(client = %self.peer, cause = cause.as_str(), code, "HTTP/2 connection closed for abuse");
                }
                Event::GoAway { .. } => {}
            }
        }
    }

    fn trip(&mut self, cause: Cause) {
        if self.closing.is_some() {
            return;
        }
        cause.count();
        tracing::info!(client = %self.peer, cause = cause.as_str(), streams = self.streams, resets = self.resets, "HTTP/2 connection closed for abuse");
        let debug = cause.as_str().as_bytes();
        let len = 8 + debug.len() as u32;
        let mut goaway = Vec::with_capacity(9 + len as usize);
        goaway.extend_from_slice(&len.to_be_bytes()[1..]);
        goaway.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
        goaway.extend_from_slice(&self.last_stream.to_be_bytes());
        goaway.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        goaway.extend_from_slice(debug);
        self.closing = Some(Closing {
            cause,
            goaway,
            written: 0,
            done: false,
        });
    }

    fn aborted(&self) -> io::Error {
        let cause = self.closing.as_ref().map_or("abuse", |c| c.cause.as_str());
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("HTTP/2 connection closed for abuse: {cause}"),
        )
    }
}

impl<I: AsyncWrite + Unpin> Guard<I> {
    /// Send the GOAWAY (if the proxy's output is between frames), flush,
    /// shut the transport down; then every call fails.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let at_boundary = self.outbound.at_boundary();
        if let Some(c) = self.closing.as_mut()
            && at_boundary
            && !c.done
        {
            while c.written < c.goaway.len() {
                match Pin::new(&mut self.io).poll_write(cx, &c.goaway[c.written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                    Poll::Ready(Ok(n)) => c.written += n,
                    Poll::Pending => return Poll::Pending,
                }
            }
            c.written = c.goaway.len();
            if Pin::new(&mut self.io).poll_flush(cx).is_pending()
                || Pin::new(&mut self.io).poll_shutdown(cx).is_pending()
            {
                return Poll::Pending;
            }
            c.done = true;
        }
        Poll::Ready(self.aborted())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guard<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closing.is_some() {
            // Between frames (h2 flushes its output before it reads), the
            // GOAWAY goes now; in the middle of one, the connection is cut.
            return this.poll_goaway(cx).map(Err);
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.inbound(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guard<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut buf = buf;
        if this.closing.is_some() {
            if this.outbound.at_boundary() {
                return this.poll_goaway(cx).map(Err);
            }
            // Finish the frame under way, and no more, before the GOAWAY.
            buf = &buf[..buf.len().min(this.outbound.rest_of_frame())];
        }
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.outbound(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.closing.is_some() {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
            return Pin::new(this).poll_write(cx, first);
        }
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            this.outbound(&b[..take]);
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn heads(frames: &mut Frames, bytes: &[u8], chunk: usize) -> Vec<Event> {
        let mut out = Vec::new();
        for mut piece in bytes.chunks(chunk) {
            while let Some(e) = frames.next(&mut piece) {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn frame_heads_are_found_however_the_bytes_are_split() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0; 6]));
        bytes.extend(frame(HEADERS, 4, 1, b"abc"));
        bytes.extend(frame(DATA, 1, 1, &[7; 100]));
        bytes.extend(frame(GOAWAY, 0, 0, b"\0\0\0\x01\0\0\0\x0btoo_many_resets"));
        bytes.extend(frame(PING, 0, 0, &[0; 8]));
        for chunk in [1, 2, 7, 9, 10, 1000] {
            let mut f = Frames::after_preface();
            let events = heads(&mut f, &bytes, chunk);
            let kinds: Vec<_> = events
                .iter()
                .map(|e| match e {
                    Event::Head(h) => (h.kind, h.len),
                    Event::GoAway { code, .. } => (0xff, *code),
                })
                .collect();
            assert_eq!(
                kinds,
                [
                    (SETTINGS, 6),
                    (HEADERS, 3),
                    (DATA, 100),
                    (GOAWAY, 23),
                    (0xff, 0xb),
                    (PING, 8)
                ],
                "chunk {chunk}"
            );
            let Some(Event::GoAway {
                debug, debug_len, ..
            }) = events.get(4)
            else {
                panic!()
            };
            assert_eq!(&debug[..*debug_len], b"too_many_resets");
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn the_rest_of_a_frame_is_known_mid_head_and_mid_payload() {
        let bytes = frame(DATA, 0, 1, &[0; 20]);
        let mut f = Frames::default();
        let mut part = &bytes[..4];
        assert!(f.next(&mut part).is_none());
        assert_eq!(f.rest_of_frame(), 25);
        let mut part = &bytes[4..15];
        assert!(f.next(&mut part).is_some());
        while f.next(&mut part).is_some() {}
        assert_eq!(f.rest_of_frame(), 14);
        assert!(!f.at_boundary());
    }

    #[test]
    fn h2_goaways_are_told_apart_by_their_debug_data() {
        assert_eq!(Cause::of_goaway(0xb, b"too_many_resets"), Cause::RapidReset);
        assert_eq!(
            Cause::of_goaway(0xb, b"too_many_internal_resets"),
            Cause::MadeYouReset
        );
        assert_eq!(
            Cause::of_goaway(0xb, b"too_many_continuations"),
            Cause::ContinuationFlood
        );
        assert_eq!(Cause::of_goaway(0x1, b""), Cause::ProtocolError);
    }
}
