//! Forwarding proves the proxy is transparent where it must be and honest
//! where it must not be: method, path, query, Host and repeated headers arrive
//! unchanged; bodies of any size stream both ways without being buffered;
//! hop-by-hop headers stop at the proxy; X-Forwarded-* and Via tell the
//! backend who asked; and every request leaves one access-log line.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::support::body::{self, pattern_sha256, sha256};
use crate::support::{
    Backend, HELD_FIRST, HELD_REST, Portier, RunningBackend, endpoints, one_upstream, wait_until,
};

const TEN_MIB: u64 = 10 * 1024 * 1024;

/// How long a test waits for bytes that a streaming proxy passes on at once.
const STREAM_WAIT: Duration = Duration::from_secs(5);

/// One upstream, no router, no balancer: every request goes to `backend`.
fn single_upstream(backend: &RunningBackend) -> String {
    one_upstream(&endpoints(&[backend]), "", "")
}

async fn proxy_to(backend: &RunningBackend) -> Portier {
    Portier::start(&single_upstream(backend)).await
}

#[tokio::test]
async fn get_with_query_string_reaches_backend_unchanged() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;

    // Percent-encoding, repeated keys, empty values and a bare flag: a proxy
    // that decodes, re-encodes or re-parses would change at least one.
    let reply = proxy
        .client()
        .get("/items/a%20b/?q=caf%C3%A9&tag=x&tag=y&empty=&flag")
        .await;

    assert_eq!(reply.header("x-backend"), Some("app"));
    let echo = reply.echo();
    assert_eq!(echo.method, "GET");
    assert_eq!(echo.path, "/items/a%20b/");
    assert_eq!(
        echo.query.as_deref(),
        Some("q=caf%C3%A9&tag=x&tag=y&empty=&flag")
    );
    assert_eq!(echo.body_len, 0);
    assert_eq!(backend.requests(), 1);
}

#[tokio::test]
async fn methods_are_forwarded_unchanged() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = client
            .request(method.clone(), "/thing")
            .body(body::empty())
            .unwrap();
        let echo = client.send(request).await.echo();
        assert_eq!(echo.method, method.as_str());
        assert_eq!(echo.path, "/thing");
    }
}

#[tokio::test]
async fn post_10_mib_chunked_body_arrives_intact() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    // No length announced: the client sends it chunked, generated as it goes.
    let request = client
        .request(Method::POST, "/upload")
        .body(body::pattern_chunked(TEN_MIB))
        .unwrap();
    let echo = client.send(request).await.echo();

    assert_eq!(echo.method, "POST");
    assert_eq!(echo.body_len, TEN_MIB);
    assert_eq!(echo.body_sha256, pattern_sha256(TEN_MIB));
}

#[tokio::test]
async fn put_10_mib_body_with_content_length_arrives_intact() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let request = client
        .request(Method::PUT, "/upload")
        .body(body::pattern(TEN_MIB))
        .unwrap();
    let echo = client.send(request).await.echo();

    assert_eq!(echo.method, "PUT");
    assert_eq!(
        echo.header("content-length"),
        Some(TEN_MIB.to_string().as_str())
    );
    assert_eq!(echo.body_len, TEN_MIB);
    assert_eq!(echo.body_sha256, pattern_sha256(TEN_MIB));
}

#[tokio::test]
async fn request_body_reaches_backend_before_client_finishes_sending() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let (chunks, request_body) = body::channel();
    let request = client
        .request(Method::POST, "/stream")
        .body(request_body)
        .unwrap();
    let sending = tokio::spawn({
        let client = client.clone();
        async move { client.send(request).await }
    });

    let first = Bytes::from(vec![b'a'; 64 * 1024]);
    chunks.send(first.clone()).await.expect("first chunk");
    // The body cannot end before we send the rest, so a proxy that buffers
    // whole bodies never lets these bytes through and this wait fails.
    wait_until("the backend has the first 64 KiB", STREAM_WAIT, || {
        backend.body_bytes_received() >= first.len() as u64
    })
    .await;
    let last = Bytes::from_static(b"the end");
    chunks.send(last.clone()).await.expect("last chunk");
    drop(chunks);

    let echo = sending.await.expect("request task").echo();
    assert_eq!(echo.body_len, (first.len() + last.len()) as u64);
    assert_eq!(echo.body_sha256, sha256(&[first, last].concat()));
}

