//! Listeners and connections: accept within the connection limits, serve
//! HTTP/1.1 and HTTP/2 (h2c) with hyper under the edge's deadlines, hand
//! every request to the current pipeline, drain on shutdown.
//!
//! - `mod.rs`: binding, worker threads, the accept loop, the drain.
//! - [`conn`]: one connection: protocol detection, hyper, the service.
//! - [`io`]: the socket wrapper that keeps the header, idle and write deadlines.
//! - [`h2guard`]: HTTP/2 frame-level abuse limits, and abuse closes counted.
//! - [`limits`]: open connections, in total and per client IP.

mod conn;
mod h2guard;
mod io;
mod limits;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::manifest::Server;
use crate::pipeline::Pipeline;
pub use conn::{Kind, TLS_HANDSHAKE_FAILURES};
pub use h2guard::abuse_status as http2_abuse_status;
pub use io::{Activity, Busy};
pub use limits::Connections;

/// The pipeline requests are served by; reload swaps it atomically, and
/// requests already running keep the generation they started with.
pub type Current = Arc<ArcSwap<Pipeline>>;

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// A bound listening socket and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// Not yet tied to any thread's reactor.
    pub socket: std::net::TcpListener,
    /// Plain HTTP, HTTPS, or a redirect to HTTPS.
    pub kind: Kind,
}

/// Every address `[server]` listens on, with what it serves.
pub fn addresses(server: &Server) -> Vec<(SocketAddr, Kind)> {
    let mut all: Vec<_> = server.listen.iter().map(|a| (*a, Kind::Http)).collect();
    if let Some(tls) = &server.tls {
        all.extend(tls.listen.iter().map(|a| (*a, Kind::Https)));
        let https_port = tls.listen[0].port();
        all.extend(
            tls.redirect
                .iter()
                .map(|a| (*a, Kind::Redirect { https_port })),
        );
    }
    all
}

/// Bind every listen address (before anything is served, so errors are
/// early). Sockets are `SO_REUSEPORT`, so each worker can bind its own on the
/// same address and the kernel spreads connections across them; an address
/// another process already serves is refused, not silently shared.
pub fn bind(addrs: &[(SocketAddr, Kind)]) -> std::io::Result<Vec<Listener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for &(a, kind) in addrs {
        let cannot =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}"));
        ensure_unused(a).map_err(cannot)?;
        let socket = bind_one(a, true).map_err(cannot)?;
        tracing::info!(address = %socket.local_addr()?, ?kind, "listening");
        listeners.push(Listener { socket, kind });
    }
    Ok(listeners)
}

