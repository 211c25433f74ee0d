//! Active health checks: one task per checked endpoint for the whole
//! process (not per worker or generation), on the control thread. Each
//! probe is a `GET` of the check's path on a connection of its own, so a
//! probe never queues behind traffic nor reuses a connection traffic broke.

use std::sync::Weak;
use std::time::Duration;

use http::{Request, header};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::endpoint::{EndpointState, Probe};
use super::pool::connect_io;
use crate::manifest::HealthCheck;

/// Probe the endpoint now and then every `check.interval`, until it is no
/// longer in the registry (the task is also aborted when its check changes).
pub async fn run(endpoint: Weak<EndpointState>, check: HealthCheck, connect_timeout: Duration) {
    // Spread the probes of many endpoints over the interval after the first.
    let jitter = Duration::from_millis(fastrand_ms(check.interval.as_millis() as u64 / 10));
    let mut first = true;
    loop {
        let Some(e) = endpoint.upgrade() else { return };
        let probe = probe(&e, &check, connect_timeout).await;
        e.record_probe(probe, &check);
        drop(e);
        let wait = if first {
            check.interval + jitter
        } else {
            check.interval
        };
        first = false;
        tokio::time::sleep(wait).await;
    }
}

/// One probe: connect (over TLS when the upstream uses it), `GET path`
/// in the upstream's HTTP version, read the status, close.
async fn probe(e: &EndpointState, check: &HealthCheck, connect_timeout: Duration) -> Probe {
    let tls = e.pool.tls();
    let io = match connect_io(&e.address, connect_timeout, tls.as_deref()).await {
        Ok(io) => TokioIo::new(io),
        Err(_) => return Probe::ConnectFailed,
    };
    let host = check.host.as_deref().unwrap_or(e.address.as_str());
    let http2 = e.pool.http2();
    let exchange = async {
        let mut req = Request::get(check.path.as_str())
            .header(header::USER_AGENT, "portier-health-check")
            .body(Empty::<bytes::Bytes>::new())
            .expect("a valid probe request");
        if http2 {
            let scheme = if tls.is_some() { "https" } else { "http" };
            *req.uri_mut() = format!("{scheme}://{host}{}", check.path)
                .parse()
                .map_err(|_| Probe::Broken)?;
            let (mut send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|_| Probe::Broken)?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|_| Probe::Broken)
        } else {
            req.headers_mut()
                .insert(header::HOST, host.parse().map_err(|_| Probe::Broken)?);
            req.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            let (mut send, conn) = http1::handshake(io).await.map_err(|_| Probe::Broken)?;
            // The probe's connection runs beside it and ends with it (Connection: close).
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map(|r| r.status().as_u16())
                .map_err(|_| Probe::Broken)
        }
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Ok(status)) => Probe::Status(status),
        Ok(Err(p)) => p,
        Err(_) => Probe::TimedOut,
    }
}

/// A few milliseconds of jitter from the clock's low bits (no RNG needed).
fn fastrand_ms(max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos % max
}
