//! Forwarding proves the proxy is transparent where it must be and honest
//! where it must not be: method, path, query, Host and repeated headers arrive
//! unchanged; bodies of any size stream both ways without being buffered;
//! hop-by-hop headers stop at the proxy; X-Forwarded-* and Via tell the
//! backend who asked; and every request leaves exactly one access-log line
//! with the right values (the proxy's own answers too, an abandoned
//! response marked incomplete), and none when the access log is off.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::support::body::{self, pattern_sha256, sha256};
use crate::support::{
    AccessLine, Backend, Client, HELD_FIRST, HELD_REST, Portier, Reply, RunningBackend, endpoints,
    free_addr, one_upstream, wait_until,
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
async fn an_untrusted_clients_forwarding_claims_are_replaced_and_host_kept() {
    let backend = Backend::new("app").start().await;
    let proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let echo = client
        .get_with(
            "/who",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "1.2.3.4"),
                ("x-real-ip", "1.2.3.4"),
                ("forwarded", "for=1.2.3.4;proto=https"),
                ("via", "1.0 edge"),
            ],
        )
        .await
        .echo();

    // The backend must see the name the client asked for, not its own address.
    assert_eq!(echo.header_all("host"), ["shop.example"]);
    // No trusted_proxies: what the client says about earlier hops is not
    // passed on as if the proxy had seen it.
    assert_eq!(echo.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo.header_all("x-real-ip"), Vec::<&str>::new());
    assert_eq!(echo.header_all("forwarded"), Vec::<&str>::new());
    // Via records hops, not claims: the proxy adds its own.
    assert_eq!(
        echo.header_joined("via").as_deref(),
        Some("1.0 edge, 1.1 portier")
    );
    assert_eq!(echo.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["shop.example"]);
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_headers_are_kept_and_name_the_client() {
    let backend = Backend::new("app").start().await;
    let manifest = single_upstream(&backend).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
        1,
    );
    let mut proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    let echo = client
        .get_with(
            "/who",
            &[
                ("host", "shop.example"),
                ("x-forwarded-for", "203.0.113.9, 10.0.0.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "www.example"),
            ],
        )
        .await
        .echo();

    // One line or several is the same list (RFC 9110 §5.3); the order is not.
    assert_eq!(
        echo.header_joined("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 10.0.0.1, 127.0.0.1")
    );
    assert_eq!(echo.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(echo.header_all("x-forwarded-host"), ["www.example"]);
    drop(client);
    proxy.stop().await;
    // The client is the nearest untrusted hop: 10.0.0.1 is not trusted here.
    let lines = proxy.access_lines();
    assert_eq!(lines.len(), 1, "{}", proxy.logs());
    assert_eq!(lines[0].client, "10.0.0.1:0".parse().unwrap());
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
                // Credentials for this proxy, never for the next hop.
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("x-visible", "1"),
            ],
        )
        .await
        .echo();

    for name in [
        "x-secret",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
    ] {
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

/// The access line the proxy must write for one request that `client` sent
/// to `proxy` and `backend` (of upstream `app`) answered with `reply`,
/// without its volatile values ([`AccessLine::without_volatile`]).
async fn expected_line(
    client: &Client,
    proxy: &Portier,
    path: &str,
    reply: &Reply,
    upstream: Option<&RunningBackend>,
) -> AccessLine {
    AccessLine {
        client: client.local_addr().await.expect("connected"),
        method: "GET".into(),
        path: path.into(),
        status: reply.status.as_u16(),
        // Compared apart: only its unit and order of magnitude are known.
        duration_ms: 0.0,
        endpoint: upstream.map(RunningBackend::addr),
        bytes_out: reply.body.len() as u64,
        bytes_in: 0,
        complete: true,
        protocol: "HTTP/1.1".into(),
        host: Some(proxy.addr().to_string()),
        user_agent: None,
        route: None,
        upstream: upstream.map(|_| "app".into()),
        upstream_ms: upstream.map(|_| 0.0),
        stage: None,
        flags: "-".into(),
        request_id: String::new(),
        trace_id: String::new(),
    }
}

/// One access-log format end to end: every field's value for a request the
/// backend answered after `DELAY`, written once.
async fn access_log_fields_in(format: &str) {
    const DELAY: Duration = Duration::from_millis(50);
    let backend = Backend::new("app").delay(DELAY).start().await;
    let mut proxy =
        Portier::start_with_args(&single_upstream(&backend), &["--log-format", format]).await;
    let client = proxy.client();

    let path = format!("/logged/{format}-path?x=1&y=%20");
    let reply = client.get(&path).await;
    assert_eq!(reply.status, StatusCode::OK);
    let expected = expected_line(&client, &proxy, &path, &reply, Some(&backend)).await;
    // Stopping the proxy flushes every line it will ever write.
    drop(client);
    proxy.stop().await;

    let lines = proxy.access_lines();
    assert_eq!(lines.len(), 1, "one line per request:\n{}", proxy.logs());
    assert_eq!(lines[0].without_volatile(), expected);
    // The id is the trace's when the client sent no traceparent.
    assert_eq!(lines[0].request_id, lines[0].trace_id);
    assert_eq!(lines[0].trace_id.len(), 32);
    // In milliseconds, from the request's arrival to the end of its body.
    let duration = lines[0].duration_ms;
    assert!(
        duration >= DELAY.as_secs_f64() * 1000.0 && duration < 10_000.0,
        "duration_ms {duration} for a response the backend held {DELAY:?}"
    );
}

#[tokio::test]
async fn access_log_line_in_text_format_has_every_field_right() {
    access_log_fields_in("text").await;
}

#[tokio::test]
async fn access_log_line_in_json_format_has_every_field_right() {
    access_log_fields_in("json").await;
}

#[tokio::test]
async fn access_log_has_exactly_one_line_per_request_including_the_proxys_own_answers() {
    let backend = Backend::new("app").start().await;
    let nowhere = free_addr();
    // `/app/` to the backend, `/dead/` to an endpoint that refuses (502, then
    // 503 while it cools down), anything else to no route (the router's 404).
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "app"
endpoints = ["{app}"]

[[upstreams]]
name = "dead"
endpoints = ["{nowhere}"]

[[pipeline]]
plugin = "router"
config = {{ routes = [ {{ prefix = "/app/", upstream = "app" }}, {{ prefix = "/dead/", upstream = "dead" }} ] }}
"#,
        listen = free_addr(),
        app = backend.addr(),
    );
    let mut proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    let mut expected = Vec::new();
    // Each request's endpoint (the one tried, also when it failed), its
    // upstream, the stage that answered and the proxy's reason.
    for (path, status, endpoint, upstream, stage, flags) in [
        (
            "/app/1",
            StatusCode::OK,
            Some(backend.addr()),
            Some("app"),
            None,
            "-",
        ),
        (
            "/dead/1",
            StatusCode::BAD_GATEWAY,
            Some(nowhere),
            Some("dead"),
            None,
            "UF",
        ),
        (
            "/app/2",
            StatusCode::OK,
            Some(backend.addr()),
            Some("app"),
            None,
            "-",
        ),
        (
            "/dead/2",
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            None,
            None,
            "UH",
        ),
        (
            "/elsewhere",
            StatusCode::NOT_FOUND,
            None,
            None,
            Some("router"),
            "PA",
        ),
        (
            "/app/3?q=1",
            StatusCode::OK,
            Some(backend.addr()),
            Some("app"),
            None,
            "-",
        ),
    ] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.text());
        let mut line = expected_line(&client, &proxy, path, &reply, None).await;
        line.endpoint = endpoint;
        line.upstream = upstream.map(str::to_owned);
        line.upstream_ms = endpoint.map(|_| 0.0);
        line.stage = stage.map(str::to_owned);
        line.flags = flags.to_owned();
        expected.push(line);
    }
    drop(client);
    proxy.stop().await;

    let lines: Vec<AccessLine> = proxy
        .access_lines()
        .iter()
        .map(AccessLine::without_volatile)
        .collect();
    // One connection, one request at a time: the lines come in request order.
    assert_eq!(lines, expected, "\n{}", proxy.logs());
    assert_eq!(backend.requests(), 3);
}

