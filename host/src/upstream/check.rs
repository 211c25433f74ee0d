//! Active health checks: one task per checked endpoint for the whole
//! process (not per worker or generation), on the control thread. Each
//! probe is a `GET` of the check's path on a connection of its own, so a
//! probe never queues behind traffic nor reuses a connection traffic broke.

use std::sync::Weak;
use std::time::Duration;

use http::{Request, header};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::endpoint::{EndpointState, Probe};
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

/// One probe: connect, `GET path`, read the status, close.
async fn probe(e: &EndpointState, check: &HealthCheck, connect_timeout: Duration) -> Probe {
    let stream =
        match tokio::time::timeout(connect_timeout, TcpStream::connect(e.address.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => return Probe::ConnectFailed,
        };
    let host = check.host.as_deref().unwrap_or(e.address.as_str());
    let exchange = async {
        let (mut send, conn) =
            http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(stream)).await?;
        let req = Request::get(check.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "portier-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::new())
            .expect("a valid probe request");
        // The probe's connection runs beside it and ends with it (Connection: close).
        tokio::spawn(conn);
        send.send_request(req).await.map(|r| r.status().as_u16())
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Ok(status)) => Probe::Status(status),
        Ok(Err(_)) => Probe::Broken,
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
