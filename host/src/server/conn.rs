//! One client connection: tell HTTP/1 from HTTP/2, serve it with hyper
//! under the limits of the pipeline current when it was accepted, hand each
//! request to the pipeline current when the request arrives, and finish
//! gracefully when the proxy shuts down.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Current;
use super::h2guard::Guard;
use super::io::{Activity, Deadlines, EdgeIo};
use super::limits::Admitted;
use crate::body::Logged;
use crate::ingress::Scheme;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's default header count: asking for it explicitly moves hyper's
/// header parsing from the stack to the heap (about 5 % slower).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// HTTP/1.1, or HTTP/2 with prior knowledge (h2c).
    Http,
    /// TLS, then HTTP/2 or HTTP/1.1 as ALPN says.
    Https,
    /// Plain HTTP answered with a 308 to HTTPS on this port.
    Redirect {
        /// The HTTPS listener's port.
        https_port: u16,
    },
}

/// TLS handshakes that failed since the process started (`/status`).
pub static TLS_HANDSHAKE_FAILURES: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// The part of `[server]` a connection keeps for its life (a copy: the
/// manifest's lists and paths stay with the pipeline).
#[derive(Clone, Copy)]
struct Settings {
    limits: crate::manifest::Limits,
    timeouts: crate::manifest::Timeouts,
    http2: crate::manifest::Http2,
}

impl Settings {
    fn of(server: &crate::manifest::Server) -> Settings {
        Settings {
            limits: server.limits,
            timeouts: server.timeouts,
            http2: server.http2,
        }
    }
}

/// Serve one accepted connection to its end (or the shutdown's).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    current: Current,
    stop: watch::Receiver<bool>,
    _admitted: Admitted,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    let timeouts = current.load().server().timeouts;
    let mut io = EdgeIo::new(
        stream,
        activity.clone(),
        Deadlines {
            header: timeouts.header,
            idle: timeouts.keepalive,
            write: timeouts.response_write,
            multiplexed: false,
        },
    );
    let closed = |e: &std::io::Error| match timed_out(e) {
        Some(reason) => tracing::info!(client = %peer, reason, "connection closed"),
        None => tracing::debug!(client = %peer, error = %e, "connection closed before a request"),
    };
    // Only plain HTTP/1, the common case, is served inline: HTTP/2 and TLS
    // state machines are kilobytes, and the task of every connection is as
    // large as the largest path it could take, idle or not. Boxed, they cost
    // only the connections that take them.
    match kind {
        Kind::Http => {
            let http2 = match sniff(&mut io).await {
                Ok(Some(http2)) => http2,
                Ok(None) => return,
                Err(e) => return closed(&e),
            };
            // Read after the sniff: nothing of it stays in this task's
            // state while the connection is served.
            let server = Settings::of(current.load().server());
            let svc = pipeline_service(current, activity, peer, Scheme::Http, None);
            if http2 {
                io.multiplexed(server.timeouts.http2_idle);
                Box::pin(serve_h2(io, &server, svc, stop, peer)).await;
            } else {
                log_end(serve_h1(io, &server, svc, stop).await, peer);
            }
        }
        Kind::Https => Box::pin(serve_tls(io, current, activity, peer, stop)).await,
        Kind::Redirect { https_port } => {
            let server = Settings::of(current.load().server());
            let svc = service_fn(move |req: Request<Incoming>| {
                std::future::ready(Ok::<_, Infallible>(redirect(&req, https_port)))
            });
            log_end(Box::pin(serve_h1(io, &server, svc, stop)).await, peer);
        }
    }
}

/// Complete the TLS handshake, then serve HTTP/2 or HTTP/1.1 as ALPN says.
async fn serve_tls(
    io: EdgeIo,
    current: Current,
    activity: Arc<Activity>,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let Some(config) = current.load().tls() else {
        return;
    };
    let server = Settings::of(current.load().server());
    let mut tls = match tokio_rustls::TlsAcceptor::from(config).accept(io).await {
        Ok(tls) => tls,
        Err(e) => {
            // Scanners and clients that distrust the certificate do this
            // all day: counted, and told at debug only.
            TLS_HANDSHAKE_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return match timed_out(&e) {
                Some(reason) => tracing::debug!(client = %peer, reason, "TLS handshake cut off"),
                None => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
            };
        }
    };
    let session = tls.get_ref().1;
    let http2 = session.alpn_protocol() == Some(b"h2");
    // Verified by the handshake (mutual TLS); read once for all its requests.
    let client_cert = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| Arc::new(crate::tls::ClientCert::read(leaf)));
    let svc = pipeline_service(current, activity, peer, Scheme::Https, client_cert);
    if http2 {
        tls.get_mut().0.multiplexed(server.timeouts.http2_idle);
        serve_h2(tls, &server, svc, stop, peer).await;
    } else {
        log_end(serve_h1(tls, &server, svc, stop).await, peer);
    }
}