#[tokio::test]
async fn access_log_marks_a_response_the_client_abandoned_as_incomplete() {
    let backend = Backend::new("app").held_response().start().await;
    let mut proxy = proxy_to(&backend).await;
    let client = proxy.client();

    let request = client
        .request(Method::GET, "/abandoned")
        .body(body::empty())
        .unwrap();
    let response = client.send_streaming(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut incoming = response.into_body();
    let mut received = Vec::new();
    while received.len() < HELD_FIRST.len() {
        let frame = tokio::time::timeout(STREAM_WAIT, incoming.frame())
            .await
            .expect("the first part while the backend holds the rest")
            .expect("body ended early")
            .expect("body error");
        received.extend_from_slice(frame.data_ref().expect("a data frame"));
    }
    let client_addr = client.local_addr().await.expect("connected");
    // The client goes away mid-body.
    drop(incoming);
    drop(client);

    let line = proxy
        .wait_for_log_line("for the abandoned request", |l| {
            AccessLine::parse(l).is_some_and(|a| a.path == "/abandoned")
        })
        .await;
    let line = AccessLine::parse(&line).expect("parsed above");
    assert_eq!(line.client, client_addr);
    assert_eq!(line.status, 200);
    assert_eq!(line.endpoint, Some(backend.addr()));
    assert_eq!(line.flags, "DC");
    assert_eq!(
        line.bytes_out,
        HELD_FIRST.len() as u64,
        "bytes sent before the client left"
    );
    assert!(
        !line.complete,
        "an abandoned response logged complete: {line:?}"
    );
    proxy.stop().await;
    assert_eq!(proxy.access_lines().len(), 1, "{}", proxy.logs());
}

#[tokio::test]
async fn access_log_off_writes_no_line() {
    let backend = Backend::new("app").start().await;
    let manifest =
        single_upstream(&backend).replacen("[server]\n", "[server]\naccess_log = false\n", 1);
    let mut proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    for i in 0..5 {
        client.get(&format!("/quiet/{i}")).await.echo();
    }
    // A proxy-made answer too: the upstream's only endpoint is gone.
    backend.stop().await;
    assert_eq!(
        client.get("/quiet/after").await.status,
        StatusCode::BAD_GATEWAY
    );
    drop(client);
    proxy.stop().await;

    assert_eq!(proxy.access_lines(), [], "{}", proxy.logs());
    assert_eq!(backend.requests(), 5);
}

#[tokio::test]
async fn a_plugin_may_set_the_forwarding_headers_and_the_upstream_gets_its_value() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[&backend]),
        "",
        r#"
[[pipeline]]
plugin = "headers"
config = { request = { set = { "x-forwarded-proto" = "https" } } }
"#,
    ))
    .await;

    // TLS terminated in front of portier, say: the plugin knows better than
    // the listener, and the proxy does not overwrite what it set.
    let echo = proxy.client().get("/who").await.echo();
    assert_eq!(echo.header_all("x-forwarded-proto"), ["https"]);
}
