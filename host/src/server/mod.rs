//! Listeners and connections: accept, serve HTTP/1.1 and HTTP/2 (h2c) with
//! hyper, hand every request to the current pipeline, drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::pipeline::Pipeline;

/// The pipeline requests are served by; reload swaps it atomically, and
/// requests already running keep the generation they started with.
pub type Current = Arc<ArcSwap<Pipeline>>;

/// Pending connections the kernel queues per listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// How long a client may take to send a complete request head; hyper also
/// applies it to an idle keep-alive connection waiting for its next request.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long open connections may take to finish after shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind every listen address (before anything is served, so errors are
/// early). Sockets are `SO_REUSEPORT`, so each worker can bind its own on the
/// same address and the kernel spreads connections across them.
pub fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = bind_one(*a)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        tracing::info!(address = %l.local_addr()?, "listening");
        listeners.push(l);
    }
    Ok(listeners)
}

/// A std listener (not yet tied to any thread's reactor), so it can be
/// handed to the worker that will serve it.
fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
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
    first: Vec<std::net::TcpListener>,
    current: Current,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let addrs: Vec<SocketAddr> = first
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?;
    let mut first = Some(first);
    let mut threads = Vec::with_capacity(workers);
    for id in 0..workers {
        // Port 0 was resolved by the first bind: every worker uses the same port.
        let listeners = match first.take() {
            Some(l) => l,
            None => addrs
                .iter()
                .map(|a| bind_one(*a))
                .collect::<Result<_, _>>()?,
        };
        let (current, mut stop) = (current.clone(), stop.clone());
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
                crate::forward::set_worker(id);
                rt.block_on(async move {
                    let listeners = listeners
                        .into_iter()
                        .map(TcpListener::from_std)
                        .collect::<Result<Vec<_>, _>>();
                    let stopped = async move {
                        // Also ends if the control runtime is gone.
                        let _ = stop.wait_for(|stop| *stop).await;
                    };
                    match listeners {
                        Ok(l) => serve(l, current, stopped).await,
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

/// Serve until `shutdown` resolves, then stop accepting and drain.
pub async fn serve(
    listeners: Vec<TcpListener>,
    current: Current,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut accept_loops = Vec::new();
    for listener in listeners {
        let (current, graceful, mut stop) = (current.clone(), graceful.clone(), stop_rx.clone());
        accept_loops.push(tokio::spawn(async move {
            loop {
                let (stream, client) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => break,
                };
                let _ = stream.set_nodelay(true);
                let current = current.clone();
                let svc = service_fn(move |req| {
                    let pipeline = current.load_full();
                    // Boxed per request: hyper keeps a slot of the service
                    // future's size for each connection's whole life, so an
                    // unboxed pipeline future (kilobytes) would cost every idle
                    // keep-alive connection that much.
                    Box::pin(async move { Ok::<_, Infallible>(pipeline.handle(req, client).await) })
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                // A client that never sends (or finishes) a request head must not hold a connection forever.
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                builder.http2().timer(TokioTimer::new());
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%client, error = %e, "connection ended with an error");
                    }
                });
            }
        }));
    }
    shutdown.await;
    tracing::info!("shutting down: no new connections, draining open ones");
    let _ = stop_tx.send(true);
    for l in accept_loops {
        let _ = l.await;
    }
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| unreachable!("accept loops ended"));
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}