#[tokio::test]
async fn large_response_body_streams_back_intact() {
    let len = 3 * 1024 * 1024 + 17;
    let backend = Backend::new("app").large_response(len).start().await;
    let proxy = proxy_to(&backend).await;

    let reply = proxy.client().get("/download").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-backend"), Some("app"));
    assert_eq!(reply.body.len() as u64, len);
    assert_eq!(sha256(&reply.body), pattern_sha256(len));
}

#[tokio::test]
async fn response_body_reaches_client_before_backend_finishes_sending() {
    let backend = Backend::new("app").held_response().start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let request = client
        .request(Method::GET, "/held")
        .body(body::empty())
        .unwrap();
    // The backend holds the end of its body until released: a proxy that
    // buffers responses sends neither the head nor the first part until then.
    let response = tokio::time::timeout(STREAM_WAIT, client.send_streaming(request))
        .await
        .expect("response head while the backend holds its body");
    assert_eq!(response.status(), StatusCode::OK);
    let mut incoming = response.into_body();
    let mut received = Vec::new();
    tokio::time::timeout(STREAM_WAIT, async {
        while received.len() < HELD_FIRST.len() {
            let frame = incoming
                .frame()
                .await
                .expect("body ended early")
                .expect("body error");
            if let Some(data) = frame.data_ref() {
                received.extend_from_slice(data);
            }
        }
    })
    .await
    .expect("first part while the backend holds the rest");
    assert_eq!(received, HELD_FIRST);

    backend.release_held();
    let rest = tokio::time::timeout(STREAM_WAIT, incoming.collect())
        .await
        .expect("rest after release")
        .expect("body error")
        .to_bytes();
    assert_eq!(rest, HELD_REST);
}

#[tokio::test]
async fn repeated_request_headers_arrive_in_order() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let echo = client
        .get_with(
            "/",
            &[("x-multi", "one"), ("x-multi", "two"), ("x-multi", "three")],
        )
        .await
        .echo();

    assert_eq!(echo.header_all("x-multi"), ["one", "two", "three"]);
}

#[tokio::test]
async fn repeated_response_headers_arrive_in_order() {
    // Set-Cookie is the header that must never be folded into one line.
    let backend = Backend::new("app")
        .response_header("set-cookie", "a=1; Path=/")
        .response_header("set-cookie", "b=2; Path=/")
        .start()
        .await;
    let proxy = proxy_to(&backend).await;

    let reply = proxy.client().get("/").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header_all("set-cookie"),
        ["a=1; Path=/", "b=2; Path=/"]
    );
}

#[tokio::test]
async fn forwarded_headers_and_via_are_appended_and_host_kept() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let echo = client
        .get_with(
            "/who",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.2.3.4"),
                ("via", "1.0 edge"),
            ],
        )
        .await
        .echo();

    // The backend must see the name the client asked for, not its own address.
    assert_eq!(echo.header_all("host"), ["shop.example"]);
    // One line or several is the same list (RFC 9110 §5.3); the order is not.
    assert_eq!(
        echo.header_joined("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );
    assert_eq!(
        echo.header_joined("via").as_deref(),
        Some("1.0 edge, 1.1 portier")
    );
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["shop.example"]);
}

#[tokio::test]
async fn forwarded_headers_are_created_when_the_client_sent_none() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;

    let echo = proxy.client().get("/who").await.echo();

    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.header_all("via"), ["1.1 portier"]);
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    // The client's Host here is the proxy's own address.
    let proxy_host = proxy.addr().to_string();
    assert_eq!(echo.header_all("x-forwarded-host"), [proxy_host.as_str()]);
    assert_eq!(echo.header_all("host"), [proxy_host.as_str()]);
}