/// Bind a listener that only this process uses (the admin API): no
/// `SO_REUSEPORT`, so a second process on the same address fails to start.
pub fn bind_exclusive(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind_one(addr, false)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Fail with `AddrInUse` if something already listens on `addr`: a probe
/// without `SO_REUSEPORT` cannot bind beside any listener, while our own
/// workers' sockets, all `SO_REUSEPORT`, share the port among themselves.
fn ensure_unused(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match bind_one(addr, false) {
        Ok(_probe) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(std::io::Error::new(
            e.kind(),
            "address already in use (is another portier or server running there?)",
        )),
        Err(e) => Err(e),
    }
}

/// A std listener (not yet tied to any thread's reactor), so it can be
/// handed to the worker that will serve it.
fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Run `workers` worker threads, each a single-threaded event loop with its
/// own listening sockets (the first worker takes `first`, the others bind the
/// same addresses), until `stop` turns true; then each drains its connections.
pub fn spawn_workers(
    workers: usize,
    first: Vec<Listener>,
    current: Current,
    stop: watch::Receiver<bool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let addrs: Vec<(SocketAddr, Kind)> = first
        .iter()
        .map(|l| Ok((l.socket.local_addr()?, l.kind)))
        .collect::<std::io::Result<_>>()?;
    let connections = Arc::new(Connections::default());
    let mut first = Some(first);
    let mut threads = Vec::with_capacity(workers);
    for id in 0..workers {
        // Port 0 was resolved by the first bind: every worker uses the same port.
        let listeners = match first.take() {
            Some(l) => l,
            None => addrs
                .iter()
                .map(|&(a, kind)| {
                    Ok(Listener {
                        socket: bind_one(a, true)?,
                        kind,
                    })
                })
                .collect::<std::io::Result<_>>()?,
        };
        let (current, mut stop, connections) = (current.clone(), stop.clone(), connections.clone());
        let thread = std::thread::Builder::new()
            .name(format!("portier-worker-{id}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        return tracing::error!(worker = id, error = %e, "cannot start a worker");
                    }
                };
                crate::upstream::set_worker(id);
                rt.block_on(async move {
                    let listeners = listeners
                        .into_iter()
                        .map(|l| Ok((TcpListener::from_std(l.socket)?, l.kind)))
                        .collect::<std::io::Result<Vec<_>>>();
                    let stopped = async move {
                        // Also ends if the control runtime is gone.
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    match listeners {
                        Ok(l) => serve(l, current, connections, stopped).await,
                        Err(e) => {
                            tracing::error!(worker = id, error = %e, "cannot register listeners")
                        }
                    }
                });
            })?;
        threads.push(thread);
    }
    Ok(threads)
}

/// Serve until `shutdown` resolves, then stop accepting, ask every open
/// connection to finish (keep-alive ends after the request in flight), and
/// wait for them up to `timeouts.shutdown`.
pub async fn serve(
    listeners: Vec<(TcpListener, Kind)>,
    current: Current,
    connections: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    for (listener, kind) in listeners {
        accept_loops.spawn(accept_loop(
            listener,
            kind,
            current.clone(),
            connections.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, draining open ones");
    let _ = stop_tx.send(true);
    while let Some(done) = accept_loops.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "an accept loop failed");
        }
    }
}

/// Accept connections within the limits until `stop`; then drain this
/// listener's connections.
async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    current: Current,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let mut open = JoinSet::new();
    let (mut last_warned, mut failures) = (None, 0u64);
    loop {
        let limits = current.load().server().limits;
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            Some(done) = open.join_next(), if !open.is_empty() => {
                if let Err(e) = done && e.is_panic() {
                    tracing::error!(error = %e, "a connection task panicked");
                }
                continue;
            }
            accepted = async {
                connections.room_for(limits.max_connections).await;
                listener.accept().await
            } => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, and say
                // so once a second, not every 10 ms.
                failures += 1;
                if last_warned.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, failures, "accept failed");
                    last_warned = Some(Instant::now());
                    failures = 0;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let admitted = tokio::select! {
            _ = stop.changed() => break,
            a = connections.admit(peer.ip(), limits.max_connections_per_ip, limits.max_connections) => a,
        };
        let Some(admitted) = admitted else {
            tracing::debug!(client = %peer, "closing a connection over limits.max_connections_per_ip");
            continue;
        };
        open.spawn(conn::serve(
            stream,
            peer,
            kind,
            current.clone(),
            stop.clone(),
            admitted,
        ));
    }
    // Closed now, not at exit: a new connection is refused at once (and a
    // client or load balancer tries elsewhere) instead of waiting in the
    // backlog for a process that will not accept it.
    drop(listener);
    let deadline = current.load().server().timeouts.shutdown;
    // Upgraded connections (WebSocket tunnels) left their connection's task:
    // they are waited for too.
    let drained = async {
        while open.join_next().await.is_some() {}
        crate::tunnel::all_closed().await;
    };
    if tokio::time::timeout(deadline, drained).await.is_err() {
        tracing::warn!(
            left = open.len(),
            tunnels = crate::tunnel::open(),
            "connections still open after timeouts.shutdown ({deadline:?}); closing them"
        );
        open.abort_all();
    }
}
