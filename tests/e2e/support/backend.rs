//! Fake upstreams in the style of linkerd2-proxy's test servers: a builder
//! says how the backend behaves, `start` binds a real socket and serves
//! HTTP/1.1 with hyper until `stop` or drop.
//!
//! By default a backend echoes what it received as JSON, so a test can check
//! exactly what the proxy forwarded:
//!
//! ```json
//! {"backend":"a","method":"GET","path":"/x","query":"q=1",
//!  "headers":[["host","example"],...],"body_len":0,"body_sha256":"e3b0..."}
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::body::{self, Body};

/// What a [`Backend::held_response`] backend sends before it is released.
pub const HELD_FIRST: &[u8] = b"first part, sent at once\n";
/// What a [`Backend::held_response`] backend sends after `release_held`.
pub const HELD_REST: &[u8] = b"rest, sent when released\n";

/// How long `stop` may take before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a fake upstream; see the module docs.
#[derive(Clone, Debug)]
pub struct Backend {
    name: String,
    delay: Option<Duration>,
    answer: Answer,
    response_headers: Vec<(String, String)>,
    listen: Option<SocketAddr>,
    status: StatusCode,
    /// Requests for this path are health probes: answered 200 or 503 as
    /// [`RunningBackend::set_healthy`] says, and counted apart.
    health_path: Option<String>,
    close_after_response: bool,
    h2c: bool,
    /// Serve TLS with this configuration (ALPN decides HTTP/2 or 1.1).
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// A connection's stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// What a backend answers with.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// The JSON echo of the request.
    Echo,
    /// This many bytes of the test pattern, streamed.
    Pattern(u64),
    /// [`HELD_FIRST`] at once, [`HELD_REST`] after `release_held`.
    Held,
    /// Close the connection without answering.
    HangUp,
    /// Close the connection without answering the first N requests, then echo.
    HangUpFirst(usize),
    /// Read the request head, then reset the connection (TCP RST).
    Reset,
}

/// A backend serving on a real socket; stops (closing every connection) on
/// `stop` or drop.
pub struct RunningBackend {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What every connection of one backend shares.
struct State {
    config: Backend,
    requests: AtomicUsize,
    /// Requests whose body arrived whole.
    completed: AtomicUsize,
    body_bytes: AtomicU64,
    /// Permits for held responses to finish; closed on stop.
    gate: Arc<Semaphore>,
    connections: AtomicUsize,
    probes: AtomicUsize,
    healthy: std::sync::atomic::AtomicBool,
    /// Panics of the backend's own tasks: a broken fake, never the proxy's
    /// doing. Checked on `stop` and drop, so none goes unnoticed.
    panics: Mutex<Vec<String>>,
}

// === impl Backend ===

impl Backend {
    /// A backend that answers 200 with `x-backend: NAME` and the JSON echo.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            delay: None,
            answer: Answer::Echo,
            response_headers: Vec::new(),
            listen: None,
            status: StatusCode::OK,
            health_path: None,
            close_after_response: false,
            h2c: false,
            tls: None,
        }
    }

    /// Wait this long (after reading the request body) before the response head.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Answer every request (but health probes) with this status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).expect("a status code");
        self
    }

    /// Read each request head, then reset its connection (TCP RST) without
    /// an answer: a backend that crashes on every request.
    pub fn reset(mut self) -> Self {
        self.answer = Answer::Reset;
        self
    }

    /// Answer `GET path` as a health endpoint: 200 while healthy (the
    /// start), 503 after [`RunningBackend::set_healthy`]`(false)`. Probes
    /// are counted by `probes`, not `requests`.
    pub fn health(mut self, path: &str) -> Self {
        self.health_path = Some(path.to_owned());
        self
    }

    /// Close each connection shortly after its response, without saying so
    /// (no `connection: close`), as a backend whose keep-alive timeout is
    /// shorter than the proxy's: the proxy's pooled connection goes stale.
    pub fn close_after_response(mut self) -> Self {
        self.close_after_response = true;
        self
    }

    /// Serve TLS with this certificate, offering these ALPN protocols
    /// (`["h2"]` makes it an HTTP/2-over-TLS backend).
    pub fn tls(mut self, leaf: &super::tls::Leaf, alpn: &[&str]) -> Self {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = vec![CertificateDer::from(leaf.der.clone())];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("the leaf's key");
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the leaf certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        self.tls = Some(Arc::new(config));
        self
    }

    /// Speak HTTP/2 over plain TCP (prior knowledge) instead of HTTP/1.1.
    pub fn h2c(mut self) -> Self {
        self.h2c = true;
        self
    }

    /// Add a header to every response; call again with the same name to repeat it.
    pub fn response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answer with `len` bytes of the test pattern (see `body::pattern_sha256`),
    /// streamed in chunks, instead of the echo.
    pub fn large_response(mut self, len: u64) -> Self {
        self.answer = Answer::Pattern(len);
        self
    }

    /// Send the head and [`HELD_FIRST`] at once, then hold the body open until
    /// [`RunningBackend::release_held`]: proves the proxy streams responses.
    pub fn held_response(mut self) -> Self {
        self.answer = Answer::Held;
        self
    }

    /// Read the request head, then close the connection without a response.
    pub fn hang_up(mut self) -> Self {
        self.answer = Answer::HangUp;
        self
    }

    /// Hang up on the first `n` requests (like a keep-alive connection the
    /// backend closed just as the proxy reused it), then echo as usual.
    pub fn hang_up_first(mut self, n: usize) -> Self {
        self.answer = Answer::HangUpFirst(n);
        self
    }

    /// Close every connection after its response (`connection: close`), so
    /// the proxy cannot reuse one: each request needs a new connection.
    pub fn closing(self) -> Self {
        self.response_header("connection", "close")
    }

    /// Listen on this address instead of an ephemeral port (to restart a
    /// stopped backend where the proxy expects it).
    pub fn listen_on(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Bind and serve in the background.
    pub async fn start(self) -> RunningBackend {
        let bind = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("backend {}: bind {bind}: {e}", self.name));
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            config: self,
            requests: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
            gate: Arc::new(Semaphore::new(0)),
            connections: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            healthy: std::sync::atomic::AtomicBool::new(true),
            panics: Mutex::new(Vec::new()),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), shutdown_rx));
        RunningBackend {
            addr,
            state,
            shutdown,
            task: Mutex::new(Some(task)),
        }
    }
}

