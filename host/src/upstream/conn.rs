//! One HTTP/1.1 exchange with an endpoint, driven from the request's own task.
//!
//! hyper's `client::conn` splits a connection into a sender and a
//! `Connection` future that does the I/O. hyper-util's pooled client runs
//! that future as a task of its own and feeds it through a channel, so each
//! request crosses tasks twice each way. Here the sender and the connection
//! stay together: the request's task polls the connection while it waits
//! for the response head ([`H1::send`]) and while the response body streams
//! ([`UpstreamBody`]), and the body puts the connection back in its pool
//! when it ends. HTTP/2 connections serve many requests at once, so they
//! keep a task of their own (see [`super::pool`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::endpoint::InFlight;
use super::pool::{Io, OpenSlot};
use crate::body::ProxyBody;

/// A pooled HTTP/1.1 connection: sender and connection state together.
pub struct H1 {
    send: http1::SendRequest<ProxyBody>,
    /// `None` once the connection has ended.
    conn: Option<http1::Connection<TokioIo<Io>, ProxyBody>>,
    /// Counts the connection as open until it is dropped.
    _open: OpenSlot,
    /// Whether it served a request before this one.
    pub reused: bool,
    /// Clock reading when it went idle.
    pub(super) idle_since: u64,
}

/// Why an exchange failed.
pub enum SendError {
    /// Nothing of the request was written: it comes back whole, and the
    /// endpoint provably did not see it.
    NotSent(Box<Request<ProxyBody>>, hyper::Error),
    /// The request was (at least partly) written before the failure.
    Failed(hyper::Error),
}

impl H1 {
    /// A connection fresh from the handshake.
    pub(super) fn new(
        send: http1::SendRequest<ProxyBody>,
        conn: http1::Connection<TokioIo<Io>, ProxyBody>,
        open: OpenSlot,
    ) -> H1 {
        H1 {
            send,
            conn: Some(conn),
            _open: open,
            reused: false,
            idle_since: 0,
        }
    }

    /// Poll the connection once, without a waker: learns of a close the
    /// peer already sent. True when it can take a request now.
    pub(super) fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx);
        self.conn.is_some() && self.send.is_ready()
    }

    /// Let the connection do its I/O; drops it once it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && Pin::new(conn).poll(cx).is_ready()
        {
            // Ended (closed, or failed after telling the request and the
            // body its error): dropping it fails anything still waiting.
            self.conn = None;
        }
    }

    /// Send `req` and wait for the response head, driving the connection.
    /// The connection rides along in the returned body.
    pub async fn send(
        mut self: Box<Self>,
        req: Request<ProxyBody>,
        in_flight: InFlight,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let mut response = std::pin::pin!(self.send.try_send_request(req));
        let head = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = response.as_mut().poll(cx) {
                return Poll::Ready(r);
            }
            self.drive(cx);
            // If the connection ended, dropping it answered the request.
            response.as_mut().poll(cx)
        })
        .await;
        match head {
            Ok(resp) => Ok(resp.map(|inner| UpstreamBody {
                done: inner.is_end_stream(),
                inner,
                conn: Some(self),
                in_flight: Some(in_flight),
            })),
            Err(mut e) => match e.take_message() {
                Some(req) => Err(SendError::NotSent(Box::new(req), e.into_error())),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }
}

/// An upstream's response body. For HTTP/1.1 it carries its connection,
/// drives it while the body streams, and returns it to the endpoint's pool
/// once the body has ended (a body dropped early closes it).
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Box<H1>>,
    /// The request counts as in flight at its endpoint until the body is
    /// gone; the endpoint is also where the connection goes back.
    in_flight: Option<InFlight>,
    done: bool,
}

impl UpstreamBody {
    /// A body whose connection is driven elsewhere (HTTP/2, an upgrade's).
    pub fn detached(inner: Incoming, in_flight: Option<InFlight>) -> UpstreamBody {
        UpstreamBody {
            inner,
            conn: None,
            in_flight,
            done: false,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.done = true,
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Only a connection whose response was read to the end can carry
        // another request; the pool checks that it is idle and open.
        if (self.done || self.inner.is_end_stream())
            && let (Some(conn), Some(endpoint)) = (self.conn.take(), &self.in_flight)
        {
            let endpoint = endpoint.endpoint();
            endpoint.pool.put(conn, endpoint.retired());
        }
    }
}