/// The future of one request through the pipeline (boxed, see below).
type Handled = Pin<Box<dyn Future<Output = Result<Response<Logged>, Infallible>> + Send>>;

/// The service handing each request to the pipeline current when it arrives.
fn pipeline_service(
    current: Current,
    activity: Arc<Activity>,
    peer: SocketAddr,
    scheme: Scheme,
    client_cert: Option<Arc<crate::tls::ClientCert>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Logged>,
    Error = Infallible,
    Future = Handled,
> + Clone {
    service_fn(move |mut req: Request<Incoming>| {
        let busy = activity.begin();
        if req.headers().contains_key(http::header::UPGRADE) {
            // A tunnel after a 101 keeps the connection busy for its life.
            req.extensions_mut().insert(activity.clone());
        }
        if let Some(cert) = &client_cert {
            req.extensions_mut().insert(cert.clone());
        }
        let pipeline = current.load_full();
        // Boxed per request: hyper keeps a slot of the service future's size
        // for each connection's whole life, so an unboxed pipeline future
        // (kilobytes) would cost every idle keep-alive connection that much.
        Box::pin(async move {
            let response = pipeline.handle(req, peer, scheme).await;
            Ok::<_, Infallible>(response.map(|body| body.holding(busy)))
        }) as Handled
    })
}

/// What a client connection runs over: the socket, or TLS over it.
trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// What answers a client connection's requests: the pipeline's service, or
/// the redirect listener's.
trait Handler:
    hyper::service::HttpService<Incoming, ResBody = Self::Body, Future: Send> + Send + 'static
{
    /// The response body.
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
}

impl<S, B> Handler for S
where
    S: hyper::service::HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = B;
}

/// Serve HTTP/1.1 on `io` under the server's limits until it ends or the
/// proxy stops. The connection is set up before the returned future starts,
/// so the future holds the connection and nothing of its setting up; the
/// caller says how it ended ([`log_end`]).
fn serve_h1<I: Transport, S: Handler>(
    io: I,
    server: &Settings,
    svc: S,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = Result<(), hyper::Error>> + use<I, S> {
    let limits = server.limits;
    let mut b = http1::Builder::new();
    // The header and idle deadlines are EdgeIo's: hyper's own header
    // timer would also run while a keep-alive connection is idle.
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_header_size(limits.max_request_head);
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.max_headers(limits.max_headers);
    }
    // With upgrades: after a 101 the socket goes to the tunnel.
    let connection = b.serve_connection(TokioIo::new(io), svc).with_upgrades();
    until_stopped(Box::pin(connection), stop, |c| c.graceful_shutdown())
}

/// Serve HTTP/2 on `io` under the server's limits until it ends or the
/// proxy stops.
async fn serve_h2<I: Transport, S: Handler>(
    io: I,
    server: &Settings,
    svc: S,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
) {
    let limits = server.limits;
    let h2 = server.http2;
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(server.timeouts.http2_keepalive_interval)
        .keep_alive_timeout(server.timeouts.http2_keepalive_timeout)
        .max_header_list_size(u32::try_from(limits.max_request_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_frame_size(h2.max_frame_size)
        .max_send_buf_size(h2.send_buffer)
        .max_pending_accept_reset_streams(h2.max_pending_resets)
        .max_local_error_reset_streams(h2.max_error_resets);
    let io = Guard::new(io, peer, h2);
    let connection = b.serve_connection(TokioIo::new(io), svc);
    let result = until_stopped(Box::pin(connection), stop, |c| c.graceful_shutdown()).await;
    log_end(result, peer);
}

/// Say how a connection ended, if it ended with an error.
fn log_end(result: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = result {
        match timed_out(&e) {
            // One of the edge's deadlines closed it: say which, once per
            // connection (the access line of a cut-off response says the rest).
            Some(reason) => tracing::info!(client = %peer, reason, "connection closed"),
            None => tracing::debug!(client = %peer, error = %e, "connection ended with an error"),
        }
    }
}

/// A 308 to the same host, path and query over HTTPS. The Host's port (if
/// any) is replaced by the HTTPS listener's, left out when it is 443.
fn redirect(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
        .map(|h| {
            h.parse::<http::uri::Authority>()
                .ok()
                .map(|a| a.host().to_owned())
        })
        .unwrap_or(None);
    let Some(host) = host else {
        let mut r = Response::new(Full::new(Bytes::from_static(b"400 Bad Request\n")));
        *r.status_mut() = http::StatusCode::BAD_REQUEST;
        return r;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = format!("https://{host}{port}{pq}");
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
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
///
/// The connection comes boxed: a future's state holds its arguments, so a
/// connection passed by value would take its room in every idle
/// connection's task twice (as the argument and as the pinned local).
async fn until_stopped<C, E>(
    mut connection: Pin<Box<C>>,
    mut stop: watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    if !*stop.borrow() {
        tokio::select! {
            done = connection.as_mut() => return done,
            _ = stop.changed() => {}
        }
    }
    graceful(connection.as_mut());
    connection.await
}
