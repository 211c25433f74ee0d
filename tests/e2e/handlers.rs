//! Handlers proves a route may end in a standard `wasi:http/proxy`
//! component (built here from `tests/handlers/` with the `wasip2` crate, as
//! any Rust author would) instead of an upstream: it answers with the
//! pipeline's stages around it, streams bodies both ways, gets its failure
//! policy when it traps (a cut body is never passed off as whole), and
//! reaches only the upstreams the manifest grants it.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::support::{Backend, Portier, body, endpoints, free_addr, test_handler};

/// Upstream `app` (a backend) and handler upstream `edge` running
/// `component` with `handler_extra` keys; the router sends `/edge/` to
/// `edge` (prefix stripped) and the rest to `app`; a headers stage stamps
/// every response.
fn manifest(app: &str, component: &str, handler_extra: &str) -> String {
    let component = test_handler(component);
    format!(
        r#"
[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[[upstreams]]
name = "app"
endpoints = {app}

[[upstreams]]
name = "other"
endpoints = {app}

[[upstreams]]
name = "edge"
handler = {{ component = "{component}" {handler_extra} }}

[[pipeline]]
plugin = "headers"
config.response.set = {{ x-stamped = "portier" }}

[[pipeline]]
plugin = "router"
[pipeline.config]
default = "app"
routes = [ {{ prefix = "/edge/", upstream = "edge", strip_prefix = true }} ]
"#,
        listen = free_addr(),
        admin = free_addr(),
        component = component.display(),
    )
}

#[tokio::test]
async fn a_hello_component_answers_its_route_inside_the_pipeline() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(&endpoints(&[&backend]), "hello", "")).await;
    let client = proxy.client();

    let reply = client.get("/edge/some/path?q=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "hello from wasi:http\n");
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    // The router's strip_prefix reached the component.
    assert_eq!(reply.header("x-path"), Some("/some/path"));
    // Stages around it still run: the headers filter saw its response.
    assert_eq!(reply.header("x-stamped"), Some("portier"));
    assert_eq!(
        backend.requests(),
        0,
        "the handler answered, not the backend"
    );

    let other = client.get("/elsewhere").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(backend.requests(), 1);

    let line = proxy
        .access_lines()
        .into_iter()
        .find(|l| l.path.starts_with("/edge/some/path"))
        .expect("the handler's request is logged");
    assert_eq!(line.upstream.as_deref(), Some("edge"), "{line:?}");
    assert_eq!(line.endpoint, None, "{line:?}");
}

