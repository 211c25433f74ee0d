//! The test client, and the JSON echo the fake backends answer with.
//!
//! A [`Client`] is one HTTP/1.1 connection (hyper's `client::conn`, no pool):
//! opened on its first request, never reopened, no request ever retried. So
//! whatever a test sees is what the proxy did: a connection the proxy closed
//! is reported as closed (with how many exchanges it carried), and every
//! exchange a `Client` completed travelled over the same TCP connection,
//! whose local address ([`Client::local_addr`]) the proxy logs as `client`.
//! A test that wants several connections makes several clients.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::body::{self, Body};

/// The longest a request (head and whole body) may take before the test fails;
/// generous because a 10 MiB body crosses an unoptimised debug proxy twice.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive HTTP/1.1 connection to one address (the proxy's); paths
/// are relative to it. Clones share the connection: their requests take
/// turns on it, as HTTP/1.1 requires.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    base: SocketAddr,
    /// `None` until the first request connects.
    conn: Mutex<Option<Conn>>,
    /// Request-response exchanges completed (whole body received).
    exchanges: AtomicUsize,
}

/// The connection: hyper's sender, and the task that drives the socket.
struct Conn {
    sender: http1::SendRequest<Body>,
    local: SocketAddr,
    driver: JoinHandle<Result<(), hyper::Error>>,
    /// How the driver ended, once known.
    ended: Option<String>,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// Connecting failed.
    Connect(std::io::Error),
    /// The connection was closed (by the proxy, or after an error) before
    /// this request: the client never opens another.
    Closed {
        /// Exchanges the connection carried before it closed.
        after: usize,
        /// How the connection ended, as hyper reports it.
        ended: String,
    },
    /// The request was sent (or being sent) and no whole response came back:
    /// the proxy closed or reset the connection, or spoke invalid HTTP.
    Failed(hyper::Error),
    /// No whole reply within [`REQUEST_TIMEOUT`].
    TimedOut,
}

/// A whole response: status, headers and the collected body.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What an echoing [`Backend`](super::Backend) saw, parsed from its JSON body.
#[derive(Debug, Deserialize)]
pub struct Echo {
    /// The backend's name.
    pub backend: String,
    /// The request method.
    pub method: String,
    /// The HTTP version the backend received, as Rust debug-prints it ("HTTP/1.1", "HTTP/2.0").
    pub version: String,
    /// The path, without the query string, exactly as received.
    pub path: String,
    /// The query string without `?`, exactly as received.
    pub query: Option<String>,
    /// Every header line in the order hyper keeps them (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Bytes of request body received.
    pub body_len: u64,
    /// Hex SHA-256 of the request body.
    pub body_sha256: String,
}

// === impl Client ===

impl Client {
    /// A client for `base`; it connects on its first request.
    pub fn new(base: SocketAddr) -> Self {
        Self {
            inner: Arc::new(Inner {
                base,
                conn: Mutex::new(None),
                exchanges: AtomicUsize::new(0),
            }),
        }
    }

    /// A request builder with the method and the origin-form target; the
    /// `Host` header defaults to the base address when the test sets none.
    pub fn request(&self, method: Method, path_and_query: &str) -> http::request::Builder {
        Request::builder().method(method).uri(path_and_query)
    }

