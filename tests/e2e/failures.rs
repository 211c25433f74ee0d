//! Failures proves what a client sees when the upstream lets it down: 504
//! when the response head is later than `timeout`, 502 when a connection is
//! refused or dropped, then 503 while the refused endpoint cools down — and
//! that no error reply names the backend it failed to reach.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::support::body;
use crate::support::{
    Backend, Portier, Reply, assert_no_backend_leak, endpoint, endpoints, free_addr, one_upstream,
};

const BALANCER: &str = r#"
[[pipeline]]
plugin = "balancer"
"#;

/// Assert `reply` is a 503 that does not name `backend`.
#[track_caller]
fn assert_503_naming_no_backend(reply: &Reply, backend: SocketAddr) {
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_no_backend_leak(reply, backend);
}

#[tokio::test]
async fn slow_backend_gets_504_once_the_upstream_timeout_passes() {
    let timeout = Duration::from_millis(300);
    // Far slower than the timeout, so only the timeout can end the request early.
    let delay = Duration::from_secs(10);
    let backend = Backend::new("slow").delay(delay).start().await;
    let proxy = Portier::start(&one_upstream(
        &endpoints(&[&backend]),
        r#"timeout = "300ms""#,
        "",
    ))
    .await;

    let started = Instant::now();
    let reply = proxy.client().get("/slow").await;
    let took = started.elapsed();

    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    // Our clock started before the proxy's, so no slack is needed below...
    assert!(took >= timeout, "504 before the timeout: {took:?}");
    // ...and the backend would have answered only after `delay`.
    assert!(took < delay, "no 504 before the backend answered: {took:?}");
    assert_eq!(backend.requests(), 1, "the request did reach the backend");
    assert_no_backend_leak(&reply, backend.addr());
}

#[tokio::test]
async fn refused_connection_is_502_then_503_while_cooling_down() {
    // Nothing listens here: every connect is refused.
    let nowhere = free_addr();
    let proxy = Portier::start(&one_upstream(&endpoint(nowhere), "", "")).await;
    let client = proxy.client();

    let first = client.get("/").await;
    assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.text());
    assert_no_backend_leak(&first, nowhere);

    // The only endpoint is now ejected for outlier.base_ejection (default 10s):
    // no usable endpoint, and the proxy does not even try.
    for _ in 0..3 {
        assert_503_naming_no_backend(&client.get("/").await, nowhere);
    }
}

#[tokio::test]
async fn balancer_stage_sees_the_refused_endpoint_unhealthy_and_503s() {
    let nowhere = free_addr();
    let proxy = Portier::start(&one_upstream(&endpoint(nowhere), "", BALANCER)).await;
    let client = proxy.client();

    assert_eq!(client.get("/").await.status, StatusCode::BAD_GATEWAY);
    assert_503_naming_no_backend(&client.get("/").await, nowhere);
}

#[tokio::test]
async fn backend_closing_without_a_response_is_502_and_the_get_is_not_sent_again() {
    let backend = Backend::new("rude").hang_up().start().await;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&backend]), "", "")).await;

    let reply = proxy.client().get("/").await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    // The request reached the backend: without `retry.on = ["reset"]` it
    // is not sent again, not even a GET.
    assert_eq!(backend.requests(), 1);
    assert_no_backend_leak(&reply, backend.addr());
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used_and_nothing_fails() {
    let backend = Backend::new("short-keepalive")
        .close_after_response()
        .start()
        .await;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&backend]), "", "")).await;
    let client = proxy.client();

    for i in 0..3 {
        let reply = client.get(&format!("/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        // The backend closes the pooled connection meanwhile.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(backend.requests(), 3, "each request sent once");
    assert_eq!(backend.connections(), 3, "a new connection for each");
}

#[tokio::test]
async fn post_with_a_body_is_never_replayed() {
    let backend = Backend::new("flaky").hang_up_first(1).start().await;
    let proxy = Portier::start(&one_upstream(&endpoints(&[&backend]), "", "")).await;

    let client = proxy.client();
    let request = client
        .request(Method::POST, "/order")
        .body(body::full("one order"))
        .unwrap();
    let reply = client.send(request).await;

    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(
        backend.requests(),
        1,
        "a POST must reach the backend at most once"
    );
}

#[tokio::test]
async fn proxy_keeps_serving_after_upstream_errors() {
    // One slow and one healthy upstream behind a router: a 504 on one path
    // must not disturb the other path or the client's connection.
    let slow = Backend::new("slow")
        .delay(Duration::from_secs(10))
        .start()
        .await;
    let fast = Backend::new("fast").start().await;
    let manifest = format!(
        r#"
[server]
listen = "{listen}"

[[upstreams]]
name = "slow"
endpoints = ["{slow}"]
timeout = "200ms"

[[upstreams]]
name = "fast"
endpoints = ["{fast}"]

[[pipeline]]
plugin = "router"
config = {{ default = "fast", routes = [ {{ prefix = "/slow/", upstream = "slow" }} ] }}
"#,
        listen = free_addr(),
        slow = slow.addr(),
        fast = fast.addr(),
    );
    let proxy = Portier::start(&manifest).await;
    let client = proxy.client();

    for i in 0..3 {
        assert_eq!(
            client.get(&format!("/slow/{i}")).await.status,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            client.get(&format!("/fast/{i}")).await.echo().backend,
            "fast"
        );
    }
}