#[tokio::test]
async fn forwarded_proto_and_host_replace_what_the_client_claimed() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    // A client must not be able to tell the backend it came over TLS or via
    // another host: the proxy sets these, it does not append to them.
    let echo = client
        .get_with(
            "/who",
            &[
                ("host", "shop.example"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "admin.internal"),
            ],
        )
        .await
        .echo();

    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["shop.example"]);
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let echo = client
        .get_with(
            "/",
            &[
                // Connection names x-secret as hop-by-hop for this connection only.
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("proxy-connection", "keep-alive"),
                ("keep-alive", "timeout=5"),
                ("x-visible", "1"),
            ],
        )
        .await
        .echo();

    for name in ["x-secret", "proxy-connection", "keep-alive"] {
        assert!(
            echo.header(name).is_none(),
            "{name} was forwarded: {:?}",
            echo.headers
        );
    }
    for value in echo.header_all("connection") {
        assert!(
            !value.contains("x-secret"),
            "the client's Connection header was forwarded: {value}"
        );
    }
    // ...while end-to-end headers pass: the proxy is selective, not stripping everything.
    assert_eq!(echo.header("x-visible"), Some("1"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let backend = Backend::new("app")
        .response_header("connection", "x-internal")
        .response_header("x-internal", "1")
        .response_header("keep-alive", "timeout=5")
        .response_header("x-public", "1")
        .start()
        .await;
    let proxy = proxy_to(&backend).await;

    let reply = proxy.client().get("/").await;

    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.header("x-internal").is_none(),
        "x-internal returned: {:?}",
        reply.headers
    );
    assert!(
        reply.header("keep-alive").is_none(),
        "keep-alive returned: {:?}",
        reply.headers
    );
    for value in reply.header_all("connection") {
        assert!(
            !value.contains("x-internal"),
            "the backend's Connection header was returned: {value}"
        );
    }
    assert_eq!(reply.header("x-public"), Some("1"));
}

#[tokio::test]
async fn access_log_line_in_text_format() {
    let backend = Backend::new("app").start().await;
    let proxy =
        Portier::start_with_args(&single_upstream(&backend), &["--log-format", "text"]).await;

    let reply = proxy.client().get("/logged/text-path?x=1").await;
    assert_eq!(reply.status, StatusCode::OK);

    let line = proxy
        .wait_for_log_line("with status=200 and /logged/text-path", |line| {
            line.contains("status=200") && line.contains("/logged/text-path")
        })
        .await;
    assert!(
        line.contains("GET"),
        "access line without the method: {line}"
    );
}

#[tokio::test]
async fn access_log_line_in_json_format_has_every_field() {
    let backend = Backend::new("app").start().await;
    let proxy =
        Portier::start_with_args(&single_upstream(&backend), &["--log-format", "json"]).await;

    let reply = proxy.client().get("/logged/json-path").await;
    assert_eq!(reply.status, StatusCode::OK);

    let line = proxy
        .wait_for_log_line("as JSON with path /logged/json-path", |line| {
            access_fields(line).is_some_and(|f| {
                f["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/logged/json-path"))
            })
        })
        .await;
    let fields = access_fields(&line).unwrap();
    for key in ["client", "method", "path", "status", "upstream", "bytes"] {
        assert!(
            fields.get(key).is_some(),
            "access line has no {key}: {line}"
        );
    }
    // The duration may carry its unit in the name (duration_ms).
    assert!(
        fields
            .keys()
            .any(|k| k == "duration" || k.starts_with("duration_")),
        "access line has no duration: {line}"
    );
    assert_eq!(fields["method"], "GET", "{line}");
    // tracing records a u16 as a number; accept its text form too.
    let status = &fields["status"];
    assert!(
        status.as_u64() == Some(200) || status.as_str() == Some("200"),
        "{line}"
    );
    let client = fields["client"].as_str().unwrap_or_default();
    assert!(
        client.starts_with("127.0.0.1"),
        "client is not the peer address: {line}"
    );
}

/// The fields of a JSON log line: tracing-subscriber nests them under
/// "fields" unless the events are flattened.
fn access_fields(line: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let object = value
        .get("fields")
        .filter(|f| f.is_object())
        .unwrap_or(&value);
    object
        .as_object()
        .filter(|o| o.contains_key("status"))
        .cloned()
}
