//! The built-in headers filter, run in-process through the harness.

use portier_test::{Harness, Request, Response, Stage};

async fn proxy() -> Harness {
    Harness::builder()
        .stage(Stage::builtin("headers").config(
            r#"
            request.set = { "x-request-source" = "edge" }
            request.remove = ["x-debug"]
            response.set = { "strict-transport-security" = "max-age=31536000" }
            response.remove = ["server"]
            "#,
        ))
        .start()
        .await
        .unwrap()
}

#[tokio::test]
async fn request_headers_are_set_and_removed_before_forwarding() {
    let proxy = proxy().await;
    let out = proxy
        .request(
            Request::get("/")
                .header("x-debug", "1")
                .header("x-request-source", "client"),
        )
        .await;
    assert!(out.forwarded());
    assert_eq!(out.headers("x-request-source"), ["edge"]);
    assert_eq!(out.header("x-debug"), None);
}

#[tokio::test]
async fn response_headers_are_set_and_removed_on_the_way_back() {
    let proxy = proxy().await;
    let out = proxy.request(Request::get("/")).await;
    let upstream = Response::new(200)
        .header("server", "backend/1.0")
        .header("content-type", "text/plain")
        .with_body("hello");
    let resp = proxy.response(out, upstream).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.get("server"), None);
    assert_eq!(
        resp.get("strict-transport-security"),
        Some("max-age=31536000")
    );
    assert_eq!(resp.get("content-type"), Some("text/plain"));
    assert_eq!(resp.text(), "hello");
}

#[tokio::test]
async fn an_unknown_key_is_refused_at_load() {
    let err = Harness::builder()
        .stage(Stage::builtin("headers").config("request.sett = {}"))
        .start()
        .await
        .err()
        .expect("a misspelled key must not load");
    assert!(err.to_string().contains("sett"), "{err}");
}
