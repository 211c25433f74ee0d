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

/// How long a client may take to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open connections may take to finish after shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind every listen address (before anything is served, so errors are early).
pub async fn bind(addrs: &[SocketAddr]) -> std::io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for a in addrs {
        let l = TcpListener::bind(a)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
        tracing::info!(address = %l.local_addr()?, "listening");
        listeners.push(l);
    }
    Ok(listeners)
}

/// Serve until `shutdown` resolves, then stop accepting and drain.
pub async fn serve(listeners: Vec<TcpListener>, current: Current, shutdown: impl Future<Output = ()>) {
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
                    async move { Ok::<_, Infallible>(pipeline.handle(req, client).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                // A client that never finishes its request head must not hold a connection forever.
                builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                builder.http2().timer(TokioTimer::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
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
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}