// === impl RunningBackend ===

impl RunningBackend {
    /// The name given to [`Backend::new`].
    pub fn name(&self) -> &str {
        &self.state.config.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far (counted when the head arrives).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Requests received whole, body included (a request the proxy cut off
    /// mid-body is counted by `requests` only).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Request-body bytes received so far, over all requests, counted as they
    /// arrive (not when a body ends).
    pub fn body_bytes_received(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Health probes received so far (see [`Backend::health`]).
    pub fn probes(&self) -> usize {
        self.state.probes.load(Ordering::SeqCst)
    }

    /// Make the health endpoint answer 200 (`true`) or 503 (`false`).
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Let one held response send the rest of its body.
    pub fn release_held(&self) {
        self.state.gate.add_permits(1);
    }

    /// Close the listener and every open connection, and wait until they are
    /// closed: afterwards the port refuses connections and any keep-alive
    /// connection the proxy pooled has been closed under it, as when a backend
    /// process is killed.
    pub async fn stop(&self) {
        self.shutdown.send_replace(true);
        self.state.gate.close();
        let task = self.task.lock().expect("backend task lock").take();
        if let Some(task) = task {
            tokio::time::timeout(STOP_TIMEOUT, task)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "backend {} did not stop within {STOP_TIMEOUT:?}",
                        self.name()
                    )
                })
                .unwrap_or_else(|e| panic!("backend {}: its task failed: {e}", self.name()));
        }
        self.assert_no_panic();
    }

    /// Fail the test if any task of this backend panicked.
    fn assert_no_panic(&self) {
        let panics = self.state.panics.lock().expect("panics lock");
        assert!(
            panics.is_empty(),
            "backend {}: tasks panicked: {panics:?}",
            self.name()
        );
    }
}

impl Drop for RunningBackend {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        self.state.gate.close();
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            // Aborting drops the task's JoinSet, which aborts every connection.
            task.abort();
        }
        if !std::thread::panicking() {
            self.assert_no_panic();
        }
    }
}