    /// GET a path and collect the reply.
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.get_with(path_and_query, &[]).await
    }

    /// GET a path with these request headers, added in order (so a name may
    /// repeat), and collect the reply.
    pub async fn get_with(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Reply {
        let request = headers
            .iter()
            .fold(
                self.request(Method::GET, path_and_query),
                |request, &(name, value)| request.header(name, value),
            )
            .body(body::empty())
            .expect("request");
        self.send(request).await
    }

    /// Send a request and collect the whole reply; fails the test, saying
    /// why, if there is none.
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("{what} to {}: {e}", self.inner.base))
    }

    /// Send a request and collect the whole reply, bounded by [`REQUEST_TIMEOUT`].
    pub async fn try_send(&self, request: Request<Body>) -> Result<Reply, SendError> {
        let exchange = async {
            let response = self.start(request).await?;
            let (parts, incoming) = response.into_parts();
            let body = incoming
                .collect()
                .await
                .map_err(SendError::Failed)?
                .to_bytes();
            self.inner.exchanges.fetch_add(1, Ordering::SeqCst);
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(SendError::TimedOut))
    }

    /// Send a request and return as soon as the response head arrives (bounded
    /// by [`REQUEST_TIMEOUT`]); the caller reads the body frame by frame.
    pub async fn send_streaming(&self, request: Request<Body>) -> Response<Incoming> {
        let what = format!("{} {}", request.method(), request.uri());
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.start(request))
            .await
            .unwrap_or(Err(SendError::TimedOut))
            .unwrap_or_else(|e| panic!("{what} to {}: {e}", self.inner.base));
        // Counted now: the caller owns the body.
        self.inner.exchanges.fetch_add(1, Ordering::SeqCst);
        response
    }

    /// Wait for the connection to be ready (the previous response read to
    /// its end), then send; returns the response head.
    async fn start(&self, mut request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        if !request.headers().contains_key(header::HOST) {
            let host = HeaderValue::from_str(&self.inner.base.to_string()).expect("an address");
            request.headers_mut().insert(header::HOST, host);
        }
        let mut guard = self.inner.conn.lock().await;
        if guard.is_none() {
            *guard = Some(connect(self.inner.base).await?);
        }
        let conn = guard.as_mut().expect("connected above");
        if conn.sender.ready().await.is_err() || conn.sender.is_closed() {
            return Err(self.closed(conn).await);
        }
        let sending = conn.sender.send_request(request);
        // Let the next request queue behind this one while this caller reads its body.
        drop(guard);
        sending.await.map_err(|e| {
            if e.is_canceled() {
                // hyper never wrote it: the connection closed first.
                SendError::Closed {
                    after: self.exchanges(),
                    ended: format!("{e}"),
                }
            } else {
                SendError::Failed(e)
            }
        })
    }

    /// The error for a request on a connection that has closed.
    async fn closed(&self, conn: &mut Conn) -> SendError {
        if conn.ended.is_none() {
            let ended = tokio::time::timeout(Duration::from_secs(1), &mut conn.driver).await;
            conn.ended = Some(match ended {
                Ok(Ok(Ok(()))) => "closed cleanly".to_owned(),
                Ok(Ok(Err(e))) => format!("ended with an error: {e}"),
                Ok(Err(join)) => format!("its task failed: {join}"),
                Err(_) => {
                    return SendError::Closed {
                        after: self.exchanges(),
                        ended: "closed, its task still running".to_owned(),
                    };
                }
            });
        }
        SendError::Closed {
            after: self.exchanges(),
            ended: conn.ended.clone().unwrap_or_default(),
        }
    }

    /// Request-response exchanges completed on this connection so far.
    pub fn exchanges(&self) -> usize {
        self.inner.exchanges.load(Ordering::SeqCst)
    }

    /// The connection's local address (what the proxy logs as `client`);
    /// `None` before the first request.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.conn.lock().await.as_ref().map(|c| c.local)
    }

    /// Whether the connection is open and usable for another request (false
    /// once the proxy closed it, and before the first request).
    pub async fn is_open(&self) -> bool {
        self.inner
            .conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.sender.is_closed())
    }
}

/// Open the one connection of a client.
async fn connect(base: SocketAddr) -> Result<Conn, SendError> {
    let stream = TcpStream::connect(base).await.map_err(SendError::Connect)?;
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    let local = stream.local_addr().map_err(SendError::Connect)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Failed)?;
    let driver = tokio::spawn(connection);
    Ok(Conn {
        sender,
        local,
        driver,
        ended: None,
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last clone is gone: close the socket now, not when the runtime ends.
        if let Some(conn) = self.conn.get_mut() {
            conn.driver.abort();
        }
    }
}

// === impl SendError ===

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "could not connect: {e}"),
            SendError::Closed { after, ended } => write!(
                f,
                "the connection was closed after {after} exchanges ({ended}); \
                 this client never reconnects"
            ),
            SendError::Failed(e) => write!(f, "no whole response: {e:?}"),
            SendError::TimedOut => write!(f, "no whole reply within {REQUEST_TIMEOUT:?}"),
        }
    }
}

// === impl Reply ===

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of a response header, if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of a response header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }

    /// The backend's echo; fails the test (showing the reply) unless this is a
    /// 200 carrying one.
    pub fn echo(&self) -> Echo {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected a backend's echo, got {self:?}"
        );
        Echo::parse(&self.body)
    }
}

// === impl Echo ===

impl Echo {
    /// Parse a backend's echo from a response body (any client's).
    pub fn parse(body: &[u8]) -> Echo {
        serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "not a backend echo ({e}): {}",
                String::from_utf8_lossy(body)
            )
        })
    }

    /// The first value of a request header as the backend saw it (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// Every value of a request header as the backend saw it, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of a header joined with ", ": the same list whether it came
    /// as one line or several (RFC 9110 section 5.3).
    pub fn header_joined(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        (!all.is_empty()).then(|| all.join(", "))
    }

    /// The path with `?query` when there is one, as the backend received it.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}
