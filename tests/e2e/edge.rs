//! Edge proves the proxy refuses, with the right status and before any
//! backend sees it, what a client must not send: no Host or two on
//! HTTP/1.1, Transfer-Encoding with Content-Length, a broken chunk size, a
//! head or target too large, CONNECT, a body over the limit; that the
//! absolute-form authority replaces Host for routing and the backend alike;
//! and that the router, the plugins and the backend agree on one normalised
//! path, so `/api/../internal` cannot reach a backend as a path under
//! `/api/`. Every bad input is sent as raw bytes, and the connection closes
//! after a refusal.

use std::time::Duration;

use crate::support::raw::{RawConn, exchange};
use crate::support::{Backend, Portier, RunningBackend, endpoints, free_addr, one_upstream};

/// One upstream over `backend`, no stages, and `tables` (such as
/// `[server.limits]`) at the end.
async fn proxy(backend: &RunningBackend, tables: &str) -> Portier {
    let manifest = format!(
        "{}\n{tables}\n",
        one_upstream(&endpoints(&[backend]), "", "")
    );
    Portier::start(&manifest).await
}

/// Send `request` raw; assert `status`, that the proxy closed the
/// connection after it, and that the backend received nothing.
async fn refused(proxy: &Portier, backend: &RunningBackend, request: &[u8], status: u16) {
    let (response, mut conn) = exchange(proxy.addr(), request).await;
    assert_eq!(
        response.status,
        status,
        "for {:?}: {response:?}",
        String::from_utf8_lossy(&request[..request.len().min(200)])
    );
    assert!(
        conn.closed_within(Duration::from_secs(5)).await,
        "the connection stayed open after a {status}"
    );
    assert_eq!(backend.requests(), 0, "the backend saw a refused request");
}

#[tokio::test]
async fn http11_request_without_host_is_400_and_forwarded_nowhere() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    refused(&proxy, &backend, b"GET / HTTP/1.1\r\n\r\n", 400).await;
}

#[tokio::test]
async fn request_with_two_host_headers_is_400() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    refused(
        &proxy,
        &backend,
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_with_content_length_goes_by_the_chunks_and_closes_the_connection() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    // Content-Length says 4, the chunks say 5: a smuggling attempt if the
    // two readers disagree. RFC 9112 §6.1: the chunked coding decides, and
    // the connection closes after the response.
    let (response, mut conn) = exchange(
        proxy.addr(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let echo = response.echo();
    assert_eq!(echo.body_len, 5);
    assert_eq!(echo.header("content-length"), None, "{:?}", echo.headers);
    assert!(conn.closed_within(Duration::from_secs(5)).await);
    assert_eq!(backend.requests(), 1, "the request after it was never read");
}

#[tokio::test]
async fn invalid_or_overflowing_chunk_size_is_400_and_forwarded_nowhere() {
    for chunk in ["zz", "fffffffffffffffffff"] {
        let backend = Backend::new("app").start().await;
        let proxy = proxy(&backend, "").await;
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}\r\nhello\r\n0\r\n\r\n"
        );
        refused(&proxy, &backend, request.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn head_over_max_request_head_is_431_and_too_many_headers_too() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(
        &backend,
        "[server.limits]\nmax_request_head = \"16KiB\"\nmax_headers = 20",
    )
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    refused(&proxy, &backend, big.as_bytes(), 431).await;
    let many: String = (0..21).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    refused(&proxy, &backend, many.as_bytes(), 431).await;
    // Just under both limits goes through.
    let fine: String = (0..18).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let (response, _) = exchange(
        proxy.addr(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{fine}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn target_over_max_uri_is_414() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_uri = \"1KiB\"").await;
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1024));
    refused(&proxy, &backend, long.as_bytes(), 414).await;
}

#[tokio::test]
async fn connect_is_405() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    refused(
        &proxy,
        &backend,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        405,
    )
    .await;
}

#[tokio::test]
async fn backslash_and_encoded_nul_in_the_path_are_400() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "").await;
    refused(
        &proxy,
        &backend,
        b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    )
    .await;
    refused(
        &proxy,
        &backend,
        b"GET /a%zzb HTTP/1.1\r\nHost: a\r\n\r\n",
        400,
    )
    .await;
}

#[tokio::test]
async fn declared_body_over_max_request_body_is_413_before_any_byte_is_read() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_request_body = \"1KiB\"").await;
    refused(
        &proxy,
        &backend,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n",
        413,
    )
    .await;
}

#[tokio::test]
async fn streamed_body_passing_max_request_body_is_413_and_the_upstream_request_is_aborted() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_request_body = \"64KiB\"").await;
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.send(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await;
    // 16 KiB chunks: the fifth passes the limit.
    let chunk = format!("4000\r\n{}\r\n", "u".repeat(16 * 1024));
    for _ in 0..5 {
        conn.send(chunk.as_bytes()).await;
    }
    let response = conn.response().await;
    assert_eq!(response.status, 413, "{response:?}");
    assert!(conn.closed_within(Duration::from_secs(5)).await);
    // The backend got a head and at most the limit, never a whole request.
    assert!(backend.body_bytes_received() <= 64 * 1024);
    assert_eq!(backend.completed(), 0);
}

#[tokio::test]
async fn body_within_the_limit_passes_whole() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy(&backend, "[server.limits]\nmax_request_body = \"64KiB\"").await;
    let body = "u".repeat(64 * 1024);
    let (response, _) = exchange(
        proxy.addr(),
        format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(backend.completed(), 1);
    assert_eq!(backend.body_bytes_received(), 64 * 1024);
}

/// Upstreams `a` (what `/api/` routes to) and `b` (the rest), over two backends.
async fn routed() -> (RunningBackend, RunningBackend, Portier) {
    let a = Backend::new("a").start().await;
    let b = Backend::new("b").start().await;
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "a"
endpoints = ["{a}"]

[[upstreams]]
name = "b"
endpoints = ["{b}"]

[[pipeline]]
plugin = "router"
config = {{ default = "b", routes = [ {{ prefix = "/api/", upstream = "a" }}, {{ host = "api.example", upstream = "a" }} ] }}
"#,
        listen = free_addr(),
        a = a.addr(),
        b = b.addr(),
    );
    let proxy = Portier::start(&manifest).await;
    (a, b, proxy)
}

#[tokio::test]
async fn router_and_backend_see_one_normalised_path() {
    let (a, b, proxy) = routed().await;
    let client = proxy.client();
    for (sent, backend, path) in [
        ("/api/../internal", "b", "/internal"),
        ("/api/%2e%2e/internal", "b", "/internal"),
        ("/api/./users/../me", "a", "/api/me"),
        ("/%61pi/users", "a", "/api/users"),
        ("//api//users", "a", "/api/users"),
        ("/api/a%2Fb", "a", "/api/a%2Fb"),
    ] {
        let echo = client.get(sent).await.echo();
        assert_eq!(
            (echo.backend.as_str(), echo.path.as_str()),
            (backend, path),
            "{sent}"
        );
    }
    assert_eq!((a.requests(), b.requests()), (4, 2));
}

#[tokio::test]
async fn absolute_form_authority_replaces_host_for_routing_and_the_backend() {
    let (a, b, proxy) = routed().await;
    let (response, _) = exchange(
        proxy.addr(),
        b"GET http://api.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "{response:?}");
    let echo = response.echo();
    assert_eq!(echo.backend, "a");
    assert_eq!(echo.path, "/x");
    assert_eq!(echo.header_all("host"), ["api.example"]);
    assert_eq!((a.requests(), b.requests()), (1, 0));
}
