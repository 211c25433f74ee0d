//! One client connection: tell HTTP/1 from HTTP/2, serve it with hyper
//! under the limits of the pipeline current when it was accepted, hand each
//! request to the pipeline current when the request arrives, and finish
//! gracefully when the proxy shuts down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Current;
use super::io::{Activity, Deadlines, EdgeIo};
use super::limits::Admitted;
use crate::ingress::Scheme;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's default header count: asking for it explicitly moves hyper's
/// header parsing from the stack to the heap (about 5 % slower).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Serve one accepted connection to its end (or the shutdown's).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    current: Current,
    stop: watch::Receiver<bool>,
    _admitted: Admitted,
) {
    let _ = stream.set_nodelay(true);
    let server = current.load().server().clone();
    let activity = Arc::new(Activity::default());
    let mut io = EdgeIo::new(
        stream,
        activity.clone(),
        Deadlines {
            header: server.timeouts.header,
            idle: server.timeouts.keepalive,
            write: server.timeouts.response_write,
            multiplexed: false,
        },
    );
    let http2 = match sniff(&mut io).await {
        Ok(Some(http2)) => http2,
        Ok(None) => return,
        Err(e) => {
            match timed_out(&e) {
                Some(reason) => tracing::info!(client = %peer, reason, "connection closed"),
                None => {
                    tracing::debug!(client = %peer, error = %e, "connection closed before a request")
                }
            }
            return;
        }
    };
    let svc = service_fn(move |req| {
        let busy = activity.begin();
        let pipeline = current.load_full();
        // Boxed per request: hyper keeps a slot of the service future's size
        // for each connection's whole life, so an unboxed pipeline future
        // (kilobytes) would cost every idle keep-alive connection that much.
        Box::pin(async move {
            let response = pipeline.handle(req, peer, Scheme::Http).await;
            Ok::<_, Infallible>(response.map(|body| body.holding(busy)))
        })
    });
    let limits = server.limits;
    let result = if http2 {
        io.multiplexed(server.timeouts.http2_idle);
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .keep_alive_interval(server.timeouts.http2_keepalive_interval)
            .keep_alive_timeout(server.timeouts.http2_keepalive_timeout)
            .max_header_list_size(u32::try_from(limits.max_request_head).unwrap_or(u32::MAX));
        until_stopped(b.serve_connection(TokioIo::new(io), svc), stop).await
    } else {
        let mut b = http1::Builder::new();
        // The header and idle deadlines are EdgeIo's: hyper's own header
        // timer would also run while a keep-alive connection is idle.
        b.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_header_size(limits.max_request_head);
        if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            b.max_headers(limits.max_headers);
        }
        until_stopped(b.serve_connection(TokioIo::new(io), svc), stop).await
    };
    match result {
        Ok(()) => {}
        Err(e) => match timed_out(&e) {
            // One of the edge's deadlines closed it: say which, once per
            // connection (the access line of a cut-off response says the rest).
            Some(reason) => tracing::info!(client = %peer, reason, "connection closed"),
            None => tracing::debug!(client = %peer, error = %e, "connection ended with an error"),
        },
    }
}

/// The deadline an error came from, if it was one of EdgeIo's.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return Some(io.to_string());
        }
        source = err.source();
    }
    None
}

/// Read until the first bytes tell HTTP/2's preface from anything else
/// (HTTP/1), then put them back for hyper. `None`: closed before a byte.
async fn sniff(io: &mut EdgeIo) -> std::io::Result<Option<bool>> {
    let mut seen = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    let http2 = loop {
        let read = io.read(&mut seen[n..]).await?;
        if read == 0 {
            if n == 0 {
                return Ok(None);
            }
            // A few bytes, then EOF: let hyper answer what it can.
            break false;
        }
        n += read;
        if seen[..n] != H2_PREFACE[..n] {
            break false;
        }
        if n == H2_PREFACE.len() {
            break true;
        }
    };
    io.replay(Bytes::copy_from_slice(&seen[..n]));
    Ok(Some(http2))
}

/// Drive a connection to its end; when the proxy stops, let it finish the
/// request in flight and close (HTTP/1 keep-alive ends, HTTP/2 sends GOAWAY).
async fn until_stopped<C: GracefulConnection>(
    connection: C,
    mut stop: watch::Receiver<bool>,
) -> Result<(), C::Error> {
    let mut connection = pin!(connection);
    if !*stop.borrow() {
        tokio::select! {
            done = connection.as_mut() => return done,
            _ = stop.changed() => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}