#[tokio::test]
async fn an_echo_component_streams_request_and_response_bodies() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(&endpoints(&[&backend]), "echo", "")).await;
    let client = proxy.client();

    // A large body comes back whole.
    let len = 3 << 20;
    let request = client
        .request(Method::POST, "/edge/")
        .header("content-type", "application/octet-stream")
        .body(body::pattern(len))
        .expect("request");
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(body::sha256(&reply.body), body::pattern_sha256(len));

    // Streaming: each piece comes back before the next is sent.
    let (tx, streamed) = body::channel();
    let request = client
        .request(Method::POST, "/edge/")
        .body(streamed)
        .expect("request");
    tx.send(Bytes::from_static(b"first piece;")).await.unwrap();
    let response = client.send_streaming(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut incoming = response.into_body();
    for piece in ["first piece;", "second piece;", "third piece;"] {
        if piece != "first piece;" {
            tx.send(Bytes::from(piece)).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < piece.len() {
            let frame = tokio::time::timeout(Duration::from_secs(10), incoming.frame())
                .await
                .expect("the piece came back before the next was sent")
                .expect("the body goes on")
                .expect("a frame");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(got, piece.as_bytes());
    }
    drop(tx);
    let rest = incoming.collect().await.expect("a clean end").to_bytes();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_trapping_component_gets_its_failure_policy_and_never_a_cut_body_passed_as_whole() {
    let backend = Backend::new("app").start().await;
    let mut proxy = Portier::start(&manifest(
        &endpoints(&[&backend]),
        "trapper",
        r#", call_timeout = "50ms""#,
    ))
    .await;
    let client = proxy.client();

    // A trap before the response: the proxy's 503 (fail-closed).
    let reply = client.get("/edge/early").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    proxy
        .wait_for_log_line("the trap's log line", |l| {
            l.contains("handler failed") && l.contains("handler=edge") && l.contains("unreachable")
        })
        .await;

    // A trap after the head: the response breaks instead of ending (here
    // the trap comes so soon after the head that hyper may not even have
    // sent it; either way the client cannot take it for a whole response).
    let late = proxy
        .client()
        .try_send(
            client
                .request(Method::GET, "/edge/late")
                .body(body::empty())
                .unwrap(),
        )
        .await;
    assert!(late.is_err(), "a cut body ended cleanly: {late:?}");

    // A guest that never returns is stopped by its budget of running
    // time (call_timeout = 50ms here), and the worker it ran on served
    // other requests meanwhile.
    let started = std::time::Instant::now();
    let spun = proxy.client().get("/edge/spin").await;
    assert_eq!(
        spun.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        spun.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    proxy
        .wait_for_log_line("the budget's log line", |l| {
            l.contains("handler failed") && l.contains("ran past its call_timeout")
        })
        .await;

    // The proxy serves on, and counts the failures.
    let other = proxy.client().get("/elsewhere").await;
    assert_eq!(other.status, StatusCode::OK);
    let status = proxy.status().await;
    let handler = &status["handlers"][0];
    assert_eq!(handler["name"], "edge", "{status}");
    assert_eq!(handler["failures"], 3, "{status}");
    let metrics = proxy.admin().get("/metrics").await.text();
    for (kind, n) in [("trap", 2), ("timeout", 1)] {
        let series =
            format!("portier_stage_failures_total{{stage=\"edge@handler\",kind=\"{kind}\"}} {n}");
        assert!(metrics.contains(&series), "{series}:\n{metrics}");
    }
    proxy.assert_alive();
}

#[tokio::test]
async fn a_component_reaches_only_the_upstreams_granted_to_it() {
    let backend = Backend::new("app").start().await;
    let proxy = Portier::start(&manifest(
        &endpoints(&[&backend]),
        "fetcher",
        r#", grants = { upstreams = ["app"] }"#,
    ))
    .await;
    let client = proxy.client();

    let granted = client.get_with("/edge/", &[("x-target", "app")]).await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.text());
    assert_eq!(granted.echo().path_and_query(), "/");
    assert_eq!(backend.requests(), 1);

    // `other` exists but is not granted; `nowhere` does not exist.
    for target in ["other", "nowhere", "127.0.0.1:1"] {
        let refused = client.get_with("/edge/", &[("x-target", target)]).await;
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY, "{target}");
        assert!(
            refused.text().contains("HttpRequestDenied"),
            "{target}: {}",
            refused.text()
        );
    }
    assert_eq!(
        backend.requests(),
        1,
        "a refused request reached the backend"
    );
}

#[test]
fn a_handler_is_checked_when_the_manifest_is() {
    use crate::support::check;
    let hello = test_handler("hello");
    let with = |upstream: &str| {
        format!(
            r#"
[server]
listen = "127.0.0.1:1"
[[upstreams]]
name = "app"
endpoints = ["127.0.0.1:2"]
{upstream}
[[pipeline]]
plugin = "router"
config = {{ default = "app" }}
"#
        )
    };
    check(&with(&format!(
        "[[upstreams]]\nname = \"edge\"\nhandler = {{ component = \"{}\" }}",
        hello.display()
    )))
    .assert_ok();
    check(&with(
        "[[upstreams]]\nname = \"edge\"\nhandler = { component = \"missing.wasm\" }",
    ))
    .assert_rejected_at("upstreams[1].handler.component");
    check(&with(&format!(
        "[[upstreams]]\nname = \"edge\"\nendpoints = [\"127.0.0.1:3\"]\nhandler = {{ component = \"{}\" }}",
        hello.display()
    )))
    .assert_rejected_at("upstreams[1].handler");
    check(&with(&format!(
        "[[upstreams]]\nname = \"edge\"\nhandler = {{ component = \"{}\", grants = {{ upstreams = [\"edge\"] }} }}",
        hello.display()
    )))
    .assert_rejected_at("upstreams[1].handler.grants.upstreams[0]");
    // A portier plugin is not a wasi:http/proxy component.
    check(&with(&format!(
        "[[upstreams]]\nname = \"edge\"\nhandler = {{ component = \"{}\" }}",
        crate::support::test_plugin("misbehave").display()
    )))
    .assert_rejected_at("upstreams[1].handler.component");
}