/// Accept connections until shutdown, then close every connection and wait
/// until each is gone.
async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // Err: the RunningBackend was dropped; stop all the same.
            _ = shutdown.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = state.clone();
                let mut shutdown = shutdown.clone();
                connections.spawn(async move {
                    if let Answer::Reset = state.config.answer {
                        return reset_after_head(stream, &state).await;
                    }
                    let mut h2c = state.config.h2c;
                    let stream: Box<dyn Stream> = match &state.config.tls {
                        None => Box::new(stream),
                        Some(config) => {
                            let Ok(tls) = tokio_rustls::TlsAcceptor::from(config.clone()).accept(stream).await else {
                                // A client that refused our certificate.
                                return;
                            };
                            h2c = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            Box::new(tls)
                        }
                    };
                    let answered = Arc::new(tokio::sync::Notify::new());
                    let close_soon = {
                        let answered = answered.clone();
                        let close = state.config.close_after_response;
                        async move {
                            if !close {
                                return std::future::pending().await;
                            }
                            answered.notified().await;
                            // Long enough for the response to be written.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    let service = service_fn(move |req| {
                        let (state, answered) = (state.clone(), answered.clone());
                        async move {
                            let r = handle(state, req).await;
                            answered.notify_one();
                            r
                        }
                    });
                    let connection: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> = if h2c {
                        Box::pin(
                            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service),
                        )
                    } else {
                        Box::pin(http1::Builder::new().serve_connection(TokioIo::new(stream), service))
                    };
                    // Dropping the connection closes its socket, mid-request or idle.
                    tokio::select! {
                        _ = connection => {}
                        _ = shutdown.changed() => {}
                        _ = close_soon => {}
                    }
                });
            }
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                record_panic(&state, joined);
            }
        }
    }
    drop(listener);
    connections.abort_all();
    while let Some(joined) = connections.join_next().await {
        record_panic(&state, joined);
    }
}

/// Read one request head, count it, and reset the connection.
async fn reset_after_head(mut stream: tokio::net::TcpStream, state: &State) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    // Linger 0: closing sends RST instead of FIN.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Keep a connection task's panic for [`RunningBackend::assert_no_panic`];
/// cancellation (on stop) is expected.
fn record_panic(state: &State, joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        state
            .panics
            .lock()
            .expect("panics lock")
            .push(e.to_string());
    }
}

/// Answer one request as the backend's config says.
async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, io::Error> {
    let config = &state.config;
    if config.health_path.as_deref() == Some(req.uri().path()) {
        state.probes.fetch_add(1, Ordering::SeqCst);
        let status = if state.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(Response::builder()
            .status(status)
            .body(body::full("health\n"))
            .expect("valid response"));
    }
    let seen = state.requests.fetch_add(1, Ordering::SeqCst);
    let hang_up = match config.answer {
        Answer::HangUp => true,
        Answer::HangUpFirst(n) => seen < n,
        _ => false,
    };
    if hang_up {
        // hyper closes the connection when the service fails, without a response.
        return Err(io::Error::other("hanging up, as configured"));
    }

    let (parts, mut incoming) = req.into_parts();
    // Hash while streaming: a 10 MiB body is never held whole.
    let mut hasher = Sha256::new();
    let mut body_len = 0u64;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            hasher.update(data);
            body_len += data.len() as u64;
            state
                .body_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
    }

    state.completed.fetch_add(1, Ordering::SeqCst);

    if let Some(delay) = config.delay {
        tokio::time::sleep(delay).await;
    }

    let mut response = Response::builder()
        .status(config.status)
        .header("x-backend", &config.name);
    for (name, value) in &config.response_headers {
        response = response.header(name, value);
    }
    let body = match config.answer {
        Answer::Echo | Answer::HangUpFirst(_) => {
            let headers: Vec<(&str, String)> = parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let echo = serde_json::json!({
                "backend": config.name,
                "method": parts.method.as_str(),
                "version": format!("{:?}", parts.version),
                "path": parts.uri.path(),
                "query": parts.uri.query(),
                "headers": headers,
                "body_len": body_len,
                "body_sha256": body::hex(&hasher.finalize()),
            });
            response = response.header("content-type", "application/json");
            body::full(echo.to_string())
        }
        Answer::Pattern(len) => body::pattern(len),
        Answer::Held => body::held(
            Bytes::from_static(HELD_FIRST),
            state.gate.clone(),
            Bytes::from_static(HELD_REST),
        ),
        Answer::HangUp | Answer::Reset => unreachable!("answered above"),
    };
    Ok(response.body(body).expect("valid response"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::Backend;

    /// The balancing tests rely on `stop` killing pooled keep-alive
    /// connections, not only the listener.
    #[tokio::test]
    async fn stop_closes_idle_keep_alive_connections_and_the_port() {
        let backend = Backend::new("b").start().await;
        let mut conn = tokio::net::TcpStream::connect(backend.addr())
            .await
            .unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; 64 * 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );

        backend.stop().await;

        // EOF (or a reset) at once, not a connection left open after the kill.
        let read = tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection still open: {read:?}"
        );
        assert!(
            tokio::net::TcpStream::connect(backend.addr())
                .await
                .is_err(),
            "port still accepts"
        );
    }
}
