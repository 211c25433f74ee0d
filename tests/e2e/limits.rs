//! Limits proves the proxy never waits on a peer forever and never serves
//! more connections than it is allowed: a connection that sends nothing,
//! or half a head, is closed after `timeouts.header`; an idle keep-alive
//! connection after `timeouts.keepalive` (and not before); a request body
//! that stalls gets 408; a client that stops reading and an upstream that
//! stops mid-body are cut off and logged; `max_connections_per_ip` closes
//! the extra connection at once, and past `max_connections` new
//! connections wait until one closes; an HTTP/2 connection with no stream
//! open is closed after `timeouts.http2_idle`. Each bound is measured from
//! before the event it bounds.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::raw::RawConn;
use crate::support::{
    AccessLine, Backend, HELD_FIRST, Portier, RunningBackend, endpoints, one_upstream,
};

/// One upstream over `backend`, no stages, and these `[server.*]` tables.
async fn proxy(backend: &RunningBackend, tables: &str) -> Portier {
    let manifest = format!(
        "{}\n{tables}\n",
        one_upstream(&endpoints(&[backend]), "", "")
    );
    Portier::start(&manifest).await
}

/// Longer than any of the short timeouts below, however busy the machine.
const PATIENCE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connection_that_sends_nothing_or_half_a_head_is_closed_after_the_header_timeout() {
    let header = Duration::from_millis(400);
    let backend = Backend::new("app").start().await;
    let mut proxy = proxy(&backend, "[server.timeouts]\nheader = \"400ms\"").await;

    for sent in [&b""[..], b"GE", b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: "] {
        let started = Instant::now();
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.send(sent).await;
        assert!(
            conn.closed_within(PATIENCE).await,
            "still open {PATIENCE:?} after sending {sent:?}"
        );
        let took = started.elapsed();
        assert!(
            took >= header,
            "closed after {took:?}, before the {header:?} timeout"
        );
    }
    assert_eq!(backend.requests(), 0);
    proxy.stop().await;
    // Each closing is said once, with its reason.
    assert_eq!(
        proxy.count_log_lines(|l| l.contains("connection closed")
            && l.contains("request head not received within timeouts.header")),
        3,
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_keepalive_and_not_before() {
    let keepalive = Duration::from_millis(600);
    let backend = Backend::new("app").start().await;
    let proxy = proxy(
        &backend,
        "[server.timeouts]\nkeepalive = \"600ms\"\nheader = \"5s\"",
    )
    .await;
    let mut conn = RawConn::open(proxy.addr()).await;
    for i in 0..3 {
        conn.send(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .await;
        let sent_response_by = Instant::now();
        assert_eq!(conn.response().await.status, 200);
        if i < 2 {
            // Within the keep-alive time: the connection is still good.
            tokio::time::sleep(keepalive / 3).await;
        } else {
            assert!(conn.closed_within(PATIENCE).await, "idle connection kept");
            // Idle from the response on; our clock started before it.
            assert!(sent_response_by.elapsed() >= keepalive / 2);
        }
    }
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn request_body_that_stalls_gets_408() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.timeouts]\nrequest_body = \"400ms\"").await;
    let mut conn = RawConn::open(proxy.addr()).await;
    let started = Instant::now();
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nfirst ten.")
        .await;
    let response = conn.response().await;
    assert_eq!(response.status, 408, "{response:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(conn.closed_within(PATIENCE).await);
    assert_eq!(
        backend.completed(),
        0,
        "a cut-off body reached the backend whole"
    );
}

#[tokio::test]
async fn upstream_that_stops_mid_body_is_cut_off_and_logged() {
    let backend = Backend::new("app").held_response().start().await;
    let mut proxy = proxy(&backend, "[server.timeouts]\nupstream_body = \"400ms\"").await;
    let mut conn = RawConn::open(proxy.addr()).await;
    let started = Instant::now();
    conn.send(b"GET /held HTTP/1.1\r\nHost: a\r\n\r\n").await;
    // The head and the first part come through; then the body stalls, and
    // the client's connection is cut (a chunked body never ends properly).
    assert!(
        conn.closed_within(PATIENCE).await,
        "the stalled response was kept open"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    proxy.stop().await;
    let lines = proxy.access_lines();
    assert_eq!(lines.len(), 1, "{}", proxy.logs());
    assert_eq!(lines[0].bytes_out, HELD_FIRST.len() as u64);
    assert!(!lines[0].complete, "{:?}", lines[0]);
    assert_eq!(
        proxy
            .count_log_lines(|l| l.contains("response body cut off")
                && l.contains("stalled past its idle timeout")),
        1,
        "{}",
        proxy.logs()
    );
}

#[tokio::test]
async fn client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let len = 64 * 1024 * 1024;
    let backend = Backend::new("app").large_response(len).start().await;
    let mut proxy = proxy(&backend, "[server.timeouts]\nresponse_write = \"500ms\"").await;
    let mut conn = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing until the proxy has given up on us: the socket buffers
    // fill, the proxy's writes stop making progress, and it closes.
    let gave_up = {
        let proxy = &proxy;
        async move {
            proxy
                .wait_for_log_line("the access line of the abandoned response", |l| {
                    AccessLine::parse(l).is_some_and(|a| a.path == "/big")
                })
                .await
        }
    };
    let line = tokio::time::timeout(PATIENCE, gave_up)
        .await
        .expect("gave up in time");
    let line = AccessLine::parse(&line).unwrap();
    assert!(!line.complete);
    assert!(line.bytes_out < len, "{line:?}");
    // What the client can still read ends short of the body.
    let mut received = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, conn.read_to_end(&mut received)).await;
    assert!(
        (received.len() as u64) < len + 1024,
        "{} bytes",
        received.len()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn connections_past_the_per_ip_limit_are_closed_at_once() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_connections_per_ip = 2").await;
    let first = proxy.client();
    let second = proxy.client();
    first.get("/1").await.echo();
    second.get("/2").await.echo();

    let mut third = RawConn::open(proxy.addr()).await;
    third.send(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        third.closed_within(PATIENCE).await,
        "a third connection from one address was served"
    );
    assert_eq!(backend.requests(), 2);

    // Once one closes, there is room again.
    drop(first);
    let started = Instant::now();
    loop {
        let again = proxy.client();
        if let Ok(reply) = again
            .try_send(
                again
                    .request(http::Method::GET, "/4")
                    .body(crate::support::body::empty())
                    .unwrap(),
            )
            .await
        {
            reply.echo();
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no room after a connection closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_connections = 2").await;
    let first = proxy.client();
    let second = proxy.client();
    first.get("/1").await.echo();
    second.get("/2").await.echo();

    // The kernel accepts it, but the proxy does not serve it yet.
    let third = proxy.client();
    let waiting = tokio::spawn(async move { third.get("/3").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served at once"
    );
    assert_eq!(backend.requests(), 2);

    drop(first);
    let reply = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("served once a connection closed")
        .unwrap();
    reply.echo();
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn http2_connection_with_no_stream_open_is_closed_after_http2_idle() {
    let idle = Duration::from_millis(600);
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.timeouts]\nhttp2_idle = \"600ms\"").await;
    // h2c with prior knowledge, as `curl --http2-prior-knowledge` speaks it.
    let stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("an HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    for i in 0..2 {
        let request = http::Request::get(format!("http://{}/h2/{i}", proxy.addr()))
            .body(crate::support::body::empty())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .expect("an HTTP/2 response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        // Read the body to its end: the stream closes.
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
    }
    let last_stream_ended = Instant::now();
    // No stream open now: the proxy closes the connection.
    let ended = tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("the idle HTTP/2 connection was kept")
        .expect("the connection task");
    // Closed under it, not by a protocol error of ours.
    eprintln!("the HTTP/2 connection ended: {ended:?}");
    let took = last_stream_ended.elapsed();
    assert!(took >= idle / 2, "closed after {took:?}");
    assert_eq!(backend.requests(), 2);
}
