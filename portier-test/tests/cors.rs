//! The built-in cors filter, run in-process through the harness: a
//! preflight answered at the proxy, and the headers an allowed origin's
//! response gets.

use portier_test::{Harness, Request, Response, Stage};

async fn cors() -> Harness {
    Harness::builder()
        .stage(Stage::builtin("cors").config(
            r#"
            origins = ["https://app.example.com"]
            methods = ["GET", "POST"]
            headers = ["authorization"]
            max_age = "10m"
            "#,
        ))
        .start()
        .await
        .unwrap()
}

fn preflight(origin: &str) -> Request {
    Request::new("OPTIONS", "/api/orders")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
}

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_at_the_proxy() {
    let proxy = cors().await;
    let out = proxy.request(preflight("https://app.example.com")).await;
    assert!(!out.forwarded());
    let answer = out.response().expect("the filter answers the preflight");
    assert_eq!(answer.status, 204);
    assert_eq!(
        answer.get("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(answer.get("access-control-max-age"), Some("600"));
}

#[tokio::test]
async fn an_allowed_origins_response_gets_the_cors_headers() {
    let proxy = cors().await;
    let out = proxy
        .request(Request::get("/api/orders").header("origin", "https://app.example.com"))
        .await;
    assert!(out.forwarded());
    let resp = proxy.response(out, Response::new(200)).await;
    assert_eq!(
        resp.get("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}

#[tokio::test]
async fn another_origins_response_gets_none() {
    let proxy = cors().await;
    let out = proxy
        .request(Request::get("/api/orders").header("origin", "https://evil.example"))
        .await;
    let resp = proxy.response(out, Response::new(200)).await;
    assert_eq!(resp.get("access-control-allow-origin"), None);
}
